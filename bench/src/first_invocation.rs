//! First invocation: a cold process handling one cheap real event from
//! `events/<function>/`, including its first AWS calls against the local emulator
//! (credential and endpoint resolution, the first TCP connection). A second
//! invocation of the same event shows the warm cost for comparison.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use custody::aws::sdk_config_for_endpoint;
use custody_local::provision::{Provisioned, function_environment, load_template, provision};
use custody_local::runtime_api::{InvokeError, LocalFunction};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::BenchError;
use crate::stats::round_us;

/// A provisioned copy of the stack on the local emulator, as the functions see it.
pub struct LocalStack {
    pub endpoint: String,
    provisioned: Provisioned,
    template: serde_yaml::Value,
}

impl LocalStack {
    /// Starts (or reuses) the emulator and provisions every template resource
    /// under `stage`.
    pub async fn provision(root: &Path, stage: &str) -> Result<LocalStack, BenchError> {
        let endpoint =
            custody_local::emulator::endpoint().map_err(|e| BenchError::Emulator(e.to_string()))?;
        let sdk = sdk_config_for_endpoint(&endpoint, custody_local::REGION);
        let template_path = root.join("template.yaml");
        let provisioned = provision(&sdk, &template_path, stage)
            .await
            .map_err(|e| BenchError::Emulator(format!("provisioning {endpoint}: {e}")))?;
        let template =
            load_template(&template_path).map_err(|e| BenchError::file(&template_path, e))?;
        Ok(LocalStack {
            endpoint,
            provisioned,
            template,
        })
    }

    /// The environment Lambda would give `binary` (the template's globals and its
    /// own variables), pointed at the emulator. Log level WARN, a Lambda setting,
    /// keeps the functions' logs out of the benchmark's table.
    pub fn environment(&self, binary: &str) -> Vec<(String, String)> {
        let variables = function_environment(&self.template, &self.provisioned, binary)
            .unwrap_or_else(|_| self.provisioned.environment.clone());
        let mut env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", custody_local::REGION),
            ("AWS_DEFAULT_REGION", custody_local::REGION),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.extend(variables);
        env
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstInvocation {
    pub function: String,
    /// The event file, relative to the repository.
    pub event: String,
    pub cold_start_ms: f64,
    /// From sending the event to the response, in the fresh process.
    pub first_invocation_ms: f64,
    /// The same event again, warm.
    pub second_invocation_ms: f64,
    /// HTTP status of an API Gateway response, when it is one.
    pub status_code: Option<u64>,
    /// The function's error, when it returned one (the timing still stands).
    pub error: Option<String>,
}

/// The cheapest real event of a function: a GET route without path parameters if
/// there is one, else any GET route, else the first event file. HTTP events without
/// authorizer claims get an admin caller of a bench tenant.
pub fn pick_event(dir: &Path) -> Result<(PathBuf, Value), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|_| format!("no events yet ({} does not exist)", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut events = Vec::new();
    for path in files {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let event: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        events.push((path, event));
    }
    let is_get = |event: &Value| event["requestContext"]["http"]["method"] == "GET";
    let chosen = events
        .iter()
        .position(|(_, e)| is_get(e) && e["pathParameters"].is_null())
        .or_else(|| events.iter().position(|(_, e)| is_get(e)))
        .or(if events.is_empty() { None } else { Some(0) })
        .ok_or_else(|| format!("no events yet ({} has no .json file)", dir.display()))?;
    let (path, mut event) = events.swap_remove(chosen);
    if event["requestContext"]["http"].is_object()
        && event["requestContext"]["authorizer"]["jwt"]["claims"].is_null()
    {
        event["requestContext"]["authorizer"] = json!({"jwt": {"claims": {
            "sub": "bench-user", "tenant_id": "bench", "role": "admin"
        }, "scopes": null}});
    }
    Ok((path, event))
}

/// Starts `program`, waits for its first poll, then invokes it twice with `event`.
pub async fn measure(
    function: &str,
    program: &Path,
    env: &[(String, String)],
    event_file: &str,
    event: &Value,
) -> Result<FirstInvocation, BenchError> {
    let process = LocalFunction::start(function, program, env, Duration::from_secs(60))
        .await
        .map_err(|e| BenchError::file(program, e))?;
    let cold = process
        .wait_first_poll(Duration::from_secs(20))
        .await
        .ok_or_else(|| {
            BenchError::Measurement(format!(
                "{function} did not poll the Runtime API within 20 s"
            ))
        })?;
    let started = Instant::now();
    let first = process.invoke(event).await;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let second = process.invoke(event).await;
    let second_ms = started.elapsed().as_secs_f64() * 1e3;
    process.stop().await;
    let (status_code, error) = match (&first, &second) {
        (Ok(response), _) => (response["statusCode"].as_u64(), None),
        (Err(err @ InvokeError::Function { .. }), _) => (None, Some(err.to_string())),
        (Err(err), _) => return Err(BenchError::Measurement(err.to_string())),
    };
    Ok(FirstInvocation {
        function: function.to_owned(),
        event: event_file.to_owned(),
        cold_start_ms: round_us(cold.as_secs_f64() * 1e3),
        first_invocation_ms: round_us(first_ms),
        second_invocation_ms: round_us(second_ms),
        status_code,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_route_without_parameters_is_preferred_and_gets_claims() {
        let dir = std::env::temp_dir().join(format!("custody-bench-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let route = |method: &str, params: Value| json!({"version": "2.0", "requestContext": {"http": {"method": method}}, "pathParameters": params});
        std::fs::write(
            dir.join("a_post.json"),
            route("POST", Value::Null).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("b_get_one.json"),
            route("GET", json!({"id": "x"})).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("c_list.json"),
            route("GET", Value::Null).to_string(),
        )
        .unwrap();
        let (path, event) = pick_event(&dir).unwrap();
        assert!(path.ends_with("c_list.json"));
        assert_eq!(
            event["requestContext"]["authorizer"]["jwt"]["claims"]["role"],
            "admin"
        );
        std::fs::remove_file(dir.join("c_list.json")).unwrap();
        assert!(pick_event(&dir).unwrap().0.ends_with("b_get_one.json"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(pick_event(&dir).unwrap_err().contains("no events yet"));
    }
}

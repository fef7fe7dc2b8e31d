//! A local Lambda `Invoke` API (`POST /2015-03-31/functions/{name}/invocations`), so
//! any event can be delivered to a running stack: `custody-local invoke`, or
//! `aws lambda invoke --endpoint-url <this URL> --function-name export …`.
//!
//! As the service answers: `RequestResponse` (default) returns the function's result,
//! a function error is `200` with `X-Amz-Function-Error: Unhandled` and the error
//! document; `Event` queues the invocation (`202`) with Lambda's async retries; an
//! unknown function is `404 ResourceNotFoundException`, a body that is not JSON
//! `400 InvalidRequestContentException`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use crate::runtime_api::{InvokeError, LocalFunction};

/// The local function a name, an ARN, or an ARN with a qualifier names: deployed
/// names (the template's `FunctionName`, resolved) map to binaries through `names`.
pub fn resolve<'a>(
    name_or_arn: &str,
    names: &HashMap<String, String>,
    functions: &'a HashMap<String, Arc<LocalFunction>>,
) -> Option<&'a Arc<LocalFunction>> {
    let short = name_or_arn
        .split(":function:")
        .nth(1)
        .unwrap_or(name_or_arn)
        .split(':')
        .next()?;
    functions.get(names.get(short).map(String::as_str).unwrap_or(short))
}

#[derive(Clone)]
struct Shared {
    functions: HashMap<String, Arc<LocalFunction>>,
    /// Deployed function names (and binaries) → binary.
    names: HashMap<String, String>,
    failures: crate::event_sources::Failures,
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [("x-amzn-errortype", kind)],
        axum::Json(json!({"Type": "User", "message": message})),
    )
        .into_response()
}

async fn invoke(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(function) = resolve(&name, &shared.names, &shared.functions).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {name}"),
        );
    };
    let event: Json = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(event) => event,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    &format!("Could not parse request body into json: {err}"),
                );
            }
        }
    };
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match kind {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => {
            tokio::spawn(async move {
                let _ =
                    crate::event_sources::invoke_async(&function, &event, &shared.failures).await;
            });
            StatusCode::ACCEPTED.into_response()
        }
        "RequestResponse" => match function.invoke(&event).await {
            Ok(result) => (StatusCode::OK, axum::Json(result)).into_response(),
            Err(InvokeError::Function {
                error_type,
                message,
                ..
            }) => (
                StatusCode::OK,
                [("x-amz-function-error", "Unhandled")],
                axum::Json(json!({"errorType": error_type, "errorMessage": message})),
            )
                .into_response(),
            Err(err) => error(
                StatusCode::BAD_GATEWAY,
                "ServiceException",
                &err.to_string(),
            ),
        },
        other => error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("unknown X-Amz-Invocation-Type {other}"),
        ),
    }
}

/// Serves the API on `listener` until the returned task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    functions: HashMap<String, Arc<LocalFunction>>,
    names: HashMap<String, String>,
    failures: crate::event_sources::Failures,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::new(Shared {
        functions,
        names,
        failures,
    });
    let app = axum::Router::new()
        .route(
            "/2015-03-31/functions/{name}/invocations",
            axum::routing::post(invoke),
        )
        .with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// What `custody-local invoke` does: POSTs `event` to the API at `base` and returns
/// (function error type if any, the response body).
pub async fn invoke_remote(
    base: &str,
    function: &str,
    event: &Json,
    asynchronous: bool,
) -> Result<(Option<String>, String), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(960))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .post(format!(
            "{}/2015-03-31/functions/{function}/invocations",
            base.trim_end_matches('/')
        ))
        .header(
            "x-amz-invocation-type",
            if asynchronous {
                "Event"
            } else {
                "RequestResponse"
            },
        )
        .json(event)
        .send()
        .await
        .map_err(|e| format!("{base}: {e} (is the stack up? `make up`)"))?;
    let status = response.status();
    let function_error = response
        .headers()
        .get("x-amz-function-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    Ok((function_error, text))
}

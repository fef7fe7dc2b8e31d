//! The whole local stack in one process: the AWS emulator provisioned from
//! template.yaml, every function binary behind its own local Runtime API, the HTTP
//! API gateway with the local JWT issuer, the stream / bucket event sources, the local
//! EventBridge Scheduler and a local Lambda Invoke API; and, for the web console, its
//! origin ([`crate::console`]: `console/dist/` and `config.json`) and a local OIDC
//! provider ([`crate::oidc`]) whose tokens the gateway accepts. The gateway allows the
//! console origin and the importer origin ([`crate::console::importer_origin`], where a
//! page embedding `<custody-importer>` runs) by CORS, and so does the imports bucket
//! (presigned uploads).
//!
//! The simulated external services (HighLevel, WebDAV, the destination webhook) are
//! started by the caller (the demo, `custody-local up`), which passes their URLs as
//! environment overrides.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use custody::aws::{Clients, sdk_config_for_endpoint};
use serde_yaml::Value;

use crate::console::{ConsoleSite, Cors};
use crate::gateway::{Gateway, routes};
use crate::local_jwt::LocalIssuer;
use crate::oidc::OidcProvider;
use crate::provision::{
    Provisioned, function_environment, function_names, load_template, provision,
};
use crate::runtime_api::LocalFunction;
use crate::{REGION, repo_root, template_path};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Emulator(#[from] crate::emulator::EmulatorError),
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    #[error(
        "function binary {0} is missing: build the functions first (`cargo build --bins`, which `make demo` and `make up` do)"
    )]
    MissingBinary(String),
    #[error("could not start {0}: {1}")]
    Start(String, std::io::Error),
    #[error("configuring {0}: {1}")]
    Configure(String, String),
}

pub struct StackOptions {
    /// Resource-name suffix (the template's `Stage`).
    pub stage: String,
    /// Variables set for every function after the template's (local service URLs).
    /// `{base_url}` in a value becomes the HTTP API's URL, `{console_url}` the
    /// console's origin (both exist only once the stack binds them).
    pub overrides: BTreeMap<String, String>,
    /// Where the function binaries are (default `<repo>/target/debug`).
    pub binaries: PathBuf,
    pub invocation_timeout: Duration,
    /// When set, each function's output (its JSON logs) is also kept in
    /// `<log_dir>/<function>.log`, as its CloudWatch log group would keep it.
    pub log_dir: Option<PathBuf>,
    /// The built web console the console origin serves (default
    /// `<repo>/console/dist`).
    pub console_dist: PathBuf,
}

impl StackOptions {
    pub fn new(stage: impl Into<String>) -> Self {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        Self {
            stage: stage.into(),
            overrides: BTreeMap::new(),
            binaries: target.join("debug"),
            invocation_timeout: Duration::from_secs(60),
            log_dir: None,
            console_dist: repo_root().join("console").join("dist"),
        }
    }
}

pub struct LocalStack {
    pub endpoint: String,
    pub sdk: SdkConfig,
    pub clients: Clients,
    pub provisioned: Provisioned,
    pub template: Value,
    pub functions: HashMap<String, Arc<LocalFunction>>,
    pub base_url: String,
    /// The web console's origin (`http://127.0.0.1:PORT`, no trailing slash).
    pub console_url: String,
    /// The origin CORS allows for pages embedding `<custody-importer>`
    /// (`http://localhost:PORT`: the console's server under another name).
    pub importer_origin: String,
    /// The local OIDC provider's issuer URL (the console's `authority`).
    pub oidc_url: String,
    /// The local Lambda Invoke API (`custody-local invoke`, `aws lambda invoke`).
    pub lambda_url: String,
    /// What the local EventBridge Scheduler fired.
    pub schedules: crate::scheduler::History,
    pub issuer: LocalIssuer,
    /// Where the functions' logs are kept (`StackOptions::log_dir`).
    pub log_dir: Option<PathBuf>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The function binaries the template declares, by `BuildProperties.Binary`.
pub fn function_binaries(template: &Value) -> Vec<String> {
    template
        .get("Resources")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::Function"))
        .filter_map(|(_, r)| {
            r.get("Metadata")
                .and_then(|m| m.get("BuildProperties"))
                .and_then(|b| b.get("Binary"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// The function's `Timeout` (or the `Globals` one), as Lambda would enforce it.
pub fn function_timeout(template: &Value, binary: &str) -> Option<Duration> {
    let global = template["Globals"]["Function"]["Timeout"].as_u64();
    template
        .get("Resources")
        .and_then(Value::as_mapping)?
        .values()
        .find(|r| r["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
        .and_then(|r| r["Properties"]["Timeout"].as_u64().or(global))
        .map(Duration::from_secs)
}

impl LocalStack {
    pub async fn start(options: StackOptions) -> Result<LocalStack, StackError> {
        let endpoint = crate::emulator::endpoint()?;
        let sdk = sdk_config_for_endpoint(&endpoint, REGION);
        let template = load_template(&template_path())?;
        let provisioned = provision(&sdk, &template_path(), &options.stage).await?;

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| StackError::Start("gateway".into(), e))?;
        let address = listener
            .local_addr()
            .map_err(|e| StackError::Start("gateway".into(), e))?;
        let base_url = format!("http://{address}");
        // The console's origin and the OIDC issuer are bound before anything is
        // configured: CORS, the OAuth return URLs and the bucket's CORS rule name them.
        let console_listener = bind("console").await?;
        let console_url = listener_url("console", &console_listener)?;
        let importer_origin = crate::console::importer_origin(&console_url);
        let cors_origins = [console_url.clone(), importer_origin.clone()];
        let oidc_listener = bind("OIDC provider").await?;
        let oidc_url = listener_url("OIDC provider", &oidc_listener)?;
        let mut provisioned = provisioned;
        allow_console_uploads(&sdk, &mut provisioned, &cors_origins).await?;

        // The local Lambda API is bound first: functions that invoke another (the dsar
        // function asks the oauth function to revoke) reach it through the SDK.
        let lambda_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| StackError::Start("lambda API".into(), e))?;
        let lambda_url = format!(
            "http://{}",
            lambda_listener
                .local_addr()
                .map_err(|e| StackError::Start("lambda API".into(), e))?
        );

        let mut functions = HashMap::new();
        for binary in function_binaries(&template) {
            let path = options.binaries.join(&binary);
            if !path.exists() {
                return Err(StackError::MissingBinary(path.display().to_string()));
            }
            let mut env = function_environment(&template, &provisioned, &binary)?;
            env.insert("AWS_ENDPOINT_URL".into(), endpoint.clone());
            env.insert("AWS_ENDPOINT_URL_LAMBDA".into(), lambda_url.clone());
            env.insert("AWS_REGION".into(), REGION.into());
            env.insert("AWS_ACCESS_KEY_ID".into(), "testing".into());
            env.insert("AWS_SECRET_ACCESS_KEY".into(), "testing".into());
            env.insert("CUSTODY_PUBLIC_BASE_URL".into(), base_url.clone());
            // The local stack's simulators listen on loopback; production never sets
            // this (a template test checks), so there the egress guard refuses it.
            env.insert(custody::egress::ALLOW_LOOPBACK_VAR.into(), "true".into());
            // Overrides may name the gateway's and the console's URLs, which exist
            // only now.
            env.extend(options.overrides.iter().map(|(k, v)| {
                (
                    k.clone(),
                    v.replace("{base_url}", &base_url)
                        .replace("{console_url}", &console_url),
                )
            }));
            let env: Vec<(String, String)> = env.into_iter().collect();
            let timeout =
                function_timeout(&template, &binary).unwrap_or(options.invocation_timeout);
            let log_file = options
                .log_dir
                .as_ref()
                .map(|dir| dir.join(format!("{binary}.log")));
            let function = LocalFunction::start_logged(&binary, &path, &env, timeout, log_file)
                .await
                .map_err(|e| StackError::Start(binary.clone(), e))?;
            functions.insert(binary, Arc::new(function));
        }

        // One issuer: the tokens `token()` prints and the console's login both come
        // from the OIDC provider's issuer, for their own audiences.
        let issuer =
            LocalIssuer::with_issuer(oidc_url.clone()).accepting(crate::console::CLIENT_ID);
        let gateway = Gateway::new(routes(&template), functions.clone(), issuer.clone())
            .with_cors(Cors::new(cors_origins));
        let (_, gateway_task) = gateway
            .serve(listener)
            .await
            .map_err(|e| StackError::Start("gateway".into(), e))?;
        let (_, oidc_task) = OidcProvider::new(issuer.clone(), console_url.clone())
            .serve(oidc_listener)
            .map_err(|e| StackError::Start("OIDC provider".into(), e))?;
        let site = ConsoleSite {
            dist: options.console_dist.clone(),
            api_url: base_url.clone(),
            authority: oidc_url.clone(),
            s3_url: endpoint.clone(),
        };
        let (_, console_task) = site
            .serve(console_listener)
            .map_err(|e| StackError::Start("console".into(), e))?;
        let names = function_names(&template, &options.stage);
        let failures = crate::event_sources::Failures::new(&sdk, &template, &provisioned);
        let lambda_task = crate::lambda_api::serve(
            lambda_listener,
            functions.clone(),
            names.clone(),
            failures.clone(),
        );
        let schedules = crate::scheduler::History::default();
        let scheduler = tokio::spawn(crate::scheduler::run(
            sdk.clone(),
            functions.clone(),
            names,
            schedules.clone(),
            failures.clone(),
            Duration::from_secs(1),
        ));
        let sources = tokio::spawn(crate::event_sources::run(
            sdk.clone(),
            provisioned.clone(),
            template.clone(),
            functions.clone(),
            failures,
            Duration::from_millis(250),
        ));
        Ok(LocalStack {
            clients: Clients::new(&sdk),
            endpoint,
            sdk,
            provisioned,
            template,
            functions,
            base_url,
            console_url,
            importer_origin,
            oidc_url,
            lambda_url,
            schedules,
            issuer,
            log_dir: options.log_dir,
            tasks: vec![
                gateway_task,
                sources,
                lambda_task,
                scheduler,
                oidc_task,
                console_task,
            ],
        })
    }

    /// A bearer token of the local issuer.
    pub fn token(&self, tenant: &str, role: &str) -> String {
        self.issuer
            .token(&format!("local-{role}"), tenant, role, 12 * 3600)
    }

    pub fn function(&self, name: &str) -> Option<&Arc<LocalFunction>> {
        self.functions.get(name)
    }

    /// Stops every function and waits until all it wrote is in its log file: what a
    /// test does before it reads the logs of a journey.
    pub async fn stop_functions_and_flush_logs(&self) {
        for task in &self.tasks {
            task.abort();
        }
        for function in self.functions.values() {
            function.kill_and_flush_logs(Duration::from_secs(10)).await;
        }
    }
}

async fn bind(what: &str) -> Result<tokio::net::TcpListener, StackError> {
    tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| StackError::Start(what.into(), e))
}

fn listener_url(what: &str, listener: &tokio::net::TcpListener) -> Result<String, StackError> {
    let address = listener
        .local_addr()
        .map_err(|e| StackError::Start(what.into(), e))?;
    Ok(format!("http://{address}"))
}

/// The imports bucket's CORS rule for the console origin and the importer origin
/// (constants in [`crate::console`]): the browser PUTs presigned uploads to it.
/// template.yaml declares no `CorsConfiguration` on the bucket yet, so the rule is
/// applied here and reported as adjusted.
async fn allow_console_uploads(
    sdk: &SdkConfig,
    provisioned: &mut Provisioned,
    origins: &[String],
) -> Result<(), StackError> {
    use crate::console::{
        UPLOAD_CORS_ALLOWED_HEADERS, UPLOAD_CORS_ALLOWED_METHODS, UPLOAD_CORS_EXPOSED_HEADERS,
        UPLOAD_CORS_MAX_AGE_SECONDS,
    };
    use aws_sdk_s3::types::{CorsConfiguration, CorsRule};
    let Some(bucket) = provisioned
        .resources
        .get("ImportsBucket")
        .map(|p| p.id.clone())
    else {
        return Ok(());
    };
    let configure = |e: &dyn std::fmt::Display| {
        StackError::Configure("the imports bucket's CORS".into(), e.to_string())
    };
    let rule = CorsRule::builder()
        .set_allowed_origins(Some(origins.to_vec()))
        .set_allowed_methods(Some(
            UPLOAD_CORS_ALLOWED_METHODS.map(str::to_owned).to_vec(),
        ))
        .set_allowed_headers(Some(
            UPLOAD_CORS_ALLOWED_HEADERS.map(str::to_owned).to_vec(),
        ))
        .set_expose_headers(Some(
            UPLOAD_CORS_EXPOSED_HEADERS.map(str::to_owned).to_vec(),
        ))
        .max_age_seconds(UPLOAD_CORS_MAX_AGE_SECONDS)
        .build()
        .map_err(|e| configure(&e))?;
    let cors = CorsConfiguration::builder()
        .cors_rules(rule)
        .build()
        .map_err(|e| configure(&e))?;
    custody::aws::s3_client(sdk)
        .put_bucket_cors()
        .bucket(&bucket)
        .cors_configuration(cors)
        .send()
        .await
        .map_err(|e| configure(&aws_sdk_s3::error::DisplayErrorContext(e)))?;
    provisioned.adjusted.push(format!(
        "ImportsBucket: CORS rule for the console and importer origins {} (PUT; not in template.yaml yet)",
        origins.join(", ")
    ));
    Ok(())
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for function in self.functions.values() {
            function.kill_now();
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

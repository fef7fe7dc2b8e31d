//! The whole local stack in one process: the AWS emulator provisioned from
//! template.yaml, every function binary behind its own local Runtime API, the HTTP
//! API gateway with the local JWT issuer, the stream / bucket event sources, the local
//! EventBridge Scheduler and a local Lambda Invoke API.
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

use crate::gateway::{Gateway, routes};
use crate::local_jwt::LocalIssuer;
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
}

pub struct StackOptions {
    /// Resource-name suffix (the template's `Stage`).
    pub stage: String,
    /// Variables set for every function after the template's (local service URLs).
    pub overrides: BTreeMap<String, String>,
    /// Where the function binaries are (default `<repo>/target/debug`).
    pub binaries: PathBuf,
    pub invocation_timeout: Duration,
    /// When set, each function's output (its JSON logs) is also kept in
    /// `<log_dir>/<function>.log`, as its CloudWatch log group would keep it.
    pub log_dir: Option<PathBuf>,
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
            // Overrides may name the gateway's URL, which exists only now.
            env.extend(
                options
                    .overrides
                    .iter()
                    .map(|(k, v)| (k.clone(), v.replace("{base_url}", &base_url))),
            );
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

        let issuer = LocalIssuer::new();
        let gateway = Gateway::new(routes(&template), functions.clone(), issuer.clone());
        let (_, gateway_task) = gateway
            .serve(listener)
            .await
            .map_err(|e| StackError::Start("gateway".into(), e))?;
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
            lambda_url,
            schedules,
            issuer,
            log_dir: options.log_dir,
            tasks: vec![gateway_task, sources, lambda_task, scheduler],
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

//! The `export` function: export settings, run now and the export log over HTTP, and
//! the export worker invoked by EventBridge Scheduler with `{"tenant_id": …}`.
//!
//! Messages go from HighLevel to the customer's WebDAV or S3 destination through
//! memory only; the table keeps settings (the password sealed), run logs (counts,
//! ids, hashes) and checkpoints, all without message content.

pub mod archive;
pub mod audit_log;
pub mod config;
pub mod customer_role;
pub mod kick;
pub mod model;
pub mod routes;
pub mod settings;
pub mod suppress;
pub mod tokens;
pub mod worker;

use std::sync::Arc;

use custody::audit::AuditLog;
use custody::aws::Clients;
use custody::clock::SharedClock;
use custody::config::Config;
use custody::highlevel::RetryPolicy;
use custody::idempotency::Idempotency;
use custody::schedule::ExportSchedules;
use custody::seal::Sealer;
use custody::sink::SinkRetry;
use custody::store::Store;

pub use config::ExportConfig;
pub use routes::handle_http;
pub use tokens::{HighLevelToken, TokenError, TokenSource};
pub use worker::{Budget, Outcome, TriggerEvent, handle_trigger};

/// Everything the function needs, built once per cold start.
#[derive(Clone)]
pub struct Deps {
    pub store: Store,
    pub audit: AuditLog,
    pub sealer: Sealer,
    pub schedules: ExportSchedules,
    pub scheduler: aws_sdk_scheduler::Client,
    pub schedule_group: String,
    pub s3: aws_sdk_s3::Client,
    pub http: reqwest::Client,
    pub idempotency: Idempotency,
    pub tokens: Arc<dyn TokenSource>,
    pub config: ExportConfig,
    pub highlevel_retry: RetryPolicy,
    pub sink_retry: SinkRetry,
    /// The SDK config S3 destinations assume the customer's role from (`None`: a
    /// destination with a role cannot be opened).
    pub sdk: Option<aws_config::SdkConfig>,
    /// The pseudonym application secret, read on first use (`custody::subject::AppSecret`):
    /// only a run with suppressed subjects needs it.
    pub app_secret: custody::subject::AppSecret,
}

impl Deps {
    /// Lets S3 destinations assume the customer's role, starting from `sdk`.
    pub fn with_sdk_config(mut self, sdk: aws_config::SdkConfig) -> Self {
        self.sdk = Some(sdk);
        self
    }

    pub fn new(
        config: &Config,
        clients: &Clients,
        export: ExportConfig,
        http: reqwest::Client,
        tokens: Arc<dyn TokenSource>,
        clock: SharedClock,
    ) -> Self {
        let store = Store::new(clients.dynamodb.clone(), &config.table, clock.clone());
        Self {
            audit: AuditLog::from_config(clients, config, clock),
            sealer: Sealer::new(clients.kms.clone(), &config.data_key_id),
            schedules: ExportSchedules::new(clients.scheduler.clone(), &config.schedule_group),
            scheduler: clients.scheduler.clone(),
            schedule_group: config.schedule_group.clone(),
            s3: clients.s3.clone(),
            http,
            idempotency: Idempotency::new(store.clone()),
            store,
            tokens,
            config: export,
            highlevel_retry: RetryPolicy {
                max_attempts: 6,
                base_delay: std::time::Duration::from_millis(500),
                max_delay: std::time::Duration::from_secs(10),
                request_timeout: std::time::Duration::from_secs(15),
            },
            sink_retry: SinkRetry::default(),
            sdk: None,
            app_secret: custody::subject::AppSecret::lazy(
                clients.secrets.clone(),
                &config.pseudonym_secret_id,
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event is neither an HTTP API request nor an export trigger: {0}")]
    Unrecognised(String),
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
}

/// The Lambda entry point: HTTP API events go to the routes, Scheduler events to the
/// worker. The worker's outcome is returned (and logged by the runtime).
pub async fn handle_event(
    deps: &Deps,
    event: serde_json::Value,
    budget: &Budget,
) -> Result<serde_json::Value, EventError> {
    if event.get("requestContext").is_some() {
        let request = lambda_http::request::from_str(&event.to_string())
            .map_err(|e| EventError::Unrecognised(format!("HTTP API event: {e}")))?;
        let response = handle_http(deps, request).await;
        return Ok(
            serde_json::to_value(custody::api::gateway_response(response)).unwrap_or_default(),
        );
    }
    let trigger: TriggerEvent = serde_json::from_value(event)
        .map_err(|e| EventError::Unrecognised(format!("trigger event: {e}")))?;
    let outcome = handle_trigger(deps, trigger, budget).await?;
    Ok(serde_json::to_value(outcome).unwrap_or_default())
}

//! The `import` function: the imports API (HTTP, API Gateway v2 with JWT claims) and
//! the processing of uploaded files (S3 `ObjectCreated`), in one Lambda.
//!
//! - [`http`]: create (presigned upload), row batches, complete, retry, list, get,
//!   download (presigned GET), delete one, delete all.
//! - [`process`]: validate and index an uploaded file, then push its valid rows to the
//!   destination webhook in signed batches; the same delivery serves rows imports
//!   on complete and every import on retry.
//!
//! See `custody::imports` for the data layout and row rules and `custody::webhook`
//! for the wire format the destination receives.

pub mod http;
pub mod process;

use std::time::Duration;

use aws_lambda_events::s3::S3Event;
use custody::audit::AuditLog;
use custody::aws::Clients;
use custody::clock::SharedClock;
use custody::config::Config;
use custody::idempotency::Idempotency;
use custody::imports::Imports;
use custody::seal::Sealer;
use custody::store::Store;
use custody::webhook::{RetryPolicy, Sender};
use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;

/// The import function's settings, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Where destinations may point (`custody::egress::ALLOW_LOOPBACK_VAR`, the one
    /// switch every function reads).
    pub egress: custody::egress::EgressPolicy,
    pub retry: RetryPolicy,
}

impl Settings {
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            egress: custody::egress::EgressPolicy::from_lookup(lookup),
            retry: RetryPolicy::default(),
        }
    }
}

/// Everything the handlers use, built once per cold start.
#[derive(Debug, Clone)]
pub struct Deps {
    pub config: Config,
    pub settings: Settings,
    pub imports: Imports,
    pub sealer: Sealer,
    pub audit: AuditLog,
    pub idempotency: Idempotency,
    pub sender: Sender,
    /// The application secret per-tenant pseudonym keys derive from (read on first use).
    pub app_secret: custody::subject::AppSecret,
    pub clock: SharedClock,
}

impl Deps {
    pub fn new(
        config: Config,
        settings: Settings,
        clients: &Clients,
        http: reqwest::Client,
        app_secret: impl Into<custody::subject::AppSecret>,
        clock: SharedClock,
    ) -> Self {
        let store = Store::new(clients.dynamodb.clone(), &config.table, clock.clone());
        Self {
            imports: Imports::new(store.clone(), clients.s3.clone(), &config.imports_bucket),
            sealer: Sealer::new(clients.kms.clone(), &config.data_key_id),
            audit: AuditLog::from_config(clients, &config, clock.clone()),
            idempotency: Idempotency::new(store),
            sender: Sender::new(http, settings.retry),
            config,
            settings,
            app_secret: app_secret.into(),
            clock,
        }
    }
}

/// One invocation: an S3 notification (records with `eventSource` `aws:s3`) or an
/// HTTP API request. The HTTP response is returned in API Gateway's v2 format.
pub async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let remaining = remaining_time(&event.context);
    let payload = event.payload;
    if is_s3_event(&payload) {
        let s3: S3Event = serde_json::from_value(payload)?;
        process::handle_s3(deps, s3, remaining).await?;
        return Ok(Value::Null);
    }
    let response = match lambda_http::request::from_str(&payload.to_string()) {
        Ok(request) => http::handle(deps, request).await,
        Err(err) => {
            tracing::error!(error = %err, "invocation is neither an S3 event nor an HTTP API request");
            return Err(err.into());
        }
    };
    Ok(serde_json::to_value(custody::api::gateway_response(
        response,
    ))?)
}

fn is_s3_event(payload: &Value) -> bool {
    payload
        .get("Records")
        .and_then(Value::as_array)
        .and_then(|records| records.first())
        .and_then(|record| record.get("eventSource"))
        .and_then(Value::as_str)
        == Some("aws:s3")
}

/// What is left of the invocation (the idempotency claim's lifetime).
pub fn remaining_time(context: &lambda_runtime::Context) -> Duration {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    Duration::from_millis(context.deadline.saturating_sub(now_ms))
}

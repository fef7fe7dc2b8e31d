//! Operational metrics as CloudWatch Embedded Metric Format (EMF) lines on stdout.
//!
//! Code counts through the `metrics` facade (`counter!`, `gauge!`) with the names
//! below; [`init`] installs `metrics_cloudwatch_embedded` as the recorder once per
//! cold start, and [`Metrics::flushed`] writes one EMF line per dimension set after
//! every invocation (CloudWatch Logs turns them into metrics; no API call, no IAM).
//!
//! Why that backend: it is the maintained EMF recorder for the `metrics` facade
//! (histograms, units, Lambda-aware), serialises with serde_json (already linked),
//! and with `default-features = false` adds no runtime dependency beyond `metrics`.
//! Its `lambda` layer is left off (it links lambda_http with every event type, and
//! panics if stdout fails); [`Metrics::flushed`] does the per-invocation flush.
//!
//! Dimensions are `function` (every metric) and `service` (AWS-service metrics) only:
//! never a tenant, subject, pseudonym or request id — those would multiply the
//! metric count per tenant and put identifiers into a store kept for 15 months.
//! The names are the single source for `template.yaml`'s alarms (a test holds them).

use std::sync::atomic::{AtomicBool, Ordering};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The CloudWatch namespace of every custody metric.
pub const NAMESPACE: &str = "custody";
/// Dimension naming the Lambda function (its deployed name).
pub const FUNCTION_DIMENSION: &str = "function";
/// Dimension naming the AWS service of [`names::AWS_THROTTLES`] and [`names::AWS_RETRIES`].
pub const SERVICE_DIMENSION: &str = "service";

/// Every metric custody emits (documented in docs/ARCHITECTURE.md, "Metrics").
pub mod names {
    /// Export runs created (counter).
    pub const EXPORT_RUNS_STARTED: &str = "ExportRunsStarted";
    /// Export runs finished with every conversation written (counter).
    pub const EXPORT_RUNS_COMPLETED: &str = "ExportRunsCompleted";
    /// Export invocations that failed (resumed by the next trigger) or ended a run
    /// without exporting (no connection, re-consent needed) (counter).
    pub const EXPORT_RUNS_FAILED: &str = "ExportRunsFailed";
    /// Export invocations that ran out of time and scheduled a continuation (counter).
    pub const EXPORT_RUNS_CONTINUED: &str = "ExportRunsContinued";
    /// Messages written to customers' destinations (counter).
    pub const EXPORT_MESSAGES: &str = "ExportMessages";
    /// Bytes written to customers' destinations, files and manifests (counter).
    pub const EXPORT_BYTES: &str = "ExportBytes";
    /// 429 answers from HighLevel (counter; steady state should be 0).
    pub const HIGHLEVEL_THROTTLED: &str = "HighLevelThrottled";
    /// Import rows the destination acknowledged (counter).
    pub const IMPORT_ROWS_DELIVERED: &str = "ImportRowsDelivered";
    /// Import rows left undelivered when delivery failed (counter).
    pub const IMPORT_ROWS_FAILED: &str = "ImportRowsFailed";
    /// Privacy requests filed (counter).
    pub const PRIVACY_REQUESTS_OPENED: &str = "PrivacyRequestsOpened";
    /// Privacy requests that reached `completed` (counter).
    pub const PRIVACY_REQUESTS_COMPLETED: &str = "PrivacyRequestsCompleted";
    /// Open privacy requests past their acknowledgement or response deadline, as
    /// found by the daily deadline check (gauge).
    pub const PRIVACY_REQUESTS_OVERDUE: &str = "PrivacyRequestsOverdue";
    /// Account purges not finished within their time, as found by the daily deadline
    /// check (gauge).
    pub const ACCOUNT_PURGES_STUCK: &str = "AccountPurgesStuck";
    /// Table items deleted by account purges (counter).
    pub const PURGE_ITEMS_DELETED: &str = "PurgeItemsDeleted";
    /// Account purges finished with a certificate (counter).
    pub const PURGES_COMPLETED: &str = "PurgesCompleted";
    /// AWS responses that were throttling errors, by `service` (counter).
    pub const AWS_THROTTLES: &str = "AwsThrottles";
    /// AWS request attempts after the first (the SDK's retries), by `service` (counter).
    pub const AWS_RETRIES: &str = "AwsRetries";
    /// Tokens a provider issued on refresh that could not be stored after every retry
    /// (the connection may then need re-consent) (counter).
    pub const OAUTH_TOKENS_NOT_STORED: &str = "OauthTokensNotStored";
    /// Grants of deleted connections a provider could not be made to revoke after
    /// every retry (the grant stays valid at the provider until it expires) (counter).
    pub const PROVIDER_REVOCATIONS_FAILED: &str = "ProviderRevocationsFailed";
    /// Privacy notices to a tenant's notification webhook whose delivery round failed
    /// (`custody::notice`; the daily check redelivers them) (counter).
    pub const PRIVACY_NOTICES_FAILED: &str = "PrivacyNoticesFailed";
    /// Account exports (`POST /account/export`) that ended `failed` after their
    /// attempts, or were found dead (counter).
    pub const ACCOUNT_EXPORTS_FAILED: &str = "AccountExportsFailed";

    /// Every name above.
    pub const ALL: [&str; 21] = [
        EXPORT_RUNS_STARTED,
        EXPORT_RUNS_COMPLETED,
        EXPORT_RUNS_FAILED,
        EXPORT_RUNS_CONTINUED,
        EXPORT_MESSAGES,
        EXPORT_BYTES,
        HIGHLEVEL_THROTTLED,
        IMPORT_ROWS_DELIVERED,
        IMPORT_ROWS_FAILED,
        PRIVACY_REQUESTS_OPENED,
        PRIVACY_REQUESTS_COMPLETED,
        PRIVACY_REQUESTS_OVERDUE,
        ACCOUNT_PURGES_STUCK,
        PURGE_ITEMS_DELETED,
        PURGES_COMPLETED,
        AWS_THROTTLES,
        AWS_RETRIES,
        OAUTH_TOKENS_NOT_STORED,
        PROVIDER_REVOCATIONS_FAILED,
        PRIVACY_NOTICES_FAILED,
        ACCOUNT_EXPORTS_FAILED,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics recorder: {0}")]
    Recorder(String),
}

/// The installed recorder; flushes EMF lines.
#[derive(Clone, Copy)]
pub struct Metrics {
    collector: &'static metrics_cloudwatch_embedded::Collector,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Installs the EMF recorder with the `function` dimension: the deployed function's
/// name (`AWS_LAMBDA_FUNCTION_NAME`, what the alarms select), else `fallback` (local
/// runs and tests). Call once, in `main`; a second call is an error.
pub fn init(fallback: &str) -> Result<Metrics, MetricsError> {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| fallback.to_owned());
    init_for(&function)
}

/// Installs the EMF recorder with `function` as the function dimension.
pub fn init_for(function: &str) -> Result<Metrics, MetricsError> {
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(NAMESPACE)
        .with_dimension(FUNCTION_DIMENSION, function.to_owned())
        .init()
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    Ok(Metrics { collector })
}

impl Metrics {
    /// Writes what was counted since the last flush to `writer`, one EMF line per
    /// dimension set. Counters restart from zero; gauges keep their last value.
    pub fn flush_to(&self, writer: impl std::io::Write) -> std::io::Result<()> {
        self.collector.flush(writer)
    }

    /// Writes to stdout, where Lambda's log capture picks the lines up. A failure is
    /// logged, never fatal: losing metrics must not fail an invocation.
    pub fn flush(&self) {
        if let Err(err) = self.flush_to(std::io::stdout().lock()) {
            tracing::warn!(error = %err, "metrics flush failed");
        }
    }

    /// Runs one invocation, then flushes, whether it succeeded or failed.
    pub async fn flushed<F: std::future::Future>(self, invocation: F) -> F::Output {
        let output = invocation.await;
        self.flush();
        output
    }
}

/// Adds `value` to the counter `name` (a constant of [`names`]).
pub fn count(name: &'static str, value: u64) {
    if value > 0 {
        metrics::counter!(name).increment(value);
    }
}

/// Sets the gauge `name` (a constant of [`names`]).
pub fn gauge(name: &'static str, value: f64) {
    metrics::gauge!(name).set(value);
}

/// Error codes AWS services answer when they throttle (the SDK's own throttling
/// classifier uses the same list), matched in the error response.
const THROTTLING_CODES: [&str; 10] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "LimitExceededException",
];

/// Counts throttling responses and retried attempts of one AWS client, by service.
/// An interceptor sees every attempt, including those the SDK retries and then
/// succeeds; mapping errors where the code handles them would see only the last.
#[derive(Debug)]
pub struct AwsCallMetrics {
    service: &'static str,
    /// One log line per client and container: the metric carries the count, and a
    /// throttling storm must not also flood the log.
    warned: AtomicBool,
}

impl AwsCallMetrics {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            warned: AtomicBool::new(false),
        }
    }

    fn counter(&self, name: &'static str) -> metrics::Counter {
        metrics::counter!(name, SERVICE_DIMENSION => self.service)
    }
}

/// Whether an AWS error response is a throttle: HTTP 429, or a throttling error code
/// in the `x-amzn-errortype` header or the (JSON or XML) error body.
pub fn is_throttle(status: u16, error_type: Option<&str>, body: &[u8]) -> bool {
    if status == 429 {
        return true;
    }
    if status < 400 {
        return false;
    }
    let named = |text: &str| {
        THROTTLING_CODES.iter().any(|code| {
            // `…#ThrottlingException`, `<Code>SlowDown</Code>`, `"__type":"…Exception"`.
            text.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == *code)
        })
    };
    if error_type.is_some_and(named) {
        return true;
    }
    // Error bodies are small; a large body is not an error document worth reading.
    body.len() <= 4096 && std::str::from_utf8(body).is_ok_and(named)
}

impl Intercept for AwsCallMetrics {
    fn name(&self) -> &'static str {
        "custody::metrics::AwsCallMetrics"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg
            .load::<RequestAttempts>()
            .is_some_and(|attempts| attempts.attempts() > 1)
        {
            self.counter(names::AWS_RETRIES).increment(1);
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(response) = context.response() else {
            return Ok(());
        };
        let status = response.status().as_u16();
        let error_type = response.headers().get("x-amzn-errortype");
        let body = response.body().bytes().unwrap_or_default();
        if is_throttle(status, error_type, body) {
            self.counter(names::AWS_THROTTLES).increment(1);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(service = self.service, status, "AWS throttled a request");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_are_recognised_by_status_header_or_body() {
        assert!(is_throttle(429, None, b""));
        assert!(is_throttle(
            400,
            None,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"x"}"#
        ));
        assert!(is_throttle(
            400,
            Some("ThrottlingException:http://internal"),
            b""
        ));
        assert!(is_throttle(
            503,
            None,
            b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"
        ));
        assert!(!is_throttle(200, None, b"ThrottlingException"));
        assert!(!is_throttle(
            400,
            None,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"}"#
        ));
        // A word containing a code is not the code.
        assert!(!is_throttle(400, None, b"NotThrottlingExceptionAtAll"));
    }
}

//! Signed outbound delivery of JSON batches to a customer's webhook.
//!
//! # Wire format (what a receiver implements)
//!
//! Each batch is one `POST` with `content-type: application/json` and the body
//! [`Batch`]: `{"import_id": "...", "batch": <n>, "rows": [{...}, ...]}`, at most
//! [`MAX_BATCH_ROWS`] rows. Three headers come with it:
//!
//! | header | value |
//! |---|---|
//! | `custody-timestamp` ([`TIMESTAMP_HEADER`]) | Unix seconds when the request was signed |
//! | `custody-signature` ([`SIGNATURE_HEADER`]) | `v1=<hex>`: HMAC-SHA256 under the shared secret of `<timestamp>.<raw body>` |
//! | `custody-delivery` ([`DELIVERY_HEADER`]) | `<import id>.<batch>`: the same on every retry of a batch, so a receiver can drop duplicates |
//!
//! A receiver recomputes the HMAC over the timestamp header, a `.` and the raw body
//! bytes, compares in constant time, and rejects a timestamp older than a few minutes
//! (replay). [`verify`] does exactly that. The signature header may carry several
//! comma-separated `v1=` values (secret rotation); any match is accepted.
//!
//! # Retries
//!
//! Connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff
//! and full jitter, a bounded number of times ([`RetryPolicy`]); any other 4xx means
//! the receiver refuses the batch and is not retried. Delivery is at least once: a
//! batch whose acknowledgement was lost is sent again with the same delivery id.

use std::time::Duration;

use hmac::Mac;
use http::StatusCode;
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::domain::subject::{HmacSha256, new_hmac};
use crate::kernel::egress::{self, EgressPolicy};
use crate::kernel::http::{HttpAnswer, HttpError, LogLevel, ProblemKind};

pub const TIMESTAMP_HEADER: &str = "custody-timestamp";
pub const SIGNATURE_HEADER: &str = "custody-signature";
pub const DELIVERY_HEADER: &str = "custody-delivery";
/// Version prefix of the signature value, so the scheme can change without ambiguity.
pub const SIGNATURE_VERSION: &str = "v1";
/// Most rows in one batch.
pub const MAX_BATCH_ROWS: usize = 1000;
/// Most body bytes in one batch (rows are added until either limit is reached), so a
/// batch of wide rows stays a reasonable request and bounded memory.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// How old a signed timestamp a receiver should accept, by default.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// Shortest accepted webhook secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest accepted webhook secret, in bytes: the most that can be sealed. Checked
/// with the rest of the request, so a longer one is a 400 naming its field, not the
/// seal's.
pub const MAX_SECRET_LEN: usize = crate::kernel::seal::MAX_PLAINTEXT_BYTES;

/// The body of one delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub import_id: String,
    /// 0-based sequence number of the batch within the import.
    pub batch: u64,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The delivery id of a batch: stable across retries.
pub fn delivery_id(import_id: &str, batch: u64) -> String {
    format!("{import_id}.{batch}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("signature or timestamp header is missing")]
    MissingHeader,
    #[error("timestamp header is not a number of seconds")]
    MalformedTimestamp,
    #[error("timestamp is outside the accepted window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("destination URL is not acceptable: {0}")]
    InvalidUrl(&'static str),
    #[error("webhook secret must be at least {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    #[error("webhook secret must be at most {MAX_SECRET_LEN} bytes")]
    LongSecret,
    /// The receiver answered with a 4xx that retrying cannot fix.
    #[error("destination refused the batch with HTTP {status}")]
    Refused { status: u16 },
    /// Every attempt failed with a retryable problem; `last` says what (a status or
    /// a transport error kind, never a body).
    #[error("destination did not accept the batch after {attempts} attempts (last: {last})")]
    Exhausted { attempts: u32, last: String },
}

impl HttpError for WebhookError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            WebhookError::InvalidUrl(_) => {
                HttpAnswer::bad_request("destination.url", self.to_string())
            }
            WebhookError::WeakSecret | WebhookError::LongSecret => {
                HttpAnswer::bad_request("destination.secret", self.to_string())
            }
            // The customer's receiver failed: neither the caller's request nor our fault.
            WebhookError::Refused { .. } | WebhookError::Exhausted { .. } => HttpAnswer::new(
                StatusCode::BAD_GATEWAY,
                ProblemKind::new("destination-failed", "Destination failed"),
                self.to_string(),
            )
            .logged(LogLevel::Warn, "destination webhook failed", self),
        }
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mac = mac_of(secret, timestamp, body);
    format!(
        "{SIGNATURE_VERSION}={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

fn mac_of(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = new_hmac(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Verifies a delivery as a receiver should: the timestamp is within `tolerance_secs`
/// of `now` (epoch seconds) and one of the `v1=` signatures matches (constant time).
pub fn verify(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let (Some(timestamp), Some(signatures)) = (timestamp_header, signature_header) else {
        return Err(VerifyError::MissingHeader);
    };
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::MalformedTimestamp)?;
    if (now - timestamp).abs() > tolerance_secs {
        return Err(VerifyError::Stale);
    }
    let prefix = format!("{SIGNATURE_VERSION}=");
    let matched = signatures
        .split(',')
        .filter_map(|part| part.trim().strip_prefix(&prefix))
        .filter_map(|hex_sig| hex::decode(hex_sig).ok())
        .any(|sig| mac_of(secret, timestamp, body).verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Checks a destination URL with the egress guard ([`egress::check_url`]): `https`, a
/// host, no credentials or fragment, not an internal IP literal.
/// `allow_insecure_loopback` admits `http://127.0.0.1` / `http://localhost` for the
/// local stack only. Names are checked again where they resolve, at connect time.
pub fn destination_url(raw: &str, allow_insecure_loopback: bool) -> Result<Url, WebhookError> {
    let policy = EgressPolicy {
        allow_loopback: allow_insecure_loopback,
    };
    egress::check_url(raw, policy).map_err(|e| WebhookError::InvalidUrl(e.reason()))
}

/// A webhook secret must be long enough to resist guessing, and short enough to seal.
pub fn check_secret(secret: &SecretString) -> Result<(), WebhookError> {
    let length = secret.expose_secret().len();
    if length < MIN_SECRET_LEN {
        return Err(WebhookError::WeakSecret);
    }
    if length > MAX_SECRET_LEN {
        return Err(WebhookError::LongSecret);
    }
    Ok(())
}

/// How often and how patiently to retry a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before retry `n` (1-based) is drawn uniformly from
    /// `0..=min(max_delay, base_delay * 2^(n-1))` ("full jitter").
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the backoff before retry `retry` (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }
}

/// Delivers signed batches over the shared HTTP client.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    retry: RetryPolicy,
}

/// What a successful delivery took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub attempts: u32,
}

impl Sender {
    pub fn new(client: reqwest::Client, retry: RetryPolicy) -> Self {
        Self { client, retry }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Posts `body` (a serialised [`Batch`]) to `url`, signed with `secret`, retrying
    /// per the policy. Each attempt is signed afresh, so a retry after a long backoff
    /// still carries a current timestamp.
    pub async fn deliver(
        &self,
        url: &Url,
        secret: &SecretString,
        delivery_id: &str,
        body: bytes::Bytes,
    ) -> Result<Delivered, WebhookError> {
        let attempts = self.retry.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
            }
            let timestamp = chrono::Utc::now().timestamp();
            let signed = signature(secret.expose_secret().as_bytes(), timestamp, &body);
            let result = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signed)
                .header(DELIVERY_HEADER, delivery_id)
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(Delivered { attempts: attempt });
                    }
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                    if !retryable {
                        return Err(WebhookError::Refused {
                            status: status.as_u16(),
                        });
                    }
                    last = format!("HTTP {}", status.as_u16());
                }
                // The egress guard refused the peer: no retry can change that.
                Err(err) if egress::is_refusal(&err) => {
                    return Err(WebhookError::InvalidUrl(
                        egress::EgressError::Forbidden.reason(),
                    ));
                }
                Err(err) => {
                    // The kind only: reqwest's text can include the URL, whose query
                    // may carry a customer's token.
                    last = if err.is_timeout() {
                        "timeout".to_owned()
                    } else if err.is_connect() {
                        "connection failed".to_owned()
                    } else {
                        "transport error".to_owned()
                    };
                }
            }
            tracing::warn!(delivery_id, attempt, last = %last, "webhook delivery attempt failed");
        }
        Err(WebhookError::Exhausted { attempts, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn signature_verifies_and_binds_timestamp_and_body() {
        let body = br#"{"import_id":"i","batch":0,"rows":[]}"#;
        let sig = signature(SECRET, 1_700_000_000, body);
        assert!(sig.starts_with("v1="));
        let ok = verify(
            SECRET,
            Some("1700000000"),
            Some(&sig),
            body,
            1_700_000_010,
            300,
        );
        assert_eq!(ok, Ok(()));
        let other_body = verify(
            SECRET,
            Some("1700000000"),
            Some(&sig),
            b"{}",
            1_700_000_010,
            300,
        );
        assert_eq!(other_body, Err(VerifyError::Mismatch));
        let other_ts = verify(
            SECRET,
            Some("1700000001"),
            Some(&sig),
            body,
            1_700_000_010,
            300,
        );
        assert_eq!(other_ts, Err(VerifyError::Mismatch));
        let wrong_key = verify(
            b"another-secret-another-secret-xx",
            Some("1700000000"),
            Some(&sig),
            body,
            1_700_000_010,
            300,
        );
        assert_eq!(wrong_key, Err(VerifyError::Mismatch));
        let stale = verify(
            SECRET,
            Some("1700000000"),
            Some(&sig),
            body,
            1_700_001_000,
            300,
        );
        assert_eq!(stale, Err(VerifyError::Stale));
        assert_eq!(
            verify(SECRET, None, Some(&sig), body, 0, 300),
            Err(VerifyError::MissingHeader)
        );
        assert_eq!(
            verify(SECRET, Some("soon"), Some(&sig), body, 0, 300),
            Err(VerifyError::MalformedTimestamp)
        );
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let sig = signature(SECRET, 5, b"x");
        let header = format!("v1=00ff, {sig}");
        assert_eq!(
            verify(SECRET, Some("5"), Some(&header), b"x", 5, 300),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, Some("5"), Some("v0=zz,garbage"), b"x", 5, 300),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn destination_urls() {
        assert!(destination_url("https://hooks.example.com/in?x=1", false).is_ok());
        for bad in [
            "http://hooks.example.com/in",
            "https://user:pw@hooks.example.com/",
            "https://127.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/",
            "https://[::1]/",
            "https://localhost/",
            "not a url",
            "ftp://example.com/",
            // Accepted before the egress guard: CGNAT, mapped/ULA IPv6, multicast.
            "https://100.64.0.1/",
            "https://[::ffff:169.254.169.254]/",
            "https://[fd00:ec2::254]/",
            "https://224.0.0.1/",
        ] {
            assert!(destination_url(bad, false).is_err(), "{bad}");
        }
        assert!(destination_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(destination_url("http://example.com/hook", true).is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.ceiling(3), Duration::from_millis(350));
        assert_eq!(policy.ceiling(40), Duration::from_millis(350));
        for retry in 1..6 {
            assert!(policy.backoff(retry) <= policy.ceiling(retry));
        }
    }

    /// A secret longer than can be sealed is refused as the caller's field, before
    /// sealing would refuse it as `secret` (a name no request schema has).
    #[test]
    fn secret_length_is_bounded_on_both_sides() {
        let of = |n: usize| check_secret(&SecretString::from("s".repeat(n)));
        assert!(matches!(
            of(MIN_SECRET_LEN - 1),
            Err(WebhookError::WeakSecret)
        ));
        assert!(of(MIN_SECRET_LEN).is_ok());
        assert!(of(MAX_SECRET_LEN).is_ok());
        assert!(matches!(
            of(MAX_SECRET_LEN + 1),
            Err(WebhookError::LongSecret)
        ));
    }

    #[test]
    fn every_webhook_error_has_its_http_answer() {
        use crate::kernel::http::LogLevel;
        use crate::kernel::http::table::{Detail, row, shown};

        let url = shown(400, "invalid-request", Some("destination.url"));
        assert_eq!(row(&WebhookError::InvalidUrl("must be https")), url);
        let secret = shown(400, "invalid-request", Some("destination.secret"));
        assert_eq!(row(&WebhookError::WeakSecret), secret);
        assert_eq!(row(&WebhookError::LongSecret), secret);
        // The customer's receiver failed: a 502 that says how, logged as a warning.
        let failed = (
            502,
            "destination-failed",
            None,
            Detail::Message,
            Some(LogLevel::Warn),
        );
        for err in [
            WebhookError::Refused { status: 404 },
            WebhookError::Exhausted {
                attempts: 3,
                last: "HTTP 503".into(),
            },
        ] {
            assert_eq!(row(&err), failed, "{err}");
        }
    }
}

//! The outbound HTTP client for CRMs, OAuth providers, WebDAV and webhooks.
//!
//! Built once per cold start. It never follows redirects: a provider or customer
//! endpoint that redirects could otherwise point custody at an internal address
//! (SSRF), or carry credentials to another host. Timeouts bound every call so a slow
//! peer cannot eat the Lambda's deadline.

use std::time::Duration;

pub const USER_AGENT: &str = concat!("custody/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
#[error("HTTP client could not be built: {0}")]
pub struct HttpClientError(String);

/// The shared client: rustls (aws-lc-rs, the AWS SDK's TLS stack), no redirects,
/// 5 s connect timeout, 30 s total per request.
pub fn client() -> Result<reqwest::Client, HttpClientError> {
    client_with_timeout(Duration::from_secs(30))
}

pub fn client_with_timeout(timeout: Duration) -> Result<reqwest::Client, HttpClientError> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .map_err(|e| HttpClientError(e.to_string()))
}

//! Destinations in the customer's own storage: WebDAV and S3.
//!
//! A [`Sink`] writes whole files atomically and verifies them: a reader of the
//! destination sees a file completely or not at all. WebDAV: `PUT` to a hidden
//! temporary name in the same collection, `MOVE` over the final name, `PROPFIND` to
//! check the stored length. S3: a single `PutObject` is already atomic; it carries the
//! SHA-256 so S3 rejects a corrupted upload, and a `HeadObject` confirms length and
//! checksum. Nothing is kept on our side: bytes go from memory to the destination.

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use url::Url;

use crate::kernel::aws::error_text;
use crate::kernel::egress::{self, EgressError, EgressPolicy};

/// Suffix of WebDAV temporary names; readers of the archive ignore such files.
pub const PARTIAL_SUFFIX: &str = ".partial";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("destination refused our credentials (HTTP {0})")]
    Unauthorized(u16),
    #[error("destination rejected {step} (HTTP {status})")]
    Rejected { step: &'static str, status: u16 },
    #[error("destination failed after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("written file did not verify: {0}")]
    Verification(String),
    #[error("invalid destination path: {0}")]
    Path(String),
    #[error("S3 call failed: {0}")]
    S3(String),
    /// The egress guard refused the destination's address: no retry can change that.
    #[error("destination must not point at an internal address")]
    Forbidden,
    #[error("PROPFIND response is larger than {MAX_PROPFIND_BYTES} bytes")]
    PropfindTooLarge,
}

/// Most bytes of a PROPFIND answer read: one `getcontentlength` fits in far less, and
/// a hostile server's endless body must not fill memory.
pub const MAX_PROPFIND_BYTES: usize = 64 * 1024;

/// Why a destination URL is not acceptable. Names the rule, never echoes the URL
/// (it may carry credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is not a valid absolute URL")]
    Invalid,
    #[error("must use https (plain http is allowed only to a loopback host in local development)")]
    NotHttps,
    #[error("must not contain credentials; give username and password separately")]
    Credentials,
    #[error("must not have a query or fragment")]
    QueryOrFragment,
    #[error("must not point at an internal address")]
    Internal,
}

/// Checks a WebDAV base URL: https, or http to a loopback host when
/// `allow_http_loopback` (local development only). Returns it with a trailing `/`.
pub fn webdav_base_url(raw: &str, allow_http_loopback: bool) -> Result<Url, UrlError> {
    let mut url = Url::parse(raw).map_err(|_| UrlError::Invalid)?;
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(UrlError::Invalid);
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_http_loopback && is_loopback(&url) => {}
        _ => return Err(UrlError::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UrlError::QueryOrFragment);
    }
    // The egress guard's early check (IP literals); names are checked at connect time.
    let policy = EgressPolicy {
        allow_loopback: allow_http_loopback,
    };
    egress::check_url(url.as_str(), policy).map_err(|e| match e {
        EgressError::Forbidden => UrlError::Internal,
        EgressError::Scheme => UrlError::NotHttps,
        EgressError::Credentials => UrlError::Credentials,
        EgressError::Fragment => UrlError::QueryOrFragment,
        EgressError::NotAbsolute | EgressError::NoHost | EgressError::Unresolved => {
            UrlError::Invalid
        }
    })?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// What was written and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The path relative to the destination root.
    pub path: String,
    pub bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// The name of the file a destination test writes and removes: hidden, so an
/// archive reader skips it even if it could not be removed.
pub fn probe_path() -> String {
    format!(".custody-probe-{}.json", ulid::Ulid::new())
}

/// What a destination test did: it wrote a small file the way an export writes (and
/// verified it), then removed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    /// The probe's path relative to the destination root.
    pub path: String,
    /// Whether the probe is gone again (a WebDAV `DELETE` or, on S3, the deletion of
    /// the exact version written, so a versioned bucket keeps no trace either).
    pub removed: bool,
}

fn probe_content() -> Bytes {
    Bytes::from_static(b"{\"custody\":\"destination test; safe to delete\"}\n")
}

/// A destination that writes whole files atomically and verifies them.
pub trait Sink: Send + Sync {
    /// Writes `content` at `path` (relative to the destination root, `/`-separated),
    /// replacing any file there. Idempotent: writing the same content twice leaves one file.
    fn put(
        &self,
        path: &str,
        content: Bytes,
    ) -> impl Future<Output = Result<Receipt, SinkError>> + Send;
}

/// Bounded retries with exponential backoff and full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkRetry {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for SinkRetry {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl SinkRetry {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let millis = u64::try_from(exp.min(self.max_delay).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

fn check_path(path: &str) -> Result<Vec<&str>, SinkError> {
    let segments: Vec<&str> = path.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == ".." || s.contains('\\'))
    {
        return Err(SinkError::Path(
            "empty, '.' or '..' segments are not allowed".into(),
        ));
    }
    Ok(segments)
}

pub fn sha256_hex(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

// ---------------------------------------------------------------------------------
// WebDAV
// ---------------------------------------------------------------------------------

/// A WebDAV collection with basic auth, over `custody::http::client`.
#[derive(Debug)]
pub struct WebDavSink {
    http: reqwest::Client,
    base: Url,
    username: String,
    password: SecretString,
    retry: SinkRetry,
    /// Collections known to exist, so each is created once per run.
    collections: Mutex<HashSet<String>>,
}

/// One failed step: retry it, or give up at once.
enum StepError {
    Retry(String),
    Fatal(SinkError),
}

impl WebDavSink {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        allow_http_loopback: bool,
        username: impl Into<String>,
        password: SecretString,
        retry: SinkRetry,
    ) -> Result<Self, UrlError> {
        Ok(Self {
            http,
            base: webdav_base_url(base_url, allow_http_loopback)?,
            username: username.into(),
            password,
            retry,
            collections: Mutex::new(HashSet::new()),
        })
    }

    fn url_of(&self, segments: &[&str], collection: bool) -> Result<Url, SinkError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| SinkError::Path("base URL cannot have segments".into()))?;
            path.pop_if_empty();
            path.extend(segments);
            if collection {
                path.push("");
            }
        }
        Ok(url)
    }

    fn request(&self, method: &str, url: Url) -> Result<reqwest::RequestBuilder, SinkError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| SinkError::Path("bad method".into()))?;
        Ok(self
            .http
            .request(method, url)
            .basic_auth(&self.username, Some(self.password.expose_secret())))
    }

    async fn send(
        &self,
        step: &'static str,
        request: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<reqwest::Response, StepError> {
        let response = request.send().await.map_err(|err| {
            if egress::is_refusal(&err) {
                return StepError::Fatal(SinkError::Forbidden);
            }
            StepError::Retry(if err.is_timeout() {
                format!("{step}: timeout")
            } else {
                format!("{step}: connection error")
            })
        })?;
        let status = response.status().as_u16();
        if ok.contains(&status) {
            return Ok(response);
        }
        Err(match status {
            401 | 403 => StepError::Fatal(SinkError::Unauthorized(status)),
            408 | 423 | 429 | 500..=599 => StepError::Retry(format!("{step}: HTTP {status}")),
            _ => StepError::Fatal(SinkError::Rejected { step, status }),
        })
    }

    /// Creates every collection above the file, top down (MKCOL needs the parent).
    async fn ensure_collections(&self, dirs: &[&str]) -> Result<(), StepError> {
        for depth in 1..=dirs.len() {
            let key = dirs[..depth].join("/");
            if self.collections.lock().await.contains(&key) {
                continue;
            }
            let url = self
                .url_of(&dirs[..depth], true)
                .map_err(StepError::Fatal)?;
            let request = self.request("MKCOL", url).map_err(StepError::Fatal)?;
            // 405: it already exists, which is what we want.
            self.send("MKCOL", request, &[200, 201, 204, 405]).await?;
            self.collections.lock().await.insert(key);
        }
        Ok(())
    }

    async fn attempt(&self, segments: &[&str], content: &Bytes) -> Result<(), StepError> {
        let (name, dirs) = segments
            .split_last()
            .ok_or_else(|| StepError::Fatal(SinkError::Path("empty path".into())))?;
        self.ensure_collections(dirs).await?;

        // The temporary name is fixed per file, so a retry overwrites its own leftover
        // instead of leaving a second partial copy behind.
        let temp_name = format!(".{name}{PARTIAL_SUFFIX}");
        let mut temp_segments = dirs.to_vec();
        temp_segments.push(&temp_name);
        let temp = self
            .url_of(&temp_segments, false)
            .map_err(StepError::Fatal)?;
        let target = self.url_of(segments, false).map_err(StepError::Fatal)?;

        let put = self
            .request("PUT", temp.clone())
            .map_err(StepError::Fatal)?
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(content.clone());
        self.send("PUT", put, &[200, 201, 204]).await?;

        let mv = self
            .request("MOVE", temp)
            .map_err(StepError::Fatal)?
            .header("Destination", target.as_str())
            .header("Overwrite", "T");
        self.send("MOVE", mv, &[200, 201, 204]).await?;

        let propfind = self
            .request("PROPFIND", target)
            .map_err(StepError::Fatal)?
            .header("Depth", "0")
            .header(http::header::CONTENT_TYPE, "application/xml")
            .body(
                r#"<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:getcontentlength/></D:prop></D:propfind>"#,
            );
        let response = self.send("PROPFIND", propfind, &[207]).await?;
        let xml = read_capped(response, MAX_PROPFIND_BYTES).await?;
        match content_length_of(&xml) {
            Some(length) if length == content.len() as u64 => Ok(()),
            Some(length) => Err(StepError::Fatal(SinkError::Verification(format!(
                "stored length {length}, expected {}",
                content.len()
            )))),
            None => Err(StepError::Fatal(SinkError::Verification(
                "PROPFIND did not report getcontentlength".into(),
            ))),
        }
    }
}

/// Reads a response body as text, chunk by chunk, refusing it past `limit` bytes.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<String, StepError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(StepError::Fatal(SinkError::PropfindTooLarge));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| StepError::Retry("PROPFIND: response interrupted".into()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(StepError::Fatal(SinkError::PropfindTooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The `getcontentlength` of a PROPFIND multistatus, whatever the namespace prefix.
fn content_length_of(xml: &str) -> Option<u64> {
    let start = xml.find("getcontentlength>")? + "getcontentlength>".len();
    let rest = &xml[start..];
    let end = rest.find('<')?;
    rest[..end].trim().parse().ok()
}

impl WebDavSink {
    /// Tests the destination: writes and verifies a probe file as an export writes
    /// one, then deletes it. A probe that could not be deleted is reported, not an error.
    pub async fn probe(&self) -> Result<Probe, SinkError> {
        let path = probe_path();
        self.put(&path, probe_content()).await?;
        let url = self.url_of(&[path.as_str()], false)?;
        let removed = match self.request("DELETE", url) {
            Ok(request) => self.send("DELETE", request, &[200, 204]).await.is_ok(),
            Err(_) => false,
        };
        Ok(Probe { path, removed })
    }
}

impl Sink for WebDavSink {
    async fn put(&self, path: &str, content: Bytes) -> Result<Receipt, SinkError> {
        let segments = check_path(path)?;
        let attempts = self.retry.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.retry.backoff(attempt)).await;
            }
            match self.attempt(&segments, &content).await {
                Ok(()) => {
                    return Ok(Receipt {
                        path: path.to_owned(),
                        bytes: content.len() as u64,
                        sha256: sha256_hex(&content),
                    });
                }
                Err(StepError::Fatal(err)) => return Err(err),
                Err(StepError::Retry(why)) => last = why,
            }
        }
        Err(SinkError::Exhausted { attempts, last })
    }
}

// ---------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------

/// The customer's S3 bucket and prefix.
///
/// The client is the caller's: the function's own, or one with the customer's assumed
/// role (the export worker builds it); the writes here are the same either way.
#[derive(Debug, Clone)]
pub struct S3Sink {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Sink {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        Self {
            client,
            bucket: bucket.into(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    pub fn key_of(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }
}

impl S3Sink {
    /// One `PutObject` carrying the content's SHA-256 (`checksum`, base64): S3 recomputes it and refuses the
    /// object if it differs, so a corrupted upload never becomes visible; the SDK
    /// retries transient errors.
    async fn put_object(
        &self,
        key: &str,
        content: Bytes,
        checksum: &str,
    ) -> Result<aws_sdk_s3::operation::put_object::PutObjectOutput, SinkError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .body(ByteStream::from(content))
            .send()
            .await
            .map_err(|e| SinkError::S3(error_text(&e)))
    }

    /// Tests the destination: writes and verifies a probe object as an export writes
    /// one, then deletes exactly the version written (in a versioned bucket a plain
    /// delete would leave the object behind as a noncurrent version).
    pub async fn probe(&self) -> Result<Probe, SinkError> {
        let path = probe_path();
        let key = self.key_of(&path);
        let content = probe_content();
        let checksum = STANDARD.encode(Sha256::digest(&content));
        let written = self.put_object(&key, content, &checksum).await?;
        let removed = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_version_id(written.version_id)
            .send()
            .await
            .is_ok();
        Ok(Probe { path, removed })
    }
}

impl Sink for S3Sink {
    async fn put(&self, path: &str, content: Bytes) -> Result<Receipt, SinkError> {
        check_path(path)?;
        let key = self.key_of(path);
        let digest = Sha256::digest(&content);
        let checksum = STANDARD.encode(digest);
        let length = content.len() as u64;
        self.put_object(&key, content, &checksum).await?;
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| SinkError::S3(error_text(&e)))?;
        if head.content_length.and_then(|l| u64::try_from(l).ok()) != Some(length) {
            return Err(SinkError::Verification(format!(
                "stored length {:?}, expected {length}",
                head.content_length
            )));
        }
        if let Some(stored) = head.checksum_sha256.as_deref() {
            // A full-object checksum; a multipart composite would carry a `-N` suffix.
            if !stored.contains('-') && stored != checksum {
                return Err(SinkError::Verification("stored SHA-256 differs".into()));
            }
        }
        Ok(Receipt {
            path: path.to_owned(),
            bytes: length,
            sha256: hex::encode(digest),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback_is_allowed() {
        assert!(webdav_base_url("https://dav.example.com/x", false).is_ok());
        assert_eq!(
            webdav_base_url("http://dav.example.com/x", true),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            webdav_base_url("http://127.0.0.1:8080/x", false),
            Err(UrlError::NotHttps)
        );
        assert!(webdav_base_url("http://127.0.0.1:8080/x", true).is_ok());
        assert!(webdav_base_url("http://[::1]:8080/", true).is_ok());
        assert!(webdav_base_url("http://localhost/", true).is_ok());
        assert_eq!(
            webdav_base_url("https://u:p@dav.example.com/", false),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            webdav_base_url("https://dav.example.com/?a=b", false),
            Err(UrlError::QueryOrFragment)
        );
        assert_eq!(webdav_base_url("ftp://x/", true), Err(UrlError::NotHttps));
        // Unchecked before the egress guard: internal literals over https.
        for internal in [
            "https://169.254.169.254/dav/",
            "https://10.0.0.1/",
            "https://[::ffff:127.0.0.1]/",
            "https://[fd00::1]/",
            "https://100.64.0.1/",
        ] {
            assert_eq!(
                webdav_base_url(internal, true),
                Err(UrlError::Internal),
                "{internal}"
            );
        }
        assert_eq!(webdav_base_url("not a url", true), Err(UrlError::Invalid));
        assert_eq!(
            webdav_base_url("https://dav.example.com/a", false)
                .unwrap()
                .path(),
            "/a/"
        );
    }

    #[test]
    fn paths_cannot_escape_the_root() {
        assert!(check_path("a/b.json").is_ok());
        for bad in ["", "a//b", "../a", "a/./b", "/a", "a/"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn propfind_length_is_found_under_any_prefix() {
        assert_eq!(
            content_length_of("<D:getcontentlength>42</D:getcontentlength>"),
            Some(42)
        );
        assert_eq!(
            content_length_of("<getcontentlength> 7 </getcontentlength>"),
            Some(7)
        );
        assert_eq!(content_length_of("<D:prop/>"), None);
    }
}

//! Destinations in the customer's own storage: WebDAV and S3.
//!
//! A [`Sink`] writes whole files atomically and verifies them: a reader of the
//! destination sees a file completely or not at all. WebDAV: `PUT` to a hidden
//! temporary name in the same collection, `MOVE` over the final name, `PROPFIND` to
//! check the stored length. S3: a single `PutObject` is already atomic; it carries the
//! SHA-256 so S3 rejects a corrupted upload, and a `HeadObject` confirms length and
//! checksum. Nothing is kept on our side: bytes go from memory to the destination.
//!
//! A file too large to hold whole (a run's manifest) is written from a [`BodySource`]
//! with [`Sink::put_stream`], in bounded memory: to WebDAV as a streamed `PUT` (same
//! temporary name, `MOVE` and check; each retry asks the source for the body again),
//! to S3 as a multipart upload of [`S3_PART_BYTES`] parts (one `PutObject` when the
//! body is smaller than a part). Length and SHA-256 are computed as the bytes go out.

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
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
    /// A streamed file's content could not be produced (our side, not the
    /// destination's): the write is abandoned, nothing appears at the final path.
    #[error("file content could not be produced: {0}")]
    Source(String),
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

/// Why a streamed body could not be produced. Its text goes into [`SinkError::Source`]:
/// it must name no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// A file's content as a stream of chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send + 'static>>;

/// Produces a file's content from its first byte, as often as asked: a streamed body
/// cannot be replayed, so every attempt of a write opens a fresh one. Each opening
/// must yield the same bytes. Any `Fn() -> BodyStream` is one.
pub trait BodySource: Send + Sync {
    fn open(&self) -> BodyStream;
}

impl<F> BodySource for F
where
    F: Fn() -> BodyStream + Send + Sync,
{
    fn open(&self) -> BodyStream {
        self()
    }
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

    /// Writes the content `body` produces at `path`, as [`Sink::put`] does (atomic,
    /// verified, idempotent), holding a bounded part of it in memory at a time. The
    /// receipt's length and SHA-256 are of the bytes written.
    fn put_stream(
        &self,
        path: &str,
        body: &dyn BodySource,
    ) -> impl Future<Output = Result<Receipt, SinkError>> + Send;
}

/// Length and SHA-256 of the bytes a body yielded so far, and its first error.
#[derive(Default)]
struct Tally {
    hasher: Sha256,
    bytes: u64,
    failed: Option<BodyError>,
}

impl Tally {
    fn add(&mut self, item: &Result<Bytes, BodyError>) {
        match item {
            Ok(chunk) => {
                self.hasher.update(chunk);
                self.bytes += chunk.len() as u64;
            }
            Err(err) => {
                self.failed.get_or_insert_with(|| err.clone());
            }
        }
    }
}

type SharedTally = Arc<std::sync::Mutex<Tally>>;

fn tally_of(tally: &SharedTally) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|p| p.into_inner())
}

/// `stream`, counted and hashed into `tally` as the HTTP client reads it.
fn tallied(stream: BodyStream, tally: SharedTally) -> impl Stream<Item = Result<Bytes, BodyError>> {
    stream.map(move |item| {
        tally_of(&tally).add(&item);
        item
    })
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

    async fn attempt(
        &self,
        segments: &[&str],
        content: Content<'_>,
    ) -> Result<(u64, String), StepError> {
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
            .header(http::header::CONTENT_TYPE, "application/json");
        let (length, sha256) = match content {
            Content::Whole(bytes) => {
                self.send("PUT", put.body(bytes.clone()), &[200, 201, 204])
                    .await?;
                (bytes.len() as u64, sha256_hex(bytes))
            }
            Content::Streamed(source) => {
                let tally = SharedTally::default();
                let body = reqwest::Body::wrap_stream(tallied(source.open(), tally.clone()));
                // The body is produced while it is sent (a run's manifest is read from
                // the table page by page): the whole request gets longer than one
                // buffered upload would.
                let put = put.timeout(STREAMED_PUT_TIMEOUT).body(body);
                let sent = self.send("PUT", put, &[200, 201, 204]).await;
                let mut tally = std::mem::take(&mut *tally_of(&tally));
                // Our own failure is not the destination's: no retry.
                if let Some(err) = tally.failed.take() {
                    return Err(StepError::Fatal(SinkError::Source(err.0)));
                }
                sent?;
                (tally.bytes, hex::encode(tally.hasher.finalize()))
            }
        };

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
            Some(stored) if stored == length => Ok((length, sha256)),
            Some(stored) => Err(StepError::Fatal(SinkError::Verification(format!(
                "stored length {stored}, expected {length}"
            )))),
            None => Err(StepError::Fatal(SinkError::Verification(
                "PROPFIND did not report getcontentlength".into(),
            ))),
        }
    }

    /// Writes `content` with bounded retries, each attempt from the start.
    async fn write(&self, path: &str, content: Content<'_>) -> Result<Receipt, SinkError> {
        let segments = check_path(path)?;
        let attempts = self.retry.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.retry.backoff(attempt)).await;
            }
            match self.attempt(&segments, content).await {
                Ok((bytes, sha256)) => {
                    return Ok(Receipt {
                        path: path.to_owned(),
                        bytes,
                        sha256,
                    });
                }
                Err(StepError::Fatal(err)) => return Err(err),
                Err(StepError::Retry(why)) => last = why,
            }
        }
        Err(SinkError::Exhausted { attempts, last })
    }
}

/// What a WebDAV write sends: bytes in memory, or a body produced anew per attempt.
#[derive(Clone, Copy)]
enum Content<'a> {
    Whole(&'a Bytes),
    Streamed(&'a dyn BodySource),
}

/// The longest a streamed `PUT` may take, body production included (instead of the
/// client's per-request timeout, sized for buffered bodies).
pub const STREAMED_PUT_TIMEOUT: Duration = Duration::from_secs(300);

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
        self.write(path, Content::Whole(&content)).await
    }

    async fn put_stream(&self, path: &str, body: &dyn BodySource) -> Result<Receipt, SinkError> {
        self.write(path, Content::Streamed(body)).await
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

/// The smallest S3 part but the last (5 MiB): a streamed upload holds about one part
/// in memory; a body smaller than one part goes up as one `PutObject`.
pub const S3_PART_BYTES: usize = 5 * 1024 * 1024;

/// The next part of `stream`: chunks until at least `S3_PART_BYTES`, or the end (then
/// `true`). Counts and hashes the whole body into `tally` on the way.
async fn next_part(stream: &mut BodyStream, tally: &mut Tally) -> Result<(Bytes, bool), SinkError> {
    let mut part = bytes::BytesMut::new();
    while part.len() < S3_PART_BYTES {
        match stream.next().await {
            None => return Ok((part.freeze(), true)),
            Some(item) => {
                tally.add(&item);
                part.extend_from_slice(&item.map_err(|e| SinkError::Source(e.0))?);
            }
        }
    }
    Ok((part.freeze(), false))
}

impl S3Sink {
    /// Confirms what S3 stored at `key`: its length, and the SHA-256 it reports
    /// (`checksum`, base64: of the object, or for a multipart upload the composite,
    /// the SHA-256 of its parts' SHA-256s, which S3 writes with a `-<parts>` suffix).
    async fn verify(&self, key: &str, length: u64, checksum: &str) -> Result<(), SinkError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
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
            let value = stored.split('-').next().unwrap_or(stored);
            if value != checksum {
                return Err(SinkError::Verification("stored SHA-256 differs".into()));
            }
        }
        Ok(())
    }

    /// A multipart upload of `first` and the rest of `stream`, completed only when
    /// every part is up: until then nothing is visible at `key`. Each part carries its
    /// SHA-256 (S3 refuses a corrupted part); the SDK retries transient errors of each
    /// call (a part is in memory, so it can be resent).
    async fn multipart(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        stream: &mut BodyStream,
        tally: &mut Tally,
    ) -> Result<String, SinkError> {
        let mut parts = Vec::new();
        // The parts' raw SHA-256s, for the composite checksum S3 reports.
        let mut digests = Vec::new();
        let (mut part, mut ended) = (first, false);
        for number in 1.. {
            let digest = Sha256::digest(&part);
            digests.extend_from_slice(&digest);
            let checksum = STANDARD.encode(digest);
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| SinkError::S3(error_text(&e)))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag)
                    .checksum_sha256(uploaded.checksum_sha256.unwrap_or(checksum))
                    .build(),
            );
            if ended {
                break;
            }
            (part, ended) = next_part(stream, tally).await?;
            if part.is_empty() {
                break;
            }
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| SinkError::S3(error_text(&e)))?;
        Ok(STANDARD.encode(Sha256::digest(&digests)))
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
        self.verify(&key, length, &checksum).await?;
        Ok(Receipt {
            path: path.to_owned(),
            bytes: length,
            sha256: hex::encode(digest),
        })
    }

    async fn put_stream(&self, path: &str, body: &dyn BodySource) -> Result<Receipt, SinkError> {
        check_path(path)?;
        let key = self.key_of(path);
        let mut stream = body.open();
        let mut tally = Tally::default();
        let (first, ended) = next_part(&mut stream, &mut tally).await?;
        if ended {
            // Smaller than a part: one `PutObject`, as `put` writes.
            return self.put(path, first).await;
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| SinkError::S3(error_text(&e)))?;
        let upload_id = upload
            .upload_id
            .ok_or_else(|| SinkError::S3("CreateMultipartUpload returned no upload id".into()))?;
        let uploaded = self
            .multipart(&key, &upload_id, first, &mut stream, &mut tally)
            .await;
        let composite = match uploaded {
            Ok(composite) => composite,
            Err(err) => {
                // Parts of an abandoned upload stay in the customer's bucket (billed)
                // until aborted; a failed abort is logged, the write's error returned.
                if let Err(abort) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(
                        error = %error_text(&abort),
                        "aborting a multipart upload to the destination bucket failed; its parts stay until the bucket's lifecycle rule or a later abort removes them"
                    );
                }
                return Err(err);
            }
        };
        self.verify(&key, tally.bytes, &composite).await?;
        let digest = tally.hasher.finalize();
        Ok(Receipt {
            path: path.to_owned(),
            bytes: tally.bytes,
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

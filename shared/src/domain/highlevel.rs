//! The HighLevel (LeadConnector) conversations API: `GET /conversations/messages/export`
//! with its cursor, channel and date filters.
//!
//! The client keeps to HighLevel's rate limits by itself: 100 requests per 10 s and
//! 200 000 per day per location are the documented defaults, and every response's
//! `X-RateLimit-*` headers replace them with what the server actually enforces. It
//! paces requests so the window is never exceeded (a 429 in steady state is a bug),
//! and retries 429, 5xx, timeouts and broken connections with exponential backoff and
//! full jitter, a bounded number of times. Message bodies pass through memory only:
//! errors carry status codes and kinds, never response text.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use http::HeaderMap;
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The production API.
pub const DEFAULT_BASE_URL: &str = "https://services.leadconnectorhq.com";
/// The `Version` header the conversations endpoints require.
pub const API_VERSION: &str = "2021-04-15";
/// Page size bounds of the export endpoint.
pub const MAX_PAGE_SIZE: u32 = 500;
pub const MIN_PAGE_SIZE: u32 = 10;

/// Documented limits, per app per location.
pub const DOCUMENTED_BURST_MAX: u32 = 100;
pub const DOCUMENTED_BURST_INTERVAL: Duration = Duration::from_secs(10);
pub const DOCUMENTED_DAILY_MAX: u32 = 200_000;

pub mod headers {
    pub const DAILY_LIMIT: &str = "x-ratelimit-limit-daily";
    pub const DAILY_REMAINING: &str = "x-ratelimit-daily-remaining";
    pub const INTERVAL_MS: &str = "x-ratelimit-interval-milliseconds";
    pub const MAX: &str = "x-ratelimit-max";
    pub const REMAINING: &str = "x-ratelimit-remaining";
}

/// A conversation channel the export endpoint filters by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Channel {
    Call,
    #[serde(rename = "SMS")]
    Sms,
    Email,
    WhatsApp,
    Instagram,
    Facebook,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::Call,
        Channel::Sms,
        Channel::Email,
        Channel::WhatsApp,
        Channel::Instagram,
        Channel::Facebook,
    ];

    /// The query value HighLevel expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Call => "Call",
            Channel::Sms => "SMS",
            Channel::Email => "Email",
            Channel::WhatsApp => "WhatsApp",
            Channel::Instagram => "Instagram",
            Channel::Facebook => "Facebook",
        }
    }

    /// The channel of a message by its `messageType`, or `None` for activity and
    /// other non-conversation types (which no channel setting selects).
    pub fn of_message_type(message_type: &str) -> Option<Channel> {
        let kind = message_type.strip_prefix("TYPE_").unwrap_or(message_type);
        let channel = match kind {
            "CALL"
            | "CAMPAIGN_CALL"
            | "CAMPAIGN_MANUAL_CALL"
            | "IVR_CALL"
            | "CUSTOM_CALL"
            | "CAMPAIGN_VOICEMAIL" => Channel::Call,
            "SMS"
            | "RCS"
            | "SMS_REVIEW_REQUEST"
            | "SMS_NO_SHOW_REQUEST"
            | "CAMPAIGN_SMS"
            | "CAMPAIGN_MANUAL_SMS"
            | "CUSTOM_SMS"
            | "CUSTOM_PROVIDER_SMS"
            | "SMS_REACTION" => Channel::Sms,
            "EMAIL" | "CAMPAIGN_EMAIL" | "CUSTOM_EMAIL" | "CUSTOM_PROVIDER_EMAIL" => Channel::Email,
            "WHATSAPP" => Channel::WhatsApp,
            "INSTAGRAM" | "INSTAGRAM_COMMENT" => Channel::Instagram,
            "FACEBOOK" | "CAMPAIGN_FACEBOOK" | "FACEBOOK_COMMENT" => Channel::Facebook,
            _ => return None,
        };
        Some(channel)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message as the export endpoint returns it. Unknown fields are dropped: the
/// export format is ours and stable, whatever HighLevel adds.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    #[serde(default, rename = "type")]
    pub type_code: Option<i64>,
    #[serde(default)]
    pub message_type: String,
    pub location_id: String,
    #[serde(default)]
    pub contact_id: String,
    pub conversation_id: String,
    pub date_added: DateTime<Utc>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub attachments: Vec<String>,
    #[serde(default)]
    pub meta: Option<serde_json::Value>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
}

impl fmt::Debug for Message {
    // Ids only: a message's content must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("conversation_id", &self.conversation_id)
            .field("message_type", &self.message_type)
            .finish_non_exhaustive()
    }
}

impl Message {
    pub fn channel(&self) -> Option<Channel> {
        Channel::of_message_type(&self.message_type)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportPage {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub next_cursor: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
}

/// One request of the export endpoint. Results are ordered by `createdAt` ascending,
/// so a cursor walk is stable while new messages arrive (they land after `end`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportQuery {
    pub location_id: String,
    /// `None`: every non-email type (HighLevel's default).
    pub channel: Option<Channel>,
    pub conversation_id: Option<String>,
    /// Inclusive.
    pub start: Option<DateTime<Utc>>,
    /// Exclusive.
    pub end: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    pub limit: u32,
}

impl ExportQuery {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("locationId", self.location_id.clone()),
            (
                "limit",
                self.limit.clamp(MIN_PAGE_SIZE, MAX_PAGE_SIZE).to_string(),
            ),
            ("sortBy", "createdAt".to_owned()),
            ("sortOrder", "asc".to_owned()),
        ];
        if let Some(channel) = self.channel {
            params.push(("channel", channel.as_str().to_owned()));
        }
        if let Some(id) = &self.conversation_id {
            params.push(("conversationId", id.clone()));
        }
        if let Some(start) = self.start {
            params.push(("startDate", iso(start)));
        }
        if let Some(end) = self.end {
            params.push(("endDate", iso(end)));
        }
        if let Some(cursor) = &self.cursor {
            params.push(("cursor", cursor.clone()));
        }
        params
    }
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, thiserror::Error)]
pub enum HighLevelError {
    /// The token was refused: the connection must be refreshed or re-authorized.
    #[error("HighLevel refused the access token (HTTP {0})")]
    Unauthorized(u16),
    /// A request HighLevel rejects as malformed: our bug or a bad setting, not worth retrying.
    #[error("HighLevel rejected the request (HTTP {status})")]
    Rejected { status: u16 },
    /// The day's quota for this location is used up.
    #[error("HighLevel daily request quota for this location is exhausted")]
    DailyQuotaExhausted,
    /// Retries ran out on 429, 5xx or network errors.
    #[error("HighLevel request failed after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("HighLevel response could not be read: {0}")]
    Decode(String),
    #[error("invalid HighLevel base URL: {0}")]
    BaseUrl(String),
}

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Per-request timeout (a slow response counts as a failed attempt).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            request_timeout: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in `[0, min(max, base · 2^attempt)]`, so clients that
    /// failed together do not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let cap = exp.min(self.max_delay);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// What the client knows about its request budget, from the documented limits and
/// then from each response's headers.
///
/// A request holds a place in the window from the moment it is allowed to go until
/// one window after its answer came back (or it failed). The answer is the earliest
/// time the client knows the server has counted the request, so however late a task
/// actually sends after being allowed to, the request that takes the freed place
/// arrives at least one window after the one that left it (docs/ARCHITECTURE.md,
/// "Export at the ceiling"). Stamping requests when they were allowed to go, as an
/// earlier version did, let a starved task's request arrive late and the next one
/// early: 429s under load.
#[derive(Debug)]
struct Limiter {
    max: u32,
    interval: Duration,
    daily_remaining: Option<u64>,
    /// Requests allowed to go whose answer has not come yet.
    in_flight: usize,
    /// When each answered (or failed) request of the last window ended, oldest first.
    ended: VecDeque<Instant>,
    /// No request before this instant (after a 429 or a spent window the client did
    /// not spend itself).
    not_before: Option<Instant>,
}

/// Added to the window: the ends are taken on this machine's clock and the server
/// counts on its own; a small margin for timer rounding and clock drift.
const WINDOW_SLACK: Duration = Duration::from_millis(10);

/// What [`Limiter::wait`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Go now (the place is taken).
    Go,
    /// Ask again after this long.
    For(Duration),
    /// Every place is held by a request in flight: ask again when one ends.
    ForAnEnd,
}

impl Limiter {
    fn documented() -> Self {
        Self {
            max: DOCUMENTED_BURST_MAX,
            interval: DOCUMENTED_BURST_INTERVAL,
            daily_remaining: None,
            in_flight: 0,
            ended: VecDeque::new(),
            not_before: None,
        }
    }

    fn window(&self) -> Duration {
        self.interval + WINDOW_SLACK
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window();
        while self
            .ended
            .front()
            .is_some_and(|end| now.duration_since(*end) >= window)
        {
            self.ended.pop_front();
        }
    }

    /// Places in the window the client itself holds.
    fn held(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.in_flight + self.ended.len()
    }

    /// Whether a request may go now; if so its place is taken ([`Self::end`] gives
    /// it back one window later).
    fn wait(&mut self, now: Instant) -> Wait {
        let max = self.max.max(1) as usize;
        let held = self.held(now);
        let mut wait = self
            .not_before
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        if held >= max {
            // The (held - max + 1) oldest ended requests must age out first; if fewer
            // have ended, only an answer can free a place.
            match self.ended.get(held - max) {
                Some(end) => {
                    wait = wait.max((*end + self.window()).saturating_duration_since(now));
                }
                None => return Wait::ForAnEnd,
            }
        }
        if wait.is_zero() {
            self.in_flight += 1;
            Wait::Go
        } else {
            Wait::For(wait)
        }
    }

    /// A request allowed by [`Self::wait`] was answered or failed.
    fn end(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.ended.push_back(now);
    }

    /// Adopts what the server reports: its window size and what is left of it. Called
    /// while the answered request still holds its place.
    fn observe(&mut self, headers: &HeaderMap, now: Instant) {
        let number = |name: &str| -> Option<u64> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(max) = number(headers::MAX).filter(|m| *m > 0) {
            self.max = u32::try_from(max).unwrap_or(u32::MAX);
        }
        if let Some(ms) = number(headers::INTERVAL_MS).filter(|m| *m > 0) {
            self.interval = Duration::from_millis(ms);
        }
        if let Some(remaining) = number(headers::DAILY_REMAINING) {
            self.daily_remaining = Some(remaining);
        }
        if number(headers::REMAINING) == Some(0) && self.held(now) < self.max.max(1) as usize {
            // The server says the window is spent, but not by this client alone
            // (another run on the same location): when its other requests age out
            // is unknown, so wait a whole window.
            let until = now + self.window();
            self.not_before = Some(self.not_before.map_or(until, |at| at.max(until)));
        }
    }

    fn back_off_until(&mut self, until: Instant) {
        self.not_before = Some(self.not_before.map_or(until, |at| at.max(until)));
    }
}

/// A place in the window, held until the request it was taken for ends (answered,
/// failed, or the future dropped), then kept for one window.
struct Place<'a> {
    client: &'a HighLevelClient,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.client.limiter().end(Instant::now());
        self.client.ended.notify_waiters();
    }
}

/// Counters of what the client did, for logs and the run record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientStats {
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
}

/// A HighLevel API client for one location's token. Cheap to build per run.
#[derive(Debug)]
pub struct HighLevelClient {
    http: reqwest::Client,
    base: url::Url,
    token: SecretString,
    retry: RetryPolicy,
    /// A std mutex: never held across an await, and released from `Drop`.
    limiter: std::sync::Mutex<Limiter>,
    /// Woken whenever a request ends, for tasks waiting on a place.
    ended: Notify,
    stats: std::sync::Mutex<ClientStats>,
}

impl HighLevelClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        token: SecretString,
        retry: RetryPolicy,
    ) -> Result<Self, HighLevelError> {
        let base = url::Url::parse(base_url).map_err(|e| HighLevelError::BaseUrl(e.to_string()))?;
        if !matches!(base.scheme(), "https" | "http") {
            return Err(HighLevelError::BaseUrl("scheme must be https".into()));
        }
        Ok(Self {
            http,
            base,
            token,
            retry,
            limiter: std::sync::Mutex::new(Limiter::documented()),
            ended: Notify::new(),
            stats: std::sync::Mutex::new(ClientStats::default()),
        })
    }

    pub fn stats(&self) -> ClientStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut ClientStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn export_url(&self) -> Result<url::Url, HighLevelError> {
        self.base
            .join("conversations/messages/export")
            .map_err(|e| HighLevelError::BaseUrl(e.to_string()))
    }

    /// One page of `GET /conversations/messages/export`.
    pub async fn export_page(&self, query: &ExportQuery) -> Result<ExportPage, HighLevelError> {
        let url = self.export_url()?;
        let params = query.params();
        let mut last = String::new();
        for attempt in 0..self.retry.max_attempts.max(1) {
            if attempt > 0 {
                self.count(|s| s.retries += 1);
                tokio::time::sleep(self.retry.backoff(attempt)).await;
            }
            let place = self.pace().await?;
            self.count(|s| s.requests += 1);
            let sent = self
                .http
                .get(url.clone())
                .query(&params)
                .bearer_auth(self.token.expose_secret())
                .header("Version", API_VERSION)
                .header(http::header::ACCEPT, "application/json")
                .timeout(self.retry.request_timeout)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(err) => {
                    last = transport_error(&err);
                    continue;
                }
            };
            let status = response.status();
            self.limiter().observe(response.headers(), Instant::now());
            // Answered: the place is kept for one window from now.
            drop(place);
            if status.is_success() {
                match response.bytes().await {
                    Ok(bytes) => {
                        return serde_json::from_slice::<ExportPage>(&bytes).map_err(|e| {
                            // serde_json's message names the position, never the content.
                            HighLevelError::Decode(format!(
                                "line {} column {}: {:?}",
                                e.line(),
                                e.column(),
                                e.classify()
                            ))
                        });
                    }
                    Err(err) => {
                        // The body broke off (connection reset mid-response).
                        last = transport_error(&err);
                        continue;
                    }
                }
            }
            last = format!("HTTP {}", status.as_u16());
            match status.as_u16() {
                401 | 403 => return Err(HighLevelError::Unauthorized(status.as_u16())),
                429 => {
                    self.count(|s| s.throttled += 1);
                    crate::kernel::metrics::count(
                        crate::kernel::metrics::names::HIGHLEVEL_THROTTLED,
                        1,
                    );
                    let mut limiter = self.limiter();
                    if limiter.daily_remaining == Some(0) {
                        return Err(HighLevelError::DailyQuotaExhausted);
                    }
                    let wait = retry_after(response.headers()).unwrap_or(limiter.window());
                    limiter.back_off_until(Instant::now() + wait);
                }
                500..=599 => {}
                code => return Err(HighLevelError::Rejected { status: code }),
            }
        }
        Err(HighLevelError::Exhausted {
            attempts: self.retry.max_attempts.max(1),
            last,
        })
    }

    /// Waits until a request fits the window, then takes its place.
    async fn pace(&self) -> Result<Place<'_>, HighLevelError> {
        loop {
            // Registered before the limiter is read, so an end in between is not missed.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let wait = {
                let mut limiter = self.limiter();
                if limiter.daily_remaining == Some(0) {
                    return Err(HighLevelError::DailyQuotaExhausted);
                }
                limiter.wait(Instant::now())
            };
            match wait {
                Wait::Go => return Ok(Place { client: self }),
                Wait::For(wait) => tokio::time::sleep(wait).await,
                Wait::ForAnEnd => ended.await,
            }
        }
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The kind of a transport failure, without URLs (they carry the location id and
/// cursor) or anything from the peer.
fn transport_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timeout".to_owned()
    } else if err.is_connect() {
        "connection failed".to_owned()
    } else if err.is_body() || err.is_decode() {
        "response body interrupted".to_owned()
    } else {
        "connection error".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_mapping() {
        assert_eq!(Channel::of_message_type("TYPE_SMS"), Some(Channel::Sms));
        assert_eq!(
            Channel::of_message_type("TYPE_CAMPAIGN_VOICEMAIL"),
            Some(Channel::Call)
        );
        assert_eq!(Channel::of_message_type("TYPE_ACTIVITY_OPPORTUNITY"), None);
        assert_eq!(serde_json::to_string(&Channel::Sms).unwrap(), "\"SMS\"");
        for channel in Channel::ALL {
            let json = serde_json::to_string(&channel).unwrap();
            assert_eq!(json, format!("\"{}\"", channel.as_str()));
        }
    }

    #[test]
    fn backoff_is_bounded() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        for attempt in 0..40 {
            assert!(policy.backoff(attempt) <= Duration::from_secs(1));
        }
    }

    fn limiter_of(max: &str) -> Limiter {
        let mut limiter = Limiter::documented();
        let mut headers = HeaderMap::new();
        headers.insert(headers::MAX, max.parse().unwrap());
        headers.insert(headers::INTERVAL_MS, "1000".parse().unwrap());
        limiter.observe(&headers, Instant::now());
        limiter
    }

    #[test]
    fn limiter_keeps_to_the_window() {
        let mut limiter = limiter_of("3");
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.wait(start), Wait::Go);
        }
        // All three in flight: only an answer frees a place.
        assert_eq!(limiter.wait(start), Wait::ForAnEnd);
        for _ in 0..3 {
            limiter.end(start);
        }
        let Wait::For(wait) = limiter.wait(start) else {
            panic!("a full window must wait");
        };
        assert!(wait >= Duration::from_millis(1000), "{wait:?}");
        assert_eq!(limiter.wait(start + Duration::from_millis(1100)), Wait::Go);
    }

    #[test]
    fn a_place_is_kept_one_window_from_the_answer_not_from_the_permission() {
        // A request allowed at 0 but answered at 600 ms (a starved task, a slow
        // server) was counted by the server at some time up to 600 ms: its place
        // frees one window after that, never one window after the permission.
        let mut limiter = limiter_of("2");
        let start = Instant::now();
        assert_eq!(limiter.wait(start), Wait::Go);
        assert_eq!(limiter.wait(start), Wait::Go);
        limiter.end(start + Duration::from_millis(100));
        limiter.end(start + Duration::from_millis(600));
        let at = |ms| start + Duration::from_millis(ms);
        assert!(matches!(limiter.wait(at(1050)), Wait::For(_)));
        assert_eq!(limiter.wait(at(1110)), Wait::Go);
        // The second place is still held until 600 ms + the window.
        assert!(matches!(limiter.wait(at(1110)), Wait::For(w) if w >= Duration::from_millis(490)));
        assert_eq!(limiter.wait(at(1610)), Wait::Go);
    }

    #[test]
    fn a_window_spent_by_someone_else_waits_a_whole_window() {
        let mut limiter = limiter_of("10");
        let start = Instant::now();
        assert_eq!(limiter.wait(start), Wait::Go);
        let mut spent = HeaderMap::new();
        spent.insert(headers::REMAINING, "0".parse().unwrap());
        // One request of this client's own, yet the server says the window is spent.
        limiter.observe(&spent, start);
        limiter.end(start);
        assert!(matches!(limiter.wait(start), Wait::For(w) if w >= Duration::from_millis(1000)));
        // When the client spent the window itself, its own places say when to go.
        let mut own = limiter_of("2");
        assert_eq!(own.wait(start), Wait::Go);
        own.end(start);
        assert_eq!(own.wait(start), Wait::Go);
        own.observe(&spent, start);
        own.end(start + Duration::from_millis(5));
        assert_eq!(own.not_before, None);
    }

    #[test]
    fn message_debug_has_no_body() {
        let message: Message = serde_json::from_value(serde_json::json!({
            "id": "m1", "type": 2, "messageType": "TYPE_SMS", "locationId": "l",
            "contactId": "c", "conversationId": "conv", "dateAdded": "2025-01-01T00:00:00.000Z",
            "body": "secret words", "direction": "inbound", "contentType": "text/plain"
        }))
        .unwrap();
        assert!(!format!("{message:?}").contains("secret"));
        assert_eq!(message.channel(), Some(Channel::Sms));
    }
}

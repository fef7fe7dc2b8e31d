//! The HighLevel conversations API, simulated: `GET /conversations/messages/export`
//! with bearer tokens, the `Version` header, cursor pagination, channel, conversation
//! and date filters, deterministic seeded data, and a real sliding-window rate limiter
//! per location that answers 429 with HighLevel's `X-RateLimit-*` headers.
//!
//! Fault injection (seeded, so a failing schedule can be replayed): bursts of 429,
//! 500s, connections broken in the middle of a response, and slow responses. Request
//! counters let tests assert what the client did (e.g. never a rate-limit 429 in steady
//! state).
//!
//! Tokens: the OAuth token endpoint lives in `oauth_provider`; this server accepts the
//! tokens that provider issues once told to [`HighLevelSim::trust`] it (the local stack
//! does: one simulated world), and the tokens a test registers with
//! [`HighLevelSim::accept_token`] or mints with [`HighLevelSim::issue_token`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

pub const API_VERSION: &str = "2021-04-15";

/// Every seeded message body starts with this marker, so a test can search any dump
/// (table, bucket, logs) for message content.
pub const BODY_MARKER: &str = "sim-body:";

/// A small deterministic generator (SplitMix64): seeded data and fault schedules must
/// be the same on every machine and every version of every crate.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }

    fn id(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

/// A stored message, in HighLevel's wire shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimMessage {
    pub id: String,
    #[serde(rename = "type")]
    pub type_code: i64,
    pub message_type: String,
    pub location_id: String,
    pub contact_id: String,
    pub conversation_id: String,
    #[serde(with = "iso_millis")]
    pub date_added: DateTime<Utc>,
    pub body: String,
    pub direction: String,
    pub status: String,
    pub content_type: String,
    pub attachments: Vec<String>,
    pub source: String,
}

impl SimMessage {
    /// The channel filter value this message answers to, if any.
    pub fn channel(&self) -> Option<&'static str> {
        channel_of(&self.message_type)
    }
}

mod iso_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// HighLevel's channel filter values and the message types each selects.
fn channel_of(message_type: &str) -> Option<&'static str> {
    Some(match message_type {
        "TYPE_CALL" | "TYPE_CAMPAIGN_VOICEMAIL" => "Call",
        "TYPE_SMS" => "SMS",
        "TYPE_EMAIL" => "Email",
        "TYPE_WHATSAPP" => "WhatsApp",
        "TYPE_INSTAGRAM" => "Instagram",
        "TYPE_FACEBOOK" => "Facebook",
        _ => return None,
    })
}

/// `(messageType, type code)` of the seeded kinds.
const SEEDED_TYPES: [(&str, i64); 8] = [
    ("TYPE_CALL", 1),
    ("TYPE_SMS", 2),
    ("TYPE_EMAIL", 3),
    ("TYPE_WHATSAPP", 19),
    ("TYPE_INSTAGRAM", 18),
    ("TYPE_FACEBOOK", 11),
    ("TYPE_CAMPAIGN_VOICEMAIL", 10),
    ("TYPE_ACTIVITY_OPPORTUNITY", 30),
];

/// What to seed for a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub seed: u64,
    pub conversations: usize,
    pub messages: usize,
    /// Messages are spread uniformly over `[start, end)`.
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Seed {
    /// The reference data set: 500 conversations, 20 000 messages over the first half
    /// of 2025, across every channel (and some activity entries, which no channel
    /// filter selects).
    pub fn standard(seed: u64) -> Self {
        Self {
            seed,
            conversations: 500,
            messages: 20_000,
            start: Utc
                .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or_default(),
            end: Utc
                .with_ymd_and_hms(2025, 7, 1, 0, 0, 0)
                .single()
                .unwrap_or_default(),
        }
    }

    pub fn small(seed: u64, conversations: usize, messages: usize) -> Self {
        Self {
            conversations,
            messages,
            ..Self::standard(seed)
        }
    }
}

/// Generates a location's messages, sorted by `(dateAdded, id)`.
pub fn generate(location_id: &str, seed: &Seed) -> Vec<SimMessage> {
    let mut rng = SplitMix::new(seed.seed ^ 0x00C0_FFEE);
    let conversations: Vec<(String, String, usize)> = (0..seed.conversations.max(1))
        .map(|_| {
            let primary = rng.below(7) as usize;
            (rng.id(20), rng.id(20), primary)
        })
        .collect();
    let span_ms = (seed.end - seed.start).num_milliseconds().max(1) as u64;
    let mut messages: Vec<SimMessage> = (0..seed.messages)
        .map(|i| {
            // The first messages give every conversation at least one.
            let conv = if i < conversations.len() {
                i
            } else {
                rng.below(conversations.len() as u64) as usize
            };
            let (conversation_id, contact_id, primary) = &conversations[conv];
            let roll = rng.below(100);
            let kind = if roll < 70 {
                *primary
            } else if roll < 97 {
                rng.below(7) as usize
            } else {
                7
            };
            let (message_type, type_code) = SEEDED_TYPES[kind];
            let id = rng.id(20);
            let at = seed.start + chrono::Duration::milliseconds(rng.below(span_ms) as i64);
            let words = 3 + rng.below(20) as usize;
            let body = format!(
                "{BODY_MARKER}{id}: {}",
                (0..words).map(|_| rng.id(6)).collect::<Vec<_>>().join(" ")
            );
            SimMessage {
                id,
                type_code,
                message_type: message_type.to_owned(),
                location_id: location_id.to_owned(),
                contact_id: contact_id.clone(),
                conversation_id: conversation_id.clone(),
                date_added: at,
                body,
                direction: if rng.below(2) == 0 {
                    "inbound"
                } else {
                    "outbound"
                }
                .to_owned(),
                status: "delivered".to_owned(),
                content_type: "text/plain".to_owned(),
                attachments: Vec::new(),
                source: "app".to_owned(),
            }
        })
        .collect();
    messages.sort_by(|a, b| (a.date_added, &a.id).cmp(&(b.date_added, &b.id)));
    messages
}

/// Limits the simulated server enforces (HighLevel's documented ones by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max: u32,
    pub interval: Duration,
    pub daily: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max: 100,
            interval: Duration::from_secs(10),
            daily: 200_000,
        }
    }
}

/// Randomised faults, from a seed. Rates are per mille of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    pub seed: u64,
    /// Chance that a request starts a burst of `burst_len` injected 429s.
    pub burst_429: u32,
    pub burst_len: u32,
    pub error_500: u32,
    /// Response headers sent, then the connection broken mid-body.
    pub reset: u32,
    pub slow: u32,
    pub slow_by: Duration,
}

/// What the server saw and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub requests: u64,
    pub ok: u64,
    /// 429s from the real limiter (the client exceeded the window).
    pub rate_limited: u64,
    pub injected_429: u64,
    pub injected_500: u64,
    pub resets: u64,
    pub slow: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    /// The most requests the limiter ever counted within one window.
    pub peak_in_window: u64,
}

#[derive(Debug, Default)]
struct Window {
    arrivals: VecDeque<Instant>,
    day_count: u64,
}

/// The trusted provider's answer to "which location does this token grant?".
struct Authority(crate::oauth_provider::TokenAuthority);

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

/// A seeded location: its messages sorted by `(dateAdded, id)`, and per conversation
/// the positions of its messages in that order. The index is built once at seeding so
/// a conversation's query reads its own messages, not the location's: at 100 000
/// conversations a scan per query made a run quadratic in the size.
#[derive(Debug, Default)]
struct Location {
    messages: Arc<Vec<SimMessage>>,
    by_conversation: HashMap<String, Vec<u32>>,
}

impl Location {
    fn new(messages: Arc<Vec<SimMessage>>) -> Self {
        let mut by_conversation: HashMap<String, Vec<u32>> = HashMap::new();
        for (at, message) in (0u32..).zip(messages.iter()) {
            by_conversation
                .entry(message.conversation_id.clone())
                .or_default()
                .push(at);
        }
        Self {
            messages,
            by_conversation,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    locations: HashMap<String, Arc<Location>>,
    tokens: HashMap<String, String>,
    /// The OAuth provider whose access tokens this API accepts (one simulated world).
    authority: Option<Authority>,
    windows: HashMap<String, Window>,
    limits: Limits,
    faults: Faults,
    fault_rng: Option<SplitMix>,
    burst_left: u32,
    counters: Counters,
}

#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulated HighLevel API on 127.0.0.1.
#[derive(Debug)]
pub struct HighLevelSim {
    addr: SocketAddr,
    shared: Shared,
    task: JoinHandle<()>,
}

impl Drop for HighLevelSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HighLevelSim {
    /// Starts the server on a random port.
    pub async fn start(limits: Limits) -> std::io::Result<Self> {
        let shared = Shared::default();
        shared.lock().limits = limits;
        let app = Router::new()
            .route("/conversations/messages/export", get(export))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Base URL of the API, with a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Seeds a location and returns its messages (sorted by date, then id).
    pub fn seed_location(&self, location_id: &str, seed: &Seed) -> Arc<Vec<SimMessage>> {
        let messages = Arc::new(generate(location_id, seed));
        let location = Arc::new(Location::new(messages.clone()));
        self.shared
            .lock()
            .locations
            .insert(location_id.to_owned(), location);
        messages
    }

    pub fn messages(&self, location_id: &str) -> Arc<Vec<SimMessage>> {
        self.shared
            .lock()
            .locations
            .get(location_id)
            .map(|location| location.messages.clone())
            .unwrap_or_default()
    }

    /// Accepts `token` as a bearer token for `location_id`.
    pub fn accept_token(&self, token: &str, location_id: &str) {
        self.shared
            .lock()
            .tokens
            .insert(token.to_owned(), location_id.to_owned());
    }

    /// Accepts every live access token `authority` vouches for, for the location it
    /// was granted: the tokens the simulated OAuth provider issues (refreshed ones
    /// included) work here, and stop working when revoked or expired.
    pub fn trust(&self, authority: crate::oauth_provider::TokenAuthority) {
        self.shared.lock().authority = Some(Authority(authority));
    }

    /// Mints a random token for `location_id`.
    pub fn issue_token(&self, location_id: &str) -> String {
        let token = format!("hl-sim-{}", ulid_like());
        self.accept_token(&token, location_id);
        token
    }

    pub fn revoke_token(&self, token: &str) {
        self.shared.lock().tokens.remove(token);
    }

    pub fn set_limits(&self, limits: Limits) {
        self.shared.lock().limits = limits;
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut inner = self.shared.lock();
        inner.faults = faults;
        inner.fault_rng = Some(SplitMix::new(faults.seed));
        inner.burst_left = 0;
    }

    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    pub fn counters(&self) -> Counters {
        self.shared.lock().counters
    }

    pub fn reset_counters(&self) {
        self.shared.lock().counters = Counters::default();
    }
}

fn ulid_like() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..24)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportParams {
    location_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    sort_order: Option<String>,
    conversation_id: Option<String>,
    contact_id: Option<String>,
    channel: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// `dateAdded` in epoch ms and id of the last message returned.
    t: i64,
    id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportResponse<'a> {
    messages: Vec<&'a SimMessage>,
    next_cursor: Option<String>,
    total: usize,
}

enum Fault {
    None,
    TooMany,
    ServerError,
    Reset,
    Slow(Duration),
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({
            "statusCode": status.as_u16(),
            "message": message,
        })),
    )
        .into_response()
}

fn parse_date(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Utc.timestamp_millis_opt(ms).single();
    }
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

async fn export(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<ExportParams>,
) -> Response {
    let now = Instant::now();
    // Authentication, limiting and fault choice happen under one lock, in the order a
    // real gateway applies them.
    let decided = {
        let mut inner = shared.lock();
        inner.counters.requests += 1;
        if headers.get("version").and_then(|v| v.to_str().ok()) != Some(API_VERSION) {
            inner.counters.bad_requests += 1;
            return error(StatusCode::BAD_REQUEST, "Version header is required");
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let registered = token.and_then(|t| inner.tokens.get(t)).cloned();
        let vouched = || {
            let authority = inner.authority.as_ref()?;
            (authority.0)(token?)
        };
        let Some(location) = registered.or_else(vouched) else {
            inner.counters.unauthorized += 1;
            return error(StatusCode::UNAUTHORIZED, "Invalid JWT");
        };
        if params.location_id.as_deref() != Some(location.as_str()) {
            inner.counters.unauthorized += 1;
            return error(
                StatusCode::FORBIDDEN,
                "The token does not have access to this location",
            );
        }

        let limits = inner.limits;
        let window = inner.windows.entry(location.clone()).or_default();
        while window
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limits.interval)
        {
            window.arrivals.pop_front();
        }
        let limited = window.arrivals.len() as u64 >= u64::from(limits.max)
            || window.day_count >= limits.daily;
        if !limited {
            window.arrivals.push_back(now);
            window.day_count += 1;
        }
        let in_window = window.arrivals.len() as u64;
        let rate_headers = rate_headers(limits, in_window, window.day_count);
        inner.counters.peak_in_window = inner.counters.peak_in_window.max(in_window);
        if limited {
            inner.counters.rate_limited += 1;
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
            response.headers_mut().extend(rate_headers);
            return response;
        }

        let fault = choose_fault(&mut inner);
        match fault {
            Fault::TooMany => inner.counters.injected_429 += 1,
            Fault::ServerError => inner.counters.injected_500 += 1,
            Fault::Reset => inner.counters.resets += 1,
            Fault::Slow(_) => inner.counters.slow += 1,
            Fault::None => {}
        }
        let messages = inner.locations.get(&location).cloned().unwrap_or_default();
        (fault, rate_headers, messages)
    };
    let (fault, rate_headers, location) = decided;

    let mut response = match fault {
        Fault::TooMany => error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        Fault::ServerError => error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Fault::None | Fault::Slow(_) | Fault::Reset => {
            if let Fault::Slow(by) = fault {
                tokio::time::sleep(by).await;
            }
            let page = match page(&location, &params) {
                Ok(page) => page,
                Err(message) => {
                    shared.lock().counters.bad_requests += 1;
                    return error(StatusCode::UNPROCESSABLE_ENTITY, message);
                }
            };
            if matches!(fault, Fault::Reset) {
                broken_response(page)
            } else {
                shared.lock().counters.ok += 1;
                ([(http::header::CONTENT_TYPE, "application/json")], page).into_response()
            }
        }
    };
    response.headers_mut().extend(rate_headers);
    response
}

/// Headers sent with every answer, as HighLevel documents them.
fn rate_headers(limits: Limits, in_window: u64, day_count: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: u64| {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            headers.insert(name, value);
        }
    };
    put("x-ratelimit-max", u64::from(limits.max));
    put(
        "x-ratelimit-remaining",
        u64::from(limits.max).saturating_sub(in_window),
    );
    put(
        "x-ratelimit-interval-milliseconds",
        u64::try_from(limits.interval.as_millis()).unwrap_or(u64::MAX),
    );
    put("x-ratelimit-limit-daily", limits.daily);
    put(
        "x-ratelimit-daily-remaining",
        limits.daily.saturating_sub(day_count),
    );
    headers
}

fn choose_fault(inner: &mut Inner) -> Fault {
    let faults = inner.faults;
    if inner.burst_left > 0 {
        inner.burst_left -= 1;
        return Fault::TooMany;
    }
    let Some(rng) = inner.fault_rng.as_mut() else {
        return Fault::None;
    };
    if rng.chance(faults.burst_429) {
        inner.burst_left = faults.burst_len.saturating_sub(1);
        return Fault::TooMany;
    }
    if rng.chance(faults.error_500) {
        return Fault::ServerError;
    }
    if rng.chance(faults.reset) {
        return Fault::Reset;
    }
    if rng.chance(faults.slow) {
        return Fault::Slow(faults.slow_by);
    }
    Fault::None
}

/// Status and headers, half the body, then the connection is torn down.
fn broken_response(page: String) -> Response {
    let half = Bytes::from(page.into_bytes());
    let cut = half.slice(..half.len() / 2);
    let stream = futures_util::stream::iter(vec![
        Ok(cut),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected connection reset",
        )),
    ]);
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An export request's parameters, checked (in the order the API reports them).
struct Request<'a> {
    limit: usize,
    channel: Option<&'a str>,
    conversation_id: Option<&'a str>,
    contact_id: Option<&'a str>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    cursor: Option<Cursor>,
    descending: bool,
}

impl<'a> Request<'a> {
    fn parse(params: &'a ExportParams) -> Result<Self, &'static str> {
        let limit = match params.limit.as_deref() {
            None => 100,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|l| (10..=500).contains(l))
                .ok_or("limit must be a number between 10 and 500")?,
        };
        let channel = params.channel.as_deref();
        if let Some(channel) = channel
            && !["Call", "SMS", "Email", "WhatsApp", "Instagram", "Facebook"].contains(&channel)
        {
            return Err("channel must be one of Call, SMS, Email, WhatsApp, Instagram, Facebook");
        }
        let start = match params.start_date.as_deref() {
            Some(raw) => Some(parse_date(raw).ok_or("startDate is not a date")?),
            None => None,
        };
        let end = match params.end_date.as_deref() {
            Some(raw) => Some(parse_date(raw).ok_or("endDate is not a date")?),
            None => None,
        };
        let cursor = match params.cursor.as_deref() {
            Some(raw) => Some(
                URL_SAFE_NO_PAD
                    .decode(raw)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Cursor>(&bytes).ok())
                    .ok_or("cursor is not valid")?,
            ),
            None => None,
        };
        Ok(Self {
            limit,
            channel,
            conversation_id: params.conversation_id.as_deref(),
            contact_id: params.contact_id.as_deref(),
            start,
            end,
            cursor,
            descending: params.sort_order.as_deref() == Some("desc"),
        })
    }

    /// Every filter except the cursor.
    fn matches(&self, m: &SimMessage) -> bool {
        let channel_ok = match self.channel {
            Some(channel) => m.channel() == Some(channel),
            // HighLevel's default: every type except email, activities included.
            None => m.channel() != Some("Email"),
        };
        channel_ok
            && self
                .conversation_id
                .is_none_or(|id| m.conversation_id == id)
            && self.contact_id.is_none_or(|id| m.contact_id == id)
            && self.start.is_none_or(|s| m.date_added >= s)
            && self.end.is_none_or(|e| m.date_added < e)
    }
}

/// The messages a query can select, in `(dateAdded, id)` order: the location's, or one
/// conversation's through the index.
enum Candidates<'a> {
    All(&'a [SimMessage]),
    Indexed(&'a [SimMessage], &'a [u32]),
}

impl<'a> Candidates<'a> {
    fn len(&self) -> usize {
        match self {
            Candidates::All(messages) => messages.len(),
            Candidates::Indexed(_, positions) => positions.len(),
        }
    }

    fn get(&self, at: usize) -> Option<&'a SimMessage> {
        match self {
            Candidates::All(messages) => messages.get(at),
            Candidates::Indexed(messages, positions) => messages.get(*positions.get(at)? as usize),
        }
    }

    /// The first position in `range` where `before` turns false (`before` must hold
    /// on a prefix of the ordered candidates: a binary search).
    fn partition(
        &self,
        range: std::ops::Range<usize>,
        before: impl Fn(&SimMessage) -> bool,
    ) -> usize {
        let (mut lo, mut hi) = (range.start, range.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).is_some_and(&before) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// The cursor's sort key of a message. Seeded dates are whole milliseconds, so the
/// `(dateAdded, id)` order is the `(millis, id)` order the binary search relies on.
fn key(m: &SimMessage) -> (i64, &str) {
    (m.date_added.timestamp_millis(), m.id.as_str())
}

/// One page of the filtered, ordered messages, as JSON. The candidates are narrowed
/// by index and binary search (conversation, date range, cursor), then filtered, so
/// a request costs what its range holds, not what the location holds.
fn page(location: &Location, params: &ExportParams) -> Result<String, &'static str> {
    let request = Request::parse(params)?;
    let messages = location.messages.as_slice();
    let candidates = match request.conversation_id {
        Some(id) => match location.by_conversation.get(id) {
            Some(positions) => Candidates::Indexed(messages, positions),
            None => Candidates::Indexed(messages, &[]),
        },
        None => Candidates::All(messages),
    };
    // The date window, [lo, hi).
    let all = 0..candidates.len();
    let lo = match request.start {
        Some(start) => candidates.partition(all.clone(), |m| m.date_added < start),
        None => 0,
    };
    let hi = match request.end {
        Some(end) => candidates.partition(all, |m| m.date_added < end),
        None => candidates.len(),
    }
    .max(lo);
    let total = (lo..hi)
        .filter_map(|at| candidates.get(at))
        .filter(|m| request.matches(m))
        .count();
    // The cursor's position within the window.
    let (from, to) = match &request.cursor {
        None => (lo, hi),
        Some(c) => {
            let at = (c.t, c.id.as_str());
            if request.descending {
                (lo, candidates.partition(lo..hi, |m| key(m) < at))
            } else {
                (candidates.partition(lo..hi, |m| key(m) <= at), hi)
            }
        }
    };
    let positions: Box<dyn Iterator<Item = usize>> = if request.descending {
        Box::new((from..to).rev())
    } else {
        Box::new(from..to)
    };
    let selected: Vec<&SimMessage> = positions
        .filter_map(|at| candidates.get(at))
        .filter(|m| request.matches(m))
        .take(request.limit + 1)
        .collect();
    respond(selected, request.limit, total)
}

/// The page of `selected` (up to `limit + 1` messages: one more says there are more).
fn respond(selected: Vec<&SimMessage>, limit: usize, total: usize) -> Result<String, &'static str> {
    let more = selected.len() > limit;
    let page: Vec<&SimMessage> = selected.into_iter().take(limit).collect();
    let next_cursor = match page.last() {
        Some(last) if more => {
            let cursor = Cursor {
                t: last.date_added.timestamp_millis(),
                id: last.id.clone(),
            };
            let json = serde_json::to_vec(&cursor).map_err(|_| "cursor")?;
            Some(URL_SAFE_NO_PAD.encode(json))
        }
        _ => None,
    };
    serde_json::to_string(&ExportResponse {
        messages: page,
        next_cursor,
        total,
    })
    .map_err(|_| "encoding failed")
}

/// The ISO-8601 form the simulator writes dates in.
pub fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_is_deterministic_and_complete() {
        let seed = Seed::small(7, 50, 1000);
        let a = generate("loc", &seed);
        let b = generate("loc", &seed);
        assert_eq!(a, b);
        assert_eq!(a.len(), 1000);
        let conversations: std::collections::HashSet<_> =
            a.iter().map(|m| m.conversation_id.clone()).collect();
        assert_eq!(conversations.len(), 50);
        assert!(a.windows(2).all(|w| w[0].date_added <= w[1].date_added));
        assert!(a.iter().all(|m| m.body.starts_with(BODY_MARKER)));
    }

    #[test]
    fn pages_walk_every_match_once() {
        let messages = Arc::new(generate("loc", &Seed::small(3, 20, 700)));
        let location = Location::new(messages.clone());
        let mut params = ExportParams {
            location_id: Some("loc".into()),
            limit: Some("100".into()),
            cursor: None,
            sort_order: Some("asc".into()),
            conversation_id: None,
            contact_id: None,
            channel: Some("SMS".into()),
            start_date: None,
            end_date: None,
        };
        let mut seen = Vec::new();
        loop {
            let json: serde_json::Value =
                serde_json::from_str(&page(&location, &params).unwrap()).unwrap();
            for m in json["messages"].as_array().unwrap() {
                seen.push(m["id"].as_str().unwrap().to_owned());
            }
            match json["nextCursor"].as_str() {
                Some(c) => params.cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let want: Vec<String> = messages
            .iter()
            .filter(|m| m.channel() == Some("SMS"))
            .map(|m| m.id.clone())
            .collect();
        assert_eq!(seen, want);
    }

    /// The page as the simulator answered before the index: every message of the
    /// location scanned on every request.
    fn page_scan(messages: &[SimMessage], params: &ExportParams) -> Result<String, &'static str> {
        let request = Request::parse(params)?;
        let after_cursor = |m: &&SimMessage| match &request.cursor {
            None => true,
            Some(c) => {
                let at = (c.t, c.id.as_str());
                if request.descending {
                    key(m) < at
                } else {
                    key(m) > at
                }
            }
        };
        let total = messages.iter().filter(|m| request.matches(m)).count();
        let selected: Vec<&SimMessage> = if request.descending {
            messages
                .iter()
                .rev()
                .filter(|m| request.matches(m))
                .filter(after_cursor)
                .take(request.limit + 1)
                .collect()
        } else {
            messages
                .iter()
                .filter(|m| request.matches(m))
                .filter(after_cursor)
                .take(request.limit + 1)
                .collect()
        };
        respond(selected, request.limit, total)
    }

    fn cursor_at(m: &SimMessage) -> String {
        URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Cursor {
                t: m.date_added.timestamp_millis(),
                id: m.id.clone(),
            })
            .unwrap(),
        )
    }

    #[test]
    fn indexed_pages_equal_the_scanned_ones() {
        let messages = Arc::new(generate("loc", &Seed::small(11, 60, 3000)));
        let location = Location::new(messages.clone());
        let mut rng = SplitMix::new(99);
        let conversations: Vec<String> = location.by_conversation.keys().cloned().collect();
        let channels = [
            None,
            Some("SMS"),
            Some("Email"),
            Some("Call"),
            Some("WhatsApp"),
        ];
        let pick = |rng: &mut SplitMix| messages[rng.below(messages.len() as u64) as usize].clone();
        let date = |rng: &mut SplitMix, m: &SimMessage| -> String {
            // Exact message dates (bounds on a message) and dates between messages,
            // as ISO and as epoch milliseconds.
            let at = m.date_added + chrono::Duration::milliseconds(rng.below(3) as i64 - 1);
            if rng.below(2) == 0 {
                iso(at)
            } else {
                at.timestamp_millis().to_string()
            }
        };
        let mut compared = 0;
        for round in 0..3000u64 {
            let mut params = ExportParams {
                location_id: Some("loc".into()),
                limit: Some(["10", "37", "100", "500"][rng.below(4) as usize].into()),
                cursor: None,
                sort_order: match rng.below(3) {
                    0 => None,
                    1 => Some("asc".into()),
                    _ => Some("desc".into()),
                },
                conversation_id: match rng.below(4) {
                    0 => None,
                    1 => Some("no-such-conversation".into()),
                    _ => {
                        Some(conversations[rng.below(conversations.len() as u64) as usize].clone())
                    }
                },
                contact_id: (rng.below(8) == 0).then(|| pick(&mut rng).contact_id),
                channel: channels[rng.below(channels.len() as u64) as usize].map(str::to_owned),
                start_date: None,
                end_date: None,
            };
            if rng.below(2) == 0 {
                let m = pick(&mut rng);
                params.start_date = Some(date(&mut rng, &m));
            }
            if rng.below(2) == 0 {
                let m = pick(&mut rng);
                params.end_date = Some(date(&mut rng, &m));
            }
            match rng.below(4) {
                // A cursor on some message of the location (not necessarily a match).
                0 | 1 => params.cursor = Some(cursor_at(&pick(&mut rng))),
                // A cursor between messages (same millisecond, other id).
                2 => {
                    let m = pick(&mut rng);
                    let mut shifted = m.clone();
                    shifted.id = format!("{}~", m.id);
                    params.cursor = Some(cursor_at(&shifted));
                }
                _ => {}
            }
            if round % 500 == 0 {
                // Walk every page of this query: each page equal, the cursors too.
                params.cursor = None;
            }
            let mut pages = 0;
            loop {
                let indexed = page(&location, &params);
                let scanned = page_scan(&messages, &params);
                assert_eq!(indexed, scanned, "round {round}: {params:?}");
                compared += 1;
                pages += 1;
                let Ok(json) = indexed else { break };
                let json: serde_json::Value = serde_json::from_str(&json).unwrap();
                match json["nextCursor"].as_str() {
                    Some(next) if pages < 50 => params.cursor = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
        assert!(compared > 3000, "{compared}");
        // Invalid requests fail the same way.
        for (limit, channel, start, cursor) in [
            (Some("5"), None, None, None),
            (None, Some("Fax"), None, None),
            (None, None, Some("yesterday"), None),
            (None, None, None, Some("%%%")),
        ] {
            let params = ExportParams {
                location_id: Some("loc".into()),
                limit: limit.map(str::to_owned),
                cursor: cursor.map(str::to_owned),
                sort_order: None,
                conversation_id: None,
                contact_id: None,
                channel: channel.map(str::to_owned),
                start_date: start.map(str::to_owned),
                end_date: None,
            };
            assert!(page(&location, &params).is_err());
            assert_eq!(page(&location, &params), page_scan(&messages, &params));
        }
    }
}

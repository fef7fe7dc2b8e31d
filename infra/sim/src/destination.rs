//! A customer's destination webhook, simulated: receives the signed JSON batches the
//! import function pushes, verifies each signature with
//! [`custody::webhook::verify`] (the same function a real receiver is pointed to),
//! and records what arrived.
//!
//! Switches for failure paths: answer 500/503 for the next N requests or until told
//! otherwise (destination down), and slow responses. Every request is recorded,
//! accepted or not, so a test can count attempts as well as deliveries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use custody::webhook::{
    Batch, DEFAULT_TOLERANCE_SECS, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify,
};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

/// The path batches are posted to.
pub const HOOK_PATH: &str = "/hooks/custody";
/// The path a tenant's notification webhook is pointed to (privacy notices): any
/// signed JSON object is accepted there, not only batches.
pub const NOTICE_PATH: &str = "/hooks/notices";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub delivery_id: Option<String>,
    pub signature_valid: bool,
    /// The status the simulator answered with.
    pub status: u16,
    /// The parsed body, if it was a [`Batch`] (posted to [`HOOK_PATH`]); without its
    /// rows on a receiver started with [`DestinationSim::start_counting`].
    pub batch: Option<Batch>,
    /// Rows in the batch, kept or not.
    pub rows: usize,
    /// Which path it was posted to ([`HOOK_PATH`] or [`NOTICE_PATH`]).
    pub path: &'static str,
    /// The body as JSON, if it was a JSON object posted to [`NOTICE_PATH`] (a notice's
    /// message).
    pub json: Option<Value>,
}

/// What a receiver accepted, counted without copying what it keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub requests: usize,
    pub batches: usize,
    pub rows: usize,
}

#[derive(Debug, Default)]
struct Switches {
    /// Fail this many more requests.
    fail_next: u32,
    /// Fail every request until cleared.
    down: bool,
    /// Go down once this many more requests have been accepted.
    down_after: Option<u32>,
    fail_status: u16,
    delay: Duration,
}

#[derive(Debug)]
struct Inner {
    secret: Vec<u8>,
    switches: Switches,
    received: Vec<Received>,
    /// Whether accepted batches keep their rows (tests read them; the bench only
    /// counts them, so the receiver's memory and copies do not weigh on the import).
    keep_rows: bool,
}

#[derive(Clone, Debug)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running receiver; stops when dropped.
#[derive(Debug)]
pub struct DestinationSim {
    addr: SocketAddr,
    shared: Shared,
    task: JoinHandle<()>,
}

impl Drop for DestinationSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DestinationSim {
    /// Starts a receiver on 127.0.0.1 (random port) that verifies with `secret`.
    pub async fn start(secret: &str) -> std::io::Result<Self> {
        Self::start_keeping(secret, true).await
    }

    /// A receiver that verifies and parses every batch as [`Self::start`]'s does but
    /// keeps only its size: for measuring the sender, not the receiver.
    pub async fn start_counting(secret: &str) -> std::io::Result<Self> {
        Self::start_keeping(secret, false).await
    }

    async fn start_keeping(secret: &str, keep_rows: bool) -> std::io::Result<Self> {
        let shared = Shared(Arc::new(Mutex::new(Inner {
            keep_rows,
            secret: secret.as_bytes().to_vec(),
            switches: Switches {
                fail_status: 503,
                ..Switches::default()
            },
            received: Vec::new(),
        })));
        let app = Router::new()
            .route(HOOK_PATH, post(receive))
            .route(NOTICE_PATH, post(receive_notice))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The webhook URL to configure as the destination.
    pub fn url(&self) -> String {
        format!("http://{}{HOOK_PATH}", self.addr)
    }

    /// Answer the next `n` requests with `status` (500 or 503, say).
    pub fn fail_next(&self, n: u32, status: u16) {
        let mut inner = self.shared.lock();
        inner.switches.fail_next = n;
        inner.switches.fail_status = status;
    }

    /// Answer every request with `status` until [`Self::recover`].
    pub fn go_down(&self, status: u16) {
        let mut inner = self.shared.lock();
        inner.switches.down = true;
        inner.switches.fail_status = status;
    }

    /// Accept `n` more requests, then answer every request with `status` until
    /// [`Self::recover`] (the destination dies in the middle of an import).
    pub fn go_down_after(&self, n: u32, status: u16) {
        let mut inner = self.shared.lock();
        inner.switches.down_after = Some(n);
        inner.switches.fail_status = status;
    }

    /// Back to accepting requests.
    pub fn recover(&self) {
        let mut inner = self.shared.lock();
        inner.switches.down = false;
        inner.switches.down_after = None;
        inner.switches.fail_next = 0;
    }

    /// Wait this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().switches.delay = delay;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// The batches accepted (answered 2xx), in order.
    pub fn accepted(&self) -> Vec<Batch> {
        self.requests()
            .into_iter()
            .filter(|r| r.status < 300)
            .filter_map(|r| r.batch)
            .collect()
    }

    /// Requests, accepted batches and their rows.
    pub fn summary(&self) -> Summary {
        let inner = self.shared.lock();
        let accepted = || {
            inner
                .received
                .iter()
                .filter(|r| r.status < 300 && r.batch.is_some())
        };
        Summary {
            requests: inner.received.len(),
            batches: accepted().count(),
            rows: accepted().map(|r| r.rows).sum(),
        }
    }

    /// The notification-webhook URL (signed with the same secret).
    pub fn notice_url(&self) -> String {
        format!("http://{}{NOTICE_PATH}", self.addr)
    }

    /// The notices received (posted to [`NOTICE_PATH`]), accepted or not, in order.
    pub fn notices(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == NOTICE_PATH)
            .collect()
    }

    /// Every row of every accepted batch, in order.
    pub fn rows(&self) -> Vec<Map<String, Value>> {
        self.accepted().into_iter().flat_map(|b| b.rows).collect()
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    record(&shared, HOOK_PATH, &headers, &body).await
}

async fn receive_notice(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    record(&shared, NOTICE_PATH, &headers, &body).await
}

async fn record(
    shared: &Shared,
    path: &'static str,
    headers: &HeaderMap,
    body: &Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (secret, delay) = {
        let inner = shared.lock();
        (inner.secret.clone(), inner.switches.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let signature_valid = verify(
        &secret,
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        body,
        chrono::Utc::now().timestamp(),
        DEFAULT_TOLERANCE_SECS,
    )
    .is_ok();
    // Parsed once, as what the path takes.
    let (mut batch, json) = if path == HOOK_PATH {
        (serde_json::from_slice::<Batch>(body).ok(), None)
    } else {
        let json = serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object);
        (None, json)
    };
    let rows = batch.as_ref().map_or(0, |b| b.rows.len());
    let mut inner = shared.lock();
    if !inner.keep_rows
        && let Some(batch) = batch.as_mut()
    {
        batch.rows = Vec::new();
    }
    if inner.switches.down_after == Some(0) {
        inner.switches.down = true;
        inner.switches.down_after = None;
    }
    let status = if inner.switches.down {
        inner.switches.fail_status
    } else if inner.switches.fail_next > 0 {
        inner.switches.fail_next -= 1;
        inner.switches.fail_status
    } else if !signature_valid {
        401
    } else if (path == HOOK_PATH && batch.is_none()) || (path == NOTICE_PATH && json.is_none()) {
        400
    } else {
        if let Some(left) = inner.switches.down_after.as_mut() {
            *left -= 1;
        }
        200
    };
    inner.received.push(Received {
        delivery_id: header(DELIVERY_HEADER).map(str::to_owned),
        signature_valid,
        status,
        batch,
        rows,
        path,
        json,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

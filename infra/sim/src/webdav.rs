//! A real WebDAV server in-process: `dav-server` over its in-memory filesystem, on
//! axum at 127.0.0.1 (random port), with basic auth and injectable failures (500 or
//! 507 for chosen methods, at random from a seed or for the next N requests).
//!
//! Tests read what was written straight from the filesystem ([`WebDavSim::files`]),
//! not through the server, so a check never depends on the code under test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dav_server::DavHandler;
use dav_server::davpath::DavPath;
use dav_server::fs::{DavFileSystem, OpenOptions, ReadDirMeta};
use dav_server::memfs::MemFs;
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;

use crate::highlevel::SplitMix;

/// Failures to inject. Rates are per mille of requests whose method is in `methods`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DavFaults {
    pub seed: u64,
    pub error_rate: u32,
    /// Statuses to answer with, picked at random (e.g. `[500, 507]`).
    pub statuses: Vec<u16>,
    /// Methods the faults apply to (`PUT`, `MOVE`, …); empty means all.
    pub methods: Vec<String>,
    /// Let this many requests through before any fault.
    pub after: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DavCounters {
    pub requests: u64,
    pub unauthorized: u64,
    pub injected: u64,
    pub puts: u64,
    pub moves: u64,
}

#[derive(Debug, Default)]
struct Inner {
    faults: DavFaults,
    rng: Option<SplitMix>,
    /// `(status, count)`: answer the next `count` requests with `status`.
    fail_next: Option<(u16, u32)>,
    counters: DavCounters,
}

#[derive(Clone)]
struct AppState {
    handler: DavHandler,
    authorization: HeaderValue,
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running WebDAV server.
pub struct WebDavSim {
    addr: SocketAddr,
    fs: Box<MemFs>,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl Drop for WebDavSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for WebDavSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebDavSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl WebDavSim {
    /// Starts a server that accepts only `username`/`password` (basic auth).
    pub async fn start(username: &str, password: &str) -> std::io::Result<Self> {
        let fs = MemFs::new();
        let handler = DavHandler::builder().filesystem(fs.clone()).build_handler();
        let authorization = HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{username}:{password}"))
        ))
        .map_err(std::io::Error::other)?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = AppState {
            handler,
            authorization,
            inner: inner.clone(),
        };
        let app = Router::new().fallback(serve).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            fs,
            inner,
            task,
        })
    }

    /// The URL of collection `root` (created on first write by the client).
    pub fn url(&self, root: &str) -> String {
        format!("http://{}/{}", self.addr, root.trim_matches('/'))
    }

    /// Creates collection `root` (a customer's existing export folder) and returns its URL.
    pub async fn collection(&self, root: &str) -> std::io::Result<String> {
        let path = DavPath::new(&format!("/{}/", root.trim_matches('/')))
            .map_err(|_| std::io::Error::other("bad collection name"))?;
        self.fs
            .create_dir(&path)
            .await
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        Ok(self.url(root))
    }

    pub fn set_faults(&self, faults: DavFaults) {
        let mut inner = lock(&self.inner);
        inner.rng = Some(SplitMix::new(faults.seed));
        inner.faults = faults;
    }

    pub fn clear_faults(&self) {
        self.set_faults(DavFaults::default());
        lock(&self.inner).fail_next = None;
    }

    /// Answers the next `count` requests with `status`.
    pub fn fail_next(&self, status: u16, count: u32) {
        lock(&self.inner).fail_next = Some((status, count));
    }

    pub fn counters(&self) -> DavCounters {
        lock(&self.inner).counters
    }

    /// Every file on the server, by path (`/root/a/b.json`), with its content.
    pub async fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut dirs = vec!["/".to_owned()];
        while let Some(dir) = dirs.pop() {
            let Ok(path) = DavPath::new(&dir) else {
                continue;
            };
            let Ok(mut entries) = self.fs.read_dir(&path, ReadDirMeta::Data).await else {
                continue;
            };
            while let Some(Ok(entry)) = entries.next().await {
                let name = String::from_utf8_lossy(&entry.name()).into_owned();
                let full = format!("{dir}{name}");
                if entry.is_dir().await.unwrap_or(false) {
                    dirs.push(format!("{full}/"));
                } else if let Some(content) = self.read(&full).await {
                    files.insert(full, content);
                }
            }
        }
        files
    }

    /// The content of one file, if it exists.
    pub async fn read(&self, path: &str) -> Option<Vec<u8>> {
        let path = DavPath::new(path).ok()?;
        let options = OpenOptions {
            read: true,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            size: None,
            checksum: None,
        };
        let mut file = self.fs.open(&path, options).await.ok()?;
        let len = file.metadata().await.ok()?.len();
        let mut content = Vec::new();
        while (content.len() as u64) < len {
            let chunk = file.read_bytes((len as usize) - content.len()).await.ok()?;
            if chunk.is_empty() {
                break;
            }
            content.extend_from_slice(&chunk);
        }
        Some(content)
    }
}

async fn serve(State(state): State<AppState>, request: Request) -> Response {
    let method = request.method().as_str().to_owned();
    let injected = {
        let mut inner = lock(&state.inner);
        inner.counters.requests += 1;
        if request.headers().get(http::header::AUTHORIZATION) != Some(&state.authorization) {
            inner.counters.unauthorized += 1;
            return (
                StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, "Basic realm=\"sim\"")],
            )
                .into_response();
        }
        match method.as_str() {
            "PUT" => inner.counters.puts += 1,
            "MOVE" => inner.counters.moves += 1,
            _ => {}
        }
        let injected = pick_fault(&mut inner, &method);
        if injected.is_some() {
            inner.counters.injected += 1;
        }
        injected
    };
    if let Some(status) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, "injected failure").into_response();
    }
    let response = state.handler.handle(request).await;
    response.map(Body::new)
}

fn pick_fault(inner: &mut Inner, method: &str) -> Option<u16> {
    if let Some((status, count)) = inner.fail_next {
        inner.fail_next = (count > 1).then(|| (status, count - 1));
        return Some(status);
    }
    let faults = inner.faults.clone();
    if faults.statuses.is_empty()
        || inner.counters.requests <= faults.after
        || !(faults.methods.is_empty() || faults.methods.iter().any(|m| m == method))
    {
        return None;
    }
    let rng = inner.rng.as_mut()?;
    if rng.chance(faults.error_rate) {
        let pick = rng.below(faults.statuses.len() as u64) as usize;
        faults.statuses.get(pick).copied()
    } else {
        None
    }
}

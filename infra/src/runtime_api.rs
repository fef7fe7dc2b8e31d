//! A local Lambda Runtime API: runs a real function binary as Lambda would, handing
//! it one event at a time through the same HTTP protocol
//! (`/2018-06-01/runtime/invocation/next`, `…/{id}/response`, `…/{id}/error`,
//! `/runtime/init/error`).
//!
//! Used by the local stack and the demo (the real binaries, not library calls) and by
//! the cold-start benchmark, which reads the time of the first poll.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::{Notify, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("function {function} returned an error: {error_type}: {message}")]
    Function {
        function: String,
        error_type: String,
        message: String,
    },
    #[error("function {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("function {0} is not running: {1}")]
    NotRunning(String, String),
    #[error("function {0} answered with something that is not JSON")]
    NotJson(String),
}

struct Pending {
    id: String,
    event: Vec<u8>,
    deadline_ms: i64,
}

/// The function's answer: its response body, or `(errorType, errorMessage)`.
type Answer = Result<Vec<u8>, (String, String)>;

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    in_flight: HashMap<String, oneshot::Sender<Answer>>,
    init_error: Option<String>,
}

struct Shared {
    function: String,
    arn: String,
    queue: Mutex<Queue>,
    ready: Notify,
    started: Instant,
    first_poll: Mutex<Option<Instant>>,
    /// The request ids of every invocation, in order (tests find them in the logs).
    invoked: Mutex<Vec<String>>,
}

/// One function process and the Runtime API it polls.
pub struct LocalFunction {
    shared: Arc<Shared>,
    pub address: SocketAddr,
    child: Option<tokio::process::Child>,
    server: tokio::task::JoinHandle<()>,
    // Lambda runs one invocation per sandbox at a time; so do we.
    serial: tokio::sync::Mutex<()>,
    timeout: Duration,
    /// The tasks copying the process's output into its log file, while it has one.
    log_copies: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LocalFunction {
    /// Starts the Runtime API on a free loopback port and the binary with `env`
    /// (plus the variables Lambda sets). The process dies with this one; its output
    /// goes where this process's goes.
    pub async fn start(
        name: &str,
        binary: &Path,
        env: &[(String, String)],
        timeout: Duration,
    ) -> std::io::Result<LocalFunction> {
        Self::start_logged(name, binary, env, timeout, None).await
    }

    /// [`LocalFunction::start`], and with `log_file` every line the process writes
    /// (stdout and stderr) is also appended to that file, as CloudWatch would keep
    /// it; the lines still reach this process's stdout and stderr.
    pub async fn start_logged(
        name: &str,
        binary: &Path,
        env: &[(String, String)],
        timeout: Duration,
        log_file: Option<PathBuf>,
    ) -> std::io::Result<LocalFunction> {
        let shared = Arc::new(Shared {
            function: name.to_owned(),
            arn: format!(
                "arn:aws:lambda:{}:{}:function:{name}",
                crate::REGION,
                crate::ACCOUNT_ID
            ),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            started: Instant::now(),
            first_poll: Mutex::new(None),
            invoked: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut command = tokio::process::Command::new(binary);
        command
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let log = match &log_file {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                command
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                Some(Arc::new(Mutex::new(file)))
            }
            None => None,
        };
        let mut child = command.spawn()?;
        let mut log_copies = Vec::new();
        if let Some(file) = log {
            if let Some(out) = child.stdout.take() {
                log_copies.push(tokio::spawn(copy_lines(out, file.clone(), Echo::Stdout)));
            }
            if let Some(err) = child.stderr.take() {
                log_copies.push(tokio::spawn(copy_lines(err, file, Echo::Stderr)));
            }
        }
        Ok(LocalFunction {
            shared,
            address,
            child: Some(child),
            server,
            serial: tokio::sync::Mutex::new(()),
            timeout,
            log_copies: Mutex::new(log_copies),
        })
    }

    /// Kills the process and waits until everything it wrote is in its log file
    /// (at most `limit`), so a test reads the whole log. Without a log file it only
    /// kills.
    pub async fn kill_and_flush_logs(&self, limit: Duration) {
        self.kill_now();
        let copies: Vec<_> = self
            .log_copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for copy in copies {
            // The pipe closes when the process dies, so each copy ends by itself.
            let _ = tokio::time::timeout(limit, copy).await;
        }
    }

    /// The request ids of the invocations so far, oldest first.
    pub fn invocation_ids(&self) -> Vec<String> {
        self.shared
            .invoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.shared.function
    }

    /// Kills the function process now (SIGKILL), from a shared reference, so a stack
    /// being torn down can stop its functions before their Runtime API goes away.
    pub fn kill_now(&self) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// The function process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Time from process start to the first poll for an event: the cold start.
    pub async fn wait_first_poll(&self, limit: Duration) -> Option<Duration> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(at) = *self
                .shared
                .first_poll
                .lock()
                .unwrap_or_else(|p| p.into_inner())
            {
                return Some(at - self.shared.started);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    /// Invokes the function with `event` and returns its response.
    pub async fn invoke(
        &self,
        event: &serde_json::Value,
    ) -> Result<serde_json::Value, InvokeError> {
        let _one_at_a_time = self.serial.lock().await;
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(error) = &queue.init_error {
                return Err(InvokeError::NotRunning(self.name().into(), error.clone()));
            }
            self.shared
                .invoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(id.clone());
            queue.in_flight.insert(id.clone(), tx);
            queue.waiting.push_back(Pending {
                id: id.clone(),
                event: serde_json::to_vec(event).unwrap_or_default(),
                deadline_ms: chrono::Utc::now().timestamp_millis()
                    + self.timeout.as_millis() as i64,
            });
        }
        self.shared.ready.notify_one();
        let answer = match tokio::time::timeout(self.timeout + Duration::from_secs(2), rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Err(InvokeError::NotRunning(
                    self.name().into(),
                    "runtime closed".into(),
                ));
            }
            Err(_) => {
                self.shared
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .in_flight
                    .remove(&id);
                return Err(InvokeError::Timeout(self.name().into(), self.timeout));
            }
        };
        match answer {
            Ok(body) => {
                serde_json::from_slice(&body).map_err(|_| InvokeError::NotJson(self.name().into()))
            }
            Err((error_type, message)) => Err(InvokeError::Function {
                function: self.name().into(),
                error_type,
                message,
            }),
        }
    }

    /// Stops the process and the Runtime API.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.server.abort();
    }
}

impl Drop for LocalFunction {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        self.server.abort();
    }
}

#[derive(Clone, Copy)]
enum Echo {
    Stdout,
    Stderr,
}

/// Copies a process's output, line by line, into its log file and onto this
/// process's stream of the same kind. Whole lines under one lock, so stdout and
/// stderr lines never interleave mid-line in the file.
async fn copy_lines(
    from: impl tokio::io::AsyncRead + Unpin,
    file: Arc<Mutex<std::fs::File>>,
    echo: Echo,
) {
    let mut reader = tokio::io::BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            // A full disk must not stop the function: the echo below still shows it.
            let _ = file.write_all(&line);
        }
        let _ = match echo {
            Echo::Stdout => std::io::stdout().lock().write_all(&line),
            Echo::Stderr => std::io::stderr().lock().write_all(&line),
        };
    }
}

/// On Linux, the child gets SIGTERM when this process dies, even by SIGKILL, so an
/// interrupted demo leaves no function process behind.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of
    // the parent; it is the documented way to tie a child's life to its parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    {
        let mut first = shared.first_poll.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(Instant::now);
    }
    loop {
        let notified = shared.ready.notified();
        let pending = shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .pop_front();
        if let Some(pending) = pending {
            let mut headers = HeaderMap::new();
            let pairs = [
                ("lambda-runtime-aws-request-id", pending.id.clone()),
                (
                    "lambda-runtime-deadline-ms",
                    pending.deadline_ms.to_string(),
                ),
                ("lambda-runtime-invoked-function-arn", shared.arn.clone()),
                ("lambda-runtime-trace-id", format!("Root=1-{}", pending.id)),
                ("content-type", "application/json".to_owned()),
            ];
            for (name, value) in pairs {
                if let Ok(value) = value.parse() {
                    headers.insert(name, value);
                }
            }
            return (StatusCode::OK, headers, pending.event).into_response();
        }
        notified.await;
    }
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    complete(&shared, &id, Ok(body.to_vec()))
}

async fn fail(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let error_type = parsed["errorType"].as_str().unwrap_or("Unknown").to_owned();
    let message = parsed["errorMessage"].as_str().unwrap_or("").to_owned();
    complete(&shared, &id, Err((error_type, message)))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    queue.init_error = Some(String::from_utf8_lossy(&body).into_owned());
    for (_, waiter) in queue.in_flight.drain() {
        let _ = waiter.send(Err((
            "Runtime.InitError".into(),
            String::from_utf8_lossy(&body).into_owned(),
        )));
    }
    StatusCode::ACCEPTED
}

fn complete(shared: &Shared, id: &str, answer: Answer) -> StatusCode {
    let waiter = shared
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .in_flight
        .remove(id);
    match waiter {
        Some(waiter) => {
            let _ = waiter.send(answer);
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

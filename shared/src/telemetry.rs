//! JSON logs for Lambda, one object per line, carrying the invocation's request id.
//!
//! `lambda_runtime` opens a span with the `requestId` for every invocation; the JSON
//! formatter includes the current span, so each line names its request. Secrets never
//! reach a log line by construction: they live in `secrecy` types (whose `Debug`
//! redacts) and sealed blobs (whose `Debug` prints only their length).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The filter: `RUST_LOG` if set, else the Lambda advanced-logging level
/// (`AWS_LAMBDA_LOG_LEVEL`), else `info`. The SDK's own debug logs can print request
/// bodies, so they are capped at `info` unless `RUST_LOG` asks otherwise.
fn filter() -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        return filter;
    }
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|l| l.to_ascii_lowercase())
        .unwrap_or_else(|_| "info".to_owned());
    EnvFilter::try_new(format!(
        "{level},aws_smithy_runtime=info,aws_config=info,hyper=info"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the JSON subscriber for a Lambda function. Call once, first thing in `main`.
pub fn init() {
    init_with_writer(std::io::stdout);
}

/// Installs the JSON subscriber writing to `writer` (tests capture logs this way).
/// A second call is a no-op, not a panic.
pub fn init_with_writer<W>(writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter())
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        // CloudWatch adds its own timestamp, but local runs and tests want one.
        .with_ansi(false)
        .with_writer(writer)
        .try_init();
}

/// A writer that keeps everything written to it, for tests that assert what the logs
/// do (not) contain.
#[derive(Clone, Default, Debug)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn contents(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

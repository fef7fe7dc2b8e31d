//! JSON logs for Lambda, one object per line, carrying the invocation's request id.
//!
//! `lambda_runtime` opens a span with the `requestId` for every invocation; the JSON
//! formatter includes the current span, so each line names its request. Secrets never
//! reach a log line by construction: they live in `secrecy` types (whose `Debug`
//! redacts) and sealed blobs (whose `Debug` prints only their length).

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Targets whose debug logs can print request or response bodies: never more verbose
/// than `info` unless `RUST_LOG` names them.
const QUIET_TARGETS: [&str; 3] = ["aws_smithy_runtime", "aws_config", "hyper"];

/// Release builds contain no debug or trace events at all (`release_max_level_info`
/// on `tracing`, see Cargo.toml), so `DEBUG`/`TRACE` there log what `INFO` does.
///
/// The filter: `RUST_LOG` if set and valid (`target=level` directives, comma
/// separated), else the Lambda advanced-logging level (`AWS_LAMBDA_LOG_LEVEL`), else
/// `info`. A `Targets` filter rather than `EnvFilter`: the same directive syntax
/// without span-field matching, and without linking a regex engine into every
/// function (docs/PERFORMANCE.md, size).
fn filter(rust_log: Option<&str>, lambda_level: Option<&str>) -> Targets {
    if let Some(targets) = rust_log.and_then(|value| value.parse::<Targets>().ok()) {
        return targets;
    }
    let level = lambda_level
        .and_then(lambda_log_level)
        .unwrap_or(LevelFilter::INFO);
    // Ordering of LevelFilter is by verbosity: the minimum is the quieter one.
    let quiet = level.min(LevelFilter::INFO);
    QUIET_TARGETS
        .iter()
        .fold(Targets::new().with_default(level), |targets, target| {
            targets.with_target(*target, quiet)
        })
}

/// Lambda's levels (`TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`, `FATAL`).
fn lambda_log_level(value: &str) -> Option<LevelFilter> {
    if value.eq_ignore_ascii_case("fatal") {
        return Some(LevelFilter::ERROR);
    }
    value.parse().ok()
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
    let rust_log = std::env::var("RUST_LOG").ok();
    let lambda_level = std::env::var("AWS_LAMBDA_LOG_LEVEL").ok();
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        // CloudWatch adds its own timestamp, but local runs and tests want one.
        .with_ansi(false)
        .with_writer(writer);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(filter(rust_log.as_deref(), lambda_level.as_deref()))
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

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    fn allows(filter: &Targets, target: &str, level: Level) -> bool {
        filter.would_enable(target, &level)
    }

    #[test]
    fn defaults_to_info_with_the_sdk_no_louder() {
        let filter = filter(None, None);
        assert!(allows(&filter, "custody::store", Level::INFO));
        assert!(!allows(&filter, "custody::store", Level::DEBUG));
        assert!(!allows(&filter, "aws_smithy_runtime::client", Level::DEBUG));
    }

    #[test]
    fn the_lambda_level_applies_and_never_makes_the_sdk_louder_than_info() {
        let debug = filter(None, Some("DEBUG"));
        assert!(allows(&debug, "custody::store", Level::DEBUG));
        assert!(!allows(&debug, "aws_smithy_runtime::client", Level::DEBUG));
        assert!(allows(&debug, "aws_smithy_runtime::client", Level::INFO));

        let warn = filter(None, Some("WARN"));
        assert!(!allows(&warn, "custody::store", Level::INFO));
        assert!(allows(&warn, "custody::store", Level::WARN));
        // Quieter than info when the function asks for quieter.
        assert!(!allows(&warn, "hyper::proto", Level::INFO));

        let fatal = filter(None, Some("FATAL"));
        assert!(allows(&fatal, "custody", Level::ERROR));
        assert!(!allows(&fatal, "custody", Level::WARN));
    }

    #[test]
    fn rust_log_wins_and_a_malformed_one_falls_back() {
        let custom = filter(Some("warn,custody::seal=trace"), Some("INFO"));
        assert!(allows(&custom, "custody::seal", Level::TRACE));
        assert!(!allows(&custom, "custody::store", Level::INFO));

        let malformed = filter(Some("custody=loudest"), Some("ERROR"));
        assert!(!allows(&malformed, "custody", Level::WARN));
        assert!(allows(&malformed, "custody", Level::ERROR));
        assert_eq!(
            filter(None, Some("nonsense")).default_level(),
            Some(LevelFilter::INFO)
        );
    }
}

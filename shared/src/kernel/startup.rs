//! Where a cold start's time goes, and what waits for the first invocation
//! ([`OnFirstUse`]). Each function's `main` marks its init phases in
//! order and logs them once, just before the runtime's first poll: one INFO line
//! (`"message": "initialized"`) whose `phases` field is `name:microseconds` pairs and
//! `total_us` their sum. `make bench` reads the line to print the phase breakdown
//! (docs/PERFORMANCE.md); in AWS it sits beside Lambda's own `Init Duration`.

use std::time::{Duration, Instant};

/// The phases of one cold start, timed from [`Startup::begin`].
#[derive(Debug)]
pub struct Startup {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

/// Allocations of at least this many bytes get a mapping of their own, returned to
/// the system when freed ([`steady_allocator`]).
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`], so memory does not creep over
/// a long invocation. glibc starts at 128 KiB but raises the threshold to the size of
/// every mapped block freed (up to 32 MiB); after that, the large short-lived buffers
/// a run keeps making (a 500-message HighLevel page, a table page, a batch) come from
/// the heap and fragment it. An export's peak RSS crept by 1.7 MB over 50 000
/// messages that way, and stayed flat with the threshold fixed (docs/PERFORMANCE.md).
/// Setting it turns the adjustment off. True when glibc took the setting; false on
/// other C libraries, which do not adjust it this way.
pub fn steady_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets one of the allocator's parameters, from any thread,
        // at any time; a value it refuses is reported by returning 0.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

impl Startup {
    /// Starts the clock: call first thing in `main`. Also fixes the allocator's
    /// behaviour for the rest of the process ([`steady_allocator`]), so every function
    /// gets it from the line its `main` already starts with.
    pub fn begin() -> Self {
        steady_allocator();
        Self {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Ends the phase called `name`: the time since the previous mark (or the start).
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }

    /// `name:microseconds` pairs, in order, separated by spaces.
    pub fn phases(&self) -> String {
        let pairs: Vec<String> = self
            .phases
            .iter()
            .map(|(name, took)| format!("{name}:{}", took.as_micros()))
            .collect();
        pairs.join(" ")
    }

    /// The sum of the phases.
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|(_, took)| *took).sum()
    }

    /// Logs the phases (the subscriber must be installed by then).
    pub fn finish(self) {
        tracing::info!(
            phases = %self.phases(),
            total_us = self.total().as_micros() as u64,
            "initialized"
        );
    }
}

/// What a function builds on its first invocation instead of before its first poll:
/// the SDK clients (the first one loads the TLS roots) and the HTTP client (which
/// loads them again), several milliseconds that only the invocations of a fresh
/// container pay, not every cold start's init (docs/PERFORMANCE.md). Built once and
/// kept; a failed build is not kept, the next invocation tries again. The build is
/// logged like the init: `"message": "dependencies built"` with its `phases`.
pub struct OnFirstUse<T> {
    cell: tokio::sync::OnceCell<T>,
}

impl<T> Default for OnFirstUse<T> {
    fn default() -> Self {
        Self {
            cell: tokio::sync::OnceCell::new(),
        }
    }
}

impl<T> OnFirstUse<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value, built by `build` on the first call.
    pub async fn get<E, F, Fut>(&self, build: F) -> Result<&T, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.cell
            .get_or_try_init(|| async {
                let mut startup = Startup::begin();
                let built = build().await?;
                startup.mark("dependencies");
                tracing::info!(
                    phases = %startup.phases(),
                    total_us = startup.total().as_micros() as u64,
                    "dependencies built"
                );
                Ok(built)
            })
            .await
    }

    /// Whether the value has been built in this container.
    pub fn is_built(&self) -> bool {
        self.cell.initialized()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_order_and_sum_to_the_total() {
        let mut startup = Startup::begin();
        startup.mark("config");
        std::thread::sleep(Duration::from_millis(2));
        startup.mark("secret");
        let line = startup.phases();
        let pairs: Vec<(&str, u128)> = line
            .split(' ')
            .map(|pair| {
                let (name, us) = pair.split_once(':').unwrap();
                (name, us.parse().unwrap())
            })
            .collect();
        assert_eq!(
            pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
            ["config", "secret"]
        );
        assert!(pairs[1].1 >= 2000, "{line}");
        let sum: u128 = pairs.iter().map(|p| p.1).sum();
        // Each pair is rounded down to whole microseconds.
        assert!(startup.total().as_micros() - sum <= 2, "{line}");
    }

    #[tokio::test]
    async fn dependencies_are_built_once_and_a_failed_build_is_retried() {
        let built = OnFirstUse::new();
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let build = || async {
            let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                Err("first build fails")
            } else {
                Ok(n)
            }
        };
        assert!(!built.is_built());
        assert_eq!(built.get(build).await, Err("first build fails"));
        assert!(!built.is_built());
        assert_eq!(built.get(build).await, Ok(&1));
        assert_eq!(built.get(build).await, Ok(&1));
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn the_line_is_one_json_log_event() {
        let logs = crate::telemetry::CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(logs.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut startup = Startup::begin();
            startup.mark("telemetry");
            startup.finish();
        });
        let text = logs.contents();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["fields"]["message"], "initialized");
        assert!(
            line["fields"]["phases"]
                .as_str()
                .unwrap()
                .starts_with("telemetry:")
        );
        assert!(line["fields"]["total_us"].is_u64());
        assert_eq!(line["target"], "custody::kernel::startup");
    }
}

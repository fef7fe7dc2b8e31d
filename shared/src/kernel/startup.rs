//! Where a cold start's time goes. Each function's `main` marks its init phases in
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

impl Startup {
    /// Starts the clock: call first thing in `main`.
    pub fn begin() -> Self {
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

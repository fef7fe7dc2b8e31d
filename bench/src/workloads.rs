//! Throughput rows (issue 8, items 3–5): export, import and DSAR at two sizes each;
//! DSAR erasure inside one import file of 10 MB and 1 GB (peak RSS).
//!
//! Each size runs in a child process (`custody-bench workload <name> <size>`), so
//! its peak RSS (`VmHWM`) is its own and not the harness's. Each arm of [`run`]
//! calls the function crate's library API against a fresh `TestStack`
//! (`workloads/{export,import,dsar}.rs`); simulators that keep their data in memory
//! run in a further process of their own, so their memory is not counted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::BenchError;
use crate::discover::Function;

mod audit;
mod dsar;
mod dsar_erasure;
mod export;
mod import;

pub use dsar_erasure::seed_import_csv;
pub use export::serve_simulators;
pub use import::serve_destination;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Messages from the simulated HighLevel (rate limiter on, 100 requests / 10 s
    /// scaled to the run's length) to the embedded WebDAV server: share of the rate
    /// ceiling used, 429 count, messages/s, peak RSS. Goal: RSS at 5 000 and 50 000
    /// within 10 % of each other.
    Export,
    /// The same path over N conversations of one message each, the simulated limit
    /// raised (`workloads/export.rs`): peak RSS against the number of conversations.
    /// Goal: RSS at 5 000 and 100 000 within 10 % of each other.
    #[serde(rename = "export-conversations")]
    ExportConversations,
    /// A generated CSV through the S3 path to a local destination: rows/s, peak RSS.
    /// Goal: ≤ 64 MB, and not growing from 100 000 to 1 000 000 rows.
    Import,
    /// Export and erase a subject with 10 records in tables of 1 000 and 100 000
    /// items: DynamoDB request count and time. Goal: the same request count.
    Dsar,
    /// Erase a subject named by 10 rows of one generated CSV import file of 10 MB
    /// and 1 GB (the function streams it): time, MB/s and peak RSS. Goal: peak RSS
    /// ≤ 64 MB at both sizes.
    #[serde(rename = "dsar-erasure")]
    DsarErasure,
    /// The audit chain (`custody::audit`), shared by every function: no function crate.
    Audit,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Export,
        Workload::ExportConversations,
        Workload::Import,
        Workload::Dsar,
        Workload::DsarErasure,
        Workload::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Export => "export",
            Workload::ExportConversations => "export-conversations",
            Workload::Import => "import",
            Workload::Dsar => "dsar",
            Workload::DsarErasure => "dsar-erasure",
            Workload::Audit => "audit",
        }
    }

    /// The function binary it exercises.
    pub fn function(self) -> &'static str {
        match self {
            Workload::DsarErasure => "dsar",
            Workload::ExportConversations => "export",
            _ => self.name(),
        }
    }

    pub fn sizes(self) -> &'static [u64] {
        match self {
            Workload::Export => &[5_000, 50_000],
            Workload::ExportConversations => &[5_000, 100_000],
            Workload::Import => &[100_000, 1_000_000],
            Workload::Dsar => &[1_000, 100_000],
            Workload::DsarErasure => &[10_000_000, 1_000_000_000],
            Workload::Audit => &[1, 10, 50],
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::Export => "messages",
            Workload::ExportConversations => "conversations",
            Workload::Import => "CSV rows",
            Workload::Dsar => "table items",
            Workload::DsarErasure => "bytes of CSV",
            Workload::Audit => "concurrent writers",
        }
    }

    pub fn goal(self) -> &'static str {
        match self {
            Workload::Export => "peak RSS at 5 000 and 50 000 within 10 %; 0 × 429 at steady state",
            Workload::ExportConversations => "peak RSS at 5 000 and 100 000 within 10 %",
            Workload::Import => "peak RSS ≤ 64 MB and flat from 100 000 to 1 000 000 rows",
            Workload::Dsar => "same DynamoDB request count at 1 000 and 100 000 items",
            Workload::DsarErasure => "≤ 64 MB",
            Workload::Audit => "appends/s and p50/p99 append latency; one verified chain",
        }
    }

    /// True once [`run`] measures it.
    pub fn wired(self) -> bool {
        match self {
            Workload::Export
            | Workload::ExportConversations
            | Workload::Import
            | Workload::Dsar
            | Workload::DsarErasure
            | Workload::Audit => true,
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// One row of the throughput table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadRow {
    pub workload: Workload,
    pub function: String,
    pub size: u64,
    pub unit: String,
    pub goal: String,
    /// `measured`, or why not (`pending: …`, or the error).
    pub status: String,
    /// The workload's own numbers (rates, counts) plus `peak_rss_bytes`.
    pub metrics: Option<Value>,
}

/// Measures every size of `workload`, or says why it cannot yet.
pub fn rows(
    workload: Workload,
    functions: &[Function],
    harness: &Path,
    limit: Option<Duration>,
) -> Vec<WorkloadRow> {
    let function = functions.iter().find(|f| f.binary == workload.function());
    let blocked = match function {
        // Shared code, measured in-process: no function crate to wait for.
        _ if workload == Workload::Audit => None,
        None => Some(format!(
            "pending: function not built yet (no functions/{} crate)",
            workload.function()
        )),
        Some(Function {
            pending: Some(_), ..
        }) => Some("pending: function not built yet".to_owned()),
        Some(_) if !workload.wired() => Some(format!(
            "pending: {} is built but its workload is not wired to the function's API yet (bench/src/workloads.rs)",
            workload.function()
        )),
        Some(_) => None,
    };
    workload
        .sizes()
        .iter()
        .map(|&size| {
            let (status, metrics) = match &blocked {
                Some(reason) => (reason.clone(), None),
                None => match in_child(harness, workload, size, limit) {
                    Ok(metrics) => ("measured".to_owned(), Some(metrics)),
                    Err(err) => (err.to_string(), None),
                },
            };
            WorkloadRow {
                workload,
                function: workload.function().to_owned(),
                size,
                unit: workload.unit().to_owned(),
                goal: workload.goal().to_owned(),
                status,
                metrics,
            }
        })
        .collect()
}

/// Runs `custody-bench workload <name> <size>` (`harness` is the custody-bench
/// binary) and reads the JSON object it prints last; stops it after `limit`
/// (`--workload-timeout`), saying so. `make test` calls it at tiny sizes.
pub fn in_child(
    harness: &Path,
    workload: Workload,
    size: u64,
    limit: Option<Duration>,
) -> Result<Value, BenchError> {
    let mut command = Command::new(harness);
    command
        .args(["workload", workload.name(), &size.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = crate::build::describe(&command);
    let failed = |detail: String| BenchError::Command {
        command: shown.clone(),
        detail,
    };
    let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
    let started = Instant::now();
    loop {
        if child
            .try_wait()
            .map_err(|e| failed(e.to_string()))?
            .is_some()
        {
            break;
        }
        if let Some(limit) = limit.filter(|limit| started.elapsed() > *limit) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Measurement(format!(
                "not finished within the {} s --workload-timeout; stopped, no numbers",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
        })
        .ok_or_else(|| BenchError::Command {
            command: shown,
            detail: "printed no JSON result".to_owned(),
        })
}

/// The child side: runs one size and returns its numbers with this process's peak
/// RSS added.
pub async fn run(workload: Workload, size: u64) -> Result<Value, BenchError> {
    let mut metrics: Value = match workload {
        Workload::Dsar => dsar::run(size).await?,
        Workload::DsarErasure => dsar_erasure::run(size).await?,
        Workload::Import => import::run(size).await?,
        Workload::Export => export::run(size).await?,
        Workload::ExportConversations => export::run_conversations(size).await?,
        Workload::Audit => audit::run(size).await?,
    };
    if let Some(object) = metrics.as_object_mut() {
        if let Some(rss) = peak_rss_bytes() {
            object.insert("peak_rss_bytes".into(), rss.into());
        }
        // The function code runs in this harness process, built with its profile.
        let profile = if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        };
        object.insert("build_profile".into(), profile.into());
    }
    Ok(metrics)
}

/// This process's peak resident set (`VmHWM` in /proc/self/status), Linux only.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// This process's resident set now (`VmRSS`), Linux only.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time the calling thread has had so far (`/proc/thread-self/schedstat`, first
/// field, nanoseconds), Linux only. For single-threaded work with no I/O it is what the
/// wall clock would show on an idle machine, whatever else runs beside it.
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Resets `VmHWM` to the current resident set (Linux ≥ 4.0), so the peak that
/// follows is what comes after, not the set-up's. False if the kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_covers_what_this_process_touched() {
        let touched = vec![1u8; 64 * 1024 * 1024];
        let peak = peak_rss_bytes().unwrap();
        assert!(touched.iter().all(|&b| b == 1));
        assert!(peak >= 64 * 1024 * 1024, "peak {peak}");
    }

    #[test]
    fn unbuilt_functions_leave_their_rows_pending() {
        let placeholder = Function {
            package: "import".into(),
            binary: "import".into(),
            in_template: false,
            pending: Some("pending: function not built yet".into()),
        };
        let rows = rows(
            Workload::Import,
            &[placeholder],
            Path::new("/nonexistent"),
            None,
        );
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter()
                .all(|r| r.status.starts_with("pending: function not built yet"))
        );
        let rows = rows_for_missing();
        assert!(rows[0].status.contains("no functions/dsar crate"));
    }

    fn rows_for_missing() -> Vec<WorkloadRow> {
        rows(Workload::Dsar, &[], Path::new("/nonexistent"), None)
    }
}

//! The results: `docs/bench-results.json` and the Markdown tables `make bench`
//! prints (pasted as-is into docs/PERFORMANCE.md).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cold_start::{Kind, PhaseMedian, PhaseResult, us_to_ms};
use crate::first_invocation::FirstInvocation;
use crate::goals::{Goal, goals_markdown};
use crate::machine::Machine;
use crate::size::{CrateWeight, Duplicate, SizeRow};
use crate::stats::Summary;
use crate::workloads::{Workload, WorkloadRow};

pub const MEASURED: &str = "measured";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub generated_at: String,
    pub machine: Machine,
    pub cold_start: ColdStart,
    pub first_invocation: Vec<FirstInvocationRow>,
    pub size: Size,
    pub throughput: Vec<WorkloadRow>,
    /// Every performance goal next to its measured value ([`crate::goals::evaluate`]
    /// over the other sections; recomputed whenever a section is replaced).
    #[serde(default)]
    pub goals: Vec<Goal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdStart {
    pub runs: usize,
    pub build: String,
    pub rows: Vec<ColdStartRow>,
    /// Where each function's init goes, from its startup line.
    #[serde(default)]
    pub phases: Vec<PhaseRow>,
}

/// One function's startup line, summarised over several starts at log level INFO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRow {
    pub function: String,
    /// `measured`, `no startup line`, `malformed startup line: …` or `failed: …`.
    pub status: String,
    /// Starts whose line was read.
    pub starts: usize,
    /// Median of each phase, in µs, in the order the function logs them.
    pub phases: Vec<PhaseMedian>,
    /// Median `total_us` as ms: from the start of `main` to the end of init.
    pub init_total_ms: Option<f64>,
    /// The function's median cold start of the timed rounds.
    pub cold_start_median_ms: Option<f64>,
    /// `cold_start_median_ms − init_total_ms`, at least 0: exec and loading before
    /// `main`, and the runtime's start from the end of init to its first poll.
    pub before_main_and_runtime_start_ms: Option<f64>,
}

impl PhaseRow {
    pub fn new(function: &str, found: &PhaseResult, cold_start_median_ms: Option<f64>) -> Self {
        match found {
            Ok(medians) => {
                let init = us_to_ms(medians.total_us);
                PhaseRow {
                    function: function.to_owned(),
                    status: MEASURED.into(),
                    starts: medians.starts,
                    phases: medians.phases.clone(),
                    init_total_ms: Some(init),
                    cold_start_median_ms,
                    before_main_and_runtime_start_ms: cold_start_median_ms
                        .map(|cold| crate::stats::round_us((cold - init).max(0.0))),
                }
            }
            Err(reason) => PhaseRow {
                function: function.to_owned(),
                status: reason.clone(),
                starts: 0,
                phases: Vec::new(),
                init_total_ms: None,
                cold_start_median_ms,
                before_main_and_runtime_start_ms: None,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdStartRow {
    pub name: String,
    pub kind: Kind,
    /// `measured` or why not.
    pub status: String,
    pub summary: Option<Summary>,
    /// Median over the bare `lambda_runtime` binary's median.
    pub vs_hello_lambda: Option<f64>,
    /// Median over the Python boto3 handler's median.
    pub vs_python: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstInvocationRow {
    pub function: String,
    pub status: String,
    pub measured: Option<FirstInvocation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Size {
    /// The build command, or why there was none.
    pub build: String,
    pub build_seconds: Option<f64>,
    pub goal_bytes: u64,
    pub rows: Vec<SizeRowStatus>,
    pub duplicates: Vec<Duplicate>,
    pub heaviest_crates: Vec<CrateWeight>,
    /// How `heaviest_crates` was measured.
    pub weight_method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeRowStatus {
    pub binary: String,
    pub status: String,
    pub measured: Option<SizeRow>,
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1024.0 / 1024.0)
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

/// Markdown tables of every section.
pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(
        out,
        "Machine: {} ({} CPUs), {}, {}; {}; {}; {}. Generated {}.\n",
        m.cpu, m.cpus, m.memory, m.os, m.rustc, m.cargo_lambda, m.python, results.generated_at
    );

    out.push_str(&cold_start_markdown(&results.cold_start));

    out.push_str(&first_invocation_markdown(&results.first_invocation));

    let size = &results.size;
    let _ = writeln!(
        out,
        "\n### Size (arm64, `{}`{}) — goal ≤ {} MB per bootstrap\n",
        size.build,
        size.build_seconds
            .map_or_else(String::new, |s| format!(", {s:.0} s")),
        size.goal_bytes / 1024 / 1024
    );
    out.push_str(
        "| binary | bootstrap MB | zip MB | within goal | code | rodata | relocated tables | relocations | unwind | other | status |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in &size.rows {
        match &row.measured {
            Some(s) => {
                let parts = &s.sections;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    s.binary,
                    mb(s.bootstrap_bytes),
                    mb(s.zip_bytes),
                    if s.within_goal { "yes" } else { "**no**" },
                    mb(parts.code),
                    mb(parts.rodata),
                    mb(parts.relocated_tables),
                    mb(parts.relocations),
                    mb(parts.unwind),
                    mb(parts.other),
                    row.status
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | – | – | – | – | – | – | – | – | – | {} |",
                    row.binary, row.status
                );
            }
        }
    }
    if !size.heaviest_crates.is_empty() {
        let _ = writeln!(out, "\nHeaviest linked crates ({}):\n", size.weight_method);
        out.push_str("| crate | rlib MB |\n|---|---:|\n");
        for c in &size.heaviest_crates {
            let _ = writeln!(out, "| {} | {} |", c.name, mb(c.rlib_bytes));
        }
    }
    out.push_str("\nCrates linked in more than one version (`cargo tree -d -e normal,no-proc-macro --target aarch64-unknown-linux-gnu`):\n\n");
    if size.duplicates.is_empty() {
        out.push_str("none\n");
    } else {
        out.push_str("| crate | versions: pulled in by |\n|---|---|\n");
        for d in &size.duplicates {
            let _ = writeln!(out, "| {} | {} |", d.name, d.pulled_by.join("; "));
        }
    }

    out.push_str(&throughput_markdown(&results.throughput));
    out.push_str(&goals_markdown(&results.goals));
    out
}

/// The cold start tables: the timed rounds, then where each function's init goes.
/// The first-invocation table: what a fresh process pays on its first event (the
/// dependencies built on first use, the first connections) beside a warm one.
pub fn first_invocation_markdown(rows: &[FirstInvocationRow]) -> String {
    let mut out = String::new();
    out.push_str("\n### First invocation against the local emulator (fresh process)\n\n");
    out.push_str("| function | event | cold start ms | first invocation ms | second (warm) ms | result | status |\n");
    out.push_str("|---|---|---:|---:|---:|---|---|\n");
    for row in rows {
        match &row.measured {
            Some(f) => {
                let result = match (&f.status_code, &f.error) {
                    (Some(code), _) => format!("HTTP {code}"),
                    (None, Some(err)) => format!("error: {err}"),
                    (None, None) => "ok".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {result} | {} |",
                    f.function,
                    f.event,
                    ms(f.cold_start_ms),
                    ms(f.first_invocation_ms),
                    ms(f.second_invocation_ms),
                    row.status
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | – | – | – | – | – | {} |",
                    row.function, row.status
                );
            }
        }
    }
    out
}

pub fn cold_start_markdown(cs: &ColdStart) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Cold start: process start → first poll of the Runtime API ({} runs each, {})\n",
        cs.runs, cs.build
    );
    out.push_str("| binary | kind | median ms | p90 ms | min ms | max ms | × hello-lambda | × Python | status |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for row in &cs.rows {
        let kind = match row.kind {
            Kind::Function => "function",
            Kind::RustBaseline => "bare lambda_runtime",
            Kind::PythonBaseline => "Python + boto3, 5 clients",
        };
        match &row.summary {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "| {} | {kind} | {} | {} | {} | {} | {} | {} | {} |",
                    row.name,
                    ms(s.median_ms),
                    ms(s.p90_ms),
                    ms(s.min_ms),
                    ms(s.max_ms),
                    times(row.vs_hello_lambda),
                    times(row.vs_python),
                    row.status
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {kind} | – | – | – | – | – | – | {} |",
                    row.name, row.status
                );
            }
        }
    }
    out.push_str(&phases_markdown(&cs.phases));
    out
}

/// A phase time in ms: two decimals below 10 ms.
fn phase_ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        ms(value)
    }
}

fn phases_markdown(rows: &[PhaseRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let starts = rows.iter().map(|r| r.starts).max().unwrap_or(0);
    let mut out = format!(
        "\n### Cold start by phase: the startup line each function logs at the end of its init (median of {starts} more starts at log level INFO)\n\n"
    );
    out.push_str("| function | before main and runtime start ms | init total ms | phases, in order (median ms) | cold start median ms | status |\n");
    out.push_str("|---|---:|---:|---|---:|---|\n");
    let opt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), phase_ms);
    for row in rows {
        let phases = if row.phases.is_empty() {
            "–".to_owned()
        } else {
            row.phases
                .iter()
                .map(|p| format!("{} {}", p.name, phase_ms(p.median_us / 1e3)))
                .collect::<Vec<_>>()
                .join(" · ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {phases} | {} | {} |",
            row.function,
            opt(row.before_main_and_runtime_start_ms),
            opt(row.init_total_ms),
            opt(row.cold_start_median_ms),
            row.status
        );
    }
    out
}

/// The throughput tables alone (also what `--only throughput` prints): every
/// workload with its metrics as JSON, and the DSAR erasure rows in a table of their own.
pub fn throughput_markdown(rows: &[WorkloadRow]) -> String {
    let (erasure, rows): (Vec<&WorkloadRow>, Vec<&WorkloadRow>) = rows
        .iter()
        .partition(|row| row.workload == Workload::DsarErasure);
    let imports: Vec<&WorkloadRow> = rows
        .iter()
        .copied()
        .filter(|row| row.workload == Workload::Import)
        .collect();
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&generic_throughput_markdown(&rows));
    }
    if !imports.is_empty() {
        out.push_str(&import_markdown(&imports));
    }
    if !erasure.is_empty() {
        out.push_str(&erasure_markdown(&erasure));
    }
    out
}

/// A size in decimal units: `10 MB`, `1 GB`, `1.5 MB`.
fn decimal_size(bytes: u64) -> String {
    let (value, unit) = if bytes >= 1_000_000_000 {
        (bytes as f64 / 1e9, "GB")
    } else {
        (bytes as f64 / 1e6, "MB")
    };
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {unit}")
}

/// DSAR erasure of one subject inside one import file: size, time, MB/s, peak RSS.
fn erasure_markdown(rows: &[&WorkloadRow]) -> String {
    let mut out = String::from(
        "\n### DSAR erasure of one subject inside one import file\n\n\
         | file | rows | subject rows erased | erasure s | MB/s | peak RSS MB (erasure) | peak RSS MB (set-up) | goal (peak RSS) | status |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    let mb = |value: &serde_json::Value| {
        value
            .as_f64()
            .map_or_else(|| "–".to_owned(), |b| format!("{:.1}", b / 1e6))
    };
    for row in rows {
        let size = decimal_size(row.size);
        let Some(m) = &row.metrics else {
            let _ = writeln!(
                out,
                "| {size} | – | – | – | – | – | – | {} | {} |",
                row.goal, row.status
            );
            continue;
        };
        let number = |field: &str, digits: usize| {
            m[field]
                .as_f64()
                .map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
        };
        let file = m["file_bytes"]
            .as_u64()
            .map_or(size, |bytes| format!("{} ({bytes} B)", decimal_size(bytes)));
        let within = match m["within_goal"].as_bool() {
            Some(true) => "",
            Some(false) => " **over**",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {file} | {} | {} | {} | {} | {}{within} | {} | {} | {} |",
            number("rows", 0),
            m["erased"]["import_rows"],
            number("erase_s", 1),
            number("mb_per_s", 1),
            mb(&m["erasure_peak_rss_bytes"]),
            mb(&m["setup_peak_rss_bytes"]),
            row.goal,
            row.status
        );
    }
    out
}

/// The import rows against their baselines: the same object read from S3 without
/// parsing, and the same bytes parsed and validated from memory.
fn import_markdown(rows: &[&WorkloadRow]) -> String {
    let mut out = String::from(
        "\n### Import against its baselines (same object, same run)\n\n\
         | rows | CSV MB | import s | import rows/s | bare S3 read rows/s | bare S3 read MB/s | import ÷ bare read | parse + validate from memory rows/s | parse + encode from memory rows/s | rows delivered | peak RSS MB (processing) | status |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let size = crate::goals::grouped(row.size as f64);
        let Some(m) = &row.metrics else {
            let _ = writeln!(
                out,
                "| {size} | – | – | – | – | – | – | – | – | – | – | {} |",
                row.status
            );
            continue;
        };
        let rate = |field: &str| {
            m[field]
                .as_f64()
                .map_or_else(|| "–".to_owned(), crate::goals::grouped)
        };
        let number = |field: &str, digits: usize| {
            m[field]
                .as_f64()
                .map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
        };
        let megabytes = |field: &str| {
            m[field]
                .as_f64()
                .map_or_else(|| "–".to_owned(), |b| format!("{:.1}", b / 1e6))
        };
        let versus = m["import_vs_bare_read"]
            .as_f64()
            .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
        let _ = writeln!(
            out,
            "| {size} | {} | {} | {} | {} | {} | {versus} | {} | {} | {} | {} | {} |",
            megabytes("csv_bytes"),
            number("seconds", 2),
            rate("rows_per_s"),
            rate("bare_read_rows_per_s"),
            number("bare_read_mb_per_s", 1),
            rate("parse_validate_rows_per_s"),
            rate("parse_encode_rows_per_s"),
            rate("rows_delivered"),
            megabytes("processing_peak_rss_bytes"),
            row.status
        );
    }
    out
}

fn generic_throughput_markdown(rows: &[&WorkloadRow]) -> String {
    let mut out = String::from(
        "\n### Throughput\n\n| workload | size | goal | status | metrics |\n|---|---:|---|---|---|\n",
    );
    for row in rows {
        let metrics = row
            .metrics
            .as_ref()
            .map_or_else(|| "–".to_owned(), |m| format!("`{m}`"));
        let _ = writeln!(
            out,
            "| {} | {} {} | {} | {} | {metrics} |",
            row.workload.name(),
            row.size,
            row.unit,
            row.goal,
            row.status
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cold_start::PhaseMedians;

    #[test]
    fn the_phase_table_shows_every_phase_and_what_is_before_main() {
        let medians = PhaseMedians {
            starts: 5,
            phases: vec![
                PhaseMedian {
                    name: "telemetry".into(),
                    median_us: 120.0,
                },
                PhaseMedian {
                    name: "secret".into(),
                    median_us: 4000.0,
                },
            ],
            total_us: 4120.0,
        };
        let rows = [
            PhaseRow::new("import", &Ok(medians), Some(13.0)),
            PhaseRow::new(
                "oauth",
                &Err(crate::cold_start::NO_STARTUP_LINE.into()),
                Some(9.0),
            ),
            // Init logged as longer than the whole cold start: clamped at 0.
            PhaseRow::new(
                "expiry",
                &Ok(PhaseMedians {
                    starts: 5,
                    phases: Vec::new(),
                    total_us: 9000.0,
                }),
                Some(8.0),
            ),
        ];
        assert_eq!(rows[0].before_main_and_runtime_start_ms, Some(8.88));
        assert_eq!(rows[2].before_main_and_runtime_start_ms, Some(0.0));
        let table = phases_markdown(&rows);
        assert!(
            table.contains(
                "| import | 8.88 | 4.12 | telemetry 0.12 · secret 4.00 | 13.0 | measured |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| oauth | – | – | – | 9.00 | no startup line |"),
            "{table}"
        );
    }

    #[test]
    fn import_rows_show_their_baselines() {
        let row = WorkloadRow {
            workload: Workload::Import,
            function: "import".into(),
            size: 1_000_000,
            unit: "CSV rows".into(),
            goal: Workload::Import.goal().into(),
            status: MEASURED.into(),
            metrics: Some(json!({
                "csv_bytes": 70_600_000, "seconds": 11.7, "rows_per_s": 85_470.0,
                "bare_read_rows_per_s": 2_000_000.0, "bare_read_mb_per_s": 141.2,
                "import_vs_bare_read": 0.0427, "parse_validate_rows_per_s": 1_250_000.0,
                "parse_encode_rows_per_s": 1_100_000.0,
                "rows_delivered": 1_000_000, "processing_peak_rss_bytes": 16_700_000,
            })),
        };
        let table = throughput_markdown(&[row]);
        assert!(
            table.contains("| 1 000 000 | 70.6 | 11.70 | 85 470 | 2 000 000 | 141.2 | 0.04× | 1 250 000 | 1 100 000 | 1 000 000 | 16.7 | measured |"),
            "{table}"
        );
    }
}

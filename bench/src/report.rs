//! The results: `docs/bench-results.json` and the Markdown tables `make bench`
//! prints (pasted as-is into docs/PERFORMANCE.md).

use std::fmt::Write as _;

use serde::Serialize;

use crate::cold_start::Kind;
use crate::first_invocation::FirstInvocation;
use crate::machine::Machine;
use crate::size::{CrateWeight, Duplicate, SizeRow};
use crate::stats::Summary;
use crate::workloads::{Workload, WorkloadRow};

pub const MEASURED: &str = "measured";

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub generated_at: String,
    pub machine: Machine,
    pub cold_start: ColdStart,
    pub first_invocation: Vec<FirstInvocationRow>,
    pub size: Size,
    pub throughput: Vec<WorkloadRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdStart {
    pub runs: usize,
    pub build: String,
    pub rows: Vec<ColdStartRow>,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct FirstInvocationRow {
    pub function: String,
    pub status: String,
    pub measured: Option<FirstInvocation>,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
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

    let cs = &results.cold_start;
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

    out.push_str("\n### First invocation against the local emulator (fresh process)\n\n");
    out.push_str("| function | event | cold start ms | first invocation ms | second (warm) ms | result | status |\n");
    out.push_str("|---|---|---:|---:|---:|---|---|\n");
    for row in &results.first_invocation {
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
    out
}

/// The throughput tables alone (also what `--only throughput` prints): every
/// workload with its metrics as JSON, and the DSAR erasure rows in a table of their own.
pub fn throughput_markdown(rows: &[WorkloadRow]) -> String {
    let (erasure, rows): (Vec<&WorkloadRow>, Vec<&WorkloadRow>) = rows
        .iter()
        .partition(|row| row.workload == Workload::DsarErasure);
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&generic_throughput_markdown(&rows));
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

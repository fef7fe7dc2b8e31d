//! `custody-bench [--runs N] [--out FILE] [--skip-size] [--only throughput|cold-start]`:
//! the benchmarks behind `make bench` (method in docs/PERFORMANCE.md). Prints
//! Markdown tables, the goals last, and writes the JSON results.
//!
//! `custody-bench workload <export|export-conversations|import|dsar|dsar-erasure|audit> <size>`: one
//! throughput run, in its own process so its peak RSS is its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use custody_bench::build::{BASELINE_BINARY, BASELINE_PACKAGE, Profile, host_binaries};
use custody_bench::cold_start::{self, Kind, Subject};
use custody_bench::discover::{Function, Workspace, discover};
use custody_bench::first_invocation::{self, LocalStack, pick_event};
use custody_bench::report::{
    ColdStart, ColdStartRow, FirstInvocationRow, MEASURED, PhaseRow, Results, Size, SizeRowStatus,
    markdown,
};
use custody_bench::stats::ratio;
use custody_bench::workloads::{self, Workload};
use custody_bench::{BenchError, machine, python, repo_root, size, venv_python};

const PYTHON_BASELINE: &str = "python-boto3";
/// A process that has not polled after this long has failed its init.
const POLL_LIMIT: Duration = Duration::from_secs(20);
/// Starts of each function at log level INFO for its startup line, after the
/// timed rounds.
const PHASE_STARTS: usize = 5;

/// `--only`: one part of the benchmark, merged into the existing results file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    Throughput,
    ColdStart,
    Size,
}

struct Options {
    runs: usize,
    out: PathBuf,
    skip_size: bool,
    /// `--only throughput` / `--only cold-start`: run that part alone and replace it
    /// in the existing results file, keeping its other sections.
    only: Option<Only>,
    /// `--workload-timeout SECS`: stop a throughput row that runs longer.
    workload_timeout: Option<Duration>,
    /// `--workload NAME` (repeatable, with `--only throughput`): run only these
    /// workloads' rows and keep the file's rows of the others.
    selected: Vec<Workload>,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: custody-bench [--runs N] [--out FILE] [--skip-size] [--only throughput|cold-start|size] [--workload-timeout SECS] [--workload NAME]…\n       custody-bench workload <export|export-conversations|import|dsar|dsar-erasure|audit> <size>"
    );
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("workload") {
        // The function code runs in this process: with the allocator as each
        // function's `main` sets it.
        custody::startup::steady_allocator();
        return workload(&args[1..]).await;
    }
    // The export workload's simulators, in a process of their own (see workloads).
    if args.first().map(String::as_str) == Some("sim-export-services") {
        let Some(messages) = args.get(1).and_then(|n| n.parse().ok()) else {
            return usage();
        };
        return match workloads::serve_simulators(messages).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("custody-bench sim-export-services: {err}");
                ExitCode::FAILURE
            }
        };
    }
    // The dsar-erasure workload's import file, uploaded by a process of its own so
    // that it is never in the measured one (see workloads/dsar_erasure.rs).
    if args.first().map(String::as_str) == Some("seed-import-csv") {
        return match workloads::seed_import_csv(&args[1..]).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("custody-bench seed-import-csv: {err}");
                ExitCode::FAILURE
            }
        };
    }
    // The import workload's destination, in a process of its own (see workloads).
    if args.first().map(String::as_str) == Some("sim-destination") {
        return match workloads::serve_destination().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("custody-bench sim-destination: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let root = repo_root();
    let mut options = Options {
        runs: 20,
        out: root.join("docs/bench-results.json"),
        skip_size: false,
        only: None,
        workload_timeout: None,
        selected: Vec::new(),
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--runs" => match rest.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => options.runs = n,
                _ => return usage(),
            },
            "--out" => match rest.next() {
                Some(path) => options.out = PathBuf::from(path),
                None => return usage(),
            },
            "--skip-size" => options.skip_size = true,
            "--workload" => match rest.next().and_then(|name| Workload::parse(name)) {
                Some(workload) => options.selected.push(workload),
                None => return usage(),
            },
            "--workload-timeout" => match rest.next().and_then(|n| n.parse().ok()) {
                Some(secs) => options.workload_timeout = Some(Duration::from_secs(secs)),
                None => return usage(),
            },
            "--only" => match rest.next().map(String::as_str) {
                Some("throughput") => options.only = Some(Only::Throughput),
                Some("cold-start") => options.only = Some(Only::ColdStart),
                Some("size") => options.only = Some(Only::Size),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    if options.only == Some(Only::ColdStart) {
        return match cold_start_only(&root, &options).await {
            Ok(table) => {
                println!("{table}");
                println!("cold start rows replaced in {}", options.out.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("custody-bench: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if options.only == Some(Only::Size) {
        return match size_only(&root, &options) {
            Ok(table) => {
                println!("{table}");
                println!("size rows replaced in {}", options.out.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("custody-bench: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if options.only == Some(Only::Throughput) {
        return match throughput_only(&root, &options) {
            Ok(table) => {
                println!("{table}");
                println!("throughput rows replaced in {}", options.out.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("custody-bench: {err}");
                ExitCode::FAILURE
            }
        };
    }
    match bench(&root, &options).await {
        Ok(results) => {
            println!("{}", markdown(&results));
            println!("results written to {}", options.out.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("custody-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn workload(args: &[String]) -> ExitCode {
    let (Some(workload), Some(size)) = (
        args.first().and_then(|name| Workload::parse(name)),
        args.get(1).and_then(|size| size.parse().ok()),
    ) else {
        return usage();
    };
    match workloads::run(workload, size).await {
        Ok(metrics) => {
            println!("{metrics}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("custody-bench workload: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the throughput rows and swaps them into the results file at `out`.
fn throughput_only(root: &Path, options: &Options) -> Result<String, BenchError> {
    let (out, limit) = (options.out.as_path(), options.workload_timeout);
    let selected: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| options.selected.is_empty() || options.selected.contains(w))
        .collect();
    let workspace = discover(root)?;
    let harness = std::env::current_exe().map_err(|e| BenchError::Measurement(e.to_string()))?;
    eprintln!("== throughput");
    let rows: Vec<workloads::WorkloadRow> = selected
        .iter()
        .copied()
        .flat_map(|w| workloads::rows(w, &workspace.functions, &harness, limit))
        .collect();
    let mut results = read_results(out)?;
    let object = results
        .as_object_mut()
        .ok_or_else(|| BenchError::file(out, "not a JSON object"))?;
    let mut fresh =
        serde_json::to_value(&rows).map_err(|e| BenchError::Measurement(e.to_string()))?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Some workloads only: the others' rows keep their time, so these carry their own.
    let partial = selected.len() < Workload::ALL.len();
    if partial {
        for row in fresh.as_array_mut().into_iter().flatten() {
            if let Some(row) = row.as_object_mut() {
                row.insert("generated_at".into(), now.clone().into());
            }
        }
    }
    let kept: Vec<serde_json::Value> = object
        .get("throughput")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|row| {
            !selected
                .iter()
                .any(|w| row["workload"].as_str() == Some(w.name()))
        })
        .cloned()
        .collect();
    // Rows in Workload::ALL order, whichever run measured them.
    let mut merged: Vec<serde_json::Value> = kept
        .into_iter()
        .chain(fresh.as_array().cloned().unwrap_or_default())
        .collect();
    let order = |row: &serde_json::Value| {
        Workload::ALL
            .iter()
            .position(|w| row["workload"].as_str() == Some(w.name()))
    };
    merged.sort_by_key(|row| (order(row), row["size"].as_u64()));
    object.insert("throughput".into(), merged.into());
    if !partial {
        object.insert("throughput_generated_at".into(), now.into());
    }
    let goals = write_with_goals(out, results)?;
    Ok(custody_bench::report::throughput_markdown(&rows) + &goals)
}

/// The existing results file at `out`, which an `--only` run merges into.
fn read_results(out: &Path) -> Result<serde_json::Value, BenchError> {
    let text = std::fs::read_to_string(out).map_err(|e| BenchError::file(out, e))?;
    let results: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BenchError::file(out, e))?;
    if !results.is_object() {
        return Err(BenchError::file(out, "not a JSON object"));
    }
    Ok(results)
}

/// Recomputes the goals from the whole merged file, writes it to `out`, and
/// returns the goals table. A file that no longer parses as results keeps its
/// merged rows but no goals (stale ones are dropped), and the table says why.
fn write_with_goals(out: &Path, mut results: serde_json::Value) -> Result<String, BenchError> {
    let goals = custody_bench::goals::evaluate_json(&results);
    if let Some(object) = results.as_object_mut() {
        match &goals {
            Ok(goals) => {
                let value = serde_json::to_value(goals)
                    .map_err(|e| BenchError::Measurement(e.to_string()))?;
                object.insert("goals".into(), value);
            }
            Err(_) => {
                object.remove("goals");
            }
        }
    }
    let json = serde_json::to_string_pretty(&results)
        .map_err(|e| BenchError::Measurement(e.to_string()))?;
    std::fs::write(out, json + "\n").map_err(|e| BenchError::file(out, e))?;
    Ok(match goals {
        Ok(goals) => custody_bench::goals::goals_markdown(&goals),
        Err(err) => format!(
            "\n### Goals\n\nnot computed: {} does not parse as results: {err}\n",
            out.display()
        ),
    })
}

/// `--only cold-start`: the timed rounds and the startup phases alone (no first
/// invocation, size or throughput), replacing the file's `cold_start` section.
/// `--only size`: the arm64 size rows alone (step 6), merged into the results file.
fn size_only(root: &Path, options: &Options) -> Result<String, BenchError> {
    let out = options.out.as_path();
    read_results(out)?;
    let workspace = discover(root)?;
    let python = venv_python();
    // The size step needs only which functions exist, not host binaries.
    let built: Built = workspace
        .functions
        .iter()
        .map(|f| match &f.pending {
            None => (f.clone(), Ok(PathBuf::new())),
            Some(reason) => (f.clone(), Err(reason.clone())),
        })
        .collect();
    eprintln!("== arm64 release build (size); LTO on two cores takes minutes");
    let size = measure_size(&workspace, &python, &built);
    let mut lines =
        String::from("\n### Size (arm64)\n\n| binary | bytes | status |\n|---|---:|---|\n");
    for row in &size.rows {
        let bytes = row
            .measured
            .as_ref()
            .map_or_else(|| "–".to_owned(), |m| m.bootstrap_bytes.to_string());
        lines.push_str(&format!("| {} | {bytes} | {} |\n", row.binary, row.status));
    }
    let mut results = read_results(out)?;
    let object = results
        .as_object_mut()
        .ok_or_else(|| BenchError::file(out, "not a JSON object"))?;
    object.insert(
        "size".into(),
        serde_json::to_value(&size).map_err(|e| BenchError::Measurement(e.to_string()))?,
    );
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    object.insert("size_generated_at".into(), now.into());
    let goals = write_with_goals(out, results)?;
    Ok(lines + &goals)
}

async fn cold_start_only(root: &Path, options: &Options) -> Result<String, BenchError> {
    let out = options.out.as_path();
    // Fail before the builds if there is nothing to merge into.
    read_results(out)?;
    let workspace = discover(root)?;
    let python = venv_python();
    eprintln!("== host release build (timing)");
    let (baseline, built) = build_host(&workspace)?;
    let launcher = python::launcher(root, &python, &workspace.target_dir.join("bench/python"))?;
    eprintln!("== provisioning the local emulator from template.yaml");
    let stack = LocalStack::provision(root, &custody_local::harness::unique_stage()).await?;
    let cold =
        cold_start_section(&workspace, &stack, baseline, launcher, &built, options.runs).await;
    // Beside it, what the first invocation pays (dependencies built on first use).
    eprintln!("== first invocation");
    let first_rows = first_invocation_rows(root, &stack, &built).await;
    let mut results = read_results(out)?;
    let object = results
        .as_object_mut()
        .ok_or_else(|| BenchError::file(out, "not a JSON object"))?;
    object.insert(
        "cold_start".into(),
        serde_json::to_value(&cold).map_err(|e| BenchError::Measurement(e.to_string()))?,
    );
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    object.insert(
        "first_invocation".into(),
        serde_json::to_value(&first_rows).map_err(|e| BenchError::Measurement(e.to_string()))?,
    );
    object.insert("cold_start_generated_at".into(), now.into());
    let goals = write_with_goals(out, results)?;
    Ok(custody_bench::report::cold_start_markdown(&cold)
        + &custody_bench::report::first_invocation_markdown(&first_rows)
        + &goals)
}

async fn bench(root: &Path, options: &Options) -> Result<Results, BenchError> {
    let workspace = discover(root)?;
    let python = venv_python();
    let machine = machine::describe(root, python::versions(&python)?);

    eprintln!("== host release build (timing)");
    let (baseline, built) = build_host(&workspace)?;
    let launcher = python::launcher(root, &python, &workspace.target_dir.join("bench/python"))?;

    eprintln!("== provisioning the local emulator from template.yaml");
    let stack = LocalStack::provision(root, &custody_local::harness::unique_stage()).await?;

    let cold_start =
        cold_start_section(&workspace, &stack, baseline, launcher, &built, options.runs).await;

    eprintln!("== first invocation");
    let first_rows = first_invocation_rows(root, &stack, &built).await;

    let size = if options.skip_size {
        skipped_size("skipped (--skip-size)")
    } else {
        eprintln!("== arm64 release build (size); LTO on two cores takes minutes");
        measure_size(&workspace, &python, &built)
    };

    eprintln!("== throughput");
    let harness = std::env::current_exe().map_err(|e| BenchError::Measurement(e.to_string()))?;
    let throughput = Workload::ALL
        .into_iter()
        .flat_map(|w| workloads::rows(w, &workspace.functions, &harness, options.workload_timeout))
        .collect();

    let results = Results {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine,
        cold_start,
        first_invocation: first_rows,
        size,
        throughput,
        goals: Vec::new(),
    };
    let results = Results {
        goals: custody_bench::goals::evaluate(&results),
        ..results
    };
    let json = serde_json::to_string_pretty(&results)
        .map_err(|e| BenchError::Measurement(e.to_string()))?;
    std::fs::write(&options.out, json + "\n").map_err(|e| BenchError::file(&options.out, e))?;
    Ok(results)
}

/// The cold start section: `runs` timed interleaved rounds of the baselines and
/// every built function, then [`PHASE_STARTS`] more starts of each function at log
/// level INFO for its startup line (where its init goes).
async fn cold_start_section(
    workspace: &Workspace,
    stack: &LocalStack,
    baseline: PathBuf,
    launcher: PathBuf,
    built: &Built,
    runs: usize,
) -> ColdStart {
    eprintln!("== cold start: {runs} runs each");
    let mut subjects = vec![
        Subject {
            name: BASELINE_BINARY.into(),
            kind: Kind::RustBaseline,
            program: baseline,
            env: stack.environment(BASELINE_BINARY),
        },
        Subject {
            name: PYTHON_BASELINE.into(),
            kind: Kind::PythonBaseline,
            program: launcher,
            env: stack.environment(BASELINE_BINARY),
        },
    ];
    for (function, binary) in built {
        if let Ok(program) = binary {
            subjects.push(Subject {
                name: function.binary.clone(),
                kind: Kind::Function,
                program: program.clone(),
                env: stack.environment(&function.binary),
            });
        }
    }
    let measured = cold_start::measure(&subjects, runs, POLL_LIMIT).await;
    let median_of = |name: &str| {
        subjects
            .iter()
            .zip(&measured)
            .find(|(s, _)| s.name == name)
            .and_then(|(_, m)| m.as_ref().ok())
            .map(|(summary, _)| summary.median_ms)
    };
    let (hello, python_median) = (median_of(BASELINE_BINARY), median_of(PYTHON_BASELINE));
    let mut cold_rows: Vec<ColdStartRow> = subjects
        .iter()
        .zip(&measured)
        .map(|(subject, result)| match result {
            Ok((summary, _)) => ColdStartRow {
                name: subject.name.clone(),
                kind: subject.kind,
                status: MEASURED.into(),
                vs_hello_lambda: hello.and_then(|h| ratio(summary.median_ms, h)),
                vs_python: python_median.and_then(|p| ratio(summary.median_ms, p)),
                summary: Some(summary.clone()),
            },
            Err(err) => ColdStartRow {
                name: subject.name.clone(),
                kind: subject.kind,
                status: format!("failed: {err}"),
                summary: None,
                vs_hello_lambda: None,
                vs_python: None,
            },
        })
        .collect();
    for (function, binary) in built {
        if let Err(reason) = binary {
            cold_rows.push(ColdStartRow {
                name: function.binary.clone(),
                kind: Kind::Function,
                status: reason.clone(),
                summary: None,
                vs_hello_lambda: None,
                vs_python: None,
            });
        }
    }

    eprintln!("== cold start by phase: {PHASE_STARTS} starts each at log level INFO");
    let functions: Vec<Subject> = subjects
        .iter()
        .filter(|s| s.kind == Kind::Function)
        .cloned()
        .collect();
    let log_dir = workspace.target_dir.join("bench/startup");
    let found = cold_start::phases(&functions, PHASE_STARTS, POLL_LIMIT, &log_dir).await;
    let mut phases: Vec<PhaseRow> = functions
        .iter()
        .zip(&found)
        .map(|(subject, found)| PhaseRow::new(&subject.name, found, median_of(&subject.name)))
        .collect();
    for (function, binary) in built {
        if let Err(reason) = binary {
            phases.push(PhaseRow::new(&function.binary, &Err(reason.clone()), None));
        }
    }
    ColdStart {
        runs,
        build: "cargo build --release (host target; LTO, codegen-units 1, stripped)".into(),
        rows: cold_rows,
        phases,
    }
}

type Built = Vec<(Function, Result<PathBuf, String>)>;

/// The baseline and every ready function, in one cargo invocation; if that fails
/// (a function mid-work that does not compile), one by one, so the others are
/// still measured.
fn build_host(workspace: &Workspace) -> Result<(PathBuf, Built), BenchError> {
    let baseline = (BASELINE_PACKAGE.to_owned(), BASELINE_BINARY.to_owned());
    let ready: Vec<&Function> = workspace
        .functions
        .iter()
        .filter(|f| f.pending.is_none())
        .collect();
    let mut wanted = vec![baseline.clone()];
    wanted.extend(ready.iter().map(|f| (f.package.clone(), f.binary.clone())));
    let all = host_binaries(workspace, &wanted, Profile::Release);
    let baseline_path = match &all {
        Ok(paths) => paths[0].clone(),
        Err(_) => host_binaries(workspace, &[baseline], Profile::Release)?.remove(0),
    };
    let built = workspace
        .functions
        .iter()
        .map(|function| {
            let result = match (&function.pending, &all) {
                (Some(reason), _) => Err(reason.clone()),
                (None, Ok(paths)) => Ok(paths[1 + ready
                    .iter()
                    .position(|f| f.binary == function.binary)
                    .unwrap_or(0)]
                .clone()),
                (None, Err(_)) => host_binaries(
                    workspace,
                    &[(function.package.clone(), function.binary.clone())],
                    Profile::Release,
                )
                .map(|mut paths| paths.remove(0))
                .map_err(|e| format!("does not build: {e}")),
            };
            (function.clone(), result)
        })
        .collect();
    Ok((baseline_path, built))
}

async fn first_invocation_rows(
    root: &Path,
    stack: &LocalStack,
    built: &Built,
) -> Vec<FirstInvocationRow> {
    let mut rows = Vec::new();
    for (function, binary) in built {
        let row = match binary {
            Err(reason) => FirstInvocationRow {
                function: function.binary.clone(),
                status: reason.clone(),
                measured: None,
            },
            Ok(program) => first_invocation_row(root, stack, function, program).await,
        };
        rows.push(row);
    }
    rows
}

async fn first_invocation_row(
    root: &Path,
    stack: &LocalStack,
    function: &Function,
    program: &Path,
) -> FirstInvocationRow {
    let events = root.join("events").join(&function.binary);
    let (path, event) = match pick_event(&events) {
        Ok(found) => found,
        Err(reason) => {
            return FirstInvocationRow {
                function: function.binary.clone(),
                status: format!("skipped: {reason}"),
                measured: None,
            };
        }
    };
    let event_file = path
        .strip_prefix(root)
        .unwrap_or(&path)
        .display()
        .to_string();
    let env = stack.environment(&function.binary);
    match first_invocation::measure(&function.binary, program, &env, &event_file, &event).await {
        Ok(measured) => FirstInvocationRow {
            function: function.binary.clone(),
            status: MEASURED.into(),
            measured: Some(measured),
        },
        Err(err) => FirstInvocationRow {
            function: function.binary.clone(),
            status: format!("failed: {err}"),
            measured: None,
        },
    }
}

fn skipped_size(reason: &str) -> Size {
    Size {
        build: reason.to_owned(),
        build_seconds: None,
        goal_bytes: size::GOAL_BYTES,
        rows: Vec::new(),
        duplicates: Vec::new(),
        heaviest_crates: Vec::new(),
        weight_method: String::new(),
    }
}

fn measure_size(workspace: &Workspace, python: &Path, built: &Built) -> Size {
    let mut wanted = vec![(BASELINE_PACKAGE.to_owned(), BASELINE_BINARY.to_owned())];
    wanted.extend(
        built
            .iter()
            .filter(|(_, b)| b.is_ok())
            .map(|(f, _)| (f.package.clone(), f.binary.clone())),
    );
    let template: Vec<String> = built.iter().map(|(f, _)| f.binary.clone()).collect();
    let (command, took) = match size::build_arm64(workspace, &wanted, &template) {
        Ok(done) => done,
        Err(err) => return skipped_size(&format!("failed: {err}")),
    };
    let mut rows: Vec<SizeRowStatus> = wanted
        .iter()
        .map(
            |(_, binary)| match size::measure(workspace, python, binary) {
                Ok(row) => SizeRowStatus {
                    binary: binary.clone(),
                    status: MEASURED.into(),
                    measured: Some(row),
                },
                Err(err) => SizeRowStatus {
                    binary: binary.clone(),
                    status: format!("failed: {err}"),
                    measured: None,
                },
            },
        )
        .collect();
    rows.extend(built.iter().filter_map(|(f, b)| {
        b.as_ref().err().map(|reason| SizeRowStatus {
            binary: f.binary.clone(),
            status: reason.clone(),
            measured: None,
        })
    }));
    // Every function links the `custody` crate; before any function stands, its
    // dependencies are what the functions will weigh.
    let mut packages: Vec<String> = wanted[1..].iter().map(|(p, _)| p.clone()).collect();
    if packages.is_empty() {
        packages.push("custody".into());
    }
    let duplicates = size::duplicates(&workspace.root, &packages).unwrap_or_else(|err| {
        eprintln!("cargo tree -d: {err}");
        Vec::new()
    });
    let heaviest_crates = size::heaviest_crates(workspace, &packages, 15).unwrap_or_else(|err| {
        eprintln!("crate weights: {err}");
        Vec::new()
    });
    Size {
        build: command,
        build_seconds: Some(took.as_secs_f64().round()),
        goal_bytes: size::GOAL_BYTES,
        rows,
        duplicates,
        heaviest_crates,
        weight_method: "size of each crate's arm64 release .rlib (object code + LTO bitcode), a proxy: cargo-bloat needs an unstripped second build".into(),
    }
}

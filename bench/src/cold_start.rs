//! Cold start: time from process start to the first poll of the Runtime API
//! (`GET /2018-06-01/runtime/invocation/next`), as custody-local's Runtime API
//! records it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_local::runtime_api::LocalFunction;
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::stats::{Summary, round_us, summarize};

/// What is started: a function, the bare-runtime baseline or the Python baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Function,
    RustBaseline,
    PythonBaseline,
}

#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub kind: Kind,
    pub program: PathBuf,
    pub env: Vec<(String, String)>,
}

/// One process start. An exit or init failure shows as no poll within `limit`.
pub async fn once(subject: &Subject, limit: Duration) -> Result<Duration, BenchError> {
    let function = LocalFunction::start(
        &subject.name,
        &subject.program,
        &subject.env,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| BenchError::file(&subject.program, e))?;
    let first_poll = function.wait_first_poll(limit).await;
    function.stop().await;
    first_poll.ok_or_else(|| {
        BenchError::Measurement(format!(
            "{} did not poll the Runtime API within {limit:?} (it exited or failed its init; its stderr is above)",
            subject.name
        ))
    })
}

/// `runs` timed starts of every subject after one untimed start each (so every
/// binary is in the page cache, as on a warm Lambda host). Rounds are interleaved
/// (a, b, c, a, b, c, …) so load from other work on the machine hits all subjects
/// alike. A subject that fails once is not started again.
pub async fn measure(
    subjects: &[Subject],
    runs: usize,
    limit: Duration,
) -> Vec<Result<(Summary, Vec<Duration>), String>> {
    let mut samples: Vec<Result<Vec<Duration>, String>> = Vec::new();
    for subject in subjects {
        samples.push(
            once(subject, limit)
                .await
                .map(|_| Vec::new())
                .map_err(|e| e.to_string()),
        );
    }
    for _ in 0..runs {
        for (subject, taken) in subjects.iter().zip(samples.iter_mut()) {
            let Ok(list) = taken else { continue };
            match once(subject, limit).await {
                Ok(duration) => list.push(duration),
                Err(err) => *taken = Err(err.to_string()),
            }
        }
    }
    samples
        .into_iter()
        .map(|taken| {
            taken.and_then(|list| {
                summarize(&list)
                    .map(|summary| (summary, list))
                    .ok_or_else(|| "no runs".to_owned())
            })
        })
        .collect()
}

/// What a function logs once at the end of its init (before the runtime's first
/// poll): each phase of `main` in order, in microseconds, and their sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupLine {
    pub phases: Vec<(String, u64)>,
    pub total_us: u64,
}

/// The message of the startup line; its target is [`STARTUP_TARGET`].
pub const STARTUP_MESSAGE: &str = "initialized";
pub const STARTUP_TARGET: &str = "custody::kernel::startup";
/// Status of a function that logged no startup line (yet).
pub const NO_STARTUP_LINE: &str = "no startup line";

/// Reads one log line. `None` when it is not the startup line (another log line,
/// or not JSON: a panic, the runtime's own output); `Some(Err)` when it is the
/// startup line but its `phases` or `total_us` cannot be read. A line is the
/// startup line when its message is `initialized` and it has `phases` or comes
/// from [`STARTUP_TARGET`].
pub fn parse_startup_line(line: &str) -> Option<Result<StartupLine, String>> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let fields = value.get("fields")?.as_object()?;
    if fields.get("message").and_then(serde_json::Value::as_str) != Some(STARTUP_MESSAGE) {
        return None;
    }
    let from_startup =
        value.get("target").and_then(serde_json::Value::as_str) == Some(STARTUP_TARGET);
    let Some(phases) = fields.get("phases") else {
        return from_startup.then(|| Err("no `phases` field".to_owned()));
    };
    Some(read_startup_fields(phases, fields.get("total_us")))
}

fn read_startup_fields(
    phases: &serde_json::Value,
    total: Option<&serde_json::Value>,
) -> Result<StartupLine, String> {
    let text = phases
        .as_str()
        .ok_or_else(|| format!("`phases` is not text: {phases}"))?;
    // A field recorded with `?` (Debug) arrives quoted.
    let text = text.trim().trim_matches('"');
    let mut parsed = Vec::new();
    for pair in text.split_whitespace() {
        let (name, us) = pair
            .rsplit_once(':')
            .ok_or_else(|| format!("phase `{pair}` is not name:microseconds"))?;
        let us: u64 = us
            .parse()
            .map_err(|_| format!("phase `{pair}`: `{us}` is not a number of microseconds"))?;
        if name.is_empty() {
            return Err(format!("phase `{pair}` has no name"));
        }
        parsed.push((name.to_owned(), us));
    }
    if parsed.is_empty() {
        return Err("`phases` is empty".to_owned());
    }
    let total_us = match total {
        // Without a total, the phases' sum is the total (it is defined as that).
        None => parsed.iter().map(|(_, us)| us).sum(),
        Some(value) => value
            .as_u64()
            .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| format!("`total_us` is not a number of microseconds: {value}"))?,
    };
    Ok(StartupLine {
        phases: parsed,
        total_us,
    })
}

/// The startup line in a whole log (the first one), or why there is none:
/// [`NO_STARTUP_LINE`] or `malformed startup line: …`.
pub fn find_startup_line(log: &str) -> Result<StartupLine, String> {
    log.lines()
        .find_map(parse_startup_line)
        .unwrap_or_else(|| Err(NO_STARTUP_LINE.to_owned()))
        .map_err(|e| {
            if e == NO_STARTUP_LINE {
                e
            } else {
                format!("malformed startup line: {e}")
            }
        })
}

/// Medians of a function's startup lines over several starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseMedians {
    pub starts: usize,
    /// Each phase's median in µs, in the order the function logs them.
    pub phases: Vec<PhaseMedian>,
    /// Median of `total_us`: from the start of `main` to the end of init.
    pub total_us: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseMedian {
    pub name: String,
    pub median_us: f64,
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The median of each phase (over the starts that logged it, in first-seen order)
/// and of the total. `None` without lines.
pub fn phase_medians(lines: &[StartupLine]) -> Option<PhaseMedians> {
    let mut totals: Vec<f64> = lines.iter().map(|l| l.total_us as f64).collect();
    let total_us = median(&mut totals)?;
    let mut names: Vec<&str> = Vec::new();
    for line in lines {
        for (name, _) in &line.phases {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let phases = names
        .into_iter()
        .filter_map(|name| {
            let mut values: Vec<f64> = lines
                .iter()
                .flat_map(|l| l.phases.iter().filter(|(n, _)| n == name))
                .map(|(_, us)| *us as f64)
                .collect();
            median(&mut values).map(|median_us| PhaseMedian {
                name: name.to_owned(),
                median_us,
            })
        })
        .collect();
    Some(PhaseMedians {
        starts: lines.len(),
        phases,
        total_us,
    })
}

/// What [`phases`] found for one subject: the medians, or why there are none
/// ([`NO_STARTUP_LINE`], a malformed line, a failed start).
pub type PhaseResult = Result<PhaseMedians, String>;

/// `starts` more starts of every subject (interleaved, after the timed rounds),
/// each at log level INFO with its output appended to a log file of its own in
/// `log_dir`; each log's startup line is read once the process has polled and
/// been stopped. A subject whose start fails, or that logs no (or a malformed)
/// startup line, is not started again.
pub async fn phases(
    subjects: &[Subject],
    starts: usize,
    limit: Duration,
    log_dir: &Path,
) -> Vec<PhaseResult> {
    let mut found: Vec<Result<Vec<StartupLine>, String>> =
        subjects.iter().map(|_| Ok(Vec::new())).collect();
    for round in 0..starts {
        for (subject, taken) in subjects.iter().zip(found.iter_mut()) {
            let Ok(lines) = taken else { continue };
            let log = log_dir.join(format!("{}-{round}.log", subject.name));
            match logged_start(subject, limit, &log).await {
                Ok(line) => lines.push(line),
                Err(err) => *taken = Err(err),
            }
        }
    }
    found
        .into_iter()
        .map(|taken| {
            taken.and_then(|lines| phase_medians(&lines).ok_or_else(|| "no starts".to_owned()))
        })
        .collect()
}

/// The environment of a phase run: the subject's, at log level INFO (and no
/// `RUST_LOG`, which would take precedence).
fn info_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "AWS_LAMBDA_LOG_LEVEL" && k != "RUST_LOG")
        .cloned()
        .collect();
    env.push(("AWS_LAMBDA_LOG_LEVEL".into(), "INFO".into()));
    env
}

async fn logged_start(
    subject: &Subject,
    limit: Duration,
    log: &Path,
) -> Result<StartupLine, String> {
    // A fresh file: start_logged appends.
    let _ = std::fs::remove_file(log);
    let function = LocalFunction::start_logged(
        &subject.name,
        &subject.program,
        &info_env(&subject.env),
        Duration::from_secs(30),
        Some(log.to_path_buf()),
    )
    .await
    .map_err(|e| format!("failed: {}: {e}", subject.program.display()))?;
    let polled = function.wait_first_poll(limit).await;
    function.kill_and_flush_logs(Duration::from_secs(5)).await;
    function.stop().await;
    if polled.is_none() {
        return Err(format!(
            "failed: {} did not poll the Runtime API within {limit:?}",
            subject.name
        ));
    }
    let text =
        std::fs::read_to_string(log).map_err(|e| format!("failed: {}: {e}", log.display()))?;
    find_startup_line(&text)
}

/// Microseconds as milliseconds for the results file, rounded to microseconds.
pub fn us_to_ms(us: f64) -> f64 {
    round_us(us / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `custody::telemetry` writes it (tracing's JSON formatter).
    const SAMPLE: &str = r#"{"timestamp":"2026-11-26T10:12:03.418529Z","level":"INFO","fields":{"message":"initialized","phases":"telemetry:120 config:35 sdk_config:80 clients:900 secret:4000 http_client:1500","total_us":6635},"target":"custody::kernel::startup"}"#;
    const OTHER: &str = r#"{"timestamp":"2026-11-26T10:12:03.410000Z","level":"WARN","fields":{"message":"notification for another bucket ignored","event":"ObjectCreated:Put"},"target":"import::process"}"#;

    #[test]
    fn the_startup_line_gives_its_phases_in_order_and_the_total() {
        let line = parse_startup_line(SAMPLE).unwrap().unwrap();
        let names: Vec<&str> = line.phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "telemetry",
                "config",
                "sdk_config",
                "clients",
                "secret",
                "http_client"
            ]
        );
        assert_eq!(line.phases[4], ("secret".to_owned(), 4000));
        assert_eq!(line.total_us, 6635);
        // Other log lines and text that is not JSON are not the startup line.
        assert_eq!(parse_startup_line(OTHER), None);
        assert_eq!(
            parse_startup_line("thread 'main' panicked at src/main.rs"),
            None
        );
        assert_eq!(parse_startup_line(""), None);
    }

    #[test]
    fn the_startup_line_is_found_among_other_lines() {
        let log = format!("{OTHER}\nnot json\n{SAMPLE}\n{OTHER}\n");
        assert_eq!(find_startup_line(&log).unwrap().total_us, 6635);
        // Fewer phases, another function; no total: the sum is the total.
        let oauth = r#"{"timestamp":"t","level":"INFO","fields":{"message":"initialized","phases":"telemetry:90 config:20 clients:700"},"target":"custody::kernel::startup"}"#;
        assert_eq!(find_startup_line(oauth).unwrap().total_us, 810);
        // A Debug-recorded field arrives quoted.
        let quoted = SAMPLE
            .replace(r#""telemetry:120"#, r#""\"telemetry:120"#)
            .replace(r#"http_client:1500""#, r#"http_client:1500\"""#);
        assert_eq!(find_startup_line(&quoted).unwrap().phases.len(), 6);
    }

    #[test]
    fn a_log_without_the_line_says_so() {
        assert_eq!(
            find_startup_line(&format!("{OTHER}\n{OTHER}\n")),
            Err(NO_STARTUP_LINE.to_owned())
        );
        assert_eq!(find_startup_line(""), Err(NO_STARTUP_LINE.to_owned()));
    }

    #[test]
    fn a_malformed_line_is_reported_not_guessed() {
        for (bad, why) in [
            (SAMPLE.replace("config:35", "config"), "not name:microseconds"),
            (SAMPLE.replace("config:35", "config:3.5ms"), "not a number"),
            (SAMPLE.replace("\"total_us\":6635", "\"total_us\":\"soon\""), "total_us"),
            (SAMPLE.replace(r#""phases":"telemetry:120 config:35 sdk_config:80 clients:900 secret:4000 http_client:1500","#, r#""phases":"","#), "empty"),
            (SAMPLE.replace(r#""phases":"telemetry:120 config:35 sdk_config:80 clients:900 secret:4000 http_client:1500","#, ""), "no `phases`"),
        ] {
            let err = find_startup_line(&bad).unwrap_err();
            assert!(err.starts_with("malformed startup line: "), "{err}");
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[test]
    fn medians_per_phase_and_of_the_total() {
        let line = |phases: &[(&str, u64)]| StartupLine {
            phases: phases
                .iter()
                .map(|(n, us)| ((*n).to_owned(), *us))
                .collect(),
            total_us: phases.iter().map(|(_, us)| us).sum(),
        };
        let medians = phase_medians(&[
            line(&[("telemetry", 100), ("secret", 4000)]),
            line(&[("telemetry", 300), ("secret", 3000)]),
            line(&[("telemetry", 200), ("secret", 9000)]),
        ])
        .unwrap();
        assert_eq!(medians.starts, 3);
        assert_eq!(
            medians.phases,
            [
                PhaseMedian {
                    name: "telemetry".into(),
                    median_us: 200.0
                },
                PhaseMedian {
                    name: "secret".into(),
                    median_us: 4000.0
                },
            ]
        );
        assert_eq!(medians.total_us, 4100.0);
        assert_eq!(phase_medians(&[]), None);
    }

    /// The whole phase measurement on a real function (dev build) against the
    /// emulator: `infra/with-emulator.sh cargo test -p custody-bench --lib --
    /// --ignored startup_line_of_a_real_function`.
    #[tokio::test]
    #[ignore = "needs the AWS emulator and a dev build of the import function"]
    async fn startup_line_of_a_real_function() {
        use crate::build::{Profile, host_binaries};
        let root = crate::repo_root();
        let workspace = crate::discover::discover(&root).unwrap();
        let program = host_binaries(
            &workspace,
            &[("import".into(), "import".into())],
            Profile::Dev,
        )
        .unwrap()
        .remove(0);
        let stack = crate::first_invocation::LocalStack::provision(
            &root,
            &custody_local::harness::unique_stage(),
        )
        .await
        .unwrap();
        let subject = Subject {
            name: "import".into(),
            kind: Kind::Function,
            program,
            env: stack.environment("import"),
        };
        let logs = workspace.target_dir.join("bench/startup-test");
        let found = phases(&[subject], 2, Duration::from_secs(20), &logs).await;
        match &found[0] {
            Ok(medians) => {
                assert_eq!(medians.starts, 2);
                let names: Vec<&str> = medians.phases.iter().map(|p| p.name.as_str()).collect();
                assert!(names.contains(&"secret"), "{names:?}");
                assert!(medians.total_us > 0.0);
                eprintln!("{medians:?}");
            }
            // A function without the line yet is a row, not a failure.
            Err(reason) => assert_eq!(reason, NO_STARTUP_LINE),
        }
    }

    #[test]
    fn phase_runs_log_at_info() {
        let env = info_env(&[
            ("AWS_LAMBDA_LOG_LEVEL".into(), "WARN".into()),
            ("RUST_LOG".into(), "warn".into()),
            ("TABLE".into(), "t".into()),
        ]);
        assert_eq!(
            env,
            [
                ("TABLE".to_owned(), "t".to_owned()),
                ("AWS_LAMBDA_LOG_LEVEL".to_owned(), "INFO".to_owned()),
            ]
        );
    }
}

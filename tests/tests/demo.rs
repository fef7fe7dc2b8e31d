//! The demo journey, end to end, so CI keeps `make demo` working; and an interrupted
//! demo leaves no process and no port behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_journeys::{alive, binaries, build_binaries};
use custody_local::demo::{Environment, EnvironmentOptions, journey};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_journey_passes_end_to_end() {
    build_binaries();
    let stage = custody_local::harness::unique_stage();
    let log_dir = std::env::temp_dir().join(format!("custody-demo-logs-{stage}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    let env = Environment::start_with(
        &stage,
        EnvironmentOptions {
            log_dir: Some(log_dir.clone()),
            // What a function logs with AWS_LAMBDA_LOG_LEVEL=DEBUG (the SDK and hyper
            // capped at info, as `custody::telemetry` caps them): more than production's
            // INFO, so the test sees every line a function could write.
            log_filter: "debug,aws_smithy_runtime=info,aws_config=info,hyper=info".into(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut transcript = Vec::new();
    let result = journey(&env, &mut |line| transcript.push(line.to_owned())).await;
    let transcript = transcript.join("\n");
    if let Err(err) = result {
        panic!("{err}\n{transcript}");
    }
    let steps = custody_local::demo::STEPS.len();
    for step in 1..=steps {
        assert!(
            transcript.contains(&format!("[{step}/{steps}]")),
            "step {step} ran:\n{transcript}"
        );
    }
    assert!(transcript.contains("Verified OK") || transcript.contains("verifies offline"));

    // The logs of the journey: every line each function wrote, captured by the stack.
    let secrets = env.secrets().await.unwrap_or_else(|e| panic!("{e}"));
    let subjects = env.subject_identifiers();
    env.stack.stop_functions_and_flush_logs().await;
    let logs = read_logs(&log_dir, &env);
    assert!(
        secrets.len() >= 8,
        "too few secrets collected: {}",
        secrets.len()
    );
    assert!(
        subjects.len() >= 50,
        "too few subjects collected: {}",
        subjects.len()
    );
    let found = leaks(&logs, &secrets, &subjects);
    assert!(
        found.is_empty(),
        "the demo's logs leak:\n{}",
        found.join("\n")
    );
    let _ = std::fs::remove_dir_all(&log_dir);
}

/// One function's captured log: its file's lines and the request ids it was invoked with.
struct FunctionLog {
    function: String,
    lines: Vec<String>,
    invocations: Vec<String>,
}

/// The log file of every function of the template, proven to be a real capture:
/// every line is a JSON log object or an EMF metrics document (`custody::metrics`,
/// flushed after each invocation), and the lines name the invocations' request ids,
/// the events the journey must have caused and the metrics it must have counted.
fn read_logs(dir: &Path, env: &Environment) -> Vec<FunctionLog> {
    let mut logs = Vec::new();
    for function in custody_local::stack::function_binaries(&env.stack.template) {
        let path = dir.join(format!("{function}.log"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for (n, line) in lines.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: not a JSON log line ({e}): {line}",
                    path.display(),
                    n + 1
                )
            });
            assert!(
                value["level"].is_string() || value["_aws"]["CloudWatchMetrics"].is_array(),
                "{}:{}: {line}",
                path.display(),
                n + 1
            );
        }
        let invocations = env
            .stack
            .function(&function)
            .map(|f| f.invocation_ids())
            .unwrap_or_default();
        logs.push(FunctionLog {
            function,
            lines,
            invocations,
        });
    }
    let total: usize = logs.iter().map(|l| l.lines.len()).sum();
    assert!(
        total > 0,
        "no function logged anything: the capture is broken"
    );
    // The export's metrics, from the real binary's recorder.
    let export = logs
        .iter()
        .find(|l| l.function == "export")
        .expect("no log of export");
    assert!(
        export.lines.iter().any(|line| line.contains(&format!(
            "\"Namespace\":\"{}\"",
            custody::metrics::NAMESPACE
        )) && line.contains(&format!(
            "\"{}\":",
            custody::metrics::names::EXPORT_MESSAGES
        ))),
        "export's log has no EMF line with {}",
        custody::metrics::names::EXPORT_MESSAGES
    );
    // Known lines of the journey, each under the request id it was invoked with.
    for (function, message) in [
        ("oauth", "connection stored"),
        ("export", "export run completed"),
        ("oauth", "HighLevel UNINSTALL handled"),
    ] {
        let log = logs
            .iter()
            .find(|l| l.function == function)
            .unwrap_or_else(|| panic!("no log of {function}"));
        let line = log
            .lines
            .iter()
            .find(|line| line.contains(&format!("\"message\":\"{message}\"")))
            .unwrap_or_else(|| panic!("{function}'s log lacks \"{message}\""));
        assert!(
            log.invocations.iter().any(|id| line.contains(id.as_str())),
            "{function}'s \"{message}\" names none of its request ids {:?}: {line}",
            log.invocations
        );
    }
    logs
}

/// Every line that holds a secret or a subject identifier, in any case, or an email
/// or a name in its URL-encoded form.
fn leaks(logs: &[FunctionLog], secrets: &[String], subjects: &[String]) -> Vec<String> {
    let mut needles: Vec<(&str, String)> = Vec::new();
    for (kind, values) in [("secret", secrets), ("subject identifier", subjects)] {
        for value in values {
            assert!(
                value.len() >= 6,
                "a needle this short would match anything: {value}"
            );
            needles.push((kind, value.to_lowercase()));
            let encoded = value
                .replace('%', "%25")
                .replace('@', "%40")
                .replace('+', "%2B")
                .replace(' ', "%20");
            needles.push((kind, encoded.to_lowercase()));
            needles.push((kind, value.replace(' ', "+").to_lowercase()));
        }
    }
    let mut found = Vec::new();
    for log in logs {
        for (n, line) in log.lines.iter().enumerate() {
            let lower = line.to_lowercase();
            if let Some((kind, needle)) = needles.iter().find(|(_, n)| lower.contains(n.as_str())) {
                found.push(format!(
                    "{}.log:{}: a {kind} ({needle}): {line}",
                    log.function,
                    n + 1
                ));
            }
        }
    }
    found
}

#[test]
fn the_leak_check_finds_values_in_any_case_and_url_encoded() {
    let log = |line: &str| FunctionLog {
        function: "dsar".into(),
        lines: vec![line.to_owned()],
        invocations: Vec::new(),
    };
    let secrets = ["cs_AbCdEf123456".to_owned()];
    let subjects = ["jane.doe@example.com".to_owned(), "Jane Doe".to_owned()];
    for line in [
        r#"{"level":"INFO","fields":{"secret":"CS_ABCDEF123456"}}"#,
        r#"{"level":"INFO","fields":{"url":"/x?email=Jane.Doe%40Example.com"}}"#,
        r#"{"level":"INFO","fields":{"q":"name=jane+doe"}}"#,
        r#"{"level":"INFO","fields":{"q":"name=Jane%20Doe"}}"#,
    ] {
        assert_eq!(leaks(&[log(line)], &secrets, &subjects).len(), 1, "{line}");
    }
    let clean = r#"{"level":"INFO","fields":{"subject":"ps_3f9a","import_id":"01JH"}}"#;
    assert!(leaks(&[log(clean)], &secrets, &subjects).is_empty());
}

fn interrupt_demo_and_check(signal: i32) {
    let binary = binaries().join("custody-local");
    let mut demo = Command::new(binary)
        .arg("demo")
        .env_remove("CUSTODY_EMULATOR_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo starts");
    let stdout = demo.stdout.take().expect("stdout");
    let mut pids: Vec<u32> = Vec::new();
    let mut port = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("demo output");
        if let Some(list) = line.strip_prefix("processes: ") {
            pids = list
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
        }
        if let Some(p) = line.strip_prefix("ports: ") {
            port = p.trim().parse::<u16>().ok();
        }
        if line.starts_with(&format!("[2/{}]", custody_local::demo::STEPS.len())) {
            break;
        }
    }
    assert!(pids.len() >= 6, "the demo reported its processes: {pids:?}");
    let port = port.expect("the demo reported its port");
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(demo.id() as i32, signal);
    }
    let _ = demo.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "processes left behind after signal {signal}: {left:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers"
    );
}

#[test]
fn an_interrupted_demo_leaves_nothing_behind() {
    build_binaries();
    interrupt_demo_and_check(libc::SIGINT);
    // Even SIGKILL, which the demo cannot catch: children die with their parent.
    interrupt_demo_and_check(libc::SIGKILL);
}

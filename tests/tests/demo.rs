//! The demo journey, end to end, so CI keeps `make demo` working; and an interrupted
//! demo leaves no process and no port behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_journeys::{alive, binaries, build_binaries};
use custody_local::demo::{Environment, journey};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_journey_passes_end_to_end() {
    build_binaries();
    let env = Environment::start(&custody_local::harness::unique_stage())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut transcript = Vec::new();
    let result = journey(&env, &mut |line| transcript.push(line.to_owned())).await;
    let transcript = transcript.join("\n");
    if let Err(err) = result {
        panic!("{err}\n{transcript}");
    }
    for step in 1..=6 {
        assert!(
            transcript.contains(&format!("[{step}/6]")),
            "step {step} ran:\n{transcript}"
        );
    }
    assert!(transcript.contains("Verified OK") || transcript.contains("verifies offline"));
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
        if line.starts_with("[2/6]") {
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

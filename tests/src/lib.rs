//! Helpers for the journeys in `tests/tests/`: the binaries they run, and the stack
//! `make up` starts, as a process, driven over HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/debug` (or `$CARGO_TARGET_DIR/debug`), where `cargo build` puts binaries.
pub fn binaries() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| custody_local::repo_root().join("target"))
        .join("debug")
}

/// The function binaries and `custody-local`. `cargo test --workspace --all-targets`
/// builds them already; `cargo test -p custody-journeys` alone does not, so build
/// them here (a no-op when they are fresh).
pub fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(custody_local::repo_root())
        .args([
            "build",
            "-q",
            "--bins",
            "-p",
            "oauth",
            "-p",
            "export",
            "-p",
            "import",
            "-p",
            "expiry",
            "-p",
            "dsar",
            "-p",
            "custody-local",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the binaries failed");
}

/// A process is alive (a zombie, exited but not reaped, counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `custody-local up`, as `make up` runs it, with its state file read back.
pub struct UpStack {
    child: Child,
    dir: PathBuf,
    pub state: serde_json::Value,
}

impl UpStack {
    pub fn start() -> UpStack {
        build_binaries();
        let dir = std::env::temp_dir().join(format!(
            "custody-up-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ready = dir.join("ready");
        let state_file = dir.join("stack.json");
        let child = Command::new(binaries().join("custody-local"))
            .arg("up")
            .arg("--ready-file")
            .arg(&ready)
            .arg("--state-file")
            .arg(&state_file)
            .env_remove("CUSTODY_EMULATOR_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("custody-local up starts");
        let mut stack = UpStack {
            child,
            dir,
            state: serde_json::Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            if let Ok(Some(status)) = stack.child.try_wait() {
                panic!("custody-local up exited ({status}) before it was ready");
            }
            assert!(
                Instant::now() < deadline,
                "custody-local up not ready in 2 min"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(&state_file).expect("state file");
        stack.state = serde_json::from_str(&text).expect("state file is JSON");
        stack
    }

    pub fn get(&self, key: &str) -> String {
        self.state
            .pointer(key)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("state has no {key}"))
            .to_owned()
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("stack.json")
    }
}

impl Drop for UpStack {
    fn drop(&mut self) {
        // SIGTERM, as `make down` sends; its children die with it.
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Finding or starting the AWS emulator (moto server).
//!
//! `CUSTODY_EMULATOR_ENDPOINT` names a running one (`make test` starts one for the
//! whole run). Otherwise the first test that needs it starts `infra/emulator.py`
//! from the project's virtualenv with its stdin piped from this process: when the
//! test process exits, for any reason, the pipe closes and the emulator stops.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::repo_root;

pub const ENDPOINT_VAR: &str = "CUSTODY_EMULATOR_ENDPOINT";

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(
        "the AWS emulator is not installed: {0} is missing. Run `make venv` (or `bash infra/bootstrap.sh`) \
         to create the project's virtualenv with moto, or set {ENDPOINT_VAR} to a running moto server"
    )]
    NotInstalled(String),
    #[error("could not start the AWS emulator (infra/emulator.py): {0}")]
    Start(String),
}

struct Running {
    endpoint: String,
    // Held for the life of the process: dropping them would close the emulator's stdin.
    _child: Child,
    _stdin: ChildStdin,
}

static STARTED: OnceLock<Mutex<Option<Running>>> = OnceLock::new();

/// The endpoint of a running emulator, starting one if needed (once per process).
pub fn endpoint() -> Result<String, EmulatorError> {
    if let Ok(endpoint) = std::env::var(ENDPOINT_VAR)
        && !endpoint.trim().is_empty()
    {
        return Ok(endpoint.trim().to_owned());
    }
    let cell = STARTED.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(running) = guard.as_ref() {
        return Ok(running.endpoint.clone());
    }
    let running = start()?;
    let endpoint = running.endpoint.clone();
    *guard = Some(running);
    Ok(endpoint)
}

/// The process id of the emulator this process started, if it started one.
pub fn started_pid() -> Option<u32> {
    let guard = STARTED.get()?.lock().unwrap_or_else(|p| p.into_inner());
    guard.as_ref().map(|running| running._child.id())
}

fn start() -> Result<Running, EmulatorError> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        return Err(EmulatorError::NotInstalled(python.display().to_string()));
    }
    let script = root.join("infra/emulator.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg("--watch-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| EmulatorError::Start(e.to_string()))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| EmulatorError::Start("no stdin pipe".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| EmulatorError::Start("no stdout pipe".into()))?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| EmulatorError::Start(e.to_string()))?;
    let announced: serde_json::Value = serde_json::from_str(line.trim()).map_err(|_| {
        EmulatorError::Start(format!(
            "expected a JSON line with the endpoint, got {:?} (see its stderr above)",
            line.trim()
        ))
    })?;
    let endpoint = announced["endpoint"]
        .as_str()
        .ok_or_else(|| EmulatorError::Start("no endpoint in its announcement".into()))?
        .to_owned();
    Ok(Running {
        endpoint,
        _child: child,
        _stdin: stdin,
    })
}

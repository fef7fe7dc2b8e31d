//! `make bench`: measures the custody functions as they are deployed and writes
//! `docs/bench-results.json`; `docs/PERFORMANCE.md` explains the method.
//!
//! Functions are discovered (`functions/*` crates and template.yaml), never listed
//! here, so a function that lands is measured without a change to this crate.

pub mod build;
pub mod cold_start;
pub mod discover;
pub mod first_invocation;
pub mod goals;
pub mod machine;
pub mod python;
pub mod report;
pub mod request_count;
pub mod size;
pub mod stats;
pub mod workloads;

use std::path::PathBuf;

/// Everything that can stop a benchmark step. A failed step is recorded in the
/// results with this text; the other steps still run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("the local AWS emulator: {0}")]
    Emulator(String),
    #[error("{0}")]
    Measurement(String),
}

impl BenchError {
    pub fn file(path: &std::path::Path, err: impl std::fmt::Display) -> Self {
        BenchError::File {
            path: path.display().to_string(),
            detail: err.to_string(),
        }
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    custody_local::repo_root()
}

/// The project virtualenv's python (moto, boto3, cargo-lambda, ziglang).
pub fn venv_python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

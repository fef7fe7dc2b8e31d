//! The local stack: the AWS emulator, provisioning it from `template.yaml`, and the
//! test harness that gives each test its own isolated resources.
//!
//! Provisioning reads the very template that is deployed, so the local stack and
//! production cannot drift: a table, bucket, key or secret exists locally exactly
//! as the template declares it, and the functions' environment is the template's
//! `Globals` environment resolved against what was created.

pub mod console;
pub mod demo;
pub mod emulator;
pub mod event_sources;
pub mod gateway;
pub mod harness;
pub mod lambda_api;
pub mod local_jwt;
pub mod oidc;
pub mod provision;
pub mod redrive;
pub mod runtime_api;
pub mod schedule_expression;
pub mod scheduler;
pub mod stack;

use std::path::PathBuf;

/// The repository root (this crate lives in `<root>/infra`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `template.yaml` at the repository root.
pub fn template_path() -> PathBuf {
    repo_root().join("template.yaml")
}

/// The region the local stack uses.
pub const REGION: &str = "us-east-1";
/// The account id moto reports.
pub const ACCOUNT_ID: &str = "123456789012";

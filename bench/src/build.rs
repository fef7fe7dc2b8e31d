//! Host builds of the binaries whose start-up is timed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BenchError;
use crate::discover::Workspace;

/// The baseline: the bare `lambda_runtime` binary in custody-local.
pub const BASELINE_PACKAGE: &str = "custody-local";
pub const BASELINE_BINARY: &str = "hello-lambda";

/// A cargo profile and the folder under the target directory it builds into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// What deployment uses (LTO, one codegen unit, stripped): the timing numbers.
    Release,
    /// Only for the smoke test, which must stay cheap.
    Dev,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// Builds `binaries` (package, binary) for the host in one cargo invocation (so
/// features are unified once, as in deployment) and returns their paths in order.
pub fn host_binaries(
    workspace: &Workspace,
    binaries: &[(String, String)],
    profile: Profile,
) -> Result<Vec<PathBuf>, BenchError> {
    let mut command = Command::new("cargo");
    command.arg("build").current_dir(&workspace.root);
    if profile == Profile::Release {
        command.arg("--release");
    }
    for (package, _) in binaries {
        command.args(["-p", package]);
    }
    for (_, binary) in binaries {
        command.args(["--bin", binary]);
    }
    run(&mut command)?;
    Ok(binaries
        .iter()
        .map(|(_, binary)| workspace.target_dir.join(profile.dir()).join(binary))
        .collect())
}

/// Runs a command with its output shown (builds are long; progress matters), and
/// fails naming the command.
pub fn run(command: &mut Command) -> Result<(), BenchError> {
    let shown = describe(command);
    let status = command.status().map_err(|e| BenchError::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            command: shown,
            detail: status.to_string(),
        })
    }
}

/// The command line as a user would type it (for the results and errors).
pub fn describe(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::iter::once(program)
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

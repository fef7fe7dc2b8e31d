//! The Python baseline: `bench/python/bootstrap.py` run with the project venv's python.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BenchError;

/// Writes an executable copy of `bench/python/bootstrap.py` into `out_dir` whose
/// first line is the venv's python: the Runtime API starts a program without
/// arguments, and an absolute interpreter line keeps `env`/shell lookups out of the
/// timing.
pub fn launcher(root: &Path, python: &Path, out_dir: &Path) -> Result<PathBuf, BenchError> {
    let source_path = root.join("bench/python/bootstrap.py");
    let source =
        std::fs::read_to_string(&source_path).map_err(|e| BenchError::file(&source_path, e))?;
    let body = match source.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => rest,
        _ => source.as_str(),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| BenchError::file(out_dir, e))?;
    let launcher = out_dir.join("bootstrap");
    std::fs::write(&launcher, format!("#!{}\n{body}", python.display()))
        .map_err(|e| BenchError::file(&launcher, e))?;
    make_executable(&launcher)?;
    Ok(launcher)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<(), BenchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| BenchError::file(path, e))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<(), BenchError> {
    Ok(())
}

/// `python 3.11.7, boto3 1.43.108` (for the results' machine section).
pub fn versions(python: &Path) -> Result<String, BenchError> {
    let output = Command::new(python)
        .args([
            "-c",
            "import platform, boto3; print(f'python {platform.python_version()}, boto3 {boto3.__version__}')",
        ])
        .output()
        .map_err(|e| BenchError::file(python, e))?;
    if !output.status.success() {
        return Err(BenchError::file(
            python,
            String::from_utf8_lossy(&output.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

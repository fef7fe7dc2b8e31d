//! Size: the arm64 `bootstrap` exactly as deployment builds it
//! (`cargo lambda build --release --arm64`), its zip, and what weighs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::BenchError;
use crate::build::{describe, run};
use crate::discover::Workspace;

pub const ARM64: &str = "aarch64-unknown-linux-gnu";
/// The per-bootstrap goal of issue 8.
pub const GOAL_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    pub binary: String,
    pub bootstrap_bytes: u64,
    /// Deflate level 9, the one entry `bootstrap` (mode 755), as SAM uploads it.
    pub zip_bytes: u64,
    pub within_goal: bool,
}

/// A crate linked in more than one version, and who asks for each.
#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    pub name: String,
    pub versions: Vec<String>,
    /// `version: direct dependents` for each version.
    pub pulled_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CrateWeight {
    pub name: String,
    pub rlib_bytes: u64,
}

/// Builds `binaries` (package, binary) with the venv's cargo-lambda, which needs
/// zig: the `ziglang` wheel provides it as `python3 -m ziglang`, found through
/// the venv's `bin` on PATH. Returns the command and how long it took.
pub fn build_arm64(
    workspace: &Workspace,
    binaries: &[(String, String)],
) -> Result<(String, Duration), BenchError> {
    let venv_bin = workspace.root.join(".venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv_bin.clone()];
    paths.extend(std::env::split_paths(&path));
    let joined = std::env::join_paths(paths).map_err(|e| BenchError::Measurement(e.to_string()))?;
    let mut command = Command::new(venv_bin.join("cargo-lambda"));
    command
        .args(["lambda", "build", "--release", "--arm64"])
        .current_dir(&workspace.root)
        .env("PATH", joined);
    for (package, _) in binaries {
        command.args(["-p", package]);
    }
    for (_, binary) in binaries {
        command.args(["--bin", binary]);
    }
    let shown = describe(&command);
    let started = Instant::now();
    run(&mut command)?;
    Ok((shown, started.elapsed()))
}

/// The bootstrap cargo-lambda wrote for `binary`, and its zip.
pub fn measure(workspace: &Workspace, python: &Path, binary: &str) -> Result<SizeRow, BenchError> {
    let bootstrap = workspace
        .target_dir
        .join("lambda")
        .join(binary)
        .join("bootstrap");
    let bootstrap_bytes = std::fs::metadata(&bootstrap)
        .map_err(|e| BenchError::file(&bootstrap, e))?
        .len();
    let zip = workspace
        .target_dir
        .join("bench/zip")
        .join(format!("{binary}.zip"));
    let zip_bytes = zip_deflate9(python, &bootstrap, &zip)?;
    Ok(SizeRow {
        binary: binary.to_owned(),
        bootstrap_bytes,
        zip_bytes,
        within_goal: bootstrap_bytes <= GOAL_BYTES,
    })
}

/// Zips `bootstrap` with Python's zipfile (deflate 9) and returns the zip's size.
pub fn zip_deflate9(python: &Path, bootstrap: &Path, zip: &Path) -> Result<u64, BenchError> {
    const SCRIPT: &str = "import sys, zipfile\n\
info = zipfile.ZipInfo('bootstrap', date_time=(1980, 1, 1, 0, 0, 0))\n\
info.external_attr = 0o100755 << 16\n\
data = open(sys.argv[1], 'rb').read()\n\
with zipfile.ZipFile(sys.argv[2], 'w') as z: z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)\n";
    if let Some(parent) = zip.parent() {
        std::fs::create_dir_all(parent).map_err(|e| BenchError::file(parent, e))?;
    }
    let mut command = Command::new(python);
    command.arg("-c").arg(SCRIPT).arg(bootstrap).arg(zip);
    let output = command.output().map_err(|e| BenchError::file(python, e))?;
    if !output.status.success() {
        return Err(BenchError::Command {
            command: format!("zip {}", bootstrap.display()),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(std::fs::metadata(zip)
        .map_err(|e| BenchError::file(zip, e))?
        .len())
}

fn cargo_tree(root: &Path, packages: &[String], extra: &[&str]) -> Result<String, BenchError> {
    let mut command = Command::new("cargo");
    command
        // Proc macros run at build time and are never linked: not part of the size.
        .args(["tree", "-e", "normal,no-proc-macro", "--target", ARM64])
        .args(extra)
        .current_dir(root);
    for package in packages {
        command.args(["-p", package]);
    }
    let output = command.output().map_err(|e| BenchError::Command {
        command: describe(&command),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(BenchError::Command {
            command: describe(&command),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Crates in two or more versions among what the functions link on arm64, from
/// `cargo tree -d` (without dedupe, so every version lists its dependents).
pub fn duplicates(root: &Path, packages: &[String]) -> Result<Vec<Duplicate>, BenchError> {
    let tree = cargo_tree(
        root,
        packages,
        &["-d", "--no-dedupe", "--prefix", "depth", "--format", "{p}"],
    )?;
    Ok(parse_duplicates(&tree))
}

/// Parses `cargo tree -d --prefix depth --format {p}`: depth 0 is a duplicated
/// crate version, depth 1 its direct dependents.
pub fn parse_duplicates(tree: &str) -> Vec<Duplicate> {
    let mut by_name: BTreeMap<String, Vec<(String, BTreeSet<String>)>> = BTreeMap::new();
    let mut current: Option<(String, usize)> = None;
    for line in tree.lines() {
        let depth_len = line.chars().take_while(char::is_ascii_digit).count();
        let Ok(depth) = line[..depth_len].parse::<usize>() else {
            continue;
        };
        let mut words = line[depth_len..].split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        match depth {
            0 => {
                let versions = by_name.entry(name.to_owned()).or_default();
                versions.push((version.to_owned(), BTreeSet::new()));
                current = Some((name.to_owned(), versions.len() - 1));
            }
            1 => {
                if let Some((dup, index)) = &current
                    && let Some(entry) = by_name.get_mut(dup).and_then(|v| v.get_mut(*index))
                {
                    entry.1.insert(name.to_owned());
                }
            }
            _ => {}
        }
    }
    by_name
        .into_iter()
        .filter(|(_, versions)| versions.len() > 1)
        .map(|(name, versions)| Duplicate {
            name,
            versions: versions.iter().map(|(v, _)| v.clone()).collect(),
            pulled_by: versions
                .iter()
                .map(|(v, by)| {
                    format!("{v}: {}", by.iter().cloned().collect::<Vec<_>>().join(", "))
                })
                .collect(),
        })
        .collect()
}

/// The heaviest crates the functions link, by the size of their arm64 release
/// `.rlib` (object code plus LTO bitcode: a proxy for the code each brings, not
/// the bytes it keeps after LTO; cargo-bloat would need an unstripped second
/// build). Largest first.
pub fn heaviest_crates(
    workspace: &Workspace,
    packages: &[String],
    limit: usize,
) -> Result<Vec<CrateWeight>, BenchError> {
    let linked: BTreeSet<String> = cargo_tree(
        &workspace.root,
        packages,
        &["--prefix", "none", "--format", "{lib}"],
    )?
    .lines()
    .map(|line| line.trim_end_matches(" (*)").trim().to_owned())
    .filter(|name| !name.is_empty())
    .collect();
    let deps: PathBuf = workspace.target_dir.join(ARM64).join("release/deps");
    let mut weights: BTreeMap<String, u64> = BTreeMap::new();
    for entry in std::fs::read_dir(&deps).map_err(|e| BenchError::file(&deps, e))? {
        let Ok(entry) = entry else { continue };
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = file
            .strip_prefix("lib")
            .and_then(|f| f.strip_suffix(".rlib"))
        else {
            continue;
        };
        let name = stem
            .rsplit_once('-')
            .map_or(stem, |(name, _)| name)
            .to_owned();
        if !linked.contains(&name) {
            continue;
        }
        let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
        // One build per feature set can leave several rlibs of a crate: the latest
        // build is the largest set of features, so keep the largest.
        let weight = weights.entry(name).or_default();
        *weight = (*weight).max(bytes);
    }
    let mut sorted: Vec<CrateWeight> = weights
        .into_iter()
        .map(|(name, rlib_bytes)| CrateWeight { name, rlib_bytes })
        .collect();
    sorted.sort_by_key(|c| std::cmp::Reverse(c.rlib_bytes));
    sorted.truncate(limit);
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_name_each_version_and_its_dependents() {
        let tree = "0base64 v0.21.7\n1serde_dynamo v4.3.0\n2custody v0.1.0 (/w/shared)\n\n\
                    0base64 v0.22.1\n1aws_lambda_events v1.2.1\n2lambda_http v1.3.2\n1custody v0.1.0 (/w/shared)\n\n\
                    0only v1.0.0\n1x v1\n";
        let dups = parse_duplicates(tree);
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].name, "base64");
        assert_eq!(dups[0].versions, ["v0.21.7", "v0.22.1"]);
        assert_eq!(dups[0].pulled_by[1], "v0.22.1: aws_lambda_events, custody");
    }
}

//! Size: the arm64 `bootstrap` exactly as deployment builds it (`sam build`, whose
//! rust-cargolambda builder runs `cargo lambda build --release` for arm64), its zip,
//! and what weighs. Building through `sam build` here is also the check that the
//! README's deploy path (`make build`) keeps working.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::build::{describe, run};
use crate::discover::Workspace;

pub const ARM64: &str = "aarch64-unknown-linux-gnu";
/// The per-bootstrap goal of issue 8.
pub const GOAL_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeRow {
    pub binary: String,
    pub bootstrap_bytes: u64,
    /// Deflate level 9, the one entry `bootstrap` (mode 755), as SAM uploads it.
    pub zip_bytes: u64,
    pub within_goal: bool,
    /// Where the file's bytes go, by kind of ELF section ([`sections`]).
    pub sections: Sections,
}

/// A bootstrap's bytes by kind of section. A stripped, LTO'd binary has no symbols
/// to attribute bytes to crates; the sections still tell code from static tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sections {
    /// `.text`: machine code.
    pub code: u64,
    /// `.rodata`: constants and strings.
    pub rodata: u64,
    /// `.data.rel.ro`: static tables holding pointers (vtables, `&str` tables,
    /// tracing callsites), which a position-independent binary patches at load.
    pub relocated_tables: u64,
    /// `.rela.dyn` and `.rela.plt`: the patches themselves (24 bytes per pointer).
    pub relocations: u64,
    /// `.eh_frame`, `.eh_frame_hdr`, `.gcc_except_table`: unwinding tables
    /// (`panic = "unwind"`, see docs/ARCHITECTURE.md).
    pub unwind: u64,
    /// Everything else with bytes in the file (headers, `.data`, dynamic linking).
    pub other: u64,
}

/// Reads the section headers of a 64-bit little-endian ELF file (both Lambda
/// architectures) and sums the file bytes of each kind of section.
pub fn sections(elf: &[u8]) -> Option<Sections> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    // ELF magic, 64-bit class, little endian.
    if elf.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let table = usize::try_from(u64_at(0x28)?).ok()?;
    let entry = usize::from(u16_at(0x3A)?);
    let count = usize::from(u16_at(0x3C)?);
    let names_index = usize::from(u16_at(0x3E)?);
    let header = |index: usize| table.checked_add(index.checked_mul(entry)?);
    let names_offset = usize::try_from(u64_at(header(names_index)? + 24)?).ok()?;
    let mut out = Sections::default();
    let mut counted = 0u64;
    for index in 1..count {
        let at = header(index)?;
        const NOBITS: u32 = 8;
        if u32_at(at + 4)? == NOBITS {
            continue; // .bss and .tbss take memory, not file bytes
        }
        let size = u64_at(at + 32)?;
        let name_at = names_offset.checked_add(usize::try_from(u32_at(at)?).ok()?)?;
        let name_len = elf.get(name_at..)?.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&elf[name_at..name_at + name_len]).ok()?;
        let slot = match name {
            ".text" => &mut out.code,
            ".rodata" => &mut out.rodata,
            ".data.rel.ro" => &mut out.relocated_tables,
            ".rela.dyn" | ".rela.plt" => &mut out.relocations,
            ".eh_frame" | ".eh_frame_hdr" | ".gcc_except_table" => &mut out.unwind,
            _ => &mut out.other,
        };
        *slot += size;
        counted += size;
    }
    // Headers, the section table and padding between sections.
    out.other += (elf.len() as u64).saturating_sub(counted);
    Some(out)
}

/// A crate linked in more than one version, and who asks for each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Duplicate {
    pub name: String,
    pub versions: Vec<String>,
    /// `version: direct dependents` for each version.
    pub pulled_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrateWeight {
    pub name: String,
    pub rlib_bytes: u64,
}

/// Builds the template's functions with `sam build` (as `make build` does) and the
/// other `binaries` (package, binary: the bare-runtime baseline, which is not in the
/// template) with `cargo lambda build --release --arm64`. Both use the venv's
/// cargo-lambda, which needs zig: the `ziglang` wheel provides it as
/// `python3 -m ziglang`, found through the venv's `bin` first on PATH. Either way the
/// bootstrap lands in `target/lambda/<binary>/`. Returns the commands and how long
/// they took.
pub fn build_arm64(
    workspace: &Workspace,
    binaries: &[(String, String)],
    template_binaries: &[String],
) -> Result<(String, Duration), BenchError> {
    let venv_bin = workspace.root.join(".venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv_bin.clone()];
    paths.extend(std::env::split_paths(&path));
    let joined = std::env::join_paths(paths).map_err(|e| BenchError::Measurement(e.to_string()))?;
    let started = Instant::now();
    let mut shown = Vec::new();
    let others: Vec<&(String, String)> = binaries
        .iter()
        .filter(|(_, b)| !template_binaries.contains(b))
        .collect();
    if !others.is_empty() {
        let mut command = Command::new(venv_bin.join("cargo-lambda"));
        command
            .args(["lambda", "build", "--release", "--arm64"])
            .current_dir(&workspace.root)
            .env("PATH", &joined);
        for (package, _) in &others {
            command.args(["-p", package]);
        }
        for (_, binary) in &others {
            command.args(["--bin", binary]);
        }
        shown.push(describe(&command));
        run(&mut command)?;
    }
    if binaries.iter().any(|(_, b)| template_binaries.contains(b)) {
        let mut command = Command::new(venv_bin.join("sam"));
        command
            .args(["build"])
            .current_dir(&workspace.root)
            .env("PATH", &joined)
            .env("SAM_CLI_TELEMETRY", "0");
        shown.push(describe(&command));
        run(&mut command)?;
    }
    Ok((shown.join(" && "), started.elapsed()))
}

/// The bootstrap cargo-lambda wrote for `binary`, and its zip.
pub fn measure(workspace: &Workspace, python: &Path, binary: &str) -> Result<SizeRow, BenchError> {
    let bootstrap = workspace
        .target_dir
        .join("lambda")
        .join(binary)
        .join("bootstrap");
    let elf = std::fs::read(&bootstrap).map_err(|e| BenchError::file(&bootstrap, e))?;
    let bootstrap_bytes = elf.len() as u64;
    let sections = sections(&elf).ok_or_else(|| {
        BenchError::Measurement(format!("{}: not a 64-bit ELF file", bootstrap.display()))
    })?;
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
        sections,
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

    #[test]
    fn sections_account_for_every_byte_of_an_elf_file() {
        // This test binary is a 64-bit little-endian ELF file like a bootstrap.
        let elf = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let parts = sections(&elf).unwrap();
        let total = parts.code
            + parts.rodata
            + parts.relocated_tables
            + parts.relocations
            + parts.unwind
            + parts.other;
        assert_eq!(total, elf.len() as u64);
        assert!(
            parts.code > 0 && parts.rodata > 0 && parts.unwind > 0,
            "{parts:?}"
        );
    }

    #[test]
    fn sections_refuse_what_is_not_a_64_bit_elf_file() {
        assert_eq!(sections(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(sections(b"\x7fELF\x01\x01"), None);
        // A header that points its section table past the end of the file.
        let mut truncated = b"\x7fELF\x02\x01".to_vec();
        truncated.resize(64, 0);
        truncated[0x28] = 0xff;
        truncated[0x3C] = 2;
        assert_eq!(sections(&truncated), None);
    }
}

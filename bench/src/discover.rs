//! Which functions exist: the crates under `functions/` (from `cargo metadata`)
//! joined with the functions template.yaml declares.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::BenchError;

/// One function: its crate and binary, and whether it can be measured yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The cargo package (also the folder under `functions/`).
    pub package: String,
    /// The binary, which is also the `BuildProperties.Binary` in template.yaml.
    pub binary: String,
    pub in_template: bool,
    /// `None` when it can be measured; otherwise why not.
    pub pending: Option<String>,
}

/// The workspace as cargo sees it.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub functions: Vec<Function>,
}

/// Reads the workspace with `cargo metadata` and the template's function binaries.
pub fn discover(root: &Path) -> Result<Workspace, BenchError> {
    let output = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .map_err(|e| command_error("cargo metadata", e))?;
    if !output.status.success() {
        return Err(command_error(
            "cargo metadata",
            String::from_utf8_lossy(&output.stderr),
        ));
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).map_err(|e| command_error("cargo metadata", e))?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let in_template = template_binaries(&root.join("template.yaml"))?;
    let mut functions = functions_in(&metadata, &root.join("functions"), &in_template);
    for binary in &in_template {
        if !functions.iter().any(|f| &f.binary == binary) {
            functions.push(Function {
                package: binary.clone(),
                binary: binary.clone(),
                in_template: true,
                pending: Some(format!(
                    "pending: template.yaml declares {binary} but functions/ has no crate for it"
                )),
            });
        }
    }
    functions.sort_by(|a, b| a.binary.cmp(&b.binary));
    Ok(Workspace {
        root: root.to_owned(),
        target_dir,
        functions,
    })
}

fn functions_in(
    metadata: &Value,
    functions_dir: &Path,
    in_template: &BTreeSet<String>,
) -> Vec<Function> {
    let mut found = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
        if !manifest.starts_with(functions_dir) {
            continue;
        }
        let name = package["name"].as_str().unwrap_or_default().to_owned();
        let bin = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            });
        let Some(bin) = bin else {
            continue;
        };
        let binary = bin["name"].as_str().unwrap_or(&name).to_owned();
        let main = PathBuf::from(bin["src_path"].as_str().unwrap_or_default());
        let pending = match std::fs::read_to_string(&main) {
            Ok(source) if starts_a_runtime(&source) => None,
            Ok(_) => Some(format!(
                "pending: function not built yet ({} does not start a Lambda runtime)",
                relative(&main, functions_dir.parent().unwrap_or(functions_dir))
            )),
            Err(err) => Some(format!("pending: cannot read {}: {err}", main.display())),
        };
        found.push(Function {
            in_template: in_template.contains(&binary),
            package: name,
            binary,
            pending,
        });
    }
    found
}

/// A placeholder `main.rs` neither names `lambda_runtime` nor `lambda_http`; a real
/// one must, to run its handler.
pub fn starts_a_runtime(main_rs: &str) -> bool {
    main_rs.contains("lambda_runtime") || main_rs.contains("lambda_http")
}

/// The `Metadata.BuildProperties.Binary` of every `AWS::Serverless::Function`.
pub fn template_binaries(path: &Path) -> Result<BTreeSet<String>, BenchError> {
    let template =
        custody_local::provision::load_template(path).map_err(|e| BenchError::file(path, e))?;
    let mut binaries = BTreeSet::new();
    for (_, resource) in template
        .get("Resources")
        .and_then(serde_yaml::Value::as_mapping)
        .into_iter()
        .flatten()
    {
        if resource.get("Type").and_then(serde_yaml::Value::as_str)
            != Some("AWS::Serverless::Function")
        {
            continue;
        }
        if let Some(binary) = resource
            .get("Metadata")
            .and_then(|m| m.get("BuildProperties"))
            .and_then(|b| b.get("Binary"))
            .and_then(serde_yaml::Value::as_str)
        {
            binaries.insert(binary.to_owned());
        }
    }
    Ok(binaries)
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn command_error(command: &str, detail: impl std::fmt::Display) -> BenchError {
    BenchError::Command {
        command: command.to_owned(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_main_is_not_a_function_yet() {
        assert!(!starts_a_runtime("//! (being built)\nfn main() {}\n"));
        assert!(starts_a_runtime(
            "use lambda_http::{run, service_fn};\n#[tokio::main]\nasync fn main() {}"
        ));
    }

    #[test]
    fn the_workspace_functions_are_found() {
        let workspace = discover(&crate::repo_root()).unwrap();
        let binaries: Vec<&str> = workspace
            .functions
            .iter()
            .map(|f| f.binary.as_str())
            .collect();
        for expected in ["dsar", "dsar-api", "expiry", "export", "import", "oauth"] {
            assert!(
                binaries.contains(&expected),
                "{expected} missing from {binaries:?}"
            );
        }
    }
}

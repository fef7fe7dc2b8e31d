//! The local stack's command line.
//!
//! - `custody-local provision --endpoint URL [--stage NAME]`: provisions a running
//!   emulator from template.yaml and prints the `export` lines to use it.
//! - `custody-local demo`: starts everything (emulator, simulated HighLevel, WebDAV,
//!   destination, the real function binaries, the HTTP API) and runs the journey.
//! - `custody-local up [--ready-file PATH] [--state-file PATH] [--log-dir DIR]`:
//!   starts the same and keeps it running until Ctrl-C / SIGTERM, printing the base
//!   URL, a bearer token and example requests; the state file is the same as JSON
//!   (for scripts and tests); with `--log-dir`, each function's logs are also kept
//!   in `DIR/<function>.log`. It also serves the web console (`console/dist/` and
//!   its `config.json`, `Console  <url>` in the output, `console` in the state file)
//!   and the local OIDC provider the console logs in with (`oidc.issuer`).
//! - `custody-local invoke [--async] <function> <event-file>`: delivers an event (e.g.
//!   a file in `events/`) to a running stack's function and prints the response.
//!
//! Every process it starts dies with it, also on Ctrl-C, SIGTERM or SIGKILL.

use std::process::ExitCode;

use custody::aws::sdk_config_for_endpoint;
use custody_local::demo::{Environment, EnvironmentOptions, journey};
use custody_local::provision::provision;
use custody_local::{REGION, template_path};

fn usage() -> ExitCode {
    eprintln!(
        "usage: custody-local provision --endpoint URL [--stage NAME]\n       custody-local demo\n       custody-local up [--ready-file PATH] [--state-file PATH] [--log-dir DIR]\n       custody-local invoke [--async] [--stack STATE-FILE] <function> <event-file>"
    );
    ExitCode::from(2)
}

/// Resolves when the process is asked to stop.
async fn stop_requested() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn print_processes(env: &Environment) {
    // Machine-readable, for the test that checks nothing outlives an interrupted demo.
    let mut pids: Vec<String> = env
        .stack
        .functions
        .values()
        .filter_map(|f| f.pid())
        .map(|p| p.to_string())
        .collect();
    if let Some(pid) = custody_local::emulator::started_pid() {
        pids.push(pid.to_string());
    }
    println!("processes: {}", pids.join(" "));
    println!(
        "ports: {}",
        env.stack.base_url.rsplit(':').next().unwrap_or_default()
    );
}

async fn demo() -> ExitCode {
    println!(
        "custody demo: starting the local stack (AWS emulator, simulated HighLevel, WebDAV, destination, 5 functions)"
    );
    let work = async {
        let env = Environment::start("demo").await?;
        print_processes(&env);
        println!("HTTP API at {}\n", env.stack.base_url);
        journey(&env, &mut |line| println!("{line}")).await
    };
    tokio::select! {
        result = work => match result {
            Ok(()) => {
                println!("\ncustody demo: every step passed");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("\ncustody demo FAILED: {err}");
                ExitCode::FAILURE
            }
        },
        _ = stop_requested() => {
            eprintln!("\ncustody demo interrupted: stopping everything it started");
            ExitCode::from(130)
        }
    }
}

async fn up(
    ready_file: Option<String>,
    state_file: Option<String>,
    log_dir: Option<String>,
) -> ExitCode {
    let options = EnvironmentOptions {
        log_dir: log_dir.map(Into::into),
        ..EnvironmentOptions::default()
    };
    let env = match Environment::start_with("local", options).await {
        Ok(env) => env,
        Err(err) => {
            eprintln!("custody-local up: {err}");
            return ExitCode::FAILURE;
        }
    };
    print_processes(&env);
    let description = env.describe();
    println!("{description}");
    // The state file first: the ready file is what `make up` waits for.
    if let Some(path) = state_file {
        let state = serde_json::to_string_pretty(&env.state()).unwrap_or_default();
        if let Err(err) = write_private(&path, &state) {
            eprintln!("custody-local up: writing {path}: {err}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = ready_file
        && let Err(err) = write_private(&path, &description)
    {
        eprintln!("custody-local up: writing {path}: {err}");
        return ExitCode::FAILURE;
    }
    stop_requested().await;
    println!("custody-local: stopping");
    ExitCode::SUCCESS
}

/// Writes a file only its owner can read: it holds bearer tokens and passwords.
fn write_private(path: &str, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file: an older one keeps its mode unless told.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())
}

/// `custody-local invoke`: the running stack is found through `make up`'s state file.
async fn invoke_command(args: &[String]) -> ExitCode {
    let mut asynchronous = false;
    let mut state_file = custody_local::repo_root().join(".local/stack.json");
    let mut positional = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--async" => asynchronous = true,
            "--stack" => match rest.next() {
                Some(path) => state_file = path.into(),
                None => return usage(),
            },
            _ => positional.push(arg.clone()),
        }
    }
    let [function, event_file] = positional.as_slice() else {
        return usage();
    };
    let state: serde_json::Value = match std::fs::read_to_string(&state_file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(state) => state,
        Err(err) => {
            eprintln!(
                "custody-local invoke: no running stack ({}: {err}); start one with `make up`",
                state_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let Some(lambda_url) = state["lambda_url"].as_str() else {
        eprintln!(
            "custody-local invoke: {} has no lambda_url",
            state_file.display()
        );
        return ExitCode::FAILURE;
    };
    let event: serde_json::Value = match std::fs::read_to_string(event_file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}")))
    {
        Ok(event) => event,
        Err(err) => {
            eprintln!("custody-local invoke: {event_file}: {err}");
            return ExitCode::from(2);
        }
    };
    match custody_local::lambda_api::invoke_remote(lambda_url, function, &event, asynchronous).await
    {
        Ok((None, body)) => {
            println!(
                "{}",
                if asynchronous {
                    "queued (202)"
                } else {
                    body.as_str()
                }
            );
            ExitCode::SUCCESS
        }
        Ok((Some(kind), body)) => {
            eprintln!("function error ({kind}): {body}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("custody-local invoke: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn provision_command(args: &[String]) -> ExitCode {
    let mut endpoint = None;
    let mut stage = "local".to_owned();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match (flag.as_str(), rest.next()) {
            ("--endpoint", Some(value)) => endpoint = Some(value.clone()),
            ("--stage" | "--prefix", Some(value)) => stage = value.clone(),
            _ => return usage(),
        }
    }
    let Some(endpoint) = endpoint else {
        return usage();
    };
    let sdk = sdk_config_for_endpoint(&endpoint, REGION);
    match provision(&sdk, &template_path(), &stage).await {
        Ok(provisioned) => {
            println!("export AWS_ENDPOINT_URL={endpoint}");
            println!("export AWS_REGION={REGION}");
            println!("export AWS_ACCESS_KEY_ID=testing");
            println!("export AWS_SECRET_ACCESS_KEY=testing");
            for (name, value) in &provisioned.environment {
                println!("export {name}={value}");
            }
            for adjusted in &provisioned.adjusted {
                eprintln!("adjusted locally: {adjusted}");
            }
            for skipped in &provisioned.skipped {
                eprintln!("not emulated: {skipped}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("custody-local: {err}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("provision") => provision_command(&args[1..]).await,
        Some("demo") => demo().await,
        Some("up") => {
            let mut ready = None;
            let mut state = None;
            let mut logs = None;
            let mut rest = args[1..].iter();
            while let Some(flag) = rest.next() {
                match (flag.as_str(), rest.next()) {
                    ("--ready-file", Some(path)) => ready = Some(path.clone()),
                    ("--state-file", Some(path)) => state = Some(path.clone()),
                    ("--log-dir", Some(path)) => logs = Some(path.clone()),
                    _ => return usage(),
                }
            }
            up(ready, state, logs).await
        }
        Some("invoke") => invoke_command(&args[1..]).await,
        _ => usage(),
    }
}

//! The local stack's command line.
//!
//! - `custody-local provision --endpoint URL [--stage NAME]`: provisions a running
//!   emulator from template.yaml and prints the `export` lines to use it.
//! - `custody-local demo`: starts everything (emulator, simulated HighLevel, WebDAV,
//!   destination, the real function binaries, the HTTP API) and runs the journey.
//! - `custody-local up`: starts the same and keeps it running until Ctrl-C / SIGTERM,
//!   printing the base URL, a bearer token and example requests.
//!
//! Every process it starts dies with it, also on Ctrl-C, SIGTERM or SIGKILL.

use std::process::ExitCode;

use custody::aws::sdk_config_for_endpoint;
use custody_local::demo::{Environment, journey};
use custody_local::provision::provision;
use custody_local::{REGION, template_path};

fn usage() -> ExitCode {
    eprintln!(
        "usage: custody-local provision --endpoint URL [--stage NAME]\n       custody-local demo\n       custody-local up [--ready-file PATH]"
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

async fn up(ready_file: Option<String>) -> ExitCode {
    let env = match Environment::start("local").await {
        Ok(env) => env,
        Err(err) => {
            eprintln!("custody-local up: {err}");
            return ExitCode::FAILURE;
        }
    };
    print_processes(&env);
    let description = env.describe();
    println!("{description}");
    if let Some(path) = ready_file {
        let _ = std::fs::write(path, &description);
    }
    stop_requested().await;
    println!("custody-local: stopping");
    ExitCode::SUCCESS
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
        Some("up") => match args.get(1..) {
            Some([flag, path]) if flag == "--ready-file" => up(Some(path.clone())).await,
            Some([]) => up(None).await,
            _ => usage(),
        },
        _ => usage(),
    }
}

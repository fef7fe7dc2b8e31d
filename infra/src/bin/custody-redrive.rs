//! `custody-redrive`: replays the events in a failure queue into their function once
//! the cause is fixed (README § Redrive failed events; logic in
//! `custody_local::redrive`).
//!
//! ```text
//! custody-redrive --queue URL|NAME [--function NAME] [--dry-run] [--limit N]
//! custody-redrive --local [--state-file PATH] --queue LOGICAL-ID [...]
//! ```
//!
//! Against AWS it uses the usual credential chain and region (`AWS_PROFILE`,
//! `AWS_REGION`, …). `--local` uses the running local stack (`make up`'s state file):
//! the emulator's SQS and streams, and the stack's Lambda Invoke API.

use std::process::ExitCode;
use std::time::Duration;

use custody_local::redrive::{self, Clients, DEFAULT_LIMIT, Options};
use indicatif::{ProgressBar, ProgressStyle};

const USAGE: &str = "usage: custody-redrive [--local [--state-file PATH]] --queue URL|NAME [--function NAME] [--dry-run] [--limit N]";

struct Args {
    local: bool,
    state_file: Option<String>,
    queue: String,
    function: Option<String>,
    dry_run: bool,
    limit: usize,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        local: false,
        state_file: None,
        queue: String::new(),
        function: None,
        dry_run: false,
        limit: DEFAULT_LIMIT,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--local" => out.local = true,
            "--state-file" => out.state_file = Some(value()?),
            "--queue" => out.queue = value()?,
            "--function" => out.function = Some(value()?),
            "--dry-run" => out.dry_run = true,
            "--limit" => {
                out.limit = value()?
                    .parse()
                    .map_err(|_| "--limit needs a number".to_owned())?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if out.queue.is_empty() {
        return Err("--queue is required".into());
    }
    Ok(out)
}

/// Clients and the queue URL: the local stack's, or the account's.
async fn connect(args: &Args) -> Result<(Clients, String), String> {
    if args.local {
        let path = args.state_file.clone().unwrap_or_else(|| {
            custody_local::repo_root()
                .join(".local/stack.json")
                .display()
                .to_string()
        });
        let state: serde_json::Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or(format!("cannot read {path} (is the stack up? `make up`)"))?;
        let field = |name: &str| {
            state[name]
                .as_str()
                .map(str::to_owned)
                .ok_or(format!("{path} has no {name}"))
        };
        let emulator =
            custody::aws::sdk_config_for_endpoint(&field("emulator")?, custody_local::REGION);
        let lambda =
            custody::aws::sdk_config_for_endpoint(&field("lambda_url")?, custody_local::REGION);
        let clients = Clients {
            sqs: aws_sdk_sqs::Client::new(&emulator),
            streams: aws_sdk_dynamodbstreams::Client::new(&emulator),
            lambda: aws_sdk_lambda::Client::new(&lambda),
        };
        let url = match state["failure_queues"][&args.queue].as_str() {
            Some(url) => url.to_owned(),
            None => queue_url(&clients, &args.queue).await?,
        };
        return Ok((clients, url));
    }
    let sdk = custody::aws::sdk_config().await;
    let clients = Clients::new(&sdk);
    let url = queue_url(&clients, &args.queue).await?;
    Ok((clients, url))
}

async fn queue_url(clients: &Clients, queue: &str) -> Result<String, String> {
    if queue.starts_with("https://") || queue.starts_with("http://") {
        return Ok(queue.to_owned());
    }
    clients
        .sqs
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .map_err(|e| format!("queue {queue}: {}", custody::aws::error_text(&e)))?
        .queue_url
        .ok_or(format!("queue {queue} has no URL"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("custody-redrive: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (clients, queue_url) = match connect(&args).await {
        Ok(found) => found,
        Err(err) => {
            eprintln!("custody-redrive: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        queue_url,
        function: args.function.clone(),
        dry_run: args.dry_run,
        limit: args.limit,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let report = redrive::run(&clients, &options, &mut |done, total, summary| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(summary.to_owned());
    })
    .await;
    bar.finish_and_clear();
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            eprintln!("custody-redrive: {err}");
            return ExitCode::FAILURE;
        }
    };
    for (id, summary) in &report.planned {
        println!(
            "{} {id} {summary}",
            if args.dry_run {
                "would replay"
            } else {
                "replay"
            }
        );
    }
    for (id, why) in &report.skipped {
        println!("left {id}: {why}");
    }
    for (id, why) in &report.failed {
        println!("failed {id}: {why}");
    }
    println!("{}", report.line(args.dry_run));
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

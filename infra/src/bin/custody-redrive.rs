//! `custody-redrive`: replays the events in a failure queue into their function once
//! the cause is fixed (README § Redrive failed events; logic in
//! `custody_local::redrive`).
//!
//! ```text
//! custody-redrive --queue URL|NAME [--function NAME] [--dry-run] [--limit N]
//! custody-redrive --stack STACK --queue LOGICAL-ID [--function LOGICAL-ID] [...]
//! custody-redrive --local [--state-file PATH] --queue LOGICAL-ID [...]
//! ```
//!
//! Against AWS it uses the usual credential chain and region (`AWS_PROFILE`,
//! `AWS_REGION`, …). `--stack` resolves logical ids through the stack's resources
//! (DescribeStackResources). `--local` uses the running local stack (`make up`'s state file):
//! the emulator's SQS and streams, and the stack's Lambda Invoke API.

use std::process::ExitCode;
use std::time::Duration;

use custody_local::redrive::{self, Clients, DEFAULT_LIMIT, Options};
use indicatif::{ProgressBar, ProgressStyle};

const USAGE: &str = "usage: custody-redrive [--local [--state-file PATH] | --stack STACK] --queue URL|NAME [--function NAME] [--dry-run] [--limit N]";

struct Args {
    local: bool,
    state_file: Option<String>,
    stack: Option<String>,
    queue: String,
    function: Option<String>,
    dry_run: bool,
    limit: usize,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        local: false,
        state_file: None,
        stack: None,
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
            "--stack" => out.stack = Some(value()?),
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
    if out.local && out.stack.is_some() {
        return Err("--local and --stack exclude each other".into());
    }
    if out.queue.is_empty() {
        return Err("--queue is required".into());
    }
    Ok(out)
}

/// The stack's resources (DescribeStackResources lists them all, no paging).
async fn stack_resources(
    sdk: &aws_config::SdkConfig,
    stack: &str,
) -> Result<Vec<redrive::StackResource>, String> {
    let out = aws_sdk_cloudformation::Client::new(sdk)
        .describe_stack_resources()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| format!("stack {stack}: {}", custody::aws::error_text(&e)))?;
    Ok(out
        .stack_resources()
        .iter()
        .map(|r| redrive::StackResource {
            logical_id: r.logical_resource_id().unwrap_or_default().to_owned(),
            resource_type: r.resource_type().unwrap_or_default().to_owned(),
            physical_id: r.physical_resource_id().unwrap_or_default().to_owned(),
        })
        .collect())
}

/// Clients, the queue URL and the function override: the local stack's, or the
/// account's.
async fn connect(args: &Args) -> Result<(Clients, String, Option<String>), String> {
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
        return Ok((clients, url, args.function.clone()));
    }
    let sdk = custody::aws::sdk_config().await;
    let clients = Clients::new(&sdk);
    let (queue, function) = match &args.stack {
        Some(stack) => {
            let resources = stack_resources(&sdk, stack).await?;
            (
                redrive::resolve_in_stack(&resources, &args.queue, "AWS::SQS::Queue"),
                args.function
                    .as_deref()
                    .map(|f| redrive::resolve_in_stack(&resources, f, "AWS::Lambda::Function")),
            )
        }
        None => (args.queue.clone(), args.function.clone()),
    };
    let url = queue_url(&clients, &queue).await?;
    Ok((clients, url, function))
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
    let (clients, queue_url, function) = match connect(&args).await {
        Ok(found) => found,
        Err(err) => {
            eprintln!("custody-redrive: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        queue_url,
        function,
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

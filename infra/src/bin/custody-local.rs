//! `custody-local provision --endpoint URL [--stage NAME]`: provisions a running
//! emulator from template.yaml and prints the `export` lines to use it.

use std::process::ExitCode;

use custody::aws::sdk_config_for_endpoint;
use custody_local::provision::provision;
use custody_local::{REGION, template_path};

fn usage() -> ExitCode {
    eprintln!("usage: custody-local provision --endpoint URL [--stage NAME]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("provision") {
        return usage();
    }
    let mut endpoint = None;
    let mut stage = "local".to_owned();
    let mut rest = args[1..].iter();
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

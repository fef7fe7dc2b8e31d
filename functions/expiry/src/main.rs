//! Wiring only: telemetry, configuration (read once, naming any missing variable),
//! clients built once on the first invocation, then `lib.rs` handles S3 lifecycle
//! notifications and DynamoDB stream records.

use expiry::Deps;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut startup = custody::startup::Startup::begin();
    custody::telemetry::init();
    startup.mark("telemetry");
    let metrics = custody::metrics::init("expiry")?;
    let config = custody::config::Config::from_env()?;
    startup.mark("config");
    let sdk = custody::aws::lambda_sdk_config()?;
    startup.mark("sdk_config");
    startup.finish();
    // The clients are built on the first invocation (custody::startup::OnFirstUse).
    let deps = custody::startup::OnFirstUse::new();
    let build = || async {
        let clients = custody::aws::Clients::new(&sdk);
        Ok::<_, Error>(Deps::new(&config, &clients, custody::clock::system()))
    };
    let (deps, build) = (&deps, &build);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        metrics.flushed(async move {
            let deps = deps.get(build).await?;
            expiry::handle(deps, event).await.map(|_| ())
        })
    }))
    .await
}

//! Wiring only: telemetry, configuration (read once, naming any missing variable),
//! clients built once, then `lib.rs` handles S3 lifecycle notifications and DynamoDB
//! stream records.

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
    let clients = custody::aws::Clients::new(&sdk);
    let deps = std::sync::Arc::new(Deps::new(&config, &clients, custody::clock::system()));
    startup.mark("clients");
    startup.finish();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let deps = deps.clone();
        metrics.flushed(async move { expiry::handle(&deps, event).await.map(|_| ()) })
    }))
    .await
}

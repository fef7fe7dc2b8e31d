//! Wiring only: telemetry, configuration (read once, naming any missing variable),
//! clients built once, then `lib.rs` handles S3 lifecycle notifications and DynamoDB
//! stream records.

use expiry::Deps;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    custody::telemetry::init();
    let metrics = custody::metrics::init("expiry")?;
    let config = custody::config::Config::from_env()?;
    let sdk = custody::aws::sdk_config().await;
    let clients = custody::aws::Clients::new(&sdk);
    let deps = std::sync::Arc::new(Deps::new(&config, &clients, custody::clock::system()));
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let deps = deps.clone();
        metrics.flushed(async move { expiry::handle(&deps, event).await.map(|_| ()) })
    }))
    .await
}

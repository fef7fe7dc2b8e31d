//! Wiring only: telemetry, configuration (read once, naming any missing variable),
//! clients and the pseudonym application secret loaded once, then `lib.rs` handles
//! both the HTTP API requests and the S3 notifications.

use import::{Deps, Settings};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut startup = custody::startup::Startup::begin();
    custody::telemetry::init();
    startup.mark("telemetry");
    let metrics = custody::metrics::init("import")?;
    let config = custody::config::Config::from_env()?;
    let settings = Settings::from_env();
    startup.mark("config");
    let sdk = custody::aws::lambda_sdk_config()?;
    startup.mark("sdk_config");
    let clients = custody::aws::Clients::new(&sdk);
    startup.mark("clients");
    // Read on first use, not before the first poll (custody::subject::AppSecret).
    let app_secret =
        custody::subject::AppSecret::lazy(clients.secrets.clone(), &config.pseudonym_secret_id);
    let http = custody::http::client(custody::egress::EgressPolicy::from_env())?;
    startup.mark("http_client");
    let deps = std::sync::Arc::new(Deps::new(
        config,
        settings,
        &clients,
        http,
        app_secret,
        custody::clock::system(),
    ));
    startup.finish();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let deps = deps.clone();
        // Boxed: the handler's future is deep enough to exceed the layout query limit.
        metrics.flushed(async move { Box::pin(import::handle(&deps, event)).await })
    }))
    .await
}

//! Wiring only: telemetry, configuration (read once, naming any missing variable),
//! clients built once on the first invocation and the pseudonym application secret
//! read on first use, then `lib.rs` handles both the HTTP API requests and the S3
//! notifications.

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
    let egress = custody::egress::EgressPolicy::from_env();
    startup.finish();
    // The clients are built on the first invocation (custody::startup::OnFirstUse), and
    // the pseudonym secret read on first use (custody::subject::AppSecret).
    let deps = custody::startup::OnFirstUse::new();
    let build = || async {
        let clients = custody::aws::Clients::new(&sdk);
        let app_secret =
            custody::subject::AppSecret::lazy(clients.secrets.clone(), &config.pseudonym_secret_id);
        Ok::<_, Error>(Deps::new(
            config.clone(),
            settings,
            &clients,
            custody::http::client(egress)?,
            app_secret,
            custody::clock::system(),
        ))
    };
    let (deps, build) = (&deps, &build);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        // Boxed: the handler's future is deep enough to exceed the layout query limit.
        metrics.flushed(async move {
            let deps = deps.get(build).await?;
            Box::pin(import::handle(deps, event)).await
        })
    }))
    .await
}

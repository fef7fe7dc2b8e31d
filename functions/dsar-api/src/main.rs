//! Wiring only: the dsar crate's HTTP routes (`dsar::handle_http`). The table stream
//! and the daily check run in the `dsar` function.

use dsar::{Deps, DsarConfig};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let mut startup = custody::startup::Startup::begin();
    custody::telemetry::init();
    startup.mark("telemetry");
    let metrics = custody::metrics::init("dsar-api")?;
    let config = custody::config::Config::from_env()?;
    let dsar = DsarConfig::from_env()?;
    startup.mark("config");
    let sdk = custody::aws::lambda_sdk_config()?;
    startup.mark("sdk_config");
    let egress = custody::egress::EgressPolicy::from_env();
    startup.finish();
    // The clients are built on the first invocation (custody::startup::OnFirstUse), and
    // the pseudonym secret read on first use (custody::subject::AppSecret).
    let deps = custody::startup::OnFirstUse::new();
    let build = || async {
        // Starting an account deletion has the oauth function revoke grants.
        let revoker = dsar::revoke::OauthFunction {
            client: aws_sdk_lambda::Client::new(&sdk),
            function: dsar.oauth_function.clone(),
        };
        Ok::<_, lambda_runtime::Error>(
            Deps::for_lambda(&sdk, config.clone(), dsar.clone(), egress)?
                .with_revoker(std::sync::Arc::new(revoker)),
        )
    };
    let (deps, build) = (&deps, &build);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        metrics.flushed(async move { handle(deps.get(build).await?, event).await })
    }))
    .await
}

async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let request = lambda_http::request::from_str(&event.payload.to_string())?;
    // Boxed: the routes' future is deep enough to exceed the layout query limit.
    let response = Box::pin(dsar::handle_http(deps, request)).await;
    Ok(serde_json::to_value(custody::api::gateway_response(
        response,
    ))?)
}

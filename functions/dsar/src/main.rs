//! Wiring only: config, clients, then one of three handlers by the event's shape (the
//! HTTP API, the table stream and the daily deadline-check schedule invoke the same
//! function).

use std::time::Duration;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use dsar::deadlines::DeadlineCheck;
use dsar::{Budget, Deps, DsarConfig};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

/// Time kept back from the deadline for the step in flight to finish and record itself.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    custody::telemetry::init();
    let metrics = custody::metrics::init("dsar")?;
    let config = custody::config::Config::from_env()?;
    let dsar = DsarConfig::from_env()?;
    let sdk = custody::aws::sdk_config().await;
    let clients = custody::aws::Clients::new(&sdk);
    let app_secret =
        custody::subject::load_app_secret(&clients.secrets, &config.pseudonym_secret_id).await?;
    let http = custody::http::client(custody::egress::EgressPolicy::from_env())?;
    let revoker = dsar::revoke::OauthFunction {
        client: aws_sdk_lambda::Client::new(&sdk),
        function: dsar.oauth_function.clone(),
    };
    let deps = Deps::new(
        config,
        dsar,
        &clients,
        app_secret,
        http,
        custody::clock::system(),
    )
    .with_revoker(std::sync::Arc::new(revoker));
    let deps = match deps.dsar.notice_email_sender.clone() {
        Some(from) => deps.with_mailer(std::sync::Arc::new(dsar::mail::SesMailer {
            client: aws_sdk_sesv2::Client::new(&sdk),
            from,
        })),
        None => deps,
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        metrics.flushed(handle(deps, event))
    }))
    .await
}

async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    if DeadlineCheck::matches(&payload) {
        let report = dsar::deadlines::check(deps).await?;
        Ok(serde_json::to_value(report)?)
    } else if payload.get("Records").is_some() {
        let redriven = custody::redrive::is_redriven(&payload);
        let stream: StreamEvent = serde_json::from_value(payload)?;
        let budget = Budget::from_deadline_ms(context.deadline, deps.now(), DEADLINE_MARGIN);
        let response = dsar::handle_stream_records(deps, stream, budget, redriven).await;
        Ok(serde_json::to_value(response)?)
    } else {
        let request = lambda_http::request::from_str(&payload.to_string())?;
        let response = dsar::handle_http(deps, request).await;
        Ok(serde_json::to_value(custody::api::gateway_response(
            response,
        ))?)
    }
}

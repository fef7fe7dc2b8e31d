//! Wiring only: config at init, clients on the first invocation, then one of two handlers by the event's shape (the
//! table stream and the daily deadline-check schedule). The HTTP routes run in the
//! `dsar-api` function.

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
    let mut startup = custody::startup::Startup::begin();
    custody::telemetry::init();
    startup.mark("telemetry");
    let metrics = custody::metrics::init("dsar")?;
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
        Ok::<_, lambda_runtime::Error>(Deps::for_lambda(
            &sdk,
            config.clone(),
            dsar.clone(),
            egress,
        )?)
    };
    let (deps, build) = (&deps, &build);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        metrics.flushed(async move { handle(deps.get(build).await?, event).await })
    }))
    .await
}

async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    if DeadlineCheck::matches(&payload) {
        let report = dsar::deadlines::check(deps).await?;
        Ok(serde_json::to_value(report)?)
    } else {
        let redriven = custody::redrive::is_redriven(&payload);
        let stream: StreamEvent = serde_json::from_value(payload)?;
        let budget = Budget::from_deadline_ms(context.deadline, deps.now(), DEADLINE_MARGIN);
        let response = dsar::handle_stream_records(deps, stream, budget, redriven).await;
        Ok(serde_json::to_value(response)?)
    }
}

//! Wiring only: configuration at init; clients and the token source built on the
//! first invocation (`custody::startup::OnFirstUse`); every event goes to
//! `export::handle_event`. The pseudonym application
//! secret is not read here: `Deps` reads it on first use (`custody::subject::AppSecret`),
//! so a cold start makes no Secrets Manager call for the many invocations that never
//! need it.

use std::sync::Arc;

use custody::aws::Clients;
use custody::config::Config;
use custody::oauth::{OauthConfig, OauthDeps};
use export::tokens::OauthTokens;
use export::worker::DEADLINE_MARGIN;
use export::{Budget, Deps, ExportConfig, handle_event};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let mut startup = custody::startup::Startup::begin();
    custody::telemetry::init();
    startup.mark("telemetry");
    let metrics = custody::metrics::init("export")?;
    let config = Config::from_env()?;
    let export_config = ExportConfig::from_env()?;
    let oauth_config = OauthConfig::from_env()?;
    startup.mark("config");
    let sdk = custody::aws::lambda_sdk_config()?;
    startup.mark("sdk_config");
    let egress = custody::egress::EgressPolicy::from_env();
    startup.finish();

    // The clients are built on the first invocation (custody::startup::OnFirstUse).
    let deps = custody::startup::OnFirstUse::new();
    let build = || async {
        let clients = Clients::new(&sdk);
        let http = custody::http::client(egress)?;
        let clock = custody::clock::system();
        let store =
            custody::store::Store::new(clients.dynamodb.clone(), &config.table, clock.clone());
        let oauth = OauthDeps::new(
            oauth_config.clone(),
            store,
            custody::seal::Sealer::new(clients.kms.clone(), &config.data_key_id),
            custody::audit::AuditLog::from_config(&clients, &config, clock.clone()),
            clients.secrets.clone(),
            http.clone(),
        );
        let tokens = Arc::new(OauthTokens { deps: oauth });
        Ok::<_, lambda_runtime::Error>(
            Deps::new(
                &config,
                &clients,
                export_config.clone(),
                http,
                tokens,
                clock,
            )
            .with_sdk_config(sdk.clone()),
        )
    };
    let (deps, build) = (&deps, &build);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        metrics.flushed(async move {
            let deps = deps.get(build).await?;
            let budget = Budget::from_deadline_ms(event.context.deadline, DEADLINE_MARGIN);
            // Boxed: the worker future is deep enough to exceed the layout query limit.
            Box::pin(handle_event(deps, event.payload, &budget))
                .await
                .map_err(lambda_runtime::Error::from)
        })
    }))
    .await
}

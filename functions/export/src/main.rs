//! Wiring only: configuration, clients and the token source, built once per cold
//! start; every event goes to `export::handle_event`. The pseudonym application
//! secret is not read here: `Deps` reads it on first use (`export::suppress::AppSecret`),
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
    let clients = Clients::new(&sdk);
    startup.mark("clients");
    let http = custody::http::client(custody::egress::EgressPolicy::from_env())?;
    startup.mark("http_client");
    let clock = custody::clock::system();

    let store = custody::store::Store::new(clients.dynamodb.clone(), &config.table, clock.clone());
    let oauth = OauthDeps::new(
        oauth_config,
        store,
        custody::seal::Sealer::new(clients.kms.clone(), &config.data_key_id),
        custody::audit::AuditLog::from_config(&clients, &config, clock.clone()),
        clients.secrets.clone(),
        http.clone(),
    );
    let tokens = Arc::new(OauthTokens { deps: oauth });
    let deps = Deps::new(&config, &clients, export_config, http, tokens, clock)
        .with_sdk_config(sdk.clone());
    startup.finish();

    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let deps = &deps;
        metrics.flushed(async move {
            let budget = Budget::from_deadline_ms(event.context.deadline, DEADLINE_MARGIN);
            // Boxed: the worker future is deep enough to exceed the layout query limit.
            Box::pin(handle_event(deps, event.payload, &budget))
                .await
                .map_err(lambda_runtime::Error::from)
        })
    }))
    .await
}

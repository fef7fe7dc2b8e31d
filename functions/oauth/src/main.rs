//! Wiring only: telemetry, configuration (read once, naming any missing variable),
//! clients built once on the first invocation, then the HTTP handler in `lib.rs`.

use custody::oauth::provider::vars;
use custody::oauth::webhook::WebhookKeys;
use custody::oauth::{OauthConfig, OauthDeps};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut startup = custody::startup::Startup::begin();
    custody::telemetry::init();
    startup.mark("telemetry");
    let metrics = custody::metrics::init("oauth")?;
    let config = custody::config::Config::from_env()?;
    let oauth_config = OauthConfig::from_env()?;
    if oauth_config.redirect_base.is_none() {
        return Err(format!("environment variable {} is not set", vars::REDIRECT_BASE).into());
    }
    if oauth_config.return_urls.is_empty() {
        return Err(format!("environment variable {} is not set", vars::RETURN_URLS).into());
    }
    let webhook_keys = WebhookKeys::from_env()?;
    startup.mark("config");

    let sdk = custody::aws::lambda_sdk_config()?;
    startup.mark("sdk_config");
    let egress = custody::egress::EgressPolicy::from_env();
    startup.finish();
    // The clients are built on the first invocation (custody::startup::OnFirstUse).
    let deps = custody::startup::OnFirstUse::new();
    let build = || async {
        let clients = custody::aws::Clients::new(&sdk);
        let clock = custody::clock::system();
        Ok::<_, Error>(oauth::Deps {
            oauth: OauthDeps::new(
                oauth_config.clone(),
                custody::store::Store::new(clients.dynamodb.clone(), &config.table, clock.clone()),
                custody::seal::Sealer::new(clients.kms.clone(), &config.data_key_id),
                custody::audit::AuditLog::from_config(&clients, &config, clock),
                clients.secrets.clone(),
                custody::http::client(egress)?,
            ),
            schedules: custody::schedule::ExportSchedules::new(
                clients.scheduler.clone(),
                &config.schedule_group,
            ),
            webhook_keys: webhook_keys.clone(),
        })
    };
    let (deps, build) = (&deps, &build);
    // HTTP API requests, and revocation requests from the dsar function.
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        metrics.flushed(async move {
            let deps = deps.get(build).await?;
            // Boxed: the handler's future is deep enough to exceed the layout query limit.
            Box::pin(oauth::handle_event(deps, event.payload))
                .await
                .map_err(Error::from)
        })
    }))
    .await
}

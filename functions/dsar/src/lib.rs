//! The `dsar` function: data-subject access and erasure requests, consent records,
//! verification of subjects, certificates of deletion and account deletion.
//!
//! Three triggers, each a function of (deps, event):
//! - [`handle_http`]: the `/privacy/*`, `DELETE /account` and `/account/export(s)`
//!   routes (API Gateway v2 with the JWT authorizer; `GET /privacy/public-key` is
//!   public);
//! - [`handle_stream`]: the table's stream, filtered in the template to privacy
//!   requests whose status became `pending` / `in_processing`, account deletions
//!   that are `purging`, account exports being built ([`account_export`]), and new
//!   notices other functions wrote for us to deliver ([`notices::deliver_relayed`]).
//!   Every processing step records its completion on the item, and every such write
//!   is itself a stream record, so a run that stops (deadline, crash) is continued by
//!   the next record; duplicates find the step done;
//! - [`deadlines::check`]: the daily schedule (`{"check": "deadlines"}`), gauges of
//!   overdue requests and stuck purges for the alarms.

pub mod account;
pub mod account_export;
pub mod deadlines;
pub mod files;
pub mod mail;
pub mod notices;
pub mod process;
pub mod revoke;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use custody::audit::AuditLog;
use custody::certificate::CertificateSigner;
use custody::clock::SharedClock;
use custody::config::Config;
use custody::idempotency::Idempotency;
use custody::imports::Imports;
use custody::schedule::ExportSchedules;
use custody::seal::Sealer;
use custody::store::Store;
use custody::subject::{AppSecret, PseudonymKey, SubjectError};
use custody::tenant::TenantId;
use custody::webhook::Sender;
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};

pub use process::{Budget, Progress};

/// The function's own settings, read once at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsarConfig {
    /// How long a presigned link to an access bundle is valid.
    pub link_ttl: Duration,
    /// Where verification webhooks may point (`custody::egress::ALLOW_LOOPBACK_VAR`,
    /// the one switch every function reads).
    pub egress: custody::egress::EgressPolicy,
    /// The oauth function (name or ARN), which revokes deleted connections' grants.
    pub oauth_function: String,
    /// How long after the account-deletion fence the purge sweeps again
    /// (`custody::privacy::PURGE_GRACE` unless `CUSTODY_DSAR_PURGE_GRACE_SECONDS` says
    /// otherwise; the template never does, a template test holds it).
    pub purge_grace: chrono::Duration,
    /// The verified SES identity notices are e-mailed from (`NoticeEmailSender`);
    /// `None`: notices go to webhooks only.
    pub notice_email_sender: Option<String>,
}

pub mod vars {
    pub const LINK_TTL_SECONDS: &str = "CUSTODY_DSAR_LINK_TTL_SECONDS";
    pub const OAUTH_FUNCTION: &str = "CUSTODY_OAUTH_FUNCTION";
    /// Local stacks only: a shorter wait before the purge's final sweep.
    pub const PURGE_GRACE_SECONDS: &str = "CUSTODY_DSAR_PURGE_GRACE_SECONDS";
    /// Set (from the template's `NoticeEmailSender`) only where notices may be
    /// e-mailed.
    pub const NOTICE_EMAIL_SENDER: &str = "CUSTODY_NOTICE_EMAIL_SENDER";
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsarConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {0} must be {1}")]
    Invalid(&'static str, &'static str),
}

impl DsarConfig {
    /// Longest link lifetime accepted: a bundle link should be short-lived.
    pub const MAX_LINK_TTL_SECONDS: u64 = 3600;

    pub fn from_env() -> Result<Self, DsarConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, DsarConfigError> {
        let ttl = lookup(vars::LINK_TTL_SECONDS)
            .ok_or(DsarConfigError::Missing(vars::LINK_TTL_SECONDS))?;
        let ttl: u64 = ttl
            .trim()
            .parse()
            .ok()
            .filter(|s| (1..=Self::MAX_LINK_TTL_SECONDS).contains(s))
            .ok_or(DsarConfigError::Invalid(
                vars::LINK_TTL_SECONDS,
                "a number of seconds from 1 to 3600",
            ))?;
        Ok(Self {
            link_ttl: Duration::from_secs(ttl),
            egress: custody::egress::EgressPolicy::from_lookup(&lookup),
            oauth_function: lookup(vars::OAUTH_FUNCTION)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(DsarConfigError::Missing(vars::OAUTH_FUNCTION))?,
            purge_grace: match lookup(vars::PURGE_GRACE_SECONDS) {
                None => custody::privacy::PURGE_GRACE,
                Some(text) => text
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s <= 3600)
                    .map(|s| chrono::Duration::seconds(i64::from(s)))
                    .ok_or(DsarConfigError::Invalid(
                        vars::PURGE_GRACE_SECONDS,
                        "a number of seconds from 0 to 3600",
                    ))?,
            },
            notice_email_sender: lookup(vars::NOTICE_EMAIL_SENDER)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
        })
    }
}

/// Everything the handlers need, built once per cold start.
#[derive(Clone)]
pub struct Deps {
    pub config: Config,
    pub dsar: DsarConfig,
    pub store: Store,
    pub audit: AuditLog,
    pub idempotency: Idempotency,
    pub imports: Imports,
    pub s3: aws_sdk_s3::Client,
    pub sealer: Sealer,
    pub signer: CertificateSigner,
    pub schedules: ExportSchedules,
    pub webhooks: Sender,
    /// The application secret tenant pseudonym keys derive from (read on first use).
    pub app_secret: AppSecret,
    pub clock: SharedClock,
    /// Revokes the grants of connections an account deletion removed (the oauth
    /// function in production; `None` is logged and counted as failed revocations).
    pub revoker: Option<Arc<dyn revoke::Revoker>>,
    /// E-mails notices (SES), where the deployment has a sender.
    pub mailer: Option<Arc<dyn custody::notice::Mailer>>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("config", &self.config)
            .field("dsar", &self.dsar)
            .finish_non_exhaustive()
    }
}

impl Deps {
    /// Builds the dependencies from SDK clients and the loaded app secret.
    pub fn new(
        config: Config,
        dsar: DsarConfig,
        clients: &custody::aws::Clients,
        app_secret: impl Into<AppSecret>,
        http: reqwest::Client,
        clock: SharedClock,
    ) -> Self {
        let store = Store::new(clients.dynamodb.clone(), &config.table, clock.clone());
        Self {
            audit: AuditLog::from_config(clients, &config, clock.clone()),
            idempotency: Idempotency::new(store.clone()),
            imports: Imports::new(store.clone(), clients.s3.clone(), &config.imports_bucket),
            s3: clients.s3.clone(),
            sealer: Sealer::new(clients.kms.clone(), &config.data_key_id),
            signer: CertificateSigner::new(clients.kms.clone(), &config.signing_key_id),
            schedules: ExportSchedules::new(clients.scheduler.clone(), &config.schedule_group),
            webhooks: Sender::new(http, custody::webhook::RetryPolicy::default()),
            app_secret: app_secret.into(),
            store,
            config,
            dsar,
            clock,
            revoker: None,
            mailer: None,
        }
    }

    /// What both dsar functions build on their first invocation: the clients, the
    /// pseudonym secret (read on its own first use), the HTTP client under `egress`,
    /// and the SES mailer where the deployment has a sender (`NoticeEmailSender`).
    pub fn for_lambda(
        sdk: &aws_config::SdkConfig,
        config: Config,
        dsar: DsarConfig,
        egress: custody::egress::EgressPolicy,
    ) -> Result<Self, custody::http::HttpClientError> {
        let clients = custody::aws::Clients::new(sdk);
        let app_secret = AppSecret::lazy(clients.secrets.clone(), &config.pseudonym_secret_id);
        let deps = Deps::new(
            config,
            dsar,
            &clients,
            app_secret,
            custody::http::client(egress)?,
            custody::clock::system(),
        );
        Ok(match deps.dsar.notice_email_sender.clone() {
            Some(from) => deps.with_mailer(Arc::new(mail::SesMailer {
                client: aws_sdk_sesv2::Client::new(sdk),
                from,
            })),
            None => deps,
        })
    }

    /// Sends notices by e-mail too.
    pub fn with_mailer(mut self, mailer: Arc<dyn custody::notice::Mailer>) -> Self {
        self.mailer = Some(mailer);
        self
    }

    /// Sets who revokes deleted connections' grants.
    pub fn with_revoker(mut self, revoker: Arc<dyn revoke::Revoker>) -> Self {
        self.revoker = Some(revoker);
        self
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The tenant's pseudonym key; the first call in a container reads the secret.
    pub async fn pseudonym_key(&self, tenant: &TenantId) -> Result<PseudonymKey, SubjectError> {
        self.app_secret.pseudonym_key(tenant).await
    }
}

/// The HTTP entry point: dispatches on the route key; every error is problem+json.
pub async fn handle_http(deps: &Deps, req: Request) -> Response<Body> {
    match routes::dispatch(deps, &req).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

/// `{"batchItemFailures": [{"itemIdentifier": <sequence number>}]}`: the records the
/// event source must deliver again (the template enables `ReportBatchItemFailures`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamResponse {
    pub batch_item_failures: Vec<ItemFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    pub item_identifier: String,
}

/// The fields of a stream image the handler dispatches on.
#[derive(Debug, Deserialize)]
struct StreamImage {
    pk: String,
    sk: String,
    kind: String,
}

/// The stream entry point. Each record is handled on its own; a failed one is
/// reported for redelivery (and, with bisecting, alone), the others are not.
pub async fn handle_stream(deps: &Deps, event: StreamEvent, budget: Budget) -> StreamResponse {
    handle_stream_records(deps, event, budget, false).await
}

/// [`handle_stream`] for records an operator replayed (`custody::redrive`): a
/// privacy request that ended in `error` resumes.
pub async fn handle_stream_records(
    deps: &Deps,
    event: StreamEvent,
    budget: Budget,
    redriven: bool,
) -> StreamResponse {
    let mut response = StreamResponse::default();
    for record in event.records {
        let image: Result<StreamImage, _> =
            serde_dynamo::from_item(record.change.new_image.clone());
        let Ok(image) = image else {
            tracing::warn!(event_id = %record.event_id, "stream record without a readable new image; skipped");
            continue;
        };
        let Some(tenant) = tenant_of(&image.pk) else {
            tracing::warn!(event_id = %record.event_id, "stream record outside a tenant partition; skipped");
            continue;
        };
        let result = match image.kind.as_str() {
            "privacy_request" => match image.sk.strip_prefix("DSAR#") {
                Some(id) if redriven => process::resume_request(deps, &tenant, id, budget)
                    .await
                    .map(|_| ()),
                Some(id) => process::process_request(deps, &tenant, id, budget)
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            "account_deletion" => account::purge(deps, &tenant, budget).await.map(|_| ()),
            "account_export" => match image.sk.strip_prefix(account_export::SK_PREFIX) {
                Some(id) => account_export::run(deps, &tenant, id, budget)
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            "notice" => match image.sk.strip_prefix(custody::notice::KEY_PREFIX) {
                Some(event_id) => notices::deliver_relayed(deps, &tenant, event_id)
                    .await
                    .map_err(process::ProcessError::from),
                None => Ok(()),
            },
            _ => Ok(()),
        };
        if let Err(err) = result {
            tracing::error!(event_id = %record.event_id, error = %err, "stream record failed; it will be retried");
            response.batch_item_failures.push(ItemFailure {
                item_identifier: record
                    .change
                    .sequence_number
                    .clone()
                    .unwrap_or_else(|| record.event_id.clone()),
            });
        }
    }
    response
}

/// The tenant of a `T#<tenant>` partition key.
fn tenant_of(pk: &str) -> Option<TenantId> {
    let rest = pk.strip_prefix("T#")?;
    let id = rest.split('#').next()?;
    TenantId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_a_missing_or_invalid_variable() {
        let missing = DsarConfig::from_lookup(|_| None).unwrap_err();
        assert_eq!(missing, DsarConfigError::Missing(vars::LINK_TTL_SECONDS));
        assert!(missing.to_string().contains(vars::LINK_TTL_SECONDS));
        for bad in ["0", "3601", "soon"] {
            let err = DsarConfig::from_lookup(|name| {
                (name == vars::LINK_TTL_SECONDS).then(|| bad.to_owned())
            })
            .unwrap_err();
            assert!(
                matches!(err, DsarConfigError::Invalid(vars::LINK_TTL_SECONDS, _)),
                "{bad}"
            );
        }
        let ok = DsarConfig::from_lookup(|name| match name {
            vars::LINK_TTL_SECONDS => Some("900".into()),
            vars::OAUTH_FUNCTION => Some("custody-oauth".into()),
            vars::PURGE_GRACE_SECONDS => None,
            _ => Some("true".into()),
        })
        .unwrap();
        assert_eq!(ok.link_ttl, Duration::from_secs(900));
        assert!(ok.egress.allow_loopback);
        assert_eq!(ok.oauth_function, "custody-oauth");
        // The full grace unless a local stack says otherwise.
        assert_eq!(ok.purge_grace, custody::privacy::PURGE_GRACE);
        let base = |name: &str| match name {
            vars::LINK_TTL_SECONDS => Some("900".to_owned()),
            vars::OAUTH_FUNCTION => Some("custody-oauth".to_owned()),
            _ => None,
        };
        let short = DsarConfig::from_lookup(|name| {
            (name == vars::PURGE_GRACE_SECONDS)
                .then(|| "2".to_owned())
                .or_else(|| base(name))
        })
        .unwrap();
        assert_eq!(short.purge_grace, chrono::Duration::seconds(2));
        let bad = DsarConfig::from_lookup(|name| {
            (name == vars::PURGE_GRACE_SECONDS)
                .then(|| "soon".to_owned())
                .or_else(|| base(name))
        });
        assert!(matches!(
            bad,
            Err(DsarConfigError::Invalid(vars::PURGE_GRACE_SECONDS, _))
        ));
        let missing = DsarConfig::from_lookup(|name| {
            (name == vars::LINK_TTL_SECONDS).then(|| "900".to_owned())
        });
        assert_eq!(
            missing.unwrap_err(),
            DsarConfigError::Missing(vars::OAUTH_FUNCTION)
        );
        assert_eq!(
            tenant_of("T#acme#S#ps_x").map(|t| t.to_string()),
            Some("acme".to_owned())
        );
        assert!(tenant_of("LOC#x").is_none());
    }
}

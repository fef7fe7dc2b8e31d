//! OAuth connections to CRMs (HighLevel, Google, any OAuth2 provider by configuration).
//!
//! For the other functions the whole module is one call:
//!
//! ```text
//! pub async fn access_token(deps: &OauthDeps, tenant: &TenantId, provider: &str)
//!     -> Result<AccessToken, OauthError>
//! ```
//!
//! It returns a live access token (refreshed when it expires within 15 minutes) and the
//! provider account ids (`AccessToken::account.location_id` for HighLevel). Errors a
//! caller must act on: [`OauthError::NotConnected`] (no connection: never connected,
//! disconnected or uninstalled) and [`OauthError::NeedsReconsent`] (the provider
//! refused the refresh token; a human has to connect again). Build the deps once per
//! cold start with [`OauthDeps::new`] from [`OauthConfig::from_env`].
//!
//! Tokens are sealed with KMS (`seal`) under the context (tenant, purpose,
//! `CONN#<provider>`), so a blob copied into another tenant's connection cannot be
//! opened. Refresh is single-flight per connection: a lease taken by a conditional
//! write; the others wait and re-read; the rotated refresh token is stored in the
//! same write as the new access token.

pub mod flow;
pub mod install;
pub mod provider;
pub mod webhook;

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use http::StatusCode;
use rand::Rng as _;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::domain::notice::reconsent_notice;
use crate::kernel::audit::{AuditError, AuditLog, Event};
use crate::kernel::http::{HttpAnswer, HttpError, LogLevel, ProblemKind};
use crate::kernel::seal::{Purpose, SealContext, SealError, Sealed, Sealer};
use crate::kernel::store::{Condition, Entity, Key, Store, StoreError, keys};
use crate::kernel::tenant::TenantId;

pub use provider::{
    ClientSecrets, OauthConfig, Provider, ProviderConfig, ProviderConfigError, ProviderKind,
    Providers,
};

/// Refresh when the access token expires within this window.
pub const REFRESH_WINDOW: chrono::Duration = chrono::Duration::minutes(15);
/// The longest a refresh may spend before it calls the provider: opening the refresh
/// token (KMS) and reading the client secret. Past it, the refresh gives up having
/// used nothing.
pub const REFRESH_PREPARE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a refresh waits for the provider's token endpoint.
pub const REFRESH_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest storing the issued tokens may take (sealing and the conditional write,
/// with their retries: [`KEEP_ATTEMPTS`]).
pub const REFRESH_KEEP_BUDGET: Duration = Duration::from_secs(25);
/// Attempts at sealing and storing tokens the provider issued: after the call, the
/// old refresh token may be spent, so giving up early would lose the connection.
const KEEP_ATTEMPTS: u32 = 6;
/// How long a refresh lease is held before another caller may take it over: longer
/// than the longest refresh (the three phases above, plus a margin), so no second
/// caller refreshes with a refresh token the first one's call is spending. A crashed
/// holder blocks refreshes for at most this long.
pub const LEASE: chrono::Duration = chrono::Duration::seconds(
    (REFRESH_PREPARE_TIMEOUT.as_secs()
        + REFRESH_CALL_TIMEOUT.as_secs()
        + REFRESH_KEEP_BUDGET.as_secs()
        + 5) as i64,
);
/// The longest access token lifetime believed; a longer `expires_in` (or an absurd one
/// like 1e13 s) is clamped: refreshing early is harmless.
const MAX_TOKEN_LIFETIME: chrono::Duration = chrono::Duration::days(366);
/// How long a caller waits for another's refresh before giving up.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Ids of the account a connection is for, as the provider reported them. Not secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderAccount {
    /// HighLevel sub-account (`locationId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// HighLevel agency (`companyId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    /// HighLevel `userType`: `Location` or `Company`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    /// OpenID Connect `sub` (Google) or the provider's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A usable access token. `Debug` redacts the token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub account: ProviderAccount,
    pub scopes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OauthError {
    #[error("not connected to {0}")]
    NotConnected(String),
    #[error("the connection to {0} was refused by the provider and must be authorized again")]
    NeedsReconsent(String),
    #[error("unknown provider")]
    UnknownProvider,
    /// The provider answered `invalid_grant` (used, revoked or expired code or token).
    #[error("{0} refused the grant (invalid_grant)")]
    InvalidGrant(String),
    #[error("{provider}: {reason}")]
    Provider { provider: String, reason: String },
    #[error("another refresh of the {0} connection did not finish in time")]
    RefreshBusy(String),
    #[error("OAuth configuration: {0}")]
    Config(String),
    /// 409: the tenant's account deletion has started (`custody::privacy::ensure_open`).
    #[error("the account is being deleted; nothing new is accepted for it")]
    AccountClosing,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Schedule(#[from] crate::domain::schedule::ScheduleError),
}

impl HttpError for OauthError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            OauthError::UnknownProvider => HttpAnswer::new(
                StatusCode::NOT_FOUND,
                ProblemKind::new("unknown-provider", "Unknown provider"),
                "no OAuth provider of this name is configured",
            )
            .with_field("provider"),
            OauthError::NotConnected(_) => HttpAnswer::new(
                StatusCode::NOT_FOUND,
                ProblemKind::new("not-connected", "Not connected"),
                self.to_string(),
            ),
            OauthError::NeedsReconsent(_) => HttpAnswer::new(
                StatusCode::CONFLICT,
                ProblemKind::new("needs-reconsent", "Connection needs re-authorization"),
                self.to_string(),
            ),
            OauthError::AccountClosing => HttpAnswer::conflict(self.to_string()),
            // The provider's fault, not the caller's nor ours.
            OauthError::InvalidGrant(_) | OauthError::Provider { .. } => HttpAnswer::new(
                StatusCode::BAD_GATEWAY,
                ProblemKind::new("provider-error", "Provider error"),
                "the OAuth provider refused or failed the request",
            )
            .logged(LogLevel::Warn, "OAuth provider error", self),
            OauthError::RefreshBusy(_) => HttpAnswer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemKind::new("refresh-in-progress", "Try again"),
                self.to_string(),
            ),
            OauthError::Seal(e) => e.answer(),
            OauthError::Store(e) => e.answer(),
            OauthError::Audit(e) => e.answer(),
            OauthError::Config(_) | OauthError::Schedule(_) => {
                HttpAnswer::internal_logged("oauth error", self)
            }
        }
    }
}

/// Everything the OAuth code needs, built once per cold start.
#[derive(Clone, Debug)]
pub struct OauthDeps {
    pub config: OauthConfig,
    pub store: Store,
    pub sealer: Sealer,
    pub audit: AuditLog,
    pub secrets: ClientSecrets,
    /// `custody::http::client`: no redirects, timeouts, egress guard.
    pub http: reqwest::Client,
}

impl OauthDeps {
    pub fn new(
        config: OauthConfig,
        store: Store,
        sealer: Sealer,
        audit: AuditLog,
        secrets_client: aws_sdk_secretsmanager::Client,
        http: reqwest::Client,
    ) -> Self {
        let secrets = ClientSecrets::new(secrets_client, config.client_secrets_id.clone());
        Self {
            config,
            store,
            sealer,
            audit,
            secrets,
            http,
        }
    }

    pub fn provider(&self, name: &str) -> Result<&Provider, OauthError> {
        self.config
            .providers
            .get(name)
            .ok_or(OauthError::UnknownProvider)
    }

    fn now(&self) -> DateTime<Utc> {
        self.store.clock().now()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    /// The provider refused the refresh token: exports stop until a human reconnects.
    NeedsReconsent,
}

/// A tenant's connection to a provider: `T#<tenant>` / `CONN#<provider>`. Tokens only
/// sealed; everything else is ids and metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub tenant: TenantId,
    pub provider: String,
    pub status: ConnectionStatus,
    pub account: ProviderAccount,
    pub scopes: Vec<String>,
    pub access_token: Sealed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Sealed>,
    /// Epoch seconds.
    pub access_expires_at: i64,
    pub connected_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Bumped by every write, so a conditional write knows it saw the latest.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    /// Epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<i64>,
}

impl Entity for Connection {
    const KIND: &'static str = "connection";

    fn key(&self) -> Key {
        connection_key(&self.tenant, &self.provider)
    }
}

pub fn connection_key(tenant: &TenantId, provider: &str) -> Key {
    Key::new(keys::tenant(tenant), keys::connection(provider))
}

/// What `GET /connections` shows: never a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSummary {
    pub provider: String,
    pub status: ConnectionStatus,
    pub account: ProviderAccount,
    pub scopes: Vec<String>,
    pub connected_at: DateTime<Utc>,
    pub access_expires_at: DateTime<Utc>,
}

impl From<&Connection> for ConnectionSummary {
    fn from(c: &Connection) -> Self {
        Self {
            provider: c.provider.clone(),
            status: c.status,
            account: c.account.clone(),
            scopes: c.scopes.clone(),
            connected_at: c.connected_at,
            access_expires_at: DateTime::from_timestamp(c.access_expires_at, 0).unwrap_or_default(),
        }
    }
}

/// Which tenants are connected to a HighLevel location or company: `LOC#<id>` or
/// `CO#<id>` / `T#<tenant>`, written before the connection itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountLink {
    pub pk: String,
    pub tenant: TenantId,
    pub provider: String,
}

impl Entity for AccountLink {
    const KIND: &'static str = "account_link";

    fn key(&self) -> Key {
        Key::new(self.pk.clone(), keys::tenant(&self.tenant))
    }
}

fn account_links(connection: &Connection) -> Vec<AccountLink> {
    let mut links = Vec::new();
    if let Some(location) = &connection.account.location_id {
        links.push(keys::highlevel_location(location));
    }
    if connection.account.user_type.as_deref() == Some("Company")
        && let Some(company) = &connection.account.company_id
    {
        links.push(keys::highlevel_company(company));
    }
    links
        .into_iter()
        .map(|pk| AccountLink {
            pk,
            tenant: connection.tenant.clone(),
            provider: connection.provider.clone(),
        })
        .collect()
}

fn seal_context(tenant: &TenantId, provider: &str, purpose: Purpose) -> SealContext {
    SealContext::new(tenant, purpose, keys::connection(provider))
}

/// Returns a live access token for the tenant's connection to `provider`, refreshing
/// it (once, whoever else asks at the same time) when it expires within 15 minutes.
pub async fn access_token(
    deps: &OauthDeps,
    tenant: &TenantId,
    provider: &str,
) -> Result<AccessToken, OauthError> {
    let key = connection_key(tenant, provider);
    let started = std::time::Instant::now();
    let mut attempt: u32 = 0;
    loop {
        let Some(connection) = deps.store.get::<Connection>(&key).await? else {
            return Err(OauthError::NotConnected(provider.to_owned()));
        };
        if connection.status == ConnectionStatus::NeedsReconsent {
            return Err(OauthError::NeedsReconsent(provider.to_owned()));
        }
        let now = deps.now();
        if connection.access_expires_at > (now + REFRESH_WINDOW).timestamp() {
            return open_access(deps, &connection).await;
        }
        if let Some(leased) = take_lease(deps, &connection).await? {
            return refresh(deps, leased).await;
        }
        // Someone else is refreshing: wait a little and re-read.
        if started.elapsed() > MAX_WAIT {
            return Err(OauthError::RefreshBusy(provider.to_owned()));
        }
        attempt += 1;
        let pause = 50 + u64::from(attempt.min(10)) * 20 + rand::rng().random_range(0..50);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn open_access(deps: &OauthDeps, connection: &Connection) -> Result<AccessToken, OauthError> {
    let token = deps
        .sealer
        .open(
            &seal_context(
                &connection.tenant,
                &connection.provider,
                Purpose::OauthAccessToken,
            ),
            &connection.access_token,
        )
        .await?;
    Ok(AccessToken {
        token,
        expires_at: DateTime::from_timestamp(connection.access_expires_at, 0).unwrap_or_default(),
        account: connection.account.clone(),
        scopes: connection.scopes.clone(),
    })
}

/// Takes the refresh lease with one conditional write: only if nobody wrote the item
/// since we read it and no unexpired lease is held. `None`: someone else has it.
async fn take_lease(
    deps: &OauthDeps,
    connection: &Connection,
) -> Result<Option<Connection>, OauthError> {
    let now = deps.now();
    if connection
        .lease_until
        .is_some_and(|until| until > now.timestamp_millis())
    {
        return Ok(None);
    }
    let mut leased = connection.clone();
    leased.version += 1;
    leased.lease_owner = Some(ulid::Ulid::new().to_string());
    leased.lease_until = Some(
        now.checked_add_signed(LEASE)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
            .timestamp_millis(),
    );
    let condition = Condition::new("#version = :version")
        .name("#version", "version")
        .value(
            ":version",
            AttributeValue::N(connection.version.to_string()),
        );
    match deps.store.put_if(&leased, condition).await {
        Ok(()) => Ok(Some(leased)),
        Err(StoreError::ConditionFailed) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// A write that holds only while we own the lease (and the item still exists: a
/// disconnect during the refresh wins, the tokens are not resurrected).
fn lease_condition(leased: &Connection) -> Condition {
    Condition::new("#owner = :owner")
        .name("#owner", "lease_owner")
        .value(
            ":owner",
            AttributeValue::S(leased.lease_owner.clone().unwrap_or_default()),
        )
}

async fn refresh(deps: &OauthDeps, leased: Connection) -> Result<AccessToken, OauthError> {
    let provider_name = leased.provider.clone();
    let result = refresh_under_lease(deps, &leased).await;
    match result {
        Ok(token) => Ok(token),
        Err(OauthError::InvalidGrant(_)) => {
            let mut marked = leased.clone();
            marked.status = ConnectionStatus::NeedsReconsent;
            marked.version += 1;
            marked.lease_owner = None;
            marked.lease_until = None;
            match deps.store.put_if(&marked, lease_condition(&leased)).await {
                Ok(()) => {}
                Err(StoreError::ConditionFailed) => {
                    // Our lease ran out and another caller stored fresh tokens (ours was
                    // the spent refresh token): use theirs.
                    let key = connection_key(&leased.tenant, &provider_name);
                    return match deps.store.get::<Connection>(&key).await? {
                        Some(current)
                            if current.status == ConnectionStatus::Active
                                && current.access_expires_at
                                    > (deps.now() + REFRESH_WINDOW).timestamp() =>
                        {
                            open_access(deps, &current).await
                        }
                        _ => Err(OauthError::NotConnected(provider_name)),
                    };
                }
                Err(err) => return Err(err.into()),
            }
            deps.audit
                .append(
                    &leased.tenant,
                    Event::new(
                        format!("provider:{provider_name}"),
                        "connection.needs_reconsent",
                        keys::connection(&provider_name),
                    )
                    .outcome(crate::kernel::audit::Outcome::Failure)
                    .detail("reason", "invalid_grant"),
                )
                .await?;
            tracing::warn!(provider = %provider_name, tenant = %leased.tenant, "refresh token refused; connection needs re-consent");
            record_reconsent_notice(deps, &marked).await;
            Err(OauthError::NeedsReconsent(provider_name))
        }
        Err(err) => {
            // Release the lease so the next caller can try; if this fails, it expires.
            let mut released = leased.clone();
            released.version += 1;
            released.lease_owner = None;
            released.lease_until = None;
            let _ = deps.store.put_if(&released, lease_condition(&leased)).await;
            Err(err)
        }
    }
}

/// The tenant's notice that the connection needs re-consent: written to the outbox
/// only (the dsar function delivers it; no webhook secret here). Only the caller whose
/// marking won gets here, and the event id is per connection, so it is one notice.
/// A failure is logged, not the caller's: the connection is marked and the export says
/// `needs_reconsent` either way, and the dsar daily check writes the notice of every
/// connection still marked (the same event id, so once).
async fn record_reconsent_notice(deps: &OauthDeps, marked: &Connection) {
    let notice = reconsent_notice(
        &marked.tenant,
        &marked.provider,
        marked.connected_at,
        deps.now(),
    );
    if let Err(err) = crate::domain::notice::record(&deps.store, &notice).await {
        tracing::error!(error = %err, provider = %marked.provider, tenant = %marked.tenant, "re-consent notice not recorded; the daily check writes it");
    }
}

async fn refresh_under_lease(
    deps: &OauthDeps,
    leased: &Connection,
) -> Result<AccessToken, OauthError> {
    let provider = deps.provider(&leased.provider)?;
    let Some(sealed_refresh) = &leased.refresh_token else {
        // Nothing to refresh with: the same outcome as a refused refresh token.
        return Err(OauthError::InvalidGrant(leased.provider.clone()));
    };
    let timed_out = |phase: &str| OauthError::Provider {
        provider: leased.provider.clone(),
        reason: format!("{phase} took longer than the refresh allows"),
    };
    let (refresh_token, secret) = tokio::time::timeout(REFRESH_PREPARE_TIMEOUT, async {
        let refresh_token = deps
            .sealer
            .open(
                &seal_context(&leased.tenant, &leased.provider, Purpose::OauthRefreshToken),
                sealed_refresh,
            )
            .await?;
        let secret = deps.secrets.get(&provider.name).await?;
        Ok::<_, OauthError>((refresh_token, secret))
    })
    .await
    .map_err(|_| timed_out("preparing the refresh"))??;
    let issued = tokio::time::timeout(
        REFRESH_CALL_TIMEOUT,
        provider.refresh(&deps.http, &secret, &refresh_token),
    )
    .await
    .map_err(|_| timed_out("the token endpoint"))??;
    // From here the provider may have rotated the refresh token: the old one may be
    // spent, so the issued tokens must be stored whatever it takes.
    keep_issued(deps, leased, &issued).await
}

/// Seals and stores tokens the provider issued, retrying sealing and the write; if
/// the lease was lost meanwhile (another caller took it over after it ran out), the
/// tokens are still stored unless someone has stored a newer refresh token since.
async fn keep_issued(
    deps: &OauthDeps,
    leased: &Connection,
    issued: &provider::IssuedTokens,
) -> Result<AccessToken, OauthError> {
    let mut last = None;
    for attempt in 0..KEEP_ATTEMPTS {
        if attempt > 0 {
            let pause = 100u64 << attempt.min(5);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        match store_issued(deps, leased, issued).await {
            Ok(token) => return Ok(token),
            Err(err @ OauthError::NotConnected(_)) => return Err(err),
            Err(err) => {
                tracing::warn!(provider = %leased.provider, tenant = %leased.tenant, attempt, error = %err, "issued tokens not stored yet; retrying");
                last = Some(err);
            }
        }
    }
    crate::kernel::metrics::count(crate::kernel::metrics::names::OAUTH_TOKENS_NOT_STORED, 1);
    tracing::error!(provider = %leased.provider, tenant = %leased.tenant, "issued tokens could not be stored; the connection may need re-consent");
    Err(last.unwrap_or_else(|| OauthError::NotConnected(leased.provider.clone())))
}

async fn store_issued(
    deps: &OauthDeps,
    leased: &Connection,
    issued: &provider::IssuedTokens,
) -> Result<AccessToken, OauthError> {
    let now = deps.now();
    let access_token = deps
        .sealer
        .seal(
            &seal_context(&leased.tenant, &leased.provider, Purpose::OauthAccessToken),
            &issued.access_token,
        )
        .await?;
    let refresh_token = match &issued.refresh_token {
        Some(rotated) => Some(
            deps.sealer
                .seal(
                    &seal_context(&leased.tenant, &leased.provider, Purpose::OauthRefreshToken),
                    rotated,
                )
                .await?,
        ),
        None => leased.refresh_token.clone(),
    };
    let with_tokens = |base: &Connection| {
        let mut updated = base.clone();
        updated.access_token = access_token.clone();
        updated.refresh_token = refresh_token.clone();
        updated.access_expires_at = expiry(now, issued.expires_in);
        if let Some(scopes) = &issued.scopes {
            updated.scopes = scopes.clone();
        }
        updated.status = ConnectionStatus::Active;
        updated.refreshed_at = Some(now);
        updated.version = base.version + 1;
        updated.lease_owner = None;
        updated.lease_until = None;
        updated
    };
    // One write: the new access token and the rotated refresh token together.
    let mut updated = with_tokens(leased);
    match deps.store.put_if(&updated, lease_condition(leased)).await {
        Ok(()) => {}
        Err(StoreError::ConditionFailed) => {
            // The lease is gone: disconnected (keep it so), or taken over after it ran
            // out. Then ours is the live refresh token unless another was stored since.
            let key = connection_key(&leased.tenant, &leased.provider);
            let Some(current) = deps.store.get::<Connection>(&key).await? else {
                return Err(OauthError::NotConnected(leased.provider.clone()));
            };
            if current.refresh_token != leased.refresh_token {
                return open_access(deps, &current).await;
            }
            updated = with_tokens(&current);
            let unchanged = Condition::new("#version = :version")
                .name("#version", "version")
                .value(":version", AttributeValue::N(current.version.to_string()));
            deps.store.put_if(&updated, unchanged).await?;
        }
        Err(err) => return Err(err.into()),
    }
    Ok(AccessToken {
        token: issued.access_token.clone(),
        expires_at: DateTime::from_timestamp(updated.access_expires_at, 0).unwrap_or_default(),
        account: updated.account,
        scopes: updated.scopes,
    })
}

/// Without `expires_in` a token is assumed to live an hour (RFC 6749 leaves it open;
/// refreshing early is harmless, using a dead token is not).
fn expiry(now: DateTime<Utc>, expires_in: Option<Duration>) -> i64 {
    let lifetime = match expires_in {
        None => chrono::Duration::hours(1),
        Some(d) => chrono::Duration::from_std(d)
            .unwrap_or(MAX_TOKEN_LIFETIME)
            .min(MAX_TOKEN_LIFETIME),
    };
    // Checked: a provider's number must never panic the refresh.
    now.checked_add_signed(lifetime)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .timestamp()
}

/// The tenant's connections, without tokens.
pub async fn list_connections(
    deps: &OauthDeps,
    tenant: &TenantId,
) -> Result<Vec<ConnectionSummary>, OauthError> {
    let connections: Vec<Connection> = deps
        .store
        .query_all(&keys::tenant(tenant), &keys::connection(""))
        .await?;
    Ok(connections.iter().map(ConnectionSummary::from).collect())
}

/// What a disconnect did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    pub deleted: bool,
    pub revoked: bool,
    pub schedule_removed: bool,
}

/// Deletes the tenant's connection to `provider` at once (and its account links),
/// removes the tenant's export schedule, then asks the provider to revoke the refresh
/// token (best effort: the tokens are gone from here either way), and audits it.
/// Idempotent: disconnecting what is not connected still removes the schedule.
pub async fn disconnect(
    deps: &OauthDeps,
    schedules: &crate::domain::schedule::ExportSchedules,
    tenant: &TenantId,
    provider: &str,
    actor: &str,
) -> Result<Disconnected, OauthError> {
    let key = connection_key(tenant, provider);
    let existing = deps.store.get::<Connection>(&key).await?;
    deps.store.delete(&key).await?;
    let mut outcome = Disconnected {
        deleted: existing.is_some(),
        ..Disconnected::default()
    };
    if let Some(connection) = &existing {
        for link in account_links(connection) {
            deps.store.delete(&link.key()).await?;
        }
    }
    outcome.schedule_removed = schedules.delete(tenant).await?;
    if let (Some(connection), Ok(provider)) = (&existing, deps.provider(provider)) {
        outcome.revoked = revoke_quietly(deps, provider, connection).await;
    }
    if outcome.deleted || outcome.schedule_removed {
        deps.audit
            .append(
                tenant,
                Event::new(actor, "connection.deleted", keys::connection(provider))
                    .detail("revoked", outcome.revoked)
                    .detail("schedule_removed", outcome.schedule_removed),
            )
            .await?;
    }
    Ok(outcome)
}

/// What a function that deleted connections but may not decrypt their tokens (the
/// dsar function, on account deletion) asks of the oauth function, which may: revoke
/// their grants at the providers. The event is `{"custody_revoke_deleted": […]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeDeleted {
    pub custody_revoke_deleted: Vec<Connection>,
}

/// How one deleted connection's revocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationOutcome {
    /// The provider revoked the grant.
    Revoked,
    /// The provider offers no revocation endpoint (HighLevel: uninstalling the app is
    /// how a grant ends there).
    NoEndpoint,
    /// Every attempt failed (`ProviderRevocationsFailed`, alarmed); the grant stays
    /// valid at the provider until it expires.
    Failed,
    /// Refused: the connection is not deleted (only deleted ones are revoked here).
    StillConnected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub provider: String,
    pub outcome: RevocationOutcome,
}

/// Attempts per revocation before it counts as failed.
const REVOKE_ATTEMPTS: u32 = 3;

/// Revokes the grants of connections another function deleted, each audited
/// (`connection.revoked`). A connection that still exists (same provider, same
/// `connected_at`) is refused: this path revokes deleted grants only.
pub async fn revoke_deleted(
    deps: &OauthDeps,
    connections: &[Connection],
    actor: &str,
) -> Result<Vec<Revocation>, OauthError> {
    let mut results = Vec::with_capacity(connections.len());
    for connection in connections {
        let key = connection_key(&connection.tenant, &connection.provider);
        let outcome = match deps.store.get::<Connection>(&key).await? {
            Some(current) if current.connected_at == connection.connected_at => {
                RevocationOutcome::StillConnected
            }
            _ => match deps.provider(&connection.provider) {
                Ok(provider) => revoke_with_retries(deps, provider, connection).await,
                // A provider no longer configured: nothing to call.
                Err(_) => RevocationOutcome::NoEndpoint,
            },
        };
        deps.audit
            .append(
                &connection.tenant,
                Event::new(
                    actor,
                    "connection.revoked",
                    keys::connection(&connection.provider),
                )
                .outcome(if outcome == RevocationOutcome::Failed {
                    crate::kernel::audit::Outcome::Failure
                } else {
                    crate::kernel::audit::Outcome::Success
                })
                .detail("outcome", serde_json::to_value(outcome).unwrap_or_default()),
            )
            .await?;
        results.push(Revocation {
            provider: connection.provider.clone(),
            outcome,
        });
    }
    Ok(results)
}

/// Revokes the grant of a connection a reconnect to another account replaced, and
/// audits it (`connection.revoked`, `reason: replaced`).
pub(crate) async fn revoke_replaced(
    deps: &OauthDeps,
    provider: &Provider,
    old: &Connection,
    actor: &str,
) -> Result<RevocationOutcome, OauthError> {
    let outcome = revoke_with_retries(deps, provider, old).await;
    deps.audit
        .append(
            &old.tenant,
            Event::new(actor, "connection.revoked", keys::connection(&old.provider))
                .outcome(if outcome == RevocationOutcome::Failed {
                    crate::kernel::audit::Outcome::Failure
                } else {
                    crate::kernel::audit::Outcome::Success
                })
                .detail("outcome", serde_json::to_value(outcome).unwrap_or_default())
                .detail("reason", "replaced"),
        )
        .await?;
    Ok(outcome)
}

async fn revoke_with_retries(
    deps: &OauthDeps,
    provider: &Provider,
    connection: &Connection,
) -> RevocationOutcome {
    if provider.revocation_url.is_none() {
        return RevocationOutcome::NoEndpoint;
    }
    for attempt in 0..REVOKE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        match revoke_at_provider(deps, provider, connection).await {
            Ok(true) => return RevocationOutcome::Revoked,
            // The endpoint exists (checked above) and answered other than 2xx.
            Ok(false) => {
                tracing::warn!(provider = %provider.name, attempt, "the revocation endpoint refused; retrying");
            }
            Err(err) => {
                tracing::warn!(provider = %provider.name, attempt, error = %err, "revocation at the provider failed; retrying");
            }
        }
    }
    crate::kernel::metrics::count(
        crate::kernel::metrics::names::PROVIDER_REVOCATIONS_FAILED,
        1,
    );
    tracing::error!(provider = %provider.name, tenant = %connection.tenant, "the provider did not revoke a deleted connection's grant");
    RevocationOutcome::Failed
}

/// Revokes the refresh token (which also ends its access tokens at providers that
/// implement RFC 7009 fully), or the access token when there is none; best effort.
async fn revoke_quietly(deps: &OauthDeps, provider: &Provider, connection: &Connection) -> bool {
    match revoke_at_provider(deps, provider, connection).await {
        Ok(revoked) => revoked,
        Err(err) => {
            tracing::warn!(provider = %provider.name, error = %err, "token revocation at the provider failed; tokens are deleted here regardless");
            false
        }
    }
}

/// One revocation call: `Ok(false)` when the provider has no revocation endpoint.
async fn revoke_at_provider(
    deps: &OauthDeps,
    provider: &Provider,
    connection: &Connection,
) -> Result<bool, OauthError> {
    if provider.revocation_url.is_none() {
        return Ok(false);
    }
    revoke_sealed(
        deps,
        provider,
        connection.refresh_token.as_ref(),
        &connection.access_token,
        |purpose| {
            Ok(seal_context(
                &connection.tenant,
                &connection.provider,
                purpose,
            ))
        },
        (Purpose::OauthRefreshToken, Purpose::OauthAccessToken),
    )
    .await
}

/// One revocation call for a grant held as sealed tokens: the refresh token when there
/// is one (which also ends its access tokens at providers that implement RFC 7009
/// fully), else the access token, opened under `context(purpose)` where `purposes` are
/// the (refresh, access) purposes they were sealed with. `Ok(false)` without an
/// endpoint or when the provider refused.
pub(crate) async fn revoke_sealed(
    deps: &OauthDeps,
    provider: &Provider,
    refresh: Option<&Sealed>,
    access: &Sealed,
    context: impl Fn(Purpose) -> Result<SealContext, OauthError>,
    purposes: (Purpose, Purpose),
) -> Result<bool, OauthError> {
    if provider.revocation_url.is_none() {
        return Ok(false);
    }
    let (sealed, purpose, hint) = match refresh {
        Some(sealed) => (sealed, purposes.0, "refresh_token"),
        None => (access, purposes.1, "access_token"),
    };
    let token = deps.sealer.open(&context(purpose)?, sealed).await?;
    let secret = deps.secrets.get(&provider.name).await?;
    provider.revoke(&deps.http, &secret, &token, hint).await
}

/// The account-deletion fence, as an OAuth error.
pub(crate) async fn ensure_open(deps: &OauthDeps, tenant: &TenantId) -> Result<(), OauthError> {
    crate::domain::privacy::ensure_open(&deps.store, tenant)
        .await
        .map_err(|err| match err {
            crate::domain::privacy::FenceError::Closing => OauthError::AccountClosing,
            crate::domain::privacy::FenceError::Store(err) => OauthError::Store(err),
        })
}

/// Stores a new connection (replacing an older one of the same provider): account
/// links first, so the connection never exists without its uninstall lookup.
pub(crate) async fn store_connection(
    deps: &OauthDeps,
    connection: &Connection,
) -> Result<(), OauthError> {
    for link in account_links(connection) {
        deps.store.put(&link).await?;
    }
    deps.store.put(connection).await?;
    Ok(())
}

/// Deletes a connection only if it is still for `location_id`/`company_id` (the
/// tenant may have reconnected to another account since the link was written).
pub(crate) async fn delete_if_account(
    deps: &OauthDeps,
    tenant: &TenantId,
    provider: &str,
    field: &str,
    account_id: &str,
) -> Result<Option<Connection>, OauthError> {
    let key = connection_key(tenant, provider);
    let result = deps
        .store
        .client()
        .delete_item()
        .table_name(deps.store.table())
        .key("pk", AttributeValue::S(key.pk.clone()))
        .key("sk", AttributeValue::S(key.sk.clone()))
        .condition_expression("#account.#field = :id")
        .expression_attribute_names("#account", "account")
        .expression_attribute_names("#field", field)
        .expression_attribute_values(":id", AttributeValue::S(account_id.to_owned()))
        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
        .send()
        .await;
    match result {
        Ok(out) => Ok(out
            .attributes
            .map(Store::decode::<Connection>)
            .transpose()?),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(None)
        }
        Err(err) => Err(StoreError::Dynamo(crate::kernel::aws::error_text(&err)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::LogLevel;
    use crate::kernel::http::table::{Detail, internal, row, shown};

    #[test]
    fn the_lease_outlives_the_longest_token_call() {
        // Each phase of a refresh is bounded; the lease outlives their sum. A lease
        // equal to the HTTP timeout (the old 30 s) fails.
        let phases = REFRESH_PREPARE_TIMEOUT + REFRESH_CALL_TIMEOUT + REFRESH_KEEP_BUDGET;
        let lease = LEASE.to_std().unwrap();
        assert!(lease > phases, "{lease:?} <= {phases:?}");
        assert!(lease > crate::kernel::http::DEFAULT_TIMEOUT + Duration::from_secs(10));
        // The call's own bound is not longer than the client's timeout.
        assert!(REFRESH_CALL_TIMEOUT <= crate::kernel::http::DEFAULT_TIMEOUT);
    }

    #[test]
    fn absurd_expires_in_never_panics() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clamped = (now + MAX_TOKEN_LIFETIME).timestamp();
        for secs in [10_000_000_000_000u64, u64::MAX] {
            assert_eq!(expiry(now, Some(Duration::from_secs(secs))), clamped);
        }
        assert_eq!(
            expiry(now, Some(Duration::from_secs(3600))),
            now.timestamp() + 3600
        );
        assert_eq!(expiry(now, None), now.timestamp() + 3600);
        // Near the end of representable time the sum saturates instead of panicking.
        assert_eq!(
            expiry(DateTime::<Utc>::MAX_UTC, Some(Duration::from_secs(60))),
            DateTime::<Utc>::MAX_UTC.timestamp()
        );
    }

    #[test]
    fn every_oauth_error_has_its_http_answer() {
        let unknown = (
            404,
            "unknown-provider",
            Some("provider".to_owned()),
            Detail::Fixed("no OAuth provider of this name is configured".into()),
            None,
        );
        assert_eq!(row(&OauthError::UnknownProvider), unknown);
        let not_connected = shown(404, "not-connected", None);
        assert_eq!(row(&OauthError::NotConnected("crm".into())), not_connected);
        let reconsent = shown(409, "needs-reconsent", None);
        assert_eq!(row(&OauthError::NeedsReconsent("crm".into())), reconsent);
        let busy = shown(503, "refresh-in-progress", None);
        assert_eq!(row(&OauthError::RefreshBusy("crm".into())), busy);

        // The provider's fault: a 502 that does not repeat what the provider said.
        let provider = (
            502,
            "provider-error",
            None,
            Detail::Fixed("the OAuth provider refused or failed the request".into()),
            Some(LogLevel::Warn),
        );
        for err in [
            OauthError::InvalidGrant("crm".into()),
            OauthError::Provider {
                provider: "crm".into(),
                reason: "HTTP 500 from token endpoint".into(),
            },
        ] {
            assert_eq!(row(&err), provider, "{err}");
        }

        // Wrapped errors answer as themselves.
        let secret = shown(400, "invalid-request", Some("secret"));
        assert_eq!(row(&OauthError::Seal(SealError::Empty)), secret);
        let cursor = shown(400, "invalid-request", Some("cursor"));
        assert_eq!(row(&OauthError::Store(StoreError::InvalidCursor)), cursor);
        for err in [
            OauthError::Audit(AuditError::Contention(5)),
            OauthError::Seal(SealError::Rejected),
            OauthError::Config("CUSTODY_OAUTH_PROVIDERS is not JSON".into()),
            OauthError::Schedule(crate::domain::schedule::ScheduleError::Scheduler(
                "ValidationException".into(),
            )),
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }
}

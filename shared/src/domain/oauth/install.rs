//! Installs that start in the HighLevel Marketplace: an admin clicks Install there,
//! and HighLevel sends the browser to the redirect URI with a `code` and no custody
//! `state`, so no tenant is known yet.
//!
//! - [`receive`]: the code is exchanged at once (codes live minutes). The tokens are
//!   sealed, under purposes only this module uses, into a [`PendingInstall`] bound to
//!   no tenant, with the SHA-256 of a one-time claim token and of a browser-binding
//!   cookie, for [`RetentionClass::PendingInstall`] (TTL plus the read filter). The
//!   browser goes to the console's claim page; the claim token rides in the URL
//!   fragment, which no server log or `Referer` sees.
//! - [`note_webhook`]: the signed `INSTALL` webhook for the same app, location and
//!   company is kept beside it as an [`InstallNotice`].
//! - [`claim`]: an admin of a tenant, in the browser that arrived (cookie), with the
//!   claim token. Refused while no `INSTALL` webhook corroborates the install: a
//!   connection comes only from installs HighLevel itself reports, and an unconfirmed
//!   install that was merely flagged would already be exporting data. The webhook
//!   arrives within seconds, so the refusal is a 409 to retry, and nothing is
//!   consumed. Refused, audited and deleted when another tenant holds the location.
//!   Otherwise consumed with one conditional delete (single use) and made a
//!   connection, audited; an older connection of the tenant is replaced and its grant
//!   revoked.
//! - [`sweep_expired`]: every 5 minutes, installs nobody claimed in time are revoked
//!   where the provider can and deleted, so their tokens do not wait for TTL.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::flow::{CallbackError, CallbackParams};
use super::{
    AccountLink, Connection, ConnectionStatus, OauthDeps, OauthError, Provider, ProviderAccount,
    expiry, seal_context, store_connection,
};
use crate::kernel::audit::{Event, Outcome};
use crate::kernel::http::{HttpAnswer, HttpError, ProblemKind};
use crate::kernel::retention::RetentionClass;
use crate::kernel::seal::{Purpose, SealContext, Sealed};
use crate::kernel::store::{Condition, Entity, Item, Key, Store, StoreError, keys};
use crate::kernel::tenant::TenantId;

/// The cookie that binds a pending install to the browser HighLevel sent back. Sent
/// cross-site with the console's credentialed claim request, hence `SameSite=None`.
pub const INSTALL_COOKIE: &str = "__Host-custody-install";
/// The seal context's tenant for tokens no tenant holds yet. Only the install
/// purposes are ever sealed with it, so a tenant of this name gains nothing.
const UNCLAIMED: &str = "unclaimed-install";
/// Largest claim body accepted (two short strings).
pub const MAX_CLAIM_BODY_BYTES: usize = 4096;
/// Longest claim token accepted (ours are 43 characters).
pub const MAX_CLAIM_TOKEN_LEN: usize = 128;
/// Longest account id in an installation id (as for webhook ids).
pub const MAX_ACCOUNT_ID_LEN: usize = 128;

/// How long an install waits for its claim: the retention class's number.
pub fn claim_window() -> chrono::Duration {
    RetentionClass::PendingInstall
        .duration()
        .unwrap_or_else(|| chrono::Duration::minutes(15))
}

/// `location:<locationId>` or `company:<companyId>`: which HighLevel account an
/// install is for, and its id in the claim URL.
pub fn installation_id(account: &ProviderAccount) -> Option<String> {
    let company_level = account.user_type.as_deref() == Some("Company");
    match (&account.location_id, &account.company_id) {
        (Some(location), _) if !company_level => Some(format!("location:{location}")),
        (_, Some(company)) => Some(format!("company:{company}")),
        (Some(location), None) => Some(format!("location:{location}")),
        (None, None) => None,
    }
}

/// Whether `text` is a well-formed installation id.
pub fn valid_installation(text: &str) -> bool {
    let Some((kind, id)) = text.split_once(':') else {
        return false;
    };
    matches!(kind, "location" | "company") && super::webhook::valid_id(id)
}

/// An install no tenant has claimed yet: `INSTALL#<provider>` / `P#<installation>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingInstall {
    pub provider: String,
    pub installation: String,
    pub account: ProviderAccount,
    pub scopes: Vec<String>,
    pub access_token: Sealed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Sealed>,
    /// Epoch seconds.
    pub access_expires_at: i64,
    /// SHA-256 (hex) of the claim token.
    pub claim_hash: String,
    /// SHA-256 (hex) of the browser-binding cookie value.
    pub binding_hash: String,
    pub received_at: DateTime<Utc>,
    pub expires_at: i64,
}

impl Entity for PendingInstall {
    const KIND: &'static str = "pending_install";

    fn key(&self) -> Key {
        pending_key(&self.provider, &self.installation)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

pub fn pending_key(provider: &str, installation: &str) -> Key {
    Key::new(keys::installations(provider), format!("P#{installation}"))
}

/// A verified `INSTALL` webhook for our app: `INSTALL#<provider>` / `W#<installation>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallNotice {
    pub provider: String,
    pub installation: String,
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    pub webhook_id: String,
    pub received_at: DateTime<Utc>,
    pub expires_at: i64,
}

impl Entity for InstallNotice {
    const KIND: &'static str = "install_notice";

    fn key(&self) -> Key {
        notice_key(&self.provider, &self.installation)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

pub fn notice_key(provider: &str, installation: &str) -> Key {
    Key::new(keys::installations(provider), format!("W#{installation}"))
}

fn install_context(
    provider: &str,
    installation: &str,
    purpose: Purpose,
) -> Result<SealContext, OauthError> {
    let tenant = TenantId::parse(UNCLAIMED)
        .map_err(|e| OauthError::Config(format!("the unclaimed-install tenant id: {e}")))?;
    Ok(SealContext::new(
        &tenant,
        purpose,
        format!("{}#{installation}", keys::installations(provider)),
    ))
}

use super::flow::{binding_hash as hash, random_token};

/// A received install: send the browser to `claim_url` with the binding cookie.
#[derive(Debug)]
pub struct Received {
    pub installation: String,
    /// The console's claim page, the claim token in its fragment.
    pub claim_url: Url,
    /// The cookie value; a secret of this browser until the claim.
    pub binding: SecretString,
}

/// Where a Marketplace callback's browser goes: the first allowed return URL (the
/// console), as configured; custody started no flow that could have named another.
pub fn landing_url(deps: &OauthDeps) -> Result<Url, OauthError> {
    deps.config
        .return_urls
        .first()
        .cloned()
        .ok_or_else(|| OauthError::Config("no return URL is configured".into()))
}

/// Handles a callback without `state` for a provider that allows Marketplace
/// installs: exchange, seal, hold for a claim. Every refusal stores nothing.
pub async fn receive(
    deps: &OauthDeps,
    provider: &Provider,
    params: &CallbackParams,
) -> Result<Received, CallbackError> {
    if let Some(error) = &params.error {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(40)
            .collect();
        return Err(CallbackError::ProviderError(code));
    }
    let code = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= super::flow::MAX_CODE_LEN)
        .ok_or(CallbackError::MissingCode)?;
    let redirect_uri = deps.config.redirect_uri(&provider.name)?;
    let mut landing = landing_url(deps)?;
    let secret = deps.secrets.get(&provider.name).await?;
    // The Marketplace's authorization request carries no PKCE challenge.
    let issued = provider
        .exchange_code(&deps.http, &secret, &redirect_uri, code, None)
        .await?;
    let installation = installation_id(&issued.account)
        .filter(|id| valid_installation(id))
        .ok_or(CallbackError::MissingAccount)?;
    let sealed = |purpose, token: &SecretString| {
        let context = install_context(&provider.name, &installation, purpose);
        let token = token.clone();
        async move {
            let context = context?;
            deps.sealer
                .seal(&context, &token)
                .await
                .map_err(OauthError::from)
        }
    };
    let access_token = sealed(Purpose::InstallAccessToken, &issued.access_token).await?;
    let refresh_token = match &issued.refresh_token {
        Some(token) if !token.expose_secret().is_empty() => {
            Some(sealed(Purpose::InstallRefreshToken, token).await?)
        }
        _ => None,
    };
    let claim_token = random_token();
    let binding = random_token();
    let now = deps.now();
    let pending = PendingInstall {
        provider: provider.name.clone(),
        installation: installation.clone(),
        account: issued.account.clone(),
        scopes: issued
            .scopes
            .clone()
            .unwrap_or_else(|| provider.scopes.clone()),
        access_token,
        refresh_token,
        access_expires_at: expiry(now, issued.expires_in),
        claim_hash: hash(&claim_token),
        binding_hash: hash(&binding),
        received_at: now,
        expires_at: (now + claim_window()).timestamp(),
    };
    // A newer install of the same account replaces an unclaimed older one: the
    // provider issued a new grant, the older claim link stops working.
    deps.store.put(&pending).await.map_err(OauthError::from)?;
    landing
        .query_pairs_mut()
        .append_pair("result", "install_pending")
        .append_pair("provider", &provider.name)
        .append_pair("installation", &installation);
    landing.set_fragment(Some(&format!("claim_token={claim_token}")));
    tracing::info!(provider = %provider.name, installation = %installation, "Marketplace install held for a claim");
    Ok(Received {
        installation,
        claim_url: landing,
        binding: SecretString::from(binding),
    })
}

/// Keeps a verified `INSTALL` webhook of our app as the corroboration of the install
/// of the same account. Idempotent (a redelivery writes the same notice).
pub async fn note_webhook(
    deps: &OauthDeps,
    provider: &Provider,
    webhook_id: &str,
    location_id: Option<&str>,
    company_id: Option<&str>,
    install_type: Option<&str>,
    app_id: &str,
) -> Result<Option<String>, OauthError> {
    let account = ProviderAccount {
        location_id: location_id.map(str::to_owned),
        company_id: company_id.map(str::to_owned),
        user_type: install_type.map(str::to_owned),
        subject: None,
    };
    let Some(installation) = installation_id(&account) else {
        return Ok(None);
    };
    let now = deps.now();
    let notice = InstallNotice {
        provider: provider.name.clone(),
        installation: installation.clone(),
        app_id: app_id.to_owned(),
        company_id: account.company_id,
        webhook_id: webhook_id.to_owned(),
        received_at: now,
        expires_at: (now + claim_window()).timestamp(),
    };
    deps.store.put(&notice).await?;
    Ok(Some(installation))
}

/// Removes whatever is pending for an account HighLevel says was uninstalled.
pub async fn forget(
    deps: &OauthDeps,
    provider: &str,
    location_id: Option<&str>,
    company_id: Option<&str>,
) -> Result<(), OauthError> {
    let ids = [
        location_id.map(|id| format!("location:{id}")),
        company_id.map(|id| format!("company:{id}")),
    ];
    for installation in ids.into_iter().flatten() {
        deps.store
            .delete(&pending_key(provider, &installation))
            .await?;
        deps.store
            .delete(&notice_key(provider, &installation))
            .await?;
    }
    Ok(())
}

/// The claim route's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub installation: String,
    pub claim_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// 400, naming the field.
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// 404: never made, already claimed, expired, or the provider takes no installs.
    #[error("no pending installation of this id (never made, already claimed or expired)")]
    NotFound,
    /// 403: the claim token is not this installation's.
    #[error("the claim token does not belong to this installation")]
    WrongClaimToken,
    /// 403: not the browser HighLevel sent back with the install.
    #[error("the claim must come from the browser the install arrived in")]
    WrongBrowser,
    /// 409, retry: HighLevel's `INSTALL` webhook has not corroborated the install yet.
    #[error("HighLevel has not confirmed this install yet; try again in a few seconds")]
    Unconfirmed,
    /// 409: another tenant holds a connection to this account. Audited.
    #[error("another tenant already holds this HighLevel account")]
    HeldByAnotherTenant,
    #[error(transparent)]
    Oauth(#[from] OauthError),
}

impl From<StoreError> for ClaimError {
    fn from(err: StoreError) -> Self {
        ClaimError::Oauth(err.into())
    }
}

impl HttpError for ClaimError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            ClaimError::Invalid { field, .. } => HttpAnswer::bad_request(*field, self.to_string()),
            ClaimError::NotFound => HttpAnswer::new(
                StatusCode::NOT_FOUND,
                ProblemKind::new("installation-not-found", "Installation not found"),
                self.to_string(),
            )
            .with_field("installation"),
            ClaimError::WrongClaimToken => HttpAnswer::new(
                StatusCode::FORBIDDEN,
                ProblemKind::new("claim-refused", "Claim refused"),
                self.to_string(),
            )
            .with_field("claim_token"),
            ClaimError::WrongBrowser => HttpAnswer::new(
                StatusCode::FORBIDDEN,
                ProblemKind::new("claim-refused", "Claim refused"),
                self.to_string(),
            )
            .with_field(INSTALL_COOKIE),
            ClaimError::Unconfirmed => HttpAnswer::new(
                StatusCode::CONFLICT,
                ProblemKind::new("install-unconfirmed", "Install not confirmed yet"),
                self.to_string(),
            ),
            ClaimError::HeldByAnotherTenant => HttpAnswer::new(
                StatusCode::CONFLICT,
                ProblemKind::new("installation-held", "Installation held by another tenant"),
                self.to_string(),
            )
            .with_field("installation"),
            ClaimError::Oauth(e) => e.answer(),
        }
    }
}

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claimed {
    pub provider: String,
    pub installation: String,
    pub account: ProviderAccount,
    /// An older connection of the tenant to this provider was replaced.
    pub replaced: bool,
    /// How the replaced connection's grant was revoked, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<super::RevocationOutcome>,
}

fn check(request: &ClaimRequest) -> Result<(), ClaimError> {
    if !valid_installation(&request.installation) {
        return Err(ClaimError::Invalid {
            field: "installation",
            reason: "must be location:<id> or company:<id>, ids of [A-Za-z0-9._:-]{1,128}",
        });
    }
    let token = &request.claim_token;
    if token.is_empty()
        || token.len() > MAX_CLAIM_TOKEN_LEN
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ClaimError::Invalid {
            field: "claim_token",
            reason: "must be 1 to 128 characters of [A-Za-z0-9_-]",
        });
    }
    Ok(())
}

/// The partition of the link that says which tenant holds the account.
fn link_partition(account: &ProviderAccount, installation: &str) -> String {
    match (installation.starts_with("company:"), account) {
        (
            true,
            ProviderAccount {
                company_id: Some(company),
                ..
            },
        ) => keys::highlevel_company(company),
        (
            _,
            ProviderAccount {
                location_id: Some(location),
                ..
            },
        ) => keys::highlevel_location(location),
        _ => keys::highlevel_company(installation.trim_start_matches("company:")),
    }
}

/// Claims a pending install for `tenant`; see the module documentation.
pub async fn claim(
    deps: &OauthDeps,
    tenant: &TenantId,
    actor: &str,
    provider_name: &str,
    request: &ClaimRequest,
    binding_cookie: Option<&str>,
) -> Result<Claimed, ClaimError> {
    let provider = deps.provider(provider_name)?;
    let Some(app_id) = provider.marketplace_app_id.clone() else {
        return Err(ClaimError::NotFound);
    };
    check(request)?;
    super::ensure_open(deps, tenant).await?;
    let key = pending_key(&provider.name, &request.installation);
    let pending: PendingInstall = deps.store.get(&key).await?.ok_or(ClaimError::NotFound)?;
    if hash(&request.claim_token) != pending.claim_hash {
        return Err(ClaimError::WrongClaimToken);
    }
    let same_browser = binding_cookie.is_some_and(|value| hash(value) == pending.binding_hash);
    if !same_browser {
        return Err(ClaimError::WrongBrowser);
    }
    let notice: Option<InstallNotice> = deps
        .store
        .get(&notice_key(&provider.name, &request.installation))
        .await?;
    let corroborated = notice.is_some_and(|notice| {
        notice.app_id == app_id
            && match (&notice.company_id, &pending.account.company_id) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    });
    if !corroborated {
        return Err(ClaimError::Unconfirmed);
    }
    let holders: Vec<AccountLink> = deps
        .store
        .query_all(
            &link_partition(&pending.account, &pending.installation),
            "T#",
        )
        .await?;
    if holders
        .iter()
        .any(|link| link.provider == provider.name && &link.tenant != tenant)
    {
        // Refused for good: the install's tokens go now, not in 15 minutes.
        consume(deps, &pending).await?;
        deps.audit
            .append(
                tenant,
                Event::new(
                    actor,
                    "installation.refused",
                    keys::connection(&provider.name),
                )
                .outcome(Outcome::Failure)
                .detail("installation", pending.installation.clone())
                .detail("reason", "held_by_another_tenant"),
            )
            .await
            .map_err(OauthError::from)?;
        return Err(ClaimError::HeldByAnotherTenant);
    }
    // Sealed for the tenant before anything is consumed: a KMS failure here leaves
    // the install claimable again.
    let connection = reseal(deps, provider, tenant, &pending).await?;
    if !consume(deps, &pending).await? {
        return Err(ClaimError::NotFound);
    }
    let stored = async {
        let previous = deps
            .store
            .get::<Connection>(&super::connection_key(tenant, &provider.name))
            .await?;
        store_connection(deps, &connection).await?;
        Ok::<_, OauthError>(previous)
    }
    .await;
    let previous = match stored {
        Ok(previous) => previous,
        Err(err) => {
            // Put the install back so the admin can retry the claim.
            if let Err(restore) = deps.store.put(&pending).await {
                tracing::error!(error = %restore, "a consumed install could not be restored after a failed claim");
            }
            return Err(err.into());
        }
    };
    deps.audit
        .append(
            tenant,
            Event::new(
                actor,
                "connection.created",
                keys::connection(&provider.name),
            )
            .detail("scopes", connection.scopes.join(" "))
            .detail("via", "marketplace")
            .detail("installation", pending.installation.clone()),
        )
        .await
        .map_err(OauthError::from)?;
    deps.store
        .delete(&notice_key(&provider.name, &pending.installation))
        .await?;
    // A reinstall replaces the tokens; the old grant is revoked where the provider
    // can (HighLevel has no endpoint: recorded `no_endpoint`).
    let revocation = match &previous {
        Some(old) => Some(super::revoke_replaced(deps, provider, old, actor).await?),
        None => None,
    };
    Ok(Claimed {
        provider: provider.name.clone(),
        installation: pending.installation,
        account: connection.account,
        replaced: previous.is_some(),
        revocation,
    })
}

/// Deletes the pending install if it is still this one (same claim hash): whether
/// this call consumed it.
async fn consume(deps: &OauthDeps, pending: &PendingInstall) -> Result<bool, StoreError> {
    let condition = Condition::new("#claim = :claim")
        .name("#claim", "claim_hash")
        .value(":claim", AttributeValue::S(pending.claim_hash.clone()));
    deps.store.delete_if(&pending.key(), condition).await
}

async fn reseal(
    deps: &OauthDeps,
    provider: &Provider,
    tenant: &TenantId,
    pending: &PendingInstall,
) -> Result<Connection, OauthError> {
    let move_token = |from: Purpose, to: Purpose, sealed: Sealed| async move {
        let context = install_context(&provider.name, &pending.installation, from)?;
        let token = deps.sealer.open(&context, &sealed).await?;
        deps.sealer
            .seal(&seal_context(tenant, &provider.name, to), &token)
            .await
            .map_err(OauthError::from)
    };
    let access_token = move_token(
        Purpose::InstallAccessToken,
        Purpose::OauthAccessToken,
        pending.access_token.clone(),
    )
    .await?;
    let refresh_token = match &pending.refresh_token {
        Some(sealed) => Some(
            move_token(
                Purpose::InstallRefreshToken,
                Purpose::OauthRefreshToken,
                sealed.clone(),
            )
            .await?,
        ),
        None => None,
    };
    Ok(Connection {
        tenant: tenant.clone(),
        provider: provider.name.clone(),
        status: ConnectionStatus::Active,
        account: pending.account.clone(),
        scopes: pending.scopes.clone(),
        access_token,
        refresh_token,
        access_expires_at: pending.access_expires_at,
        connected_at: deps.now(),
        refreshed_at: None,
        version: 1,
        lease_owner: None,
        lease_until: None,
    })
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// Unclaimed installs deleted.
    pub expired: usize,
    /// Of those, grants the provider confirmed revoked.
    pub revoked: usize,
    /// Corroborating webhooks past their time, deleted.
    pub notices: usize,
}

/// Deletes every install and notice past its time, revoking an unclaimed install's
/// grant first where the provider has an endpoint. Reads past the read filter on
/// purpose: expired items are exactly what it is for.
pub async fn sweep_expired(deps: &OauthDeps) -> Result<Swept, OauthError> {
    let mut swept = Swept::default();
    for name in deps.config.providers.names() {
        let provider = deps.provider(name)?;
        if provider.marketplace_app_id.is_none() {
            continue;
        }
        for item in all_items(&deps.store, &keys::installations(name)).await? {
            if !deps.store.is_expired(&item) {
                continue;
            }
            let sk = match item.get("sk") {
                Some(AttributeValue::S(sk)) => sk.clone(),
                _ => continue,
            };
            let pk = keys::installations(name);
            if sk.starts_with("P#") {
                let pending: PendingInstall = Store::decode(item)?;
                if revoke(deps, provider, &pending).await {
                    swept.revoked += 1;
                }
                swept.expired += 1;
            } else {
                swept.notices += 1;
            }
            deps.store.delete(&Key::new(pk, sk)).await?;
        }
    }
    if swept.expired > 0 {
        tracing::info!(
            expired = swept.expired,
            revoked = swept.revoked,
            "unclaimed Marketplace installs deleted"
        );
    }
    Ok(swept)
}

/// Every item of a partition, expired ones included.
async fn all_items(store: &Store, pk: &str) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = store
            .client()
            .query()
            .table_name(store.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|err| StoreError::Dynamo(crate::kernel::aws::error_text(&err)))?;
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// Best effort: an unreachable provider leaves the grant valid there until it expires
/// (counted in `ProviderRevocationsFailed`, alarmed, as for deleted connections); the
/// tokens are deleted here regardless.
async fn revoke(deps: &OauthDeps, provider: &Provider, pending: &PendingInstall) -> bool {
    if provider.revocation_url.is_none() {
        return false;
    }
    let revoked = super::revoke_sealed(
        deps,
        provider,
        pending.refresh_token.as_ref(),
        &pending.access_token,
        |purpose| install_context(&provider.name, &pending.installation, purpose),
        (Purpose::InstallRefreshToken, Purpose::InstallAccessToken),
    )
    .await;
    match revoked {
        Ok(true) => true,
        outcome => {
            crate::kernel::metrics::count(
                crate::kernel::metrics::names::PROVIDER_REVOCATIONS_FAILED,
                1,
            );
            let error = outcome
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "refused".into());
            tracing::error!(provider = %provider.name, error = %error, "revoking an unclaimed install failed; its tokens are deleted regardless");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::table::{row, shown};

    #[test]
    fn the_unclaimed_seal_tenant_parses() {
        assert!(TenantId::parse(UNCLAIMED).is_ok());
    }

    #[test]
    fn installation_ids() {
        let location = ProviderAccount {
            location_id: Some("loc1".into()),
            company_id: Some("co1".into()),
            user_type: Some("Location".into()),
            subject: None,
        };
        assert_eq!(installation_id(&location).as_deref(), Some("location:loc1"));
        let company = ProviderAccount {
            user_type: Some("Company".into()),
            ..location.clone()
        };
        assert_eq!(installation_id(&company).as_deref(), Some("company:co1"));
        assert_eq!(installation_id(&ProviderAccount::default()), None);
        assert!(valid_installation("location:abc-1"));
        assert!(!valid_installation("tenant:abc"));
        assert!(!valid_installation("location:"));
        assert!(!valid_installation("location:a b"));
    }

    #[test]
    fn every_claim_error_has_its_http_answer() {
        let invalid = ClaimError::Invalid {
            field: "claim_token",
            reason: "x",
        };
        assert_eq!(
            row(&invalid),
            shown(400, "invalid-request", Some("claim_token"))
        );
        assert_eq!(
            row(&ClaimError::NotFound),
            shown(404, "installation-not-found", Some("installation"))
        );
        assert_eq!(
            row(&ClaimError::WrongClaimToken),
            shown(403, "claim-refused", Some("claim_token"))
        );
        assert_eq!(
            row(&ClaimError::WrongBrowser),
            shown(403, "claim-refused", Some(INSTALL_COOKIE))
        );
        assert_eq!(
            row(&ClaimError::Unconfirmed),
            shown(409, "install-unconfirmed", None)
        );
        assert_eq!(
            row(&ClaimError::HeldByAnotherTenant),
            shown(409, "installation-held", Some("installation"))
        );
    }
}

//! The authorization-code flow (RFC 6749, RFC 7636 PKCE, RFC 9207 `iss`, RFC 9700).
//!
//! `start` stores a single-use state (random nonce → tenant, provider, sealed PKCE
//! verifier, expected issuer, return URL, and the hash of a browser-binding value
//! that goes to the browser as a cookie) with the OAuth-state retention (10 minutes).
//! `complete` consumes it with one conditional delete, so a state works once, and
//! checks everything before the code is exchanged.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use super::{
    Connection, ConnectionStatus, OauthDeps, OauthError, ProviderKind, expiry, seal_context,
    store_connection,
};
use crate::kernel::audit::Event;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::retention::RetentionClass;
use crate::kernel::seal::{Purpose, SealContext, Sealed};
use crate::kernel::store::{Entity, Key, keys};
use crate::kernel::tenant::TenantId;

/// Longest `state` a callback may carry (ours are 43 characters).
pub const MAX_STATE_LEN: usize = 128;
/// Longest authorization `code` accepted.
pub const MAX_CODE_LEN: usize = 2048;

/// Name of the cookie that binds a flow to the browser that started it.
pub const BINDING_COOKIE: &str = "__Host-custody-oauth";

/// The pending authorization: `STATE#<nonce>` / `STATE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OauthState {
    pub nonce: String,
    pub tenant: TenantId,
    pub provider: String,
    /// Who started it (`user:<sub>`), for the audit entry of the connection.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkce_verifier: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    pub return_url: String,
    /// SHA-256 (hex) of the browser-binding cookie value.
    pub binding_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: i64,
}

impl Entity for OauthState {
    const KIND: &'static str = "oauth_state";

    fn key(&self) -> Key {
        state_key(&self.nonce)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

pub fn state_key(nonce: &str) -> Key {
    Key::new(keys::oauth_state(nonce), "STATE")
}

/// The record of the PKCE verifier's seal: the state it belongs to.
pub fn pkce_context(tenant: &TenantId, nonce: &str) -> SealContext {
    SealContext::new(tenant, Purpose::OauthPkceVerifier, keys::oauth_state(nonce))
}

/// 256 random bits, base64url: states, binding values, claim tokens.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 (hex) of a browser-held secret: what is stored instead of it.
pub(crate) fn binding_hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A started flow: send the browser to `authorize_url` with the binding cookie.
#[derive(Debug)]
pub struct Started {
    pub authorize_url: Url,
    pub state: String,
    /// The cookie value; a secret of this browser until the callback.
    pub binding: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("return URL is not on the allow-list")]
    ReturnUrlNotAllowed,
    #[error("return URL is not a valid absolute URL")]
    ReturnUrlInvalid,
    #[error(transparent)]
    Oauth(#[from] OauthError),
}

impl HttpError for StartError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            StartError::ReturnUrlNotAllowed | StartError::ReturnUrlInvalid => {
                HttpAnswer::bad_request("return_url", self.to_string())
            }
            StartError::Oauth(e) => e.answer(),
        }
    }
}

/// Starts a connection for `tenant` to `provider`.
pub async fn start(
    deps: &OauthDeps,
    tenant: &TenantId,
    actor: &str,
    provider_name: &str,
    return_url: Option<&str>,
) -> Result<Started, StartError> {
    let provider = deps.provider(provider_name)?;
    super::ensure_open(deps, tenant).await?;
    let return_url = match return_url {
        Some(text) => Url::parse(text).map_err(|_| StartError::ReturnUrlInvalid)?,
        None => deps
            .config
            .return_urls
            .first()
            .cloned()
            .ok_or_else(|| OauthError::Config("no return URL is configured".into()))?,
    };
    if !deps.config.return_url_allowed(&return_url) {
        return Err(StartError::ReturnUrlNotAllowed);
    }
    let redirect_uri = deps.config.redirect_uri(&provider.name)?;
    let nonce = random_token();
    let binding = random_token();
    let verifier = provider.pkce.then(|| SecretString::from(random_token()));
    let sealed_verifier = match &verifier {
        Some(verifier) => Some(
            deps.sealer
                .seal(&pkce_context(tenant, &nonce), verifier)
                .await
                .map_err(OauthError::from)?,
        ),
        None => None,
    };
    let now = deps.now();
    let state = OauthState {
        nonce: nonce.clone(),
        tenant: tenant.clone(),
        provider: provider.name.clone(),
        actor: actor.to_owned(),
        pkce_verifier: sealed_verifier,
        issuer: provider.issuer.clone(),
        return_url: return_url.to_string(),
        binding_hash: binding_hash(&binding),
        created_at: now,
        expires_at: RetentionClass::OauthState
            .expires_at(now)
            .unwrap_or_else(|| now.timestamp() + 600),
    };
    deps.store.create(&state).await.map_err(OauthError::from)?;
    let authorize_url = provider.authorize_url(&redirect_uri, &nonce, verifier.as_ref())?;
    Ok(Started {
        authorize_url,
        state: nonce,
        binding: SecretString::from(binding),
    })
}

/// The query of the redirect back from the provider.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub iss: Option<String>,
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("the callback carries no state")]
    MissingState,
    #[error("the state is unknown, already used or expired")]
    UnknownState,
    #[error("the state was issued for another provider")]
    WrongProvider,
    #[error("the state was issued to another browser")]
    WrongBrowser,
    #[error("the provider reported an error: {0}")]
    ProviderError(String),
    #[error("the authorization response came from another issuer")]
    IssuerMismatch,
    #[error("the authorization response carries no code")]
    MissingCode,
    #[error("the provider did not identify the account")]
    MissingAccount,
    #[error(transparent)]
    Oauth(#[from] OauthError),
}

impl CallbackError {
    /// The short code the browser is sent back with (`?result=…`).
    pub fn result_code(&self) -> &'static str {
        match self {
            Self::MissingState | Self::UnknownState | Self::WrongProvider | Self::WrongBrowser => {
                "invalid_state"
            }
            Self::ProviderError(code) if code == "access_denied" => "access_denied",
            Self::ProviderError(_) => "provider_error",
            Self::IssuerMismatch => "issuer_mismatch",
            Self::MissingCode => "invalid_request",
            Self::MissingAccount => "provider_error",
            Self::Oauth(OauthError::InvalidGrant(_)) => "exchange_failed",
            Self::Oauth(OauthError::Provider { .. }) => "provider_error",
            Self::Oauth(_) => "internal_error",
        }
    }
}

/// A refused callback, with where the browser may be sent (only once the state was
/// found valid: before that there is no trusted return URL).
#[derive(Debug)]
pub struct CallbackFailure {
    pub error: CallbackError,
    pub return_url: Option<Url>,
}

impl From<CallbackError> for Box<CallbackFailure> {
    fn from(error: CallbackError) -> Self {
        Box::new(CallbackFailure {
            error,
            return_url: None,
        })
    }
}

#[derive(Debug)]
pub struct Completed {
    pub tenant: TenantId,
    pub provider: String,
    pub return_url: Url,
}

/// Completes a flow: consume the state, check it, exchange the code, store the
/// sealed tokens, audit. Every refusal stores nothing.
pub async fn complete(
    deps: &OauthDeps,
    provider_name: &str,
    params: &CallbackParams,
    binding_cookie: Option<&str>,
) -> Result<Completed, Box<CallbackFailure>> {
    let nonce = params
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= MAX_STATE_LEN)
        .ok_or(CallbackError::MissingState)?;
    // Consumed before anything else: whatever follows, this state never works again.
    let state: OauthState = deps
        .store
        .take(&state_key(nonce))
        .await
        .map_err(|e| CallbackError::Oauth(e.into()))?
        .ok_or(CallbackError::UnknownState)?;
    if state.provider != provider_name {
        return Err(CallbackError::WrongProvider.into());
    }
    let same_browser =
        binding_cookie.is_some_and(|value| binding_hash(value) == state.binding_hash);
    if !same_browser {
        return Err(CallbackError::WrongBrowser.into());
    }
    // Checked against the allow-list when the flow started.
    let return_url = Url::parse(&state.return_url).map_err(|_| CallbackError::UnknownState)?;
    match finish(deps, &state, params).await {
        Ok(()) => Ok(Completed {
            tenant: state.tenant,
            provider: state.provider,
            return_url,
        }),
        Err(error) => Err(Box::new(CallbackFailure {
            error,
            return_url: Some(return_url),
        })),
    }
}

async fn finish(
    deps: &OauthDeps,
    state: &OauthState,
    params: &CallbackParams,
) -> Result<(), CallbackError> {
    let provider = deps.provider(&state.provider)?;
    if let Some(error) = &params.error {
        // Only a short, known-shaped code is echoed anywhere.
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(40)
            .collect();
        return Err(CallbackError::ProviderError(code));
    }
    // Mix-up defence: the response must come from the issuer this flow was sent to.
    match (&state.issuer, &params.iss) {
        (Some(expected), Some(actual)) if expected != actual => {
            return Err(CallbackError::IssuerMismatch);
        }
        (Some(_), None) if provider.requires_iss => return Err(CallbackError::IssuerMismatch),
        // No issuer configured: nothing to compare against (HighLevel sends none).
        _ => {}
    }
    let code = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= MAX_CODE_LEN)
        .ok_or(CallbackError::MissingCode)?;
    let verifier = match &state.pkce_verifier {
        Some(sealed) => Some(
            deps.sealer
                .open(&pkce_context(&state.tenant, &state.nonce), sealed)
                .await
                .map_err(OauthError::from)?,
        ),
        None => None,
    };
    // The account may have entered deletion since the flow started.
    super::ensure_open(deps, &state.tenant).await?;
    let redirect_uri = deps.config.redirect_uri(&provider.name)?;
    let secret = deps.secrets.get(&provider.name).await?;
    let issued = provider
        .exchange_code(&deps.http, &secret, &redirect_uri, code, verifier.as_ref())
        .await?;
    let mut account = issued.account.clone();
    match provider.kind {
        ProviderKind::Highlevel => {
            if account.location_id.is_none() && account.company_id.is_none() {
                return Err(CallbackError::MissingAccount);
            }
        }
        ProviderKind::Google => {
            account.subject = provider
                .userinfo_subject(&deps.http, &issued.access_token)
                .await?;
            if account.subject.is_none() {
                return Err(CallbackError::MissingAccount);
            }
        }
        ProviderKind::Generic => {
            if provider.userinfo_url.is_some() {
                account.subject = provider
                    .userinfo_subject(&deps.http, &issued.access_token)
                    .await?;
            }
        }
    }
    let now = deps.now();
    let access_token = deps
        .sealer
        .seal(
            &seal_context(&state.tenant, &provider.name, Purpose::OauthAccessToken),
            &issued.access_token,
        )
        .await
        .map_err(OauthError::from)?;
    let refresh_token = match &issued.refresh_token {
        Some(token) if !token.expose_secret().is_empty() => Some(
            deps.sealer
                .seal(
                    &seal_context(&state.tenant, &provider.name, Purpose::OauthRefreshToken),
                    token,
                )
                .await
                .map_err(OauthError::from)?,
        ),
        _ => None,
    };
    let connection = Connection {
        tenant: state.tenant.clone(),
        provider: provider.name.clone(),
        status: ConnectionStatus::Active,
        account,
        scopes: issued.scopes.unwrap_or_else(|| provider.scopes.clone()),
        access_token,
        refresh_token,
        access_expires_at: expiry(now, issued.expires_in),
        connected_at: now,
        refreshed_at: None,
        version: 1,
        lease_owner: None,
        lease_until: None,
    };
    let previous = deps
        .store
        .get::<Connection>(&super::connection_key(&state.tenant, &provider.name))
        .await
        .map_err(OauthError::from)?;
    store_connection(deps, &connection).await?;
    deps.audit
        .append(
            &state.tenant,
            Event::new(
                state.actor.clone(),
                "connection.created",
                crate::kernel::store::keys::connection(&provider.name),
            )
            .detail("scopes", connection.scopes.join(" ")),
        )
        .await
        .map_err(OauthError::from)?;
    // A reconnect to another account leaves the old account's grant valid at the
    // provider unless it is revoked here. To the same account it is not: at providers
    // where revoking one token ends the whole grant (Google), that would end the new
    // connection too; the new grant supersedes the old one there.
    if let Some(old) = previous
        && old.account != connection.account
    {
        super::revoke_replaced(deps, provider, &old, &state.actor).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::table::{row, shown};

    #[test]
    fn every_start_error_has_its_http_answer() {
        for err in [
            StartError::ReturnUrlNotAllowed,
            StartError::ReturnUrlInvalid,
        ] {
            let want = shown(400, "invalid-request", Some("return_url"));
            assert_eq!(row(&err), want, "{err}");
        }
        let err = StartError::Oauth(OauthError::UnknownProvider);
        assert_eq!(row(&err), row(&OauthError::UnknownProvider));
    }
}

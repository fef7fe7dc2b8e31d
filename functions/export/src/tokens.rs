//! Where the worker gets a HighLevel access token: behind a small trait, so the worker
//! is tested against the simulated API with tokens it accepts. Production asks
//! `custody::oauth`, which refreshes (single-flight) and reports a connection that
//! needs the customer to authorize again.

use std::future::Future;
use std::pin::Pin;

use custody::TenantId;
use secrecy::SecretString;

/// The OAuth provider name of HighLevel connections.
pub const PROVIDER: &str = "highlevel";

/// A live token and the location (sub-account) it is for.
#[derive(Debug, Clone)]
pub struct HighLevelToken {
    pub access_token: SecretString,
    pub location_id: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("HighLevel is not connected")]
    NotConnected,
    #[error("the HighLevel connection must be authorized again")]
    NeedsReconsent,
    #[error("the HighLevel connection has no location (agency-level tokens cannot export)")]
    NoLocation,
    #[error("token could not be obtained: {0}")]
    Unavailable(String),
}

pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<HighLevelToken, TokenError>> + Send + 'a>>;

pub trait TokenSource: Send + Sync {
    fn access_token<'a>(&'a self, tenant: &'a TenantId) -> TokenFuture<'a>;
}

/// Tokens from the tenant's stored HighLevel connection.
#[derive(Debug, Clone)]
pub struct OauthTokens {
    pub deps: custody::oauth::OauthDeps,
}

impl TokenSource for OauthTokens {
    fn access_token<'a>(&'a self, tenant: &'a TenantId) -> TokenFuture<'a> {
        Box::pin(async move {
            use custody::oauth::OauthError;
            match custody::oauth::access_token(&self.deps, tenant, PROVIDER).await {
                Ok(token) => Ok(HighLevelToken {
                    access_token: token.token,
                    location_id: token.account.location_id.ok_or(TokenError::NoLocation)?,
                }),
                Err(OauthError::NotConnected(_)) => Err(TokenError::NotConnected),
                Err(OauthError::NeedsReconsent(_)) => Err(TokenError::NeedsReconsent),
                Err(other) => Err(TokenError::Unavailable(other.to_string())),
            }
        })
    }
}

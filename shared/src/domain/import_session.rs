//! Import sessions: a short-lived token that lets a page embedding
//! `<custody-importer>` create imports, and only imports, for one tenant.
//!
//! An operator mints a session (`POST /import-sessions`) for a destination it fixes;
//! the SaaS app hands the token to its page. The page then calls the `/embed/imports…`
//! routes, which API Gateway leaves unauthenticated: the import function checks the
//! token here. The token never reaches any other route (the JWT authorizer refuses
//! it), a session sees only the imports it created, and the destination (with its
//! secret) is the session's, so the page's user can neither choose where rows go nor
//! learn the signing secret.
//!
//! The token is `cis_<id>_<secret>`: the id finds the record, and only the SHA-256 of
//! the whole token is stored. A record lives minutes
//! ([`RetentionClass::ImportSession`]'s ceiling; TTL plus the read filter), and
//! revoking deletes it.

use chrono::{DateTime, Utc};
use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernel::http::{HttpAnswer, HttpError, ProblemKind};
use crate::kernel::retention::RetentionClass;
use crate::kernel::seal::{Purpose, SealContext, Sealed};
use crate::kernel::store::{Condition, Entity, Key, Store, StoreError};
use crate::kernel::tenant::TenantId;

/// Every token starts with this (so a leaked one is recognisable in a secret scan).
pub const TOKEN_PREFIX: &str = "cis_";
/// Partition-key prefix of session records; the import role's `dynamodb:LeadingKeys`
/// allows it (a template test holds that).
pub const KEY_PREFIX: &str = "ISESSION#";
/// Shortest lifetime a session may ask for, in minutes.
pub const MIN_LIFETIME_MINUTES: i64 = 1;
/// Longest lifetime: the retention class's number.
pub const MAX_LIFETIME_MINUTES: i64 = 60;
/// The lifetime when none is asked for.
pub const DEFAULT_LIFETIME_MINUTES: i64 = 15;
/// Longest token accepted (ours are 80 characters).
pub const MAX_TOKEN_LEN: usize = 128;
/// Longest `origin` accepted.
pub const MAX_ORIGIN_LEN: usize = 256;

/// Characters of a session id (hex of 16 random bytes).
const ID_LEN: usize = 32;

/// A minted session: `ISESSION#<id>` / `SESSION`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportSession {
    pub id: String,
    pub tenant: TenantId,
    /// SHA-256 (hex) of the whole token.
    pub token_hash: String,
    /// The only `Origin` its requests may come from, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub destination_url: String,
    /// Sealed under [`session_seal_context`].
    pub destination_secret: Sealed,
    /// The audit actor who minted it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Epoch seconds.
    pub expires_at: i64,
}

impl Entity for ImportSession {
    const KIND: &'static str = "import_session";

    fn key(&self) -> Key {
        session_key(&self.id)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

impl ImportSession {
    /// The audit actor of what the session does: `import-session:<id>`.
    pub fn actor(&self) -> String {
        actor(&self.id)
    }

    /// The destination's host, as listings show it.
    pub fn destination_host(&self) -> String {
        url::Url::parse(&self.destination_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// The audit actor of session `id`.
pub fn actor(id: &str) -> String {
    format!("import-session:{id}")
}

pub fn session_key(id: &str) -> Key {
    Key::new(format!("{KEY_PREFIX}{id}"), "SESSION")
}

/// Where the session's destination secret is sealed (the import function's
/// webhook-secret purpose, bound to the session's record).
pub fn session_seal_context(tenant: &TenantId, id: &str) -> SealContext {
    SealContext::new(tenant, Purpose::WebhookSecret, format!("{KEY_PREFIX}{id}"))
}

/// A fresh session id and its token.
pub fn new_token() -> (String, SecretString) {
    let id = hex::encode(rand::random::<[u8; 16]>());
    let secret = hex::encode(rand::random::<[u8; 22]>());
    let token = SecretString::from(format!("{TOKEN_PREFIX}{id}_{secret}"));
    (id, token)
}

/// SHA-256 (hex) of a token: what is stored instead of it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The lifetime asked for, checked against the bounds.
pub fn lifetime(minutes: Option<i64>) -> Result<chrono::Duration, SessionError> {
    let minutes = minutes.unwrap_or(DEFAULT_LIFETIME_MINUTES);
    if !(MIN_LIFETIME_MINUTES..=MAX_LIFETIME_MINUTES).contains(&minutes) {
        return Err(SessionError::Invalid {
            field: "lifetime_minutes",
            reason: "lifetime_minutes must be between 1 and 60",
        });
    }
    Ok(chrono::Duration::minutes(minutes))
}

/// An `origin` as browsers send it: `https://host[:port]` (or `http://` for a
/// loopback host, which browsers treat as secure), nothing after it. Returned in
/// the form the `Origin` header carries, so comparing is exact.
pub fn origin(raw: &str) -> Result<String, SessionError> {
    let invalid = |reason| SessionError::Invalid {
        field: "origin",
        reason,
    };
    if raw.len() > MAX_ORIGIN_LEN {
        return Err(invalid("origin must be at most 256 characters"));
    }
    let url = url::Url::parse(raw).map_err(|_| invalid("origin must be a URL origin"))?;
    if url.cannot_be_a_base()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid(
            "origin must be scheme://host[:port] with no path, query or credentials",
        ));
    }
    let loopback = matches!(
        url.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(invalid("origin must use https (http only for localhost)")),
    }
    Ok(url.origin().ascii_serialization())
}

/// The session a request's `Authorization: Bearer` token names, if it is live and
/// the request comes from its origin.
pub async fn authenticate(
    store: &Store,
    authorization: Option<&str>,
    request_origin: Option<&str>,
) -> Result<ImportSession, SessionError> {
    let header = authorization.ok_or(SessionError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(SessionError::Missing)?;
    let id = parse_token(token)?;
    // The store's read filter leaves out an expired record before TTL deletes it.
    let session: ImportSession = store
        .get(&session_key(id))
        .await?
        .ok_or(SessionError::Refused)?;
    // Hashes are compared, as for claim tokens: how long a mismatch takes says nothing
    // about the token.
    if token_hash(token) != session.token_hash {
        return Err(SessionError::Refused);
    }
    if let Some(origin) = &session.origin
        && request_origin != Some(origin.as_str())
    {
        return Err(SessionError::WrongOrigin);
    }
    Ok(session)
}

/// The id inside a well-formed token.
fn parse_token(token: &str) -> Result<&str, SessionError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(SessionError::Malformed);
    }
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(SessionError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(SessionError::Malformed)?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if id.len() != ID_LEN || !hex(id) || secret.is_empty() || !hex(secret) {
        return Err(SessionError::Malformed);
    }
    Ok(id)
}

/// Deletes `tenant`'s session `id`; false when there was none (never made, expired,
/// already revoked, or another tenant's).
pub async fn revoke(store: &Store, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    store
        .delete_if(
            &session_key(id),
            Condition::new("#tenant = :tenant")
                .name("#tenant", "tenant")
                .value(
                    ":tenant",
                    aws_sdk_dynamodb::types::AttributeValue::S(tenant.to_string()),
                ),
        )
        .await
}

/// The retention class of session records.
pub const RETENTION: RetentionClass = RetentionClass::ImportSession;

/// What went wrong with a session or its token.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// 400, naming the field.
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// 401: no bearer token.
    #[error("an import-session token is required (Authorization: Bearer cis_…)")]
    Missing,
    /// 401: not a token of ours.
    #[error("the import-session token is malformed")]
    Malformed,
    /// 401: unknown, expired or revoked (one answer, so nothing is learnt).
    #[error("the import-session token is unknown, expired or revoked")]
    Refused,
    /// 403: the session is bound to another origin.
    #[error("this import session is bound to another origin")]
    WrongOrigin,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HttpError for SessionError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            SessionError::Invalid { field, .. } => {
                HttpAnswer::bad_request(*field, self.to_string())
            }
            SessionError::Missing | SessionError::Malformed | SessionError::Refused => {
                HttpAnswer::unauthorized(self.to_string())
            }
            SessionError::WrongOrigin => HttpAnswer::new(
                StatusCode::FORBIDDEN,
                ProblemKind::new("wrong-origin", "Wrong origin"),
                self.to_string(),
            ),
            SessionError::Store(e) => e.answer(),
        }
    }
}

/// The session as its minter sees it (never the token's hash or the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: String,
    pub origin: Option<String>,
    pub destination_host: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl From<&ImportSession> for SessionView {
    fn from(s: &ImportSession) -> Self {
        Self {
            id: s.id.clone(),
            origin: s.origin.clone(),
            destination_host: s.destination_host(),
            created_at: s.created_at,
            expires_at: DateTime::from_timestamp(s.expires_at, 0).unwrap_or(s.created_at),
        }
    }
}

/// Exposes a freshly minted token once, for the minting response.
pub fn reveal(token: &SecretString) -> String {
    token.expose_secret().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_only_their_hash_matches() {
        let (id, token) = new_token();
        let raw = token.expose_secret();
        assert!(raw.starts_with(TOKEN_PREFIX));
        assert!(raw.len() <= MAX_TOKEN_LEN);
        assert_eq!(parse_token(raw).ok(), Some(id.as_str()));
        let (_, other) = new_token();
        assert_ne!(token_hash(raw), token_hash(other.expose_secret()));
        for bad in [
            "",
            "cis_",
            "cis_abc_def",
            "xyz_00000000000000000000000000000000_aa",
            "cis_0000000000000000000000000000000G_aa",
            "cis_00000000000000000000000000000000_",
            "cis_00000000000000000000000000000000_zz",
            &format!("{raw}{}", "a".repeat(MAX_TOKEN_LEN)),
        ] {
            assert!(
                matches!(parse_token(bad), Err(SessionError::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn origins_are_exact_and_secure() {
        assert_eq!(
            origin("https://app.example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            origin("https://App.Example.com:8443").unwrap(),
            "https://app.example.com:8443"
        );
        assert_eq!(
            origin("https://app.example.com:443").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            origin("http://localhost:5173").unwrap(),
            "http://localhost:5173"
        );
        assert_eq!(origin("http://127.0.0.1:9").unwrap(), "http://127.0.0.1:9");
        for bad in [
            "app.example.com",
            "http://app.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "https://app.example.com#x",
            "https://user@app.example.com",
            "https://app.example.com//",
            "ftp://app.example.com",
            "javascript:alert(1)",
            "null",
        ] {
            assert!(
                matches!(
                    origin(bad),
                    Err(SessionError::Invalid {
                        field: "origin",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(origin(&format!("https://{}.com", "a".repeat(300))).is_err());
    }

    #[test]
    fn lifetimes_are_bounded() {
        assert_eq!(lifetime(None).unwrap(), chrono::Duration::minutes(15));
        assert_eq!(lifetime(Some(60)).unwrap(), chrono::Duration::minutes(60));
        for bad in [0, -1, 61, i64::MAX] {
            assert!(lifetime(Some(bad)).is_err());
        }
        assert_eq!(
            RETENTION.duration(),
            Some(chrono::Duration::minutes(MAX_LIFETIME_MINUTES))
        );
    }
}

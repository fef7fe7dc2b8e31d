//! HighLevel marketplace webhooks (`INSTALL`, `UNINSTALL`): verified before anything
//! is read from them, then acted on once.
//!
//! Verification is over the raw body: RSA-SHA256 (PKCS#1 v1.5) in `x-wh-signature`
//! with the public key HighLevel documents, or Ed25519 in `x-ghl-signature` when a key
//! for that scheme is configured. Then the payload's `timestamp` must be within five
//! minutes, and its `webhookId` must be new: a receipt item is created with a
//! conditional write (TTL), so a replay finds it and has no effect. A delivery whose
//! processing fails removes its receipt, so the provider's retry runs again.

use aws_lc_rs::signature::{ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use http::StatusCode;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AccountLink, OauthDeps, OauthError, delete_if_account};
use crate::domain::schedule::ExportSchedules;
use crate::kernel::audit::Event;
use crate::kernel::http::{HttpAnswer, HttpError, ProblemKind};
use crate::kernel::retention::RetentionClass;
use crate::kernel::store::{Entity, Key, StoreError, keys};

/// Environment variables of the webhook keys.
pub mod vars {
    /// PEM (`BEGIN PUBLIC KEY`) of HighLevel's RSA webhook key.
    pub const HIGHLEVEL_RSA_KEY: &str = "CUSTODY_HIGHLEVEL_WEBHOOK_RSA_KEY";
    /// Optional: PEM or base64 raw key for the Ed25519 `x-ghl-signature` scheme.
    pub const HIGHLEVEL_ED25519_KEY: &str = "CUSTODY_HIGHLEVEL_WEBHOOK_ED25519_KEY";
}

pub const RSA_SIGNATURE_HEADER: &str = "x-wh-signature";
pub const ED25519_SIGNATURE_HEADER: &str = "x-ghl-signature";
/// How far a webhook's `timestamp` may be from now.
pub const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(5);
/// Largest body accepted (marketplace events are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const PROVIDER: &str = "highlevel";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook key configuration: {0}")]
    Config(String),
    #[error("webhook signature is missing or does not verify")]
    BadSignature,
    #[error("webhook body is too large")]
    TooLarge,
    #[error("webhook payload is malformed: {0}")]
    Malformed(&'static str),
    #[error("webhook timestamp is outside the accepted window")]
    Stale,
    #[error("webhook id was already used for another payload")]
    ReplayedId,
    #[error(transparent)]
    Oauth(#[from] OauthError),
}

impl HttpError for WebhookError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            WebhookError::BadSignature => HttpAnswer::new(
                StatusCode::UNAUTHORIZED,
                ProblemKind::new("bad-signature", "Bad signature"),
                self.to_string(),
            ),
            WebhookError::TooLarge => HttpAnswer::payload_too_large(MAX_BODY_BYTES),
            WebhookError::Malformed(field) => HttpAnswer::bad_request(*field, self.to_string()),
            WebhookError::Stale => HttpAnswer::bad_request("timestamp", self.to_string()),
            WebhookError::ReplayedId => {
                HttpAnswer::conflict(self.to_string()).with_field("webhookId")
            }
            WebhookError::Oauth(e) => e.answer(),
            WebhookError::Config(_) => {
                HttpAnswer::internal_logged("webhook configuration error", self)
            }
        }
    }
}

/// The public keys webhooks are verified with.
#[derive(Clone)]
pub struct WebhookKeys {
    rsa: Option<ParsedPublicKey>,
    ed25519: Option<ParsedPublicKey>,
}

impl std::fmt::Debug for WebhookKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookKeys")
            .field("rsa", &self.rsa.is_some())
            .field("ed25519", &self.ed25519.is_some())
            .finish()
    }
}

fn spki_from_pem(pem: &str) -> Result<Vec<u8>, WebhookError> {
    SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| WebhookError::Config(format!("not a PEM public key: {e}")))
}

impl WebhookKeys {
    /// At least one key is required: an unverifiable webhook is never acted on.
    pub fn new(rsa_pem: Option<&str>, ed25519: Option<&str>) -> Result<Self, WebhookError> {
        let rsa = rsa_pem
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pem| {
                ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, spki_from_pem(pem)?)
                    .map_err(|e| WebhookError::Config(format!("RSA key rejected: {e}")))
            })
            .transpose()?;
        let ed25519 = ed25519
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|key| {
                let bytes = if key.starts_with("-----BEGIN") {
                    spki_from_pem(key)?
                } else {
                    STANDARD.decode(key).map_err(|_| {
                        WebhookError::Config("Ed25519 key is neither PEM nor base64".into())
                    })?
                };
                ParsedPublicKey::new(&ED25519, bytes)
                    .map_err(|e| WebhookError::Config(format!("Ed25519 key rejected: {e}")))
            })
            .transpose()?;
        if rsa.is_none() && ed25519.is_none() {
            return Err(WebhookError::Config(format!(
                "set {} (and optionally {})",
                vars::HIGHLEVEL_RSA_KEY,
                vars::HIGHLEVEL_ED25519_KEY
            )));
        }
        Ok(Self { rsa, ed25519 })
    }

    pub fn from_env() -> Result<Self, WebhookError> {
        let rsa = std::env::var(vars::HIGHLEVEL_RSA_KEY).ok();
        let ed = std::env::var(vars::HIGHLEVEL_ED25519_KEY).ok();
        Self::new(rsa.as_deref(), ed.as_deref())
    }

    /// Verifies the body's signature. The Ed25519 header is used when present and a
    /// key for it is configured; otherwise the RSA header. Either must verify.
    pub fn verify(
        &self,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
    ) -> Result<(), WebhookError> {
        let check = |key: &ParsedPublicKey, signature: &str| {
            let signature = STANDARD
                .decode(signature.trim())
                .map_err(|_| WebhookError::BadSignature)?;
            key.verify_sig(body, &signature)
                .map_err(|_| WebhookError::BadSignature)
        };
        if let (Some(key), Some(signature)) = (&self.ed25519, header(ED25519_SIGNATURE_HEADER)) {
            return check(key, &signature);
        }
        if let (Some(key), Some(signature)) = (&self.rsa, header(RSA_SIGNATURE_HEADER)) {
            return check(key, &signature);
        }
        Err(WebhookError::BadSignature)
    }
}

/// The fields of a marketplace event custody reads.
#[derive(Debug, Clone, Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "webhookId")]
    webhook_id: String,
    timestamp: serde_json::Value,
    #[serde(rename = "locationId", default)]
    location_id: Option<String>,
    #[serde(rename = "companyId", default)]
    company_id: Option<String>,
    #[serde(rename = "appId", default)]
    app_id: Option<String>,
    /// `Location` or `Company` (an agency-level install).
    #[serde(rename = "installType", default)]
    install_type: Option<String>,
}

fn parse_timestamp(value: &serde_json::Value) -> Option<DateTime<Utc>> {
    match value {
        serde_json::Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        serde_json::Value::Number(n) => {
            let n = n.as_i64()?;
            // Milliseconds since the epoch when it is that large, else seconds.
            if n > 100_000_000_000 {
                DateTime::from_timestamp_millis(n)
            } else {
                DateTime::from_timestamp(n, 0)
            }
        }
        _ => None,
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Proof a webhook id was seen: `WH#highlevel#<id>` / `WH`, kept one day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookReceipt {
    pub webhook_id: String,
    /// The marketplace event type (`INSTALL`, `UNINSTALL`, …).
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    pub payload_hash: String,
    pub received_at: DateTime<Utc>,
    pub expires_at: i64,
}

impl Entity for WebhookReceipt {
    const KIND: &'static str = "webhook_receipt";

    fn key(&self) -> Key {
        receipt_key(&self.webhook_id)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

pub fn receipt_key(webhook_id: &str) -> Key {
    Key::new(keys::webhook_receipt(PROVIDER, webhook_id), "WH")
}

/// What a verified delivery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WebhookOutcome {
    /// `UNINSTALL`: these many connections were deleted.
    Uninstalled { connections_deleted: usize },
    /// `INSTALL` of our app: kept as the corroboration of the Marketplace install
    /// (`custody::oauth::install`); the connection is made by a claim or the flow.
    Installed,
    /// The same delivery again: acknowledged, no effect.
    Duplicate,
    /// An event type custody does not act on: acknowledged so it is not retried.
    Ignored,
}

/// Verifies and handles one HighLevel webhook delivery.
pub async fn handle_highlevel(
    deps: &OauthDeps,
    schedules: &ExportSchedules,
    keys: &WebhookKeys,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<WebhookOutcome, WebhookError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge);
    }
    keys.verify(header, body)?;
    let payload: Payload =
        serde_json::from_slice(body).map_err(|_| WebhookError::Malformed("body"))?;
    if !valid_id(&payload.webhook_id) {
        return Err(WebhookError::Malformed("webhookId"));
    }
    let sent_at =
        parse_timestamp(&payload.timestamp).ok_or(WebhookError::Malformed("timestamp"))?;
    let now = deps.now();
    if (now - sent_at).abs() > MAX_SKEW {
        return Err(WebhookError::Stale);
    }
    for (field, id) in [
        ("locationId", &payload.location_id),
        ("companyId", &payload.company_id),
    ] {
        if id.as_deref().is_some_and(|id| !valid_id(id)) {
            return Err(WebhookError::Malformed(field));
        }
    }

    let receipt = WebhookReceipt {
        webhook_id: payload.webhook_id.clone(),
        event_type: payload.kind.chars().take(40).collect(),
        location_id: payload.location_id.clone(),
        company_id: payload.company_id.clone(),
        payload_hash: hex::encode(Sha256::digest(body)),
        received_at: now,
        expires_at: RetentionClass::Idempotency
            .expires_at(now)
            .unwrap_or_else(|| now.timestamp() + 86_400),
    };
    match deps.store.create(&receipt).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists) => {
            let seen: Option<WebhookReceipt> = deps
                .store
                .get(&receipt.key())
                .await
                .map_err(OauthError::from)?;
            return match seen {
                Some(seen) if seen.payload_hash == receipt.payload_hash => {
                    Ok(WebhookOutcome::Duplicate)
                }
                _ => Err(WebhookError::ReplayedId),
            };
        }
        Err(err) => return Err(OauthError::from(err).into()),
    }

    let result = act(deps, schedules, &payload).await;
    if result.is_err() {
        // Let the provider's retry run the effect again (it is idempotent).
        let _ = deps.store.delete(&receipt.key()).await;
    }
    result
}

async fn act(
    deps: &OauthDeps,
    schedules: &ExportSchedules,
    payload: &Payload,
) -> Result<WebhookOutcome, WebhookError> {
    match payload.kind.as_str() {
        "UNINSTALL" => {
            let (pk, field, id) = match (&payload.location_id, &payload.company_id) {
                (Some(location), _) => {
                    (keys::highlevel_location(location), "location_id", location)
                }
                (None, Some(company)) => (keys::highlevel_company(company), "company_id", company),
                (None, None) => return Err(WebhookError::Malformed("locationId")),
            };
            let links: Vec<AccountLink> = deps
                .store
                .query_all(&pk, "T#")
                .await
                .map_err(OauthError::from)?;
            let mut deleted = 0;
            for link in links {
                let removed =
                    delete_if_account(deps, &link.tenant, &link.provider, field, id).await?;
                deps.store
                    .delete(&link.key())
                    .await
                    .map_err(OauthError::from)?;
                if removed.is_none() {
                    continue;
                }
                deleted += 1;
                let schedule_removed = schedules
                    .delete(&link.tenant)
                    .await
                    .map_err(OauthError::from)?;
                deps.audit
                    .append(
                        &link.tenant,
                        Event::new(
                            format!("provider:{PROVIDER}"),
                            "connection.deleted",
                            keys::connection(&link.provider),
                        )
                        .detail("reason", "uninstall")
                        .detail("schedule_removed", schedule_removed),
                    )
                    .await
                    .map_err(OauthError::from)?;
            }
            // An install nobody claimed yet goes too: its grant just ended.
            super::install::forget(
                deps,
                PROVIDER,
                payload.location_id.as_deref(),
                payload.company_id.as_deref(),
            )
            .await?;
            tracing::info!(connections_deleted = deleted, "HighLevel UNINSTALL handled");
            Ok(WebhookOutcome::Uninstalled {
                connections_deleted: deleted,
            })
        }
        "INSTALL" => {
            // Corroborates a Marketplace install of our app (same app, location and
            // company); other apps' installs and providers without Marketplace
            // installs are only acknowledged.
            let provider = deps.provider(PROVIDER).ok();
            let ours = provider.and_then(|p| {
                p.marketplace_app_id
                    .as_deref()
                    .filter(|app| payload.app_id.as_deref() == Some(*app))
                    .map(|app| (p, app))
            });
            let Some((provider, app_id)) = ours else {
                tracing::info!(
                    "HighLevel INSTALL for another app or without Marketplace installs: acknowledged"
                );
                return Ok(WebhookOutcome::Ignored);
            };
            let install_type = payload
                .install_type
                .as_deref()
                .filter(|t| matches!(*t, "Location" | "Company"));
            let noted = super::install::note_webhook(
                deps,
                provider,
                &payload.webhook_id,
                payload.location_id.as_deref(),
                payload.company_id.as_deref(),
                install_type,
                app_id,
            )
            .await?;
            if noted.is_none() {
                return Err(WebhookError::Malformed("locationId"));
            }
            tracing::info!("HighLevel INSTALL recorded");
            Ok(WebhookOutcome::Installed)
        }
        _ => Ok(WebhookOutcome::Ignored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::table::{Detail, internal, row, shown};

    #[test]
    fn every_webhook_error_has_its_http_answer() {
        let bad_signature = shown(401, "bad-signature", None);
        assert_eq!(row(&WebhookError::BadSignature), bad_signature);
        let too_large = (
            413,
            "payload-too-large",
            Some("body".to_owned()),
            Detail::Fixed(format!(
                "request body is larger than the limit of {MAX_BODY_BYTES} bytes"
            )),
            None,
        );
        assert_eq!(row(&WebhookError::TooLarge), too_large);
        let malformed = shown(400, "invalid-request", Some("locationId"));
        assert_eq!(row(&WebhookError::Malformed("locationId")), malformed);
        let stale = shown(400, "invalid-request", Some("timestamp"));
        assert_eq!(row(&WebhookError::Stale), stale);
        let replayed = shown(409, "conflict", Some("webhookId"));
        assert_eq!(row(&WebhookError::ReplayedId), replayed);
        let wrapped = WebhookError::Oauth(OauthError::NeedsReconsent("highlevel".into()));
        assert_eq!(row(&wrapped), shown(409, "needs-reconsent", None));
        let config = WebhookError::Config("key is not PEM".into());
        assert_eq!(row(&config), internal());
    }
}

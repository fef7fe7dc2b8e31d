//! Sealing small secrets (OAuth tokens, passwords, webhook secrets) with KMS.
//!
//! Each secret is encrypted with KMS `Encrypt` under the data key and an encryption
//! context that binds tenant, purpose and record. KMS refuses to decrypt with any
//! other context, so a sealed blob copied to another tenant's record, or used for
//! another purpose, cannot be opened. The context carries ids only, never personal
//! data: it is visible in CloudTrail.

use std::collections::HashMap;
use std::fmt;

use aws_sdk_kms::primitives::Blob;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::kernel::aws::error_text;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::tenant::TenantId;

/// KMS `Encrypt` takes at most 4 KiB of plaintext.
pub const MAX_PLAINTEXT_BYTES: usize = 4096;

/// What a sealed secret is for. Part of the encryption context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    OauthAccessToken,
    OauthRefreshToken,
    /// PKCE verifier held in the OAuth state between redirect and callback.
    OauthPkceVerifier,
    /// Tokens of a Marketplace install not yet claimed by a tenant: never openable as
    /// a connection's tokens, whatever record they are copied into.
    InstallAccessToken,
    InstallRefreshToken,
    DestinationPassword,
    WebhookSecret,
    /// A rectification's corrected identifier values, held until the stored files are
    /// rewritten with them.
    RectificationValues,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::OauthAccessToken => "oauth_access_token",
            Purpose::OauthRefreshToken => "oauth_refresh_token",
            Purpose::OauthPkceVerifier => "oauth_pkce_verifier",
            Purpose::InstallAccessToken => "oauth_install_access_token",
            Purpose::InstallRefreshToken => "oauth_install_refresh_token",
            Purpose::DestinationPassword => "destination_password",
            Purpose::WebhookSecret => "webhook_secret",
            Purpose::RectificationValues => "rectification_values",
        }
    }
}

/// The encryption context: which tenant, what for, and which record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealContext {
    pub tenant: TenantId,
    pub purpose: Purpose,
    /// The id of the record holding the sealed value, e.g. `CONN#highlevel`.
    pub record: String,
}

impl SealContext {
    pub fn new(tenant: &TenantId, purpose: Purpose, record: impl Into<String>) -> Self {
        Self {
            tenant: tenant.clone(),
            purpose,
            record: record.into(),
        }
    }

    fn to_kms(&self) -> HashMap<String, String> {
        HashMap::from([
            ("custody:tenant".to_owned(), self.tenant.as_str().to_owned()),
            (
                "custody:purpose".to_owned(),
                self.purpose.as_str().to_owned(),
            ),
            ("custody:record".to_owned(), self.record.clone()),
        ])
    }
}

/// A KMS ciphertext blob, stored as base64 text; never printable.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(#[serde(with = "serde_bytes_base64")] Vec<u8>);

impl Sealed {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(<{} bytes redacted>)", self.0.len())
    }
}

impl fmt::Display for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<sealed>")
    }
}

/// Serialised as base64 text, so a sealed value inside JSON stays opaque and compact.
mod serde_bytes_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret is {0} bytes; at most {MAX_PLAINTEXT_BYTES} can be sealed")]
    TooLarge(usize),
    #[error("secret is empty")]
    Empty,
    /// Wrong context, wrong key, or a tampered blob: KMS gives the same answer for
    /// all three on purpose, and so do we.
    #[error("sealed value could not be opened (wrong tenant, purpose or record, or altered)")]
    Rejected,
    #[error("opened value is not UTF-8 text")]
    NotText,
    #[error("KMS call failed: {0}")]
    Kms(String),
}

impl HttpError for SealError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            SealError::TooLarge(_) | SealError::Empty => {
                HttpAnswer::bad_request("secret", self.to_string())
            }
            SealError::Rejected | SealError::NotText | SealError::Kms(_) => {
                HttpAnswer::internal_logged("seal error", self)
            }
        }
    }
}

/// Seals and opens secrets with one KMS key.
#[derive(Clone, Debug)]
pub struct Sealer {
    kms: aws_sdk_kms::Client,
    key_id: String,
}

impl Sealer {
    pub fn new(kms: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            kms,
            key_id: key_id.into(),
        }
    }

    pub async fn seal(
        &self,
        context: &SealContext,
        secret: &SecretString,
    ) -> Result<Sealed, SealError> {
        let plaintext = secret.expose_secret().as_bytes();
        if plaintext.is_empty() {
            return Err(SealError::Empty);
        }
        if plaintext.len() > MAX_PLAINTEXT_BYTES {
            return Err(SealError::TooLarge(plaintext.len()));
        }
        let out = self
            .kms
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(Some(context.to_kms()))
            .send()
            .await
            .map_err(|err| SealError::Kms(error_text(&err)))?;
        let blob = out
            .ciphertext_blob
            .ok_or_else(|| SealError::Kms("Encrypt returned no ciphertext".into()))?;
        Ok(Sealed(blob.into_inner()))
    }

    pub async fn open(
        &self,
        context: &SealContext,
        sealed: &Sealed,
    ) -> Result<SecretString, SealError> {
        let result = self
            .kms
            .decrypt()
            // Pinning the key id means a blob sealed under another key is refused
            // even if the caller could decrypt it.
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(sealed.0.clone()))
            .set_encryption_context(Some(context.to_kms()))
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(err) => {
                let rejected = err.as_service_error().is_some_and(|e| {
                    e.is_invalid_ciphertext_exception() || e.is_incorrect_key_exception()
                });
                return Err(if rejected {
                    SealError::Rejected
                } else {
                    SealError::Kms(error_text(&err))
                });
            }
        };
        let plaintext = out
            .plaintext
            .ok_or_else(|| SealError::Kms("Decrypt returned no plaintext".into()))?
            .into_inner();
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| SealError::NotText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_debug_and_display_redact() {
        let sealed = Sealed::from_bytes(b"ciphertext-bytes".to_vec());
        let debug = format!("{sealed:?}");
        assert!(!debug.contains("ciphertext"));
        assert!(debug.contains("16 bytes"));
        assert_eq!(sealed.to_string(), "<sealed>");
    }

    #[test]
    fn secret_string_debug_redacts() {
        let secret = SecretString::from("tok_live_123");
        assert!(!format!("{secret:?}").contains("tok_live_123"));
    }

    #[test]
    fn context_carries_ids_only() {
        let tenant = TenantId::parse("acme").unwrap();
        let ctx = SealContext::new(&tenant, Purpose::OauthAccessToken, "CONN#highlevel").to_kms();
        assert_eq!(ctx["custody:tenant"], "acme");
        assert_eq!(ctx["custody:purpose"], "oauth_access_token");
        assert_eq!(ctx["custody:record"], "CONN#highlevel");
    }

    #[test]
    fn every_seal_error_has_its_http_answer() {
        use crate::kernel::http::table::{internal, row, shown};

        for err in [SealError::TooLarge(5000), SealError::Empty] {
            let want = shown(400, "invalid-request", Some("secret"));
            assert_eq!(row(&err), want, "{err}");
        }
        for err in [
            SealError::Rejected,
            SealError::NotText,
            SealError::Kms("AccessDeniedException: key arn:aws:kms:x".into()),
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }
}

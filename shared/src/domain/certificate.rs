//! Certificates of deletion: a JSON document saying what was erased, signed with the
//! KMS signing key (`custody::signing`), verifiable offline by anyone holding the
//! public key.
//!
//! The signed bytes are the document's JSON text exactly as stored (`document`);
//! [`verify`] checks them in Rust, `openssl dgst -sha256 -verify` does the same.
//! A document carries counts, ids and hashes only (KMS signs at most 4 KiB).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kernel::audit::AuditRef;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::signing::{self, MAX_MESSAGE_BYTES as MAX_DOCUMENT_BYTES, Signer, SigningError};
pub use crate::kernel::signing::{ALGORITHM, public_key_pem};
/// Version tag of the document format.
pub const SCHEMA: &str = "custody.certificate-of-deletion/v1";

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate document is {0} bytes; KMS signs at most {MAX_DOCUMENT_BYTES}")]
    TooLarge(usize),
    #[error("certificate could not be encoded: {0}")]
    Encode(String),
    #[error("KMS call failed: {0}")]
    Kms(String),
    #[error("KMS returned no {0}")]
    Missing(&'static str),
    #[error("public key is not a P-256 SubjectPublicKeyInfo")]
    BadPublicKey,
    #[error("signature is not base64 DER ECDSA")]
    BadSignature,
    #[error("signature does not match the document")]
    Invalid,
}

impl From<SigningError> for CertificateError {
    fn from(err: SigningError) -> Self {
        match err {
            SigningError::TooLarge(n) => Self::TooLarge(n),
            SigningError::Kms(e) => Self::Kms(e),
            SigningError::Missing(what) => Self::Missing(what),
            SigningError::BadPublicKey => Self::BadPublicKey,
            SigningError::BadSignature => Self::BadSignature,
            SigningError::Invalid => Self::Invalid,
        }
    }
}

impl HttpError for CertificateError {
    fn answer(&self) -> HttpAnswer<'_> {
        HttpAnswer::internal_logged("certificate error", self)
    }
}

/// What was erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// A data subject's records (an erasure request).
    Subject,
    /// A whole tenant (account deletion).
    Account,
}

/// Records removed from one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasedStore {
    /// `imports-bucket`, `dsar-results-bucket`, `custody-table`, …
    pub store: String,
    /// What the count counts: `rows`, `object_versions`, `items`, …
    pub unit: String,
    pub count: u64,
}

impl ErasedStore {
    pub fn new(store: &str, unit: &str, count: u64) -> Self {
        Self {
            store: store.to_owned(),
            unit: unit.to_owned(),
            count,
        }
    }
}

/// The certificate document. Field order is the serialisation order, so the JSON is
/// deterministic; it contains ids, counts, times and hashes only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub schema: String,
    pub certificate_id: String,
    pub scope: Scope,
    pub tenant: String,
    /// The request or account-deletion job id.
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regulation: Option<String>,
    /// The subject's pseudonyms (empty for an account deletion).
    pub subject_pseudonyms: Vec<String>,
    pub received_at: DateTime<Utc>,
    pub erased_at: DateTime<Utc>,
    pub issued_at: DateTime<Utc>,
    pub erased: Vec<ErasedStore>,
    /// The audit entries of the request, by sequence number and hash.
    pub audit_entries: Vec<AuditRef>,
    /// The hash of the newest entry of the tenant's evidence chain of the audit log
    /// when the certificate was issued (the chain that holds privacy requests and
    /// deletions): anchors it so a later truncation is detectable.
    pub audit_head_hash: String,
    pub key_id: String,
    pub algorithm: String,
}

/// A certificate as issued: the exact signed JSON text and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCertificate {
    /// The signed bytes, as UTF-8 JSON text.
    pub document: String,
    /// Base64 of the ASN.1 DER ECDSA signature.
    pub signature: String,
    pub key_id: String,
    pub algorithm: String,
}

impl SignedCertificate {
    /// The document, parsed.
    pub fn certificate(&self) -> Result<Certificate, CertificateError> {
        serde_json::from_str(&self.document).map_err(|e| CertificateError::Encode(e.to_string()))
    }
}

/// The published public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub key_id: String,
    pub algorithm: String,
    pub key_spec: String,
    /// Base64 of the DER SubjectPublicKeyInfo.
    pub der_base64: String,
    pub pem: String,
}

/// Signs certificates with the KMS signing key.
#[derive(Clone, Debug)]
pub struct CertificateSigner {
    signer: Signer,
}

impl CertificateSigner {
    pub fn new(kms: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            signer: Signer::new(kms, key_id),
        }
    }

    pub fn key_id(&self) -> &str {
        self.signer.key_id()
    }

    /// Serialises and signs `certificate` (its `key_id` and `algorithm` are set here).
    pub async fn sign(
        &self,
        mut certificate: Certificate,
    ) -> Result<SignedCertificate, CertificateError> {
        certificate.key_id = self.key_id().to_owned();
        certificate.algorithm = ALGORITHM.to_owned();
        let document = serde_json::to_string(&certificate)
            .map_err(|e| CertificateError::Encode(e.to_string()))?;
        let signature = self.signer.sign(document.as_bytes()).await?;
        Ok(SignedCertificate {
            document,
            signature,
            key_id: self.key_id().to_owned(),
            algorithm: ALGORITHM.to_owned(),
        })
    }

    /// The public key (KMS `GetPublicKey`), DER and PEM.
    pub async fn public_key(&self) -> Result<PublicKey, CertificateError> {
        let key = self.signer.public_key().await?;
        Ok(PublicKey {
            key_id: key.key_id,
            algorithm: ALGORITHM.to_owned(),
            key_spec: key.key_spec,
            der_base64: STANDARD.encode(&key.der),
            pem: public_key_pem(&key.der),
        })
    }
}

/// Verifies a signed certificate offline against a DER public key and returns the
/// document. Any change to the document or signature fails.
pub fn verify(
    signed: &SignedCertificate,
    public_key_der: &[u8],
) -> Result<Certificate, CertificateError> {
    signing::verify(
        public_key_der,
        signed.document.as_bytes(),
        &signed.signature,
    )?;
    signed.certificate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::table::{internal, row};

    #[test]
    fn every_certificate_error_is_a_bare_500() {
        for err in [
            CertificateError::TooLarge(5000),
            CertificateError::Encode("e".into()),
            CertificateError::Kms("KMSInvalidStateException".into()),
            CertificateError::Missing("signature"),
            CertificateError::BadPublicKey,
            CertificateError::BadSignature,
            CertificateError::Invalid,
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }
}

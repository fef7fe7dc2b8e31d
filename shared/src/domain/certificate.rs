//! Certificates of deletion: a JSON document saying what was erased, signed with the
//! asymmetric KMS key (ECC_NIST_P256, `ECDSA_SHA_256`), verifiable offline by anyone
//! holding the public key.
//!
//! The signed bytes are the document's JSON text exactly as stored (`document`), so
//! verification never depends on re-serialising: take `document` as UTF-8 bytes,
//! `signature` (base64 of an ASN.1 DER ECDSA signature) and the public key (DER
//! SubjectPublicKeyInfo from KMS `GetPublicKey`, or its PEM form) and check with any
//! ECDSA P-256/SHA-256 verifier, e.g.
//! `openssl dgst -sha256 -verify key.pem -signature sig.der document.json`.
//! [`verify`] does the same in Rust.
//!
//! KMS signs at most 4 KiB in `RAW` mode (and the emulator has no `DIGEST` mode), so a
//! document carries counts, ids and hashes only and is refused if larger.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};

use crate::kernel::audit::AuditRef;
use crate::kernel::aws::error_text;
use crate::kernel::http::{HttpAnswer, HttpError};

/// KMS `Sign` limit for `RAW` messages.
pub const MAX_DOCUMENT_BYTES: usize = 4096;
pub const ALGORITHM: &str = "ECDSA_SHA_256";
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
    /// The hash of the newest audit entry when the certificate was issued: anchors
    /// the chain so a later truncation is detectable.
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
    kms: aws_sdk_kms::Client,
    key_id: String,
}

impl CertificateSigner {
    pub fn new(kms: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            kms,
            key_id: key_id.into(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Serialises and signs `certificate` (its `key_id` and `algorithm` are set here).
    pub async fn sign(
        &self,
        mut certificate: Certificate,
    ) -> Result<SignedCertificate, CertificateError> {
        certificate.key_id = self.key_id.clone();
        certificate.algorithm = ALGORITHM.to_owned();
        let document = serde_json::to_string(&certificate)
            .map_err(|e| CertificateError::Encode(e.to_string()))?;
        if document.len() > MAX_DOCUMENT_BYTES {
            return Err(CertificateError::TooLarge(document.len()));
        }
        let out = self
            .kms
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(document.as_bytes()))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| CertificateError::Kms(error_text(&e)))?;
        let signature = out
            .signature()
            .ok_or(CertificateError::Missing("signature"))?;
        Ok(SignedCertificate {
            document,
            signature: STANDARD.encode(signature.as_ref()),
            key_id: self.key_id.clone(),
            algorithm: ALGORITHM.to_owned(),
        })
    }

    /// The public key (KMS `GetPublicKey`), DER and PEM.
    pub async fn public_key(&self) -> Result<PublicKey, CertificateError> {
        let out = self
            .kms
            .get_public_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(|e| CertificateError::Kms(error_text(&e)))?;
        let der = out
            .public_key()
            .ok_or(CertificateError::Missing("public key"))?
            .as_ref()
            .to_vec();
        // Refuse to publish anything that would not verify our signatures.
        VerifyingKey::from_public_key_der(&der).map_err(|_| CertificateError::BadPublicKey)?;
        Ok(PublicKey {
            key_id: out.key_id().unwrap_or(&self.key_id).to_owned(),
            algorithm: ALGORITHM.to_owned(),
            key_spec: out
                .key_spec()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "ECC_NIST_P256".to_owned()),
            der_base64: STANDARD.encode(&der),
            pem: public_key_pem(&der),
        })
    }
}

/// PEM (`-----BEGIN PUBLIC KEY-----`) of a DER SubjectPublicKeyInfo.
pub fn public_key_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// Verifies a signed certificate offline against a DER public key and returns the
/// document. Any change to the document or signature fails.
pub fn verify(
    signed: &SignedCertificate,
    public_key_der: &[u8],
) -> Result<Certificate, CertificateError> {
    let key = VerifyingKey::from_public_key_der(public_key_der)
        .map_err(|_| CertificateError::BadPublicKey)?;
    let der = STANDARD
        .decode(&signed.signature)
        .map_err(|_| CertificateError::BadSignature)?;
    let signature = Signature::from_der(&der).map_err(|_| CertificateError::BadSignature)?;
    key.verify(signed.document.as_bytes(), &signature)
        .map_err(|_| CertificateError::Invalid)?;
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

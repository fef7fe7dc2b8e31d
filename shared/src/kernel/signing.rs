//! Signatures with the asymmetric KMS signing key (ECC_NIST_P256, `ECDSA_SHA_256`),
//! verifiable offline by anyone holding the public key.
//!
//! Certificates of deletion and the audit log's segment checkpoints are signed here.
//! The signed bytes are always stored verbatim beside the signature, so verification
//! never depends on re-serialising: take the bytes, the signature (base64 of an ASN.1
//! DER ECDSA signature) and the public key (DER SubjectPublicKeyInfo from KMS
//! `GetPublicKey`, or its PEM form) and check with any ECDSA P-256/SHA-256 verifier,
//! e.g. `openssl dgst -sha256 -verify key.pem -signature sig.der document.json`.
//!
//! KMS signs at most 4 KiB in `RAW` mode (and the emulator has no `DIGEST` mode), so
//! signed documents carry counts, ids and hashes only and are refused if larger.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

use crate::kernel::aws::error_text;
use crate::kernel::http::{HttpAnswer, HttpError};

/// KMS `Sign` limit for `RAW` messages.
pub const MAX_MESSAGE_BYTES: usize = 4096;
pub const ALGORITHM: &str = "ECDSA_SHA_256";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("document is {0} bytes; KMS signs at most {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
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

/// Every signing failure is ours (a key, KMS, or a stored signature), never the
/// caller's: a bare 500, logged.
impl HttpError for SigningError {
    fn answer(&self) -> HttpAnswer<'_> {
        HttpAnswer::internal_logged("signing error", self)
    }
}

/// A public key as KMS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyDer {
    pub key_id: String,
    pub key_spec: String,
    pub der: Vec<u8>,
}

/// Signs with the KMS signing key.
#[derive(Clone, Debug)]
pub struct Signer {
    kms: aws_sdk_kms::Client,
    key_id: String,
}

impl Signer {
    pub fn new(kms: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            kms,
            key_id: key_id.into(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `message` as is; returns base64 of the DER signature.
    pub async fn sign(&self, message: &[u8]) -> Result<String, SigningError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(SigningError::TooLarge(message.len()));
        }
        let out = self
            .kms
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| SigningError::Kms(error_text(&e)))?;
        let signature = out.signature().ok_or(SigningError::Missing("signature"))?;
        Ok(STANDARD.encode(signature.as_ref()))
    }

    /// The public key (KMS `GetPublicKey`), checked to be one that verifies our
    /// signatures.
    pub async fn public_key(&self) -> Result<PublicKeyDer, SigningError> {
        let out = self
            .kms
            .get_public_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(|e| SigningError::Kms(error_text(&e)))?;
        let der = out
            .public_key()
            .ok_or(SigningError::Missing("public key"))?
            .as_ref()
            .to_vec();
        VerifyingKey::from_public_key_der(&der).map_err(|_| SigningError::BadPublicKey)?;
        Ok(PublicKeyDer {
            // The id certificates carry (the configured one), not KMS's ARN form of
            // it: a verifier matches a certificate to its key by this string.
            key_id: self.key_id.clone(),
            key_spec: out
                .key_spec()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "ECC_NIST_P256".to_owned()),
            der,
        })
    }
}

/// Verifies `signature` (base64 DER) over `message` offline against a DER public key.
pub fn verify(public_key_der: &[u8], message: &[u8], signature: &str) -> Result<(), SigningError> {
    let key = VerifyingKey::from_public_key_der(public_key_der)
        .map_err(|_| SigningError::BadPublicKey)?;
    let der = STANDARD
        .decode(signature)
        .map_err(|_| SigningError::BadSignature)?;
    let signature = Signature::from_der(&der).map_err(|_| SigningError::BadSignature)?;
    key.verify(message, &signature)
        .map_err(|_| SigningError::Invalid)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::table::{internal, row};

    #[test]
    fn every_signing_error_is_a_bare_500() {
        for err in [
            SigningError::TooLarge(5000),
            SigningError::Kms("KMSInvalidStateException".into()),
            SigningError::Missing("signature"),
            SigningError::BadPublicKey,
            SigningError::BadSignature,
            SigningError::Invalid,
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }

    #[test]
    fn garbage_keys_and_signatures_are_refused() {
        assert!(matches!(
            verify(b"not a key", b"m", "AAAA"),
            Err(SigningError::BadPublicKey)
        ));
    }
}

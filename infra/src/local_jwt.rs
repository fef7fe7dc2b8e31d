//! A local JWT issuer for the local stack (ES256 with a per-run key).
//!
//! In production the HTTP API's JWT authorizer verifies tokens of the configured OIDC
//! issuer and passes their claims to the function. Locally, the gateway verifies
//! these tokens the same way (signature, issuer, audience, expiry) and passes the
//! claims on in the same shape, so the functions cannot tell the difference.
//!
//! The key is asymmetric (P-256) so the local OIDC provider ([`crate::oidc`]) can
//! publish the public half at its `jwks_uri`, as a real provider does; the private
//! half never leaves this process.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The issuer of a [`LocalIssuer::new`] (one not served over HTTP); the local stack's
/// issuer is its OIDC provider's URL instead ([`LocalIssuer::with_issuer`]).
pub const ISSUER: &str = "https://custody.local/issuer";
/// The audience of the tokens `custody-local up` prints (`LocalStack::token`).
pub const AUDIENCE: &str = "custody-local";
/// The only signing algorithm issued and accepted (no `alg` confusion).
pub const ALGORITHM: &str = "ES256";

#[derive(Clone)]
pub struct LocalIssuer {
    issuer: String,
    /// Audiences the gateway accepts, as the JWT authorizer's `Audience` list.
    audiences: Vec<String>,
    key: Arc<EcdsaKeyPair>,
    kid: String,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalIssuer({}, <key redacted>)", self.issuer)
    }
}

impl Default for LocalIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalIssuer {
    pub fn new() -> Self {
        Self::with_issuer(ISSUER)
    }

    /// An issuer named `issuer` (its `iss`, equal to the discovery document's
    /// `issuer`), accepting [`AUDIENCE`].
    pub fn with_issuer(issuer: impl Into<String>) -> Self {
        // Generation fails only if the system's random source does: nothing local
        // can run without one, and no request reaches this.
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("the system random source generates a P-256 key");
        let kid = hex::encode(&Sha256::digest(key.public_key().as_ref())[..8]);
        Self {
            issuer: issuer.into(),
            audiences: vec![AUDIENCE.to_owned()],
            key: Arc::new(key),
            kid,
        }
    }

    /// Also accepts tokens for `audience` (another client of the same issuer).
    pub fn accepting(mut self, audience: &str) -> Self {
        if !self.audiences.iter().any(|a| a == audience) {
            self.audiences.push(audience.to_owned());
        }
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A token for `sub` in `tenant` with `role`, valid for `ttl_seconds`.
    pub fn token(&self, sub: &str, tenant: &str, role: &str, ttl_seconds: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "custom:tenant_id": tenant,
            "custom:role": role,
            "iat": now,
            "exp": now + ttl_seconds,
        });
        self.sign_claims(&claims)
    }

    /// Signs `claims` as they are (the caller sets `iss`, `aud`, `exp`, …).
    pub fn sign_claims(&self, claims: &Value) -> String {
        let header = json!({"alg": ALGORITHM, "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // Signing with a valid key fails only if the random source does (as above).
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("the system random source signs");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// The public key as a JSON Web Key Set (the OIDC provider's `jwks_uri`).
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = self.key.public_key().as_ref();
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .unwrap_or((&[][..], &[][..]));
        json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "use": "sig",
            "alg": ALGORITHM,
            "kid": self.kid,
        }]})
    }

    /// Verifies a bearer token and returns its claims as strings (as API Gateway
    /// passes them), or `None` if it is not a valid, current token of this issuer
    /// for one of its audiences.
    pub fn verify(&self, token: &str) -> Option<Map<String, Value>> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let given = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let decoded_header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if decoded_header["alg"] != ALGORITHM {
            return None;
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{header}.{claims}").as_bytes(), &given)
            .ok()?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let now = chrono::Utc::now().timestamp();
        if claims["iss"] != self.issuer.as_str()
            || !self.audience_accepted(&claims["aud"])
            || claims["exp"].as_i64()? <= now
        {
            return None;
        }
        let mut strings = Map::new();
        for (name, value) in claims.as_object()? {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            strings.insert(name.clone(), Value::String(text));
        }
        Some(strings)
    }

    /// `aud` is a string or a list of strings (RFC 7519); one must be accepted.
    fn audience_accepted(&self, aud: &Value) -> bool {
        let accepted = |a: &Value| {
            a.as_str()
                .is_some_and(|a| self.audiences.iter().any(|ok| ok == a))
        };
        match aud {
            Value::Array(list) => list.iter().any(accepted),
            other => accepted(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_verifies() {
        let issuer = LocalIssuer::new();
        let token = issuer.token("user-1", "acme", "admin", 60);
        let claims = issuer.verify(&token).unwrap();
        assert_eq!(claims["custom:tenant_id"], "acme");
        assert_eq!(claims["sub"], "user-1");
        assert_eq!(claims["iss"], ISSUER);
    }

    #[test]
    fn rejects_other_keys_tampering_and_expiry() {
        let issuer = LocalIssuer::new();
        let token = issuer.token("user-1", "acme", "admin", 60);
        assert!(LocalIssuer::new().verify(&token).is_none());
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'x');
        assert!(issuer.verify(&tampered).is_none());
        assert!(
            issuer
                .verify(&issuer.token("u", "acme", "admin", -1))
                .is_none()
        );
        assert!(issuer.verify("not-a-token").is_none());
    }

    #[test]
    fn checks_issuer_and_audience() {
        let issuer = LocalIssuer::with_issuer("http://127.0.0.1:1").accepting("console");
        let now = chrono::Utc::now().timestamp();
        let with = |iss: &str, aud: Value| {
            issuer.sign_claims(&json!({"iss": iss, "aud": aud, "sub": "s", "exp": now + 60}))
        };
        assert!(
            issuer
                .verify(&with("http://127.0.0.1:1", json!(AUDIENCE)))
                .is_some()
        );
        assert!(
            issuer
                .verify(&with("http://127.0.0.1:1", json!("console")))
                .is_some()
        );
        assert!(
            issuer
                .verify(&with("http://127.0.0.1:1", json!(["x", "console"])))
                .is_some()
        );
        assert!(
            issuer
                .verify(&with("http://127.0.0.1:1", json!("other")))
                .is_none()
        );
        assert!(issuer.verify(&with(ISSUER, json!(AUDIENCE))).is_none());
    }

    #[test]
    fn refuses_other_algorithms() {
        let issuer = LocalIssuer::new();
        let token = issuer.token("u", "acme", "admin", 60);
        let rest = token.split_once('.').unwrap().1;
        for alg in ["none", "HS256", "RS256"] {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
            assert!(
                issuer.verify(&format!("{header}.{rest}")).is_none(),
                "{alg}"
            );
        }
    }

    #[test]
    fn publishes_the_public_key() {
        let issuer = LocalIssuer::new();
        let jwks = issuer.jwks();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(key["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(key["y"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert!(key.get("d").is_none());
    }
}

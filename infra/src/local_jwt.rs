//! A local JWT issuer for the local stack (HS256 with a per-run random key).
//!
//! In production the HTTP API's JWT authorizer verifies tokens of the configured OIDC
//! issuer and passes their claims to the function. Locally, the gateway verifies
//! these tokens the same way (signature, issuer, audience, expiry) and passes the
//! claims on in the same shape, so the functions cannot tell the difference.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const ISSUER: &str = "https://custody.local/issuer";
pub const AUDIENCE: &str = "custody-local";

#[derive(Clone)]
pub struct LocalIssuer {
    key: Vec<u8>,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalIssuer(<key redacted>)")
    }
}

impl Default for LocalIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalIssuer {
    pub fn new() -> Self {
        use rand::RngCore as _;
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `sub` in `tenant` with `role`, valid for `ttl_seconds`.
    pub fn token(&self, sub: &str, tenant: &str, role: &str, ttl_seconds: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "custom:tenant_id": tenant,
            "custom:role": role,
            "iat": now,
            "exp": now + ttl_seconds,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    /// Verifies a bearer token and returns its claims as strings (as API Gateway
    /// passes them), or `None` if it is not a valid, current token of this issuer.
    pub fn verify(&self, token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let given = URL_SAFE_NO_PAD.decode(signature).ok()?;
        // Constant-time comparison through the MAC's own verify.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(format!("{header}.{claims}").as_bytes());
        mac.verify_slice(&given).ok()?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"] != "HS256" {
            return None;
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let now = chrono::Utc::now().timestamp();
        if claims["iss"] != ISSUER || claims["aud"] != AUDIENCE || claims["exp"].as_i64()? <= now {
            return None;
        }
        let mut strings = serde_json::Map::new();
        for (name, value) in claims.as_object()? {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            strings.insert(name.clone(), serde_json::Value::String(text));
        }
        Some(strings)
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
}

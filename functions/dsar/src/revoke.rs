//! Revoking the provider grants of connections the dsar function deleted (account
//! deletion). This function may not decrypt tokens (its role has no decrypt for OAuth
//! purposes), so the oauth function, which may, does it: invoked synchronously with
//! the deleted connections (tokens still sealed; the payload is never stored), it
//! revokes each at its provider and audits it (`custody::oauth::revoke_deleted`).

use std::future::Future;
use std::pin::Pin;

use aws_sdk_lambda::primitives::Blob;
use custody::oauth::{Connection, Revocation, RevokeDeleted};

pub type RevokeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Revocation>, String>> + Send + 'a>>;

/// Who revokes deleted connections' grants.
pub trait Revoker: Send + Sync {
    fn revoke<'a>(&'a self, connections: &'a [Connection]) -> RevokeFuture<'a>;
}

/// The oauth function, through Lambda's `Invoke` (`RequestResponse`).
#[derive(Debug, Clone)]
pub struct OauthFunction {
    pub client: aws_sdk_lambda::Client,
    /// Its name or ARN (`CUSTODY_OAUTH_FUNCTION`).
    pub function: String,
}

impl Revoker for OauthFunction {
    fn revoke<'a>(&'a self, connections: &'a [Connection]) -> RevokeFuture<'a> {
        Box::pin(async move {
            let request = RevokeDeleted {
                custody_revoke_deleted: connections.to_vec(),
            };
            let payload = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
            let out = self
                .client
                .invoke()
                .function_name(&self.function)
                .payload(Blob::new(payload))
                .send()
                .await
                .map_err(|e| custody::aws::error_text(&e))?;
            if let Some(error) = out.function_error() {
                return Err(format!("the oauth function failed: {error}"));
            }
            let body: serde_json::Value = out
                .payload()
                .map(|p| serde_json::from_slice(p.as_ref()))
                .transpose()
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            serde_json::from_value(body["revocations"].clone()).map_err(|e| e.to_string())
        })
    }
}

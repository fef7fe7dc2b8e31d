//! The tenant id: the first component of every store key and audit chain.
//!
//! It comes from the caller's verified JWT claims (never from a request body), so it
//! is validated once here and carried as a type that cannot hold anything else.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest tenant id accepted. Keys embed it, and DynamoDB keys are limited in size.
pub const MAX_TENANT_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_ID_LEN} characters")]
    TooLong,
    #[error("tenant id may contain only ASCII letters, digits, '-' and '_'")]
    InvalidCharacter,
}

/// A validated tenant id: 1–64 of `[A-Za-z0-9_-]`. `#` is excluded because it
/// separates key components, so a tenant id can never forge another tenant's key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, TenantIdError> {
        if raw.is_empty() {
            return Err(TenantIdError::Empty);
        }
        if raw.len() > MAX_TENANT_ID_LEN {
            return Err(TenantIdError::TooLong);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TenantIdError::InvalidCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = TenantIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        assert_eq!(TenantId::parse("acme_01-x").unwrap().as_str(), "acme_01-x");
    }

    #[test]
    fn rejects_separator_and_empty_and_long() {
        assert_eq!(TenantId::parse("a#b"), Err(TenantIdError::InvalidCharacter));
        assert_eq!(TenantId::parse(""), Err(TenantIdError::Empty));
        assert_eq!(
            TenantId::parse(&"a".repeat(65)),
            Err(TenantIdError::TooLong)
        );
    }
}

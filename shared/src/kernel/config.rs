//! Typed configuration, read from the environment once at cold start.
//!
//! Every function gets the same core variables from the template's `Globals`, so a
//! missing one is a deployment mistake: it is reported by name, before any request.

use std::fmt;

/// Names of the environment variables, in one place so the template, the local
/// stack and this module cannot disagree (a test reads template.yaml for them).
pub mod vars {
    pub const TABLE: &str = "CUSTODY_TABLE";
    pub const AUDIT_TABLE: &str = "CUSTODY_AUDIT_TABLE";
    pub const IMPORTS_BUCKET: &str = "CUSTODY_IMPORTS_BUCKET";
    pub const DSAR_RESULTS_BUCKET: &str = "CUSTODY_DSAR_RESULTS_BUCKET";
    pub const DATA_KEY_ID: &str = "CUSTODY_DATA_KEY_ID";
    pub const SIGNING_KEY_ID: &str = "CUSTODY_SIGNING_KEY_ID";
    pub const PSEUDONYM_SECRET_ID: &str = "CUSTODY_PSEUDONYM_SECRET_ID";
    pub const SCHEDULE_GROUP: &str = "CUSTODY_SCHEDULE_GROUP";
    /// `enabled` lets the API read unprefixed `tenant_id`/`role` claims (template
    /// parameter `OidcPlainClaims`); optional, anything else means disabled.
    pub const OIDC_PLAIN_CLAIMS: &str = "CUSTODY_OIDC_PLAIN_CLAIMS";

    /// Every variable `Config` requires.
    pub const REQUIRED: [&str; 8] = [
        TABLE,
        AUDIT_TABLE,
        IMPORTS_BUCKET,
        DSAR_RESULTS_BUCKET,
        DATA_KEY_ID,
        SIGNING_KEY_ID,
        PSEUDONYM_SECRET_ID,
        SCHEDULE_GROUP,
    ];
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {0} is empty")]
    Empty(&'static str),
}

/// Resource names and ids every function needs. Holds no secrets: secrets are
/// fetched from Secrets Manager or sealed with KMS, never passed in the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub table: String,
    pub audit_table: String,
    pub imports_bucket: String,
    pub dsar_results_bucket: String,
    pub data_key_id: String,
    pub signing_key_id: String,
    pub pseudonym_secret_id: String,
    /// EventBridge Scheduler group holding one export schedule per tenant.
    pub schedule_group: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the config from any lookup (the environment, a map in a test, the
    /// local stack's provisioning output).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str| -> Result<String, ConfigError> {
            match lookup(name) {
                None => Err(ConfigError::Missing(name)),
                Some(value) if value.trim().is_empty() => Err(ConfigError::Empty(name)),
                Some(value) => Ok(value.trim().to_owned()),
            }
        };
        Ok(Self {
            table: get(vars::TABLE)?,
            audit_table: get(vars::AUDIT_TABLE)?,
            imports_bucket: get(vars::IMPORTS_BUCKET)?,
            dsar_results_bucket: get(vars::DSAR_RESULTS_BUCKET)?,
            data_key_id: get(vars::DATA_KEY_ID)?,
            signing_key_id: get(vars::SIGNING_KEY_ID)?,
            pseudonym_secret_id: get(vars::PSEUDONYM_SECRET_ID)?,
            schedule_group: get(vars::SCHEDULE_GROUP)?,
        })
    }

    /// The config as `(variable, value)` pairs, e.g. to print `export` lines.
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (vars::TABLE, self.table.clone()),
            (vars::AUDIT_TABLE, self.audit_table.clone()),
            (vars::IMPORTS_BUCKET, self.imports_bucket.clone()),
            (vars::DSAR_RESULTS_BUCKET, self.dsar_results_bucket.clone()),
            (vars::DATA_KEY_ID, self.data_key_id.clone()),
            (vars::SIGNING_KEY_ID, self.signing_key_id.clone()),
            (vars::PSEUDONYM_SECRET_ID, self.pseudonym_secret_id.clone()),
            (vars::SCHEDULE_GROUP, self.schedule_group.clone()),
        ]
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.to_vars()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn full() -> HashMap<&'static str, String> {
        vars::REQUIRED
            .iter()
            .map(|name| (*name, format!("value-of-{name}")))
            .collect()
    }

    #[test]
    fn reads_every_variable() {
        let env = full();
        let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        assert_eq!(config.table, "value-of-CUSTODY_TABLE");
        assert_eq!(config.to_vars().len(), vars::REQUIRED.len());
    }

    #[test]
    fn names_the_missing_variable() {
        for missing in vars::REQUIRED {
            let mut env = full();
            env.remove(missing);
            let err = Config::from_lookup(|name| env.get(name).cloned()).unwrap_err();
            assert_eq!(err, ConfigError::Missing(missing));
            assert!(err.to_string().contains(missing));
        }
    }

    #[test]
    fn rejects_blank_values() {
        let mut env = full();
        env.insert(vars::DATA_KEY_ID, "  ".into());
        let err = Config::from_lookup(|name| env.get(name).cloned()).unwrap_err();
        assert_eq!(err, ConfigError::Empty(vars::DATA_KEY_ID));
    }
}

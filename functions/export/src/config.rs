//! The export function's own configuration, read once at cold start.

use custody::config::ConfigError;

pub mod vars {
    /// ARN of this function: the target of the tenants' schedules.
    pub const FUNCTION_ARN: &str = "CUSTODY_EXPORT_FUNCTION_ARN";
    /// ARN of the role EventBridge Scheduler assumes to invoke this function.
    pub const SCHEDULER_ROLE_ARN: &str = "CUSTODY_EXPORT_SCHEDULER_ROLE_ARN";
    /// HighLevel API base URL (optional; the production API by default).
    pub const HIGHLEVEL_API_URL: &str = "CUSTODY_HIGHLEVEL_API_URL";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub function_arn: String,
    pub scheduler_role_arn: String,
    /// The schedules' dead-letter queue (`custody::schedule::DEAD_LETTER_QUEUE_ARN_VAR`).
    pub dead_letter_queue_arn: String,
    pub highlevel_base_url: String,
    /// Where destinations may point (`custody::egress::ALLOW_LOOPBACK_VAR`, the one
    /// switch every function reads).
    pub egress: custody::egress::EgressPolicy,
}

impl ExportConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| match lookup(name) {
            None => Err(ConfigError::Missing(name)),
            Some(v) if v.trim().is_empty() => Err(ConfigError::Empty(name)),
            Some(v) => Ok(v.trim().to_owned()),
        };
        Ok(Self {
            function_arn: required(vars::FUNCTION_ARN)?,
            scheduler_role_arn: required(vars::SCHEDULER_ROLE_ARN)?,
            dead_letter_queue_arn: required(custody::schedule::DEAD_LETTER_QUEUE_ARN_VAR)?,
            highlevel_base_url: lookup(vars::HIGHLEVEL_API_URL)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| custody::highlevel::DEFAULT_BASE_URL.to_owned()),
            egress: custody::egress::EgressPolicy::from_lookup(&lookup),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_variables_and_defaults_the_rest() {
        let err = ExportConfig::from_lookup(|_| None).unwrap_err();
        assert_eq!(err, ConfigError::Missing(vars::FUNCTION_ARN));
        let config = ExportConfig::from_lookup(|name| match name {
            vars::FUNCTION_ARN => Some("arn:f".into()),
            vars::SCHEDULER_ROLE_ARN => Some("arn:r".into()),
            custody::schedule::DEAD_LETTER_QUEUE_ARN_VAR => Some("arn:q".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            config.highlevel_base_url,
            custody::highlevel::DEFAULT_BASE_URL
        );
        assert_eq!(config.egress, custody::egress::EgressPolicy::STRICT);
    }
}

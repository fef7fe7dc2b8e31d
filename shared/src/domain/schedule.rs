//! One EventBridge Scheduler schedule per tenant, in the stack's schedule group,
//! invoking the export function with `{"tenant_id": …}`.
//!
//! The export settings API creates or updates it; disconnecting, uninstalling and
//! deleting the account remove it. Removing is idempotent: a schedule that is already
//! gone is not an error (events are delivered at least once).

use aws_sdk_scheduler::types::{
    DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, ScheduleState,
    Target,
};

use crate::kernel::aws::error_text;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::tenant::TenantId;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule request was invalid: {0}")]
    Invalid(String),
    #[error("EventBridge Scheduler call failed: {0}")]
    Scheduler(String),
}

impl HttpError for ScheduleError {
    fn answer(&self) -> HttpAnswer<'_> {
        // Expressions and time zones are validated before they reach Scheduler, so a
        // refusal here is ours (or the service's), never the caller's.
        HttpAnswer::internal_logged("schedule error", self)
    }
}

/// The environment variable naming the schedules' dead-letter queue (the export
/// function's failure queue).
pub const DEAD_LETTER_QUEUE_ARN_VAR: &str = "CUSTODY_EXPORT_DEAD_LETTER_QUEUE_ARN";

/// Scheduler's own retries when it cannot deliver (throttled, function missing or
/// not permitted): then the event goes to the dead-letter queue instead of being
/// dropped. An hour bounds how late an export may start; the queue keeps the rest.
pub const RETRY_ATTEMPTS: i32 = 10;
pub const MAX_EVENT_AGE_SECONDS: i32 = 3600;

/// A schedule target invoking `target_arn` as `role_arn` with `input`, with the
/// retry policy and dead-letter queue every export schedule carries. A function
/// error is not Scheduler's to retry: the invocation is asynchronous, so Lambda's
/// retries and the function's on-failure destination take it.
pub fn target(
    target_arn: &str,
    role_arn: &str,
    input: String,
    dead_letter_arn: &str,
) -> Result<Target, ScheduleError> {
    let retry = RetryPolicy::builder()
        .maximum_retry_attempts(RETRY_ATTEMPTS)
        .maximum_event_age_in_seconds(MAX_EVENT_AGE_SECONDS)
        .build();
    Target::builder()
        .arn(target_arn)
        .role_arn(role_arn)
        .input(input)
        .retry_policy(retry)
        .dead_letter_config(DeadLetterConfig::builder().arn(dead_letter_arn).build())
        .build()
        .map_err(|e| ScheduleError::Invalid(e.to_string()))
}

/// What to run and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// `cron(…)`, `rate(…)` or `at(…)` in Scheduler syntax.
    pub expression: String,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// ARN of the function to invoke, and of the role Scheduler assumes to do it.
    pub target_arn: String,
    pub role_arn: String,
    /// ARN of the SQS queue Scheduler sends an event it could not deliver to.
    pub dead_letter_arn: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleInfo {
    pub expression: String,
    pub timezone: Option<String>,
    pub enabled: bool,
}

fn digest(tenant: &TenantId) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(tenant.as_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tenant_id_names_another_tenants_schedule() {
        let victim = TenantId::parse("acme").unwrap();
        let kick = ExportSchedules::kick_name(&victim);
        // The attack: a tenant id chosen to spell the victim's kick schedule.
        let hash = kick.trim_start_matches("export-kick.");
        for hostile in [
            format!("kick-{hash}"),
            format!("kick.{hash}"),
            "kick".into(),
        ] {
            if let Ok(hostile) = TenantId::parse(&hostile) {
                assert_ne!(ExportSchedules::name(&hostile), kick);
                assert_ne!(ExportSchedules::kick_name(&hostile), kick);
            }
        }
        // A plain-named tenant spelling a long tenant's hashed name.
        let long = TenantId::parse(&"a".repeat(64)).unwrap();
        let hashed = ExportSchedules::name(&long);
        let spelled = hashed.trim_start_matches("export-").replace('.', "-");
        let spelled = TenantId::parse(&spelled).unwrap();
        assert_ne!(ExportSchedules::name(&spelled), hashed);
        // The structure that makes it hold for every id.
        for id in [
            "a",
            "kick",
            &"k".repeat(57),
            &"k".repeat(58),
            &"z".repeat(64),
        ] {
            let tenant = TenantId::parse(id).unwrap();
            let name = ExportSchedules::name(&tenant);
            assert!(name.len() <= 64 && name.starts_with("export-"), "{name}");
            assert_eq!(name.contains('.'), id.len() > 57, "{name}");
            let kick = ExportSchedules::kick_name(&tenant);
            assert!(
                kick.len() <= 64 && kick.starts_with("export-kick."),
                "{kick}"
            );
        }
    }

    #[test]
    fn names_fit_the_scheduler_limit() {
        let short = TenantId::parse("acme").unwrap();
        assert_eq!(ExportSchedules::name(&short), "export-acme");
        let long_a = TenantId::parse(&"a".repeat(64)).unwrap();
        let long_b = TenantId::parse(&format!("{}b", "a".repeat(63))).unwrap();
        assert!(ExportSchedules::name(&long_a).len() <= 64);
        assert_ne!(
            ExportSchedules::name(&long_a),
            ExportSchedules::name(&long_b)
        );
    }

    #[test]
    fn every_schedule_error_is_a_bare_500() {
        use crate::kernel::http::table::{internal, row};

        for err in [
            ScheduleError::Invalid("bad expression".into()),
            ScheduleError::Scheduler("ValidationException".into()),
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExportSchedules {
    client: aws_sdk_scheduler::Client,
    group: String,
}

impl ExportSchedules {
    pub fn new(client: aws_sdk_scheduler::Client, group: impl Into<String>) -> Self {
        Self {
            client,
            group: group.into(),
        }
    }

    /// The schedule's name: one per tenant within the group. Scheduler names are at
    /// most 64 characters; a tenant id too long for `export-<tenant>` gets a prefix of
    /// it plus a hash, still unique and stable.
    ///
    /// Names are disjoint by construction, so no tenant id can name another tenant's
    /// schedule: a plain name never contains `.` (tenant ids cannot), while hashed
    /// names (`export-<40 chars>.<hash>`) and kick names (`export-kick.<hash>`) always
    /// do, and differ in the length of the part before it.
    pub fn name(tenant: &TenantId) -> String {
        const MAX: usize = 64;
        let plain = format!("export-{tenant}");
        if plain.len() <= MAX {
            return plain;
        }
        format!(
            "export-{}.{}",
            &tenant.as_str()[..40],
            &digest(tenant)[..16]
        )
    }

    /// The tenant's one-time "run now" / continuation schedule (see [`Self::name`]
    /// for why it cannot collide with any tenant's recurring one).
    pub fn kick_name(tenant: &TenantId) -> String {
        format!("export-kick.{}", &digest(tenant)[..24])
    }

    /// Creates the tenant's schedule, or updates it if it exists.
    pub async fn upsert(
        &self,
        tenant: &TenantId,
        spec: &ScheduleSpec,
    ) -> Result<(), ScheduleError> {
        // Scheduler fills in the scheduled time, so the export can tell a redelivered
        // event (same time) from the next one.
        let input = serde_json::json!({
            "tenant_id": tenant.as_str(),
            "scheduled_time": "<aws.scheduler.scheduled-time>",
        })
        .to_string();
        let target = target(
            &spec.target_arn,
            &spec.role_arn,
            input,
            &spec.dead_letter_arn,
        )?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
        let name = Self::name(tenant);
        let exists = self.get(tenant).await?.is_some();
        let result = if exists {
            self.client
                .update_schedule()
                .name(&name)
                .group_name(&self.group)
                .schedule_expression(&spec.expression)
                .schedule_expression_timezone(&spec.timezone)
                .state(ScheduleState::Enabled)
                .flexible_time_window(window)
                .target(target)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| error_text(&e))
        } else {
            self.client
                .create_schedule()
                .name(&name)
                .group_name(&self.group)
                .schedule_expression(&spec.expression)
                .schedule_expression_timezone(&spec.timezone)
                .state(ScheduleState::Enabled)
                .flexible_time_window(window)
                .target(target)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| error_text(&e))
        };
        result.map_err(ScheduleError::Scheduler)
    }

    /// The tenant's schedule, if there is one.
    pub async fn get(&self, tenant: &TenantId) -> Result<Option<ScheduleInfo>, ScheduleError> {
        match self
            .client
            .get_schedule()
            .name(Self::name(tenant))
            .group_name(&self.group)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ScheduleInfo {
                expression: out.schedule_expression.unwrap_or_default(),
                timezone: out.schedule_expression_timezone,
                enabled: out.state != Some(ScheduleState::Disabled),
            })),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(err) => Err(ScheduleError::Scheduler(error_text(&err))),
        }
    }

    /// Removes the tenant's schedule. Returns whether one existed.
    pub async fn delete(&self, tenant: &TenantId) -> Result<bool, ScheduleError> {
        match self
            .client
            .delete_schedule()
            .name(Self::name(tenant))
            .group_name(&self.group)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(ScheduleError::Scheduler(error_text(&err))),
        }
    }
}

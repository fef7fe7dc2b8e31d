//! Invoking the export again, soon, without a new permission: a one-time EventBridge
//! Scheduler schedule (`at(…)`, deleted after it fires) in the tenant schedules' group,
//! through the same role that may invoke only this function.
//!
//! Used for "run now" and for continuing a run that reached the Lambda deadline. Why
//! not `lambda:Invoke` on itself: that needs the function to hold
//! `lambda:InvokeFunction` on its own ARN (and another SDK), while it already needs
//! `scheduler:CreateSchedule` on its group and `iam:PassRole` for the scheduler role;
//! Scheduler also retries a failed delivery, and one name per tenant means a repeated
//! kick replaces the pending one instead of stacking invocations.

use aws_sdk_scheduler::types::{
    ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState,
};
use chrono::{DateTime, Utc};
use custody::TenantId;
use custody::aws::error_text;
use custody::schedule::ScheduleError;

use crate::Deps;

/// The tenant's one-time schedule name (named beside the recurring one, so the two
/// can never collide).
pub fn kick_name(tenant: &TenantId) -> String {
    custody::schedule::ExportSchedules::kick_name(tenant)
}

/// The event the kick delivers (also `events/export/kick.json`).
pub fn kick_input(tenant: &TenantId) -> String {
    // Each kick has its own id: a redelivery of the same kick (Lambda's retry, a
    // redrive) is then recognised after its run ended (`ExportState::ended_by`).
    serde_json::json!({
        "tenant_id": tenant.as_str(),
        "kick": true,
        "kick_id": ulid::Ulid::new().to_string(),
    })
    .to_string()
}

/// Schedules one invocation of the export for `tenant` at `at` (UTC).
pub async fn kick(deps: &Deps, tenant: &TenantId, at: DateTime<Utc>) -> Result<(), ScheduleError> {
    let expression = format!("at({})", at.format("%Y-%m-%dT%H:%M:%S"));
    let target = custody::schedule::target(
        &deps.config.function_arn,
        &deps.config.scheduler_role_arn,
        kick_input(tenant),
        &deps.config.dead_letter_queue_arn,
    )?;
    let window = FlexibleTimeWindow::builder()
        .mode(FlexibleTimeWindowMode::Off)
        .build()
        .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
    let name = kick_name(tenant);
    let created = deps
        .scheduler
        .create_schedule()
        .name(&name)
        .group_name(&deps.schedule_group)
        .schedule_expression(&expression)
        .schedule_expression_timezone("UTC")
        .state(ScheduleState::Enabled)
        .action_after_completion(ActionAfterCompletion::Delete)
        .flexible_time_window(window.clone())
        .target(target.clone())
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conflict_exception()) =>
        {
            // A kick is pending already: move it to the new time.
            deps.scheduler
                .update_schedule()
                .name(&name)
                .group_name(&deps.schedule_group)
                .schedule_expression(&expression)
                .schedule_expression_timezone("UTC")
                .state(ScheduleState::Enabled)
                .action_after_completion(ActionAfterCompletion::Delete)
                .flexible_time_window(window)
                .target(target)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| ScheduleError::Scheduler(error_text(&e)))
        }
        Err(err) => Err(ScheduleError::Scheduler(error_text(&err))),
    }
}

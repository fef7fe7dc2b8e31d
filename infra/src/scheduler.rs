//! A local EventBridge Scheduler: fires the schedules created in the emulator (moto
//! stores them but never runs them) into the functions' local Runtime APIs.
//!
//! What it models, as the service does it:
//! - `at()`, `rate()` and `cron()` in the schedule's time zone (`schedule_expression`),
//!   with `StartDate`/`EndDate`, `State: DISABLED` and one-minute precision
//!   (a schedule fires in the minute it is due; the loop looks every second);
//! - `ActionAfterCompletion: DELETE`: a schedule with no further invocation is deleted;
//! - the target input with its context attributes (`<aws.scheduler.scheduled-time>`,
//!   `<aws.scheduler.execution-id>`, `<aws.scheduler.attempt-number>`,
//!   `<aws.scheduler.schedule-arn>`) replaced;
//! - the Lambda target invoked asynchronously: a function error is retried by Lambda's
//!   async retry (two more attempts), not by the Scheduler;
//! - a target the Scheduler cannot deliver to (no such function) goes to the
//!   schedule's `DeadLetterConfig` queue, or is dropped with an error log when it has
//!   none, as the service drops it after its `RetryPolicy`.
//!
//! - a function error after Lambda's async retries (the function's
//!   `EventInvokeConfig`) goes to the function's on-failure queue as an invocation
//!   record (`event_sources::invoke_async`) and is recorded (`Outcome::FunctionFailed`).
//!
//! Deliberate differences: a missing local function never appears, so the
//! Scheduler's own retries (`RetryPolicy`, minutes apart, up to a day) are not
//! waited out; Lambda's async retries are seconds apart, not minutes; a flexible time
//! window fires at its start; a schedule missed while the stack was down is not
//! replayed (nor is it by the service).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_scheduler::types::{ActionAfterCompletion, ScheduleState};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value as Json;

use crate::runtime_api::LocalFunction;
use crate::schedule_expression::Expression;

/// One invocation the scheduler made (or failed to make), for tests and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub group: String,
    pub schedule: String,
    pub scheduled_time: String,
    pub function: Option<String>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The function returned (on this attempt, 1-based).
    Completed { attempt: u32 },
    /// Every async attempt failed: the function's on-failure destination got it.
    FunctionFailed { error: String },
    /// The target could not be reached; sent to the dead-letter queue.
    DeadLettered { queue_arn: String },
    /// The target could not be reached and the schedule has no dead-letter queue.
    Dropped { reason: String },
}

/// What the scheduler did so far (shared with whoever started it).
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Vec<Firing>>>);

impl History {
    pub fn all(&self) -> Vec<Firing> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn push(&self, firing: Firing) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(firing);
    }
}

/// A schedule as last read from the emulator (read again only when its
/// `LastModificationDate` changes), with when it fires next.
struct Tracked {
    modified: Option<f64>,
    schedule: aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput,
    next: Option<Timestamp>,
    expression: Option<Expression>,
    tz: TimeZone,
    anchor: Timestamp,
    end: Option<Timestamp>,
}

impl Tracked {
    fn read(
        schedule: aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput,
        modified: Option<f64>,
        now: Timestamp,
    ) -> Tracked {
        let tz = schedule
            .schedule_expression_timezone()
            .and_then(|z| TimeZone::get(z).ok())
            .unwrap_or(TimeZone::UTC);
        let expression = match Expression::parse(schedule.schedule_expression().unwrap_or_default())
        {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::warn!(schedule = schedule.name(), error = %err, "schedule never fires");
                None
            }
        };
        let start = schedule.start_date().and_then(timestamp);
        let anchor = start.unwrap_or(now);
        // at() fires even when its time has just passed (a "run now" made a moment
        // ago); a rate starts at once or at its start date; a cron runs at its next
        // time from now (or from its start date).
        let just_before = |t: Timestamp| {
            t.checked_sub(jiff::SignedDuration::from_secs(1))
                .unwrap_or(t)
        };
        let from = match (&expression, start) {
            (Some(Expression::At(_)), _) => Timestamp::MIN,
            (_, Some(start)) if start > now => just_before(start),
            (Some(Expression::Rate(_)), None) => just_before(now),
            _ => now,
        };
        let next = expression
            .as_ref()
            .and_then(|e| e.next_after(from, anchor, &tz));
        Tracked {
            modified,
            end: schedule.end_date().and_then(timestamp),
            schedule,
            next,
            expression,
            tz,
            anchor,
        }
    }
}

fn timestamp(t: &aws_smithy_types::DateTime) -> Option<Timestamp> {
    Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()
}

fn render_input(input: &str, scheduled: &str, execution: &str, attempt: u32, arn: &str) -> String {
    input
        .replace("<aws.scheduler.scheduled-time>", scheduled)
        .replace("<aws.scheduler.execution-id>", execution)
        .replace("<aws.scheduler.attempt-number>", &attempt.to_string())
        .replace("<aws.scheduler.schedule-arn>", arn)
}

/// Runs until the task is dropped. `names` maps deployed function names (the
/// template's `FunctionName`, resolved) to local binaries.
pub async fn run(
    sdk: aws_config::SdkConfig,
    functions: HashMap<String, Arc<LocalFunction>>,
    names: HashMap<String, String>,
    history: History,
    failures: crate::event_sources::Failures,
    poll: Duration,
) {
    let scheduler = aws_sdk_scheduler::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let functions = Arc::new(functions);
    let names = Arc::new(names);
    let mut tracked: HashMap<(String, String), Tracked> = HashMap::new();
    loop {
        let now = Timestamp::now();
        let mut present = HashSet::new();
        let mut pages = scheduler.list_schedules().into_paginator().send();
        let mut summaries = Vec::new();
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => summaries.extend(page.schedules().to_vec()),
                Err(err) => {
                    tracing::debug!(error = %custody::aws::error_text(&err), "list schedules");
                    break;
                }
            }
        }
        for summary in summaries {
            let (Some(name), Some(group)) = (summary.name(), summary.group_name()) else {
                continue;
            };
            let key = (group.to_owned(), name.to_owned());
            present.insert(key.clone());
            let modified = summary
                .last_modification_date()
                .or(summary.creation_date())
                .map(|d| d.as_secs_f64());
            if tracked.get(&key).is_none_or(|t| t.modified != modified) {
                // New or changed (UpdateSchedule replaces the whole definition).
                let Ok(schedule) = scheduler
                    .get_schedule()
                    .name(name)
                    .group_name(group)
                    .send()
                    .await
                else {
                    continue;
                };
                tracked.insert(key.clone(), Tracked::read(schedule, modified, now));
            }
            let Some(entry) = tracked.get_mut(&key) else {
                continue;
            };
            let schedule = &entry.schedule;
            if summary.state() == Some(&ScheduleState::Disabled) {
                continue;
            }
            let Some(due) = entry.next.filter(|due| *due <= now) else {
                // Completed: no further invocation, or the next one is past EndDate.
                let finished = entry.next.is_none()
                    || entry
                        .end
                        .is_some_and(|end| entry.next.is_some_and(|n| n > end));
                if finished
                    && entry.expression.is_some()
                    && schedule.action_after_completion() == Some(&ActionAfterCompletion::Delete)
                {
                    let _ = scheduler
                        .delete_schedule()
                        .name(name)
                        .group_name(group)
                        .send()
                        .await;
                    tracked.remove(&key);
                }
                continue;
            };
            if entry.end.is_some_and(|end| due > end) {
                entry.next = None;
                continue;
            }
            entry.next = entry
                .expression
                .as_ref()
                .and_then(|e| e.next_after(due, entry.anchor, &entry.tz));

            let Some(target) = schedule.target().cloned() else {
                continue;
            };
            let firing = Firing {
                group: group.to_owned(),
                schedule: name.to_owned(),
                scheduled_time: due.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                function: None,
                outcome: Outcome::Completed { attempt: 0 },
            };
            let schedule_arn = schedule.arn().unwrap_or_default().to_owned();
            let (functions, names, history, sqs, failures) = (
                functions.clone(),
                names.clone(),
                history.clone(),
                sqs.clone(),
                failures.clone(),
            );
            // Each firing on its own task: a long export does not hold up other schedules.
            tokio::spawn(async move {
                let firing = deliver(
                    firing,
                    &target,
                    &schedule_arn,
                    &functions,
                    &names,
                    &sqs,
                    &failures,
                )
                .await;
                tracing::info!(schedule = %firing.schedule, outcome = ?firing.outcome, "schedule fired");
                history.push(firing);
            });
            // A schedule with no next invocation is deleted (DELETE) on the next look.
        }
        tracked.retain(|key, _| present.contains(key));
        tokio::time::sleep(poll).await;
    }
}

async fn deliver(
    mut firing: Firing,
    target: &aws_sdk_scheduler::types::Target,
    schedule_arn: &str,
    functions: &HashMap<String, Arc<LocalFunction>>,
    names: &HashMap<String, String>,
    sqs: &aws_sdk_sqs::Client,
    failures: &crate::event_sources::Failures,
) -> Firing {
    let execution = ulid::Ulid::new().to_string().to_lowercase();
    let body = render_input(
        target.input().unwrap_or("{}"),
        &firing.scheduled_time,
        &execution,
        1,
        schedule_arn,
    );
    let Some(function) = crate::lambda_api::resolve(target.arn(), names, functions) else {
        let reason = format!("no function for target {}", target.arn());
        firing.outcome = match target.dead_letter_config().and_then(|d| d.arn()) {
            Some(queue_arn) => {
                match dead_letter(sqs, queue_arn, &body, &reason, schedule_arn, target.arn()).await
                {
                    Ok(()) => Outcome::DeadLettered {
                        queue_arn: queue_arn.to_owned(),
                    },
                    Err(err) => Outcome::Dropped {
                        reason: format!("{reason}; dead-letter queue failed: {err}"),
                    },
                }
            }
            None => Outcome::Dropped { reason },
        };
        if let Outcome::Dropped { reason } = &firing.outcome {
            tracing::error!(schedule = %firing.schedule, %reason, "scheduled event dropped");
        }
        return firing;
    };
    firing.function = Some(function.name().to_owned());
    let event: Json = serde_json::from_str(&body).unwrap_or(Json::String(body));
    firing.outcome = match crate::event_sources::invoke_async(function, &event, failures).await {
        Ok(attempt) => Outcome::Completed { attempt },
        Err(error) => Outcome::FunctionFailed { error },
    };
    firing
}

/// Sends the undeliverable event to the schedule's dead-letter queue, with the
/// attributes the service adds.
async fn dead_letter(
    sqs: &aws_sdk_sqs::Client,
    queue_arn: &str,
    body: &str,
    reason: &str,
    schedule_arn: &str,
    target_arn: &str,
) -> Result<(), String> {
    let name = queue_arn.rsplit(':').next().unwrap_or_default();
    let url = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| custody::aws::error_text(&e))?
        .queue_url
        .ok_or("no queue URL")?;
    let attribute = |value: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| e.to_string())
    };
    sqs.send_message()
        .queue_url(url)
        .message_body(body)
        .message_attributes("ERROR_CODE", attribute("TargetNotFound")?)
        .message_attributes("ERROR_MESSAGE", attribute(reason)?)
        .message_attributes("EXECUTION_ID", attribute(&ulid::Ulid::new().to_string())?)
        .message_attributes("SCHEDULE_ARN", attribute(schedule_arn)?)
        .message_attributes("TARGET_ARN", attribute(target_arn)?)
        .message_attributes("RETRY_ATTEMPTS", attribute("0")?)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| custody::aws::error_text(&e))
}

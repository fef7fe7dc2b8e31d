//! The export worker: one invocation of a tenant's export run.
//!
//! 1. A scheduled event is claimed once per scheduled time (idempotency), so a
//!    redelivered event is a no-op; then the run lease makes one invocation per tenant
//!    run at a time (a concurrent duplicate or kick is a no-op).
//! 2. The run is the tenant's active run (resumed from its checkpoint) or a new one.
//! 3. Discover: page the export endpoint over the run's window and note each
//!    conversation touched, page by page (ids only). Write: for each conversation,
//!    fetch its messages in the window, write one file atomically, record it. Then the
//!    manifest. The checkpoint is saved after every page and every file.
//! 4. Near the deadline the run stops at a checkpoint and a one-time schedule continues
//!    it; on failure it stays active and the next trigger resumes it. Messages pass
//!    through memory only, one conversation at a time.
//! 5. A conversation whose contact is suppressed (`crate::suppress`: restricted, or
//!    withdrew consent for `export` when the settings say so) is not written: no file,
//!    no manifest entry; only its count on the run moves, with the write position.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use custody::TenantId;
use custody::audit::{AuditError, Event, Outcome as AuditOutcome};
use custody::highlevel::{
    Channel, ExportQuery, HighLevelClient, HighLevelError, MAX_PAGE_SIZE, Message,
};
use custody::idempotency::{IdempotencyError, Outcome as IdemOutcome, RunError};
use custody::metrics::{self, names};
use custody::schedule::ScheduleError;
use custody::seal::{Purpose, SealContext};
use custody::sink::{Receipt, S3Sink, Sink, SinkError, WebDavSink};
use custody::store::{Condition, Key, StoreError, keys};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Deps;
use crate::archive;
use crate::kick;
use crate::model::{ExportRun, ExportState, Phase, RunFile, RunPage, RunStatus, Trigger};
use crate::settings::{Destination, ExportSettings, password_record};
use crate::suppress::{ExclusionError, Exclusions};
use crate::tokens::TokenError;
use custody::suppression::Reason;

/// Actor of the worker's audit entries.
pub const ACTOR: &str = "system:export";
/// Time kept back before the Lambda deadline to save the checkpoint and schedule the
/// continuation; one conversation (fetch + write, with bounded retries) fits in it.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(180);
/// When the continuation of a stopped run fires.
pub const CONTINUE_AFTER: chrono::Duration = chrono::Duration::minutes(1);
/// Lease length when the invocation's deadline is unknown: the longest Lambda run.
const DEFAULT_LEASE: Duration = Duration::from_secs(900);

/// What EventBridge Scheduler delivers (`events/export/schedule.json`, `kick.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerEvent {
    pub tenant_id: String,
    /// Filled in by Scheduler for the tenant's recurring schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
    /// A one-time invocation: run now, or continue a stopped run.
    #[serde(default)]
    pub kick: bool,
    /// The kick's own id (`kick::kick_input`); absent in kicks made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kick_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Completed {
        run_id: String,
        conversations: u64,
        messages: u64,
    },
    /// Stopped at the deadline; a one-time schedule continues it.
    Continued { run_id: String },
    /// Failed; the next trigger resumes it.
    Failed { run_id: String, error: String },
    /// Ended without exporting (no connection, re-consent needed, no settings).
    Ended { run_id: String, status: RunStatus },
    /// Another invocation holds the tenant's run lease.
    Busy,
    /// This scheduled event was already handled.
    Duplicate,
    /// The tenant has no export settings.
    NotConfigured,
    /// The event names no valid tenant.
    InvalidEvent,
    /// The tenant's account deletion has started: nothing is exported or written.
    AccountClosing,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// The time an invocation may use. Production: the Lambda deadline minus a margin.
/// Tests: a number of checks, so a stop lands at an exact checkpoint.
#[derive(Debug)]
pub struct Budget {
    deadline: Option<Instant>,
    margin: Duration,
    checks_left: Option<AtomicU32>,
}

impl Budget {
    /// From `lambda_runtime::Context::deadline` (epoch milliseconds).
    pub fn from_deadline_ms(deadline_ms: u64, margin: Duration) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let remaining = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
        Self {
            deadline: Some(Instant::now() + remaining),
            margin,
            checks_left: None,
        }
    }

    /// Runs out after `checks` checkpoints (tests).
    pub fn checks(checks: u32) -> Self {
        Self {
            deadline: None,
            margin: Duration::ZERO,
            checks_left: Some(AtomicU32::new(checks)),
        }
    }

    pub fn unlimited() -> Self {
        Self {
            deadline: None,
            margin: Duration::ZERO,
            checks_left: None,
        }
    }

    /// Whether the run must stop now and continue later.
    pub fn exhausted(&self) -> bool {
        if let Some(left) = &self.checks_left {
            let previous = left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .unwrap_or(0);
            if previous == 0 {
                return true;
            }
        }
        self.deadline
            .is_some_and(|deadline| Instant::now() + self.margin >= deadline)
    }

    /// The invocation's remaining time, zero when unknown.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::ZERO)
    }

    fn lease(&self) -> Duration {
        match self.deadline {
            Some(_) => self.remaining() + Duration::from_secs(30),
            None => DEFAULT_LEASE,
        }
    }
}

/// Handles one schedule or kick event.
pub async fn handle_trigger(
    deps: &Deps,
    event: TriggerEvent,
    budget: &Budget,
) -> Result<Outcome, WorkerError> {
    let Ok(tenant) = TenantId::parse(&event.tenant_id) else {
        tracing::warn!("export event without a valid tenant id");
        return Ok(Outcome::InvalidEvent);
    };
    let trigger = if event.kick {
        Trigger::Kick
    } else {
        Trigger::Schedule
    };
    // Scheduler substitutes `<aws.scheduler.scheduled-time>`; an unsubstituted
    // placeholder (a hand-made event) means no fire time to deduplicate on.
    let fire_time = event
        .scheduled_time
        .as_deref()
        .filter(|t| !t.is_empty() && !t.starts_with('<'));
    let kick_id = event
        .kick_id
        .as_deref()
        .filter(|k| !k.is_empty() && k.len() <= 64);
    let trigger_id = match (fire_time, kick_id) {
        (Some(time), _) => Some(format!("schedule:{time}")),
        (None, Some(kick)) => Some(format!("kick:{kick}")),
        (None, None) => None,
    };
    let invoked = Invocation {
        tenant: &tenant,
        trigger,
        trigger_id,
    };
    let Some(fire_time) = fire_time else {
        return invocation(deps, &invoked, budget).await;
    };
    let key = format!("export-schedule#{fire_time}");
    let ran = deps
        .idempotency
        .run(&tenant, &key, &event, budget.remaining(), || {
            invocation(deps, &invoked, budget)
        })
        .await;
    match ran {
        Ok(IdemOutcome::Ran(outcome)) => Ok(outcome),
        Ok(IdemOutcome::Replayed(_)) | Err(RunError::Idempotency(IdempotencyError::InProgress)) => {
            tracing::info!(tenant = %tenant, "duplicate schedule event ignored");
            Ok(Outcome::Duplicate)
        }
        Err(RunError::Idempotency(err)) => Err(err.into()),
        Err(RunError::Work(err)) => Err(err),
    }
}

// ---------------------------------------------------------------------------------
// The lease
// ---------------------------------------------------------------------------------

struct Lease {
    state: ExportState,
    /// The trigger of this invocation, recorded as `ended_by` when a run ends.
    trigger_id: Option<String>,
}

impl Lease {
    async fn acquire(
        deps: &Deps,
        tenant: &TenantId,
        budget: &Budget,
    ) -> Result<Option<Lease>, StoreError> {
        let now_ms = deps.store.clock().now().timestamp_millis();
        let current = deps
            .store
            .get::<ExportState>(&ExportState::key_of(tenant))
            .await?
            .unwrap_or_else(|| ExportState::empty(tenant));
        if current.lease_until_ms > now_ms {
            return Ok(None);
        }
        let lease_ms = i64::try_from(budget.lease().as_millis()).unwrap_or(i64::MAX / 2);
        let mut next = current.clone();
        next.lease_owner = Some(ulid::Ulid::new().to_string());
        next.lease_until_ms = now_ms.saturating_add(lease_ms);
        match Self::write(deps, &current, next).await {
            Ok(state) => Ok(Some(Lease {
                state,
                trigger_id: None,
            })),
            Err(StoreError::ConditionFailed) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes `next` over `current` if nobody else wrote in between.
    async fn write(
        deps: &Deps,
        current: &ExportState,
        mut next: ExportState,
    ) -> Result<ExportState, StoreError> {
        next.version = current.version + 1;
        let condition = Condition::new("attribute_not_exists(pk) OR #version = :version")
            .name("#version", "version")
            .value(":version", AttributeValue::N(current.version.to_string()));
        match deps.store.put_if(&next, condition).await {
            Ok(()) => Ok(next),
            // The SDK retried a write whose answer was lost: the first attempt may have
            // landed, and then the retry's condition fails. The stored state equal to
            // ours (version and lease owner included) means it did.
            Err(StoreError::ConditionFailed) => {
                let stored = deps
                    .store
                    .get::<ExportState>(&ExportState::key_of(&next.tenant))
                    .await?;
                match stored {
                    Some(stored) if stored == next => Ok(next),
                    _ => Err(StoreError::ConditionFailed),
                }
            }
            Err(err) => Err(err),
        }
    }

    async fn update(
        &mut self,
        deps: &Deps,
        change: impl FnOnce(&mut ExportState),
    ) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        change(&mut next);
        self.state = Self::write(deps, &self.state, next).await?;
        Ok(())
    }

    /// Clears the active run (it ended) and records which trigger ended it.
    async fn end_active_run(
        &mut self,
        deps: &Deps,
        window_end: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let by = self.trigger_id.clone();
        self.update(deps, move |state| {
            state.active_run = None;
            state.ended_by = by;
            if window_end.is_some() {
                state.last_window_end = window_end;
            }
        })
        .await
    }

    async fn release(mut self, deps: &Deps) -> Result<(), StoreError> {
        self.update(deps, |state| {
            state.lease_owner = None;
            state.lease_until_ms = 0;
        })
        .await
    }
}

// ---------------------------------------------------------------------------------
// One invocation
// ---------------------------------------------------------------------------------

/// The event being handled.
struct Invocation<'a> {
    tenant: &'a TenantId,
    trigger: Trigger,
    /// `schedule:<fire time>` or `kick:<kick id>`; `None` for a hand-made event.
    trigger_id: Option<String>,
}

async fn invocation(
    deps: &Deps,
    invoked: &Invocation<'_>,
    budget: &Budget,
) -> Result<Outcome, WorkerError> {
    let tenant = invoked.tenant;
    // Not even the lease is written for a tenant whose account deletion started.
    match custody::privacy::ensure_open(&deps.store, tenant).await {
        Ok(()) => {}
        Err(custody::privacy::FenceError::Closing) => return Ok(Outcome::AccountClosing),
        Err(custody::privacy::FenceError::Store(err)) => return Err(err.into()),
    }
    let Some(mut lease) = Lease::acquire(deps, tenant, budget).await? else {
        tracing::info!(tenant = %tenant, "another export invocation holds the lease");
        return Ok(Outcome::Busy);
    };
    lease.trigger_id = invoked.trigger_id.clone();
    let result = run(deps, invoked, budget, &mut lease).await;
    if matches!(result, Ok(Outcome::AccountClosing)) {
        // The purge deletes the state; releasing the lease would write it again.
        return result;
    }
    // Released whatever happened; if even this fails the lease runs out with the
    // invocation's deadline.
    let released = lease.release(deps).await;
    let outcome = result?;
    released?;
    Ok(outcome)
}

/// Errors that end an invocation of a run but leave it resumable.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    HighLevel(#[from] HighLevelError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("export document could not be encoded: {0}")]
    Encode(String),
    #[error("run checkpoint is inconsistent: {0}")]
    Checkpoint(String),
    /// The pseudonym secret could not be read (its text names the failure, never the
    /// secret).
    #[error("suppression list: {0}")]
    Pseudonyms(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ExclusionError> for StepError {
    fn from(err: ExclusionError) -> Self {
        match err {
            ExclusionError::Store(err) => StepError::Store(err),
            ExclusionError::Secret(err) => StepError::Pseudonyms(err.to_string()),
        }
    }
}

impl StepError {
    fn kind(&self) -> &'static str {
        match self {
            StepError::HighLevel(_) => "highlevel",
            StepError::Sink(_) => "destination",
            StepError::Encode(_) | StepError::Checkpoint(_) => "internal",
            StepError::Pseudonyms(_) => "suppression",
            StepError::Store(_) => "store",
        }
    }
}

enum Progress {
    Done,
    OutOfTime,
    /// The tenant's account deletion started: stop without writing anything more.
    AccountClosing,
}

async fn run(
    deps: &Deps,
    invoked: &Invocation<'_>,
    budget: &Budget,
    lease: &mut Lease,
) -> Result<Outcome, WorkerError> {
    let (tenant, trigger) = (invoked.tenant, invoked.trigger);
    let now = deps.store.clock().now();
    let settings = deps
        .store
        .get::<ExportSettings>(&ExportSettings::key_of(tenant))
        .await?;

    // The active run, or a new one. The state names the run before the run item is
    // written, so a crash in between resumes under the same id.
    let run_id = match lease.state.active_run.clone() {
        Some(run_id) => run_id,
        None => {
            if invoked.trigger_id.is_some() && lease.state.ended_by == invoked.trigger_id {
                // This trigger's run has ended already: its first delivery failed
                // after the end was recorded, and this is Lambda's retry or a redrive.
                tracing::info!(tenant = %tenant, "trigger already handled; its run has ended");
                return Ok(Outcome::Duplicate);
            }
            if settings.is_none() {
                return Ok(Outcome::NotConfigured);
            }
            let run_id = ulid::Ulid::new().to_string();
            let id = run_id.clone();
            lease
                .update(deps, move |state| state.active_run = Some(id))
                .await?;
            run_id
        }
    };
    let run_key = Key::new(keys::tenant(tenant), keys::export_run(&run_id));
    let existing = deps.store.get::<ExportRun>(&run_key).await?;
    let Some(settings) = settings else {
        if let Some(mut run) = existing {
            end_run(
                deps,
                lease,
                &mut run,
                RunStatus::NotConfigured,
                "settings",
                "export settings were removed".into(),
            )
            .await?;
        } else {
            lease.end_active_run(deps, None).await?;
        }
        return Ok(Outcome::NotConfigured);
    };
    let mut run = match existing {
        Some(run) if run.status.is_final() => {
            // Finished, but the state was not cleared (a failure in between): the end's
            // entry may be missing too (it is written before the state is cleared).
            let status = run.status;
            let event = if status == RunStatus::Completed {
                completed_event(&run)
            } else {
                let reason = run.errors.last().map(|e| e.detail.clone());
                ended_event(&run, reason.unwrap_or_default())
            };
            append_unless_written(deps, tenant, event).await?;
            let window_end = (status == RunStatus::Completed).then_some(run.window_end);
            lease.end_active_run(deps, window_end).await?;
            return Ok(Outcome::Ended { run_id, status });
        }
        Some(mut run) => {
            if !run.started_audited {
                // Created by an invocation that failed before its entry was known to be
                // written: write it now unless it is there.
                append_unless_written(deps, tenant, started_event(&run)).await?;
                run.started_audited = true;
            }
            run
        }
        None => {
            let (start, end) = settings.date_range.window(now, lease.state.last_window_end);
            let mut run = ExportRun::new(
                tenant,
                run_id.clone(),
                trigger,
                now,
                start,
                end,
                settings.channels.clone(),
            );
            match deps.store.create(&run).await {
                Ok(()) => metrics::count(names::EXPORT_RUNS_STARTED, 1),
                Err(StoreError::AlreadyExists) => {}
                Err(err) => return Err(err.into()),
            }
            deps.audit.append(tenant, started_event(&run)).await?;
            // Stored with the run's next checkpoint.
            run.started_audited = true;
            run
        }
    };
    run.invocations += 1;
    run.status = RunStatus::Running;
    run.updated_at = now;

    let token = match deps.tokens.access_token(tenant).await {
        Ok(token) => token,
        Err(err @ (TokenError::NotConnected | TokenError::NoLocation)) => {
            end_run(
                deps,
                lease,
                &mut run,
                RunStatus::NotConnected,
                "connection",
                err.to_string(),
            )
            .await?;
            return Ok(Outcome::Ended {
                run_id,
                status: RunStatus::NotConnected,
            });
        }
        Err(err @ TokenError::NeedsReconsent) => {
            end_run(
                deps,
                lease,
                &mut run,
                RunStatus::NeedsReconsent,
                "connection",
                err.to_string(),
            )
            .await?;
            return Ok(Outcome::Ended {
                run_id,
                status: RunStatus::NeedsReconsent,
            });
        }
        Err(err @ TokenError::Unavailable(_)) => {
            return fail_run(deps, tenant, &mut run, "connection", err.to_string()).await;
        }
    };
    match &run.location_id {
        Some(location) if *location != token.location_id => {
            end_run(
                deps,
                lease,
                &mut run,
                RunStatus::NotConnected,
                "connection",
                "the connection now belongs to another location".into(),
            )
            .await?;
            return Ok(Outcome::Ended {
                run_id,
                status: RunStatus::NotConnected,
            });
        }
        _ => run.location_id = Some(token.location_id.clone()),
    }
    let client = match HighLevelClient::new(
        deps.http.clone(),
        &deps.config.highlevel_base_url,
        token.access_token,
        deps.highlevel_retry,
    ) {
        Ok(client) => client,
        Err(err) => return fail_run(deps, tenant, &mut run, "highlevel", err.to_string()).await,
    };
    let sink = match open_destination(deps, tenant, &settings).await {
        Ok(sink) => sink,
        Err(detail) => return fail_run(deps, tenant, &mut run, "destination", detail).await,
    };

    let progress = drive(
        deps,
        &mut run,
        &token.location_id,
        &client,
        &sink,
        budget,
        settings.exclude_withdrawn_consent,
    )
    .await;
    let stats = client.stats();
    run.requests += stats.requests;
    run.retries += stats.retries;
    run.throttled += stats.throttled;
    run.updated_at = deps.store.clock().now();
    match progress {
        Ok(Progress::Done) => {
            metrics::count(names::EXPORT_RUNS_COMPLETED, 1);
            run.status = RunStatus::Completed;
            run.phase = Phase::Done;
            run.finished_at = Some(run.updated_at);
            deps.store.put(&run).await?;
            // The entry before the state is cleared: a failure in between leaves the
            // run active and final, and the next delivery writes what is missing.
            deps.audit.append(tenant, completed_event(&run)).await?;
            lease.end_active_run(deps, Some(run.window_end)).await?;
            tracing::info!(
                run_id = %run_id,
                conversations = run.conversations,
                conversations_restricted = run.conversations_restricted,
                conversations_consent_withdrawn = run.conversations_consent_withdrawn,
                messages = run.messages,
                bytes = run.bytes,
                requests = run.requests,
                "export run completed"
            );
            Ok(Outcome::Completed {
                run_id,
                conversations: run.conversations,
                messages: run.messages,
            })
        }
        Ok(Progress::OutOfTime) => {
            metrics::count(names::EXPORT_RUNS_CONTINUED, 1);
            run.status = RunStatus::Continued;
            deps.store.put(&run).await?;
            kick::kick(deps, tenant, run.updated_at + CONTINUE_AFTER).await?;
            tracing::info!(run_id = %run_id, phase = ?run.phase, "export run continues in a follow-up invocation");
            Ok(Outcome::Continued { run_id })
        }
        Ok(Progress::AccountClosing) => {
            tracing::info!(run_id = %run_id, "export run stopped: the account is being deleted");
            Ok(Outcome::AccountClosing)
        }
        Err(StepError::Store(err)) => Err(err.into()),
        Err(err) => fail_run(deps, tenant, &mut run, err.kind(), err.to_string()).await,
    }
}

/// Ends a run that will not be resumed, without exporting anything more.
async fn end_run(
    deps: &Deps,
    lease: &mut Lease,
    run: &mut ExportRun,
    status: RunStatus,
    kind: &str,
    detail: String,
) -> Result<(), WorkerError> {
    metrics::count(names::EXPORT_RUNS_FAILED, 1);
    let now = deps.store.clock().now();
    run.status = status;
    run.finished_at = Some(now);
    run.updated_at = now;
    run.record_error(now, kind, detail.clone());
    deps.store.put(run).await?;
    // As for a completion: the entry first, then the state.
    deps.audit
        .append(&run.tenant, ended_event(run, detail))
        .await?;
    lease.end_active_run(deps, None).await?;
    tracing::warn!(run_id = %run.run_id, status = ?status, "export run ended without exporting");
    Ok(())
}

fn started_event(run: &ExportRun) -> Event {
    Event::new(ACTOR, "export.started", format!("RUN#{}", run.run_id)).detail(
        "trigger",
        serde_json::to_value(run.trigger).unwrap_or_default(),
    )
}

fn completed_event(run: &ExportRun) -> Event {
    Event::new(ACTOR, "export.completed", format!("RUN#{}", run.run_id))
        .detail("conversations", run.conversations)
        // Counts only: who was left out is named nowhere in the entry.
        .detail("conversations_restricted", run.conversations_restricted)
        .detail(
            "conversations_consent_withdrawn",
            run.conversations_consent_withdrawn,
        )
        .detail("messages", run.messages)
        .detail("bytes", run.bytes)
        .detail("invocations", run.invocations)
}

fn ended_event(run: &ExportRun, reason: String) -> Event {
    Event::new(ACTOR, "export.ended", format!("RUN#{}", run.run_id))
        .outcome(AuditOutcome::Failure)
        .detail(
            "status",
            serde_json::to_value(run.status).unwrap_or_default(),
        )
        .detail("reason", reason)
}

/// Appends `event` unless the tenant's chain holds an entry with its action and target
/// already (each run's start and end happen once). Reads the chain: recovery only.
async fn append_unless_written(
    deps: &Deps,
    tenant: &TenantId,
    event: Event,
) -> Result<(), WorkerError> {
    if !deps
        .audit
        .holds(tenant, &event.action, &event.target, |_| true)
        .await?
    {
        deps.audit.append(tenant, event).await?;
    }
    Ok(())
}

/// Records a failure; the run stays active and the next trigger resumes it.
async fn fail_run(
    deps: &Deps,
    tenant: &TenantId,
    run: &mut ExportRun,
    kind: &str,
    detail: String,
) -> Result<Outcome, WorkerError> {
    metrics::count(names::EXPORT_RUNS_FAILED, 1);
    let now = deps.store.clock().now();
    run.status = RunStatus::Failed;
    run.updated_at = now;
    run.record_error(now, kind, detail.clone());
    deps.store.put(run).await?;
    deps.audit
        .append(
            tenant,
            Event::new(ACTOR, "export.failed", format!("RUN#{}", run.run_id))
                .outcome(AuditOutcome::Failure)
                .detail("kind", kind)
                .detail("reason", detail.clone()),
        )
        .await?;
    record_failed_notice(deps, run, kind).await?;
    tracing::warn!(run_id = %run.run_id, kind, error = %detail, "export run failed; the next trigger resumes it");
    Ok(Outcome::Failed {
        run_id: run.run_id.clone(),
        error: detail,
    })
}

/// The tenant's notice of the failure, written to the outbox for the dsar function to
/// deliver (this function holds no notification secret). Once per run (a resumed run
/// that fails again writes nothing more; the export log has every attempt). The
/// error's kind only, never its text (a notice carries no free text).
async fn record_failed_notice(deps: &Deps, run: &ExportRun, kind: &str) -> Result<(), WorkerError> {
    use custody::notice::{Notice, NoticeKind, event_ids};
    let now = deps.store.clock().now();
    let data = serde_json::json!({
        "run_id": run.run_id,
        "error_kind": kind,
        "attempt": run.invocations,
        "resumes_on_next_trigger": true,
        "runs": "/export/runs",
    });
    let notice = Notice::new(
        &run.tenant,
        event_ids::export_failed(&run.run_id),
        NoticeKind::ExportRunFailed,
        None,
        now,
        match data {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
        now,
    );
    custody::notice::record(&deps.store, &notice).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// The destination
// ---------------------------------------------------------------------------------

/// The tenant's destination, whichever kind.
pub enum AnySink {
    WebDav(Box<WebDavSink>),
    S3(S3Sink),
}

impl Sink for AnySink {
    async fn put(&self, path: &str, content: Bytes) -> Result<Receipt, SinkError> {
        match self {
            AnySink::WebDav(sink) => sink.put(path, content).await,
            AnySink::S3(sink) => sink.put(path, content).await,
        }
    }
}

async fn open_destination(
    deps: &Deps,
    tenant: &TenantId,
    settings: &ExportSettings,
) -> Result<AnySink, String> {
    match &settings.destination {
        Destination::Webdav {
            url,
            username,
            password,
        } => {
            let context = SealContext::new(tenant, Purpose::DestinationPassword, password_record());
            let password = deps
                .sealer
                .open(&context, password)
                .await
                .map_err(|e| e.to_string())?;
            WebDavSink::new(
                deps.http.clone(),
                url,
                deps.config.egress.allow_loopback,
                username.clone(),
                password,
                deps.sink_retry,
            )
            .map(|sink| AnySink::WebDav(Box::new(sink)))
            .map_err(|e| format!("destination URL {e}"))
        }
        Destination::S3 {
            bucket,
            prefix,
            role_arn,
        } => {
            // Only ever the customer's role (crate::customer_role): the function's own
            // role may write no customer bucket.
            let client =
                crate::customer_role::s3_client(deps.sdk.as_ref(), tenant, role_arn.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
            Ok(AnySink::S3(S3Sink::new(client, bucket.clone(), prefix)))
        }
    }
}

// ---------------------------------------------------------------------------------
// The phases
// ---------------------------------------------------------------------------------

/// The export-endpoint queries that cover `channels`. The endpoint filters by one
/// channel, and without a filter returns every non-email type; so one selected channel
/// is one filtered query, and several are the unfiltered query (narrowed here) plus
/// an Email query when Email is selected.
pub fn plan(channels: &[Channel]) -> Vec<Option<Channel>> {
    if let [only] = channels {
        return vec![Some(*only)];
    }
    let mut plan = Vec::new();
    if channels.iter().any(|c| *c != Channel::Email) {
        plan.push(None);
    }
    if channels.contains(&Channel::Email) {
        plan.push(Some(Channel::Email));
    }
    plan
}

fn selected(channels: &[Channel], message: &Message) -> bool {
    message.channel().is_some_and(|c| channels.contains(&c))
}

fn query(run: &ExportRun, location_id: &str, channel: Option<Channel>) -> ExportQuery {
    ExportQuery {
        location_id: location_id.to_owned(),
        channel,
        conversation_id: None,
        start: run.window_start,
        end: Some(run.window_end),
        cursor: None,
        limit: MAX_PAGE_SIZE,
    }
}

async fn checkpoint(deps: &Deps, run: &mut ExportRun) -> Result<(), StoreError> {
    run.updated_at = deps.store.clock().now();
    deps.store.put(run).await
}

async fn drive(
    deps: &Deps,
    run: &mut ExportRun,
    location_id: &str,
    client: &HighLevelClient,
    sink: &AnySink,
    budget: &Budget,
    exclude_withdrawn_consent: bool,
) -> Result<Progress, StepError> {
    // Checked again at every step (at most every `FENCE_RECHECK`): a purge's final
    // sweep then comes after this run's last write.
    let tenant = run.tenant.clone();
    let fence = custody::privacy::FenceWatch::new(&deps.store, &tenant);
    let plan = plan(&run.channels);
    let pk = keys::tenant(&run.tenant);
    let dir = archive::run_dir(location_id, run);
    let mut discovered: Option<HashSet<String>> = None;
    // Who is left out: loaded once per invocation, before its first conversation.
    let mut exclusions: Option<Exclusions> = None;
    loop {
        match run.phase {
            Phase::Discover => {
                let Some(channel) = plan.get(run.plan_pos as usize).copied() else {
                    run.phase = Phase::Write;
                    run.write_page = 0;
                    run.write_offset = 0;
                    checkpoint(deps, run).await?;
                    continue;
                };
                if budget.exhausted() {
                    return Ok(Progress::OutOfTime);
                }
                if fence.closing().await? {
                    return Ok(Progress::AccountClosing);
                }
                let seen = match &mut discovered {
                    Some(seen) => seen,
                    None => {
                        let pages = deps
                            .store
                            .query_all::<RunPage>(&pk, &format!("RUNPAGE#{}#", run.run_id))
                            .await?;
                        discovered.insert(
                            pages
                                .into_iter()
                                .filter(|p| p.page < run.pages)
                                .flat_map(|p| p.conversation_ids)
                                .collect(),
                        )
                    }
                };
                let mut request = query(run, location_id, channel);
                request.cursor = run.cursor.clone();
                let page = client.export_page(&request).await?;
                let mut fresh = Vec::new();
                for message in &page.messages {
                    if selected(&run.channels, message)
                        && seen.insert(message.conversation_id.clone())
                    {
                        fresh.push(message.conversation_id.clone());
                    }
                }
                if !fresh.is_empty() {
                    deps.store
                        .put(&RunPage {
                            tenant: run.tenant.clone(),
                            run_id: run.run_id.clone(),
                            page: run.pages,
                            conversation_ids: fresh,
                            expires_at: run.expires_at,
                        })
                        .await?;
                    run.pages += 1;
                }
                match page.next_cursor {
                    Some(cursor) if !page.messages.is_empty() => run.cursor = Some(cursor),
                    _ => {
                        run.cursor = None;
                        run.plan_pos += 1;
                    }
                }
                checkpoint(deps, run).await?;
            }
            Phase::Write => {
                if run.write_page >= run.pages {
                    run.phase = Phase::Manifest;
                    checkpoint(deps, run).await?;
                    continue;
                }
                let key = Key::new(
                    pk.clone(),
                    keys::export_run_page(&run.run_id, run.write_page),
                );
                let page = deps.store.get::<RunPage>(&key).await?.ok_or_else(|| {
                    StepError::Checkpoint(format!(
                        "page {} of the work list is missing",
                        run.write_page
                    ))
                })?;
                while let Some(conversation_id) =
                    page.conversation_ids.get(run.write_offset as usize)
                {
                    if budget.exhausted() {
                        return Ok(Progress::OutOfTime);
                    }
                    if fence.closing().await? {
                        return Ok(Progress::AccountClosing);
                    }
                    let messages =
                        conversation_messages(run, location_id, conversation_id, client, &plan)
                            .await?;
                    let excluded = match &exclusions {
                        Some(loaded) => loaded,
                        None => exclusions.insert(
                            Exclusions::load(
                                &deps.store,
                                &deps.app_secret,
                                &tenant,
                                exclude_withdrawn_consent,
                            )
                            .await?,
                        ),
                    };
                    if let Some(reason) = excluded.reason(&messages) {
                        drop(messages);
                        // A file of this run for it from before the subject was left
                        // out (an invocation stopped between the file and its
                        // checkpoint) leaves the manifest too.
                        deps.store
                            .delete(&Key::new(
                                pk.clone(),
                                keys::export_run_file(&run.run_id, conversation_id),
                            ))
                            .await?;
                        // Moved with the write position in one checkpoint: a resumed or
                        // retried run counts each conversation once.
                        match reason {
                            Reason::Restricted => run.conversations_restricted += 1,
                            Reason::ConsentWithdrawn => run.conversations_consent_withdrawn += 1,
                        }
                        run.write_offset += 1;
                        checkpoint(deps, run).await?;
                        continue;
                    }
                    let content =
                        archive::conversation_file(run, location_id, conversation_id, &messages)
                            .map_err(|e| StepError::Encode(e.to_string()))?;
                    let count = messages.len() as u64;
                    drop(messages);
                    let path = archive::conversation_path(conversation_id);
                    let receipt = sink
                        .put(&format!("{dir}/{path}"), Bytes::from(content))
                        .await?;
                    deps.store
                        .put(&RunFile {
                            tenant: run.tenant.clone(),
                            run_id: run.run_id.clone(),
                            conversation_id: conversation_id.clone(),
                            path,
                            messages: count,
                            bytes: receipt.bytes,
                            sha256: receipt.sha256,
                            expires_at: run.expires_at,
                        })
                        .await?;
                    run.write_offset += 1;
                    run.conversations += 1;
                    run.messages += count;
                    run.bytes += receipt.bytes;
                    metrics::count(names::EXPORT_MESSAGES, count);
                    metrics::count(names::EXPORT_BYTES, receipt.bytes);
                    checkpoint(deps, run).await?;
                }
                run.write_page += 1;
                run.write_offset = 0;
                checkpoint(deps, run).await?;
            }
            Phase::Manifest => {
                if budget.exhausted() {
                    return Ok(Progress::OutOfTime);
                }
                if fence.closing().await? {
                    return Ok(Progress::AccountClosing);
                }
                let files = deps
                    .store
                    .query_all::<RunFile>(&pk, &format!("RUNFILE#{}#", run.run_id))
                    .await?;
                let content = archive::manifest(run, location_id, &files)
                    .map_err(|e| StepError::Encode(e.to_string()))?;
                let receipt = sink
                    .put(
                        &format!("{dir}/{}", archive::MANIFEST_NAME),
                        Bytes::from(content),
                    )
                    .await?;
                run.bytes += receipt.bytes;
                metrics::count(names::EXPORT_BYTES, receipt.bytes);
                run.phase = Phase::Done;
                return Ok(Progress::Done);
            }
            Phase::Done => return Ok(Progress::Done),
        }
    }
}

/// Every message of one conversation in the run's window and channels, in order.
async fn conversation_messages(
    run: &ExportRun,
    location_id: &str,
    conversation_id: &str,
    client: &HighLevelClient,
    plan: &[Option<Channel>],
) -> Result<Vec<Message>, StepError> {
    let mut messages = Vec::new();
    for channel in plan {
        let mut request = query(run, location_id, *channel);
        request.conversation_id = Some(conversation_id.to_owned());
        loop {
            let page = client.export_page(&request).await?;
            let more = !page.messages.is_empty() && page.next_cursor.is_some();
            messages.extend(
                page.messages
                    .into_iter()
                    .filter(|m| m.conversation_id == conversation_id && selected(&run.channels, m)),
            );
            if !more {
                break;
            }
            request.cursor = page.next_cursor;
        }
    }
    messages.sort_by(|a, b| (a.date_added, &a.id).cmp(&(b.date_added, &b.id)));
    messages.dedup_by(|a, b| a.id == b.id);
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_channels() {
        assert_eq!(plan(&[Channel::Sms]), vec![Some(Channel::Sms)]);
        assert_eq!(plan(&[Channel::Email]), vec![Some(Channel::Email)]);
        assert_eq!(plan(&[Channel::Sms, Channel::Call]), vec![None]);
        assert_eq!(
            plan(&[Channel::Sms, Channel::Email]),
            vec![None, Some(Channel::Email)]
        );
    }

    /// The purge's final sweep comes `PURGE_GRACE` after the account-deletion fence: a
    /// writer that passed its check just before must be done by then. Long-running
    /// writers check again every `FENCE_RECHECK`, then write at most one step.
    #[test]
    fn the_purge_grace_outlasts_a_writer_between_fence_checks() {
        use custody::privacy::{FENCE_RECHECK, PURGE_GRACE};
        let grace = PURGE_GRACE.to_std().unwrap();
        // Export: one step (a conversation fetched and written, with its retries) fits
        // in DEADLINE_MARGIN by design.
        assert!(grace > FENCE_RECHECK + DEADLINE_MARGIN);
        // Import: one batch pushed with every retry (each attempt up to the client's
        // timeout) and the backoffs in between.
        let policy = custody::webhook::RetryPolicy::default();
        let backoffs: Duration = (1..policy.max_attempts).map(|r| policy.ceiling(r)).sum();
        let push = custody::http::DEFAULT_TIMEOUT * policy.max_attempts + backoffs;
        assert!(grace > FENCE_RECHECK + push, "{push:?}");
        // HTTP routes check the fence per request; API Gateway cuts a request at 30 s.
        assert!(grace > Duration::from_secs(30));
    }

    #[test]
    fn a_check_budget_runs_out_exactly() {
        let budget = Budget::checks(2);
        assert!(!budget.exhausted());
        assert!(!budget.exhausted());
        assert!(budget.exhausted());
        assert!(budget.exhausted());
        assert!(!Budget::unlimited().exhausted());
        let past = Budget::from_deadline_ms(0, Duration::ZERO);
        assert!(past.exhausted());
    }

    #[test]
    fn trigger_events_parse() {
        let event: TriggerEvent =
            serde_json::from_str(include_str!("../../../events/export/schedule.json")).unwrap();
        assert!(event.scheduled_time.is_some() && !event.kick);
        let event: TriggerEvent =
            serde_json::from_str(include_str!("../../../events/export/kick.json")).unwrap();
        assert!(event.kick);
    }
}

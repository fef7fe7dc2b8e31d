//! The export worker: one invocation of a tenant's export run.
//!
//! 1. A scheduled event is claimed once per scheduled time (idempotency), so a
//!    redelivered event is a no-op; then the run lease makes one invocation per tenant
//!    run at a time (a concurrent duplicate or kick is a no-op).
//! 2. The run is the tenant's active run (resumed from its checkpoint) or a new one.
//! 3. Discover: page the export endpoint over the run's window and note each
//!    conversation touched, page by page (ids only) on the work list. Write: for each
//!    conversation, fetch its messages in the window, write one file atomically,
//!    record it. The two overlap (`Pipeline`): the next discovery page and up to
//!    `CONVERSATIONS_IN_FLIGHT` conversations run concurrently, paced by the one
//!    HighLevel client's limiter, and are committed to the checkpoint in work-list
//!    order. Then the manifest, encoded entry by entry from the run's files read a
//!    table page at a time and streamed to the destination (`Sink::put_stream`).
//! 4. Near the deadline the run stops launching, waits for the steps in flight, and
//!    saves its checkpoint; a one-time schedule continues it. On failure it stays
//!    active and the next trigger resumes it. Messages pass through memory only, at
//!    most `CONVERSATIONS_IN_FLIGHT` conversations at a time.
//! 5. A conversation whose contact is suppressed (`crate::suppress`: restricted, or
//!    withdrew consent for `export` when the settings say so) is not written: no file,
//!    no manifest entry; only its count on the run moves, with the write position.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
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
use custody::sink::{
    BodyError, BodySource, BodyStream, Receipt, S3Sink, Sink, SinkError, WebDavSink,
};
use custody::store::{Condition, Key, PageRequest, StoreError, keys};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::Deps;
use crate::archive;
use crate::kick;
use crate::model::{ExportRun, ExportState, Phase, RunFile, RunPage, RunSeen, RunStatus, Trigger};
use crate::settings::{Destination, ExportSettings, password_record};
use crate::suppress::{ExclusionError, Exclusions};
use crate::tokens::TokenError;
use custody::suppression::Reason;

/// Actor of the worker's audit entries.
pub const ACTOR: &str = "system:export";
/// Time kept back before the Lambda deadline to save the checkpoint and schedule the
/// continuation; the conversations in flight at a stop (fetched and written
/// concurrently, each with bounded retries) finish in it.
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
        Ok(client) => Arc::new(client),
        Err(err) => return fail_run(deps, tenant, &mut run, "highlevel", err.to_string()).await,
    };
    let sink = match open_destination(deps, tenant, &settings).await {
        Ok(sink) => Arc::new(sink),
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

    async fn put_stream(&self, path: &str, body: &dyn BodySource) -> Result<Receipt, SinkError> {
        match self {
            AnySink::WebDav(sink) => sink.put_stream(path, body).await,
            AnySink::S3(sink) => sink.put_stream(path, body).await,
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

/// Conversations in flight at once (fetched, checked and written concurrently). The
/// HighLevel client's limiter paces their requests: this only has to be enough to keep
/// its window full while destination and table writes are under way, and bounds the
/// messages in memory to this many conversations.
pub const CONVERSATIONS_IN_FLIGHT: usize = 16;
/// Run files per table page while the manifest is written.
const MANIFEST_PAGE: i32 = 500;

async fn drive(
    deps: &Deps,
    run: &mut ExportRun,
    location_id: &str,
    client: &Arc<HighLevelClient>,
    sink: &Arc<AnySink>,
    budget: &Budget,
    exclude_withdrawn_consent: bool,
) -> Result<Progress, StepError> {
    // Checked again at every step (at most every `FENCE_RECHECK`): a purge's final
    // sweep then comes after this run's last write.
    let tenant = run.tenant.clone();
    let fence = custody::privacy::FenceWatch::new(&deps.store, &tenant);
    let pk = keys::tenant(&run.tenant);
    let dir = archive::run_dir(location_id, run);
    loop {
        match run.phase {
            Phase::Discover | Phase::Write => {
                let context = Arc::new(Context {
                    deps: deps.clone(),
                    client: client.clone(),
                    sink: sink.clone(),
                    run: run.clone(),
                    location_id: location_id.to_owned(),
                    plan: plan(&run.channels),
                    dir: dir.clone(),
                });
                let mut pipeline = Pipeline::new(context, run, exclude_withdrawn_consent);
                match pipeline.drive(run, budget, &fence).await? {
                    Some(stop) => return Ok(stop),
                    None => continue,
                }
            }
            Phase::Manifest => {
                if budget.exhausted() {
                    return Ok(Progress::OutOfTime);
                }
                if fence.closing().await? {
                    return Ok(Progress::AccountClosing);
                }
                let prefix = format!("RUNFILE#{}#", run.run_id);
                // Two passes over the run's files, a page at a time: the totals come
                // before the list in the document. The second pass is the manifest's
                // body, streamed to the destination (again for each retry of the
                // write), so the manifest is never whole in memory.
                let mut totals = archive::ManifestTotals::default();
                run_files(deps, &pk, &prefix, |file| {
                    totals.add(&file);
                    Ok(())
                })
                .await?;
                let body = ManifestBody {
                    deps: deps.clone(),
                    pk: pk.clone(),
                    prefix,
                    run: run.clone(),
                    location_id: location_id.to_owned(),
                    totals,
                    failure: Arc::default(),
                };
                let receipt = sink
                    .put_stream(&format!("{dir}/{}", archive::MANIFEST_NAME), &body)
                    .await
                    .map_err(|err| match err {
                        // Our own failure, with its own kind (store, encoding, …).
                        SinkError::Source(_) => body.take_failure().unwrap_or(err.into()),
                        err => err.into(),
                    })?;
                run.bytes += receipt.bytes;
                metrics::count(names::EXPORT_BYTES, receipt.bytes);
                run.phase = Phase::Done;
                return Ok(Progress::Done);
            }
            Phase::Done => return Ok(Progress::Done),
        }
    }
}

/// Calls `each` with every file of the run, in sort-key order, one table page at a time.
async fn run_files(
    deps: &Deps,
    pk: &str,
    prefix: &str,
    mut each: impl FnMut(RunFile) -> Result<(), StepError>,
) -> Result<(), StepError> {
    let mut request = PageRequest {
        limit: Some(MANIFEST_PAGE),
        ..PageRequest::default()
    };
    loop {
        let page = deps.store.query::<RunFile>(pk, prefix, &request).await?;
        for file in page.items {
            each(file)?;
        }
        match page.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => return Ok(()),
        }
    }
}

/// The manifest's body: the run's files read a table page at a time, encoded entry by
/// entry, one chunk per page. Each opening reads them again from the start.
struct ManifestBody {
    deps: Deps,
    pk: String,
    prefix: String,
    run: ExportRun,
    location_id: String,
    /// The sums of the first pass: the header states them, the list must match them.
    totals: archive::ManifestTotals,
    /// The typed error behind the last opening's failure (the sink sees its text).
    failure: Arc<std::sync::Mutex<Option<StepError>>>,
}

/// Where a manifest body is: the next table page to read, or done reading.
struct ManifestCursor {
    /// `None` once finished.
    writer: Option<archive::ManifestWriter>,
    listed: archive::ManifestTotals,
    next: Option<PageRequest>,
}

impl ManifestBody {
    fn take_failure(&self) -> Option<StepError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn fail(failure: &std::sync::Mutex<Option<StepError>>, err: StepError) -> BodyError {
        let text = err.to_string();
        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        BodyError(text)
    }
}

impl BodySource for ManifestBody {
    fn open(&self) -> BodyStream {
        let failure = self.failure.clone();
        let writer = match archive::ManifestWriter::new(&self.run, &self.location_id, &self.totals)
        {
            Ok(writer) => writer,
            Err(err) => {
                let err = Self::fail(&failure, StepError::Encode(err.to_string()));
                return Box::pin(futures_util::stream::once(async move { Err(err) }));
            }
        };
        let start = ManifestCursor {
            writer: Some(writer),
            listed: archive::ManifestTotals::default(),
            next: Some(PageRequest {
                limit: Some(MANIFEST_PAGE),
                ..PageRequest::default()
            }),
        };
        let (store, pk, prefix, totals) = (
            self.deps.store.clone(),
            self.pk.clone(),
            self.prefix.clone(),
            self.totals,
        );
        Box::pin(futures_util::stream::try_unfold(start, move |mut at| {
            let (store, pk, prefix, failure) =
                (store.clone(), pk.clone(), prefix.clone(), failure.clone());
            async move {
                let Some(writer) = at.writer.as_mut() else {
                    return Ok(None);
                };
                let Some(request) = at.next.take() else {
                    if at.listed != totals {
                        return Err(Self::fail(
                            &failure,
                            StepError::Checkpoint(
                                "the run's files changed while the manifest was written".into(),
                            ),
                        ));
                    }
                    let tail = at.writer.take().map(|w| w.finish()).unwrap_or_default();
                    return Ok(Some((Bytes::from(tail), at)));
                };
                let page = store
                    .query::<RunFile>(&pk, &prefix, &request)
                    .await
                    .map_err(|e| Self::fail(&failure, e.into()))?;
                for file in page.items {
                    at.listed.add(&file);
                    writer
                        .entry(&file)
                        .map_err(|e| Self::fail(&failure, StepError::Encode(e.to_string())))?;
                }
                let chunk = Bytes::from(writer.take());
                at.next = page.next_cursor.map(|cursor| PageRequest {
                    cursor: Some(cursor),
                    ..request
                });
                Ok(Some((chunk, at)))
            }
        }))
    }
}

/// What the concurrent steps of a run share.
struct Context {
    deps: Deps,
    client: Arc<HighLevelClient>,
    sink: Arc<AnySink>,
    /// The run as the invocation found it: the fields a file depends on (id, start,
    /// window, channels) never change.
    run: ExportRun,
    location_id: String,
    plan: Vec<Option<Channel>>,
    dir: String,
}

/// What one conversation step did.
#[derive(Debug, Clone, Copy)]
enum Written {
    File {
        messages: u64,
        bytes: u64,
    },
    /// Left out: its contact is suppressed.
    Excluded(Reason),
    /// Nothing to do (a work-list page already written to its end).
    Nothing,
}

/// The result of a concurrent task.
enum StepEvent {
    /// One discovery page.
    Page(Result<custody::highlevel::ExportPage, HighLevelError>),
    /// The conversation step with this sequence number.
    Conversation(u64, Result<Written, StepError>),
}

/// A conversation step launched, in work-list order.
struct Slot {
    page: u32,
    offset: u32,
    /// The last conversation of its page: committing it moves to the next page.
    last_in_page: bool,
    done: Option<Written>,
}

/// A conversation read from the work list, not launched yet.
struct Pending {
    page: u32,
    offset: u32,
    last_in_page: bool,
    conversation_id: Option<String>,
}

/// Discovery and writing, overlapped: the next discovery page and up to
/// [`CONVERSATIONS_IN_FLIGHT`] conversations are fetched and written concurrently, all
/// paced by the one HighLevel client. Results are committed to the checkpoint in
/// work-list order only (the write position moves over the finished prefix), so the
/// checkpoint stays exact: a conversation after it may have been written already, and
/// a resumed run writes it again with the same bytes at the same path (as after a
/// crash between a file and its checkpoint), counting it once. Tasks are never
/// abandoned: on a stop or an error nothing new starts and every task in flight is
/// waited for (a dropped write could leave a partial file behind), then the finished
/// prefix is committed.
struct Pipeline {
    context: Arc<Context>,
    exclude_withdrawn_consent: bool,
    tasks: JoinSet<StepEvent>,
    discovering: bool,
    conversations_in_flight: usize,
    /// Launched steps from the oldest not yet committed; `base` is its sequence number.
    window: VecDeque<Slot>,
    base: u64,
    /// Read from the work list, not launched.
    queue: VecDeque<Pending>,
    /// The next work-list page to read, and where in it to start.
    next_page: u32,
    start_offset: u32,
    exclusions: Option<Arc<Exclusions>>,
    /// The account is being deleted: steps in flight finish, but the run item is not
    /// written again (the purge deletes it).
    closing: bool,
}

/// Marks every conversation of a committed work-list page as seen.
async fn write_seen(deps: &Deps, run: &ExportRun, listed: &RunPage) -> Result<(), StoreError> {
    let items: Vec<RunSeen> = listed
        .conversation_ids
        .iter()
        .map(|id| RunSeen {
            tenant: run.tenant.clone(),
            run_id: run.run_id.clone(),
            digest: digest(id),
            page: listed.page,
            expires_at: run.expires_at,
        })
        .collect();
    deps.store.put_all(&items).await
}

/// A conversation id's key in the discovery set ([`RunSeen`]): the hex of 128 bits of
/// its SHA-256, so the key's length does not depend on what the server sent.
fn digest(conversation_id: &str) -> String {
    hex::encode(&Sha256::digest(conversation_id.as_bytes())[..16])
}

impl Pipeline {
    fn new(context: Arc<Context>, run: &ExportRun, exclude_withdrawn_consent: bool) -> Self {
        Self {
            context,
            exclude_withdrawn_consent,
            tasks: JoinSet::new(),
            discovering: false,
            conversations_in_flight: 0,
            window: VecDeque::new(),
            base: 0,
            queue: VecDeque::new(),
            next_page: run.write_page,
            start_offset: run.write_offset,
            exclusions: None,
            closing: false,
        }
    }

    /// Runs until discovery and writing are done (`None`: the run is at the manifest)
    /// or the invocation must stop.
    async fn drive(
        &mut self,
        run: &mut ExportRun,
        budget: &Budget,
        fence: &custody::privacy::FenceWatch<'_>,
    ) -> Result<Option<Progress>, StepError> {
        let mut stop: Option<Result<Progress, StepError>> = None;
        loop {
            if stop.is_none() {
                match self.launch(run, budget, fence).await {
                    Ok(Some(progress)) => {
                        self.closing = matches!(progress, Progress::AccountClosing);
                        stop = Some(Ok(progress));
                    }
                    Ok(None) => {}
                    Err(err) => stop = Some(Err(err)),
                }
            }
            if self.tasks.is_empty() {
                if let Some(end) = stop {
                    return end.map(Some);
                }
                if run.phase == Phase::Write
                    && self.queue.is_empty()
                    && self.next_page >= run.pages
                    && self.window.is_empty()
                {
                    run.phase = Phase::Manifest;
                    checkpoint(&self.context.deps, run).await?;
                    return Ok(None);
                }
                // Not reached: with nothing in flight, `launch` started something or
                // the run moved on.
                return Err(StepError::Checkpoint(format!(
                    "the run is stuck at page {} of {} (phase {:?})",
                    run.write_page, run.pages, run.phase
                )));
            }
            let event = match self.tasks.join_next().await {
                Some(Ok(event)) => event,
                Some(Err(err)) => {
                    // A task panicked: its step is not committed; stop.
                    if stop.as_ref().is_none_or(Result::is_ok) {
                        stop = Some(Err(StepError::Checkpoint(format!(
                            "an export step failed: {err}"
                        ))));
                    }
                    continue;
                }
                None => continue,
            };
            let handled = match event {
                StepEvent::Page(page) => {
                    self.discovering = false;
                    match page {
                        Ok(page) => self.discovered_page(run, page).await,
                        Err(err) => Err(err.into()),
                    }
                }
                StepEvent::Conversation(seq, result) => {
                    self.conversations_in_flight -= 1;
                    match result {
                        Ok(written) => {
                            let at = usize::try_from(seq - self.base).unwrap_or(usize::MAX);
                            if let Some(slot) = self.window.get_mut(at) {
                                slot.done = Some(written);
                            }
                            self.commit(run).await
                        }
                        Err(err) => Err(err),
                    }
                }
            };
            if let Err(err) = handled {
                // The first error is the one reported; a stop for time or the fence
                // yields to it (the run failed, the next trigger resumes it).
                if stop.as_ref().is_none_or(Result::is_ok) {
                    stop = Some(Err(err));
                }
            }
        }
    }

    /// Starts what may start now: the next discovery page, and conversations up to the
    /// limit. `Some` when the invocation must stop.
    async fn launch(
        &mut self,
        run: &mut ExportRun,
        budget: &Budget,
        fence: &custody::privacy::FenceWatch<'_>,
    ) -> Result<Option<Progress>, StepError> {
        let context = self.context.clone();
        let deps = &context.deps;
        if run.phase == Phase::Discover && !self.discovering {
            match self.context.plan.get(run.plan_pos as usize).copied() {
                None => {
                    run.phase = Phase::Write;
                    checkpoint(deps, run).await?;
                }
                Some(channel) => {
                    if budget.exhausted() {
                        return Ok(Some(Progress::OutOfTime));
                    }
                    if fence.closing().await? {
                        return Ok(Some(Progress::AccountClosing));
                    }
                    let mut request = query(run, &self.context.location_id, channel);
                    request.cursor = run.cursor.clone();
                    let client = self.context.client.clone();
                    self.tasks.spawn(
                        async move { StepEvent::Page(client.export_page(&request).await) }
                            .in_current_span(),
                    );
                    self.discovering = true;
                }
            }
        }
        // Keep the work list read a little ahead of the launches.
        while self.queue.len() < CONVERSATIONS_IN_FLIGHT && self.next_page < run.pages {
            self.read_page(run).await?;
        }
        while self.conversations_in_flight < CONVERSATIONS_IN_FLIGHT {
            let Some(pending) = self.queue.pop_front() else {
                break;
            };
            let Some(conversation_id) = pending.conversation_id else {
                // A page already written to its end: only the position moves.
                self.window.push_back(Slot {
                    page: pending.page,
                    offset: pending.offset,
                    last_in_page: true,
                    done: Some(Written::Nothing),
                });
                self.commit(run).await?;
                continue;
            };
            if budget.exhausted() {
                return Ok(Some(Progress::OutOfTime));
            }
            if fence.closing().await? {
                return Ok(Some(Progress::AccountClosing));
            }
            let exclusions = match &self.exclusions {
                Some(loaded) => loaded.clone(),
                None => {
                    // Who is left out: loaded once per invocation, before its first
                    // conversation.
                    let loaded = Arc::new(
                        Exclusions::load(
                            &deps.store,
                            &deps.app_secret,
                            &run.tenant,
                            self.exclude_withdrawn_consent,
                        )
                        .await?,
                    );
                    self.exclusions.insert(loaded).clone()
                }
            };
            let seq = self.base + self.window.len() as u64;
            self.window.push_back(Slot {
                page: pending.page,
                offset: pending.offset,
                last_in_page: pending.last_in_page,
                done: None,
            });
            let context = self.context.clone();
            self.tasks.spawn(
                async move {
                    let result = conversation(&context, &exclusions, &conversation_id).await;
                    StepEvent::Conversation(seq, result)
                }
                .in_current_span(),
            );
            self.conversations_in_flight += 1;
        }
        Ok(None)
    }

    /// Reads the next page of the work list into the queue.
    async fn read_page(&mut self, run: &ExportRun) -> Result<(), StepError> {
        let number = self.next_page;
        let key = Key::new(
            keys::tenant(&run.tenant),
            keys::export_run_page(&run.run_id, number),
        );
        let page = self
            .context
            .deps
            .store
            .get::<RunPage>(&key)
            .await?
            .ok_or_else(|| {
                StepError::Checkpoint(format!("page {number} of the work list is missing"))
            })?;
        let start = std::mem::take(&mut self.start_offset);
        let count = u32::try_from(page.conversation_ids.len()).unwrap_or(u32::MAX);
        if start >= count {
            self.queue.push_back(Pending {
                page: number,
                offset: start,
                last_in_page: true,
                conversation_id: None,
            });
        }
        for (offset, id) in (0u32..).zip(page.conversation_ids).skip(start as usize) {
            self.queue.push_back(Pending {
                page: number,
                offset,
                last_in_page: offset + 1 == count,
                conversation_id: Some(id),
            });
        }
        self.next_page += 1;
        Ok(())
    }

    /// Notes a discovery page's new conversations on the work list: those with no
    /// [`RunSeen`] item become the next work-list page, committed with the cursor in
    /// one checkpoint, and only then are marked seen. A crash between the two leaves a
    /// committed page whose items are missing (never an item without its page), and
    /// the next discovery page writes them first ([`Pipeline::mark_seen_pages`]).
    async fn discovered_page(
        &mut self,
        run: &mut ExportRun,
        page: custody::highlevel::ExportPage,
    ) -> Result<(), StepError> {
        let deps = &self.context.deps;
        self.mark_seen_pages(run).await?;
        let pk = keys::tenant(&run.tenant);
        let mut on_page = HashSet::new();
        let mut candidates = Vec::new();
        for message in &page.messages {
            if selected(&run.channels, message) && on_page.insert(message.conversation_id.as_str())
            {
                let key = Key::new(
                    pk.clone(),
                    keys::export_run_seen(&run.run_id, &digest(&message.conversation_id)),
                );
                candidates.push((message.conversation_id.clone(), key));
            }
        }
        let keys: Vec<Key> = candidates.iter().map(|(_, key)| key.clone()).collect();
        let seen = deps.store.existing(&keys).await?;
        let fresh: Vec<String> = candidates
            .into_iter()
            .filter(|(_, key)| !seen.contains(key))
            .map(|(id, _)| id)
            .collect();
        let listed = if fresh.is_empty() {
            None
        } else {
            let listed = RunPage {
                tenant: run.tenant.clone(),
                run_id: run.run_id.clone(),
                page: run.pages,
                conversation_ids: fresh,
                expires_at: run.expires_at,
            };
            deps.store.put(&listed).await?;
            run.pages += 1;
            Some(listed)
        };
        match page.next_cursor {
            Some(cursor) if !page.messages.is_empty() => run.cursor = Some(cursor),
            _ => {
                run.cursor = None;
                run.plan_pos += 1;
            }
        }
        checkpoint(deps, run).await?;
        if let Some(listed) = listed {
            // The next checkpoint records it; a crash before that only repeats these
            // writes.
            write_seen(deps, run, &listed).await?;
            run.seen_pages = run.pages;
        }
        Ok(())
    }

    /// Writes the [`RunSeen`] items of committed pages that may lack them (after a
    /// crash between a page's checkpoint and its items): normally none, at most the
    /// last page.
    async fn mark_seen_pages(&self, run: &mut ExportRun) -> Result<(), StepError> {
        let deps = &self.context.deps;
        while run.seen_pages < run.pages {
            let number = run.seen_pages;
            let key = Key::new(
                keys::tenant(&run.tenant),
                keys::export_run_page(&run.run_id, number),
            );
            let listed = deps.store.get::<RunPage>(&key).await?.ok_or_else(|| {
                StepError::Checkpoint(format!("page {number} of the work list is missing"))
            })?;
            write_seen(deps, run, &listed).await?;
            run.seen_pages += 1;
        }
        Ok(())
    }

    /// Moves the write position over the finished prefix of the launched steps,
    /// counting each, in one checkpoint.
    async fn commit(&mut self, run: &mut ExportRun) -> Result<(), StepError> {
        let mut moved = false;
        while let Some(Slot {
            page,
            offset,
            last_in_page,
            done: Some(written),
        }) = self.window.front()
        {
            let (page, offset, last_in_page, written) = (*page, *offset, *last_in_page, *written);
            self.window.pop_front();
            self.base += 1;
            match written {
                Written::File { messages, bytes } => {
                    run.conversations += 1;
                    run.messages += messages;
                    run.bytes += bytes;
                    metrics::count(names::EXPORT_MESSAGES, messages);
                    metrics::count(names::EXPORT_BYTES, bytes);
                }
                // Moved with the write position in one checkpoint: a resumed or
                // retried run counts each conversation once.
                Written::Excluded(Reason::Restricted) => run.conversations_restricted += 1,
                Written::Excluded(Reason::ConsentWithdrawn) => {
                    run.conversations_consent_withdrawn += 1
                }
                Written::Nothing => {}
            }
            if last_in_page {
                run.write_page = page + 1;
                run.write_offset = 0;
            } else {
                run.write_page = page;
                run.write_offset = offset + 1;
            }
            moved = true;
        }
        if moved && !self.closing {
            checkpoint(&self.context.deps, run).await?;
        }
        Ok(())
    }
}

/// One conversation: its messages fetched, checked against who is left out, and its
/// file written and recorded.
async fn conversation(
    context: &Context,
    exclusions: &Exclusions,
    conversation_id: &str,
) -> Result<Written, StepError> {
    let Context {
        deps,
        client,
        sink,
        run,
        location_id,
        plan,
        dir,
    } = context;
    let file_key = Key::new(
        keys::tenant(&run.tenant),
        keys::export_run_file(&run.run_id, conversation_id),
    );
    let messages = conversation_messages(run, location_id, conversation_id, client, plan).await?;
    if let Some(reason) = exclusions.reason(&messages) {
        drop(messages);
        // A file of this run for it from before the subject was left out (an
        // invocation stopped between the file and its checkpoint) leaves the manifest
        // too.
        deps.store.delete(&file_key).await?;
        return Ok(Written::Excluded(reason));
    }
    let content = archive::conversation_file(run, location_id, conversation_id, &messages)
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
            conversation_id: conversation_id.to_owned(),
            path,
            messages: count,
            bytes: receipt.bytes,
            sha256: receipt.sha256,
            expires_at: run.expires_at,
        })
        .await?;
    Ok(Written::File {
        messages: count,
        bytes: receipt.bytes,
    })
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

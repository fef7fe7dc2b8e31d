//! Processing a privacy request: pending → in_processing → complete, one recorded
//! step at a time.
//!
//! Each step's side effects and its audit entry run under an idempotency claim keyed
//! by (request, step), and its completion is recorded on the request with a
//! version-conditional write. So a duplicate event finds the step done (or replays
//! the claim's stored result), and a run that stopped between steps — a crash, the
//! Lambda deadline — continues at the first step not recorded.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use chrono::{DateTime, Utc};
use custody::audit::{Event, Outcome};
use custody::certificate::{Certificate, ErasedStore, SCHEMA, Scope, SignedCertificate};
use custody::idempotency::{MAX_INVOCATION, RunError};
use custody::imports::{Import, ObjectKey};
use custody::privacy::{
    AuditRef, BundleInfo, ConsentRecord, ConsentState, Correction, ErasureCounts, ErasurePlan,
    PrivacyRequest, Rectification, RequestKind, Status, Step,
};
use custody::retention::{RetentionClass, S3_TAG_KEY};
use custody::seal::{Purpose, SealContext};
use custody::store::{Condition, Item, Key, StoreError, keys};
use custody::subject::IdentifierKind;
use custody::subject_index::{Source, SubjectRef};
use custody::suppression::Suppression;
use custody::tenant::TenantId;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::Deps;
use crate::files::{self, SubjectMatcher};

/// The audit actor of processing.
pub const ACTOR: &str = "system:dsar";
/// Failed runs after which a request is marked `error` (it stays retryable).
pub const MAX_ATTEMPTS: u32 = 5;
/// Version tag of the access bundle format (documented in docs/ARCHITECTURE.md).
pub const BUNDLE_SCHEMA: &str = "custody.dsar.bundle/v1";
/// Attributes never copied into a bundle from an item of unknown kind.
const SECRET_ATTRIBUTE_HINTS: [&str; 4] = ["token", "secret", "sealed", "password"];

/// How much one invocation may do before it leaves the rest to the next.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// Until the invocation's deadline (minus a margin for the last step).
    Until(Instant),
    /// At most this many steps (and purge pages); used to stop a run between steps.
    Steps(u32),
    Unlimited,
}

impl Budget {
    /// A budget ending `margin` before a Lambda deadline given in epoch milliseconds.
    pub fn from_deadline_ms(deadline_ms: u64, now: DateTime<Utc>, margin: Duration) -> Self {
        let left = deadline_ms.saturating_sub(now.timestamp_millis().max(0) as u64);
        let usable = Duration::from_millis(left).saturating_sub(margin);
        Budget::Until(Instant::now() + usable)
    }

    pub fn exhausted(&self, done: u32) -> bool {
        match self {
            Budget::Until(at) => Instant::now() >= *at,
            Budget::Steps(max) => done >= *max,
            Budget::Unlimited => false,
        }
    }

    /// The time left, for idempotency claims (which expire with the invocation).
    pub fn remaining(&self) -> Duration {
        match self {
            Budget::Until(at) => at.saturating_duration_since(Instant::now()),
            Budget::Steps(_) | Budget::Unlimited => MAX_INVOCATION,
        }
    }
}

/// Where a run left a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Complete (now or before), or denied.
    Finished(Status),
    /// The request may not run (identity unverified, or gone).
    NotRunnable(Option<Status>),
    /// The budget ran out; the next stream record continues.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] custody::audit::AuditError),
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error(transparent)]
    Certificate(#[from] custody::certificate::CertificateError),
    #[error(transparent)]
    Idempotency(#[from] custody::idempotency::IdempotencyError),
    #[error(transparent)]
    Imports(#[from] custody::imports::ImportError),
    #[error(transparent)]
    Privacy(#[from] custody::privacy::PrivacyError),
    #[error(transparent)]
    Schedule(#[from] custody::schedule::ScheduleError),
    #[error(transparent)]
    Notice(#[from] custody::notice::NoticeError),
    #[error(transparent)]
    Seal(#[from] custody::seal::SealError),
    /// A rectification whose corrected values are missing or unreadable.
    #[error("rectification: {0}")]
    Rectification(&'static str),
    /// The application secret could not be read (Secrets Manager).
    #[error(transparent)]
    Secret(#[from] custody::subject::SubjectError),
    #[error("the request changed concurrently; retry")]
    Conflict,
    #[error("S3 call failed: {0}")]
    S3(String),
    #[error("bundle could not be encoded: {0}")]
    Encode(String),
    /// Stream only (never an HTTP answer): the request ended in `error` after its
    /// attempts. Its in-flight records keep failing so they end in the failure queue
    /// (alarmed), from where an operator redrives them once the cause is fixed.
    #[error("the request ended in error after its attempts; redrive it once the cause is fixed")]
    GaveUp,
}

impl<E: Into<ProcessError>> From<RunError<E>> for ProcessError {
    fn from(err: RunError<E>) -> Self {
        match err {
            RunError::Idempotency(e) => ProcessError::Idempotency(e),
            RunError::Work(e) => e.into(),
        }
    }
}

/// Runs the request's remaining steps within `budget`.
pub async fn process_request(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    budget: Budget,
) -> Result<Progress, ProcessError> {
    run_request(deps, tenant, id, budget, false).await
}

/// [`process_request`] for an operator's redrive (`custody::redrive`): a request that
/// ended in `error` resumes from its last completed step, with fresh attempts and an
/// audit entry saying so.
pub async fn resume_request(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    budget: Budget,
) -> Result<Progress, ProcessError> {
    run_request(deps, tenant, id, budget, true).await
}

async fn run_request(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    budget: Budget,
    resume: bool,
) -> Result<Progress, ProcessError> {
    let key = PrivacyRequest::key_of(tenant, id);
    let Some(mut request) = deps.store.get::<PrivacyRequest>(&key).await? else {
        return Ok(Progress::NotRunnable(None));
    };
    match request.status {
        Status::Complete | Status::Denied => {
            // A duplicate record of a finished request: its completion notice, which
            // is written once (a failure to write it before ends here on the retry).
            crate::notices::on_completed(deps, &request).await?;
            return Ok(Progress::Finished(request.status));
        }
        Status::Pending => {
            request.move_to(Status::InProcessing, deps.now())?;
            save(deps, &mut request).await?;
        }
        Status::InProcessing => {}
        Status::Error if !resume => return Err(ProcessError::GaveUp),
        Status::Error => {
            request.move_to(Status::InProcessing, deps.now())?;
            let attempts = std::mem::take(&mut request.attempts);
            request.last_error = None;
            save(deps, &mut request).await?;
            deps.audit
                .append(
                    tenant,
                    base_event(&request, "privacy_request.resumed")
                        .detail("after_attempts", attempts),
                )
                .await?;
        }
        other => return Ok(Progress::NotRunnable(Some(other))),
    }
    match run_steps(deps, &mut request, budget).await {
        Ok(progress) => {
            // Not a failed run: the request is complete; the record's retry writes it.
            crate::notices::on_completed(deps, &request).await?;
            Ok(progress)
        }
        Err(err) => {
            record_failure(deps, tenant, id, &err).await;
            Err(err)
        }
    }
}

async fn run_steps(
    deps: &Deps,
    request: &mut PrivacyRequest,
    budget: Budget,
) -> Result<Progress, ProcessError> {
    let mut ran = 0;
    for &step in Step::sequence(request.kind) {
        if request.step_done(step) {
            continue;
        }
        if budget.exhausted(ran) {
            return Ok(Progress::Stopped);
        }
        match step {
            Step::Bundle => bundle_step(deps, request, budget).await?,
            Step::Plan => plan_step(deps, request).await?,
            Step::EraseFiles => erase_files_step(deps, request, budget).await?,
            Step::EraseResults => erase_results_step(deps, request, budget).await?,
            Step::EraseItems => erase_items_step(deps, request, budget).await?,
            Step::Certify => certify_step(deps, request, budget).await?,
            Step::RectifyPlan => rectify_plan_step(deps, request).await?,
            Step::RectifyItems => rectify_items_step(deps, request).await?,
            Step::RectifyFiles => rectify_files_step(deps, request, budget).await?,
        }
        request.steps_done.push(step);
        save(deps, request).await?;
        ran += 1;
    }
    if budget.exhausted(ran) {
        return Ok(Progress::Stopped);
    }
    let completed = audited(deps, request, "complete", budget, || {
        base_event(request, "privacy_request.completed")
    })
    .await?;
    request.audit.push(completed);
    request.move_to(Status::Complete, deps.now())?;
    request.completed_at = Some(deps.now());
    request.last_error = None;
    if request.kind == RequestKind::Erasure {
        // Free text may name the subject; the request keeps pseudonyms only.
        request.note = None;
    }
    if let Some(rectification) = request.rectification.as_mut() {
        // Already gone after the files step; never kept past completion.
        rectification.sealed_values = None;
    }
    save(deps, request).await?;
    custody::metrics::count(custody::metrics::names::PRIVACY_REQUESTS_COMPLETED, 1);
    Ok(Progress::Finished(Status::Complete))
}

/// Writes the request if nobody else wrote it since it was read.
pub(crate) async fn save(deps: &Deps, request: &mut PrivacyRequest) -> Result<(), ProcessError> {
    let expected = request.version;
    request.version += 1;
    request.updated_at = deps.now();
    put_versioned(deps, request, expected).await
}

/// Puts a job or request whose `version` was `expected` when read (optimistic
/// concurrency for every record the worker advances): a lost race is a `Conflict`.
pub(crate) async fn put_versioned<E: custody::store::Entity>(
    deps: &Deps,
    entity: &E,
    expected: u64,
) -> Result<(), ProcessError> {
    let condition = Condition::new("#v = :v")
        .name("#v", "version")
        .value(":v", AttributeValue::N(expected.to_string()));
    match deps.store.put_if(entity, condition).await {
        Ok(()) => Ok(()),
        Err(StoreError::ConditionFailed) => Err(ProcessError::Conflict),
        Err(err) => Err(err.into()),
    }
}

/// Counts a failed run on the request; after [`MAX_ATTEMPTS`] it becomes `error`
/// (audited). Best effort: the stream redelivers the record either way.
async fn record_failure(deps: &Deps, tenant: &TenantId, id: &str, err: &ProcessError) {
    // A lost write race is not a failure: the winner's run continues. (`GaveUp` never
    // reaches here: it is returned before any step runs.)
    if matches!(err, ProcessError::Conflict) {
        return;
    }
    let key = PrivacyRequest::key_of(tenant, id);
    let Ok(Some(mut request)) = deps.store.get::<PrivacyRequest>(&key).await else {
        return;
    };
    request.attempts += 1;
    // The error's kind, not its text: texts from S3 or parsers could quote data.
    request.last_error = Some(error_kind(err).to_owned());
    let failed = request.attempts >= MAX_ATTEMPTS && request.status == Status::InProcessing;
    if failed {
        request.status = Status::Error;
    }
    if save(deps, &mut request).await.is_ok() && failed {
        let event = base_event(&request, "privacy_request.failed")
            .outcome(Outcome::Failure)
            .detail("error", error_kind(err));
        if let Err(e) = deps.audit.append(tenant, event).await {
            tracing::error!(error = %e, "audit of a failed request could not be written");
        }
    }
}

fn error_kind(err: &ProcessError) -> &'static str {
    match err {
        ProcessError::Store(_) => "store",
        ProcessError::Audit(_) => "audit",
        ProcessError::Files(_) => "files",
        ProcessError::Certificate(_) => "certificate",
        ProcessError::Idempotency(_) => "idempotency",
        ProcessError::Imports(_) => "imports",
        ProcessError::Privacy(_) => "state",
        ProcessError::Schedule(_) => "schedule",
        ProcessError::Notice(_) => "notice",
        ProcessError::Conflict => "conflict",
        ProcessError::S3(_) => "s3",
        ProcessError::Encode(_) => "encode",
        ProcessError::GaveUp => "gave_up",
        ProcessError::Seal(_) => "seal",
        ProcessError::Rectification(_) => "rectification",
        ProcessError::Secret(_) => "secret",
    }
}

/// An audit event about the request: ids and pseudonyms only.
pub(crate) fn base_event(request: &PrivacyRequest, action: &str) -> Event {
    let mut event = Event::new(
        ACTOR,
        action,
        custody::store::keys::privacy_request(&request.id),
    )
    .detail("kind", request.kind.as_str())
    .detail("regulation", request.regulation.as_str());
    if let Some(first) = request.pseudonyms.first() {
        event = event.subject(first.clone());
    }
    if request.pseudonyms.len() > 1 {
        event = event.detail("pseudonyms", request.pseudonyms.clone());
    }
    event
}

/// Appends an audit event once per (request, step): a duplicate run replays the
/// stored reference instead of appending again.
async fn audited(
    deps: &Deps,
    request: &PrivacyRequest,
    step: &str,
    budget: Budget,
    event: impl FnOnce() -> Event,
) -> Result<AuditRef, ProcessError> {
    let tenant = request.tenant.clone();
    let event = event();
    let outcome = deps
        .idempotency
        .run(
            &tenant,
            &format!("dsar:{}:{step}:audit", request.id),
            &request.id,
            budget.remaining(),
            || async {
                let entry = append_once(deps, &tenant, event).await?;
                Ok::<_, ProcessError>(AuditRef::from(&entry))
            },
        )
        .await?;
    Ok(outcome.into_inner())
}

/// Appends an entry of which the request has one (a step's, the completion), also
/// when an earlier attempt's write landed but its answer was lost.
///
/// `AuditLog::append` recognises its own write when a retry of it loses the condition
/// to it; but when every SDK attempt's answer is lost (a throttle or timeout burst
/// longer than the retries), it fails although the entry is there, the claim is
/// released, and the retried step appended a second entry (found by the fault
/// injection test, tests/dsar/faults.rs). So the chain's head is read before the
/// append (an earlier attempt whose check failed too) and after a failed one: if it is
/// this action on this target, the write landed (it is unique per request). One
/// single-item query per step; an entry of another request on top is not seen.
async fn append_once(
    deps: &Deps,
    tenant: &TenantId,
    event: Event,
) -> Result<custody::audit::Entry, ProcessError> {
    let (action, target) = (event.action.clone(), event.target.clone());
    let class = custody::audit::AuditClass::of(&action);
    let ours = |head: &custody::audit::Entry| head.action == action && head.target == target;
    if let Some(head) = deps.audit.head(tenant, class).await?
        && ours(&head)
    {
        return Ok(head);
    }
    match deps.audit.append(tenant, event).await {
        Ok(entry) => Ok(entry),
        Err(err) => match deps.audit.head(tenant, class).await {
            Ok(Some(head)) if ours(&head) => Ok(head),
            _ => Err(err.into()),
        },
    }
}

/// Runs `work` once per key; a duplicate gets the stored result.
async fn once<T, F, Fut>(
    deps: &Deps,
    tenant: &TenantId,
    key: &str,
    budget: Budget,
    work: F,
) -> Result<T, ProcessError>
where
    T: Serialize + for<'de> Deserialize<'de>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, ProcessError>>,
{
    let outcome = deps
        .idempotency
        .run(tenant, key, &key, budget.remaining(), work)
        .await?;
    Ok(outcome.into_inner())
}

// ---------------------------------------------------------------------------------
// Gathering
// ---------------------------------------------------------------------------------

/// Everything the index says about the subject, deduplicated across pseudonyms.
#[derive(Debug, Default)]
pub struct Found {
    /// Import objects holding the subject's rows.
    pub objects: BTreeSet<String>,
    /// Every indexed item (`pk`, `sk`) with its kind.
    pub items: Vec<(Key, String)>,
    /// Privacy requests about the subject (ids).
    pub requests: BTreeSet<String>,
}

/// What a search for the subject's records may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Live records only: what access may disclose.
    Live,
    /// Expired records TTL has not deleted yet too: erasing more is safe.
    Erasure,
}

/// Reads the `by_subject` index for every pseudonym of the request and resolves the
/// subject refs: one query per pseudonym plus one read per record found, so the
/// cost follows the subject's records, never the table's size.
pub async fn find(
    deps: &Deps,
    request: &PrivacyRequest,
    reach: Reach,
) -> Result<Found, ProcessError> {
    let mut found = Found::default();
    let mut seen = HashSet::new();
    for pseudonym in &request.pseudonyms {
        let items = match reach {
            Reach::Live => deps.store.subject_items(&request.tenant, pseudonym).await?,
            Reach::Erasure => {
                deps.store
                    .subject_items_for_erasure(&request.tenant, pseudonym)
                    .await?
            }
        };
        for item in items {
            let (Some(pk), Some(sk)) = (text(&item, "pk"), text(&item, "sk")) else {
                continue;
            };
            let key = Key::new(pk, sk);
            if !seen.insert(key.clone()) {
                continue;
            }
            let kind = text(&item, "kind").unwrap_or_default();
            let subject_ref = if kind != <SubjectRef as custody::store::Entity>::KIND {
                None
            } else if reach == Reach::Erasure {
                deps.store.get_for_erasure::<SubjectRef>(&key).await?
            } else {
                deps.store.get::<SubjectRef>(&key).await?
            };
            if let Some(subject_ref) = subject_ref {
                match subject_ref.source {
                    Source::ImportObject => {
                        if let Some(object) = subject_ref.object_key {
                            found.objects.insert(object);
                        }
                    }
                    Source::PrivacyRequest => {
                        found.requests.insert(subject_ref.source_id);
                    }
                    Source::Consent => {}
                }
            }
            found.items.push((key, kind));
        }
    }
    Ok(found)
}

pub(crate) fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

/// The subject's rows of one import object, with the matcher the import used.
async fn rows_of(
    deps: &Deps,
    request: &PrivacyRequest,
    object: &str,
    pseudonyms: &HashSet<String>,
) -> Result<Vec<Map<String, Value>>, ProcessError> {
    let key = deps.pseudonym_key(&request.tenant).await?;
    let matcher = SubjectMatcher {
        key: &key,
        pseudonyms,
        rules: import_rules(deps, &request.tenant, object).await?,
    };
    Ok(files::subject_rows(deps, object, &matcher, files::Streaming::default()).await?)
}

/// Whether an import object's data may still be disclosed: not past its import's
/// retention (the shared rule, `Imports::data_readable`), and never another tenant's.
async fn object_readable(
    deps: &Deps,
    tenant: &TenantId,
    object: &str,
) -> Result<bool, ProcessError> {
    match ObjectKey::parse(object) {
        Some(parsed) if parsed.tenant != *tenant => Ok(false),
        Some(parsed) => Ok(deps
            .imports
            .data_readable(tenant, &parsed.import_id)
            .await?),
        // Not custody's layout: judged by its refs' own expiry, already filtered.
        None => Ok(true),
    }
}

/// The rules the import indexed its rows by (where identifiers are, the country code
/// for national phone numbers), so a request finds rows the way they were indexed.
async fn import_rules(
    deps: &Deps,
    tenant: &TenantId,
    object: &str,
) -> Result<custody::imports::RowRules, ProcessError> {
    let Some(parsed) = ObjectKey::parse(object) else {
        return Ok(Default::default());
    };
    if parsed.tenant != *tenant {
        return Ok(Default::default());
    }
    Ok(deps
        .store
        .get::<Import>(&Import::key_of(tenant, &parsed.import_id))
        .await?
        .map(|import| import.rules())
        .unwrap_or_default())
}

/// The results-bucket prefix of a tenant, and of one request.
pub fn results_tenant_prefix(tenant: &TenantId) -> String {
    format!("dsar/{tenant}/")
}

pub fn results_prefix(tenant: &TenantId, request_id: &str) -> String {
    format!("dsar/{tenant}/{request_id}/")
}

pub fn bundle_key(tenant: &TenantId, request_id: &str) -> String {
    format!("{}bundle.json", results_prefix(tenant, request_id))
}

// ---------------------------------------------------------------------------------
// Access
// ---------------------------------------------------------------------------------

async fn bundle_step(
    deps: &Deps,
    request: &mut PrivacyRequest,
    budget: Budget,
) -> Result<(), ProcessError> {
    let snapshot = request.clone();
    let (info, audit): (BundleInfo, AuditRef) = once(
        deps,
        &request.tenant,
        &format!("dsar:{}:bundle", request.id),
        budget,
        || async {
            let bundle = build_bundle(deps, &snapshot).await?;
            let records = bundle
                .get("record_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let bytes = serde_json::to_vec_pretty(&bundle)
                .map_err(|e| ProcessError::Encode(e.to_string()))?;
            let sha256 = hex::encode(Sha256::digest(&bytes));
            let key = bundle_key(&snapshot.tenant, &snapshot.id);
            let size = bytes.len() as u64;
            deps.s3
                .put_object()
                .bucket(&deps.config.dsar_results_bucket)
                .key(&key)
                .body(ByteStream::from(bytes))
                .content_type("application/json")
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(&deps.config.data_key_id)
                .tagging(format!(
                    "{S3_TAG_KEY}={}",
                    RetentionClass::DsarResult.name()
                ))
                .send()
                .await
                .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
            let entry = append_once(
                deps,
                &snapshot.tenant,
                base_event(&snapshot, "privacy_request.exported")
                    .detail("records", records)
                    .detail("bytes", size)
                    .detail("sha256", sha256.clone()),
            )
            .await?;
            let info = BundleInfo {
                key,
                sha256,
                bytes: size,
                records,
                created_at: deps.now(),
            };
            Ok((info, AuditRef::from(&entry)))
        },
    )
    .await?;
    request.bundle = Some(info);
    request.audit.push(audit);
    Ok(())
}

/// The access bundle: a JSON document (schema [`BUNDLE_SCHEMA`]) of every record held
/// about the subject.
pub async fn build_bundle(deps: &Deps, request: &PrivacyRequest) -> Result<Value, ProcessError> {
    // Rows and records a rectification moved to corrected identifiers are the
    // subject's too (the stored request keeps the identifiers it was filed with).
    let mut request = request.clone();
    let found = find_following_corrections(deps, &mut request, Reach::Live).await?;
    let request = &request;
    let pseudonyms: HashSet<String> = request.pseudonyms.iter().cloned().collect();
    let mut record_count = 0u64;

    let mut imported = Vec::new();
    for object in &found.objects {
        // Past its import's retention the data is not disclosed, though S3
        // lifecycle deletes it days later (erasure still reaches it).
        if !object_readable(deps, &request.tenant, object).await? {
            continue;
        }
        let rows = rows_of(deps, request, object, &pseudonyms).await?;
        if rows.is_empty() {
            continue;
        }
        record_count += rows.len() as u64;
        let parsed = ObjectKey::parse(object);
        imported.push(json!({
            "import_id": parsed.as_ref().map(|k| k.import_id.clone()),
            "object": parsed.as_ref().map(|k| k.name.clone()),
            "format": match files::format_of(object) {
                custody::imports::Format::Csv => "csv",
                _ => "jsonl",
            },
            "rows": rows,
        }));
    }

    let mut consent = Vec::new();
    let mut other = Vec::new();
    for (key, kind) in &found.items {
        match kind.as_str() {
            k if k == <SubjectRef as custody::store::Entity>::KIND => {}
            k if k == <ConsentRecord as custody::store::Entity>::KIND => {
                if let Some(record) = deps.store.get::<ConsentRecord>(key).await? {
                    record_count += 1;
                    consent.push(json!({
                        "purpose": record.purpose,
                        "state": record.current.state,
                        "at": record.current.at,
                        "source": record.current.source,
                        "policy_version": record.current.policy_version,
                        "history": record.history.iter().map(|c| json!({
                            "state": c.state, "at": c.at, "source": c.source,
                            "policy_version": c.policy_version,
                        })).collect::<Vec<_>>(),
                    }));
                }
            }
            _ => {
                if let Some(item) = deps.store.get_item(key).await? {
                    record_count += 1;
                    other.push(sanitised(item));
                }
            }
        }
    }

    let mut requests = Vec::new();
    for id in &found.requests {
        let key = PrivacyRequest::key_of(&request.tenant, id);
        if let Some(r) = deps.store.get::<PrivacyRequest>(&key).await? {
            record_count += 1;
            requests.push(json!({
                "id": r.id,
                "kind": r.kind,
                "regulation": r.regulation,
                "status": r.status,
                "received_at": r.deadlines.received_at,
                "due_at": r.deadlines.due_at,
                "completed_at": r.completed_at,
                "note": r.note,
            }));
        }
    }

    let mut connections = Vec::new();
    if request.account_holder {
        let page = deps
            .store
            .client()
            .query()
            .table_name(deps.store.table())
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(keys::tenant(&request.tenant)))
            .expression_attribute_values(":prefix", AttributeValue::S(keys::connection("")))
            .send()
            .await
            .map_err(|e| ProcessError::Store(StoreError::Dynamo(custody::aws::error_text(&e))))?;
        for item in page.items.unwrap_or_default() {
            record_count += 1;
            connections.push(sanitised(item));
        }
    }

    Ok(json!({
        "schema": BUNDLE_SCHEMA,
        "generated_at": deps.now(),
        "tenant": request.tenant,
        "request": {
            "id": request.id,
            "regulation": request.regulation,
            "received_at": request.deadlines.received_at,
        },
        "subject": { "pseudonyms": request.pseudonyms },
        "record_count": record_count,
        "imported_records": imported,
        "consent": consent,
        "privacy_requests": requests,
        "connections": connections,
        "other_records": other,
    }))
}

/// An item as JSON without keys, index attributes or anything secret-looking.
fn sanitised(item: Item) -> Value {
    let value: Value = serde_dynamo::from_item(item).unwrap_or(Value::Null);
    let Value::Object(map) = value else {
        return Value::Null;
    };
    Value::Object(
        map.into_iter()
            .filter(|(name, _)| {
                let lower = name.to_ascii_lowercase();
                !matches!(
                    lower.as_str(),
                    "pk" | "sk" | "subject_pk" | "subject_sk" | "lease_owner"
                ) && !SECRET_ATTRIBUTE_HINTS
                    .iter()
                    .any(|hint| lower.contains(hint))
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------
// Erasure
// ---------------------------------------------------------------------------------

/// What the subject's index reaches, following rectifications: a rectification moved
/// the subject's records and rows to the corrected pseudonyms (it is indexed under the
/// old ones), so access and erasure follow it, transitively, and add those pseudonyms
/// to `request` to match rows by.
async fn find_following_corrections(
    deps: &Deps,
    request: &mut PrivacyRequest,
    reach: Reach,
) -> Result<Found, ProcessError> {
    let mut found = find(deps, request, reach).await?;
    loop {
        let mut corrections = Vec::new();
        for id in found.requests.iter().filter(|id| **id != request.id) {
            let key = PrivacyRequest::key_of(&request.tenant, id);
            // Erasure follows any rectification not denied (one mid-way has moved
            // some records already); access discloses only what a completed one
            // moved.
            if let Some(earlier) = deps.store.get::<PrivacyRequest>(&key).await?
                && match reach {
                    Reach::Live => earlier.status == Status::Complete,
                    _ => earlier.status != Status::Denied,
                }
                && let Some(rectification) = earlier.rectification
            {
                corrections.extend(rectification.corrections);
            }
        }
        let more: Vec<String> =
            custody::privacy::with_corrections(&corrections, &request.pseudonyms)
                .into_iter()
                .filter(|p| !request.pseudonyms.contains(p))
                .collect();
        if more.is_empty() {
            break;
        }
        request.pseudonyms.extend(more);
        found = find(deps, request, reach).await?;
    }
    Ok(found)
}

async fn plan_step(deps: &Deps, request: &mut PrivacyRequest) -> Result<(), ProcessError> {
    let found = find_following_corrections(deps, request, Reach::Erasure).await?;
    request.plan = Some(ErasurePlan {
        objects: found.objects.into_iter().collect(),
        items: found
            .items
            .into_iter()
            .map(|(key, _)| (key.pk, key.sk))
            .collect(),
        earlier_requests: found
            .requests
            .into_iter()
            .filter(|id| *id != request.id)
            .collect(),
    });
    request.erased = Some(ErasureCounts::default());
    Ok(())
}

/// Rewrites every planned object without the subject; each object once.
async fn erase_files_step(
    deps: &Deps,
    request: &mut PrivacyRequest,
    budget: Budget,
) -> Result<(), ProcessError> {
    let plan = request.plan.clone().unwrap_or_default();
    let pseudonyms: HashSet<String> = request.pseudonyms.iter().cloned().collect();
    let key = deps.pseudonym_key(&request.tenant).await?;
    let mut counts = request.erased.clone().unwrap_or_default();
    for object in &plan.objects {
        let object_id = hex::encode(&Sha256::digest(object.as_bytes())[..12]);
        // The subject's rows, counted before the rewrite under their own claim. The
        // rewrite's count alone was lost when an attempt rewrote the object but failed
        // after (deleting old versions, or an S3 answer lost): the retry found no rows
        // and the certificate said 0 rows erased (found by the fault injection test,
        // tests/dsar/faults.rs). The price is one more streaming read per object.
        let rows: u64 = once(
            deps,
            &request.tenant,
            &format!("dsar:{}:file:{object_id}:rows", request.id),
            budget,
            || async {
                let matcher = SubjectMatcher {
                    key: &key,
                    pseudonyms: &pseudonyms,
                    rules: import_rules(deps, &request.tenant, object).await?,
                };
                let rows = files::subject_rows(deps, object, &matcher, files::Streaming::default())
                    .await?;
                Ok(rows.len() as u64)
            },
        )
        .await?;
        let erased: (u64, bool, u64) = once(
            deps,
            &request.tenant,
            &format!("dsar:{}:file:{object_id}", request.id),
            budget,
            || async {
                let matcher = SubjectMatcher {
                    key: &key,
                    pseudonyms: &pseudonyms,
                    rules: import_rules(deps, &request.tenant, object).await?,
                };
                // Past its retention nobody may read the object any more, so it goes
                // whole: rewriting it would give the other rows a new lifecycle clock.
                let whole = !object_readable(deps, &request.tenant, object).await?;
                let outcome = files::erase_from_object(deps, object, &matcher, whole).await?;
                Ok((
                    outcome.rows_removed,
                    outcome.rewritten,
                    outcome.versions_deleted,
                ))
            },
        )
        .await?;
        // Equal on a first run; a retry after a lost rewrite removes none.
        counts.import_rows += erased.0.max(rows);
        counts.import_objects += u64::from(erased.1);
        counts.import_versions_deleted += erased.2;
    }
    let entry = audited(deps, request, "erase_files", budget, || {
        base_event(request, "privacy_request.files_erased")
            .detail("objects", plan.objects.len())
            .detail("rows", counts.import_rows)
            .detail("versions_deleted", counts.import_versions_deleted)
    })
    .await?;
    request.audit.push(entry);
    request.erased = Some(counts);
    Ok(())
}

/// Deletes every version of the access bundles of earlier requests of the subject.
async fn erase_results_step(
    deps: &Deps,
    request: &mut PrivacyRequest,
    budget: Budget,
) -> Result<(), ProcessError> {
    let plan = request.plan.clone().unwrap_or_default();
    let deleted: u64 = once(
        deps,
        &request.tenant,
        &format!("dsar:{}:erase_results", request.id),
        budget,
        || async {
            let mut deleted = 0;
            for id in &plan.earlier_requests {
                deleted += files::delete_prefix_versions(
                    deps,
                    &deps.config.dsar_results_bucket,
                    &results_prefix(&request.tenant, id),
                )
                .await?;
            }
            // The account holder's copies hold the subject too: they go whole (the
            // holder may build a new one, without the subject).
            deleted += files::delete_prefix_versions(
                deps,
                &deps.config.dsar_results_bucket,
                &crate::account_export::copies_prefix(&request.tenant),
            )
            .await?;
            Ok(deleted)
        },
    )
    .await?;
    let mut counts = request.erased.clone().unwrap_or_default();
    counts.result_versions_deleted = deleted;
    request.erased = Some(counts);
    Ok(())
}

/// Deletes consent records, index entries and other indexed items; removes the
/// free-text notes of earlier requests (which stay, pseudonymous, as the record that
/// they were answered).
async fn erase_items_step(
    deps: &Deps,
    request: &mut PrivacyRequest,
    budget: Budget,
) -> Result<(), ProcessError> {
    let plan = request.plan.clone().unwrap_or_default();
    let mut counts = request.erased.clone().unwrap_or_default();
    for (pk, sk) in &plan.items {
        deps.store.delete(&Key::new(pk.clone(), sk.clone())).await?;
        if sk.starts_with("REF#") {
            counts.index_entries += 1;
        } else if sk.starts_with(&keys::consent("")) {
            counts.consent_records += 1;
        } else {
            counts.other_items += 1;
        }
    }
    for id in &plan.earlier_requests {
        let key = PrivacyRequest::key_of(&request.tenant, id);
        // A concurrent write to the earlier request retries through the stream.
        let sealed = |r: &PrivacyRequest| {
            r.rectification
                .as_ref()
                .is_some_and(|r| r.sealed_values.is_some())
        };
        if let Some(mut earlier) = deps.store.get::<PrivacyRequest>(&key).await?
            && (earlier.note.is_some() || sealed(&earlier))
        {
            earlier.note = None;
            // An open rectification's corrected values name the subject too.
            if let Some(rectification) = earlier.rectification.as_mut() {
                rectification.sealed_values = None;
            }
            save(deps, &mut earlier).await?;
        }
        counts.requests_scrubbed += 1;
    }
    let entry = audited(deps, request, "erase_items", budget, || {
        base_event(request, "privacy_request.items_erased")
            .detail("consent_records", counts.consent_records)
            .detail("index_entries", counts.index_entries)
            .detail("other_items", counts.other_items)
            .detail("result_versions_deleted", counts.result_versions_deleted)
    })
    .await?;
    request.audit.push(entry);
    request.erased = Some(counts);
    Ok(())
}

/// Logs the erasure and signs the certificate over it.
///
/// Two claims, not one: the entry was appended inside the signing claim, so a failed
/// signature (KMS throttled) released the claim and the retry appended a second
/// `privacy_request.erased` entry and certified over that one (found by the fault
/// injection test, tests/dsar/faults.rs). The entry is now written once under its own
/// claim, and only the signing is retried.
async fn certify_step(
    deps: &Deps,
    request: &mut PrivacyRequest,
    budget: Budget,
) -> Result<(), ProcessError> {
    let counts = request.erased.clone().unwrap_or_default();
    let entry = audited(deps, request, "erased", budget, || {
        base_event(request, "privacy_request.erased")
            .detail("import_rows", counts.import_rows)
            .detail("consent_records", counts.consent_records)
    })
    .await?;
    let snapshot = request.clone();
    let signed: SignedCertificate = once(
        deps,
        &request.tenant,
        &format!("dsar:{}:certificate", request.id),
        budget,
        || async {
            let mut audit_entries = snapshot.audit.clone();
            audit_entries.push(entry.clone());
            let now = deps.now();
            let certificate = Certificate {
                schema: SCHEMA.to_owned(),
                certificate_id: ulid::Ulid::new().to_string(),
                scope: Scope::Subject,
                tenant: snapshot.tenant.to_string(),
                request_id: snapshot.id.clone(),
                regulation: Some(snapshot.regulation.as_str().to_owned()),
                subject_pseudonyms: snapshot.pseudonyms.clone(),
                received_at: snapshot.deadlines.received_at,
                erased_at: now,
                issued_at: now,
                erased: erased_stores(&counts),
                audit_entries,
                audit_head_hash: entry.hash.clone(),
                key_id: String::new(),
                algorithm: String::new(),
            };
            Ok(deps.signer.sign(certificate).await?)
        },
    )
    .await?;
    request.certificate = Some(signed);
    request.audit.push(entry);
    Ok(())
}

fn erased_stores(counts: &ErasureCounts) -> Vec<ErasedStore> {
    vec![
        ErasedStore::new("imports-bucket", "rows", counts.import_rows),
        ErasedStore::new("imports-bucket", "objects_rewritten", counts.import_objects),
        ErasedStore::new(
            "imports-bucket",
            "object_versions_deleted",
            counts.import_versions_deleted,
        ),
        ErasedStore::new(
            "dsar-results-bucket",
            "object_versions_deleted",
            counts.result_versions_deleted,
        ),
        ErasedStore::new("custody-table", "consent_records", counts.consent_records),
        ErasedStore::new("custody-table", "index_entries", counts.index_entries),
        ErasedStore::new("custody-table", "other_items", counts.other_items),
        ErasedStore::new(
            "custody-table",
            "request_notes_removed",
            counts.requests_scrubbed,
        ),
    ]
}

// ---------------------------------------------------------------------------------
// Rectification
// ---------------------------------------------------------------------------------

/// Fixes the import objects holding the subject (by the index, live entries only:
/// what the tenant still holds), before any of them is rewritten, and the consent
/// records and suppression markers under a pseudonym being corrected.
async fn rectify_plan_step(deps: &Deps, request: &mut PrivacyRequest) -> Result<(), ProcessError> {
    let found = find(deps, request, Reach::Live).await?;
    let mut rectification = request.rectification.clone().unwrap_or_default();
    rectification.objects = found.objects.into_iter().collect();
    let movable = [
        <ConsentRecord as custody::store::Entity>::KIND,
        <Suppression as custody::store::Entity>::KIND,
    ];
    rectification.items = found
        .items
        .into_iter()
        .filter(|(key, kind)| {
            movable.contains(&kind.as_str())
                && corrected_key(&request.tenant, key, &rectification.corrections).is_some()
        })
        .map(|(key, _)| (key.pk, key.sk))
        .collect();
    request.rectification = Some(rectification);
    Ok(())
}

/// Where an item of an old pseudonym goes: the consent record of the same purpose
/// in the corrected pseudonym's partition, the marker of the same scope with the
/// corrected pseudonym. `None` for an item of no corrected pseudonym.
fn corrected_key(tenant: &TenantId, key: &Key, corrections: &[Correction]) -> Option<Key> {
    corrections.iter().find_map(|c| {
        if key.sk.starts_with(&keys::consent("")) {
            (key.pk == keys::subject(tenant, &c.from))
                .then(|| Key::new(keys::subject(tenant, &c.to), key.sk.clone()))
        } else if key.sk.starts_with(SUPPRESSION_PREFIX) && key.pk == keys::tenant(tenant) {
            // `SUPP#<scope>#<pseudonym>`; scopes and pseudonyms hold no '#'.
            let (scope, pseudonym) = key.sk.rsplit_once('#')?;
            (pseudonym == c.from).then(|| Key::new(key.pk.clone(), format!("{scope}#{}", c.to)))
        } else {
            None
        }
    })
}

/// Tries of one item's move that lost a race to a concurrent change before the step
/// fails (the stream retries it).
const MOVE_TRIES: u32 = 5;

/// Moves the planned consent records and suppression markers from each old
/// pseudonym to its corrected one, so a restriction or a withdrawal still holds
/// under the corrected value and erasure finds them by it. Each move is one
/// transaction conditional on the old item: a repeat (a duplicate record, a retry
/// after a crash) moves nothing twice, loses nothing, and counts what it finds moved.
async fn rectify_items_step(deps: &Deps, request: &mut PrivacyRequest) -> Result<(), ProcessError> {
    let mut rectification = request.rectification.clone().unwrap_or_default();
    // Records before markers: whether a withdrawal's marker is carried depends on the
    // (merged) record under the corrected pseudonym.
    let mut planned = rectification.items.clone();
    planned.sort_by_key(|(_, sk)| sk.starts_with(SUPPRESSION_PREFIX));
    let (mut consent, mut markers) = (0, 0);
    for (pk, sk) in planned {
        let old_key = Key::new(pk, sk);
        let Some(new_key) = corrected_key(&request.tenant, &old_key, &rectification.corrections)
        else {
            continue;
        };
        if old_key.sk.starts_with(SUPPRESSION_PREFIX) {
            markers += u64::from(move_marker(deps, &request.tenant, &old_key, &new_key).await?);
        } else {
            consent += u64::from(move_consent(deps, &request.tenant, &old_key, &new_key).await?);
        }
    }
    rectification.consent_records_moved = consent;
    rectification.suppression_markers_moved = markers;
    request.rectification = Some(rectification);
    Ok(())
}

/// Sort-key prefix of suppression markers (`custody::suppression`).
const SUPPRESSION_PREFIX: &str = "SUPP#";

/// Moves one consent record, merged into a record of the same purpose the corrected
/// pseudonym may already have. Whether it is under the corrected pseudonym now.
async fn move_consent(
    deps: &Deps,
    tenant: &TenantId,
    old_key: &Key,
    new_key: &Key,
) -> Result<bool, ProcessError> {
    let to = new_key
        .pk
        .rsplit_once('#')
        .map(|(_, p)| p.to_owned())
        .ok_or(ProcessError::Rectification(
            "a consent key without a pseudonym",
        ))?;
    for _ in 0..MOVE_TRIES {
        let Some(old) = deps.store.get::<ConsentRecord>(old_key).await? else {
            // Moved before (a repeat), or erased meanwhile.
            let moved = deps.store.get::<ConsentRecord>(new_key).await?;
            if let Some(record) = &moved {
                lift_if_granted(deps, tenant, record).await?;
            }
            return Ok(moved.is_some());
        };
        let existing = deps.store.get::<ConsentRecord>(new_key).await?;
        let new_condition = match &existing {
            Some(r) => {
                Condition::new("version = :v").value(":v", AttributeValue::N(r.version.to_string()))
            }
            None => Condition::new("attribute_not_exists(pk)"),
        };
        // A change recorded under the old pseudonym meanwhile is not overwritten.
        let old_condition =
            Condition::new("version = :v").value(":v", AttributeValue::N(old.version.to_string()));
        let merged = merged_consent(old, existing, &to);
        let put = (custody::store::Store::encode(&merged)?, Some(new_condition));
        if transact_move(deps, Some(put), old_key, old_condition).await? {
            lift_if_granted(deps, tenant, &merged).await?;
            return Ok(true);
        }
    }
    Err(ProcessError::Conflict)
}

/// A merged record whose newest change is a grant lifts the withdrawal marker its
/// pseudonym may have had, as recording the grant would have (idempotent).
async fn lift_if_granted(
    deps: &Deps,
    tenant: &TenantId,
    record: &ConsentRecord,
) -> Result<(), ProcessError> {
    if record.current.state == ConsentState::Granted {
        let scope = custody::suppression::Scope::ConsentWithdrawn(record.purpose.clone());
        custody::suppression::lift(
            &deps.store,
            tenant,
            &scope,
            std::slice::from_ref(&record.pseudonym),
        )
        .await?;
    }
    Ok(())
}

/// The old pseudonym's record under the corrected one; with a record already there,
/// one history of both by time (the newest change is the current state).
fn merged_consent(old: ConsentRecord, existing: Option<ConsentRecord>, to: &str) -> ConsentRecord {
    let Some(mut record) = existing else {
        return ConsentRecord {
            pseudonym: to.to_owned(),
            ..old
        };
    };
    let mut history = old.history;
    history.append(&mut record.history);
    // Stable: on equal times the corrected pseudonym's own change stays last.
    history.sort_by_key(|c| c.at);
    let excess = history
        .len()
        .saturating_sub(custody::privacy::MAX_CONSENT_HISTORY);
    history.drain(..excess);
    if let Some(last) = history.last() {
        record.current = last.clone();
    }
    record.history = history;
    record.version += 1;
    record
}

/// Moves one suppression marker (kept as it is: scope, what put it in force, since).
/// A marker the corrected pseudonym already has stays; a withdrawal's marker is not
/// carried where the corrected pseudonym's consent for the purpose is granted (its
/// newer record decides). Whether it is under the corrected pseudonym now.
async fn move_marker(
    deps: &Deps,
    tenant: &TenantId,
    old_key: &Key,
    new_key: &Key,
) -> Result<bool, ProcessError> {
    for _ in 0..MOVE_TRIES {
        let Some(old) = deps.store.get::<Suppression>(old_key).await? else {
            // Moved before (a repeat), or lifted meanwhile.
            return Ok(deps.store.get_item(new_key).await?.is_some());
        };
        let to = new_key
            .sk
            .rsplit_once('#')
            .map(|(_, p)| p.to_owned())
            .ok_or(ProcessError::Rectification(
                "a marker key without a pseudonym",
            ))?;
        let granted = match old.scope.strip_prefix("consent:") {
            Some(purpose) => deps
                .store
                .get::<ConsentRecord>(&ConsentRecord::key_of(tenant, &to, purpose))
                .await?
                .is_some_and(|r| r.current.state == ConsentState::Granted),
            None => false,
        };
        let there = deps.store.get_item(new_key).await?.is_some();
        let put = if granted || there {
            None
        } else {
            let moved = Suppression {
                pseudonym: to,
                ..old
            };
            Some((custody::store::Store::encode(&moved)?, None))
        };
        if transact_move(deps, put, old_key, Condition::new("attribute_exists(pk)")).await? {
            return Ok(!granted);
        }
    }
    Err(ProcessError::Conflict)
}

/// Puts `put` (on its condition) and deletes `old` (on `old_condition`) in one
/// transaction: whether it went through (`false`: a condition failed, nothing done).
async fn transact_move(
    deps: &Deps,
    put: Option<(Item, Option<Condition>)>,
    old: &Key,
    old_condition: Condition,
) -> Result<bool, ProcessError> {
    use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
    let built = |e: aws_sdk_dynamodb::error::BuildError| {
        ProcessError::Store(StoreError::Dynamo(e.to_string()))
    };
    let non_empty = |c: &Condition| {
        (
            (!c.names.is_empty()).then(|| c.names.clone()),
            (!c.values.is_empty()).then(|| c.values.clone()),
        )
    };
    let mut transaction = deps.store.client().transact_write_items();
    if let Some((item, condition)) = put {
        let mut builder = Put::builder()
            .table_name(deps.store.table())
            .set_item(Some(item));
        if let Some(condition) = condition {
            let (names, values) = non_empty(&condition);
            builder = builder
                .condition_expression(condition.expression)
                .set_expression_attribute_names(names)
                .set_expression_attribute_values(values);
        }
        transaction = transaction.transact_items(
            TransactWriteItem::builder()
                .put(builder.build().map_err(built)?)
                .build(),
        );
    }
    let (names, values) = non_empty(&old_condition);
    let delete = Delete::builder()
        .table_name(deps.store.table())
        .key("pk", AttributeValue::S(old.pk.clone()))
        .key("sk", AttributeValue::S(old.sk.clone()))
        .condition_expression(old_condition.expression)
        .set_expression_attribute_names(names)
        .set_expression_attribute_values(values)
        .build()
        .map_err(built)?;
    match transaction
        .transact_items(TransactWriteItem::builder().delete(delete).build())
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_transaction_canceled_exception()) =>
        {
            Ok(false)
        }
        Err(err) => Err(ProcessError::Store(StoreError::Dynamo(
            custody::aws::error_text(&err),
        ))),
    }
}

/// The corrected values, opened from the request's seal.
async fn corrected_values(
    deps: &Deps,
    request: &PrivacyRequest,
    rectification: &Rectification,
) -> Result<files::Corrections, ProcessError> {
    let sealed = rectification
        .sealed_values
        .as_ref()
        .ok_or(ProcessError::Rectification("the corrected values are gone"))?;
    let context = SealContext::new(
        &request.tenant,
        Purpose::RectificationValues,
        keys::privacy_request(&request.id),
    );
    let opened = deps.sealer.open(&context, sealed).await?;
    let values: BTreeMap<IdentifierKind, String> = serde_json::from_str(opened.expose_secret())
        .map_err(|_| ProcessError::Rectification("the corrected values are unreadable"))?;
    let mut corrections = files::Corrections::default();
    for correction in &rectification.corrections {
        let value = values
            .get(&correction.kind)
            .ok_or(ProcessError::Rectification("a corrected value is missing"))?;
        corrections
            .values
            .push((correction.kind, correction.from.clone(), value.clone()));
    }
    Ok(corrections)
}

/// Rewrites every planned object with the corrected values and moves its index
/// entries to the corrected pseudonyms; each object once. Then audits the result and
/// drops the sealed values.
async fn rectify_files_step(
    deps: &Deps,
    request: &mut PrivacyRequest,
    budget: Budget,
) -> Result<(), ProcessError> {
    let mut rectification = request.rectification.clone().unwrap_or_default();
    let corrections = corrected_values(deps, request, &rectification).await?;
    let pseudonyms: HashSet<String> = request.pseudonyms.iter().cloned().collect();
    let key = deps.pseudonym_key(&request.tenant).await?;
    let (mut files_rewritten, mut rows_rectified, mut versions, mut moved) = (0, 0, 0, 0);
    for object in &rectification.objects {
        // Past its retention the object is not rewritten (that would restart its
        // lifecycle clock); S3 deletes it with its index entries.
        if !object_readable(deps, &request.tenant, object).await? {
            continue;
        }
        let object_id = hex::encode(&Sha256::digest(object.as_bytes())[..12]);
        let matcher = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            rules: import_rules(deps, &request.tenant, object).await?,
        };
        // Counted before the rewrite under its own claim, as erasure does: a retry
        // after a rewrite whose claim was lost finds nothing left to correct.
        let rows: u64 = once(
            deps,
            &request.tenant,
            &format!("dsar:{}:file:{object_id}:rectify_rows", request.id),
            budget,
            || async { Ok(files::rows_to_rectify(deps, object, &matcher, &corrections).await?) },
        )
        .await?;
        let outcome: files::ObjectRectification = once(
            deps,
            &request.tenant,
            &format!("dsar:{}:file:{object_id}:rectify", request.id),
            budget,
            || async {
                Ok(files::rectify_object(
                    deps,
                    object,
                    &matcher,
                    &corrections,
                    files::Streaming::default(),
                )
                .await?)
            },
        )
        .await?;
        let entries: u64 = once(
            deps,
            &request.tenant,
            &format!("dsar:{}:file:{object_id}:reindex", request.id),
            budget,
            || async { move_refs(deps, &request.tenant, object, &rectification.corrections).await },
        )
        .await?;
        files_rewritten += u64::from(outcome.rewritten || rows > 0);
        rows_rectified += outcome.rows_rectified.max(rows);
        versions += outcome.versions_deleted;
        moved += entries;
    }
    rectification.files_rewritten = files_rewritten;
    rectification.rows_rectified = rows_rectified;
    rectification.versions_deleted = versions;
    rectification.index_entries_moved = moved;
    let kinds: Vec<&str> = rectification
        .corrections
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    let entry = audited(deps, request, "rectified", budget, || {
        // Kinds, pseudonyms and counts: never a value.
        base_event(request, "privacy_request.rectified")
            .detail("corrected", kinds)
            .detail(
                "new_pseudonyms",
                rectification
                    .corrections
                    .iter()
                    .map(|c| c.to.clone())
                    .collect::<Vec<_>>(),
            )
            .detail("files_rewritten", files_rewritten)
            .detail("rows_rectified", rows_rectified)
            .detail("versions_deleted", versions)
            .detail("index_entries_moved", moved)
            .detail("consent_records_moved", rectification.consent_records_moved)
            .detail(
                "suppression_markers_moved",
                rectification.suppression_markers_moved,
            )
    })
    .await?;
    request.audit.push(entry);
    // Processed: the plaintext values are no longer needed (saved with the step).
    rectification.sealed_values = None;
    request.rectification = Some(rectification);
    Ok(())
}

/// Moves the object's index entries from each old pseudonym to its corrected one
/// (the count added to an entry the new pseudonym may already have there), each in
/// one transaction conditional on the old entry: a repeat finds it gone and moves
/// nothing. Returns the entries moved.
async fn move_refs(
    deps: &Deps,
    tenant: &TenantId,
    object: &str,
    corrections: &[Correction],
) -> Result<u64, ProcessError> {
    use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
    let Some(parsed) = ObjectKey::parse(object) else {
        return Ok(0);
    };
    let source_id = parsed.ref_source_id();
    let key_of = |pseudonym: &str| {
        Key::new(
            keys::tenant(tenant),
            SubjectRef::sort_key(Source::ImportObject, &source_id, pseudonym),
        )
    };
    let built = |e: aws_sdk_dynamodb::error::BuildError| {
        ProcessError::Store(StoreError::Dynamo(e.to_string()))
    };
    let mut moved = 0;
    for correction in corrections {
        let old_key = key_of(&correction.from);
        let Some(old) = deps.store.get::<SubjectRef>(&old_key).await? else {
            continue;
        };
        let existing = deps
            .store
            .get::<SubjectRef>(&key_of(&correction.to))
            .await?;
        let new = SubjectRef {
            pseudonym: correction.to.clone(),
            count: old.count + existing.map_or(0, |r| r.count),
            ..old.clone()
        };
        let put = Put::builder()
            .table_name(deps.store.table())
            .set_item(Some(custody::store::Store::encode(&new)?))
            .build()
            .map_err(built)?;
        let delete = Delete::builder()
            .table_name(deps.store.table())
            .key("pk", AttributeValue::S(old_key.pk.clone()))
            .key("sk", AttributeValue::S(old_key.sk.clone()))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(built)?;
        let result = deps
            .store
            .client()
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .send()
            .await;
        match result {
            Ok(_) => moved += 1,
            // The old entry went meanwhile (expiry, or a repeat of this move).
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_transaction_canceled_exception()) => {}
            Err(err) => {
                return Err(ProcessError::Store(StoreError::Dynamo(
                    custody::aws::error_text(&err),
                )));
            }
        }
    }
    Ok(moved)
}

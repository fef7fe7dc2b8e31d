//! Processing: an uploaded file is validated and indexed in a first streaming pass,
//! then its valid rows are pushed in a second pass; rows imports and retries run the
//! second pass only.
//!
//! Two passes, because a file that turns out to be broken on its last line must not
//! have had its first rows pushed: the first pass decides whether the file is usable
//! at all (and counts, hashes and indexes it), the second delivers. Both stream the
//! object (one record and one batch in memory), so memory does not grow with the file.
//!
//! Delivery is resumable and exactly-once per batch as far as custody can tell:
//! batches are numbered deterministically from the rows, the import item counts the
//! batches the destination acknowledged (`batches_delivered`, advanced by a
//! conditional write), and a later run skips them. A batch acknowledged by the
//! receiver whose count update was lost is sent again with the same delivery id.
//!
//! Rows of suppressed subjects (a restriction of processing, or consent withdrawn for
//! the import's `purpose`) are left out of the pushes: the list is loaded once per
//! delivery ([`RowFilter`]) and each row's pseudonyms tested against it. Batch
//! boundaries count the left-out rows as if they were there, so a retry numbers the
//! batches alike whoever was suppressed meanwhile; each batch's left-out counts are
//! added in the same conditional write that advances `batches_delivered`, so a retried
//! or redelivered batch is counted once. The stored data keeps the rows.

use std::time::Duration;

use aws_lambda_events::s3::S3Event;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use custody::audit::{Event, Outcome};
use custody::idempotency::RunError;
use custody::imports::{
    FileError, Import, ImportError, LeftOut, LineError, MAX_RECORDED_ERRORS, Mode, ObjectKey,
    ObjectKind, ParseError, ParsedRow, Purged, REWRITE_TAG, RowFilter, RowForm, Status,
    SubjectCounter, stream_rows,
};
use custody::metrics::{self, names};
use custody::seal::{Purpose, SealContext, SealError};
use custody::store::keys;
use custody::suppression::Reason;
use custody::tenant::TenantId;
use custody::webhook::{self, MAX_BATCH_BYTES, MAX_BATCH_ROWS, WebhookError};
use secrecy::SecretString;
use serde_json::Value;

use crate::Deps;

/// The actor of everything this function does on its own.
pub const ACTOR: &str = "system:import";

/// A failure that is ours (or AWS's), not the file's: the event is retried.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Audit(#[from] custody::audit::AuditError),
    #[error(transparent)]
    Idempotency(#[from] custody::idempotency::IdempotencyError),
    #[error("reading the object failed: {0}")]
    Read(String),
    #[error("the object changed between validation and delivery")]
    Changed,
    /// A batch's send task ended without an answer (it panicked): nothing is
    /// recorded for the batch, and the retried event sends it again.
    #[error("sending a batch failed inside custody: {0}")]
    SendTask(String),
    /// A row reached delivery without its content (its reader was asked for the
    /// subjects only): a defect in custody, never sent as an empty row. 500.
    #[error("a row reached delivery without its content")]
    RowWithoutContent,
    /// The tenant's account deletion started: processing stops writing (the purge
    /// removes what there is). 409 on an HTTP route; an event handled as done.
    #[error("the account is being deleted; processing stopped")]
    AccountClosing,
}

impl From<custody::privacy::FenceError> for ProcessError {
    fn from(err: custody::privacy::FenceError) -> Self {
        match err {
            custody::privacy::FenceError::Closing => ProcessError::AccountClosing,
            custody::privacy::FenceError::Store(err) => ImportError::from(err).into(),
        }
    }
}

impl From<ProcessError> for custody::api::Problem {
    fn from(err: ProcessError) -> Self {
        match err {
            ProcessError::Import(e) => e.into(),
            ProcessError::AccountClosing => custody::privacy::FenceError::Closing.into(),
            other => {
                tracing::error!(error = %other, "import processing failed");
                custody::api::Problem::internal()
            }
        }
    }
}

/// Handles S3 notifications: each new upload object is processed once.
pub async fn handle_s3(
    deps: &Deps,
    event: S3Event,
    remaining: Duration,
) -> Result<(), ProcessError> {
    for record in event.records {
        let name = record.event_name.unwrap_or_default();
        if !name.starts_with("ObjectCreated:") {
            continue;
        }
        if record.s3.bucket.name.as_deref() != Some(deps.config.imports_bucket.as_str()) {
            tracing::warn!(event = %name, "notification for another bucket ignored");
            continue;
        }
        let key =
            custody::imports::decode_event_key(record.s3.object.key.as_deref().unwrap_or_default());
        let Some(object) = ObjectKey::parse(&key) else {
            tracing::warn!("notification for an object outside the import layout ignored");
            continue;
        };
        // Row batches are written by the API and delivered on complete.
        if let ObjectKind::Upload(_) = object.kind {
            let version = record
                .s3
                .object
                .version_id
                .clone()
                .filter(|v| !v.is_empty());
            let revision = version
                .clone()
                .or_else(|| record.s3.object.sequencer.clone())
                .unwrap_or_default();
            match process_upload(deps, &object, version, &revision, remaining).await {
                // Not a failure to retry: the purge removes the upload and its import.
                Err(ProcessError::AccountClosing) => {
                    tracing::info!(import = %object.import_id, "upload not processed: the account is being deleted");
                }
                other => {
                    other?;
                }
            }
        }
    }
    Ok(())
}

/// Processes one uploaded object at most once per object version.
pub async fn process_upload(
    deps: &Deps,
    object: &ObjectKey,
    version: Option<String>,
    revision: &str,
    remaining: Duration,
) -> Result<Option<Status>, ProcessError> {
    custody::privacy::ensure_open(deps.imports.store(), &object.tenant).await?;
    let Some(import) = deps.imports.get(&object.tenant, &object.import_id).await? else {
        tracing::warn!(import = %object.import_id, "upload for an unknown import ignored");
        return Ok(None);
    };
    if Some(object.name.as_str()) != import.format.upload_name() {
        tracing::warn!(import = %import.id, "upload name does not match the import's format");
        return Ok(None);
    }
    let key = format!("upload:{}#{revision}", object.import_id);
    let payload = (object.key(), revision);
    let result = deps
        .idempotency
        .run(&object.tenant, &key, &payload, remaining, || {
            run_upload(deps, object, version.clone())
        })
        .await;
    match result {
        Ok(outcome) => Ok(Some(outcome.into_inner())),
        Err(RunError::Work(err)) => Err(err),
        Err(RunError::Idempotency(err)) => Err(err.into()),
    }
}

async fn run_upload(
    deps: &Deps,
    object: &ObjectKey,
    version: Option<String>,
) -> Result<Status, ProcessError> {
    let tenant = &object.tenant;
    // The first version claims the import; a retry of that same version may resume.
    let claimed = deps
        .imports
        .update(tenant, &object.import_id, |imp| match imp.status {
            Status::Created => {
                imp.status = Status::Processing;
                imp.processed_version = version.clone();
                Ok(())
            }
            Status::Processing if imp.processed_version == version => Ok(()),
            other => Err(ImportError::State(other)),
        })
        .await;
    let import = match claimed {
        Ok(import) => import,
        // Already processed, failed or deleted: nothing more to do for this event,
        // except that an import which ended keeping nothing must hold nothing (a
        // crash may have come between recording the end and the purge, or this is
        // another upload to the same key). A purge of nothing is a no-op.
        Err(ImportError::State(status)) => {
            if let Some(import) = deps.imports.get(tenant, &object.import_id).await? {
                reject_other_upload(deps, &import, object, version.as_deref()).await?;
                redrive_end(deps, tenant, &object.import_id).await?;
            }
            return Ok(status);
        }
        Err(err) => return Err(err.into()),
    };
    let s3 = deps.imports.s3();
    let head = s3
        .head_object()
        .bucket(deps.imports.bucket())
        .key(object.key())
        .set_version_id(version.clone())
        .send()
        .await
        .map_err(|e| ImportError::S3(custody::aws::error_text(&e)))?;
    let stored_at = head
        .last_modified()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0))
        .unwrap_or_else(|| deps.clock.now());
    let class = import.retention_class;
    let expires_at = class
        .expires_at(stored_at)
        .unwrap_or_else(|| stored_at.timestamp());
    // The presigned upload carries the tag already; setting it again costs one call
    // and makes the lifecycle rule apply even to an upload that dropped the header.
    deps.imports
        .tag_object(&object.key(), version.as_deref(), class)
        .await?;
    deps.imports
        .record_data_expiry(tenant, &import.id, class, expires_at)
        .await?;

    let validation = validate(deps, &import, object, version.clone(), expires_at).await?;
    let declared = head.content_length().unwrap_or(0).max(0) as u64;
    if let Err(file_error) = validation.verdict {
        // A file we cannot parse can neither be pushed nor searched for a data
        // subject, so it is not kept: its data goes now, the log keeps the reason.
        // The end is recorded first, so a redelivered event finds it and purges
        // again (see above) rather than finding the object gone mid-processing.
        let now = deps.clock.now();
        let import = deps
            .imports
            .update(tenant, &import.id, |imp| {
                imp.status = Status::Invalid;
                imp.error = Some(file_error.to_string());
                imp.bytes = declared;
                imp.rows_total = validation.rows_total;
                imp.rows_valid = 0;
                imp.rows_invalid = validation.rows_invalid;
                imp.errors = validation.errors.clone();
                imp.data_deleted_at = Some(now);
                imp.data_expires_at = None;
                imp.completed_at = Some(now);
                Ok(())
            })
            .await?;
        let purged = deps.imports.purge(tenant, &import.id).await?;
        final_audit(deps, &import, Some(purged.object_versions)).await?;
        return Ok(Status::Invalid);
    }
    deps.imports
        .update(tenant, &import.id, |imp| {
            imp.bytes = validation.bytes;
            imp.sha256 = validation.sha256.clone();
            imp.rows_total = validation.rows_total;
            imp.rows_valid = validation.rows_valid;
            imp.rows_invalid = validation.rows_invalid;
            imp.errors = validation.errors.clone();
            imp.data_expires_at = Some(expires_at);
            Ok(())
        })
        .await?;
    deliver(deps, tenant, &import.id, vec![(object.key(), version)]).await
}

/// A version of an import's file other than the one processed: a second upload to a
/// reused presigned URL, which would otherwise sit unvalidated, unindexed and
/// invisible to data-subject requests. It is deleted and the deletion audited. An
/// erasure's rewrite of the file (tagged [`REWRITE_TAG`] by the dsar function) is
/// the one other version left alone. Idempotent: a version already gone is done.
async fn reject_other_upload(
    deps: &Deps,
    import: &Import,
    object: &ObjectKey,
    version: Option<&str>,
) -> Result<(), ProcessError> {
    let Some(version) = version else {
        // An unversioned event names no version to judge; the bucket is versioned.
        return Ok(());
    };
    if import.processed_version.as_deref() == Some(version) {
        return Ok(());
    }
    let s3 = deps.imports.s3();
    let key = object.key();
    let tags = match s3
        .get_object_tagging()
        .bucket(deps.imports.bucket())
        .key(&key)
        .version_id(version)
        .send()
        .await
    {
        Ok(tags) => tags,
        Err(err)
            if err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404)
                || err
                    .as_service_error()
                    .and_then(|e| e.meta().code())
                    .is_some_and(|c| c == "NoSuchVersion" || c == "NoSuchKey") =>
        {
            return Ok(());
        }
        Err(err) => return Err(ImportError::S3(custody::aws::error_text(&err)).into()),
    };
    let (mark, value) = REWRITE_TAG;
    if tags
        .tag_set()
        .iter()
        .any(|t| t.key() == mark && t.value() == value)
    {
        return Ok(());
    }
    // The entry first (unless a failed earlier delivery wrote it), then the delete: a
    // failure in between leaves the version, and the redelivered event finishes.
    let action = "import.upload_rejected";
    let target = keys::import(&import.id);
    let written = deps
        .audit
        .holds(&import.tenant, action, &target, |e| {
            e.details.get("version").and_then(Value::as_str) == Some(version)
        })
        .await?;
    if !written {
        let event = Event::new(ACTOR, action, target)
            .outcome(Outcome::Failure)
            .detail("version", version)
            .detail(
                "reason",
                "the import's file was already uploaded; upload again in a new import",
            );
        audit(deps, import, event).await?;
    }
    s3.delete_object()
        .bucket(deps.imports.bucket())
        .key(&key)
        .version_id(version)
        .send()
        .await
        .map_err(|e| ImportError::S3(custody::aws::error_text(&e)))?;
    tracing::warn!(import = %import.id, "a second upload to an import's URL was deleted");
    Ok(())
}

/// Finishes what an ended import's end left undone when its event comes again: an
/// import that keeps nothing holds nothing (a purge of nothing is a no-op), and the
/// audit entry of the end is written if it is not yet.
pub(crate) async fn redrive_end(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
) -> Result<(), ProcessError> {
    let Some(import) = deps.imports.get(tenant, id).await? else {
        return Ok(());
    };
    if !matches!(
        import.status,
        Status::Delivered | Status::DeliveryFailed | Status::Invalid
    ) {
        return Ok(());
    }
    let purged = if keeps_nothing(&import) {
        Some(deps.imports.purge(tenant, id).await?.object_versions)
    } else {
        None
    };
    if import.final_audited {
        return Ok(());
    }
    // The entry may be there already (written, then the flag's write failed). An
    // earlier attempt's end (before a retry) has the same action and target, so the
    // attempt must match too. Read only on this rare path.
    let action = end_action(import.status);
    let target = keys::import(id);
    let written = deps
        .audit
        .holds(tenant, action, &target, |e| {
            e.details
                .get("attempt")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                == u64::from(import.retries)
        })
        .await?;
    if written {
        mark_final_audited(deps, &import).await
    } else {
        final_audit(deps, &import, purged).await
    }
}

fn end_action(status: Status) -> &'static str {
    match status {
        Status::Delivered => "import.delivered",
        Status::Invalid => "import.rejected",
        _ => "import.delivery_failed",
    }
}

/// The audit entry recording how `import` ended, then the flag saying it is written.
async fn final_audit(
    deps: &Deps,
    import: &Import,
    object_versions_deleted: Option<u64>,
) -> Result<(), ProcessError> {
    let action = end_action(import.status);
    let mut event =
        Event::new(ACTOR, action, keys::import(&import.id)).detail("attempt", import.retries);
    event = match import.status {
        Status::Delivered => event
            .detail("rows_delivered", import.rows_delivered)
            .detail("rows_restricted", import.rows_restricted)
            .detail("rows_consent_withdrawn", import.rows_consent_withdrawn)
            .detail("batches", import.batches_delivered)
            .detail("mode", mode_name(import.mode)),
        Status::Invalid => event
            .outcome(Outcome::Failure)
            .detail("reason", import.error.clone().unwrap_or_default()),
        _ => event
            .outcome(Outcome::Failure)
            .detail("reason", import.error.clone().unwrap_or_default())
            .detail("batches_delivered", import.batches_delivered)
            .detail("mode", mode_name(import.mode)),
    };
    if let Some(deleted) = object_versions_deleted {
        event = event.detail("object_versions_deleted", deleted);
    }
    audit(deps, import, event).await?;
    mark_final_audited(deps, import).await
}

async fn mark_final_audited(deps: &Deps, import: &Import) -> Result<(), ProcessError> {
    deps.imports
        .update(&import.tenant, &import.id, |imp| {
            imp.final_audited = true;
            Ok(())
        })
        .await?;
    Ok(())
}

/// What the first pass found.
struct Validation {
    verdict: Result<(), FileError>,
    rows_total: u64,
    rows_valid: u64,
    rows_invalid: u64,
    errors: Vec<LineError>,
    bytes: u64,
    sha256: Option<String>,
}

async fn validate(
    deps: &Deps,
    import: &Import,
    object: &ObjectKey,
    version: Option<String>,
    expires_at: i64,
) -> Result<Validation, ProcessError> {
    // A rerun (after a crash) re-indexes from scratch rather than adding twice.
    deps.imports
        .delete_refs(&object.tenant, &object.refs_prefix())
        .await?;
    let pseudonyms = deps
        .app_secret
        .pseudonym_key(&object.tenant)
        .await
        .map_err(ImportError::from)?;
    let mut counter = SubjectCounter::new(&deps.imports, &pseudonyms, object.clone(), expires_at);
    let body = get_body(deps, &object.key(), version).await?;
    let (mut rows, reader) = stream_rows(body, import.format, import.rules(), RowForm::Subjects);
    let mut validation = Validation {
        verdict: Ok(()),
        rows_total: 0,
        rows_valid: 0,
        rows_invalid: 0,
        errors: Vec::new(),
        bytes: 0,
        sha256: None,
    };
    // Indexing writes new items for up to the function's timeout: the fence is
    // watched throughout, so a purge's final sweep comes after the last of them.
    let fence = custody::privacy::FenceWatch::new(deps.imports.store(), &object.tenant);
    while let Some(item) = rows.recv().await {
        match item {
            Ok(ParsedRow::Valid { subjects, .. }) => {
                validation.rows_total += 1;
                validation.rows_valid += 1;
                if fence.closing().await.map_err(ImportError::from)? {
                    return Err(ProcessError::AccountClosing);
                }
                counter.add(&subjects).await?;
            }
            Ok(ParsedRow::Invalid(error)) => {
                validation.rows_total += 1;
                validation.rows_invalid += 1;
                if validation.errors.len() < MAX_RECORDED_ERRORS {
                    validation.errors.push(error);
                }
            }
            Err(ParseError::File(error)) => validation.verdict = Err(error),
            Err(ParseError::Read(reason)) => return Err(ProcessError::Read(reason)),
        }
    }
    let scanned = reader
        .await
        .map_err(|e| ProcessError::Read(e.to_string()))?;
    counter.flush().await?;
    if let Some(scanned) = scanned {
        validation.bytes = scanned.bytes;
        validation.sha256 = Some(scanned.sha256);
    }
    Ok(validation)
}

async fn get_body(
    deps: &Deps,
    key: &str,
    version: Option<String>,
) -> Result<aws_sdk_s3::primitives::ByteStream, ProcessError> {
    let out = deps
        .imports
        .s3()
        .get_object()
        .bucket(deps.imports.bucket())
        .key(key)
        .set_version_id(version)
        .send()
        .await
        .map_err(|e| ImportError::S3(custody::aws::error_text(&e)))?;
    Ok(out.body)
}

/// A finished batch: its number, the rows in its body, and the rows left out of it.
struct Batch {
    number: u64,
    rows: usize,
    left_out: LeftOut,
    body: Bytes,
}

/// Builds batch bodies row by row, straight into the JSON that is sent.
///
/// Where a batch ends depends on the rows read only: a left-out row takes its place
/// (and its size) in the batch as if it were sent, so the numbering is the same on
/// every run, whoever is suppressed at the time.
struct BatchBuilder {
    import_id: String,
    number: u64,
    /// Rows of the current batch, left-out ones included.
    slots: usize,
    /// The size the body would have with the left-out rows in it.
    span: usize,
    rows: usize,
    left_out: LeftOut,
    body: Vec<u8>,
}

impl BatchBuilder {
    fn new(import_id: &str) -> Self {
        let mut builder = Self {
            import_id: import_id.to_owned(),
            number: 0,
            slots: 0,
            span: 0,
            rows: 0,
            left_out: LeftOut::default(),
            body: Vec::new(),
        };
        builder.start();
        builder
    }

    fn start(&mut self) {
        self.slots = 0;
        self.rows = 0;
        self.left_out = LeftOut::default();
        self.body.clear();
        // An id of ULID characters needs no escaping.
        self.body.extend_from_slice(
            format!(
                r#"{{"import_id":"{}","batch":{},"rows":["#,
                self.import_id, self.number
            )
            .as_bytes(),
        );
        self.span = self.body.len();
    }

    /// Adds a row, or with a `reason` takes its place without adding it; returns the
    /// previous batch when this row did not fit in it.
    /// `json` is the row encoded (the reader encodes it: [`RowForm::Json`]).
    fn push(&mut self, json: &[u8], left_out: Option<Reason>) -> Option<Batch> {
        let full = self.slots == MAX_BATCH_ROWS
            || (self.slots > 0 && self.span + json.len() + 3 > MAX_BATCH_BYTES);
        let finished = if full { self.finish() } else { None };
        if self.slots > 0 {
            self.span += 1;
        }
        self.span += json.len();
        self.slots += 1;
        match left_out {
            Some(reason) => self.left_out.add(reason),
            None => {
                if self.rows > 0 {
                    self.body.push(b',');
                }
                self.body.extend_from_slice(json);
                self.rows += 1;
            }
        }
        finished
    }

    /// The current batch, if it has rows (sent or left out); the next one starts.
    fn finish(&mut self) -> Option<Batch> {
        if self.slots == 0 {
            return None;
        }
        self.body.extend_from_slice(b"]}");
        let size = self.body.len();
        let done = Batch {
            number: self.number,
            rows: self.rows,
            left_out: self.left_out,
            // The next batch is about as large: sized once instead of grown by doubling.
            body: Bytes::from(std::mem::replace(&mut self.body, Vec::with_capacity(size))),
        };
        self.number += 1;
        self.start();
        Some(done)
    }
}

/// Where a delivery run stands.
enum Step {
    Continue,
    Stop(Status),
}

/// Pushes the valid rows of `objects` (in order) to the import's destination,
/// resuming after the batches already acknowledged. The import must be `processing`.
/// Ends `delivered` or `delivery_failed`; in bypass mode either way with its data
/// deleted.
pub async fn deliver(
    deps: &Deps,
    tenant: &TenantId,
    import_id: &str,
    objects: Vec<(String, Option<String>)>,
) -> Result<Status, ProcessError> {
    let Some(import) = deps.imports.get(tenant, import_id).await? else {
        return Err(ImportError::NotFound.into());
    };
    if import.status != Status::Processing {
        return Ok(import.status);
    }
    let url = match webhook::destination_url(
        &import.destination_url,
        deps.settings.egress.allow_loopback,
    ) {
        Ok(url) => url,
        Err(err) => return fail_delivery(deps, &import, &err).await,
    };
    let secret = deps
        .sealer
        .open(
            &SealContext::new(tenant, Purpose::WebhookSecret, keys::import(import_id)),
            &import.destination_secret,
        )
        .await?;
    // Once per delivery: who is left out of it.
    let filter = RowFilter::load(
        deps.imports.store(),
        &deps.app_secret,
        tenant,
        import.purpose.as_deref(),
    )
    .await?;
    let mut batches = BatchBuilder::new(import_id);
    let mut target = Target {
        deps,
        import: &import,
        url: &url,
        secret: &secret,
        fence: custody::privacy::FenceWatch::new(deps.imports.store(), tenant),
        in_flight: None,
        acknowledged: Vec::new(),
        since: None,
    };
    for (key, version) in objects {
        let body = get_body(deps, &key, version).await?;
        let (mut rows, reader) = stream_rows(body, import.format, import.rules(), RowForm::Json);
        while let Some(item) = rows.recv().await {
            let (row, subjects) = match item {
                Ok(ParsedRow::Valid { row, subjects, .. }) => (row, subjects),
                Ok(ParsedRow::Invalid(_)) => continue,
                Err(ParseError::File(_)) => return Err(ProcessError::Changed),
                Err(ParseError::Read(reason)) => return Err(ProcessError::Read(reason)),
            };
            let json = row.into_json().ok_or(ProcessError::RowWithoutContent)?;
            if let Some(batch) = batches.push(&json, filter.reason(&subjects))
                && let Step::Stop(status) = target.send(batch).await?
            {
                return Ok(status);
            }
        }
        reader
            .await
            .map_err(|e| ProcessError::Read(e.to_string()))?;
    }
    if let Some(batch) = batches.finish()
        && let Step::Stop(status) = target.send(batch).await?
    {
        return Ok(status);
    }
    if let Step::Stop(status) = target.settle().await? {
        return Ok(status);
    }
    if let Step::Stop(status) = target.checkpoint().await? {
        return Ok(status);
    }
    finish_delivery(deps, &import).await
}

/// Acknowledged batches are recorded on the import together, in one conditional
/// write per this many batches or per [`CHECKPOINT_INTERVAL`], whichever comes first,
/// instead of one write per batch (a read and a write of the import item: more than
/// the delivery itself costs; docs/PERFORMANCE.md). What a crash loses is at most
/// this many acknowledged batches, which the next run sends again with the same
/// delivery ids (the receiver deduplicates by id); a failure records every
/// acknowledged batch before the failure itself.
const CHECKPOINT_BATCHES: usize = 10;
/// The longest an acknowledged batch waits to be recorded (and a deleted import goes
/// on being delivered).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

struct Target<'a> {
    deps: &'a Deps,
    import: &'a Import,
    url: &'a url::Url,
    secret: &'a SecretString,
    fence: custody::privacy::FenceWatch<'a>,
    /// The batch being sent, if any: its send runs while the next batch is read and
    /// encoded, and is settled before the next one goes, so batches still reach the
    /// destination one at a time and in order.
    in_flight: Option<InFlight>,
    /// Acknowledged batches not yet recorded: (number, rows sent, rows left out).
    acknowledged: Vec<(u64, usize, LeftOut)>,
    /// When the oldest of them was acknowledged.
    since: Option<std::time::Instant>,
}

/// A batch's send, spawned so it progresses while rows are read. Aborted if dropped
/// unsettled (the run stopped): an unacknowledged batch is sent again by the next
/// run under the same delivery id.
struct InFlight {
    number: u64,
    rows: usize,
    left_out: LeftOut,
    send: tokio::task::JoinHandle<Result<webhook::Delivered, WebhookError>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.send.abort();
    }
}

impl Target<'_> {
    async fn send(&mut self, batch: Batch) -> Result<Step, ProcessError> {
        let Batch {
            number,
            rows,
            left_out,
            body,
        } = batch;
        if number < self.import.batches_delivered {
            return Ok(Step::Continue);
        }
        if let Step::Stop(status) = self.settle().await? {
            return Ok(Step::Stop(status));
        }
        if self.fence.closing().await.map_err(ImportError::from)? {
            return Err(ProcessError::AccountClosing);
        }
        // A batch whose every row is left out is not sent; it is done all the same.
        if rows == 0 {
            return self.acknowledge(number, rows, left_out).await;
        }
        let id = webhook::delivery_id(&self.import.id, number);
        let (sender, url, secret) = (
            self.deps.sender.clone(),
            self.url.clone(),
            self.secret.clone(),
        );
        self.in_flight = Some(InFlight {
            number,
            rows,
            left_out,
            send: tokio::spawn(async move { sender.deliver(&url, &secret, &id, body).await }),
        });
        Ok(Step::Continue)
    }

    /// Waits for the batch in flight, if any, and records its outcome.
    async fn settle(&mut self) -> Result<Step, ProcessError> {
        let Some(mut in_flight) = self.in_flight.take() else {
            return Ok(Step::Continue);
        };
        let sent = (&mut in_flight.send)
            .await
            .map_err(|join| ProcessError::SendTask(join.to_string()))?;
        if let Err(err) = sent {
            // What was acknowledged before the failure is recorded first, so a retry
            // resumes after it.
            if let Step::Stop(status) = self.checkpoint().await? {
                return Ok(Step::Stop(status));
            }
            let status = fail_delivery(self.deps, self.import, &err).await?;
            return Ok(Step::Stop(status));
        }
        self.acknowledge(in_flight.number, in_flight.rows, in_flight.left_out)
            .await
    }

    async fn acknowledge(
        &mut self,
        number: u64,
        rows: usize,
        left_out: LeftOut,
    ) -> Result<Step, ProcessError> {
        self.acknowledged.push((number, rows, left_out));
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if self.acknowledged.len() >= CHECKPOINT_BATCHES || since.elapsed() >= CHECKPOINT_INTERVAL {
            return self.checkpoint().await;
        }
        Ok(Step::Continue)
    }

    /// Records the acknowledged batches on the import, each exactly once: a batch
    /// advances `batches_delivered` only from its own number, so batches another run
    /// recorded meanwhile are not counted again.
    async fn checkpoint(&mut self) -> Result<Step, ProcessError> {
        if self.acknowledged.is_empty() {
            return Ok(Step::Continue);
        }
        let acknowledged = std::mem::take(&mut self.acknowledged);
        self.since = None;
        let mut advanced_rows = 0u64;
        let updated = self
            .deps
            .imports
            .update(&self.import.tenant, &self.import.id, |imp| {
                advanced_rows = 0;
                if imp.status != Status::Processing {
                    return Err(ImportError::State(imp.status));
                }
                // Counted once: the left-out rows with the batch they were left out of.
                for (number, rows, left_out) in &acknowledged {
                    if imp.batches_delivered == *number {
                        imp.batches_delivered += 1;
                        imp.rows_delivered += *rows as u64;
                        imp.rows_restricted += left_out.restricted;
                        imp.rows_consent_withdrawn += left_out.consent_withdrawn;
                        advanced_rows += *rows as u64;
                    }
                }
                Ok(())
            })
            .await;
        match updated {
            Ok(_) => {
                // Counted once: only by the write that advanced past these batches.
                if advanced_rows > 0 {
                    metrics::count(names::IMPORT_ROWS_DELIVERED, advanced_rows);
                }
                Ok(Step::Continue)
            }
            // Deleted (or otherwise moved on) while delivering: stop here.
            Err(ImportError::State(status)) => Ok(Step::Stop(status)),
            Err(err) => Err(err.into()),
        }
    }
}

/// Whether an import that has ended must hold no data: bypass imports (whatever
/// the outcome) and files that turned out invalid.
fn keeps_nothing(import: &Import) -> bool {
    import.mode == Mode::Bypass || import.status == Status::Invalid
}

/// Ends a bypass import's processing: every version of its data goes, whether the
/// rows were delivered or not. Called after the end is recorded, so a crash in
/// between is finished by the redelivered event. `None` in store mode.
async fn purge_if_bypass(deps: &Deps, import: &Import) -> Result<Option<Purged>, ProcessError> {
    if import.mode != Mode::Bypass {
        return Ok(None);
    }
    Ok(Some(deps.imports.purge(&import.tenant, &import.id).await?))
}

async fn fail_delivery(
    deps: &Deps,
    import: &Import,
    error: &WebhookError,
) -> Result<Status, ProcessError> {
    let bypass = import.mode == Mode::Bypass;
    let now = deps.clock.now();
    let updated = deps
        .imports
        .update(&import.tenant, &import.id, |imp| {
            if imp.status != Status::Processing {
                return Err(ImportError::State(imp.status));
            }
            imp.status = Status::DeliveryFailed;
            // The error names a status or a transport failure, never a row.
            imp.error = Some(error.to_string());
            if bypass {
                imp.completed_at = Some(now);
                imp.data_deleted_at = Some(now);
                imp.data_expires_at = None;
            }
            Ok(())
        })
        .await;
    let import = match updated {
        Ok(import) => import,
        // Ended already (this is a redelivery): finish what the end left undone.
        Err(ImportError::State(status)) => {
            redrive_end(deps, &import.tenant, &import.id).await?;
            return Ok(status);
        }
        Err(err) => return Err(err.into()),
    };
    metrics::count(
        names::IMPORT_ROWS_FAILED,
        import
            .rows_valid
            .saturating_sub(import.rows_delivered)
            .saturating_sub(import.rows_restricted)
            .saturating_sub(import.rows_consent_withdrawn),
    );
    let purged = purge_if_bypass(deps, &import).await?;
    final_audit(deps, &import, purged.map(|p| p.object_versions)).await?;
    Ok(Status::DeliveryFailed)
}

async fn finish_delivery(deps: &Deps, import: &Import) -> Result<Status, ProcessError> {
    let bypass = import.mode == Mode::Bypass;
    let now = deps.clock.now();
    let updated = deps
        .imports
        .update(&import.tenant, &import.id, |imp| {
            if imp.status != Status::Processing {
                return Err(ImportError::State(imp.status));
            }
            imp.status = Status::Delivered;
            imp.error = None;
            imp.completed_at = Some(now);
            if bypass {
                imp.data_deleted_at = Some(now);
                imp.data_expires_at = None;
            }
            Ok(())
        })
        .await;
    let import = match updated {
        Ok(import) => import,
        // Ended already (this is a redelivery): finish what the end left undone.
        Err(ImportError::State(status)) => {
            redrive_end(deps, &import.tenant, &import.id).await?;
            return Ok(status);
        }
        Err(err) => return Err(err.into()),
    };
    // Bypass keeps nothing once the rows are delivered: every version goes.
    let purged = purge_if_bypass(deps, &import).await?;
    final_audit(deps, &import, purged.map(|p| p.object_versions)).await?;
    Ok(Status::Delivered)
}

pub(crate) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Store => "store",
        Mode::Bypass => "bypass",
    }
}

pub(crate) async fn audit(
    deps: &Deps,
    import: &Import,
    event: Event,
) -> Result<(), custody::audit::AuditError> {
    deps.audit.append(&import.tenant, event).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn row(n: usize, width: usize) -> Vec<u8> {
        let mut row = Map::new();
        row.insert("n".into(), Value::from(n));
        row.insert("pad".into(), Value::String("x".repeat(width)));
        serde_json::to_vec(&row).unwrap()
    }

    #[test]
    fn batches_hold_at_most_1000_rows_and_parse_as_batches() {
        let mut builder = BatchBuilder::new("01JD2Z7Q3X9V8W7T6S5R4Q3P2N");
        let mut done = Vec::new();
        for n in 0..2500 {
            done.extend(builder.push(&row(n, 1), None));
        }
        done.extend(builder.finish());
        let sizes: Vec<usize> = done.iter().map(|b| b.rows).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
        for done in &done {
            let batch: webhook::Batch = serde_json::from_slice(&done.body).unwrap();
            assert_eq!(batch.batch, done.number);
            assert_eq!(batch.rows.len(), done.rows);
        }
    }

    #[test]
    fn batches_are_bounded_in_bytes() {
        let mut builder = BatchBuilder::new("01JD2Z7Q3X9V8W7T6S5R4Q3P2N");
        let mut done = Vec::new();
        for n in 0..100 {
            done.extend(builder.push(&row(n, 60_000), None));
        }
        done.extend(builder.finish());
        assert!(done.len() > 1);
        assert!(done.iter().all(|b| b.body.len() <= MAX_BATCH_BYTES));
        assert_eq!(done.iter().map(|b| b.rows).sum::<usize>(), 100);
    }

    /// Left-out rows keep their places: the batches end where they would with every
    /// row sent, so a retry numbers them alike whoever was suppressed meanwhile.
    #[test]
    fn left_out_rows_keep_the_batch_boundaries_and_are_counted_per_batch() {
        let shape = |leave_out: &dyn Fn(usize) -> Option<Reason>| {
            let mut builder = BatchBuilder::new("01JD2Z7Q3X9V8W7T6S5R4Q3P2N");
            let mut done = Vec::new();
            for n in 0..2500 {
                done.extend(builder.push(&row(n, 1500), leave_out(n)));
            }
            done.extend(builder.finish());
            done
        };
        let all = shape(&|_| None);
        let some = shape(&|n| match n % 7 {
            0 => Some(Reason::Restricted),
            3 => Some(Reason::ConsentWithdrawn),
            _ => None,
        });
        assert!(all.len() > 2);
        assert_eq!(all.len(), some.len());
        for (a, b) in all.iter().zip(&some) {
            assert_eq!(a.number, b.number);
            assert_eq!(
                a.rows as u64,
                b.rows as u64 + b.left_out.total(),
                "batch {}",
                a.number
            );
            assert_eq!(a.left_out, LeftOut::default());
            let sent: webhook::Batch = serde_json::from_slice(&b.body).unwrap();
            assert_eq!(sent.rows.len(), b.rows);
            assert!(
                sent.rows
                    .iter()
                    .all(|r| !matches!(r["n"].as_u64().unwrap() % 7, 0 | 3))
            );
        }
        let restricted: u64 = some.iter().map(|b| b.left_out.restricted).sum();
        let withdrawn: u64 = some.iter().map(|b| b.left_out.consent_withdrawn).sum();
        assert_eq!((restricted, withdrawn), (358, 357));
        // A batch of left-out rows only is still a batch (it advances the count).
        let none = shape(&|_| Some(Reason::Restricted));
        assert_eq!(none.len(), all.len());
        assert!(none.iter().all(|b| b.rows == 0));
    }

    #[test]
    fn event_keys_are_url_decoded() {
        assert_eq!(
            custody::imports::decode_event_key("imports/a/b/upload.csv"),
            "imports/a/b/upload.csv"
        );
        assert_eq!(custody::imports::decode_event_key("a+b%2Fc"), "a b/c");
    }
}

//! The account holder's copy: `POST /account/export` builds one tar archive of
//! everything custody holds for the tenant, served behind a short presigned link.
//!
//! # Why a job, and how it resumes
//!
//! Import files reach 1 GiB and the function has 512 MB and 300 s, so the archive is
//! built by an [`AccountExport`] job item, run by the table's stream like an account
//! purge: each save of the job is a stream record, records of one item arrive in
//! order (never two at once), and a run that stops — the budget, a crash — is
//! continued by the next record from the last save. The phases:
//!
//! 1. **table**: a filtered scan of the tenant's items (the purge's filter, so no key
//!    layout is missed), one page at a time; each page's items, sanitised, go to
//!    small staging objects per section (`staging/<section>/<page>`);
//! 2. **audit**: both audit chains, a page at a time, into `staging/audit/…`;
//! 3. **files**: the tenant's import objects are listed (key, size, ETag) into
//!    `staging/files/…` — not copied;
//! 4. **plan**: the archive's layout — every entry's header and its content as a list
//!    of segments (inline bytes, or a byte range of a staged or import object pinned
//!    by ETag) — written to `staging/plan.json`. From here the archive's bytes are a
//!    pure function of the plan, so
//! 5. **upload** writes it as a multipart upload one part at a time, saving
//!    `(upload id, parts, offset)` after each; a later run regenerates the stream from
//!    the saved offset (ranged GETs) and goes on. Parts are at least 5 MiB (S3's rule)
//!    and memory holds one part.
//!
//! A run that keeps failing ([`MAX_ATTEMPTS`]) ends the job `failed`: the multipart
//! upload is aborted, staging deleted, the failure audited and counted
//! (`AccountExportsFailed`, alarmed). A job left `pending`/`running` without a save for
//! [`STALE_AFTER`] is failed the same way by the next `POST` or `GET`. Nothing is ever
//! served half-written: the link exists only for a `ready` job, whose archive is a
//! completed upload.
//!
//! # Tar
//!
//! POSIX ustar, written here (no tar crate was in the workspace): a 512-byte header
//! per entry, the content padded to 512 bytes, two zero blocks at the end. Every
//! archive tool opens it (`tar -xf`, Windows `tar`, macOS Archive Utility).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use chrono::{DateTime, Duration, Utc};
use custody::api::{Caller, Problem, Role, json_response, path_param};
use custody::audit::{AuditClass, Event, Outcome, PageQuery};
use custody::retention::{RetentionClass, S3_TAG_KEY};
use custody::store::{Condition, Entity, Item, Key, Store, StoreError, keys};
use custody::tenant::TenantId;
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::Deps;
use crate::files::MIN_PART_BYTES;
use crate::process::{ACTOR, Budget, ProcessError, results_tenant_prefix, text};

/// Version tag of the archive's layout (`manifest.json`'s `schema`).
pub const ARCHIVE_SCHEMA: &str = "custody.account.export/v1";
/// Sort-key prefix of export jobs: `ACCOUNT#export#<ulid>`.
pub const SK_PREFIX: &str = "ACCOUNT#export#";
/// The tenant's one running job, if any (so a second `POST` finds it).
const ACTIVE_SK: &str = "ACCOUNT#export-active";
/// Failed runs after which the job is `failed`.
pub const MAX_ATTEMPTS: u32 = 5;
/// A job not saved for this long while pending or running is dead (a run saves at
/// least every part or page, seconds apart).
pub const STALE_AFTER: Duration = Duration::minutes(30);
/// Upload part size (all but the last); raised to S3's 5 MiB minimum if lower.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Import objects listed per page.
const LIST_PAGE: i32 = 1000;
/// Bytes of a tar block.
const BLOCK: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    Pending,
    Running,
    Ready,
    Failed,
}

impl ExportStatus {
    fn is_open(self) -> bool {
        matches!(self, ExportStatus::Pending | ExportStatus::Running)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Table,
    AuditActivity,
    AuditEvidence,
    Files,
    Plan,
    Upload,
    Done,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartDone {
    pub number: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// The export job: `T#<tenant>` / `ACCOUNT#export#<id>`, kept as long as its archive
/// ([`RetentionClass::DsarResult`]), so it never points at a deleted archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountExport {
    pub tenant: TenantId,
    pub id: String,
    pub status: ExportStatus,
    pub requested_at: DateTime<Utc>,
    pub requested_by: String,
    #[serde(default)]
    pub phase: Phase,
    /// Where the current phase continues (a scan key or a listing token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Staging pages written in the current phase (names the next one).
    #[serde(default)]
    pub page: u32,
    /// The audit page's lower bound (a sequence number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_before: Option<u64>,
    /// Items per kind included, `excluded:<kind>` for those left out, and totals
    /// (`total:audit_entries`, `total:import_files`, `total:import_bytes`,
    /// `total:import_files_withheld`).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    #[serde(default)]
    pub parts: Vec<PartDone>,
    /// Archive bytes uploaded so far.
    #[serde(default)]
    pub offset: u64,
    /// The archive's size, once planned.
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub attempts: u32,
    /// The last failure's kind (never its text: S3 or parser texts could quote data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: i64,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

impl Entity for AccountExport {
    const KIND: &'static str = "account_export";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant, &self.id)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

impl AccountExport {
    pub fn key_of(tenant: &TenantId, id: &str) -> Key {
        Key::new(keys::tenant(tenant), format!("{SK_PREFIX}{id}"))
    }

    fn new(tenant: &TenantId, actor: &str, now: DateTime<Utc>) -> Self {
        Self {
            tenant: tenant.clone(),
            id: ulid::Ulid::new().to_string(),
            status: ExportStatus::Pending,
            requested_at: now,
            requested_by: actor.to_owned(),
            phase: Phase::Table,
            cursor: None,
            page: 0,
            audit_before: None,
            counts: BTreeMap::new(),
            upload_id: None,
            parts: Vec::new(),
            offset: 0,
            total_bytes: 0,
            attempts: 0,
            error: None,
            completed_at: None,
            expires_at: RetentionClass::DsarResult
                .expires_at(now)
                .unwrap_or(now.timestamp()),
            updated_at: now,
            version: 1,
        }
    }

    /// The archive's object key.
    pub fn archive_key(&self) -> String {
        format!("{}archive.tar", job_prefix(&self.tenant, &self.id))
    }

    fn stale(&self, now: DateTime<Utc>) -> bool {
        self.status.is_open() && now - self.updated_at > STALE_AFTER
    }

    fn bump(&mut self, name: &str, by: u64) {
        *self.counts.entry(name.to_owned()).or_default() += by;
    }
}

/// Which job is the tenant's running one: `T#<tenant>` / `ACCOUNT#export-active`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActiveExport {
    pub tenant: TenantId,
    pub job_id: String,
    pub expires_at: i64,
}

impl Entity for ActiveExport {
    const KIND: &'static str = "account_export_active";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

impl ActiveExport {
    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), ACTIVE_SK)
    }
}

/// The results-bucket prefix of one export job (inside the tenant's prefix, so the
/// bucket's lifecycle expires it and an account purge removes it).
pub fn job_prefix(tenant: &TenantId, id: &str) -> String {
    format!("{}{id}/", copies_prefix(tenant))
}

/// The prefix of every account copy of the tenant: an erasure deletes them all, since
/// each may hold the subject's rows and records.
pub fn copies_prefix(tenant: &TenantId) -> String {
    format!("{}account-exports/", results_tenant_prefix(tenant))
}

fn staging_prefix(tenant: &TenantId, id: &str) -> String {
    format!("{}staging/", job_prefix(tenant, id))
}

// ---------------------------------------------------------------------------------
// Sections: which file each kind of item goes to
// ---------------------------------------------------------------------------------

/// A JSON section of the archive (each a JSON array of sanitised items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Connections,
    Settings,
    ExportLog,
    Imports,
    PrivacyRequests,
    Consent,
    SubjectIndex,
    Other,
}

impl Section {
    const ALL: [Section; 8] = [
        Section::Connections,
        Section::Settings,
        Section::ExportLog,
        Section::Imports,
        Section::PrivacyRequests,
        Section::Consent,
        Section::SubjectIndex,
        Section::Other,
    ];

    fn file(self) -> &'static str {
        match self {
            Section::Connections => "connections.json",
            Section::Settings => "settings.json",
            Section::ExportLog => "export-log.json",
            Section::Imports => "imports.json",
            Section::PrivacyRequests => "privacy-requests.json",
            Section::Consent => "consent.json",
            Section::SubjectIndex => "subject-index.json",
            Section::Other => "other.json",
        }
    }

    fn staging(self) -> &'static str {
        self.file().trim_end_matches(".json")
    }

    fn describe(self) -> &'static str {
        match self {
            Section::Connections => {
                "provider connections (metadata only: provider, account ids, scopes, status, times; never tokens) and the provider-account links"
            }
            Section::Settings => {
                "export settings, privacy settings and the notification webhook (secrets and sealed credentials omitted, marked `<name>_present`)"
            }
            Section::ExportLog => {
                "export runs, the files each wrote, their work lists and the export state"
            }
            Section::Imports => {
                "import metadata, data markers and importer sessions (token hashes and sealed secrets omitted)"
            }
            Section::PrivacyRequests => {
                "privacy requests as stored (data subjects by pseudonym only) and restrictions of processing"
            }
            Section::Consent => "consent records with their history (subjects by pseudonym)",
            Section::SubjectIndex => {
                "the subject index: which record holds which pseudonymous subject"
            }
            Section::Other => {
                "every other item of the tenant (notices, an account deletion job, kinds added later)"
            }
        }
    }

    /// The section of an item kind; `None` for kinds left out ([`excluded`]).
    fn of(kind: &str) -> Option<Section> {
        Some(match kind {
            "connection" | "account_link" => Section::Connections,
            "export_settings" | "privacy_settings" | "notification_webhook" => Section::Settings,
            "export_run" | "export_run_page" | "export_run_seen" | "export_run_file"
            | "export_state" => Section::ExportLog,
            "import" | "import_data" | "import_session" => Section::Imports,
            "privacy_request" | "suppression" => Section::PrivacyRequests,
            "consent" => Section::Consent,
            "subject_ref" => Section::SubjectIndex,
            _ if excluded(kind).is_some() => return None,
            _ => Section::Other,
        })
    }
}

/// Kinds left out of the archive, and why (the manifest says so).
fn excluded(kind: &str) -> Option<&'static str> {
    match kind {
        "oauth_state" => Some(
            "an OAuth state holds a PKCE verifier (a secret) for the minutes between redirect and callback",
        ),
        "verification_code" => {
            Some("a one-time verification code is a secret; the request it verifies is included")
        }
        "idempotency" => Some(
            "retry bookkeeping (kept one day): copies of results that are included where they belong",
        ),
        "account_export" | "account_export_active" => Some("the export jobs themselves"),
        _ => None,
    }
}

/// Attribute names never copied (key and index attributes, leases).
const DROPPED: [&str; 7] = [
    "pk",
    "sk",
    "subject_pk",
    "subject_sk",
    "lease_owner",
    "lease_until",
    "version",
];
/// Attribute names (any part) whose value is a secret or sealed: replaced by
/// `<name>_present: true`, at any depth.
const SECRET_HINTS: [&str; 7] = [
    "token",
    "secret",
    "sealed",
    "password",
    "verifier",
    "ciphertext",
    "credential",
];

fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_HINTS.iter().any(|hint| lower.contains(hint))
}

/// A value without secrets: secret-named fields become `<name>_present`, at any depth.
fn scrub(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (name, value) in map {
                if is_secret_name(&name) {
                    out.insert(format!("{name}_present"), Value::Bool(!value.is_null()));
                } else {
                    out.insert(name, scrub(value));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(scrub).collect()),
        other => other,
    }
}

/// An item as it goes into a section.
fn render(kind: &str, item: Item) -> Value {
    match kind {
        // Metadata only, by whitelist: the connection's summary (never a token).
        "connection" => match Store::decode::<custody::oauth::Connection>(item.clone()) {
            Ok(connection) => {
                let mut value =
                    serde_json::to_value(custody::oauth::ConnectionSummary::from(&connection))
                        .unwrap_or(Value::Null);
                if let Value::Object(map) = &mut value {
                    map.insert("kind".into(), json!(kind));
                    map.insert(
                        "refresh_token_present".into(),
                        json!(connection.refresh_token.is_some()),
                    );
                    map.insert("refreshed_at".into(), json!(connection.refreshed_at));
                }
                value
            }
            Err(_) => generic(item),
        },
        // The link's partition key is what it says (`LOC#<location>`).
        "account_link" => {
            let link = text(&item, "pk");
            let mut value = generic(item);
            if let Value::Object(map) = &mut value {
                map.insert("link".into(), json!(link));
            }
            value
        }
        _ => generic(item),
    }
}

fn generic(item: Item) -> Value {
    let value: Value = serde_dynamo::from_item(item).unwrap_or(Value::Null);
    let Value::Object(map) = value else {
        return Value::Null;
    };
    scrub(Value::Object(
        map.into_iter()
            .filter(|(name, _)| !DROPPED.contains(&name.as_str()))
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------

fn problem(err: ProcessError) -> Problem {
    match err {
        ProcessError::Store(e) => e.into(),
        ProcessError::Conflict => Problem::conflict("the export changed concurrently; try again"),
        other => {
            tracing::error!(error = %other, "account export failed");
            Problem::internal()
        }
    }
}

/// `POST /account/export` (admin): starts the export, or answers with the one running.
pub async fn post(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    custody::privacy::ensure_open(&deps.store, &caller.tenant).await?;
    let tenant = &caller.tenant;
    // At most a few rounds: each either finds the running job, clears a finished or
    // dead pointer, or creates the job.
    for _ in 0..3 {
        if let Some(active) = deps
            .store
            .get::<ActiveExport>(&ActiveExport::key_of(tenant))
            .await?
        {
            let job = deps
                .store
                .get::<AccountExport>(&AccountExport::key_of(tenant, &active.job_id))
                .await?;
            match job {
                Some(job) if job.status.is_open() && !job.stale(deps.now()) => {
                    return json_response(StatusCode::ACCEPTED, &view(&job, None));
                }
                Some(job) if job.status.is_open() => {
                    fail(deps, job, "stale").await.map_err(problem)?;
                }
                _ => release(deps, tenant, &active.job_id).await?,
            }
            continue;
        }
        let job = AccountExport::new(tenant, &caller.actor(), deps.now());
        let active = ActiveExport {
            tenant: tenant.clone(),
            job_id: job.id.clone(),
            expires_at: job.expires_at,
        };
        let writes = vec![transact_put(deps, &job)?, transact_put(deps, &active)?];
        match deps
            .store
            .client()
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => {}
            // Another POST won the race: the next round finds its job.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_transaction_canceled_exception()) =>
            {
                continue;
            }
            Err(err) => {
                tracing::error!(error = %custody::aws::error_text(&err), "export job could not be stored");
                return Err(Problem::internal());
            }
        }
        deps.audit
            .append(
                tenant,
                Event::new(caller.actor(), "account.export_requested", target(&job.id)),
            )
            .await?;
        return json_response(StatusCode::ACCEPTED, &view(&job, None));
    }
    Err(Problem::conflict(
        "the export changed concurrently; try again",
    ))
}

fn transact_put<E: Entity>(deps: &Deps, entity: &E) -> Result<TransactWriteItem, Problem> {
    let put = Put::builder()
        .table_name(deps.store.table())
        .set_item(Some(Store::encode(entity)?))
        // An expired item TTL has not removed yet counts as absent.
        .condition_expression("attribute_not_exists(pk) OR #exp <= :now")
        .expression_attribute_names("#exp", custody::retention::TTL_ATTRIBUTE)
        .expression_attribute_values(
            ":now",
            AttributeValue::N(deps.now().timestamp().to_string()),
        )
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "transaction item could not be built");
            Problem::internal()
        })?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// `GET /account/exports/{id}` (admin): the job, and for a ready one a fresh link.
pub async fn get(deps: &Deps, req: &Request, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let id = path_param(req, "id")?;
    if id.len() != 26 || ulid::Ulid::from_string(&id).is_err() {
        return Err(Problem::not_found());
    }
    // The key begins with the caller's tenant: another tenant's job is simply absent.
    let Some(mut job) = deps
        .store
        .get::<AccountExport>(&AccountExport::key_of(&caller.tenant, &id))
        .await?
    else {
        return Err(Problem::not_found());
    };
    if job.stale(deps.now()) {
        job = fail(deps, job, "stale").await.map_err(problem)?;
    }
    let mut download = None;
    if job.status == ExportStatus::Ready {
        let filename = format!("custody-{}-{}.tar", job.tenant, job.id);
        let link = crate::routes::result_link(deps, &job.archive_key(), Some(&filename)).await?;
        if let Some(url) = link {
            deps.audit
                .append(
                    &caller.tenant,
                    Event::new(
                        caller.actor(),
                        "account.export_link_issued",
                        target(&job.id),
                    )
                    .detail("expires_in_seconds", deps.dsar.link_ttl.as_secs()),
                )
                .await?;
            download = Some(json!({
                "url": url,
                "expires_at": deps.now() + Duration::seconds(deps.dsar.link_ttl.as_secs() as i64),
                "bytes": job.total_bytes,
                "format": "tar",
            }));
        }
    }
    json_response(StatusCode::OK, &view(&job, download))
}

fn view(job: &AccountExport, download: Option<Value>) -> Value {
    json!({
        "job_id": job.id,
        "status": job.status,
        "phase": job.phase,
        "requested_at": job.requested_at,
        "updated_at": job.updated_at,
        "completed_at": job.completed_at,
        "expires_at": DateTime::from_timestamp(job.expires_at, 0),
        "counts": job.counts,
        "bytes": (job.total_bytes > 0).then_some(job.total_bytes),
        "error": job.error,
        "download": download,
    })
}

fn total(job: &AccountExport, name: &str) -> u64 {
    job.counts
        .get(&format!("total:{name}"))
        .copied()
        .unwrap_or(0)
}

fn target(id: &str) -> String {
    format!("{SK_PREFIX}{id}")
}

// ---------------------------------------------------------------------------------
// The job
// ---------------------------------------------------------------------------------

/// Where a run left the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportProgress {
    /// Ready, failed or gone: nothing more to do.
    Finished,
    /// The budget ran out; the job's next stream record continues.
    Stopped,
}

/// Runs the job from where it stopped (the stream handler's entry).
pub async fn run(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    budget: Budget,
) -> Result<ExportProgress, ProcessError> {
    run_with(deps, tenant, id, budget, PART_BYTES).await
}

/// [`run`] with an explicit part size (raised to S3's 5 MiB minimum).
pub async fn run_with(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    budget: Budget,
    part_bytes: usize,
) -> Result<ExportProgress, ProcessError> {
    let key = AccountExport::key_of(tenant, id);
    let Some(mut job) = deps.store.get::<AccountExport>(&key).await? else {
        return Ok(ExportProgress::Finished);
    };
    if !job.status.is_open() {
        // A duplicate or late record of a finished job.
        return Ok(ExportProgress::Finished);
    }
    if job.status == ExportStatus::Pending {
        job.status = ExportStatus::Running;
        save(deps, &mut job).await?;
    }
    match steps(deps, &mut job, budget, part_bytes.max(MIN_PART_BYTES)).await {
        Ok(progress) => Ok(progress),
        Err(err) => {
            record_failure(deps, tenant, id, &err).await;
            Err(err)
        }
    }
}

async fn steps(
    deps: &Deps,
    job: &mut AccountExport,
    budget: Budget,
    part_bytes: usize,
) -> Result<ExportProgress, ProcessError> {
    let mut units = 0;
    let mut plan: Option<Plan> = None;
    loop {
        if job.phase == Phase::Done {
            return finish(deps, job).await.map(|()| ExportProgress::Finished);
        }
        if budget.exhausted(units) {
            return Ok(ExportProgress::Stopped);
        }
        match job.phase {
            Phase::Table => table_page(deps, job).await?,
            Phase::AuditActivity => audit_page(deps, job, AuditClass::Activity).await?,
            Phase::AuditEvidence => audit_page(deps, job, AuditClass::Evidence).await?,
            Phase::Files => files_page(deps, job).await?,
            Phase::Plan => plan_archive(deps, job).await?,
            Phase::Upload => {
                if plan.is_none() {
                    plan = Some(load_plan(deps, job).await?);
                }
                if let Some(plan) = &plan {
                    upload_part(deps, job, plan, part_bytes).await?;
                }
            }
            Phase::Done => {}
        }
        save(deps, job).await?;
        units += 1;
    }
}

/// Writes the job if nobody else wrote it since it was read.
async fn save(deps: &Deps, job: &mut AccountExport) -> Result<(), ProcessError> {
    let expected = job.version;
    job.version += 1;
    job.updated_at = deps.now();
    crate::process::put_versioned(deps, job, expected).await
}

/// Counts a failed run; after [`MAX_ATTEMPTS`] the job fails. Best effort: the
/// stream redelivers the record either way.
async fn record_failure(deps: &Deps, tenant: &TenantId, id: &str, err: &ProcessError) {
    // A lost write race is not a failure: the winner's run continues.
    if matches!(err, ProcessError::Conflict) {
        return;
    }
    let Ok(Some(mut job)) = deps
        .store
        .get::<AccountExport>(&AccountExport::key_of(tenant, id))
        .await
    else {
        return;
    };
    job.attempts += 1;
    job.error = Some(error_kind(err).to_owned());
    if job.attempts >= MAX_ATTEMPTS {
        if let Err(e) = fail(deps, job, error_kind(err)).await {
            tracing::error!(error = %e, "a failed account export could not be closed");
        }
    } else if let Err(e) = save(deps, &mut job).await {
        tracing::warn!(error = %e, "a failed attempt could not be counted");
    }
}

fn error_kind(err: &ProcessError) -> &'static str {
    match err {
        ProcessError::Store(_) => "store",
        ProcessError::Audit(_) => "audit",
        ProcessError::Files(_) => "files",
        ProcessError::Imports(_) => "imports",
        ProcessError::Conflict => "conflict",
        ProcessError::S3(_) => "s3",
        ProcessError::Encode(_) => "encode",
        _ => "other",
    }
}

/// Ends a job `failed`, visibly: aborts its upload, deletes its staging objects,
/// audits and counts the failure, and frees the tenant for a new export.
async fn fail(
    deps: &Deps,
    mut job: AccountExport,
    reason: &str,
) -> Result<AccountExport, ProcessError> {
    if let Some(upload_id) = job.upload_id.take() {
        abort(deps, &job.archive_key(), &upload_id).await;
    }
    job.status = ExportStatus::Failed;
    job.error = Some(reason.to_owned());
    save(deps, &mut job).await?;
    custody::metrics::count(custody::metrics::names::ACCOUNT_EXPORTS_FAILED, 1);
    tracing::error!(reason, "account export failed");
    // Best effort: the bucket's lifecycle removes what is left within days.
    if let Err(e) = crate::files::delete_prefix_versions(
        deps,
        &deps.config.dsar_results_bucket,
        &staging_prefix(&job.tenant, &job.id),
    )
    .await
    {
        tracing::warn!(error = %e, "staging of a failed export could not be deleted");
    }
    release(deps, &job.tenant, &job.id).await?;
    deps.audit
        .append(
            &job.tenant,
            Event::new(ACTOR, "account.export_failed", target(&job.id))
                .outcome(Outcome::Failure)
                .detail("error", reason.to_owned())
                .detail("attempts", job.attempts),
        )
        .await?;
    Ok(job)
}

/// Frees the tenant's running-job slot if it still names `job_id`.
async fn release(deps: &Deps, tenant: &TenantId, job_id: &str) -> Result<(), StoreError> {
    deps.store
        .delete_if(
            &ActiveExport::key_of(tenant),
            Condition::new("#j = :j")
                .name("#j", "job_id")
                .value(":j", AttributeValue::S(job_id.to_owned())),
        )
        .await
        .map(|_| ())
}

async fn abort(deps: &Deps, key: &str, upload_id: &str) {
    if let Err(err) = deps
        .s3
        .abort_multipart_upload()
        .bucket(&deps.config.dsar_results_bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        // The bucket's AbortIncompleteMultipartUpload rule removes the parts in a day.
        tracing::warn!(error = %custody::aws::error_text(&err), "aborting the archive upload failed");
    }
}

/// After the upload completed: staging goes, the slot is freed, the export audited.
async fn finish(deps: &Deps, job: &mut AccountExport) -> Result<(), ProcessError> {
    crate::files::delete_prefix_versions(
        deps,
        &deps.config.dsar_results_bucket,
        &staging_prefix(&job.tenant, &job.id),
    )
    .await?;
    let tenant = job.tenant.clone();
    // Once per job: a rerun after a crash finds the entry.
    if !deps
        .audit
        .holds(&tenant, "account.exported", &target(&job.id), |_| true)
        .await?
    {
        let items: u64 = job
            .counts
            .iter()
            .filter(|(kind, _)| !kind.contains(':'))
            .map(|(_, count)| count)
            .sum();
        let event = Event::new(ACTOR, "account.exported", target(&job.id))
            .detail("bytes", job.total_bytes)
            .detail("parts", job.parts.len())
            .detail("items", items)
            .detail("audit_entries", total(job, "audit_entries"))
            .detail("import_files", total(job, "import_files"));
        deps.audit.append(&tenant, event).await?;
    }
    job.status = ExportStatus::Ready;
    job.completed_at = Some(deps.now());
    save(deps, job).await?;
    release(deps, &tenant, &job.id).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Collecting
// ---------------------------------------------------------------------------------

async fn put_staging(
    deps: &Deps,
    job: &AccountExport,
    name: &str,
    body: Vec<u8>,
) -> Result<(), ProcessError> {
    deps.s3
        .put_object()
        .bucket(&deps.config.dsar_results_bucket)
        .key(format!("{}{name}", staging_prefix(&job.tenant, &job.id)))
        .body(ByteStream::from(body))
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(&deps.config.data_key_id)
        .tagging(format!(
            "{S3_TAG_KEY}={}",
            RetentionClass::DsarResult.name()
        ))
        .send()
        .await
        .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
    Ok(())
}

/// One scan page of the tenant's items into the section staging objects.
async fn table_page(deps: &Deps, job: &mut AccountExport) -> Result<(), ProcessError> {
    // The account purge's reach: what the purge would delete is what is copied.
    let (items, next) =
        crate::account::tenant_scan_page(deps, &job.tenant, job.cursor.as_deref(), None).await?;
    let mut lines: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for item in items {
        // TTL deletes lazily: an expired item is gone for every reader.
        if deps.store.is_expired(&item) {
            continue;
        }
        let kind = text(&item, "kind").unwrap_or_else(|| "unknown".into());
        let Some(section) = Section::of(&kind) else {
            job.bump(&format!("excluded:{kind}"), 1);
            continue;
        };
        let line = serde_json::to_string(&render(&kind, item))
            .map_err(|e| ProcessError::Encode(e.to_string()))?;
        lines.entry(section.staging()).or_default().push(line);
        job.bump(&kind, 1);
    }
    for (section, lines) in lines {
        put_staging(
            deps,
            job,
            &format!("{section}/{:08}", job.page),
            lines.join(",\n").into_bytes(),
        )
        .await?;
    }
    job.page += 1;
    job.cursor = next;
    if job.cursor.is_none() {
        job.phase = Phase::AuditActivity;
        job.page = 0;
    }
    Ok(())
}

/// One page of one audit chain (newest first) into `staging/audit/`.
async fn audit_page(
    deps: &Deps,
    job: &mut AccountExport,
    class: AuditClass,
) -> Result<(), ProcessError> {
    let page = deps
        .audit
        .page(
            &job.tenant,
            class,
            &PageQuery {
                limit: custody::audit::MAX_PAGE,
                before: job.audit_before,
                action: None,
                from: None,
                to: None,
            },
        )
        .await?;
    let mut body = Vec::new();
    for entry in &page.entries {
        serde_json::to_writer(&mut body, entry).map_err(|e| ProcessError::Encode(e.to_string()))?;
        body.push(b'\n');
    }
    if !body.is_empty() {
        put_staging(
            deps,
            job,
            &format!("audit/{}-{:08}", class.name(), job.page),
            body,
        )
        .await?;
    }
    job.bump("total:audit_entries", page.entries.len() as u64);
    job.page += 1;
    job.audit_before = page.next_before;
    if job.audit_before.is_none() {
        job.phase = match class {
            AuditClass::Activity => Phase::AuditEvidence,
            AuditClass::Evidence => Phase::Files,
        };
        job.page = 0;
    }
    Ok(())
}

/// An import object the archive copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileRef {
    path: String,
    key: String,
    etag: String,
    size: u64,
}

/// One listing page of the tenant's import objects into `staging/files/`.
async fn files_page(deps: &Deps, job: &mut AccountExport) -> Result<(), ProcessError> {
    let tenant = job.tenant.clone();
    let prefix = custody::imports::tenant_prefix(&tenant);
    let out = deps
        .s3
        .list_objects_v2()
        .bucket(&deps.config.imports_bucket)
        .prefix(&prefix)
        .max_keys(LIST_PAGE)
        .set_continuation_token(job.cursor.take())
        .send()
        .await
        .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
    let mut readable: HashMap<String, bool> = HashMap::new();
    let mut body = Vec::new();
    for object in out.contents() {
        let (Some(key), Some(etag)) = (object.key(), object.e_tag()) else {
            continue;
        };
        let size = u64::try_from(object.size().unwrap_or(0)).unwrap_or(0);
        let path = match custody::imports::ObjectKey::parse(key) {
            Some(parsed) => {
                // Past its import's retention the data is not disclosed (the rule
                // access bundles follow), though lifecycle deletes it days later.
                let ok = match readable.get(&parsed.import_id) {
                    Some(ok) => *ok,
                    None => {
                        let ok = deps
                            .imports
                            .data_readable(&tenant, &parsed.import_id)
                            .await?;
                        readable.insert(parsed.import_id.clone(), ok);
                        ok
                    }
                };
                if !ok {
                    job.bump("total:import_files_withheld", 1);
                    continue;
                }
                format!("imports/{}/{}", parsed.import_id, parsed.name)
            }
            None => format!("imports/{}", key.strip_prefix(&prefix).unwrap_or(key)),
        };
        let file = FileRef {
            path,
            key: key.to_owned(),
            etag: etag.to_owned(),
            size,
        };
        serde_json::to_writer(&mut body, &file).map_err(|e| ProcessError::Encode(e.to_string()))?;
        body.push(b'\n');
        job.bump("total:import_files", 1);
        job.bump("total:import_bytes", size);
    }
    if !body.is_empty() {
        put_staging(deps, job, &format!("files/{:08}", job.page), body).await?;
    }
    job.page += 1;
    job.cursor = out
        .next_continuation_token()
        .filter(|_| out.is_truncated().unwrap_or(false))
        .map(str::to_owned);
    if job.cursor.is_none() {
        job.phase = Phase::Plan;
        job.page = 0;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The plan: the archive's bytes as a function of stored objects
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
enum Segment {
    Inline {
        text: String,
    },
    /// A whole object, pinned by ETag (a changed object fails the read).
    Object {
        bucket: String,
        key: String,
        etag: String,
        size: u64,
    },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Inline { text } => text.len() as u64,
            Segment::Object { size, .. } => *size,
        }
    }

    fn inline(text: &str) -> Self {
        Segment::Inline {
            text: text.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PlanEntry {
    path: String,
    segments: Vec<Segment>,
}

impl PlanEntry {
    fn size(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Plan {
    /// Every entry's modification time (the request's), so the bytes are repeatable.
    mtime: i64,
    entries: Vec<PlanEntry>,
}

impl Plan {
    fn total(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| BLOCK + padded(e.size()))
            .sum::<u64>()
            + 2 * BLOCK
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// The staged objects under `prefix`, in key order, with sizes and ETags.
async fn staged(deps: &Deps, prefix: &str) -> Result<Vec<Segment>, ProcessError> {
    let mut segments = Vec::new();
    let mut token = None;
    loop {
        let out = deps
            .s3
            .list_objects_v2()
            .bucket(&deps.config.dsar_results_bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
        for object in out.contents() {
            if let (Some(key), Some(etag)) = (object.key(), object.e_tag()) {
                segments.push(Segment::Object {
                    bucket: deps.config.dsar_results_bucket.clone(),
                    key: key.to_owned(),
                    etag: etag.to_owned(),
                    size: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                });
            }
        }
        token = out
            .next_continuation_token()
            .filter(|_| out.is_truncated().unwrap_or(false))
            .map(str::to_owned);
        if token.is_none() {
            return Ok(segments);
        }
    }
}

async fn read_staged(deps: &Deps, key: &str) -> Result<Vec<u8>, ProcessError> {
    let out = deps
        .s3
        .get_object()
        .bucket(&deps.config.dsar_results_bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| ProcessError::S3(e.to_string()))?;
    Ok(body.into_bytes().to_vec())
}

async fn plan_archive(deps: &Deps, job: &mut AccountExport) -> Result<(), ProcessError> {
    let staging = staging_prefix(&job.tenant, &job.id);
    let mut entries = Vec::new();
    let mut sections = Vec::new();
    for section in Section::ALL {
        let chunks = staged(deps, &format!("{staging}{}/", section.staging())).await?;
        // A JSON array of the chunks' elements: `[`, chunks joined by `,`, `]`.
        let mut segments = vec![Segment::inline("[\n")];
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i > 0 {
                segments.push(Segment::inline(",\n"));
            }
            segments.push(chunk);
        }
        segments.push(Segment::inline("\n]\n"));
        let kinds: BTreeMap<&String, &u64> = job
            .counts
            .iter()
            .filter(|(kind, _)| !kind.contains(':') && Section::of(kind) == Some(section))
            .collect();
        sections.push(json!({
            "path": section.file(),
            "contents": section.describe(),
            "items": kinds.values().copied().sum::<u64>(),
            "item_types": kinds,
        }));
        entries.push(PlanEntry {
            path: section.file().to_owned(),
            segments,
        });
    }
    let audit = staged(deps, &format!("{staging}audit/")).await?;
    sections.push(json!({
        "path": "audit.jsonl",
        "contents": "the tenant's audit entries, one JSON object a line: the activity chain then the evidence chain, each newest first; entries past their retention are left out",
        "items": total(job, "audit_entries"),
    }));
    entries.push(PlanEntry {
        path: "audit.jsonl".into(),
        segments: audit,
    });
    let mut files = Vec::new();
    for chunk in staged(deps, &format!("{staging}files/")).await? {
        let Segment::Object { key, .. } = chunk else {
            continue;
        };
        for line in read_staged(deps, &key).await?.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let file: FileRef =
                serde_json::from_slice(line).map_err(|e| ProcessError::Encode(e.to_string()))?;
            files.push(json!({ "path": file.path, "bytes": file.size }));
            entries.push(PlanEntry {
                path: file.path,
                segments: vec![Segment::Object {
                    bucket: deps.config.imports_bucket.clone(),
                    key: file.key,
                    etag: file.etag,
                    size: file.size,
                }],
            });
        }
    }
    let included: BTreeMap<&String, &u64> = job
        .counts
        .iter()
        .filter(|(kind, _)| !kind.contains(':'))
        .collect();
    let excluded_kinds: BTreeMap<String, Value> = job
        .counts
        .iter()
        .filter_map(|(name, count)| {
            let kind = name.strip_prefix("excluded:")?;
            Some((
                kind.to_owned(),
                json!({ "items": count, "why": excluded(kind).unwrap_or("left out") }),
            ))
        })
        .collect();
    let manifest = json!({
        "schema": ARCHIVE_SCHEMA,
        "tenant": job.tenant,
        "job_id": job.id,
        "requested_at": job.requested_at,
        "requested_by": job.requested_by,
        "generated_at": deps.now(),
        "format": "POSIX ustar; JSON files are arrays of items, audit.jsonl one entry a line",
        "sections": sections,
        "item_types_included": included,
        "item_types_excluded": excluded_kinds,
        "import_files": {
            "files": files,
            "count": total(job, "import_files"),
            "bytes": total(job, "import_bytes"),
            "withheld_past_retention": total(job, "import_files_withheld"),
        },
        "secrets": "never included: OAuth tokens, sealed credentials, passwords and webhook secrets are omitted; a field `<name>_present` says whether one is set",
        "expires_at": DateTime::from_timestamp(job.expires_at, 0),
    });
    let manifest =
        serde_json::to_string_pretty(&manifest).map_err(|e| ProcessError::Encode(e.to_string()))?;
    entries.insert(
        0,
        PlanEntry {
            path: "manifest.json".into(),
            segments: vec![Segment::Inline {
                text: format!("{manifest}\n"),
            }],
        },
    );
    let plan = Plan {
        mtime: job.requested_at.timestamp(),
        entries,
    };
    // Every header must be writable before a byte is uploaded.
    for entry in &plan.entries {
        header(&entry.path, entry.size(), plan.mtime)?;
    }
    let body = serde_json::to_vec(&plan).map_err(|e| ProcessError::Encode(e.to_string()))?;
    put_staging(deps, job, "plan.json", body).await?;
    job.total_bytes = plan.total();
    job.phase = Phase::Upload;
    Ok(())
}

async fn load_plan(deps: &Deps, job: &AccountExport) -> Result<Plan, ProcessError> {
    let key = format!("{}plan.json", staging_prefix(&job.tenant, &job.id));
    let bytes = read_staged(deps, &key).await?;
    serde_json::from_slice(&bytes).map_err(|e| ProcessError::Encode(e.to_string()))
}

// ---------------------------------------------------------------------------------
// Tar and the upload
// ---------------------------------------------------------------------------------

/// A POSIX ustar header. Paths over 100 bytes are split into prefix and name at a
/// `/`; sizes of 8 GiB and more use the GNU base-256 form every tar reads.
fn header(path: &str, size: u64, mtime: i64) -> Result<[u8; 512], ProcessError> {
    let mut h = [0u8; 512];
    let bytes = path.as_bytes();
    let (prefix, name) = if bytes.len() <= 100 {
        (&[][..], bytes)
    } else {
        let split = (0..bytes.len())
            .rev()
            .find(|&i| bytes[i] == b'/' && i <= 155 && bytes.len() - i - 1 <= 100)
            .ok_or_else(|| ProcessError::Encode(format!("archive path too long: {path}")))?;
        (&bytes[..split], &bytes[split + 1..])
    };
    h[..name.len()].copy_from_slice(name);
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 0o777_7777_7777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    let mtime = mtime.clamp(0, 0o777_7777_7777);
    h[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

/// Appends archive bytes `[from, to)` to `out`, reading objects by ranged GETs.
async fn fill(
    deps: &Deps,
    plan: &Plan,
    from: u64,
    to: u64,
    out: &mut Vec<u8>,
) -> Result<(), ProcessError> {
    // Appends the part of `[start, start + len)` that lies in `[from, to)`.
    fn overlap(start: u64, len: u64, from: u64, to: u64) -> Option<(u64, u64)> {
        let a = start.max(from);
        let b = (start + len).min(to);
        (a < b).then(|| (a - start, b - start))
    }
    let mut at = 0u64;
    for entry in &plan.entries {
        if at >= to {
            return Ok(());
        }
        let size = entry.size();
        let span = BLOCK + padded(size);
        if at + span <= from {
            at += span;
            continue;
        }
        if let Some((a, b)) = overlap(at, BLOCK, from, to) {
            let h = header(&entry.path, size, plan.mtime)?;
            out.extend_from_slice(&h[a as usize..b as usize]);
        }
        let mut seg_at = at + BLOCK;
        for segment in &entry.segments {
            let len = segment.len();
            if let Some((a, b)) = overlap(seg_at, len, from, to) {
                match segment {
                    Segment::Inline { text } => {
                        out.extend_from_slice(&text.as_bytes()[a as usize..b as usize]);
                    }
                    Segment::Object {
                        bucket, key, etag, ..
                    } => read_range(deps, bucket, key, etag, a, b, out).await?,
                }
            }
            seg_at += len;
        }
        if let Some((a, b)) = overlap(at + BLOCK + size, padded(size) - size, from, to) {
            out.resize(out.len() + (b - a) as usize, 0);
        }
        at += span;
    }
    // The end-of-archive blocks.
    if let Some((a, b)) = overlap(at, 2 * BLOCK, from, to) {
        out.resize(out.len() + (b - a) as usize, 0);
    }
    Ok(())
}

/// Streams bytes `[a, b)` of an object (as it was planned: same ETag) into `out`.
async fn read_range(
    deps: &Deps,
    bucket: &str,
    key: &str,
    etag: &str,
    a: u64,
    b: u64,
    out: &mut Vec<u8>,
) -> Result<(), ProcessError> {
    let got = deps
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .if_match(etag)
        .range(format!("bytes={a}-{}", b - 1))
        .send()
        .await
        .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
    let mut body = got.body;
    let start = out.len();
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| ProcessError::S3(e.to_string()))?
    {
        out.extend_from_slice(&chunk);
    }
    if (out.len() - start) as u64 != b - a {
        return Err(ProcessError::S3(format!(
            "object {key} changed since it was planned"
        )));
    }
    Ok(())
}

/// Uploads the next part; completes the upload after the last.
async fn upload_part(
    deps: &Deps,
    job: &mut AccountExport,
    plan: &Plan,
    part_bytes: usize,
) -> Result<(), ProcessError> {
    let bucket = &deps.config.dsar_results_bucket;
    let key = job.archive_key();
    let total = plan.total();
    if total != job.total_bytes {
        return Err(ProcessError::Encode(
            "the plan does not match the job".into(),
        ));
    }
    let Some(upload_id) = job.upload_id.clone() else {
        let created = deps
            .s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .content_type("application/x-tar")
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&deps.config.data_key_id)
            .tagging(format!(
                "{S3_TAG_KEY}={}",
                RetentionClass::DsarResult.name()
            ))
            .send()
            .await
            .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
        // Saved (by the caller) before any part, so a failed job can abort it.
        job.upload_id = Some(
            created
                .upload_id()
                .ok_or_else(|| ProcessError::S3("no upload id".into()))?
                .to_owned(),
        );
        return Ok(());
    };
    if job.offset < total {
        let end = (job.offset + part_bytes as u64).min(total);
        let mut body = Vec::with_capacity((end - job.offset) as usize);
        fill(deps, plan, job.offset, end, &mut body).await?;
        let number = job.parts.len() as i32 + 1;
        let out = deps
            .s3
            .upload_part()
            .bucket(bucket)
            .key(&key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
        job.parts.push(PartDone {
            number,
            etag: out.e_tag().map(str::to_owned),
        });
        job.offset = end;
        return Ok(());
    }
    let parts = job
        .parts
        .iter()
        .map(|p| {
            CompletedPart::builder()
                .part_number(p.number)
                .set_e_tag(p.etag.clone())
                .build()
        })
        .collect();
    deps.s3
        .complete_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| ProcessError::S3(custody::aws::error_text(&e)))?;
    job.upload_id = None;
    job.phase = Phase::Done;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_marked_present_at_any_depth_and_keys_dropped() {
        let value = scrub(json!({
            "destination": { "type": "webdav", "password": "AQID", "url": "https://x" },
            "secret": null,
            "token_hash": "abc",
            "list": [{ "refresh_token": "x" }],
        }));
        assert_eq!(
            value,
            json!({
                "destination": { "type": "webdav", "password_present": true, "url": "https://x" },
                "secret_present": false,
                "token_hash_present": true,
                "list": [{ "refresh_token_present": true }],
            })
        );
    }

    #[test]
    fn headers_are_valid_ustar_and_split_long_paths() {
        let h = header("manifest.json", 1234, 1_700_000_000).unwrap();
        assert_eq!(&h[..13], b"manifest.json");
        assert_eq!(&h[124..136], b"00000002322\0");
        assert_eq!(&h[257..263], b"ustar\0");
        let stored: u32 =
            u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| u32::from(b)).sum::<u32>());
        let long = format!("imports/{}/{}", "a".repeat(60), "b".repeat(90));
        let h = header(&long, 0, 0).unwrap();
        assert_eq!(&h[..90], "b".repeat(90).as_bytes());
        assert!(header(&"c".repeat(300), 0, 0).is_err());
        let big = header("x", 10 * 1024 * 1024 * 1024, 0).unwrap();
        assert_eq!(big[124], 0x80);
    }

    #[test]
    fn kinds_map_to_sections_and_secrets_kinds_are_left_out() {
        assert_eq!(Section::of("connection"), Some(Section::Connections));
        assert_eq!(Section::of("export_settings"), Some(Section::Settings));
        assert_eq!(Section::of("oauth_state"), None);
        assert_eq!(Section::of("verification_code"), None);
        assert_eq!(Section::of("something_new"), Some(Section::Other));
    }
}

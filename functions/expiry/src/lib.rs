//! The `expiry` function: retention evidence.
//!
//! Two triggers tell it that data reached the end of its retention:
//! - S3 `s3:LifecycleExpiration:*` notifications for import objects (the lifecycle
//!   rule of the object's retention class expired it, or removed an old version);
//! - DynamoDB stream records of TTL removals (`REMOVE` by the service principal
//!   `dynamodb.amazonaws.com`), filtered in template.yaml to the `import_data`
//!   markers that live exactly as long as an import's data.
//!
//! For each it removes the subject-index entries that pointed at the expired data,
//! marks the import `expired` and appends one audit entry (what expired, its class,
//! when — ids and pseudonyms only, never personal data). For a marker it also deletes
//! whatever object versions are still there, so the promise does not depend on when
//! the lifecycle rule runs. Each event takes effect once: a redelivered event finds
//! its idempotency record and does nothing.

use std::time::Duration;

use aws_lambda_events::dynamodb::{Event as StreamEvent, EventRecord};
use aws_lambda_events::s3::{S3Event, S3EventRecord};
use chrono::{DateTime, SecondsFormat, Utc};
use custody::audit::{AuditError, AuditLog, Event};
use custody::clock::SharedClock;
use custody::config::Config;
use custody::idempotency::{Idempotency, IdempotencyError, RunError};
use custody::imports::{ImportData, ImportError, Imports, ObjectKey, Status, import_refs_prefix};
use custody::store::{Store, keys};
use custody::tenant::TenantId;
use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;

/// The actor of every audit entry this function writes.
pub const ACTOR: &str = "system:expiry";
/// The principal DynamoDB's TTL process deletes items as.
pub const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error("stream record could not be read: {0}")]
    Decode(String),
    #[error("{failed} of the event's records failed; the first: {first}")]
    Records { failed: usize, first: String },
}

/// Everything the handlers use, built once per cold start.
#[derive(Debug, Clone)]
pub struct Deps {
    pub imports: Imports,
    pub audit: AuditLog,
    pub idempotency: Idempotency,
    pub clock: SharedClock,
}

impl Deps {
    pub fn new(config: &Config, clients: &custody::aws::Clients, clock: SharedClock) -> Self {
        let store = Store::new(clients.dynamodb.clone(), &config.table, clock.clone());
        Self {
            imports: Imports::new(store.clone(), clients.s3.clone(), &config.imports_bucket),
            audit: AuditLog::from_config(clients, config, clock.clone()),
            idempotency: Idempotency::new(store),
            clock,
        }
    }
}

/// What one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Evidence recorded now.
    Recorded,
    /// The same event was handled before.
    Duplicate,
    /// Not an expiry this function records.
    Ignored,
}

/// One invocation: S3 notifications or DynamoDB stream records.
pub async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Vec<Effect>, Error> {
    let remaining = remaining_time(&event.context);
    let source = event
        .payload
        .get("Records")
        .and_then(Value::as_array)
        .and_then(|records| records.first())
        .and_then(|record| record.get("eventSource"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let effects = match source.as_str() {
        "aws:s3" => {
            handle_lifecycle(deps, serde_json::from_value(event.payload)?, remaining).await?
        }
        "aws:dynamodb" => {
            handle_stream(deps, serde_json::from_value(event.payload)?, remaining).await?
        }
        _ => {
            tracing::warn!("event with no S3 or DynamoDB records ignored");
            Vec::new()
        }
    };
    Ok(effects)
}

pub fn remaining_time(context: &lambda_runtime::Context) -> Duration {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    Duration::from_millis(context.deadline.saturating_sub(now_ms))
}

/// Every record is attempted; if any failed, the invocation fails so the source
/// redelivers, and the records that did succeed are then duplicates (no effect).
fn collect(results: Vec<Result<Effect, ExpiryError>>) -> Result<Vec<Effect>, ExpiryError> {
    let mut effects = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(effect) => effects.push(effect),
            Err(err) => {
                tracing::error!(error = %err, "expiry record failed");
                failures.push(err.to_string());
            }
        }
    }
    match failures.first() {
        None => Ok(effects),
        Some(first) => Err(ExpiryError::Records {
            failed: failures.len(),
            first: first.clone(),
        }),
    }
}

pub async fn handle_lifecycle(
    deps: &Deps,
    event: S3Event,
    remaining: Duration,
) -> Result<Vec<Effect>, ExpiryError> {
    let mut results = Vec::with_capacity(event.records.len());
    for record in &event.records {
        // Boxed: the nested futures are too deep a type to lay out inline.
        results.push(Box::pin(lifecycle_record(deps, record, remaining)).await);
    }
    collect(results)
}

async fn lifecycle_record(
    deps: &Deps,
    record: &S3EventRecord,
    remaining: Duration,
) -> Result<Effect, ExpiryError> {
    let name = record.event_name.clone().unwrap_or_default();
    if !name.starts_with("LifecycleExpiration:") {
        return Ok(Effect::Ignored);
    }
    if record.s3.bucket.name.as_deref() != Some(deps.imports.bucket()) {
        tracing::warn!(event = %name, "lifecycle event of another bucket ignored");
        return Ok(Effect::Ignored);
    }
    let key =
        custody::imports::decode_event_key(record.s3.object.key.as_deref().unwrap_or_default());
    let Some(object) = ObjectKey::parse(&key) else {
        tracing::warn!(event = %name, "lifecycle event for an object outside the import layout");
        return Ok(Effect::Ignored);
    };
    let version = record
        .s3
        .object
        .version_id
        .clone()
        .or_else(|| record.s3.object.sequencer.clone())
        .unwrap_or_default();
    let idempotency_key = format!("lifecycle:{name}:{}#{version}", object.ref_source_id());
    let payload = (&name, &key, &version);
    let at = record.event_time;
    let work = || async {
        let index_entries = deps
            .imports
            .delete_refs(&object.tenant, &object.refs_prefix())
            .await?;
        let class = mark_expired(deps, &object.tenant, &object.import_id, at).await?;
        let mut event = Event::new(ACTOR, "import.expired", keys::import(&object.import_id))
            .detail("object", object.name.clone())
            .detail("trigger", name.clone())
            .detail("expired_at", at.to_rfc3339_opts(SecondsFormat::Secs, true))
            .detail("index_entries_removed", index_entries);
        if let Some(class) = class {
            event = event.detail("retention_class", class);
        }
        deps.audit.append(&object.tenant, event).await?;
        Ok::<_, ExpiryError>(true)
    };
    run_once(
        deps,
        &object.tenant,
        &idempotency_key,
        &payload,
        remaining,
        work,
    )
    .await
}

pub async fn handle_stream(
    deps: &Deps,
    event: StreamEvent,
    remaining: Duration,
) -> Result<Vec<Effect>, ExpiryError> {
    let mut results = Vec::with_capacity(event.records.len());
    for record in &event.records {
        results.push(Box::pin(stream_record(deps, record, remaining)).await);
    }
    collect(results)
}

/// A TTL removal: a `REMOVE` made by the DynamoDB service itself (a user's delete
/// carries the caller's identity, or none).
pub fn is_ttl_removal(record: &EventRecord) -> bool {
    record.event_name == "REMOVE"
        && record
            .user_identity
            .as_ref()
            .is_some_and(|id| id.type_ == "Service" && id.principal_id == TTL_PRINCIPAL)
}

async fn stream_record(
    deps: &Deps,
    record: &EventRecord,
    remaining: Duration,
) -> Result<Effect, ExpiryError> {
    if !is_ttl_removal(record) {
        return Ok(Effect::Ignored);
    }
    let old = &record.change.old_image;
    let text = |name: &str| match old.get(name) {
        Some(serde_dynamo::AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    let Some(tenant) = text("pk")
        .as_deref()
        .and_then(|pk| pk.strip_prefix("T#"))
        .and_then(|t| TenantId::parse(t).ok())
    else {
        tracing::warn!("TTL removal of an item outside any tenant ignored");
        return Ok(Effect::Ignored);
    };
    let kind = text("kind").unwrap_or_default();
    let sk = text("sk").unwrap_or_default();
    let idempotency_key = format!("ttl:{}", record.event_id);
    let payload = (&record.event_id, &sk);
    let at = record.change.approximate_creation_date_time;
    if kind == ImportData::KIND {
        let marker: ImportData =
            serde_dynamo::from_item(old.clone()).map_err(|e| ExpiryError::Decode(e.to_string()))?;
        let work = || async {
            // TTL runs up to days after expiry, and a lifecycle rule rounds up to the
            // next midnight; whichever comes first removes what is left.
            let purged = deps.imports.purge(&tenant, &marker.import_id).await?;
            let index_entries = purged.index_entries
                + deps
                    .imports
                    .delete_refs(&tenant, &import_refs_prefix(&marker.import_id))
                    .await?;
            mark_expired(deps, &tenant, &marker.import_id, at).await?;
            let expired_at = DateTime::<Utc>::from_timestamp(marker.expires_at, 0)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_default();
            let event = Event::new(ACTOR, "import.expired", keys::import(&marker.import_id))
                .detail("trigger", "ttl")
                .detail("retention_class", marker.retention_class.name())
                .detail("expired_at", expired_at)
                .detail("removed_at", at.to_rfc3339_opts(SecondsFormat::Secs, true))
                .detail("object_versions_removed", purged.object_versions)
                .detail("index_entries_removed", index_entries);
            deps.audit.append(&tenant, event).await?;
            Ok::<_, ExpiryError>(true)
        };
        return run_once(deps, &tenant, &idempotency_key, &payload, remaining, work).await;
    }
    // Any other record the stream filter lets through: evidence that it expired.
    let work = || async {
        let event = Event::new(ACTOR, "record.expired", sk.clone())
            .detail("kind", kind.clone())
            .detail("removed_at", at.to_rfc3339_opts(SecondsFormat::Secs, true));
        deps.audit.append(&tenant, event).await?;
        Ok::<_, ExpiryError>(true)
    };
    run_once(deps, &tenant, &idempotency_key, &payload, remaining, work).await
}

async fn run_once<P, F, Fut>(
    deps: &Deps,
    tenant: &TenantId,
    key: &str,
    payload: &P,
    remaining: Duration,
    work: F,
) -> Result<Effect, ExpiryError>
where
    P: serde::Serialize,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<bool, ExpiryError>>,
{
    match deps
        .idempotency
        .run(tenant, key, payload, remaining, work)
        .await
    {
        Ok(outcome) if outcome.ran() => Ok(Effect::Recorded),
        Ok(_) => Ok(Effect::Duplicate),
        Err(RunError::Work(err)) => Err(err),
        Err(RunError::Idempotency(err)) => Err(err.into()),
    }
}

/// Marks the import expired (unless it was deleted first) and returns its class.
async fn mark_expired(
    deps: &Deps,
    tenant: &TenantId,
    import_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<&'static str>, ExpiryError> {
    let updated = deps
        .imports
        .update(tenant, import_id, |imp| {
            if !imp.status.is_gone() {
                imp.status = Status::Expired;
            }
            imp.data_deleted_at.get_or_insert(at);
            Ok(())
        })
        .await;
    match updated {
        Ok(import) => Ok(Some(import.retention_class.name())),
        Err(ImportError::NotFound) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

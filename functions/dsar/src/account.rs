//! Account deletion (tenant offboarding).
//!
//! `DELETE /account` removes what must go at once — the OAuth connections (sealed
//! tokens) with their account links, and the export schedule — then records an
//! [`AccountDeletion`] job. The job's stream record starts [`purge`], which removes
//! every item and object of the tenant, saving its progress after each page (its own
//! write is the next stream record, so a purge longer than one invocation carries
//! on), and ends with a signed certificate written to the audit log, which is kept.
//!
//! # Finding everything of a tenant
//!
//! The table purge is a filtered, paginated **scan** (`pk = T#<t>`, `pk` starting with
//! `T#<t>#`, or `sk = T#<t>` for the provider-account links). Deliberately: key layouts
//! are chosen by several modules (idempotency records, subject partitions, account
//! links) and a registry of partitions or a tenant-wide GSI would have to be kept
//! right by every writer, on every write, forever, for an operation that runs once
//! in a tenant's life. The scan is complete whatever a module's key layout is,
//! costs the table's size once, and resumes from its saved cursor. Tenant ids cannot
//! contain `#`, so `T#acme#` never matches `T#acme2`.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use custody::audit::{AuditClass, Event};
use custody::certificate::{Certificate, ErasedStore, SCHEMA, Scope};
use custody::privacy::{AccountDeletion, PurgeStatus, PurgeStep};
use custody::store::{Item, Key, StoreError, keys};
use custody::tenant::TenantId;
use serde::{Deserialize, Serialize};

use crate::Deps;
use crate::files;
use crate::process::{ACTOR, Budget, ProcessError, results_tenant_prefix, text};

/// Items evaluated per scan page.
const SCAN_PAGE: i32 = 500;
/// BatchWriteItem's limit.
const BATCH: usize = 25;

/// What `DELETE /account` did at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub job_id: String,
    pub connections_deleted: u64,
    /// Grants the providers confirmed revoked (providers without a revocation
    /// endpoint, such as HighLevel, end a grant by uninstalling the app).
    #[serde(default)]
    pub grants_revoked: u64,
    pub schedule_removed: bool,
}

/// Starts (or, for a repeated call, re-runs the immediate part of) the deletion.
pub async fn start(deps: &Deps, tenant: &TenantId, actor: &str) -> Result<Started, ProcessError> {
    let now = deps.now();
    let key = AccountDeletion::key_of(tenant);
    // Where the purge's notice goes, read before the job exists: the purge deletes
    // the settings.
    let notifier = crate::notices::notifier(deps);
    let notification = notifier.webhook(tenant).await?;
    let notification_email = notifier.email(tenant).await?;
    let job = match deps.store.get::<AccountDeletion>(&key).await? {
        Some(job) => job,
        None => {
            let job = AccountDeletion::new(tenant, actor, now);
            match deps.store.create(&job).await {
                Ok(()) => job,
                Err(StoreError::AlreadyExists) => deps
                    .store
                    .get::<AccountDeletion>(&key)
                    .await?
                    .ok_or(ProcessError::Conflict)?,
                Err(err) => return Err(err.into()),
            }
        }
    };
    crate::notices::hold_account_purged(deps, tenant, &job.id, notification, notification_email)
        .await?;
    let (deleted, connections_deleted) = delete_connections(deps, tenant).await?;
    let grants_revoked = revoke_grants(deps, &deleted).await;
    let schedule_removed = deps.schedules.delete(tenant).await?;
    deps.audit
        .append(
            tenant,
            Event::new(actor, "account.deletion_requested", AccountDeletion::RECORD)
                .detail("job_id", job.id.clone())
                .detail("connections_deleted", connections_deleted)
                .detail("grants_revoked", grants_revoked)
                .detail("schedule_removed", schedule_removed),
        )
        .await?;
    if connections_deleted > 0 {
        let mut counted = job.clone();
        counted.counts.connections += connections_deleted;
        // Counting is best effort; the purge runs regardless of this write.
        let _ = save(deps, &mut counted).await;
    }
    Ok(Started {
        job_id: job.id,
        connections_deleted,
        grants_revoked,
        schedule_removed,
    })
}

/// Asks the oauth function to revoke the deleted connections' grants at their
/// providers (it audits each). Best effort, as a disconnect's revocation is: the
/// tokens are gone from here either way; a failure is logged and counted
/// (`ProviderRevocationsFailed`, alarmed). Returns how many were revoked.
async fn revoke_grants(deps: &Deps, deleted: &[custody::oauth::Connection]) -> u64 {
    if deleted.is_empty() {
        return 0;
    }
    let failed = |reason: &str| {
        custody::metrics::count(
            custody::metrics::names::PROVIDER_REVOCATIONS_FAILED,
            deleted.len() as u64,
        );
        tracing::error!(
            reason,
            "deleted connections' grants were not revoked at the providers"
        );
        0
    };
    let Some(revoker) = &deps.revoker else {
        return failed("no revoker configured");
    };
    match revoker.revoke(deleted).await {
        Ok(revocations) => revocations
            .iter()
            .filter(|r| r.outcome == custody::oauth::RevocationOutcome::Revoked)
            .count() as u64,
        Err(err) => failed(&err),
    }
}

/// Deletes the tenant's OAuth connections (sealed tokens) and their provider-account
/// links, so no token can be used from this moment on. Returns the deleted ones (to
/// revoke) and how many items were deleted.
async fn delete_connections(
    deps: &Deps,
    tenant: &TenantId,
) -> Result<(Vec<custody::oauth::Connection>, u64), ProcessError> {
    let out = deps
        .store
        .client()
        .query()
        .table_name(deps.store.table())
        .consistent_read(true)
        .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
        .expression_attribute_values(":pk", AttributeValue::S(keys::tenant(tenant)))
        .expression_attribute_values(":prefix", AttributeValue::S(keys::connection("")))
        .send()
        .await
        .map_err(dynamo)?;
    let mut deleted = Vec::new();
    let mut count = 0;
    for item in out.items.unwrap_or_default() {
        let decoded = custody::store::Store::decode::<custody::oauth::Connection>(item.clone());
        if let Ok(connection) = &decoded {
            if let Some(location) = &connection.account.location_id {
                deps.store
                    .delete(&Key::new(
                        keys::highlevel_location(location),
                        keys::tenant(tenant),
                    ))
                    .await?;
            }
            if let Some(company) = &connection.account.company_id {
                deps.store
                    .delete(&Key::new(
                        keys::highlevel_company(company),
                        keys::tenant(tenant),
                    ))
                    .await?;
            }
        }
        if let (Some(pk), Some(sk)) = (text(&item, "pk"), text(&item, "sk")) {
            deps.store.delete(&Key::new(pk, sk)).await?;
            count += 1;
            if let Ok(connection) = decoded {
                deleted.push(connection);
            }
        }
    }
    Ok((deleted, count))
}

/// Where a purge run left the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeProgress {
    /// Everything is gone and the certificate is in the audit log.
    Done,
    /// The budget ran out; the job's next stream record continues.
    Stopped,
}

/// Runs the purge from where the job says it stopped.
pub async fn purge(
    deps: &Deps,
    tenant: &TenantId,
    budget: Budget,
) -> Result<PurgeProgress, ProcessError> {
    let key = AccountDeletion::key_of(tenant);
    let Some(mut job) = deps.store.get::<AccountDeletion>(&key).await? else {
        return Ok(PurgeProgress::Done);
    };
    let mut pages = 0;
    while !job.steps_done.contains(&PurgeStep::Table) {
        if budget.exhausted(pages) {
            return Ok(PurgeProgress::Stopped);
        }
        let (deleted, next) = purge_table_page(deps, tenant, job.table_cursor.as_deref()).await?;
        job.counts.table_items += deleted;
        custody::metrics::count(custody::metrics::names::PURGE_ITEMS_DELETED, deleted);
        job.table_cursor = next;
        if job.table_cursor.is_none() {
            job.steps_done.push(PurgeStep::Table);
        }
        save(deps, &mut job).await?;
        pages += 1;
    }
    for (step, bucket, prefix) in [
        (
            PurgeStep::ImportsBucket,
            deps.config.imports_bucket.clone(),
            custody::imports::tenant_prefix(tenant),
        ),
        (
            PurgeStep::ResultsBucket,
            deps.config.dsar_results_bucket.clone(),
            results_tenant_prefix(tenant),
        ),
    ] {
        if job.steps_done.contains(&step) {
            continue;
        }
        if budget.exhausted(pages) {
            return Ok(PurgeProgress::Stopped);
        }
        let deleted = files::delete_prefix_versions(deps, &bucket, &prefix).await?;
        match step {
            PurgeStep::ImportsBucket => job.counts.import_object_versions += deleted,
            _ => job.counts.result_object_versions += deleted,
        }
        job.steps_done.push(step);
        save(deps, &mut job).await?;
        pages += 1;
    }
    if job.status == PurgeStatus::Purging && !job.final_sweep {
        // Every pass is done once; a writer that checked the fence just before it went
        // up may still have written since. After the grace (longer than any writer
        // goes between fence checks and writes), the same passes run again.
        let due = job.requested_at + deps.dsar.purge_grace;
        let now = deps.now();
        if now < due {
            let wait = (due - now).to_std().unwrap_or_default();
            if budget.remaining() <= wait {
                // Not within this invocation: touch the job, and its next stream
                // record comes back to wait the rest.
                save(deps, &mut job).await?;
                return Ok(PurgeProgress::Stopped);
            }
            tokio::time::sleep(wait).await;
            if deps.now() < due {
                // A clock that did not move with the sleep (tests); come back later.
                return Ok(PurgeProgress::Stopped);
            }
        }
        job.final_sweep = true;
        job.steps_done.clear();
        job.table_cursor = None;
        save(deps, &mut job).await?;
        return Box::pin(purge(deps, tenant, budget)).await;
    }
    if job.status == PurgeStatus::Purging {
        let head = deps.audit.head(tenant, AuditClass::Evidence).await?;
        let now = deps.now();
        let certificate = Certificate {
            schema: SCHEMA.to_owned(),
            certificate_id: ulid::Ulid::new().to_string(),
            scope: Scope::Account,
            tenant: tenant.to_string(),
            request_id: job.id.clone(),
            regulation: None,
            subject_pseudonyms: Vec::new(),
            received_at: job.requested_at,
            erased_at: now,
            issued_at: now,
            erased: vec![
                ErasedStore::new("custody-table", "connections", job.counts.connections),
                ErasedStore::new("custody-table", "items", job.counts.table_items),
                ErasedStore::new(
                    "imports-bucket",
                    "object_versions",
                    job.counts.import_object_versions,
                ),
                ErasedStore::new(
                    "dsar-results-bucket",
                    "object_versions",
                    job.counts.result_object_versions,
                ),
            ],
            audit_entries: head.iter().map(custody::privacy::AuditRef::from).collect(),
            audit_head_hash: head.map(|h| h.hash).unwrap_or_default(),
            key_id: String::new(),
            algorithm: String::new(),
        };
        job.certificate = Some(deps.signer.sign(certificate).await?);
        job.status = PurgeStatus::Certified;
        save(deps, &mut job).await?;
        custody::metrics::count(custody::metrics::names::PURGES_COMPLETED, 1);
    }
    // The tenant's notice (once), before the certificate's entry, which must stay the
    // chain's head for a rerun to find it.
    crate::notices::release_account_purged(
        deps,
        tenant,
        &job.id,
        job.certificate
            .as_ref()
            .and_then(|signed| signed.certificate().ok())
            .map(|c| c.certificate_id)
            .as_deref(),
        job.requested_at,
    )
    .await?;
    // The certificate goes to the audit log (kept) once: a rerun after a crash finds
    // it at the head (nothing else of the tenant writes after the purge).
    let head = deps.audit.head(tenant, AuditClass::Evidence).await?;
    let logged = head
        .as_ref()
        .is_some_and(|h| h.action == "account.purged" && h.target == job.id);
    if !logged && let Some(signed) = &job.certificate {
        deps.audit
            .append(
                tenant,
                Event::new(ACTOR, "account.purged", job.id.clone())
                    .detail("certificate", signed.document.clone())
                    .detail("signature", signed.signature.clone())
                    .detail("key_id", signed.key_id.clone())
                    .detail("table_items", job.counts.table_items)
                    .detail("import_object_versions", job.counts.import_object_versions)
                    .detail("result_object_versions", job.counts.result_object_versions),
            )
            .await?;
    }
    deps.store
        .delete(&custody::notice::Notice::key_of(
            tenant,
            &custody::notice::event_ids::account_purged(&job.id),
        ))
        .await?;
    // Last of the tenant's items.
    deps.store.delete(&key).await?;
    Ok(PurgeProgress::Done)
}

/// Deletes one scan page of the tenant's items (never the job itself) and returns
/// how many and the cursor of the next page.
async fn purge_table_page(
    deps: &Deps,
    tenant: &TenantId,
    cursor: Option<&str>,
) -> Result<(u64, Option<String>), ProcessError> {
    let (items, next) = tenant_scan_page(deps, tenant, cursor, Some("pk, sk")).await?;
    let job_key = AccountDeletion::key_of(tenant);
    let keys: Vec<Key> = items
        .iter()
        .filter_map(|item| Some(Key::new(text(item, "pk")?, text(item, "sk")?)))
        .filter(|key| *key != job_key)
        // The purge's own notice goes after it is sent, with the job.
        .filter(|key| !crate::notices::is_account_notice(tenant, &key.pk, &key.sk))
        .collect();
    for chunk in keys.chunks(BATCH) {
        batch_delete(deps, chunk).await?;
    }
    Ok((keys.len() as u64, next))
}

/// One consistent scan page of everything in the table that is the tenant's: its
/// partitions, the links to it (`sk = T#<t>`), and items kept elsewhere that name it
/// (OAuth `STATE#` items between redirect and callback). The purge deletes this
/// reach and the account export copies it, so both see the same items. The cursor
/// is the page's last key as JSON text (it rides on the job item).
pub(crate) async fn tenant_scan_page(
    deps: &Deps,
    tenant: &TenantId,
    cursor: Option<&str>,
    projection: Option<&str>,
) -> Result<(Vec<Item>, Option<String>), ProcessError> {
    let start = cursor
        .map(serde_json::from_str::<HashMap<String, String>>)
        .transpose()
        .map_err(|e| ProcessError::Encode(e.to_string()))?
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, AttributeValue::S(v)))
                .collect::<Item>()
        });
    let out = deps
        .store
        .client()
        .scan()
        .table_name(deps.store.table())
        .consistent_read(true)
        .filter_expression("pk = :t OR begins_with(pk, :tp) OR sk = :t OR #tenant = :name")
        .expression_attribute_names("#tenant", "tenant")
        .expression_attribute_values(":name", AttributeValue::S(tenant.to_string()))
        .expression_attribute_values(":t", AttributeValue::S(keys::tenant(tenant)))
        .expression_attribute_values(
            ":tp",
            AttributeValue::S(format!("{}#", keys::tenant(tenant))),
        )
        .set_projection_expression(projection.map(str::to_owned))
        .limit(SCAN_PAGE)
        .set_exclusive_start_key(start)
        .send()
        .await
        .map_err(dynamo)?;
    let next = out
        .last_evaluated_key
        .map(|key| {
            let plain: HashMap<String, String> = key
                .into_iter()
                .filter_map(|(k, v)| v.as_s().ok().map(|s| (k, s.clone())))
                .collect();
            serde_json::to_string(&plain).map_err(|e| ProcessError::Encode(e.to_string()))
        })
        .transpose()?;
    Ok((out.items.unwrap_or_default(), next))
}

async fn batch_delete(deps: &Deps, chunk: &[Key]) -> Result<(), ProcessError> {
    let mut requests: Vec<WriteRequest> = chunk
        .iter()
        .map(|key| {
            let delete = DeleteRequest::builder()
                .key("pk", AttributeValue::S(key.pk.clone()))
                .key("sk", AttributeValue::S(key.sk.clone()))
                .build()
                .map_err(|e| ProcessError::Encode(e.to_string()))?;
            Ok(WriteRequest::builder().delete_request(delete).build())
        })
        .collect::<Result<_, ProcessError>>()?;
    for attempt in 0..8u32 {
        if requests.is_empty() {
            return Ok(());
        }
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(5))).await;
        }
        let out = deps
            .store
            .client()
            .batch_write_item()
            .request_items(deps.store.table(), requests)
            .send()
            .await
            .map_err(dynamo)?;
        requests = out
            .unprocessed_items
            .and_then(|mut m| m.remove(deps.store.table()))
            .unwrap_or_default();
    }
    if requests.is_empty() {
        Ok(())
    } else {
        Err(ProcessError::Store(StoreError::Dynamo(
            "unprocessed deletes after retries".into(),
        )))
    }
}

async fn save(deps: &Deps, job: &mut AccountDeletion) -> Result<(), ProcessError> {
    let expected = job.version;
    job.version += 1;
    job.updated_at = deps.now();
    crate::process::put_versioned(deps, job, expected).await
}

fn dynamo<E, R>(err: aws_sdk_dynamodb::error::SdkError<E, R>) -> ProcessError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    ProcessError::Store(StoreError::Dynamo(custody::aws::error_text(&err)))
}

//! The append-only, hash-chained audit log, in its own table, with retention.
//!
//! Each tenant has two chains, one per [`AuditClass`]: export and import *activity*
//! (kept 90 days, like the export log it mirrors) and *evidence* (privacy requests,
//! consent, deletions, connections, settings: kept at least 24 months, never deleted
//! automatically). Entry `n` of a chain stores the SHA-256 of entry `n-1`, and its
//! own hash over every field. Appends claim the next sequence number with a
//! conditional put, so two writers can never both write entry `n`: the loser re-reads
//! the head and links after the winner.
//!
//! A chain is cut into daily segments (UTC). Every entry of a segment carries the
//! same `expires_at` (the segment's day plus the class's days), so DynamoDB TTL takes
//! a whole segment away, oldest first, and never an entry in the middle of a retained
//! one. The first entry of a new segment is written in one transaction with the
//! *checkpoint* of the segment before it: that segment's first and last sequence
//! numbers, the hash it starts from and its head hash, signed with the KMS signing
//! key. [`verify_chain`] proves a chain from the oldest checkpoint still retained:
//! an entry removed inside a retained segment, a retained segment removed, entries
//! cut after a checkpoint, or a forged checkpoint are all detected. Only the newest,
//! still open segment is not yet sealed; certificates of deletion anchor its head.
//!
//! Functions are granted `PutItem` and `Query` only (see template.yaml); TTL is the
//! only deleter. Subjects appear by pseudonym only, so the log survives erasure.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernel::aws::error_text;
use crate::kernel::clock::SharedClock;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::retention::RetentionClass;
use crate::kernel::signing::{self, Signer, SigningError};
use crate::kernel::tenant::TenantId;

/// `prev_hash` of a chain's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Version tag of a checkpoint document.
pub const CHECKPOINT_SCHEMA: &str = "custody.audit-checkpoint/v1";

/// The table's partition key: one partition per chain, one per chain's checkpoints.
pub const PARTITION_KEY: &str = "chain";

/// How many times an append tries before giving up on a race for the next sequence
/// number. 50 writers appending at once on one tenant needed at most 54 against the
/// emulator (`audit.rs::fifty_concurrent_appenders…`, which prints p50 and max); with
/// the 200 ms backoff cap this bounds an append to well under a minute.
pub const MAX_APPEND_ATTEMPTS: u32 = 200;

/// Backoff after a lost race: full jitter over a window that doubles from this …
const BACKOFF_BASE_MS: u64 = 2;
/// … up to this, so many writers spread out instead of colliding again in lockstep.
const BACKOFF_CAP_MS: u64 = 200;

/// Actions that are export or import *activity*; everything else is evidence, so an
/// action nobody classified is kept the longer time.
const ACTIVITY_ACTIONS: [&str; 10] = [
    "export.requested",
    "export_destination.tested",
    "export.started",
    "export.completed",
    "export.ended",
    "export.failed",
    "import.created",
    "import.delivered",
    "import.delivery_failed",
    "import.rejected",
];

/// The retention class of an audit entry; each class is its own chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditClass {
    Activity,
    Evidence,
}

impl AuditClass {
    pub const ALL: [AuditClass; 2] = [AuditClass::Activity, AuditClass::Evidence];

    /// The class an action's entries belong to.
    pub fn of(action: &str) -> Self {
        if ACTIVITY_ACTIONS.contains(&action) {
            AuditClass::Activity
        } else {
            AuditClass::Evidence
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuditClass::Activity => "activity",
            AuditClass::Evidence => "evidence",
        }
    }

    pub fn retention(self) -> RetentionClass {
        match self {
            AuditClass::Activity => RetentionClass::AuditActivity,
            AuditClass::Evidence => RetentionClass::AuditEvidence,
        }
    }

    /// When a segment's entries expire (epoch seconds): its day's start plus the
    /// class's retention, so no entry outlives the promise. `None`: never.
    pub fn expires_at(self, segment: NaiveDate) -> Option<i64> {
        let start = segment.and_hms_opt(0, 0, 0)?.and_utc();
        self.retention().duration().map(|d| (start + d).timestamp())
    }

    /// Whether a segment is still within retention at `now`. Past it, TTL may have
    /// removed any of the segment's entries, and reads leave them out.
    pub fn retained(self, segment: NaiveDate, now: DateTime<Utc>) -> bool {
        self.expires_at(segment)
            .is_none_or(|expires| expires > now.timestamp())
    }

    fn chain(self, tenant: &str) -> String {
        format!("{tenant}#{}", self.name())
    }

    fn checkpoints(self, tenant: &str) -> String {
        format!("{tenant}#{}#checkpoints", self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

/// What is being recorded; the chain fields are added by [`AuditLog::append`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Who: a user's `sub`, `system:<function>`, or `provider:<name>`.
    pub actor: String,
    /// What, as `noun.verb`: `connection.created`, `export.completed`, …
    pub action: String,
    /// Which record: ids only (`CONN#highlevel`, `RUN#01J…`), never personal data.
    pub target: String,
    /// The data subject concerned, as a pseudonym (`ps_…`), if any.
    pub subject: Option<String>,
    pub outcome: Outcome,
    /// Non-personal details (counts, classes, reasons).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            subject: None,
            outcome: Outcome::Success,
            details: serde_json::Map::new(),
        }
    }

    pub fn subject(mut self, pseudonym: impl Into<String>) -> Self {
        self.subject = Some(pseudonym.into());
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(name.to_owned(), value.into());
        self
    }
}

/// One entry of a tenant's chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub tenant: String,
    pub class: AuditClass,
    pub seq: u64,
    /// RFC 3339 with milliseconds, UTC.
    pub at: String,
    /// The day (UTC) whose segment holds the entry; never earlier than the previous
    /// entry's, even if writers' clocks disagree.
    pub segment: NaiveDate,
    /// The sequence number of the segment's first entry.
    pub segment_start: u64,
    /// The previous entry's segment (`None` for the first entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_segment: Option<NaiveDate>,
    /// The TTL attribute: the segment's expiry, `None` for a class never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub outcome: Outcome,
    /// Stored as JSON text so numbers keep their exact form and the hash stays stable.
    #[serde(with = "json_text")]
    pub details: serde_json::Map<String, serde_json::Value>,
    pub prev_hash: String,
    pub hash: String,
}

/// The hashed form: every field but `hash`, in a fixed order (struct order is the
/// serialisation order, and `details` is a sorted map), so the bytes are canonical.
#[derive(Serialize)]
struct Hashed<'a> {
    tenant: &'a str,
    class: AuditClass,
    seq: u64,
    at: &'a str,
    segment: NaiveDate,
    segment_start: u64,
    prev_segment: Option<NaiveDate>,
    expires_at: Option<i64>,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    subject: &'a Option<String>,
    outcome: Outcome,
    details: &'a serde_json::Map<String, serde_json::Value>,
    prev_hash: &'a str,
}

impl Entry {
    pub fn compute_hash(&self) -> String {
        let hashed = Hashed {
            tenant: &self.tenant,
            class: self.class,
            seq: self.seq,
            at: &self.at,
            segment: self.segment,
            segment_start: self.segment_start,
            prev_segment: self.prev_segment,
            expires_at: self.expires_at,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            subject: &self.subject,
            outcome: self.outcome,
            details: &self.details,
            prev_hash: &self.prev_hash,
        };
        // Serialising plain strings, numbers, dates and a map cannot fail.
        let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

/// What a checkpoint states about one closed segment; signed as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    pub schema: String,
    pub tenant: String,
    pub class: AuditClass,
    pub segment: NaiveDate,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The `prev_hash` of the segment's first entry: the segment stands on its own
    /// once the segments before it have expired.
    pub first_prev_hash: String,
    /// The segment before this one, so a verifier knows whether it may be gone.
    pub prev_segment: Option<NaiveDate>,
    pub head_hash: String,
    pub expires_at: Option<i64>,
    pub key_id: String,
}

/// A checkpoint as stored: the exact signed text and its signature. Keyed by the
/// segment's last sequence number in the chain's checkpoint partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    pub seq: u64,
    pub document: String,
    /// Base64 DER ECDSA P-256 over `document`'s bytes.
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A reference to an audit entry: enough to find it and to prove it unchanged.
///
/// Here, beside [`Entry`], because both privacy requests and certificates of deletion
/// carry it (`custody::privacy::AuditRef` re-exports it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRef {
    pub seq: u64,
    pub action: String,
    pub hash: String,
}

impl From<&Entry> for AuditRef {
    fn from(entry: &Entry) -> Self {
        Self {
            seq: entry.seq,
            action: entry.action.clone(),
            hash: entry.hash.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit entry could not be encoded: {0}")]
    Encode(String),
    #[error("stored audit entry could not be read: {0}")]
    Decode(String),
    #[error("could not append after {0} attempts: the chain is under heavy contention")]
    Contention(u32),
    #[error("DynamoDB call failed: {0}")]
    Dynamo(String),
    #[error("checkpoint could not be signed: {0}")]
    Signing(#[from] SigningError),
}

/// The audit log is ours: every failure is a bare 500, logged.
impl HttpError for AuditError {
    fn answer(&self) -> HttpAnswer<'_> {
        HttpAnswer::internal_logged("audit error", self)
    }
}

/// Why a chain failed verification, with the first sequence number (or segment) at
/// fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {seq}: stored hash does not match its contents (altered)")]
    Altered { seq: u64 },
    #[error("entry {seq}: does not link to the previous entry (removed, inserted or reordered)")]
    Unlinked { seq: u64 },
    #[error("entry {found} found where {expected} was expected (removed entries)")]
    Gap { expected: u64, found: u64 },
    #[error("entry {seq}: belongs to another tenant or chain")]
    WrongChain { seq: u64 },
    #[error("entries before {seq} were removed while still within retention")]
    Removed { seq: u64 },
    #[error("entry {seq} is missing, but a signed checkpoint proves it was written (truncated)")]
    Truncated { seq: u64 },
    #[error("checkpoint at {seq}: signature or contents do not verify (forged)")]
    Forged { seq: u64 },
    #[error("checkpoint for segment {segment}: does not match the entries it seals")]
    CheckpointMismatch { segment: NaiveDate },
    #[error("segment {segment} is closed and retained but has no checkpoint")]
    MissingCheckpoint { segment: NaiveDate },
}

/// A broken chain: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} chain: {cause}", class.name())]
pub struct BrokenChain {
    pub class: AuditClass,
    pub cause: ChainBreak,
}

/// One verified chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedChain {
    pub class: AuditClass,
    /// Retained entries proven.
    pub entries: u64,
    /// The newest entry's sequence number and hash (0 and genesis when empty).
    pub head_seq: u64,
    pub head_hash: String,
    /// Retained checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// The segment of the oldest retained checkpoint the proof starts from.
    pub from_checkpoint: Option<NaiveDate>,
}

/// Both of a tenant's chains, verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub chains: Vec<VerifiedChain>,
}

impl Verified {
    pub fn chain(&self, class: AuditClass) -> Option<&VerifiedChain> {
        self.chains.iter().find(|c| c.class == class)
    }

    /// Retained entries in all chains.
    pub fn entries(&self) -> u64 {
        self.chains.iter().map(|c| c.entries).sum()
    }
}

#[derive(Clone, Debug)]
pub struct AuditLog {
    client: aws_sdk_dynamodb::Client,
    table: String,
    signer: Signer,
    clock: SharedClock,
}

impl AuditLog {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        signer: Signer,
        clock: SharedClock,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            signer,
            clock,
        }
    }

    /// The audit log of a deployment: its table, signing with its signing key.
    pub fn from_config(
        clients: &crate::kernel::aws::Clients,
        config: &crate::kernel::config::Config,
        clock: SharedClock,
    ) -> Self {
        Self::new(
            clients.dynamodb.clone(),
            &config.audit_table,
            Signer::new(clients.kms.clone(), &config.signing_key_id),
            clock,
        )
    }

    /// Appends an event to the tenant's chain of the event's class and returns the
    /// stored entry. The first entry of a new segment seals the previous one.
    pub async fn append(&self, tenant: &TenantId, event: Event) -> Result<Entry, AuditError> {
        self.append_counted(tenant, event)
            .await
            .map(|(entry, _)| entry)
    }

    /// [`AuditLog::append`], also saying how many attempts it took (1 = no race lost).
    pub async fn append_counted(
        &self,
        tenant: &TenantId,
        event: Event,
    ) -> Result<(Entry, u32), AuditError> {
        let class = AuditClass::of(&event.action);
        for attempt in 0..MAX_APPEND_ATTEMPTS {
            let head = self.head(tenant, class).await?;
            let now = self.clock.now();
            let today = now.date_naive();
            let (seq, prev_hash, prev_segment) = match &head {
                Some(head) => (head.seq + 1, head.hash.clone(), Some(head.segment)),
                None => (1, GENESIS_HASH.to_owned(), None),
            };
            let segment = prev_segment.map_or(today, |prev| prev.max(today));
            let segment_start = match &head {
                Some(head) if head.segment == segment => head.segment_start,
                _ => seq,
            };
            let mut entry = Entry {
                tenant: tenant.as_str().to_owned(),
                class,
                seq,
                at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
                segment,
                segment_start,
                prev_segment,
                expires_at: class.expires_at(segment),
                actor: event.actor.clone(),
                action: event.action.clone(),
                target: event.target.clone(),
                subject: event.subject.clone(),
                outcome: event.outcome,
                details: event.details.clone(),
                prev_hash,
                hash: String::new(),
            };
            entry.hash = entry.compute_hash();
            let mut item: HashMap<String, AttributeValue> =
                serde_dynamo::to_item(&entry).map_err(|e| AuditError::Encode(e.to_string()))?;
            item.insert(
                PARTITION_KEY.to_owned(),
                AttributeValue::S(class.chain(tenant.as_str())),
            );
            let checkpoint = match &head {
                Some(head) if head.segment != segment && class.retained(head.segment, now) => {
                    self.checkpoint(tenant, head).await?
                }
                _ => None,
            };
            let written = match checkpoint {
                Some(checkpoint) => self.put_both(checkpoint, item).await,
                None => self.put_entry(item).await,
            };
            match written {
                Ok(()) => return Ok((entry, attempt + 1)),
                Err(Lost::Race) => {
                    // Our own write may hold `seq`: an attempt the SDK retried after
                    // its answer was lost (a timeout, a 5xx after the service wrote)
                    // finds its own entry there. Then it is written, once.
                    if let Some(stored) = self.entry(tenant, class, seq).await?
                        && stored.hash == entry.hash
                    {
                        return Ok((entry, attempt + 1));
                    }
                    // Lost the race for `seq`: back off, re-read the head.
                    let window = (BACKOFF_BASE_MS << attempt.min(16)).min(BACKOFF_CAP_MS);
                    let pause = rand::rng().random_range(0..=window);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(Lost::Failed(err)) => return Err(err),
            }
        }
        Err(AuditError::Contention(MAX_APPEND_ATTEMPTS))
    }

    /// The signed checkpoint item closing `head`'s segment, or `None` when the
    /// segment's first entry is missing (tampering: logged, and `verify` reports the
    /// unsealed segment; the new entry is still written, so work goes on).
    async fn checkpoint(
        &self,
        tenant: &TenantId,
        head: &Entry,
    ) -> Result<Option<HashMap<String, AttributeValue>>, AuditError> {
        let first = if head.segment_start == head.seq {
            Some(head.clone())
        } else {
            self.entry(tenant, head.class, head.segment_start).await?
        };
        let Some(first) = first else {
            tracing::error!(
                tenant = %tenant,
                class = head.class.name(),
                segment = %head.segment,
                seq = head.segment_start,
                "audit segment's first entry is missing: segment left unsealed"
            );
            return Ok(None);
        };
        let body = CheckpointBody {
            schema: CHECKPOINT_SCHEMA.to_owned(),
            tenant: tenant.as_str().to_owned(),
            class: head.class,
            segment: head.segment,
            first_seq: head.segment_start,
            last_seq: head.seq,
            first_prev_hash: first.prev_hash,
            prev_segment: first.prev_segment,
            head_hash: head.hash.clone(),
            expires_at: head.class.expires_at(head.segment),
            key_id: self.signer.key_id().to_owned(),
        };
        let document =
            serde_json::to_string(&body).map_err(|e| AuditError::Encode(e.to_string()))?;
        let signature = self.signer.sign(document.as_bytes()).await?;
        let stored = StoredCheckpoint {
            seq: head.seq,
            document,
            signature,
            expires_at: body.expires_at,
        };
        let mut item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(&stored).map_err(|e| AuditError::Encode(e.to_string()))?;
        item.insert(
            PARTITION_KEY.to_owned(),
            AttributeValue::S(head.class.checkpoints(tenant.as_str())),
        );
        Ok(Some(item))
    }

    async fn put_entry(&self, item: HashMap<String, AttributeValue>) -> Result<(), Lost> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(Lost::Race)
            }
            Err(err) => Err(Lost::Failed(AuditError::Dynamo(error_text(&err)))),
        }
    }

    /// The checkpoint and the next segment's first entry, atomically: a checkpoint
    /// exists exactly when the entry after the segment does.
    async fn put_both(
        &self,
        checkpoint: HashMap<String, AttributeValue>,
        entry: HashMap<String, AttributeValue>,
    ) -> Result<(), Lost> {
        let put = |item: HashMap<String, AttributeValue>| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PARTITION_KEY)
                .build()
                .map(|put| TransactWriteItem::builder().put(put).build())
                .map_err(|e| Lost::Failed(AuditError::Encode(e.to_string())))
        };
        let result = self
            .client
            .transact_write_items()
            .transact_items(put(checkpoint)?)
            .transact_items(put(entry)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // A condition failed (another writer took the sequence number) or the
            // items were in another transaction (both cancel it): re-read and retry.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_transaction_canceled_exception()) =>
            {
                Err(Lost::Race)
            }
            Err(err) => Err(Lost::Failed(AuditError::Dynamo(error_text(&err)))),
        }
    }

    /// The newest entry of the tenant's chain of `class`.
    pub async fn head(
        &self,
        tenant: &TenantId,
        class: AuditClass,
    ) -> Result<Option<Entry>, AuditError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :c")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_values(":c", AttributeValue::S(class.chain(tenant.as_str())))
            .scan_index_forward(false)
            .limit(1)
            .send()
            .await
            .map_err(|e| AuditError::Dynamo(error_text(&e)))?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(decode)
            .transpose()
    }

    /// One entry by sequence number (functions may only `Query` the table).
    async fn entry(
        &self,
        tenant: &TenantId,
        class: AuditClass,
        seq: u64,
    ) -> Result<Option<Entry>, AuditError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :c AND seq = :s")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_values(":c", AttributeValue::S(class.chain(tenant.as_str())))
            .expression_attribute_values(":s", AttributeValue::N(seq.to_string()))
            .send()
            .await
            .map_err(|e| AuditError::Dynamo(error_text(&e)))?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(decode)
            .transpose()
    }

    /// Every item of one partition, in sequence order.
    async fn partition(
        &self,
        key: String,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, AuditError> {
        let mut start = None;
        let mut items = Vec::new();
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#pk = :c")
                .expression_attribute_names("#pk", PARTITION_KEY)
                .expression_attribute_values(":c", AttributeValue::S(key.clone()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| AuditError::Dynamo(error_text(&e)))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }

    /// Every stored entry of one chain in sequence order, expired ones included
    /// (until TTL removes them): what a verifier sees.
    pub async fn chain_entries(
        &self,
        tenant: &TenantId,
        class: AuditClass,
    ) -> Result<Vec<Entry>, AuditError> {
        self.partition(class.chain(tenant.as_str()))
            .await?
            .into_iter()
            .map(decode)
            .collect()
    }

    /// Whether the tenant's chain already holds an entry of `action` on `target` that
    /// `also` accepts: how a redelivered event finds an entry an earlier delivery wrote
    /// before it failed. Reads the whole chain: for recovery paths only.
    pub async fn holds(
        &self,
        tenant: &TenantId,
        action: &str,
        target: &str,
        also: impl Fn(&Entry) -> bool,
    ) -> Result<bool, AuditError> {
        Ok(self
            .chain_entries(tenant, AuditClass::of(action))
            .await?
            .iter()
            .any(|e| e.action == action && e.target == target && also(e)))
    }

    /// Every stored checkpoint of one chain, in sequence order.
    pub async fn checkpoints(
        &self,
        tenant: &TenantId,
        class: AuditClass,
    ) -> Result<Vec<StoredCheckpoint>, AuditError> {
        self.partition(class.checkpoints(tenant.as_str()))
            .await?
            .into_iter()
            .map(|item| {
                serde_dynamo::from_item(item).map_err(|e| AuditError::Decode(e.to_string()))
            })
            .collect()
    }

    /// The tenant's retained entries of both chains, oldest first, optionally only
    /// those recorded in `[from, to)`. Entries past their retention are left out even
    /// before TTL removes them.
    pub async fn entries(
        &self,
        tenant: &TenantId,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<Entry>, AuditError> {
        let now = self.clock.now();
        let mut entries = Vec::new();
        for class in AuditClass::ALL {
            for entry in self.chain_entries(tenant, class).await? {
                if !class.retained(entry.segment, now) {
                    continue;
                }
                let at = DateTime::parse_from_rfc3339(&entry.at)
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|e| AuditError::Decode(e.to_string()))?;
                if from.is_none_or(|from| at >= from) && to.is_none_or(|to| at < to) {
                    entries.push((at, entry));
                }
            }
        }
        entries
            .sort_by(|(a, x), (b, y)| a.cmp(b).then(x.class.cmp(&y.class)).then(x.seq.cmp(&y.seq)));
        Ok(entries.into_iter().map(|(_, entry)| entry).collect())
    }

    /// One page of one of the tenant's chains, newest first, for a reader (`GET
    /// /audit`): a DynamoDB query backwards from `query.before` (a sequence number), so
    /// a page costs the same whatever the chain's length. Entries past their retention
    /// and those `query` filters out are skipped; a page may then hold fewer than
    /// `limit` entries while `next_before` still says there is more.
    pub async fn page(
        &self,
        tenant: &TenantId,
        class: AuditClass,
        query: &PageQuery,
    ) -> Result<EntryPage, AuditError> {
        let now = self.clock.now();
        let limit = query.limit.clamp(1, MAX_PAGE);
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(if query.before.is_some() {
                "#pk = :c AND #seq < :before"
            } else {
                "#pk = :c"
            })
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_values(":c", AttributeValue::S(class.chain(tenant.as_str())))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX));
        if let Some(before) = query.before {
            request = request
                .expression_attribute_names("#seq", "seq")
                .expression_attribute_values(":before", AttributeValue::N(before.to_string()));
        }
        let out = request
            .send()
            .await
            .map_err(|e| AuditError::Dynamo(error_text(&e)))?;
        let items = out.items.unwrap_or_default();
        let mut entries = Vec::with_capacity(items.len());
        let mut oldest = None;
        for item in items {
            let entry = decode(item)?;
            oldest = Some(entry.seq);
            if !class.retained(entry.segment, now) {
                continue;
            }
            if query.action.as_deref().is_some_and(|a| a != entry.action) {
                continue;
            }
            let at = DateTime::parse_from_rfc3339(&entry.at)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|e| AuditError::Decode(e.to_string()))?;
            if query.from.is_some_and(|from| at < from) || query.to.is_some_and(|to| at >= to) {
                continue;
            }
            entries.push(entry);
        }
        // More when DynamoDB stopped at the limit and the oldest entry read is not the
        // chain's first.
        let next_before = match (out.last_evaluated_key, oldest) {
            (Some(_), Some(seq)) if seq > 1 => Some(seq),
            _ => None,
        };
        Ok(EntryPage {
            class,
            entries,
            next_before,
        })
    }

    /// Reads both of the tenant's chains and their checkpoints and verifies them
    /// against the signing key's public key.
    pub async fn verify(
        &self,
        tenant: &TenantId,
    ) -> Result<Result<Verified, BrokenChain>, AuditError> {
        let key = self.signer.public_key().await?;
        let now = self.clock.now();
        let mut chains = Vec::new();
        for class in AuditClass::ALL {
            let entries = self.chain_entries(tenant, class).await?;
            let checkpoints = self.checkpoints(tenant, class).await?;
            match verify_chain(tenant, class, &entries, &checkpoints, &key.der, now) {
                Ok(chain) => chains.push(chain),
                Err(cause) => return Ok(Err(BrokenChain { class, cause })),
            }
        }
        Ok(Ok(Verified { chains }))
    }
}

/// The largest page [`AuditLog::page`] reads.
pub const MAX_PAGE: u32 = 100;

/// What a reader asks of one chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Entries read per page (1 to [`MAX_PAGE`]).
    pub limit: u32,
    /// Only entries with a lower sequence number (the previous page's `next_before`).
    pub before: Option<u64>,
    /// Only this action.
    pub action: Option<String>,
    /// Only entries recorded in `[from, to)`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// One page of a chain, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryPage {
    pub class: AuditClass,
    pub entries: Vec<Entry>,
    /// Pass as `before` for the next (older) page; `None` at the chain's start.
    pub next_before: Option<u64>,
}

/// Why a write did not land.
enum Lost {
    Race,
    Failed(AuditError),
}

mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    type Map = serde_json::Map<String, serde_json::Value>;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::Value::Object(map.clone()).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

fn decode(item: HashMap<String, AttributeValue>) -> Result<Entry, AuditError> {
    serde_dynamo::from_item(item).map_err(|e| AuditError::Decode(e.to_string()))
}

/// Verifies one chain of a tenant at `now`, given its stored entries and checkpoints
/// in sequence order and the signing key's public key (DER).
///
/// Segments past their retention are skipped (TTL may have removed any part of
/// them). Every retained entry must be present, unaltered and linked; the first one
/// may follow removed entries only if those were in an expired segment. Every
/// retained checkpoint must carry a valid signature, chain to the one before it, and
/// match the entries it seals, and the entry after it (written with it) must exist;
/// every closed retained segment must have one.
pub fn verify_chain(
    tenant: &TenantId,
    class: AuditClass,
    entries: &[Entry],
    checkpoints: &[StoredCheckpoint],
    public_key_der: &[u8],
    now: DateTime<Utc>,
) -> Result<VerifiedChain, ChainBreak> {
    // Checkpoints: signed, ours, and consecutive.
    let mut sealed: Vec<CheckpointBody> = Vec::new();
    for stored in checkpoints {
        let forged = ChainBreak::Forged { seq: stored.seq };
        let body: CheckpointBody =
            serde_json::from_str(&stored.document).map_err(|_| forged.clone())?;
        if !class.retained(body.segment, now) {
            continue;
        }
        signing::verify(
            public_key_der,
            stored.document.as_bytes(),
            &stored.signature,
        )
        .map_err(|_| forged.clone())?;
        if body.schema != CHECKPOINT_SCHEMA
            || body.tenant != tenant.as_str()
            || body.class != class
            || body.last_seq != stored.seq
            || body.first_seq > body.last_seq
            || body.expires_at != class.expires_at(body.segment)
        {
            return Err(forged);
        }
        if let Some(before) = sealed.last()
            && (body.first_seq != before.last_seq + 1
                || body.first_prev_hash != before.head_hash
                || body.prev_segment != Some(before.segment))
        {
            return Err(ChainBreak::MissingCheckpoint {
                segment: body.prev_segment.unwrap_or(before.segment),
            });
        }
        sealed.push(body);
    }

    // Entries: every retained one present, unaltered, linked.
    let live: Vec<&Entry> = entries
        .iter()
        .filter(|e| class.retained(e.segment, now))
        .collect();
    let mut closed: Vec<(NaiveDate, u64)> = Vec::new();
    let mut prev: Option<&Entry> = None;
    for &entry in &live {
        let seq = entry.seq;
        if entry.tenant != tenant.as_str() || entry.class != class {
            return Err(ChainBreak::WrongChain { seq });
        }
        if entry.compute_hash() != entry.hash || entry.expires_at != class.expires_at(entry.segment)
        {
            return Err(ChainBreak::Altered { seq });
        }
        match prev {
            None if seq == 1 => {
                if entry.prev_hash != GENESIS_HASH
                    || entry.prev_segment.is_some()
                    || entry.segment_start != 1
                {
                    return Err(ChainBreak::Unlinked { seq });
                }
            }
            None => {
                // What came before may be gone only if its segment has expired.
                if entry.segment_start != seq {
                    return Err(ChainBreak::Gap {
                        expected: entry.segment_start,
                        found: seq,
                    });
                }
                if entry
                    .prev_segment
                    .is_none_or(|before| class.retained(before, now))
                {
                    return Err(ChainBreak::Removed { seq });
                }
            }
            Some(before) => {
                if seq != before.seq + 1 {
                    return Err(ChainBreak::Gap {
                        expected: before.seq + 1,
                        found: seq,
                    });
                }
                let start = if entry.segment == before.segment {
                    before.segment_start
                } else {
                    seq
                };
                if entry.prev_hash != before.hash
                    || entry.segment < before.segment
                    || entry.prev_segment != Some(before.segment)
                    || entry.segment_start != start
                {
                    return Err(ChainBreak::Unlinked { seq });
                }
                if entry.segment != before.segment {
                    closed.push((before.segment, before.seq));
                }
            }
        }
        prev = Some(entry);
    }

    // Checkpoints against the entries they seal.
    let by_seq: HashMap<u64, &Entry> = live.iter().map(|e| (e.seq, *e)).collect();
    for body in &sealed {
        let mismatch = ChainBreak::CheckpointMismatch {
            segment: body.segment,
        };
        let last = by_seq
            .get(&body.last_seq)
            .ok_or(ChainBreak::Truncated { seq: body.last_seq })?;
        let first = by_seq.get(&body.first_seq).ok_or(ChainBreak::Truncated {
            seq: body.first_seq,
        })?;
        if last.hash != body.head_hash
            || last.segment != body.segment
            || first.prev_hash != body.first_prev_hash
            || first.segment_start != body.first_seq
            || first.prev_segment != body.prev_segment
        {
            return Err(mismatch);
        }
        // The entry after a checkpoint was written in the same transaction.
        if !by_seq.contains_key(&(body.last_seq + 1)) {
            return Err(ChainBreak::Truncated {
                seq: body.last_seq + 1,
            });
        }
    }
    for (segment, last_seq) in closed {
        if !sealed
            .iter()
            .any(|body| body.segment == segment && body.last_seq == last_seq)
        {
            return Err(ChainBreak::MissingCheckpoint { segment });
        }
    }

    Ok(VerifiedChain {
        class,
        entries: live.len() as u64,
        head_seq: prev.map_or(0, |e| e.seq),
        head_hash: prev.map_or_else(|| GENESIS_HASH.to_owned(), |e| e.hash.clone()),
        checkpoints: sealed.len() as u64,
        from_checkpoint: sealed.first().map(|body| body.segment),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::table::{internal, row};

    #[test]
    fn every_audit_error_is_a_bare_500() {
        for err in [
            AuditError::Encode("e".into()),
            AuditError::Decode("d".into()),
            AuditError::Contention(5),
            AuditError::Dynamo("ResourceNotFoundException: table custody-audit-x".into()),
            AuditError::Signing(SigningError::Kms("AccessDenied".into())),
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }

    #[test]
    fn activity_is_export_and_import_work_and_the_rest_is_evidence() {
        for action in ACTIVITY_ACTIONS {
            assert_eq!(AuditClass::of(action), AuditClass::Activity, "{action}");
        }
        for action in [
            "import.deleted",
            "import.expired",
            "record.expired",
            "connection.deleted",
            "account.purged",
            "privacy_request.erased",
            "consent.read",
            "export_settings.updated",
            "never.heard.of",
        ] {
            assert_eq!(AuditClass::of(action), AuditClass::Evidence, "{action}");
        }
    }

    #[test]
    fn a_segment_expires_whole_and_never_after_the_promise() {
        let day = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
        let start = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        let expires = AuditClass::Activity.expires_at(day).unwrap();
        assert_eq!(expires, (start + chrono::Duration::days(90)).timestamp());
        // The segment's last instant is kept 89 days and a bit: never more than 90.
        let last_instant = start + chrono::Duration::days(1) - chrono::Duration::seconds(1);
        assert!(expires - last_instant.timestamp() >= 89 * 86_400);
        assert!(AuditClass::Activity.retained(day, start + chrono::Duration::days(89)));
        assert!(!AuditClass::Activity.retained(day, start + chrono::Duration::days(90)));
        assert_eq!(AuditClass::Evidence.expires_at(day), None);
        assert!(AuditClass::Evidence.retained(day, start + chrono::Duration::days(10_000)));
    }
}

//! The append-only, hash-chained audit log, in its own table.
//!
//! Each tenant has one chain: entry `n` stores the SHA-256 of entry `n-1`, and its
//! own hash over every field. Appends claim the next sequence number with a
//! conditional put, so two concurrent writers can never both write entry `n`: the
//! loser re-reads the head and links after the winner. The table grants functions
//! `PutItem` and `Query` only (see template.yaml), and has no TTL.
//!
//! Subjects appear by pseudonym only, so the log survives their erasure.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernel::aws::error_text;
use crate::kernel::clock::SharedClock;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::tenant::TenantId;

/// `prev_hash` of a tenant's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many times an append retries after losing a race for the next sequence number.
const MAX_APPEND_ATTEMPTS: u32 = 50;

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
    pub seq: u64,
    /// RFC 3339 with milliseconds, UTC.
    pub at: String,
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
    seq: u64,
    at: &'a str,
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
            seq: self.seq,
            at: &self.at,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            subject: &self.subject,
            outcome: self.outcome,
            details: &self.details,
            prev_hash: &self.prev_hash,
        };
        // Serialising plain strings, numbers and a map cannot fail.
        let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
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
}

impl HttpError for AuditError {
    fn answer(&self) -> HttpAnswer<'_> {
        HttpAnswer::internal_logged("audit error", self)
    }
}

/// Why a chain failed verification, with the first sequence number at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {seq}: stored hash does not match its contents (altered)")]
    Altered { seq: u64 },
    #[error(
        "entry {seq}: does not link to the previous entry's hash (removed, inserted or reordered)"
    )]
    Unlinked { seq: u64 },
    #[error("entry {found} found where {expected} was expected (removed entries)")]
    Gap { expected: u64, found: u64 },
    #[error("entry {seq}: belongs to another tenant")]
    WrongTenant { seq: u64 },
}

/// A verified chain: how many entries and the head's hash (anchor it elsewhere, e.g.
/// in a certificate, to detect truncation of the newest entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub entries: u64,
    pub head_hash: String,
}

#[derive(Clone, Debug)]
pub struct AuditLog {
    client: aws_sdk_dynamodb::Client,
    table: String,
    clock: SharedClock,
}

impl AuditLog {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        clock: SharedClock,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            clock,
        }
    }

    /// Appends an event to the tenant's chain and returns the stored entry.
    pub async fn append(&self, tenant: &TenantId, event: Event) -> Result<Entry, AuditError> {
        for attempt in 0..MAX_APPEND_ATTEMPTS {
            let head = self.head(tenant).await?;
            let (seq, prev_hash) = match &head {
                Some(head) => (head.seq + 1, head.hash.clone()),
                None => (1, GENESIS_HASH.to_owned()),
            };
            let mut entry = Entry {
                tenant: tenant.as_str().to_owned(),
                seq,
                at: self
                    .clock
                    .now()
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
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
            let item: HashMap<String, AttributeValue> =
                serde_dynamo::to_item(&entry).map_err(|e| AuditError::Encode(e.to_string()))?;
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(tenant)")
                .send()
                .await;
            match result {
                Ok(_) => return Ok(entry),
                Err(err)
                    if err
                        .as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    // Lost the race for `seq`: back off a little, re-read the head.
                    let jitter = rand::rng().random_range(0..=(5 + attempt.min(20) * 2));
                    tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
                }
                Err(err) => return Err(AuditError::Dynamo(error_text(&err))),
            }
        }
        Err(AuditError::Contention(MAX_APPEND_ATTEMPTS))
    }

    /// The newest entry of the tenant's chain.
    pub async fn head(&self, tenant: &TenantId) -> Result<Option<Entry>, AuditError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("tenant = :t")
            .expression_attribute_values(":t", AttributeValue::S(tenant.as_str().to_owned()))
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

    /// Every entry of the tenant in chain order, optionally only those recorded in
    /// `[from, to)`.
    pub async fn entries(
        &self,
        tenant: &TenantId,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<Entry>, AuditError> {
        let mut start = None;
        let mut entries = Vec::new();
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("tenant = :t")
                .expression_attribute_values(":t", AttributeValue::S(tenant.as_str().to_owned()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| AuditError::Dynamo(error_text(&e)))?;
            for item in out.items.unwrap_or_default() {
                let entry = decode(item)?;
                let at = DateTime::parse_from_rfc3339(&entry.at)
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|e| AuditError::Decode(e.to_string()))?;
                if from.is_none_or(|from| at >= from) && to.is_none_or(|to| at < to) {
                    entries.push(entry);
                }
            }
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(entries),
            }
        }
    }

    /// Reads the tenant's whole chain and verifies it.
    pub async fn verify(
        &self,
        tenant: &TenantId,
    ) -> Result<Result<Verified, ChainBreak>, AuditError> {
        let entries = self.entries(tenant, None, None).await?;
        Ok(verify_chain(tenant, &entries))
    }
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

/// Verifies a tenant's entries, given in sequence order from the first.
pub fn verify_chain(tenant: &TenantId, entries: &[Entry]) -> Result<Verified, ChainBreak> {
    let mut prev_hash = GENESIS_HASH.to_owned();
    for (index, entry) in entries.iter().enumerate() {
        let expected = index as u64 + 1;
        if entry.tenant != tenant.as_str() {
            return Err(ChainBreak::WrongTenant { seq: entry.seq });
        }
        if entry.seq != expected {
            return Err(ChainBreak::Gap {
                expected,
                found: entry.seq,
            });
        }
        if entry.compute_hash() != entry.hash {
            return Err(ChainBreak::Altered { seq: entry.seq });
        }
        if entry.prev_hash != prev_hash {
            return Err(ChainBreak::Unlinked { seq: entry.seq });
        }
        prev_hash = entry.hash.clone();
    }
    Ok(Verified {
        entries: entries.len() as u64,
        head_hash: prev_hash,
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
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }
}

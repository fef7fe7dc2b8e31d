//! Idempotency for at-least-once events (S3 notifications, streams, schedules,
//! retries), following the protocol Powertools uses on DynamoDB:
//!
//! 1. One conditional `PutItem` claims the key. It succeeds when no record exists,
//!    the record has expired, or it is `INPROGRESS` and its in-progress expiry passed
//!    (the invocation that claimed it died).
//! 2. The in-progress expiry is the invocation's remaining time. If the remaining
//!    time is unknown (zero), the longest Lambda timeout is used instead: a claim must
//!    never be left without an expiry, which would leave it stuck `INPROGRESS` forever.
//! 3. On success the record becomes `COMPLETED` with the result, kept until its own
//!    expiry, which is checked on read (not left to TTL).
//! 4. On failure the claim is released, so a retry can run.
//! 5. The same key with a different payload is an error, checked before anything else
//!    is looked at, including a completed result.

use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernel::http::{HttpAnswer, HttpError, ProblemKind};
use crate::kernel::retention::{RetentionClass, TTL_ATTRIBUTE};
use crate::kernel::store::{Condition, Entity, Key, Store, StoreError, keys};
use crate::kernel::tenant::TenantId;

/// The longest a Lambda invocation can run; the fallback in-progress window.
pub const MAX_INVOCATION: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Inprogress,
    Completed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(skip)]
    key: Option<Key>,
    status: Status,
    payload_hash: String,
    /// Epoch milliseconds after which an `INPROGRESS` claim may be taken over.
    in_progress_expiry: i64,
    /// JSON of the completed result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    expires_at: i64,
}

impl Entity for Record {
    const KIND: &'static str = "idempotency";

    fn key(&self) -> Key {
        self.key.clone().unwrap_or_else(|| Key::new("", ""))
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("the same idempotency key was used with a different payload")]
    PayloadMismatch,
    #[error("another invocation is processing this key")]
    InProgress,
    #[error("stored result could not be read: {0}")]
    Result(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HttpError for IdempotencyError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            IdempotencyError::PayloadMismatch => HttpAnswer::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemKind::new("idempotency-key-reused", "Idempotency key reused"),
                self.to_string(),
            )
            .with_field("idempotency-key"),
            IdempotencyError::InProgress => HttpAnswer::conflict(self.to_string()),
            IdempotencyError::Result(_) | IdempotencyError::Store(_) => {
                HttpAnswer::internal_logged("idempotency error", self)
            }
        }
    }
}

/// What running an idempotent unit of work produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The work ran now.
    Ran(T),
    /// The work had already completed; this is its stored result.
    Replayed(T),
}

impl<T> Outcome<T> {
    pub fn into_inner(self) -> T {
        match self {
            Outcome::Ran(value) | Outcome::Replayed(value) => value,
        }
    }

    pub fn ran(&self) -> bool {
        matches!(self, Outcome::Ran(_))
    }
}

/// Runs work at most once per key (and at least once, with retries by the caller).
#[derive(Clone, Debug)]
pub struct Idempotency {
    store: Store,
    record_ttl: chrono::Duration,
}

/// The error of [`Idempotency::run`]: the work's own error, or the protocol's.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    #[error(transparent)]
    Idempotency(IdempotencyError),
    #[error(transparent)]
    Work(E),
}

impl Idempotency {
    pub fn new(store: Store) -> Self {
        let record_ttl = RetentionClass::Idempotency
            .duration()
            .unwrap_or_else(|| chrono::Duration::days(1));
        Self { store, record_ttl }
    }

    /// SHA-256 of the payload's JSON, the fingerprint compared on every claim.
    pub fn payload_hash<P: Serialize>(payload: &P) -> Result<String, IdempotencyError> {
        let json =
            serde_json::to_vec(payload).map_err(|e| IdempotencyError::Result(e.to_string()))?;
        Ok(hex::encode(Sha256::digest(json)))
    }

    /// Runs `work` once for `(tenant, key)`. A duplicate after completion gets the
    /// stored result; a duplicate while the first runs gets [`IdempotencyError::InProgress`]
    /// (the event source retries it later). `remaining` is the invocation's remaining time.
    pub async fn run<P, T, E, F, Fut>(
        &self,
        tenant: &TenantId,
        key: &str,
        payload: &P,
        remaining: Duration,
        work: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        P: Serialize,
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let hash = Self::payload_hash(payload).map_err(RunError::Idempotency)?;
        let record_key = Key::new(keys::idempotency(tenant, key), "IDEM");
        if let Some(stored) = self
            .claim(&record_key, &hash, remaining)
            .await
            .map_err(RunError::Idempotency)?
        {
            let value = serde_json::from_str(&stored)
                .map_err(|e| RunError::Idempotency(IdempotencyError::Result(e.to_string())))?;
            return Ok(Outcome::Replayed(value));
        }
        match work().await {
            Ok(value) => {
                self.complete(&record_key, &hash, &value)
                    .await
                    .map_err(RunError::Idempotency)?;
                Ok(Outcome::Ran(value))
            }
            Err(err) => {
                // Release so a retry can run; if even that fails the claim expires
                // with the invocation's remaining time.
                let _ = self.release(&record_key).await;
                Err(RunError::Work(err))
            }
        }
    }

    /// Claims the key. `Ok(None)`: claimed, run the work. `Ok(Some(result))`: already
    /// completed with this result.
    async fn claim(
        &self,
        key: &Key,
        hash: &str,
        remaining: Duration,
    ) -> Result<Option<String>, IdempotencyError> {
        let now = self.store.clock().now();
        let window = if remaining.is_zero() {
            MAX_INVOCATION
        } else {
            remaining
        };
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::seconds(900));
        let record = Record {
            key: Some(key.clone()),
            status: Status::Inprogress,
            payload_hash: hash.to_owned(),
            in_progress_expiry: (now + window).timestamp_millis(),
            result: None,
            expires_at: (now + self.record_ttl).timestamp(),
        };
        // Two tries: the record may vanish or expire between our failed put and the read.
        for _ in 0..2 {
            let condition = Condition::new(
                "attribute_not_exists(pk) OR #exp <= :now OR (#status = :inprogress AND #ipe < :now_ms)",
            )
            .name("#exp", TTL_ATTRIBUTE)
            .name("#status", "status")
            .name("#ipe", "in_progress_expiry")
            .value(":now", AttributeValue::N(now.timestamp().to_string()))
            .value(":now_ms", AttributeValue::N(now.timestamp_millis().to_string()))
            .value(":inprogress", AttributeValue::S("INPROGRESS".into()));
            match self.store.put_if(&record, condition).await {
                Ok(()) => return Ok(None),
                Err(StoreError::ConditionFailed) => {}
                Err(err) => return Err(err.into()),
            }
            let Some(existing) = self.store.get::<Record>(key).await? else {
                continue;
            };
            // Validate first: a different payload under the same key is a caller bug
            // and must not be answered with another payload's result.
            if existing.payload_hash != hash {
                return Err(IdempotencyError::PayloadMismatch);
            }
            return match existing.status {
                Status::Completed => Ok(Some(existing.result.unwrap_or_else(|| "null".into()))),
                Status::Inprogress => Err(IdempotencyError::InProgress),
            };
        }
        Err(IdempotencyError::InProgress)
    }

    async fn complete<T: Serialize>(
        &self,
        key: &Key,
        hash: &str,
        value: &T,
    ) -> Result<(), IdempotencyError> {
        let now = self.store.clock().now();
        let result =
            serde_json::to_string(value).map_err(|e| IdempotencyError::Result(e.to_string()))?;
        let record = Record {
            key: Some(key.clone()),
            status: Status::Completed,
            payload_hash: hash.to_owned(),
            in_progress_expiry: now.timestamp_millis(),
            result: Some(result),
            expires_at: (now + self.record_ttl).timestamp(),
        };
        self.store.put(&record).await?;
        Ok(())
    }

    async fn release(&self, key: &Key) -> Result<(), IdempotencyError> {
        self.store.delete(key).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::http::table::{internal, row, shown};

    #[test]
    fn every_idempotency_error_has_its_http_answer() {
        let reused = shown(422, "idempotency-key-reused", Some("idempotency-key"));
        assert_eq!(row(&IdempotencyError::PayloadMismatch), reused);
        let busy = shown(409, "conflict", None);
        assert_eq!(row(&IdempotencyError::InProgress), busy);
        // A store error under idempotency is ours, even a conflict.
        for err in [
            IdempotencyError::Result("expected a string".into()),
            IdempotencyError::Store(StoreError::AlreadyExists),
            IdempotencyError::Store(StoreError::Dynamo("throttled".into())),
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }
}

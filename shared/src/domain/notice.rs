//! Privacy notices to the tenant: what happened to its privacy requests and its
//! account, sent to the tenant's notification webhook.
//!
//! # The outbox
//!
//! Each event is one [`Notice`] item in the tenant's partition (`T#<tenant>` /
//! `NOTICE#<event_id>`). The event id is made from what happened
//! (`<request id>:received`, `<request id>:extended:1`, `<request id>:completed`,
//! `<request id>:deadline:<date>`, `<request id>:overdue:<deadline>`,
//! `account:<job id>:purged`, see [`event_ids`]), and the item is written with a
//! conditional create, so an event emitted twice (a duplicate stream record, a retried
//! step) is one notice, delivered once. Sort keys start with the request id, so a
//! request's notices are one prefix query (`NOTICE#<request id>:`).
//!
//! # Delivery
//!
//! A `POST` of [`Message`] (`{event_id, type, tenant, request_id?, occurred_at,
//! data}`) signed and retried by [`crate::webhook::Sender`]: the scheme of the
//! verification-code webhook and of import destinations (`custody-timestamp`,
//! `custody-signature` = `v1=` HMAC-SHA256 of `<timestamp>.<body>`), and the event id
//! as `custody-delivery`, the same on every attempt, so a receiver drops duplicates.
//! A message never carries a subject's identifier or free text: request ids, dates,
//! flags, counts and API paths only.
//!
//! Statuses: `pending` (written, being delivered or waiting for a redelivery),
//! `delivered`, `failed` (every attempt of the last round failed; `last_error` says
//! how, without URL or secret), `skipped` (the tenant has no notification webhook:
//! not an error, and final), `held` (written ahead of its event and not sent until it
//! is released: the account purge's notice, which must outlive the settings the purge
//! deletes). Every outcome is audited (`notice.sent`, `notice.failed`,
//! `notice.skipped`, target `NOTICE#<event id>`, detail `kind`), and each failure is
//! counted ([`crate::metrics::names::PRIVACY_NOTICES_FAILED`]). A pending or failed
//! notice whose last attempt is older than [`REDELIVER_AFTER`] is delivered again by
//! the dsar function's daily check ([`Notice::due`]): each notice ends delivered once
//! per event id, or stays visibly failed.
//!
//! # Retention
//!
//! A notice is evidence that the tenant was told: it has no `expires_at` and is kept
//! as long as the request record it belongs to (both go with the account's purge).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::privacy::WebhookTarget;
use crate::domain::webhook::{self, Sender};
use crate::kernel::audit::{AuditError, AuditLog, Event, Outcome};
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::seal::{Purpose, SealContext, Sealer};
use crate::kernel::store::{Condition, Entity, Key, Store, StoreError, keys};
use crate::kernel::tenant::TenantId;

/// Sort-key prefix of every notice.
pub const KEY_PREFIX: &str = "NOTICE#";
/// How long after its last attempt a pending or failed notice is due again. Longer
/// than one delivery round can take (the webhook retry policy's attempts, each with
/// the HTTP client's timeout), so a round still under way is never doubled.
pub const REDELIVER_AFTER: Duration = Duration::minutes(15);
/// How close a response deadline is when the daily check says it approaches.
pub const DEADLINE_WARNING: Duration = Duration::days(3);

/// The deterministic event ids: the same event always gets the same id.
pub mod event_ids {
    use chrono::NaiveDate;

    pub fn received(request_id: &str) -> String {
        format!("{request_id}:received")
    }

    pub fn verification_issued(request_id: &str) -> String {
        format!("{request_id}:verification_issued")
    }

    /// The `n`th extension (1-based; the regulations allow one).
    pub fn extended(request_id: &str, n: u32) -> String {
        format!("{request_id}:extended:{n}")
    }

    pub fn completed(request_id: &str) -> String {
        format!("{request_id}:completed")
    }

    /// The response deadline of `date` (the tenant's zone) approaches: a new date (an
    /// extension) is a new event.
    pub fn deadline(request_id: &str, date: NaiveDate) -> String {
        format!("{request_id}:deadline:{date}")
    }

    /// A deadline (`acknowledgement`, `initial_response`, `response`) has passed.
    pub fn overdue(request_id: &str, deadline: &str) -> String {
        format!("{request_id}:overdue:{deadline}")
    }

    pub fn account_purged(job_id: &str) -> String {
        format!("account:{job_id}:purged")
    }

    /// The event-id prefix of the account purge's notices.
    pub const ACCOUNT_PREFIX: &str = "account:";
}

/// What happened; serialised as the message's `type`. Ordered as a request's life
/// goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NoticeKind {
    /// The request was received and acknowledged (sent at filing).
    #[serde(rename = "privacy_request.received")]
    Received,
    /// A verification code went to the subject (the code itself never comes here).
    #[serde(rename = "privacy_request.verification_issued")]
    VerificationIssued,
    /// The deadline was extended, with reasons (given, not quoted).
    #[serde(rename = "privacy_request.extended")]
    Extended,
    /// The request is answered: the certificate of an erasure, an access bundle ready.
    #[serde(rename = "privacy_request.completed")]
    Completed,
    /// The response deadline is within [`DEADLINE_WARNING`].
    #[serde(rename = "privacy_request.deadline_approaching")]
    DeadlineApproaching,
    /// A deadline has passed with the request still open.
    #[serde(rename = "privacy_request.overdue")]
    Overdue,
    /// The account's purge finished and its certificate is signed.
    #[serde(rename = "account.purged")]
    AccountPurged,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Received => "privacy_request.received",
            NoticeKind::VerificationIssued => "privacy_request.verification_issued",
            NoticeKind::Extended => "privacy_request.extended",
            NoticeKind::Completed => "privacy_request.completed",
            NoticeKind::DeadlineApproaching => "privacy_request.deadline_approaching",
            NoticeKind::Overdue => "privacy_request.overdue",
            NoticeKind::AccountPurged => "account.purged",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeStatus {
    /// Written ahead of its event; sent once released.
    Held,
    Pending,
    Delivered,
    Failed,
    /// No notification webhook configured: nothing to send (final).
    Skipped,
}

impl NoticeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeStatus::Held => "held",
            NoticeStatus::Pending => "pending",
            NoticeStatus::Delivered => "delivered",
            NoticeStatus::Failed => "failed",
            NoticeStatus::Skipped => "skipped",
        }
    }
}

/// One event for the tenant, and how its delivery went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub tenant: TenantId,
    pub event_id: String,
    /// Stored as `notice_type`: the `kind` attribute names the entity type.
    #[serde(rename = "notice_type")]
    pub kind: NoticeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The event's details: dates, flags, counts, paths. Never an identifier.
    #[serde(default)]
    pub data: Map<String, Value>,
    pub status: NoticeStatus,
    /// Delivery rounds started (each retried per the webhook retry policy).
    #[serde(default)]
    pub attempts: u32,
    /// How the last round failed (a status or a transport error kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Where to deliver, for a notice sent after the settings are gone (the account
    /// purge's): the webhook as it was when the notice was held, secret still sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<WebhookTarget>,
    pub version: u64,
}

impl Entity for Notice {
    const KIND: &'static str = "notice";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant, &self.event_id)
    }
}

impl Notice {
    /// A new pending notice.
    pub fn new(
        tenant: &TenantId,
        event_id: impl Into<String>,
        kind: NoticeKind,
        request_id: Option<&str>,
        occurred_at: DateTime<Utc>,
        data: Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant: tenant.clone(),
            event_id: event_id.into(),
            kind,
            request_id: request_id.map(str::to_owned),
            occurred_at,
            created_at: now,
            data,
            status: NoticeStatus::Pending,
            attempts: 0,
            last_error: None,
            delivered_at: None,
            updated_at: now,
            target: None,
            version: 1,
        }
    }

    pub fn key_of(tenant: &TenantId, event_id: &str) -> Key {
        Key::new(keys::tenant(tenant), format!("{KEY_PREFIX}{event_id}"))
    }

    /// The sort-key prefix of a request's notices.
    pub fn request_prefix(request_id: &str) -> String {
        format!("{KEY_PREFIX}{request_id}:")
    }

    /// The audit target of the notice.
    pub fn target_name(&self) -> String {
        format!("{KEY_PREFIX}{}", self.event_id)
    }

    /// What the receiver gets.
    pub fn message(&self) -> Message {
        Message {
            event_id: self.event_id.clone(),
            kind: self.kind,
            tenant: self.tenant.to_string(),
            request_id: self.request_id.clone(),
            occurred_at: self.occurred_at,
            data: self.data.clone(),
        }
    }

    /// Whether the daily check should deliver it (again): pending or failed, and its
    /// last attempt at least [`REDELIVER_AFTER`] ago.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        matches!(self.status, NoticeStatus::Pending | NoticeStatus::Failed)
            && self.updated_at + REDELIVER_AFTER <= now
    }
}

/// The body of a notice delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: NoticeKind,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub data: Map<String, Value>,
}

/// The tenant's notification webhook (`PUT /privacy/settings`,
/// `notification_webhook`): its own item beside the privacy settings, with the secret
/// sealed under its own record name, so it and the verification webhook's seal differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationWebhook {
    pub tenant: TenantId,
    pub webhook: WebhookTarget,
    pub updated_at: DateTime<Utc>,
}

impl Entity for NotificationWebhook {
    const KIND: &'static str = "notification_webhook";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant)
    }
}

impl NotificationWebhook {
    /// The item's sort key, and the record its secret is sealed under.
    pub const RECORD: &'static str = "PRIVACY#notification_webhook";

    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), Self::RECORD)
    }

    /// The seal context of its secret.
    pub fn seal_context(tenant: &TenantId) -> SealContext {
        SealContext::new(tenant, Purpose::WebhookSecret, Self::RECORD)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl HttpError for NoticeError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            NoticeError::Store(err) => err.answer(),
            NoticeError::Audit(err) => err.answer(),
        }
    }
}

/// Writes, delivers and redelivers notices.
#[derive(Debug, Clone)]
pub struct Notifier {
    store: Store,
    sealer: Sealer,
    sender: Sender,
    audit: AuditLog,
    actor: String,
    allow_loopback: bool,
}

impl Notifier {
    /// `actor` is the audit actor of the outcomes (`system:<function>`);
    /// `allow_loopback` the egress switch webhook URLs are checked with.
    pub fn new(
        store: Store,
        sealer: Sealer,
        sender: Sender,
        audit: AuditLog,
        actor: impl Into<String>,
        allow_loopback: bool,
    ) -> Self {
        Self {
            store,
            sealer,
            sender,
            audit,
            actor: actor.into(),
            allow_loopback,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.store.clock().now()
    }

    /// The tenant's notification webhook, if it has one.
    pub async fn webhook(&self, tenant: &TenantId) -> Result<Option<WebhookTarget>, StoreError> {
        Ok(self
            .store
            .get::<NotificationWebhook>(&NotificationWebhook::key_of(tenant))
            .await?
            .map(|n| n.webhook))
    }

    /// Records the event (once per event id) and delivers it at once. An event emitted
    /// before is not sent again (a pending or failed one is the daily check's to
    /// redeliver): its stored notice is returned as it is.
    pub async fn emit(&self, notice: Notice) -> Result<Notice, NoticeError> {
        match self.store.create(&notice).await {
            Ok(()) => self.deliver(notice).await,
            Err(StoreError::AlreadyExists) => Ok(self
                .store
                .get::<Notice>(&notice.key())
                .await?
                .unwrap_or(notice)),
            Err(err) => Err(err.into()),
        }
    }

    /// Writes a notice ahead of its event, not to be sent before [`Notifier::release`].
    /// Again for the same event id: nothing changes.
    pub async fn hold(&self, mut notice: Notice) -> Result<(), NoticeError> {
        notice.status = NoticeStatus::Held;
        match self.store.create(&notice).await {
            Ok(()) | Err(StoreError::AlreadyExists) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The event of a held notice happened: `data` is added and it is delivered.
    /// A notice released before is left as it is (delivered, skipped, or failed — a
    /// failed one is then visible in the audit log and the metric).
    pub async fn release(
        &self,
        tenant: &TenantId,
        event_id: &str,
        data: Map<String, Value>,
    ) -> Result<Option<Notice>, NoticeError> {
        let Some(mut notice) = self
            .store
            .get::<Notice>(&Notice::key_of(tenant, event_id))
            .await?
        else {
            return Ok(None);
        };
        match notice.status {
            NoticeStatus::Held => {
                notice.status = NoticeStatus::Pending;
                notice.occurred_at = self.now();
                notice.data.extend(data);
                Ok(Some(self.deliver(notice).await?))
            }
            NoticeStatus::Pending => Ok(Some(self.deliver(notice).await?)),
            _ => Ok(Some(notice)),
        }
    }

    /// One delivery round of a pending or failed notice: claimed first (a
    /// version-conditional write counting the attempt, so two deliverers never both
    /// send), then sent, audited and recorded. A notice another deliverer claimed
    /// first is returned unsent. Failing to deliver is not an error: the notice says
    /// `failed`, the failure is audited and counted.
    pub async fn deliver(&self, notice: Notice) -> Result<Notice, NoticeError> {
        if !matches!(notice.status, NoticeStatus::Pending | NoticeStatus::Failed) {
            return Ok(notice);
        }
        let mut notice = notice;
        let read_version = notice.version;
        notice.attempts += 1;
        notice.updated_at = self.now();
        if !self.save(&mut notice, read_version).await? {
            return Ok(self
                .store
                .get::<Notice>(&notice.key())
                .await?
                .unwrap_or(notice));
        }
        let target = match &notice.target {
            Some(target) => Some(target.clone()),
            None => self.webhook(&notice.tenant).await?,
        };
        let (status, outcome, action) = match target {
            None => (NoticeStatus::Skipped, None, "notice.skipped"),
            Some(target) => match self.send(&notice, &target).await {
                Ok(()) => (NoticeStatus::Delivered, None, "notice.sent"),
                Err(why) => (NoticeStatus::Failed, Some(why), "notice.failed"),
            },
        };
        let mut event = Event::new(self.actor.clone(), action, notice.target_name())
            .detail("kind", notice.kind.as_str())
            .detail("attempts", notice.attempts);
        if let Some(why) = &outcome {
            event = event.outcome(Outcome::Failure).detail("error", why.clone());
            crate::kernel::metrics::count(crate::kernel::metrics::names::PRIVACY_NOTICES_FAILED, 1);
            tracing::warn!(event_id = %notice.event_id, kind = notice.kind.as_str(), error = %why, "privacy notice not delivered");
        }
        // Audited before it is recorded: a crash in between sends it again later
        // (the receiver drops the duplicate by its event id), never leaves it unaudited.
        self.audit.append(&notice.tenant, event).await?;
        let now = self.now();
        notice.status = status;
        notice.last_error = outcome;
        if status == NoticeStatus::Delivered {
            notice.delivered_at = Some(now);
        }
        notice.updated_at = now;
        let claimed = notice.version;
        if !self.save(&mut notice, claimed).await? {
            tracing::warn!(event_id = %notice.event_id, "privacy notice changed while it was delivered");
        }
        Ok(notice)
    }

    /// Signs and posts the message; the error is what went wrong, without a URL, a
    /// body or a secret.
    async fn send(&self, notice: &Notice, target: &WebhookTarget) -> Result<(), String> {
        let url = webhook::destination_url(&target.url, self.allow_loopback)
            .map_err(|e| e.to_string())?;
        let secret = self
            .sealer
            .open(
                &NotificationWebhook::seal_context(&notice.tenant),
                &target.secret,
            )
            .await
            .map_err(|_| "the webhook secret could not be opened".to_owned())?;
        let body = serde_json::to_vec(&notice.message()).map_err(|e| e.to_string())?;
        self.sender
            .deliver(&url, &secret, &notice.event_id, body.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Writes the notice if it is still at `expected` (then one version on).
    async fn save(&self, notice: &mut Notice, expected: u64) -> Result<bool, StoreError> {
        notice.version = expected + 1;
        let condition = Condition::new("#v = :v").name("#v", "version").value(
            ":v",
            aws_sdk_dynamodb::types::AttributeValue::N(expected.to_string()),
        );
        match self.store.put_if(notice, condition).await {
            Ok(()) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// A request's notices, in event-id order.
    pub async fn of_request(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> Result<Vec<Notice>, StoreError> {
        self.store
            .query_all::<Notice>(&keys::tenant(tenant), &Notice::request_prefix(request_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn notice(now: DateTime<Utc>) -> Notice {
        let tenant = TenantId::parse("acme").unwrap();
        let mut data = Map::new();
        data.insert("bundle_ready".into(), Value::Bool(true));
        Notice::new(
            &tenant,
            event_ids::completed("01JH0000000000000000000000"),
            NoticeKind::Completed,
            Some("01JH0000000000000000000000"),
            now,
            data,
            now,
        )
    }

    #[test]
    fn keys_put_a_requests_notices_under_one_prefix() {
        let now = Utc::now();
        let n = notice(now);
        assert_eq!(n.key().pk, "T#acme");
        assert_eq!(n.key().sk, "NOTICE#01JH0000000000000000000000:completed");
        assert!(
            n.key()
                .sk
                .starts_with(&Notice::request_prefix("01JH0000000000000000000000"))
        );
        // The account's notice is under no request's prefix.
        assert!(event_ids::account_purged("01JH").starts_with(event_ids::ACCOUNT_PREFIX));
        assert_eq!(
            event_ids::deadline("r", NaiveDate::from_ymd_opt(2025, 2, 28).unwrap()),
            "r:deadline:2025-02-28"
        );
        assert_eq!(event_ids::extended("r", 1), "r:extended:1");
        assert_eq!(event_ids::overdue("r", "response"), "r:overdue:response");
    }

    #[test]
    fn the_message_has_the_documented_shape() {
        let now = Utc::now();
        let message = serde_json::to_value(notice(now).message()).unwrap();
        let mut fields: Vec<&str> = message
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "data",
                "event_id",
                "occurred_at",
                "request_id",
                "tenant",
                "type"
            ]
        );
        assert_eq!(message["type"], "privacy_request.completed");
        for kind in [
            NoticeKind::Received,
            NoticeKind::VerificationIssued,
            NoticeKind::Extended,
            NoticeKind::Completed,
            NoticeKind::DeadlineApproaching,
            NoticeKind::Overdue,
            NoticeKind::AccountPurged,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn every_notice_error_answers_as_its_cause() {
        use crate::kernel::http::table::{internal, row, shown};

        assert_eq!(
            row(&NoticeError::Store(StoreError::Dynamo("timeout".into()))),
            internal()
        );
        assert_eq!(
            row(&NoticeError::Store(StoreError::ConditionFailed)),
            shown(409, "conflict", None)
        );
    }

    #[test]
    fn only_pending_and_failed_notices_are_due_after_the_wait() {
        let now = Utc::now();
        let mut n = notice(now);
        assert!(!n.due(now));
        assert!(!n.due(now + REDELIVER_AFTER - Duration::seconds(1)));
        assert!(n.due(now + REDELIVER_AFTER));
        n.status = NoticeStatus::Failed;
        assert!(n.due(now + REDELIVER_AFTER));
        for status in [
            NoticeStatus::Held,
            NoticeStatus::Delivered,
            NoticeStatus::Skipped,
        ] {
            n.status = status;
            assert!(!n.due(now + Duration::days(30)), "{status:?}");
        }
    }
}

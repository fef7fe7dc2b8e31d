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
//! Optionally by e-mail too ([`Mailer`], Amazon SES in the dsar function, where the
//! deployment has a sender and the tenant a [`NotificationEmail`]): the same message as
//! text. Each channel's outcome is kept on the notice ([`ChannelState`]); a channel
//! delivered once is not sent again by a redelivery, and the notice is `delivered`
//! only when every configured channel is.
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

    /// An export run failed (recorded `failed`; the next trigger resumes it). Once
    /// per run: a duplicate trigger resumes the run and may fail it again, and each
    /// trigger after that too; the tenant is told the first time, the export log
    /// shows every attempt.
    pub fn export_failed(run_id: &str) -> String {
        format!("{EXPORT_PREFIX}{run_id}:failed")
    }

    /// The event-id prefix of the export function's notices.
    pub const EXPORT_PREFIX: &str = "export:";

    /// The provider refused a connection's refresh token: it needs the tenant to
    /// connect again. Once per connection (`connected_at`, epoch milliseconds: a new
    /// connection is a new occurrence), whoever saw it first.
    pub fn connection_reconsent(provider: &str, connected_at_ms: i64) -> String {
        format!("{CONNECTION_PREFIX}{provider}:reconsent:{connected_at_ms}")
    }

    /// The event-id prefix of connection notices.
    pub const CONNECTION_PREFIX: &str = "connection:";

    /// Event-id prefixes of notices other functions only write (the outbox) and the
    /// dsar function delivers from the table's stream.
    pub const RELAYED_PREFIXES: [&str; 2] = [EXPORT_PREFIX, CONNECTION_PREFIX];
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
    /// An export run failed; the next trigger resumes it.
    #[serde(rename = "export.run_failed")]
    ExportRunFailed,
    /// A connection's grant was refused: exports stop until the tenant reconnects.
    #[serde(rename = "connection.needs_reconsent")]
    ConnectionNeedsReconsent,
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
            NoticeKind::ExportRunFailed => "export.run_failed",
            NoticeKind::ConnectionNeedsReconsent => "connection.needs_reconsent",
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
    /// The tenant's notification e-mail address as it was when the notice was held,
    /// for the same reason as `target` (the tenant's own contact, never a subject's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_to: Option<String>,
    /// How each channel's delivery went (`webhook`, `email`); a channel delivered
    /// once is not sent again by a later round. Empty before the first round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelState>,
    pub version: u64,
}

/// Where a notice goes: the tenant's notification webhook, or e-mail through Amazon
/// SES (only where the deployment has a sender and the tenant an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Webhook,
    Email,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }
}

/// One channel's delivery of a notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub channel: Channel,
    /// `delivered` or `failed`.
    pub status: NoticeStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Sends a notice by e-mail (Amazon SES in the dsar function); the error says what
/// went wrong without the address or the body.
pub trait Mailer: Send + Sync + std::fmt::Debug {
    fn send<'a>(&'a self, to: &'a str, subject: &'a str, text: &'a str) -> MailFuture<'a>;
}

pub type MailFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

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
            email_to: None,
            channels: Vec::new(),
            version: 1,
        }
    }

    /// The state of `channel`, if a round has tried it.
    pub fn channel(&self, channel: Channel) -> Option<&ChannelState> {
        self.channels.iter().find(|c| c.channel == channel)
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

    /// Whether another function wrote it for the dsar function to deliver
    /// ([`event_ids::RELAYED_PREFIXES`]).
    pub fn is_relayed(event_id: &str) -> bool {
        event_ids::RELAYED_PREFIXES
            .iter()
            .any(|prefix| event_id.starts_with(prefix))
    }

    /// Whether the daily check should deliver it (again): pending or failed, and its
    /// last attempt at least [`REDELIVER_AFTER`] ago.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        matches!(self.status, NoticeStatus::Pending | NoticeStatus::Failed)
            && self.updated_at + REDELIVER_AFTER <= now
    }
}

/// Writes a pending notice for the dsar function to deliver (the outbox write of a
/// function that holds no webhook secret): a conditional create, so the same event
/// twice is one item. `false`: it was written before.
pub async fn record(store: &Store, notice: &Notice) -> Result<bool, StoreError> {
    match store.create(notice).await {
        Ok(()) => Ok(true),
        Err(StoreError::AlreadyExists) => Ok(false),
        Err(err) => Err(err),
    }
}

/// The notice that a tenant's connection to `provider` (connected at `connected_at`)
/// needs re-consent: written where a refused refresh marks it, and again by the dsar
/// daily check while it stays marked (the same event id, so once).
pub fn reconsent_notice(
    tenant: &TenantId,
    provider: &str,
    connected_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Notice {
    let mut data = Map::new();
    data.insert("provider".into(), provider.into());
    data.insert("reason".into(), "invalid_grant".into());
    data.insert("reconnect".into(), format!("/connect/{provider}").into());
    Notice::new(
        tenant,
        event_ids::connection_reconsent(provider, connected_at.timestamp_millis()),
        NoticeKind::ConnectionNeedsReconsent,
        None,
        now,
        data,
        now,
    )
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

/// The tenant's notification e-mail address (`PUT /privacy/settings`,
/// `notification_email`): notices go there too where the deployment sends e-mail
/// (`NoticeEmailSender`). The tenant's own contact, never a data subject's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationEmail {
    pub tenant: TenantId,
    pub address: String,
    pub updated_at: DateTime<Utc>,
}

impl Entity for NotificationEmail {
    const KIND: &'static str = "notification_email";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant)
    }
}

impl NotificationEmail {
    pub const RECORD: &'static str = "PRIVACY#notification_email";
    /// The longest address SMTP carries.
    pub const MAX_LEN: usize = 254;

    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), Self::RECORD)
    }

    /// A plain `local@domain.tld` address: ASCII, no spaces or control characters,
    /// one `@`, a dot in the domain, at most [`Self::MAX_LEN`] characters. Display
    /// names and comments are refused (they would be free text in every mail).
    pub fn parse(raw: &str) -> Result<String, &'static str> {
        let address = raw.trim();
        let valid_char = |c: char| {
            c.is_ascii_graphic() && !matches!(c, '<' | '>' | '(' | ')' | ',' | ';' | '"' | '\\')
        };
        let (local, domain) = address.split_once('@').ok_or("must be an e-mail address")?;
        if address.is_empty()
            || address.len() > Self::MAX_LEN
            || local.is_empty()
            || domain.contains('@')
            || !address.chars().all(valid_char)
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err("must be an e-mail address (local@domain.tld, at most 254 characters)");
        }
        Ok(address.to_owned())
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
    mailer: Option<std::sync::Arc<dyn Mailer>>,
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
            mailer: None,
        }
    }

    /// Sends notices by e-mail too, to tenants that set an address.
    pub fn with_mailer(mut self, mailer: std::sync::Arc<dyn Mailer>) -> Self {
        self.mailer = Some(mailer);
        self
    }

    /// The tenant's notification e-mail address, where this notifier sends e-mail.
    pub async fn email(&self, tenant: &TenantId) -> Result<Option<String>, StoreError> {
        if self.mailer.is_none() {
            return Ok(None);
        }
        Ok(self
            .store
            .get::<NotificationEmail>(&NotificationEmail::key_of(tenant))
            .await?
            .map(|e| e.address))
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
        let email = match (&notice.email_to, &self.mailer) {
            (Some(held), Some(_)) => Some(held.clone()),
            _ => self.email(&notice.tenant).await?,
        };
        let (status, outcome) = if target.is_none() && email.is_none() {
            let event = Event::new(self.actor.clone(), "notice.skipped", notice.target_name())
                .detail("kind", notice.kind.as_str())
                .detail("attempts", notice.attempts);
            self.audit.append(&notice.tenant, event).await?;
            (NoticeStatus::Skipped, None)
        } else {
            let mut first_error = None;
            if let Some(target) = target {
                let result = self.send(&notice, &target).await;
                self.record_channel(&mut notice, Channel::Webhook, result, &mut first_error)
                    .await?;
            }
            if let Some(address) = email {
                let result = self.mail(&notice, &address).await;
                self.record_channel(&mut notice, Channel::Email, result, &mut first_error)
                    .await?;
            }
            match first_error {
                None => (NoticeStatus::Delivered, None),
                Some(why) => (NoticeStatus::Failed, Some(why)),
            }
        };
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

    /// One channel's attempt of this round (none for a channel delivered before):
    /// audited before it is recorded — a crash in between sends it again later (the
    /// receiver drops the duplicate by its event id), never leaves it unaudited.
    async fn record_channel(
        &self,
        notice: &mut Notice,
        channel: Channel,
        result: Option<Result<(), String>>,
        first_error: &mut Option<String>,
    ) -> Result<(), NoticeError> {
        let Some(result) = result else {
            return Ok(());
        };
        let action = if result.is_ok() {
            "notice.sent"
        } else {
            "notice.failed"
        };
        let mut event = Event::new(self.actor.clone(), action, notice.target_name())
            .detail("kind", notice.kind.as_str())
            .detail("channel", channel.as_str())
            .detail("attempts", notice.attempts);
        if let Err(why) = &result {
            event = event.outcome(Outcome::Failure).detail("error", why.clone());
            crate::kernel::metrics::count(crate::kernel::metrics::names::PRIVACY_NOTICES_FAILED, 1);
            tracing::warn!(event_id = %notice.event_id, kind = notice.kind.as_str(), channel = channel.as_str(), error = %why, "privacy notice not delivered");
        }
        self.audit.append(&notice.tenant, event).await?;
        let now = self.now();
        let index = match notice.channels.iter().position(|c| c.channel == channel) {
            Some(index) => index,
            None => {
                notice.channels.push(ChannelState {
                    channel,
                    status: NoticeStatus::Pending,
                    attempts: 0,
                    last_error: None,
                    delivered_at: None,
                });
                notice.channels.len() - 1
            }
        };
        let state = &mut notice.channels[index];
        state.attempts += 1;
        match result {
            Ok(()) => {
                state.status = NoticeStatus::Delivered;
                state.last_error = None;
                state.delivered_at = Some(now);
            }
            Err(why) => {
                state.status = NoticeStatus::Failed;
                state.last_error = Some(why.clone());
                first_error.get_or_insert(why);
            }
        }
        Ok(())
    }

    /// Whether this round sends on `channel`: not once it was delivered.
    fn delivered_on(notice: &Notice, channel: Channel) -> bool {
        notice
            .channel(channel)
            .is_some_and(|c| c.status == NoticeStatus::Delivered)
    }

    /// E-mails the message (`None`: delivered before, or no mailer).
    async fn mail(&self, notice: &Notice, to: &str) -> Option<Result<(), String>> {
        let mailer = self.mailer.as_ref()?;
        if Self::delivered_on(notice, Channel::Email) {
            return None;
        }
        let subject = format!("custody notice: {}", notice.kind.as_str());
        let text = match serde_json::to_string_pretty(&notice.message()) {
            Ok(json) => format!(
                "A privacy notice for tenant {} (event {}).\n\n{json}\n",
                notice.tenant, notice.event_id
            ),
            Err(err) => return Some(Err(err.to_string())),
        };
        Some(mailer.send(to, &subject, &text).await)
    }

    /// Signs and posts the message; the error is what went wrong, without a URL, a
    /// body or a secret.
    async fn send(&self, notice: &Notice, target: &WebhookTarget) -> Option<Result<(), String>> {
        if Self::delivered_on(notice, Channel::Webhook) {
            return None;
        }
        Some(self.post(notice, target).await)
    }

    async fn post(&self, notice: &Notice, target: &WebhookTarget) -> Result<(), String> {
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
        assert_eq!(event_ids::export_failed("R1"), "export:R1:failed");
        assert!(Notice::is_relayed(&event_ids::export_failed("R1")));
        assert_eq!(
            event_ids::connection_reconsent("highlevel", 1700000000000),
            "connection:highlevel:reconsent:1700000000000"
        );
        assert!(Notice::is_relayed(&event_ids::connection_reconsent(
            "crm", 1
        )));
        assert!(!Notice::is_relayed(&event_ids::completed("r")));
        assert!(!Notice::is_relayed(&event_ids::account_purged("j")));
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
            NoticeKind::ExportRunFailed,
            NoticeKind::ConnectionNeedsReconsent,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn a_notification_email_is_a_plain_address() {
        assert_eq!(
            NotificationEmail::parse(" privacy@acme.example ").as_deref(),
            Ok("privacy@acme.example")
        );
        for bad in [
            "",
            "acme.example",
            "@acme.example",
            "a@b@acme.example",
            "ops@localhost",
            "ops@.acme.example",
            "ops@acme..example",
            "Ops <ops@acme.example>",
            "o ps@acme.example",
            "ops\n@acme.example",
            "öps@acme.example",
        ] {
            assert!(NotificationEmail::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@acme.example", "a".repeat(NotificationEmail::MAX_LEN));
        assert!(NotificationEmail::parse(&long).is_err());
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

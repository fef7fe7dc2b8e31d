//! Privacy notices to the tenant (`custody::notice`), from where the dsar function
//! sees things happen: a request received (and acknowledged), a verification code
//! issued, an extension given, a request completed, a deadline approaching or passed
//! (the daily check), an account purge finished.
//!
//! Where each is written, so none is lost:
//! - **received** and **verification issued**: in the request's own transaction
//!   (never a request without them), then delivered at once;
//! - **completed**: after the completion is saved; a failure to write it fails the
//!   stream record, whose retry finds the request complete and writes it then (an
//!   event id is written once, so a duplicate record sends nothing more);
//! - **extended**: after the extension is saved (a failure is logged and counted), and
//!   again by every daily check while the request is open (written once);
//! - **deadline approaching / overdue**: by the daily check, once per deadline date
//!   and once per kind of deadline;
//! - **account purged**: held at `DELETE /account` with the webhook as it was then
//!   (the purge deletes the settings), released when the purge is done.
//!
//! - **export run failed** and **connection needs re-consent**: written to the outbox
//!   by the export function (and `custody::oauth` wherever a refresh is refused),
//!   which hold no notification secret; delivered here from the table's stream
//!   ([`deliver_relayed`], the template filters those inserts for us).
//!
//! The daily check also delivers again every pending or failed notice whose last
//! attempt is older than [`custody::notice::REDELIVER_AFTER`].

use chrono::{DateTime, Utc};
use custody::api::Problem;
use custody::notice::{Notice, NoticeError, NoticeKind, NotificationWebhook, Notifier, event_ids};
use custody::privacy::{PrivacyRequest, RequestKind, Status, TenantZone, WebhookTarget};
use custody::store::{Item, Store, StoreError};
use custody::tenant::TenantId;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Deps;
use crate::deadlines::Overdue;
use crate::process::{ACTOR, ProcessError};

/// How long an API call waits for its notices before it answers (API Gateway gives it
/// 30 s, and a receiver that hangs takes a request timeout per attempt). A notice not
/// delivered by then stays `pending` and the daily check delivers it.
pub const HTTP_WAIT: std::time::Duration = std::time::Duration::from_secs(8);
/// How long the daily check spends on notices (the function has 300 s); what is left
/// waits for the next day's check.
pub const DAILY_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// The notifier over the function's clients.
pub fn notifier(deps: &Deps) -> Notifier {
    let notifier = Notifier::new(
        deps.store.clone(),
        deps.sealer.clone(),
        deps.webhooks.clone(),
        deps.audit.clone(),
        ACTOR,
        deps.dsar.egress.allow_loopback,
    );
    match &deps.mailer {
        Some(mailer) => notifier.with_mailer(mailer.clone()),
        None => notifier,
    }
}

fn data(pairs: Value) -> Map<String, Value> {
    match pairs {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// What every request notice says about its request: kind, regulation and dates.
fn about(request: &PrivacyRequest) -> Map<String, Value> {
    data(json!({
        "request_kind": request.kind.as_str(),
        "regulation": request.regulation.as_str(),
        "received_at": request.deadlines.received_at,
        "respond_by": request.deadlines.respond_by(),
    }))
}

fn request_notice(
    request: &PrivacyRequest,
    event_id: String,
    kind: NoticeKind,
    occurred_at: DateTime<Utc>,
    extra: Value,
    now: DateTime<Utc>,
) -> Notice {
    let mut fields = about(request);
    fields.extend(data(extra));
    Notice::new(
        &request.tenant,
        event_id,
        kind,
        Some(&request.id),
        occurred_at,
        fields,
        now,
    )
}

/// The notices of a request being filed: received (the acknowledgement), and
/// verification issued when a code went out (expiring at `code_expires_at`, epoch
/// seconds) — the code itself is never in a notice.
pub fn filed(
    request: &PrivacyRequest,
    code_expires_at: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Notice> {
    let mut notices = vec![request_notice(
        request,
        event_ids::received(&request.id),
        NoticeKind::Received,
        request.acknowledged_at,
        json!({
            "acknowledged_at": request.acknowledged_at,
            "ack_due": request.deadlines.ack_due,
            "due_at": request.deadlines.due_at,
            "verification_required": request.status == Status::IdentityUnverified,
        }),
        now,
    )];
    if let Some(expires_at) = code_expires_at {
        notices.push(request_notice(
            request,
            event_ids::verification_issued(&request.id),
            NoticeKind::VerificationIssued,
            now,
            json!({ "code_expires_at": DateTime::from_timestamp(expires_at, 0) }),
            now,
        ));
    }
    notices
}

/// Delivers notices written in a request's transaction. Failures are the notices'
/// (recorded on them, redelivered by the daily check), never the caller's.
pub async fn deliver_filed(deps: &Deps, notices: Vec<Notice>) {
    let notifier = notifier(deps);
    let all = async {
        for notice in notices {
            let event_id = notice.event_id.clone();
            if let Err(err) = notifier.deliver(notice).await {
                tracing::error!(error = %err, event_id, "privacy notice not recorded; the daily check delivers it");
            }
        }
    };
    if tokio::time::timeout(HTTP_WAIT, all).await.is_err() {
        tracing::warn!(
            "privacy notices still pending when the request was answered; the daily check delivers them"
        );
    }
}

/// The extension notice of a request (none without an extension). The reason may
/// name people: only that one was given.
pub fn extended(request: &PrivacyRequest, now: DateTime<Utc>) -> Option<Notice> {
    let extension = request.extension.as_ref()?;
    Some(request_notice(
        request,
        event_ids::extended(&request.id, 1),
        NoticeKind::Extended,
        extension.extended_at,
        json!({
            "due_at": request.deadlines.due_at,
            "previous_due_at": extension.previous_due_at,
            "extension": extension.length,
            "reason_given": true,
        }),
        now,
    ))
}

/// After an extension is saved: its notice. A failure is logged and counted; the
/// daily check writes it while the request is open.
pub async fn on_extended(deps: &Deps, request: &PrivacyRequest) {
    let Some(notice) = extended(request, deps.now()) else {
        return;
    };
    match tokio::time::timeout(HTTP_WAIT, notifier(deps).emit(notice)).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            custody::metrics::count(custody::metrics::names::PRIVACY_NOTICES_FAILED, 1);
            tracing::error!(error = %err, request_id = %request.id, "extension notice not recorded; the daily check writes it");
        }
        Err(_) => {
            tracing::warn!(request_id = %request.id, "extension notice still pending when the request was answered; the daily check delivers it");
        }
    }
}

/// The completion notice of an access, erasure or rectification request (none for a
/// restriction, or before it is complete): the certificate's path for an erasure,
/// that the bundle is ready for an access request (the bundle itself is fetched
/// through the API), the counts of a rectification.
pub fn completed(request: &PrivacyRequest, now: DateTime<Utc>) -> Option<Notice> {
    if request.status != Status::Complete {
        return None;
    }
    let extra = match request.kind {
        RequestKind::Erasure => json!({
            "certificate": format!("/privacy/requests/{}/certificate", request.id),
        }),
        RequestKind::Access => json!({ "bundle_ready": true }),
        // Counts only: never a corrected value.
        RequestKind::Rectify => {
            let r = request.rectification.clone().unwrap_or_default();
            json!({ "files_rewritten": r.files_rewritten, "rows_rectified": r.rows_rectified })
        }
        RequestKind::Restrict => return None,
    };
    let at = request.completed_at.unwrap_or(request.updated_at);
    let mut extra = data(extra);
    extra.insert("completed_at".into(), json!(at));
    Some(request_notice(
        request,
        event_ids::completed(&request.id),
        NoticeKind::Completed,
        at,
        Value::Object(extra),
        now,
    ))
}

/// After a request is complete (and again for a duplicate record of it): its notice,
/// written once. A failure fails the record, so its retry writes it.
pub async fn on_completed(deps: &Deps, request: &PrivacyRequest) -> Result<(), ProcessError> {
    if let Some(notice) = completed(request, deps.now()) {
        notifier(deps).emit(notice).await?;
    }
    Ok(())
}

/// A notice another function wrote to the outbox (an export run failed, a connection
/// needs re-consent), from its stream record: delivered once, as it is stored now (a
/// duplicate or late record finds it delivered and sends nothing). Only relayed event
/// ids: the dsar function delivers its own notices where it writes them. A failed
/// delivery is the notice's (recorded, redelivered by the daily check); a store or
/// audit failure fails the record, so it is retried.
pub async fn deliver_relayed(
    deps: &Deps,
    tenant: &TenantId,
    event_id: &str,
) -> Result<(), NoticeError> {
    if !Notice::is_relayed(event_id) {
        return Ok(());
    }
    let Some(notice) = deps
        .store
        .get::<Notice>(&Notice::key_of(tenant, event_id))
        .await?
    else {
        return Ok(());
    };
    if notice.status == custody::notice::NoticeStatus::Pending && notice.attempts == 0 {
        notifier(deps).deliver(notice).await?;
    }
    Ok(())
}

/// A request's notices as `GET /privacy/requests/{id}` shows them.
pub async fn of_request(
    deps: &Deps,
    tenant: &TenantId,
    request_id: &str,
) -> Result<Vec<Value>, StoreError> {
    let mut notices = notifier(deps).of_request(tenant, request_id).await?;
    notices.sort_by_key(|n| (n.created_at, n.kind));
    Ok(notices
        .iter()
        .map(|n| {
            json!({
                "event_id": n.event_id,
                "type": n.kind,
                "status": n.status,
                "attempts": n.attempts,
                "delivered_at": n.delivered_at,
                "channels": n.channels.iter().map(|c| json!({
                    "channel": c.channel,
                    "status": c.status,
                    "attempts": c.attempts,
                    "delivered_at": c.delivered_at,
                })).collect::<Vec<_>>(),
            })
        })
        .collect())
}

// ---------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------

/// `notification_webhook` in `PUT /privacy/settings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    url: String,
    secret: SecretString,
}

/// What a settings update does to the notification webhook.
#[derive(Debug)]
pub enum WebhookChange {
    /// Left out: as it is (configured or not).
    Keep(bool),
    /// `null`: removed.
    Remove,
    /// A new webhook, its secret sealed.
    Set(NotificationWebhook),
}

impl WebhookChange {
    /// Whether a webhook is configured after the change.
    pub fn configured(&self) -> bool {
        match self {
            WebhookChange::Keep(configured) => *configured,
            WebhookChange::Remove => false,
            WebhookChange::Set(_) => true,
        }
    }
}

/// Checks (URL through the egress policy, secret length) and seals a new webhook,
/// before anything of the update is written; a 400 names the field.
pub async fn prepare_webhook(
    deps: &Deps,
    tenant: &TenantId,
    input: Option<Option<WebhookInput>>,
) -> Result<WebhookChange, Problem> {
    let input = match input {
        None => {
            let current = notifier(deps).webhook(tenant).await?;
            return Ok(WebhookChange::Keep(current.is_some()));
        }
        Some(None) => return Ok(WebhookChange::Remove),
        Some(Some(input)) => input,
    };
    let url = custody::webhook::destination_url(&input.url, deps.dsar.egress.allow_loopback)
        .map_err(|e| Problem::bad_request("notification_webhook.url", e.to_string()))?;
    custody::webhook::check_secret(&input.secret)
        .map_err(|e| Problem::bad_request("notification_webhook.secret", e.to_string()))?;
    let sealed = deps
        .sealer
        .seal(&NotificationWebhook::seal_context(tenant), &input.secret)
        .await?;
    Ok(WebhookChange::Set(NotificationWebhook {
        tenant: tenant.clone(),
        webhook: WebhookTarget {
            url: url.to_string(),
            secret: sealed,
        },
        updated_at: deps.now(),
    }))
}

/// Writes the change (after the rest of the settings).
pub async fn apply_webhook(
    deps: &Deps,
    tenant: &TenantId,
    change: &WebhookChange,
) -> Result<(), StoreError> {
    match change {
        WebhookChange::Keep(_) => Ok(()),
        WebhookChange::Remove => {
            deps.store
                .delete(&NotificationWebhook::key_of(tenant))
                .await
        }
        WebhookChange::Set(webhook) => deps.store.put(webhook).await,
    }
}

/// What a settings update does to the notification e-mail address: left out, kept;
/// `null`, removed; a valid address, set. A 400 names the field.
pub fn prepare_email(
    deps: &Deps,
    tenant: &TenantId,
    input: Option<Option<String>>,
) -> Result<Option<Option<custody::notice::NotificationEmail>>, Problem> {
    Ok(match input {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => {
            let address = custody::notice::NotificationEmail::parse(&raw)
                .map_err(|e| Problem::bad_request("notification_email", e))?;
            Some(Some(custody::notice::NotificationEmail {
                tenant: tenant.clone(),
                address,
                updated_at: deps.now(),
            }))
        }
    })
}

/// Writes the e-mail change (after the rest of the settings).
pub async fn apply_email(
    deps: &Deps,
    tenant: &TenantId,
    change: &Option<Option<custody::notice::NotificationEmail>>,
) -> Result<(), StoreError> {
    match change {
        None => Ok(()),
        Some(None) => {
            deps.store
                .delete(&custody::notice::NotificationEmail::key_of(tenant))
                .await
        }
        Some(Some(email)) => deps.store.put(email).await,
    }
}

/// The tenant's notification e-mail address (`GET /privacy/settings`), and whether
/// this deployment sends e-mail at all.
pub async fn email_shown(deps: &Deps, tenant: &TenantId) -> Result<Value, StoreError> {
    Ok(deps
        .store
        .get::<custody::notice::NotificationEmail>(&custody::notice::NotificationEmail::key_of(
            tenant,
        ))
        .await?
        .map(|e| Value::String(e.address))
        .unwrap_or(Value::Null))
}

/// The URL of the tenant's notification webhook (`GET /privacy/settings`; never the
/// secret).
pub async fn webhook_shown(deps: &Deps, tenant: &TenantId) -> Result<Value, StoreError> {
    Ok(notifier(deps)
        .webhook(tenant)
        .await?
        .map(|hook| json!({ "url": hook.url }))
        .unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------
// The account
// ---------------------------------------------------------------------------------

/// At `DELETE /account`: the purge's notice, held with the webhook as it is now
/// (`webhook`, read before the job exists, so before the purge can delete it).
pub async fn hold_account_purged(
    deps: &Deps,
    tenant: &TenantId,
    job_id: &str,
    webhook: Option<WebhookTarget>,
    email: Option<String>,
) -> Result<(), NoticeError> {
    let now = deps.now();
    let mut notice = Notice::new(
        tenant,
        event_ids::account_purged(job_id),
        NoticeKind::AccountPurged,
        None,
        now,
        data(json!({ "job_id": job_id })),
        now,
    );
    notice.target = webhook;
    notice.email_to = email;
    notifier(deps).hold(notice).await
}

/// When the purge is done: the held notice goes out (once).
pub async fn release_account_purged(
    deps: &Deps,
    tenant: &TenantId,
    job_id: &str,
    certificate_id: Option<&str>,
    requested_at: DateTime<Utc>,
) -> Result<(), NoticeError> {
    notifier(deps)
        .release(
            tenant,
            &event_ids::account_purged(job_id),
            data(json!({
                "requested_at": requested_at,
                "purged_at": deps.now(),
                "certificate_id": certificate_id,
            })),
        )
        .await
        .map(|_| ())
}

/// The key of the held purge notice, which the purge's passes leave for last.
pub fn is_account_notice(tenant: &TenantId, pk: &str, sk: &str) -> bool {
    pk == custody::store::keys::tenant(tenant)
        && sk
            .strip_prefix(custody::notice::KEY_PREFIX)
            .is_some_and(|event| event.starts_with(event_ids::ACCOUNT_PREFIX))
}

// ---------------------------------------------------------------------------------
// The daily check
// ---------------------------------------------------------------------------------

/// What the daily check does for notices, gathered while it scans: deadline notices
/// to write and due notices to deliver again.
#[derive(Debug, Default)]
pub struct DailyNotices {
    emit: Vec<Notice>,
    redeliver: Vec<Notice>,
}

/// What the daily notice pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DailyReport {
    pub written: u64,
    pub redelivered: u64,
    pub delivered: u64,
    pub failed: u64,
    pub errors: u64,
    /// Left for the next check: [`DAILY_WAIT`] was spent.
    pub left: u64,
}

impl DailyNotices {
    /// Looks at one scanned item (a privacy request, a notice, or a connection marked
    /// for re-consent).
    pub fn observe(&mut self, item: &Item, now: DateTime<Utc>) {
        let kind = item.get("kind").and_then(|k| k.as_s().ok());
        if kind.map(String::as_str) == Some(<Notice as custody::store::Entity>::KIND) {
            if let Ok(notice) = Store::decode::<Notice>(item.clone())
                && notice.due(now)
            {
                self.redeliver.push(notice);
            }
        } else if kind.map(String::as_str) == Some(<PrivacyRequest as custody::store::Entity>::KIND)
            && let Ok(request) = Store::decode::<PrivacyRequest>(item.clone())
        {
            self.emit.extend(deadline_notices(&request, now));
        } else if kind.map(String::as_str)
            == Some(<custody::oauth::Connection as custody::store::Entity>::KIND)
            && let Ok(connection) = Store::decode::<custody::oauth::Connection>(item.clone())
            && connection.status == custody::oauth::ConnectionStatus::NeedsReconsent
        {
            self.emit.push(custody::notice::reconsent_notice(
                &connection.tenant,
                &connection.provider,
                connection.connected_at,
                now,
            ));
        }
    }

    /// Writes and delivers the deadline notices, then delivers the due ones again.
    /// A store or audit failure is counted and the rest still run; the first is
    /// returned so the check fails (and alarms).
    pub async fn run(self, deps: &Deps) -> Result<DailyReport, NoticeError> {
        let notifier = notifier(deps);
        let started = std::time::Instant::now();
        let mut report = DailyReport::default();
        let mut first_error = None;
        let mut tally = |report: &mut DailyReport, result: Result<Notice, NoticeError>| match result
        {
            Ok(notice) => match notice.status {
                custody::notice::NoticeStatus::Delivered => report.delivered += 1,
                custody::notice::NoticeStatus::Failed => report.failed += 1,
                _ => {}
            },
            Err(err) => {
                report.errors += 1;
                tracing::error!(error = %err, "privacy notice pass");
                first_error.get_or_insert(err);
            }
        };
        for notice in self.emit {
            if started.elapsed() > DAILY_WAIT {
                report.left += 1;
                continue;
            }
            // Emitted before (most days, for most of them): nothing happens.
            report.written += 1;
            let result = notifier.emit(notice).await;
            tally(&mut report, result);
        }
        for notice in self.redeliver {
            if started.elapsed() > DAILY_WAIT {
                report.left += 1;
                continue;
            }
            report.redelivered += 1;
            let result = notifier.deliver(notice).await;
            tally(&mut report, result);
        }
        tracing::info!(
            considered = report.written,
            redelivered = report.redelivered,
            delivered = report.delivered,
            failed = report.failed,
            errors = report.errors,
            left = report.left,
            "privacy notice pass"
        );
        match first_error {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }
}

/// The notices an open request is due by `now`: its response deadline within
/// [`custody::notice::DEADLINE_WARNING`] (one per deadline date), each kind of
/// deadline it is past (one per kind), and its extension's (written once; this
/// repairs a notice the extension could not write).
pub fn deadline_notices(request: &PrivacyRequest, now: DateTime<Utc>) -> Vec<Notice> {
    let mut notices = Vec::new();
    if !request.status.is_open() {
        return notices;
    }
    let respond_by = request.deadlines.respond_by();
    if respond_by > now && respond_by - now <= custody::notice::DEADLINE_WARNING {
        let zone: TenantZone = request.time_zone.parse().unwrap_or_default();
        notices.push(request_notice(
            request,
            event_ids::deadline(&request.id, zone.date_of(respond_by)),
            NoticeKind::DeadlineApproaching,
            now,
            json!({ "days_left": custody::privacy::days_left(respond_by, now) }),
            now,
        ));
    }
    if let Some(which) = crate::deadlines::overdue(request, now) {
        let (name, due) = match which {
            Overdue::Acknowledgement => ("acknowledgement", Some(request.deadlines.ack_due)),
            Overdue::InitialResponse => {
                ("initial_response", request.deadlines.initial_response_due)
            }
            Overdue::Response => ("response", Some(respond_by)),
        };
        notices.push(request_notice(
            request,
            event_ids::overdue(&request.id, name),
            NoticeKind::Overdue,
            now,
            json!({ "deadline": name, "was_due": due }),
            now,
        ));
    }
    notices.extend(extended(request, now));
    notices
}

//! The daily deadline check: how many open privacy requests are past a deadline, and
//! how many account purges have not finished in time, as gauges
//! ([`names::PRIVACY_REQUESTS_OVERDUE`], [`names::ACCOUNT_PURGES_STUCK`]) that the
//! template's alarms watch. A schedule (`template.yaml`, `DeadlineCheck`) invokes the
//! function once a day with [`DeadlineCheck`]'s shape.
//!
//! # Finding every tenant's open requests
//!
//! A filtered, paginated scan of the table for the two kinds, run once a day. A query
//! would need an index over all tenants (a sparse GSI keyed by deadline, written by
//! every writer of a request or a job, kept right forever); the scan needs nothing
//! new, misses nothing whatever the key layout, and costs one read of the table a day
//! — on demand, about 0.13 M read units per GB, so cents a day at gigabytes; it runs
//! at roughly 1 MB per page and has to finish within the function's timeout, which
//! bounds it to a few GB of table. Past that, the sparse GSI is the next step (see
//! docs/ARCHITECTURE.md, "Metrics and alarms").

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Duration, Utc};
use custody::metrics::{self, names};
use custody::privacy::{AccountDeletion, PrivacyRequest};
use custody::store::{Entity as _, Item, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Deps;
use crate::process::ProcessError;

/// An account purge takes minutes; one still running a day after it was requested is
/// stuck (the promise is 30 days, so the alarm leaves 29 to fix it).
pub const PURGE_TIME: Duration = Duration::hours(24);

/// The scheduled event: `{"check": "deadlines"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineCheck {
    pub check: String,
}

impl DeadlineCheck {
    pub const CHECK: &'static str = "deadlines";

    /// Whether an event is the scheduled deadline check (and nothing else: HTTP
    /// events have `requestContext`, stream events `Records`).
    pub fn matches(payload: &Value) -> bool {
        payload.get("check").and_then(Value::as_str) == Some(Self::CHECK)
            && payload.get("Records").is_none()
            && payload.get("requestContext").is_none()
    }
}

/// What one check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineReport {
    /// Open requests past their acknowledgement, initial-response or response deadline.
    pub requests_overdue: u64,
    /// Account purges still running [`PURGE_TIME`] after they were requested.
    pub purges_stuck: u64,
    /// Open requests and running purges looked at.
    pub open_requests: u64,
    pub running_purges: u64,
}

/// Why a request counts as overdue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// Acknowledged after `ack_due`.
    Acknowledgement,
    /// Not answered by the earlier of the regulation's and the product's date.
    Response,
    /// No substantive first response within the product's 7 business days.
    InitialResponse,
}

/// Whether an open request is past a deadline at `now` (`None`: on time, or closed).
pub fn overdue(request: &PrivacyRequest, now: DateTime<Utc>) -> Option<Overdue> {
    if !request.status.is_open() {
        return None;
    }
    if request.overdue(now) {
        Some(Overdue::Response)
    } else if !request.acknowledged_in_time || request.acknowledged_at > request.deadlines.ack_due {
        Some(Overdue::Acknowledgement)
    } else if request.initial_response_overdue(now) {
        Some(Overdue::InitialResponse)
    } else {
        None
    }
}

/// Whether a purge job is past [`PURGE_TIME`] at `now` (a finished purge deletes its
/// job, so every job found is unfinished).
pub fn stuck(job: &AccountDeletion, now: DateTime<Utc>) -> bool {
    now - job.requested_at > PURGE_TIME
}

/// Runs the check, sets the two gauges and logs each overdue request and stuck purge
/// by id (never a tenant, subject or identifier).
pub async fn check(deps: &Deps) -> Result<DeadlineReport, ProcessError> {
    let now = deps.now();
    let mut report = DeadlineReport::default();
    let mut start: Option<Item> = None;
    let mut notices = crate::notices::DailyNotices::default();
    loop {
        let out = deps
            .store
            .client()
            .scan()
            .table_name(deps.store.table())
            // Connections marked for re-consent too: their notice is written again
            // (once per event id) in case the refresh that marked one could not.
            .filter_expression(
                "#kind IN (:request, :job, :notice) OR (#kind = :connection AND #status = :reconsent)",
            )
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(
                ":connection",
                AttributeValue::S(custody::oauth::Connection::KIND.to_owned()),
            )
            .expression_attribute_values(":reconsent", AttributeValue::S("needs_reconsent".into()))
            .expression_attribute_values(
                ":request",
                AttributeValue::S(PrivacyRequest::KIND.to_owned()),
            )
            .expression_attribute_values(
                ":job",
                AttributeValue::S(AccountDeletion::KIND.to_owned()),
            )
            .expression_attribute_values(
                ":notice",
                AttributeValue::S(custody::notice::Notice::KIND.to_owned()),
            )
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| ProcessError::Store(StoreError::Dynamo(custody::aws::error_text(&e))))?;
        for item in out.items.unwrap_or_default() {
            notices.observe(&item, now);
            tally(&mut report, item, now);
        }
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => break,
        }
    }
    metrics::gauge(
        names::PRIVACY_REQUESTS_OVERDUE,
        report.requests_overdue as f64,
    );
    metrics::gauge(names::ACCOUNT_PURGES_STUCK, report.purges_stuck as f64);
    tracing::info!(
        requests_overdue = report.requests_overdue,
        purges_stuck = report.purges_stuck,
        open_requests = report.open_requests,
        running_purges = report.running_purges,
        "deadline check"
    );
    // Deadline notices to the tenants, and notices whose delivery failed, again.
    notices.run(deps).await?;
    Ok(report)
}

fn tally(report: &mut DeadlineReport, item: Item, now: DateTime<Utc>) {
    let kind = match item.get("kind").and_then(|k| k.as_s().ok()) {
        Some(kind) => kind.clone(),
        None => return,
    };
    if kind == PrivacyRequest::KIND {
        let request: PrivacyRequest = match Store::decode(item) {
            Ok(request) => request,
            Err(err) => {
                // Counted as overdue: a request the check cannot read is one nobody
                // is sure is being answered.
                tracing::error!(error = %err, "privacy request unreadable by the deadline check");
                report.requests_overdue += 1;
                return;
            }
        };
        if !request.status.is_open() {
            return;
        }
        report.open_requests += 1;
        if let Some(which) = overdue(&request, now) {
            report.requests_overdue += 1;
            tracing::warn!(
                request_id = %request.id,
                deadline = ?which,
                status = request.status.as_str(),
                regulation = request.regulation.as_str(),
                respond_by = %request.deadlines.respond_by().to_rfc3339(),
                "privacy request overdue"
            );
        }
    } else if kind == AccountDeletion::KIND {
        let job: AccountDeletion = match Store::decode(item) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(error = %err, "account deletion unreadable by the deadline check");
                report.purges_stuck += 1;
                return;
            }
        };
        report.running_purges += 1;
        if stuck(&job, now) {
            report.purges_stuck += 1;
            tracing::warn!(
                job_id = %job.id,
                requested_at = %job.requested_at.to_rfc3339(),
                "account purge not finished in time"
            );
        }
    }
}

//! The HTTP routes. Roles: admins create, extend and erase, manage consent, settings
//! and the account; viewers (and up) read status and certificates; any caller of the
//! tenant may submit a subject's verification code (the code is the proof).
//! `GET /privacy/public-key` is public so anyone can verify a certificate.
//! `GET /retention` (viewer and up) shows the retention table the privacy policy promises.

use std::collections::HashSet;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_s3::presigning::PresigningConfig;
use chrono::{DateTime, Duration, Utc};
use custody::api::{
    Caller, Problem, Role, caller, ensure_owned, json_body, json_response, path_param, route_key,
};
use custody::audit::{Event, Outcome};
use custody::privacy::{
    ConsentChange, ConsentRecord, ConsentState, Correction, Deadlines, ExtensionLength,
    MAX_CONSENT_TEXT_LEN, MAX_TEXT_LEN, MAX_VERIFICATION_ATTEMPTS, PrivacyError, PrivacyRequest,
    PrivacySettings, Rectification, Regulation, RequestKind, Restriction, RestrictionGround,
    Status, TenantZone, UnknownTimeZone, VerificationCode, WebhookTarget, days_left,
    extend_deadlines, validate_purpose,
};
use custody::retention::RetentionClass;
use custody::seal::{Purpose, SealContext};
use custody::store::{Condition, Entity, Store, StoreError, keys};
use custody::subject::{Identifier, IdentifierKind, PseudonymKey, SubjectError};
use custody::subject_index::{Source, SubjectRef};
use custody::suppression::{self, Scope as SuppressionScope, Suppression};
use custody::tenant::TenantId;
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::process::{ProcessError, base_event};
use crate::{Deps, account};

/// Largest JSON body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// How far in the future a `received_at` may be (clock skew).
pub const RECEIVED_AT_SKEW: Duration = Duration::minutes(5);

pub async fn dispatch(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let route = route_key(req).unwrap_or_default();
    if route == "GET /privacy/public-key" {
        return public_key(deps).await;
    }
    let caller = caller(req)?;
    // Writers refuse a tenant whose account deletion has started (`DELETE /account`
    // itself may be repeated).
    if matches!(
        route.as_str(),
        "POST /privacy/export"
            | "POST /privacy/delete"
            | "POST /privacy/requests/{id}/verify"
            | "POST /privacy/requests/{id}/extend"
            | "PUT /privacy/consent"
            | "PUT /privacy/settings"
            | "POST /privacy/restrict"
            | "POST /privacy/rectify"
            | "POST /privacy/requests/{id}/lift"
    ) {
        custody::privacy::ensure_open(&deps.store, &caller.tenant).await?;
    }
    match route.as_str() {
        "POST /privacy/export" => create(deps, req, &caller, RequestKind::Access).await,
        "POST /privacy/delete" => create(deps, req, &caller, RequestKind::Erasure).await,
        "POST /privacy/restrict" => create(deps, req, &caller, RequestKind::Restrict).await,
        "POST /privacy/rectify" => create(deps, req, &caller, RequestKind::Rectify).await,
        "POST /privacy/requests/{id}/lift" => lift(deps, req, &caller).await,
        "GET /privacy/requests" => list(deps, &caller).await,
        "GET /privacy/requests/{id}" => get_request(deps, req, &caller).await,
        "POST /privacy/requests/{id}/verify" => verify(deps, req, &caller).await,
        "POST /privacy/requests/{id}/extend" => extend(deps, req, &caller).await,
        "GET /privacy/requests/{id}/certificate" => certificate(deps, req, &caller).await,
        "POST /privacy/consent/lookup" => lookup_consent(deps, req, &caller).await,
        "PUT /privacy/consent" => put_consent(deps, req, &caller).await,
        "GET /privacy/settings" => get_settings(deps, &caller).await,
        "PUT /privacy/settings" => put_settings(deps, req, &caller).await,
        "DELETE /account" => delete_account(deps, req, &caller).await,
        "POST /account/export" => crate::account_export::post(deps, &caller).await,
        "GET /account/exports/{id}" => crate::account_export::get(deps, req, &caller).await,
        "GET /retention" => retention(&caller),
        _ => Err(Problem::not_found()),
    }
}

/// The tenant's effective retention table: every class, its period and store, what
/// is promised and how it is kept, and the import classes the tenant may choose.
fn retention(caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    json_response(
        StatusCode::OK,
        &custody::retention_view::RetentionView::for_tenant(&caller.tenant),
    )
}

/// The earliest `received_at` accepted (openapi.yaml states it).
const EARLIEST_RECEIVED_AT: DateTime<Utc> = DateTime::from_timestamp_nanos(946_684_800_000_000_000);

/// The tenant's pseudonym key. The secret is read on first use; a failure to read it
/// is ours, never the caller's: 500, logged without the secret.
async fn pseudonym_key(deps: &Deps, tenant: &TenantId) -> Result<PseudonymKey, Problem> {
    deps.pseudonym_key(tenant).await.map_err(|e| {
        tracing::error!(error = %e, "the application secret could not be read");
        Problem::internal()
    })
}

fn problem(err: ProcessError) -> Problem {
    match err {
        ProcessError::Store(e) => e.into(),
        ProcessError::Privacy(e) => e.into(),
        ProcessError::Conflict => Problem::conflict("the request changed concurrently; try again"),
        other => {
            tracing::error!(error = %other, "privacy request processing failed");
            Problem::internal()
        }
    }
}

// ---------------------------------------------------------------------------------
// Subjects
// ---------------------------------------------------------------------------------

/// How a caller names a data subject: at least one identifier.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectInput {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub contact_id: Option<String>,
    /// Country calling code for a national phone number (e.g. `44`).
    #[serde(default)]
    pub default_country_code: Option<String>,
}

impl SubjectInput {
    /// The normalised identifiers, in the order email, phone, contact id. Errors name
    /// the field, never the value.
    fn identifiers(&self, field: &str) -> Result<Vec<Identifier>, Problem> {
        let mut ids = Vec::new();
        for (kind, value) in [
            (IdentifierKind::Email, &self.email),
            (IdentifierKind::Phone, &self.phone),
            (IdentifierKind::ContactId, &self.contact_id),
        ] {
            if let Some(raw) = value {
                let id = Identifier::new(kind, raw, self.default_country_code.as_deref()).map_err(
                    |e| {
                        // The country code is the field at fault, not the number.
                        let at = match e {
                            SubjectError::PhoneInvalidDefaultCountryCode => "default_country_code",
                            _ => kind.as_str(),
                        };
                        Problem::bad_request(format!("{field}.{at}"), e.to_string())
                    },
                )?;
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Err(Problem::bad_request(
                field,
                "name the subject by at least one of email, phone or contact_id",
            ));
        }
        Ok(ids)
    }

    async fn pseudonyms(
        &self,
        deps: &Deps,
        tenant: &TenantId,
        field: &str,
    ) -> Result<Vec<String>, Problem> {
        let ids = self.identifiers(field)?;
        let key = pseudonym_key(deps, tenant).await?;
        let mut seen = HashSet::new();
        Ok(ids
            .iter()
            .map(|id| key.pseudonym(id).to_string())
            .filter(|p| seen.insert(p.clone()))
            .collect())
    }
}

fn check_text(field: &str, text: &str) -> Result<(), Problem> {
    if text.chars().count() > MAX_TEXT_LEN {
        return Err(Problem::bad_request(
            field,
            PrivacyError::TextTooLong.to_string(),
        ));
    }
    Ok(())
}

/// A consent `source` or `policy_version`: not blank, at most
/// [`MAX_CONSENT_TEXT_LEN`] characters (as the message and openapi.yaml's maxLength
/// count them).
fn check_consent_text(field: &str, text: &str) -> Result<(), Problem> {
    if text.trim().is_empty() || text.chars().count() > MAX_CONSENT_TEXT_LEN {
        return Err(Problem::bad_request(
            field,
            format!("{field} must be 1-{MAX_CONSENT_TEXT_LEN} characters, not blank"),
        ));
    }
    Ok(())
}

/// A request id from the path; anything that is not a ULID cannot exist (404).
fn request_id(req: &Request) -> Result<String, Problem> {
    let id = path_param(req, "id")?;
    if id.len() != 26 || ulid::Ulid::from_string(&id).is_err() {
        return Err(Problem::not_found());
    }
    Ok(id)
}

async fn load_request(deps: &Deps, caller: &Caller, id: &str) -> Result<PrivacyRequest, Problem> {
    let request = deps
        .store
        .get::<PrivacyRequest>(&PrivacyRequest::key_of(&caller.tenant, id))
        .await?
        .ok_or_else(Problem::not_found)?;
    ensure_owned(caller, &request.tenant)?;
    Ok(request)
}

async fn settings(deps: &Deps, tenant: &TenantId) -> Result<Option<PrivacySettings>, Problem> {
    Ok(deps
        .store
        .get::<PrivacySettings>(&PrivacySettings::key_of(tenant))
        .await?)
}

// ---------------------------------------------------------------------------------
// Creating requests
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    subject: SubjectInput,
    regulation: Regulation,
    #[serde(default)]
    note: Option<String>,
    /// Send the subject a one-time code (through the tenant's verification webhook)
    /// and run only once it is entered. Without it, the admin attests the identity.
    #[serde(default)]
    verify_subject: bool,
    /// The subject is the tenant's account holder: connection data is theirs.
    #[serde(default)]
    account_holder: bool,
    /// When the tenant received the request, if earlier than now: deadlines run from
    /// receipt, not from filing.
    #[serde(default)]
    received_at: Option<DateTime<Utc>>,
    /// `restrict` requests only: why processing is restricted.
    #[serde(default)]
    ground: Option<RestrictionGround>,
    /// `rectify` requests only: the corrected identifier values.
    #[serde(default)]
    corrections: Option<CorrectionsInput>,
}

/// A rectification's corrected values, per identifier kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorrectionsInput {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    contact_id: Option<String>,
}

/// Checks a rectification's corrections against the subject: each a valid identifier
/// of its kind (normalised as everywhere; a national phone number with the subject's
/// `default_country_code`), of a kind the subject is named by (the value it
/// corrects), and not that value. Errors name the field, never the value.
async fn parse_corrections(
    deps: &Deps,
    tenant: &TenantId,
    subject: &SubjectInput,
    input: Option<&CorrectionsInput>,
) -> Result<Vec<(Correction, Identifier)>, Problem> {
    let none = CorrectionsInput::default();
    let input = input.unwrap_or(&none);
    let current = subject.identifiers("subject")?;
    let key = pseudonym_key(deps, tenant).await?;
    let mut corrections = Vec::new();
    for (kind, value) in [
        (IdentifierKind::Email, &input.email),
        (IdentifierKind::Phone, &input.phone),
        (IdentifierKind::ContactId, &input.contact_id),
    ] {
        let Some(raw) = value else { continue };
        let at = kind.as_str();
        let corrected = Identifier::new(kind, raw, subject.default_country_code.as_deref())
            .map_err(|e| Problem::bad_request(format!("corrections.{at}"), e.to_string()))?;
        let Some(old) = current.iter().find(|id| id.kind() == kind) else {
            return Err(Problem::bad_request(
                format!("corrections.{at}"),
                format!("name the subject's current {at} (subject.{at}) to correct it"),
            ));
        };
        if *old == corrected {
            return Err(Problem::bad_request(
                format!("corrections.{at}"),
                format!("the corrected {at} is the current one"),
            ));
        }
        corrections.push((
            Correction {
                kind,
                from: key.pseudonym(old).to_string(),
                to: key.pseudonym(&corrected).to_string(),
            },
            corrected,
        ));
    }
    if corrections.is_empty() {
        return Err(Problem::bad_request(
            "corrections",
            "a rectification names at least one corrected value: email, phone or contact_id",
        ));
    }
    Ok(corrections)
}

#[derive(Debug, Serialize)]
struct CodeMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    tenant: &'a str,
    request_id: &'a str,
    code: &'a str,
    expires_at: DateTime<Utc>,
}

async fn create(
    deps: &Deps,
    req: &Request,
    caller: &Caller,
    kind: RequestKind,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let body: CreateBody = json_body(req, MAX_BODY)?;
    let tenant = &caller.tenant;
    let pseudonyms = body.subject.pseudonyms(deps, tenant, "subject").await?;
    if let Some(note) = &body.note {
        check_text("note", note)?;
    }
    let ground = match (kind, body.ground) {
        (RequestKind::Restrict, Some(ground)) => Some(ground),
        (RequestKind::Restrict, None) => {
            return Err(Problem::bad_request(
                "ground",
                "a restriction states its ground: accuracy_contested, unlawful_processing, legal_claims or objection",
            ));
        }
        (_, Some(_)) => {
            return Err(Problem::bad_request(
                "ground",
                "only restrict requests take a ground",
            ));
        }
        (_, None) => None,
    };
    let corrections = match kind {
        RequestKind::Rectify => {
            parse_corrections(deps, tenant, &body.subject, body.corrections.as_ref()).await?
        }
        _ if body.corrections.is_some() => {
            return Err(Problem::bad_request(
                "corrections",
                "only rectify requests take corrections",
            ));
        }
        _ => Vec::new(),
    };
    if kind == RequestKind::Restrict && body.verify_subject {
        return Err(Problem::bad_request(
            "verify_subject",
            "a restriction is in force from filing (it only protects the subject); it takes no verification code",
        ));
    }
    let now = deps.now();
    let received_at = body.received_at.unwrap_or(now);
    if received_at > now + RECEIVED_AT_SKEW {
        return Err(Problem::bad_request(
            "received_at",
            "received_at is in the future",
        ));
    }
    // Deadlines and the twelve-month fee lookback are date arithmetic on it: a date
    // near chrono's minimum would overflow. No real request predates this.
    if received_at < EARLIEST_RECEIVED_AT {
        return Err(Problem::bad_request(
            "received_at",
            "received_at is before 2000-01-01",
        ));
    }
    let settings = settings(deps, tenant).await?;
    let webhook = match (&settings, body.verify_subject) {
        (
            Some(PrivacySettings {
                verification_webhook: Some(hook),
                ..
            }),
            true,
        ) => Some(hook.clone()),
        (_, true) => {
            return Err(Problem::conflict(
                "no verification webhook is configured (PUT /privacy/settings), so no code can reach the subject",
            ));
        }
        (_, false) => None,
    };
    let zone = settings
        .as_ref()
        .map(PrivacySettings::zone)
        .unwrap_or_default();
    let free_of_charge = !requested_within_a_year(deps, tenant, &pseudonyms, received_at).await?;

    let id = ulid::Ulid::new().to_string();
    let deadlines = Deadlines::compute(body.regulation, received_at, &zone);
    let mut request = PrivacyRequest {
        tenant: tenant.clone(),
        id: id.clone(),
        kind,
        regulation: body.regulation,
        status: Status::Received,
        pseudonyms: pseudonyms.clone(),
        account_holder: body.account_holder,
        note: body.note.filter(|n| !n.trim().is_empty()),
        time_zone: zone.name().to_owned(),
        deadlines,
        acknowledged_at: now,
        acknowledged_in_time: now <= deadlines.ack_due,
        extension: None,
        free_of_charge,
        requested_by: caller.actor(),
        steps_done: Vec::new(),
        audit: Vec::new(),
        bundle: None,
        plan: None,
        erased: None,
        certificate: None,
        denial_reason: None,
        attempts: 0,
        last_error: None,
        completed_at: None,
        updated_at: now,
        initial_response_at: None,
        restriction: None,
        rectification: None,
        version: 1,
    };
    if !corrections.is_empty() {
        // The corrected values are personal data: sealed to this request's record
        // until the files are rewritten with them, never stored in plaintext.
        let values: std::collections::BTreeMap<IdentifierKind, &str> = corrections
            .iter()
            .map(|(c, id)| (c.kind, id.value()))
            .collect();
        let text = serde_json::to_string(&values).map_err(|e| {
            tracing::error!(error = %e, "corrections could not be encoded");
            Problem::internal()
        })?;
        let sealed = deps
            .sealer
            .seal(
                &SealContext::new(
                    tenant,
                    Purpose::RectificationValues,
                    keys::privacy_request(&id),
                ),
                &SecretString::from(text),
            )
            .await?;
        request.rectification = Some(Rectification {
            corrections: corrections.into_iter().map(|(c, _)| c).collect(),
            sealed_values: Some(sealed),
            ..Rectification::default()
        });
    }
    let next = if webhook.is_some() {
        Status::IdentityUnverified
    } else {
        Status::Pending
    };
    request.move_to(next, now)?;
    // A restriction is the answer itself: in force (its markers written below, in the
    // same transaction) and complete at once, until lifted.
    if let Some(ground) = ground {
        request.restriction = Some(Restriction {
            ground,
            since: now,
            lifted_at: None,
            lifted_by: None,
            lift_reason: None,
        });
        request.move_to(Status::InProcessing, now)?;
        request.move_to(Status::Complete, now)?;
        request.completed_at = Some(now);
    }

    // The request, its index entries and its code in one transaction: never a request
    // without its refs, nor a code without its request.
    let mut writes = vec![put(deps, &request, true)?];
    for pseudonym in &pseudonyms {
        let subject_ref = SubjectRef {
            tenant: tenant.clone(),
            pseudonym: pseudonym.clone(),
            source: Source::PrivacyRequest,
            source_id: id.clone(),
            object_key: None,
            count: 1,
            expires_at: None,
        };
        writes.push(put(deps, &subject_ref, false)?);
        if request.restriction.is_some() {
            writes.push(put(
                deps,
                &Suppression {
                    tenant: tenant.clone(),
                    pseudonym: pseudonym.clone(),
                    scope: SuppressionScope::Restricted.name(),
                    by: format!("privacy_request:{id}"),
                    since: now,
                },
                false,
            )?);
        }
    }
    // A rectification is indexed under the corrected pseudonyms too: a later request
    // naming the corrected values (an erasure) finds it.
    let corrected = request.rectification.iter().flat_map(|r| &r.corrections);
    for pseudonym in corrected.map(|c| &c.to) {
        let subject_ref = SubjectRef {
            tenant: tenant.clone(),
            pseudonym: pseudonym.clone(),
            source: Source::PrivacyRequest,
            source_id: id.clone(),
            object_key: None,
            count: 1,
            expires_at: None,
        };
        writes.push(put(deps, &subject_ref, false)?);
    }
    let code = match &webhook {
        Some(_) => {
            let (code, stored) = VerificationCode::issue(tenant, &id, now);
            writes.push(put(deps, &stored, false)?);
            Some((code, stored.expires_at))
        }
        None => None,
    };
    // The tenant's notices of the filing, in the same transaction (never a request
    // without them); delivered below.
    let filed_notices = crate::notices::filed(&request, code.as_ref().map(|(_, at)| *at), now);
    for notice in &filed_notices {
        writes.push(put(deps, notice, true)?);
    }
    deps.store
        .client()
        .transact_write_items()
        .set_transact_items(Some(writes))
        .send()
        .await
        .map_err(|e| {
            tracing::error!(error = %custody::aws::error_text(&e), "privacy request could not be stored");
            Problem::internal()
        })?;
    custody::metrics::count(custody::metrics::names::PRIVACY_REQUESTS_OPENED, 1);
    deps.audit
        .append(
            tenant,
            Event {
                actor: caller.actor(),
                ..base_event(&request, "privacy_request.created")
            }
            .detail("due_at", request.deadlines.due_at.to_rfc3339())
            .detail("verify_subject", webhook.is_some())
            .detail("free_of_charge", free_of_charge),
        )
        .await?;
    if let Some(restriction) = &request.restriction {
        deps.audit
            .append(
                tenant,
                Event {
                    actor: caller.actor(),
                    ..base_event(&request, "privacy_request.restricted")
                }
                .detail("ground", restriction.ground.as_str()),
            )
            .await?;
    }
    let mut delivered = None;
    if let (Some(hook), Some((code, expires_at))) = (&webhook, &code) {
        let ok = deliver_code(deps, tenant, hook, &id, code, *expires_at).await;
        delivered = Some(ok);
    }
    crate::notices::deliver_filed(deps, filed_notices).await;
    json_response(
        StatusCode::ACCEPTED,
        &json!({
            "id": id,
            "kind": kind,
            "status": request.status,
            "regulation": request.regulation,
            "received_at": deadlines.received_at,
            "ack_due": deadlines.ack_due,
            "due_at": deadlines.due_at,
            "product_due_at": deadlines.product_due_at,
            "respond_by": deadlines.respond_by(),
            "initial_response_due": deadlines.initial_response_due,
            "acknowledged_in_time": request.acknowledged_in_time,
            "restriction": request.restriction,
            "time_zone": request.time_zone,
            "free_of_charge": free_of_charge,
            "verification": webhook.as_ref().map(|_| json!({
                "required": true,
                "code_delivered": delivered.unwrap_or(false),
            })),
        }),
    )
}

fn put<E: Entity>(deps: &Deps, entity: &E, new: bool) -> Result<TransactWriteItem, Problem> {
    let item = Store::encode(entity)?;
    let mut put = Put::builder()
        .table_name(deps.store.table())
        .set_item(Some(item));
    if new {
        put = put.condition_expression("attribute_not_exists(pk)");
    }
    let put = put.build().map_err(|e| {
        tracing::error!(error = %e, "transaction item could not be built");
        Problem::internal()
    })?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// Whether the subject filed a request in the twelve months before `at` (the first
/// one in a year is free of charge).
async fn requested_within_a_year(
    deps: &Deps,
    tenant: &TenantId,
    pseudonyms: &[String],
    at: DateTime<Utc>,
) -> Result<bool, Problem> {
    let since = at - Duration::days(365);
    for pseudonym in pseudonyms {
        for item in deps.store.subject_items(tenant, pseudonym).await? {
            let Some(sk) = item
                .get(custody::store::SUBJECT_SK)
                .and_then(|v| v.as_s().ok())
            else {
                continue;
            };
            let Some(id) = sk.strip_prefix(&format!("{}#", Source::PrivacyRequest.as_str())) else {
                continue;
            };
            let filed = ulid::Ulid::from_string(id)
                .ok()
                .and_then(|u| DateTime::<Utc>::from_timestamp_millis(u.timestamp_ms() as i64));
            if filed.is_some_and(|filed| filed >= since) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Sends the code to the tenant's verification webhook (signed). A failure is logged
/// and reported in the response; the request waits, unverified.
async fn deliver_code(
    deps: &Deps,
    tenant: &TenantId,
    hook: &WebhookTarget,
    request_id: &str,
    code: &SecretString,
    expires_at: i64,
) -> bool {
    let attempt = async {
        let url = custody::webhook::destination_url(&hook.url, deps.dsar.egress.allow_loopback)
            .map_err(|e| e.to_string())?;
        let secret = deps
            .sealer
            .open(
                &SealContext::new(tenant, Purpose::WebhookSecret, PrivacySettings::RECORD),
                &hook.secret,
            )
            .await
            .map_err(|e| e.to_string())?;
        let message = CodeMessage {
            kind: "privacy_request.verification_code",
            tenant: tenant.as_str(),
            request_id,
            code: code.expose_secret(),
            expires_at: DateTime::from_timestamp(expires_at, 0).unwrap_or_default(),
        };
        let body = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        deps.webhooks
            .deliver(
                &url,
                &secret,
                &format!("{request_id}.verification"),
                body.into(),
            )
            .await
            .map_err(|e| e.to_string())
    };
    match attempt.await {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(error = %err, request_id, "verification code could not be delivered");
            false
        }
    }
}

// ---------------------------------------------------------------------------------
// Reading requests
// ---------------------------------------------------------------------------------

async fn list(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    let now = deps.now();
    let mut open: Vec<PrivacyRequest> = deps
        .store
        .query_all::<PrivacyRequest>(&keys::tenant(&caller.tenant), &keys::privacy_request(""))
        .await?
        .into_iter()
        // Open requests, and restrictions in force (answered, but still acting).
        .filter(|r| r.status.is_open() || r.restriction.as_ref().is_some_and(Restriction::in_force))
        .collect();
    open.sort_by_key(|r| r.deadlines.respond_by());
    let requests: Vec<_> = open
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "kind": r.kind,
                "regulation": r.regulation,
                "status": r.status,
                "received_at": r.deadlines.received_at,
                "ack_due": r.deadlines.ack_due,
                "due_at": r.deadlines.due_at,
                "respond_by": r.deadlines.respond_by(),
                "days_left": days_left(r.deadlines.respond_by(), now),
                "overdue": r.status.is_open() && now > r.deadlines.respond_by(),
                "initial_response_due": r.deadlines.initial_response_due,
                "initial_response_overdue": r.status.is_open() && r.initial_response_overdue(now),
                "extended": r.extension.is_some(),
                "restriction": r.restriction,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "requests": requests }))
}

async fn get_request(
    deps: &Deps,
    req: &Request,
    caller: &Caller,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    let id = request_id(req)?;
    let request = load_request(deps, caller, &id).await?;
    let now = deps.now();
    let mut download = None;
    // The bundle is raw personal data: its link is for operators and admins; a viewer
    // reads the request's metadata only.
    let may_download = caller.role >= Role::Operator;
    if let Some(bundle) = request.bundle.as_ref().filter(|_| may_download) {
        let lives =
            bundle.created_at + RetentionClass::DsarResult.duration().unwrap_or_default() > now;
        let link = if lives {
            result_link(deps, &bundle.key, None).await?
        } else {
            None
        };
        if let Some(url) = link {
            deps.audit
                .append(
                    &caller.tenant,
                    Event::new(
                        caller.actor(),
                        "privacy_request.bundle_link_issued",
                        keys::privacy_request(&id),
                    )
                    .subject(request.pseudonyms.first().cloned().unwrap_or_default())
                    .detail("expires_in_seconds", deps.dsar.link_ttl.as_secs()),
                )
                .await?;
            download = Some(json!({
                "url": url,
                "expires_at": now + Duration::seconds(deps.dsar.link_ttl.as_secs() as i64),
                "sha256": bundle.sha256,
                "bytes": bundle.bytes,
            }));
        }
    }
    json_response(
        StatusCode::OK,
        &json!({
            "id": request.id,
            "kind": request.kind,
            "regulation": request.regulation,
            "status": request.status,
            "deadlines": request.deadlines,
            "respond_by": request.deadlines.respond_by(),
            "days_left": days_left(request.deadlines.respond_by(), now),
            "acknowledged_at": request.acknowledged_at,
            "acknowledged_in_time": request.acknowledged_in_time,
            "initial_response_at": request.initial_response_at,
            "initial_response_overdue": request.initial_response_overdue(now),
            "restriction": request.restriction,
            "extension": request.extension.as_ref().map(|e| json!({
                "length": e.length, "extended_at": e.extended_at, "previous_due_at": e.previous_due_at,
            })),
            "free_of_charge": request.free_of_charge,
            "steps_done": request.steps_done,
            "erased": request.erased,
            // Kinds and counts; the corrected values are never shown.
            "rectification": request.rectification.as_ref().map(|r| json!({
                "corrected": r.corrections.iter().map(|c| c.kind).collect::<Vec<_>>(),
                "files_rewritten": r.files_rewritten,
                "rows_rectified": r.rows_rectified,
                "versions_deleted": r.versions_deleted,
                "index_entries_moved": r.index_entries_moved,
                "consent_records_moved": r.consent_records_moved,
                "suppression_markers_moved": r.suppression_markers_moved,
            })),
            "certificate_available": request.certificate.is_some(),
            "denial_reason": request.denial_reason,
            "completed_at": request.completed_at,
            "download": download,
            "notices": crate::notices::of_request(deps, &caller.tenant, &id).await?,
        }),
    )
}

async fn certificate(
    deps: &Deps,
    req: &Request,
    caller: &Caller,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    let id = request_id(req)?;
    let request = load_request(deps, caller, &id).await?;
    let signed = request.certificate.ok_or_else(Problem::not_found)?;
    let document: serde_json::Value = serde_json::from_str(&signed.document).map_err(|e| {
        tracing::error!(error = %e, "stored certificate is not JSON");
        Problem::internal()
    })?;
    json_response(
        StatusCode::OK,
        &json!({
            "certificate": document,
            "document": signed.document,
            "signature": signed.signature,
            "key_id": signed.key_id,
            "algorithm": signed.algorithm,
            "public_key": "/privacy/public-key",
        }),
    )
}

async fn public_key(deps: &Deps) -> Result<Response<Body>, Problem> {
    let key = deps.signer.public_key().await?;
    json_response(StatusCode::OK, &key)
}

// ---------------------------------------------------------------------------------
// Verification and extension
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    code: SecretString,
}

async fn verify(deps: &Deps, req: &Request, caller: &Caller) -> Result<Response<Body>, Problem> {
    // Verifying a subject's identity lets the request run: not a viewer's act.
    caller.require(Role::Operator)?;
    let id = request_id(req)?;
    let body: VerifyBody = json_body(req, MAX_BODY)?;
    let mut request = load_request(deps, caller, &id).await?;
    let locked = || {
        Problem::new(
            StatusCode::CONFLICT,
            "verification-locked",
            "Verification locked",
            "too many wrong codes: the request is locked and will not run",
        )
    };
    match request.status {
        Status::IdentityUnverified => {}
        Status::Denied if request.denial_reason.as_deref() == Some("verification_failed") => {
            return Err(locked());
        }
        _ => {
            return Err(Problem::conflict(
                "the request is not waiting for verification",
            ));
        }
    }
    let code_key = VerificationCode::key_of(&caller.tenant, &id);
    let Some(stored) = deps.store.get::<VerificationCode>(&code_key).await? else {
        return Err(Problem::new(
            StatusCode::GONE,
            "verification-code-expired",
            "Verification code expired",
            "the verification code has expired; file a new request",
        )
        .with_field("code"));
    };
    if stored.attempts >= MAX_VERIFICATION_ATTEMPTS {
        return Err(locked());
    }
    let now = deps.now();
    if stored.matches(body.code.expose_secret()) {
        // Single use: of two concurrent correct submissions one proceeds.
        if deps
            .store
            .take::<VerificationCode>(&code_key)
            .await?
            .is_none()
        {
            return Err(Problem::conflict("the code was already used"));
        }
        request.move_to(Status::Pending, now)?;
        crate::process::save(deps, &mut request)
            .await
            .map_err(problem)?;
        deps.audit
            .append(
                &caller.tenant,
                Event {
                    actor: caller.actor(),
                    ..base_event(&request, "privacy_request.verified")
                },
            )
            .await?;
        return json_response(
            StatusCode::OK,
            &json!({ "id": id, "status": request.status }),
        );
    }
    // Wrong: count the attempt (conditionally, so concurrent guesses all count).
    let mut counted = stored.clone();
    counted.attempts += 1;
    let condition =
        Condition::new("attempts = :a").value(":a", AttributeValue::N(stored.attempts.to_string()));
    match deps.store.put_if(&counted, condition).await {
        Ok(()) => {}
        Err(StoreError::ConditionFailed) => {
            return Err(Problem::conflict(
                "another attempt is being checked; try again",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    deps.audit
        .append(
            &caller.tenant,
            Event {
                actor: caller.actor(),
                ..base_event(&request, "privacy_request.verification_failed")
                    .outcome(Outcome::Failure)
            },
        )
        .await?;
    let left = MAX_VERIFICATION_ATTEMPTS.saturating_sub(counted.attempts);
    if left == 0 {
        request.move_to(Status::Denied, now)?;
        request.denial_reason = Some("verification_failed".into());
        // A denied rectification never runs: its corrected values go now.
        if let Some(rectification) = request.rectification.as_mut() {
            rectification.sealed_values = None;
        }
        crate::process::save(deps, &mut request)
            .await
            .map_err(problem)?;
        deps.store.delete(&code_key).await?;
        deps.audit
            .append(
                &caller.tenant,
                Event {
                    actor: caller.actor(),
                    ..base_event(&request, "privacy_request.denied")
                        .outcome(Outcome::Denied)
                        .detail("reason", "verification_failed")
                },
            )
            .await?;
        return Err(locked());
    }
    Err(Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "verification-failed",
        "Verification failed",
        format!("the code is wrong; {left} attempt(s) left"),
    )
    .with_field("code"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    reason: String,
    #[serde(default)]
    months: Option<u32>,
    #[serde(default)]
    days: Option<i64>,
}

async fn extend(deps: &Deps, req: &Request, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let id = request_id(req)?;
    let body: ExtendBody = json_body(req, MAX_BODY)?;
    let mut request = load_request(deps, caller, &id).await?;
    if !request.status.is_open() {
        return Err(Problem::conflict("the request is already answered"));
    }
    let length = match (request.regulation, body.months, body.days) {
        (_, Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "days",
                "give months or days, not both",
            ));
        }
        (Regulation::Gdpr, Some(m), None) => ExtensionLength::Months(m),
        (Regulation::Gdpr, None, None) => {
            ExtensionLength::Months(custody::privacy::GDPR_MAX_EXTENSION_MONTHS)
        }
        (Regulation::Ccpa, None, Some(d)) => ExtensionLength::Days(d),
        (Regulation::Ccpa, None, None) => {
            ExtensionLength::Days(custody::privacy::CCPA_MAX_EXTENSION_DAYS)
        }
        (Regulation::Gdpr, None, Some(_)) => {
            return Err(Problem::bad_request("days", "GDPR extends in months"));
        }
        (Regulation::Ccpa, Some(_), None) => {
            return Err(Problem::bad_request("months", "CCPA extends in days"));
        }
    };
    let zone: TenantZone = request.time_zone.parse().unwrap_or_default();
    let now = deps.now();
    let extended = extend_deadlines(
        request.regulation,
        &request.deadlines,
        request.extension.is_some(),
        &zone,
        length,
        &body.reason,
        now,
    );
    let extended = match extended {
        Ok(d) => d,
        Err(err) => {
            deps.audit
                .append(
                    &caller.tenant,
                    Event {
                        actor: caller.actor(),
                        ..base_event(&request, "privacy_request.extension_refused")
                            .outcome(Outcome::Denied)
                            .detail("rule", err.to_string())
                    },
                )
                .await?;
            return Err(match (&err, request.regulation) {
                (
                    PrivacyError::ExtensionTooLong(_) | PrivacyError::ExtensionTooShort(_),
                    Regulation::Ccpa,
                ) => Problem::bad_request("days", err.to_string()),
                _ => err.into(),
            });
        }
    };
    request.extension = Some(custody::privacy::Extension {
        length,
        reason: body.reason.trim().to_owned(),
        extended_at: now,
        extended_by: caller.actor(),
        previous_due_at: request.deadlines.due_at,
    });
    request.deadlines = extended;
    // An extension with its reasons is a substantive first response.
    request.initial_response_at.get_or_insert(now);
    crate::process::save(deps, &mut request)
        .await
        .map_err(problem)?;
    deps.audit
        .append(
            &caller.tenant,
            Event {
                actor: caller.actor(),
                // The reason is free text and may name people: only that one was given.
                ..base_event(&request, "privacy_request.extended")
                    .detail("due_at", extended.due_at.to_rfc3339())
                    .detail("reason_given", true)
            },
        )
        .await?;
    crate::notices::on_extended(deps, &request).await;
    json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "due_at": extended.due_at,
            "product_due_at": extended.product_due_at,
            "respond_by": extended.respond_by(),
            "notice": "inform the subject of the extension and its reasons before the original due date",
        }),
    )
}

// ---------------------------------------------------------------------------------
// Consent
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupBody {
    subject: SubjectInput,
}

/// A subject's consent records. The identifiers come in the body: never in a URL.
async fn lookup_consent(
    deps: &Deps,
    req: &Request,
    caller: &Caller,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let body: LookupBody = json_body(req, MAX_BODY)?;
    let pseudonyms = body
        .subject
        .pseudonyms(deps, &caller.tenant, "subject")
        .await?;
    let mut records = Vec::new();
    for pseudonym in &pseudonyms {
        let found: Vec<ConsentRecord> = deps
            .store
            .query_all(
                &keys::subject(&caller.tenant, pseudonym),
                &keys::consent(""),
            )
            .await?;
        records.extend(found);
    }
    deps.audit
        .append(
            &caller.tenant,
            Event::new(caller.actor(), "consent.read", "CONSENT#*")
                .subject(pseudonyms.first().cloned().unwrap_or_default())
                .detail("records", records.len()),
        )
        .await?;
    let consent: Vec<_> = records
        .iter()
        .map(|r| json!({ "purpose": r.purpose, "current": r.current, "history": r.history, "version": r.version }))
        .collect();
    json_response(StatusCode::OK, &json!({ "consent": consent }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentBody {
    subject: SubjectInput,
    purpose: String,
    state: ConsentState,
    source: String,
    policy_version: String,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

async fn put_consent(
    deps: &Deps,
    req: &Request,
    caller: &Caller,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let body: ConsentBody = json_body(req, MAX_BODY)?;
    validate_purpose(&body.purpose).map_err(|e| Problem::bad_request("purpose", e.to_string()))?;
    // Once a tenant declares its purposes, consent is recorded for those only.
    let declared = custody::privacy::declared_purposes(&deps.store, &caller.tenant).await?;
    if !declared.is_empty() && !declared.contains(&body.purpose) {
        return Err(Problem::bad_request(
            "purpose",
            "not one of the purposes the tenant declared (PUT /privacy/settings)",
        ));
    }
    check_consent_text("source", &body.source)?;
    check_consent_text("policy_version", &body.policy_version)?;
    // Kept under the first identifier given (email, then phone, then contact id).
    let pseudonyms = body
        .subject
        .pseudonyms(deps, &caller.tenant, "subject")
        .await?;
    let pseudonym = pseudonyms
        .first()
        .cloned()
        .ok_or_else(|| Problem::bad_request("subject", "no identifier"))?;
    let now = deps.now();
    let change = ConsentChange {
        state: body.state,
        at: body.at.unwrap_or(now).min(now),
        source: body.source.trim().to_owned(),
        policy_version: body.policy_version.trim().to_owned(),
        recorded_by: caller.actor(),
    };
    let key = ConsentRecord::key_of(&caller.tenant, &pseudonym, &body.purpose);
    let mut written = None;
    for _ in 0..5 {
        let existing = deps.store.get::<ConsentRecord>(&key).await?;
        let condition = match &existing {
            Some(record) => Condition::new("version = :v")
                .value(":v", AttributeValue::N(record.version.to_string())),
            None => Condition::new("attribute_not_exists(pk)"),
        };
        let record = ConsentRecord::apply(
            existing,
            &caller.tenant,
            &pseudonym,
            &body.purpose,
            change.clone(),
        );
        match deps.store.put_if(&record, condition).await {
            Ok(()) => {
                written = Some(record);
                break;
            }
            Err(StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let record =
        written.ok_or_else(|| Problem::conflict("consent changed concurrently; try again"))?;
    // Every identifier given: an import row may name the subject by any of them.
    let scope = SuppressionScope::ConsentWithdrawn(body.purpose.clone());
    match body.state {
        ConsentState::Withdrawn => {
            suppression::suppress(
                &deps.store,
                &caller.tenant,
                &scope,
                &pseudonyms,
                "consent",
                now,
            )
            .await?
        }
        ConsentState::Granted => {
            suppression::lift(&deps.store, &caller.tenant, &scope, &pseudonyms).await?
        }
    }
    let action = match body.state {
        ConsentState::Granted => "consent.granted",
        ConsentState::Withdrawn => "consent.withdrawn",
    };
    deps.audit
        .append(
            &caller.tenant,
            Event::new(caller.actor(), action, keys::consent(&body.purpose))
                .subject(pseudonym)
                .detail("policy_version", record.current.policy_version.clone())
                .detail("version", record.version),
        )
        .await?;
    json_response(
        StatusCode::OK,
        &json!({ "purpose": record.purpose, "current": record.current, "version": record.version, "history_length": record.history.len() }),
    )
}

// ---------------------------------------------------------------------------------
// Lifting a restriction
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiftBody {
    reason: String,
}

/// Lifts a restriction: the subject's markers go, unless another restriction of the
/// same subject is still in force. GDPR Art. 18(3) asks that the subject be told
/// before: the reason is recorded (its text only on the request, as it may name
/// people) and the lifting audited.
async fn lift(deps: &Deps, req: &Request, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let id = request_id(req)?;
    let body: LiftBody = json_body(req, MAX_BODY)?;
    if body.reason.trim().is_empty() {
        return Err(Problem::bad_request(
            "reason",
            "say why the restriction ends (the subject is told before it is lifted)",
        ));
    }
    check_text("reason", &body.reason)?;
    let mut request = load_request(deps, caller, &id).await?;
    let Some(restriction) = request.restriction.clone() else {
        return Err(Problem::conflict("only restrict requests can be lifted"));
    };
    if !restriction.in_force() {
        return Err(Problem::conflict("this restriction is already lifted"));
    }
    let now = deps.now();
    let requests = deps
        .store
        .query_all::<PrivacyRequest>(&keys::tenant(&caller.tenant), &keys::privacy_request(""))
        .await?;
    // A rectification moved the markers to the corrected pseudonyms: a restriction
    // covers those too (a denied rectification never ran).
    let corrections: Vec<&Correction> = requests
        .iter()
        .filter(|r| r.status != Status::Denied)
        .filter_map(|r| r.rectification.as_ref())
        .flat_map(|r| &r.corrections)
        .collect();
    let covered = |pseudonyms: &[String]| {
        custody::privacy::with_corrections(corrections.iter().copied(), pseudonyms)
    };
    // Pseudonyms another restriction in force still covers keep their marker.
    let others: HashSet<String> = requests
        .iter()
        .filter(|r| r.id != id && r.restriction.as_ref().is_some_and(Restriction::in_force))
        .flat_map(|r| covered(&r.pseudonyms))
        .collect();
    let all = covered(&request.pseudonyms);
    let freed: Vec<String> = all
        .iter()
        .filter(|p| !others.contains(*p))
        .cloned()
        .collect();
    request.restriction = Some(Restriction {
        lifted_at: Some(now),
        lifted_by: Some(caller.actor()),
        lift_reason: Some(body.reason.trim().to_owned()),
        ..restriction
    });
    // Markers first (idempotent), then the record: the other order could leave
    // markers behind a request that says lifted, which no retry would find.
    suppression::lift(
        &deps.store,
        &caller.tenant,
        &SuppressionScope::Restricted,
        &freed,
    )
    .await?;
    crate::process::save(deps, &mut request)
        .await
        .map_err(problem)?;
    deps.audit
        .append(
            &caller.tenant,
            Event {
                actor: caller.actor(),
                ..base_event(&request, "privacy_request.restriction_lifted")
                    .detail("reason_given", true)
                    .detail(
                        "still_restricted_by_another_request",
                        (all.len() - freed.len()) as u64,
                    )
            },
        )
        .await?;
    json_response(
        StatusCode::OK,
        &json!({ "id": id, "restriction": request.restriction }),
    )
}

// ---------------------------------------------------------------------------------
// Settings and account
// ---------------------------------------------------------------------------------

async fn get_settings(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    // Operators create imports, which name a declared purpose: they read the list
    // (no secret is ever shown, only webhook URLs).
    caller.require(Role::Operator)?;
    let current = settings(deps, &caller.tenant).await?;
    json_response(
        StatusCode::OK,
        &json!({
            "time_zone": current.as_ref().map(|s| s.time_zone.clone()).unwrap_or_else(|| "UTC".into()),
            "purposes": current.as_ref().map(|s| s.purposes.clone()).unwrap_or_default(),
            "verification_webhook": current.and_then(|s| s.verification_webhook).map(|h| json!({ "url": h.url })),
            "notification_webhook": crate::notices::webhook_shown(deps, &caller.tenant).await?,
            "notification_email": crate::notices::email_shown(deps, &caller.tenant).await?,
            // Whether this deployment e-mails notices (the template's NoticeEmailSender;
            // the mailer itself lives in the dsar worker, not in dsar-api).
            "notification_email_enabled": deps.dsar.notice_email_sender.is_some(),
        }),
    )
}

/// A partial update: a field left out keeps its value; `verification_webhook: null`
/// removes the webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default, deserialize_with = "present")]
    verification_webhook: Option<Option<WebhookInput>>,
    #[serde(default)]
    purposes: Option<Vec<String>>,
    /// Where privacy notices go (`custody::notice`); the same partial update.
    #[serde(default, deserialize_with = "present")]
    notification_webhook: Option<Option<crate::notices::WebhookInput>>,
    /// Where privacy notices are e-mailed too (where the deployment sends e-mail).
    #[serde(default, deserialize_with = "present")]
    notification_email: Option<Option<String>>,
}

/// `Some(None)` for an explicit `null`, `Some(Some(_))` for a value; a missing field
/// stays `None` (serde's default).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookInput {
    url: String,
    secret: SecretString,
}

async fn put_settings(
    deps: &Deps,
    req: &Request,
    caller: &Caller,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let body: SettingsBody = json_body(req, MAX_BODY)?;
    let current = settings(deps, &caller.tenant).await?;
    let zone: TenantZone = match &body.time_zone {
        Some(name) => name
            .parse()
            .map_err(|e: UnknownTimeZone| Problem::bad_request("time_zone", e.to_string()))?,
        None => current
            .as_ref()
            .map(PrivacySettings::zone)
            .unwrap_or_default(),
    };
    let purposes = match body.purposes {
        Some(purposes) => {
            if purposes.len() > custody::privacy::MAX_PURPOSES {
                return Err(Problem::bad_request(
                    "purposes",
                    format!("at most {} purposes", custody::privacy::MAX_PURPOSES),
                ));
            }
            let mut seen = HashSet::new();
            for (i, purpose) in purposes.iter().enumerate() {
                validate_purpose(purpose)
                    .map_err(|e| Problem::bad_request(format!("purposes[{i}]"), e.to_string()))?;
                if !seen.insert(purpose.as_str()) {
                    return Err(Problem::bad_request(
                        format!("purposes[{i}]"),
                        "each purpose once",
                    ));
                }
            }
            purposes
        }
        None => current
            .as_ref()
            .map(|s| s.purposes.clone())
            .unwrap_or_default(),
    };
    let notification =
        crate::notices::prepare_webhook(deps, &caller.tenant, body.notification_webhook).await?;
    let email = crate::notices::prepare_email(deps, &caller.tenant, body.notification_email)?;
    let webhook = match body.verification_webhook {
        None => current.and_then(|s| s.verification_webhook),
        Some(None) => None,
        Some(Some(input)) => {
            let url =
                custody::webhook::destination_url(&input.url, deps.dsar.egress.allow_loopback)
                    .map_err(|e| Problem::bad_request("verification_webhook.url", e.to_string()))?;
            custody::webhook::check_secret(&input.secret)
                .map_err(|e| Problem::bad_request("verification_webhook.secret", e.to_string()))?;
            let sealed = deps
                .sealer
                .seal(
                    &SealContext::new(
                        &caller.tenant,
                        Purpose::WebhookSecret,
                        PrivacySettings::RECORD,
                    ),
                    &input.secret,
                )
                .await?;
            Some(WebhookTarget {
                url: url.to_string(),
                secret: sealed,
            })
        }
    };
    let settings = PrivacySettings {
        tenant: caller.tenant.clone(),
        time_zone: zone.name().to_owned(),
        verification_webhook: webhook,
        purposes,
        updated_at: deps.now(),
    };
    deps.store.put(&settings).await?;
    crate::notices::apply_webhook(deps, &caller.tenant, &notification).await?;
    crate::notices::apply_email(deps, &caller.tenant, &email).await?;
    deps.audit
        .append(
            &caller.tenant,
            Event::new(
                caller.actor(),
                "privacy_settings.updated",
                PrivacySettings::RECORD,
            )
            .detail("time_zone", settings.time_zone.clone())
            .detail("purposes", settings.purposes.join(","))
            .detail(
                "verification_webhook",
                settings.verification_webhook.is_some(),
            )
            .detail("notification_webhook", notification.configured())
            // Whether it changed, never the address.
            .detail("notification_email_changed", email.is_some()),
        )
        .await?;
    get_settings(deps, caller).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteAccountBody {
    /// The tenant id, typed out: deleting an account cannot be undone.
    confirm: String,
}

async fn delete_account(
    deps: &Deps,
    req: &Request,
    caller: &Caller,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let body: DeleteAccountBody = json_body(req, MAX_BODY)?;
    if body.confirm != caller.tenant.as_str() {
        return Err(Problem::bad_request(
            "confirm",
            "confirm must be the tenant id of the account being deleted",
        ));
    }
    let started = account::start(deps, &caller.tenant, &caller.actor())
        .await
        .map_err(problem)?;
    json_response(
        StatusCode::ACCEPTED,
        &json!({
            "job_id": started.job_id,
            "status": "purging",
            "connections_deleted": started.connections_deleted,
            "grants_revoked": started.grants_revoked,
            "schedule_removed": started.schedule_removed,
        }),
    )
}

/// A short presigned GET (`CUSTODY_DSAR_LINK_TTL_SECONDS`) of an object in the results
/// bucket, or `None` when the object is gone (its lifecycle rule deleted it): access
/// bundles and account copies are served the same way. `filename` makes the browser
/// save it under that name.
pub(crate) async fn result_link(
    deps: &Deps,
    key: &str,
    filename: Option<&str>,
) -> Result<Option<String>, Problem> {
    let bucket = &deps.config.dsar_results_bucket;
    if deps
        .s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .is_err()
    {
        return Ok(None);
    }
    let presigning = PresigningConfig::expires_in(deps.dsar.link_ttl).map_err(|e| {
        tracing::error!(error = %e, "presigning config");
        Problem::internal()
    })?;
    let presigned = deps
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_response_content_disposition(
            filename.map(|name| format!("attachment; filename=\"{name}\"")),
        )
        .presigned(presigning)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "result link could not be presigned");
            Problem::internal()
        })?;
    Ok(Some(presigned.uri().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<impl Sized, Problem>) -> Option<String> {
        result.err().and_then(|p| p.field)
    }

    #[test]
    fn a_bad_default_country_code_is_named_not_the_phone() {
        let subject = SubjectInput {
            phone: Some("07700 900123".into()),
            default_country_code: Some("0x".into()),
            ..SubjectInput::default()
        };
        assert_eq!(
            field(subject.identifiers("subject")).as_deref(),
            Some("subject.default_country_code")
        );
        let subject = SubjectInput {
            phone: Some("12".into()),
            default_country_code: Some("44".into()),
            ..SubjectInput::default()
        };
        assert_eq!(
            field(subject.identifiers("subject")).as_deref(),
            Some("subject.phone")
        );
        assert_eq!(
            field(SubjectInput::default().identifiers("subject")).as_deref(),
            Some("subject")
        );
    }

    #[test]
    fn consent_texts_count_characters_and_refuse_blanks() {
        let longest = "é".repeat(MAX_CONSENT_TEXT_LEN);
        assert!(check_consent_text("source", &longest).is_ok());
        let longer = "é".repeat(MAX_CONSENT_TEXT_LEN + 1);
        assert_eq!(
            field(check_consent_text("source", &longer)).as_deref(),
            Some("source")
        );
        assert_eq!(
            field(check_consent_text("policy_version", "  ")).as_deref(),
            Some("policy_version")
        );
    }
}

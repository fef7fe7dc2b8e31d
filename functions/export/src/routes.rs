//! The HTTP API: export settings (admin writes, viewer reads), the destination test
//! (admin), run now (operator), and the export log (viewer); the tenant's audit log
//! (admin, `crate::audit_log`).

use custody::TenantId;
use custody::api::{self, Caller, Problem, Role};
use custody::audit::Event;
use custody::notice::{Notice, event_ids};
use custody::schedule::ScheduleSpec;
use custody::seal::{Purpose, SealContext};
use custody::store::{PageRequest, keys};
use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::Deps;
use crate::kick;
use crate::model::{ExportRun, ExportState};
use crate::settings::{
    Destination, DestinationRequest, ExportSettings, MAX_BODY_BYTES, SettingsRequest,
    password_record, validate, validate_destination,
};
use custody::sink::{S3Sink, SinkRetry, WebDavSink};
use std::time::Duration;

/// Largest page of the export log.
pub const MAX_RUNS_PAGE: i32 = 100;
pub const DEFAULT_RUNS_PAGE: i32 = 20;

pub async fn handle_http(deps: &Deps, req: Request) -> Response<Body> {
    match route(deps, &req).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn route(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let caller = api::caller(req)?;
    let route = api::route_key(req);
    // Writers refuse a tenant whose account deletion has started.
    if matches!(
        route.as_deref(),
        Some("PUT /export/settings" | "POST /export/runs" | "POST /export/destination/test")
    ) {
        custody::privacy::ensure_open(&deps.store, &caller.tenant).await?;
    }
    match route.as_deref() {
        Some("PUT /export/settings") => put_settings(deps, &caller, req).await,
        Some("GET /export/settings") => get_settings(deps, &caller).await,
        Some("DELETE /export/settings") => delete_settings(deps, &caller).await,
        Some("POST /export/destination/test") => test_destination(deps, &caller, req).await,
        Some("POST /export/runs") => run_now(deps, &caller).await,
        Some("GET /export/runs") => list_runs(deps, &caller, req).await,
        Some("GET /audit") => crate::audit_log::page(deps, req, &caller).await,
        Some("GET /audit/verify") => crate::audit_log::verify(deps, &caller).await,
        _ => Err(Problem::not_found()),
    }
}

async fn put_settings(
    deps: &Deps,
    caller: &Caller,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let request: SettingsRequest = api::json_body(req, MAX_BODY_BYTES)?;
    validate(&request, deps.config.egress.allow_loopback)?;
    let tenant = &caller.tenant;
    let existing = deps
        .store
        .get::<ExportSettings>(&ExportSettings::key_of(tenant))
        .await?;

    let destination = match request.destination {
        DestinationRequest::Webdav {
            url,
            username,
            password,
        } => {
            let password = match password {
                Some(password) => {
                    let context =
                        SealContext::new(tenant, Purpose::DestinationPassword, password_record());
                    deps.sealer.seal(&context, &password).await?
                }
                // Kept only for the same server and user: a password must never be
                // sent to a destination it was not given for.
                None => match existing.as_ref().map(|s| &s.destination) {
                    Some(Destination::Webdav {
                        url: old_url,
                        username: old_user,
                        password,
                    }) if *old_url == url && *old_user == username => password.clone(),
                    _ => {
                        return Err(Problem::bad_request(
                            "destination.password",
                            "is required for a new WebDAV URL or username",
                        ));
                    }
                },
            };
            Destination::Webdav {
                url,
                username,
                password,
            }
        }
        DestinationRequest::S3 {
            bucket,
            prefix,
            role_arn,
        } => {
            // The role must trust this tenant now: a tenant naming another customer's
            // bucket and role is refused here (422), and nothing is stored.
            crate::customer_role::s3_client(deps.sdk.as_ref(), tenant, role_arn.as_deref()).await?;
            Destination::S3 {
                bucket,
                prefix: prefix.unwrap_or_default().trim_matches('/').to_owned(),
                role_arn,
            }
        }
    };
    let settings = ExportSettings {
        tenant: tenant.clone(),
        schedule: request.schedule,
        channels: request.channels,
        date_range: request.date_range,
        destination,
        exclude_withdrawn_consent: request.exclude_withdrawn_consent,
        updated_at: deps.store.clock().now(),
        updated_by: caller.actor(),
    };
    deps.store.put(&settings).await?;
    deps.schedules
        .upsert(
            tenant,
            &ScheduleSpec {
                expression: settings.schedule.expression.clone(),
                timezone: settings.schedule.timezone.clone(),
                target_arn: deps.config.function_arn.clone(),
                role_arn: deps.config.scheduler_role_arn.clone(),
                dead_letter_arn: deps.config.dead_letter_queue_arn.clone(),
            },
        )
        .await?;
    let destination_type = match settings.destination {
        Destination::Webdav { .. } => "webdav",
        Destination::S3 { .. } => "s3",
    };
    deps.audit
        .append(
            tenant,
            Event::new(
                caller.actor(),
                "export_settings.updated",
                keys::export_settings(),
            )
            .detail("destination", destination_type)
            .detail("schedule", settings.schedule.expression.clone())
            .detail(
                "channels",
                serde_json::to_value(&settings.channels).unwrap_or_default(),
            )
            .detail(
                "exclude_withdrawn_consent",
                settings.exclude_withdrawn_consent,
            ),
        )
        .await?;
    api::json_response(
        StatusCode::OK,
        &settings.view(true, deps.store.clock().now()),
    )
}

/// The body of `POST /export/destination/test`: a destination as the settings name one.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTest {
    pub destination: DestinationRequest,
}

/// Two quick attempts: the caller waits on the answer, behind a 30-second gateway.
const PROBE_RETRY: SinkRetry = SinkRetry {
    max_attempts: 2,
    base_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(1),
};

/// Tests a destination before (or after) saving it: writes a small probe file the way
/// an export writes, verifies it, and removes it. Its result is the answer (200 either
/// way); a request that breaks the settings' own rules is a 400 as there. A WebDAV
/// password may be omitted for the saved server and user, as in `PUT /export/settings`.
async fn test_destination(
    deps: &Deps,
    caller: &Caller,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let request: DestinationTest = api::json_body(req, MAX_BODY_BYTES)?;
    validate_destination(&request.destination, deps.config.egress.allow_loopback)?;
    let tenant = &caller.tenant;
    let (kind, outcome) = match request.destination {
        DestinationRequest::Webdav {
            url,
            username,
            password,
        } => {
            let password = match password {
                Some(password) => password,
                None => {
                    let saved = deps
                        .store
                        .get::<ExportSettings>(&ExportSettings::key_of(tenant))
                        .await?;
                    match saved.map(|s| s.destination) {
                        // Only to the server and user it was given for.
                        Some(Destination::Webdav {
                            url: old_url,
                            username: old_user,
                            password,
                        }) if old_url == url && old_user == username => {
                            let context = SealContext::new(
                                tenant,
                                Purpose::DestinationPassword,
                                password_record(),
                            );
                            deps.sealer.open(&context, &password).await?
                        }
                        _ => {
                            return Err(Problem::bad_request(
                                "destination.password",
                                "is required unless the saved settings have this URL and username",
                            ));
                        }
                    }
                }
            };
            let sink = WebDavSink::new(
                deps.http.clone(),
                &url,
                deps.config.egress.allow_loopback,
                username,
                password,
                PROBE_RETRY,
            )
            .map_err(|e| Problem::bad_request("destination.url", format!("URL {e}")))?;
            ("webdav", sink.probe().await)
        }
        DestinationRequest::S3 {
            bucket,
            prefix,
            role_arn,
        } => {
            // The customer's role, as for a run: a role that does not trust this tenant
            // is a 422 here too.
            let client =
                crate::customer_role::s3_client(deps.sdk.as_ref(), tenant, role_arn.as_deref())
                    .await?;
            let prefix = prefix.unwrap_or_default();
            ("s3", S3Sink::new(client, bucket, &prefix).probe().await)
        }
    };
    let (body, outcome_kind) = match &outcome {
        Ok(probe) => (
            serde_json::json!({
                "ok": true,
                "destination": kind,
                "probe": probe.path,
                "probe_removed": probe.removed,
            }),
            custody::audit::Outcome::Success,
        ),
        Err(err) => (
            serde_json::json!({ "ok": false, "destination": kind, "error": err.to_string() }),
            custody::audit::Outcome::Failure,
        ),
    };
    deps.audit
        .append(
            tenant,
            Event::new(
                caller.actor(),
                "export_destination.tested",
                keys::export_settings(),
            )
            .outcome(outcome_kind)
            .detail("destination", kind)
            .detail("ok", outcome.is_ok()),
        )
        .await?;
    api::json_response(StatusCode::OK, &body)
}

async fn get_settings(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    let settings = deps
        .store
        .get::<ExportSettings>(&ExportSettings::key_of(&caller.tenant))
        .await?
        .ok_or_else(Problem::not_found)?;
    let schedule = deps.schedules.get(&caller.tenant).await?;
    api::json_response(
        StatusCode::OK,
        &settings.view(
            schedule.is_some_and(|s| s.enabled),
            deps.store.clock().now(),
        ),
    )
}

async fn delete_settings(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let tenant = &caller.tenant;
    // Schedule first: with settings gone but the schedule left, runs would only end
    // as "not configured"; the other way round nothing would run and nothing show.
    let had_schedule = deps.schedules.delete(tenant).await?;
    let key = ExportSettings::key_of(tenant);
    let existed = deps.store.get::<ExportSettings>(&key).await?.is_some();
    deps.store.delete(&key).await?;
    if existed || had_schedule {
        deps.audit
            .append(
                tenant,
                Event::new(
                    caller.actor(),
                    "export_settings.deleted",
                    keys::export_settings(),
                ),
            )
            .await?;
    }
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

async fn run_now(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Operator)?;
    let tenant = &caller.tenant;
    if deps
        .store
        .get::<ExportSettings>(&ExportSettings::key_of(tenant))
        .await?
        .is_none()
    {
        return Err(Problem::conflict(
            "export settings are not configured; PUT /export/settings first",
        ));
    }
    let state = deps
        .store
        .get::<ExportState>(&ExportState::key_of(tenant))
        .await?;
    let now = deps.store.clock().now();
    if state
        .as_ref()
        .is_some_and(|s| s.lease_until_ms > now.timestamp_millis())
    {
        return Err(Problem::conflict("an export run is in progress"));
    }
    kick::kick(deps, tenant, now).await?;
    let resumes = state.and_then(|s| s.active_run);
    deps.audit
        .append(
            tenant,
            Event::new(caller.actor(), "export.requested", "EXPORT#RUN-NOW").detail(
                "resumes",
                resumes
                    .clone()
                    .map(serde_json::Value::from)
                    .unwrap_or_default(),
            ),
        )
        .await?;
    api::json_response(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "status": "queued", "resumes_run": resumes }),
    )
}

async fn list_runs(deps: &Deps, caller: &Caller, req: &Request) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    let params = req.query_string_parameters_ref();
    let limit = match params.and_then(|p| p.first("limit")) {
        None => DEFAULT_RUNS_PAGE,
        Some(raw) => raw
            .parse::<i32>()
            .ok()
            .filter(|l| (1..=MAX_RUNS_PAGE).contains(l))
            .ok_or_else(|| {
                Problem::bad_request("limit", format!("must be between 1 and {MAX_RUNS_PAGE}"))
            })?,
    };
    let cursor = params.and_then(|p| p.first("cursor")).map(str::to_owned);
    let page = runs_page(deps, &caller.tenant, limit, cursor).await?;
    api::json_response(StatusCode::OK, &page)
}

/// One page of the export log, newest first. Expired runs (older than 90 days) are
/// filtered by the store even before TTL deletes them.
pub async fn runs_page(
    deps: &Deps,
    tenant: &TenantId,
    limit: i32,
    cursor: Option<String>,
) -> Result<serde_json::Value, Problem> {
    let page = deps
        .store
        .query::<ExportRun>(
            &keys::tenant(tenant),
            "RUN#",
            &PageRequest {
                limit: Some(limit),
                cursor,
                descending: true,
            },
        )
        .await?;
    let mut runs = Vec::with_capacity(page.items.len());
    for run in &page.items {
        let mut view = run_view(run);
        // A run that recorded a failure told the tenant once (`custody::notice`): how
        // that notice's delivery went, beside the run.
        if run.errors.is_empty() {
            view["failure_notice"] = serde_json::Value::Null;
        } else {
            let key = Notice::key_of(tenant, &event_ids::export_failed(&run.run_id));
            view["failure_notice"] = match deps.store.get::<Notice>(&key).await? {
                Some(notice) => serde_json::json!({
                    "event_id": notice.event_id,
                    "status": notice.status,
                    "delivered_at": notice.delivered_at,
                }),
                None => serde_json::Value::Null,
            };
        }
        runs.push(view);
    }
    Ok(serde_json::json!({ "runs": runs, "next_cursor": page.next_cursor }))
}

/// The log entry of a run: times, status, counts, errors. No checkpoint internals.
pub fn run_view(run: &ExportRun) -> serde_json::Value {
    serde_json::json!({
        "run_id": run.run_id,
        "status": run.status,
        "trigger": run.trigger,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "window": { "start": run.window_start, "end": run.window_end },
        "channels": run.channels,
        "conversations": run.conversations,
        "messages": run.messages,
        "bytes": run.bytes,
        "requests": run.requests,
        "invocations": run.invocations,
        "conversations_restricted": run.conversations_restricted,
        "conversations_consent_withdrawn": run.conversations_consent_withdrawn,
        "errors": run.errors,
    })
}

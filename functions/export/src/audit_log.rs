//! The tenant's own audit log, readable (admin): `GET /audit`, one page of one chain
//! newest first, filterable by action and time; `GET /audit/verify`, both chains
//! verified against the signing key, with the latest signed checkpoint of each.
//!
//! In the export function beside the export log, not in dsar: that bootstrap is at
//! its 8 MiB size goal, and these routes (the chain verifier) cost about 60 KB.

use chrono::{DateTime, Utc};
use custody::api::{Caller, Problem, Role, json_response};
use custody::audit::{AuditClass, MAX_PAGE, PageQuery};
use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::json;

use crate::Deps;

/// Entries per page when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 50;
/// Longest `action` filter (actions are short dotted names).
pub const MAX_ACTION_LEN: usize = 64;

fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query_string_parameters_ref()
        .and_then(|q| q.first(name))
}

fn time_param(req: &Request, name: &'static str) -> Result<Option<DateTime<Utc>>, Problem> {
    query_param(req, name)
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Problem::bad_request(name, "must be an RFC 3339 date-time"))
        })
        .transpose()
}

/// The query of `GET /audit`, every parameter checked, each refusal naming it.
fn page_query(req: &Request) -> Result<(AuditClass, PageQuery), Problem> {
    let class = match query_param(req, "class") {
        None | Some("evidence") => AuditClass::Evidence,
        Some("activity") => AuditClass::Activity,
        Some(_) => {
            return Err(Problem::bad_request(
                "class",
                "must be evidence or activity",
            ));
        }
    };
    let limit = match query_param(req, "limit") {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                Problem::bad_request("limit", format!("must be between 1 and {MAX_PAGE}"))
            })?,
    };
    let before = query_param(req, "before")
        .map(|raw| {
            raw.parse::<u64>()
                .ok()
                .filter(|b| *b >= 1)
                .ok_or_else(|| Problem::bad_request("before", "must be a positive sequence number"))
        })
        .transpose()?;
    let action = query_param(req, "action")
        .map(|raw| {
            let valid = !raw.is_empty()
                && raw.len() <= MAX_ACTION_LEN
                && raw
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || matches!(b, b'.' | b'_'));
            valid.then(|| raw.to_owned()).ok_or_else(|| {
                Problem::bad_request(
                    "action",
                    format!(
                        "must be an action name of [a-z._], at most {MAX_ACTION_LEN} characters"
                    ),
                )
            })
        })
        .transpose()?;
    let from = time_param(req, "from")?;
    let to = time_param(req, "to")?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(Problem::bad_request("to", "must be after from"));
    }
    Ok((
        class,
        PageQuery {
            limit,
            before,
            action,
            from,
            to,
        },
    ))
}

/// `GET /audit`.
pub async fn page(deps: &Deps, req: &Request, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let (class, query) = page_query(req)?;
    let page = deps.audit.page(&caller.tenant, class, &query).await?;
    // Entries are stored with their details as JSON text (so the hash covers exact
    // bytes); a reader gets them as the object they are.
    let entries: Vec<serde_json::Value> = page
        .entries
        .iter()
        .map(|entry| {
            let mut value = serde_json::to_value(entry).unwrap_or_default();
            if let Some(details) = value.get_mut("details")
                && let Some(text) = details.as_str()
                && let Ok(object) = serde_json::from_str::<serde_json::Value>(text)
            {
                *details = object;
            }
            value
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "class": page.class, "entries": entries, "next_before": page.next_before }),
    )
}

/// `GET /audit/verify`: the verification of both chains as of now. A broken chain is
/// the answer, not an error (200 with `verified: false` and where it breaks).
pub async fn verify(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let tenant = &caller.tenant;
    let verified = deps.audit.verify(tenant).await?;
    let mut latest = serde_json::Map::new();
    for class in AuditClass::ALL {
        let checkpoint = deps.audit.checkpoints(tenant, class).await?.pop();
        latest.insert(
            class.name().to_owned(),
            checkpoint
                .map(|c| json!({ "seq": c.seq, "document": c.document, "signature": c.signature }))
                .unwrap_or(serde_json::Value::Null),
        );
    }
    let body = match verified {
        Ok(verified) => json!({
            "verified": true,
            "chains": verified.chains,
            "latest_checkpoints": latest,
        }),
        Err(broken) => json!({
            "verified": false,
            "broken": { "class": broken.class, "cause": broken.cause.to_string() },
            "latest_checkpoints": latest,
        }),
    };
    json_response(StatusCode::OK, &body)
}

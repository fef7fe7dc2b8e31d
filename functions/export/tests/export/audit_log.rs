//! `GET /audit` and `GET /audit/verify`: the tenant reads its own audit log, page by
//! page, filtered, and has it verified.

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use custody::audit::Event;
use custody::clock::{Clock as _, ManualClock};
use http::StatusCode;
use serde_json::{Value, json};

use crate::{Env, fast_limits, tenant};

const GET_AUDIT: &str = include_str!("../../../../events/export/get_audit.json");
const VERIFY_AUDIT: &str = include_str!("../../../../events/export/get_audit_verify.json");

/// The export function's deps with a manual clock for the audit log.
async fn env() -> (Env, ManualClock) {
    let mut env = Env::new(fast_limits()).await;
    let clock = ManualClock::at(chrono::Utc::now());
    env.deps.audit = env.stack.audit(Arc::new(clock.clone()));
    (env, clock)
}

fn acme() -> custody::TenantId {
    tenant("acme")
}

fn request(event: &str, tenant_name: &str, role: &str) -> lambda_http::Request {
    crate::api::request(event, &tenant(tenant_name), role, None)
}

async fn call(env: &Env, req: lambda_http::Request) -> (StatusCode, Value) {
    let response = export::handle_http(&env.deps, req).await;
    let body = serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null);
    (response.status(), body)
}

/// The `GET /audit` event with these query parameters.
fn audit_request(tenant: &str, role: &str, query: &[(&str, &str)]) -> lambda_http::Request {
    let mut ev: Value = serde_json::from_str(GET_AUDIT).unwrap();
    ev["queryStringParameters"] = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    // The values here need no escaping but a time zone's `+` and a space.
    ev["rawQueryString"] = json!(
        query
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace(' ', "%20")))
            .collect::<Vec<_>>()
            .join("&")
    );
    request(&ev.to_string(), tenant, role)
}

fn seqs(page: &Value) -> Vec<u64> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn an_admin_pages_through_one_chain_newest_first_with_filters() {
    let (env, clock) = env().await;
    let deps = &env.deps;
    let acme = acme();
    let start = clock.now();
    // Seven evidence entries a minute apart (every third a consent change), and two
    // activity entries.
    for i in 1..=7 {
        let action = if i % 3 == 0 {
            "consent.recorded"
        } else {
            "privacy_request.received"
        };
        deps.audit
            .append(&acme, Event::new("user:test", action, format!("PR#{i}")))
            .await
            .unwrap();
        clock.advance(chrono::Duration::minutes(1));
    }
    for _ in 0..2 {
        deps.audit
            .append(
                &acme,
                Event::new("system:export", "export.started", "RUN#1"),
            )
            .await
            .unwrap();
    }

    let (status, first) = call(&env, audit_request("acme", "admin", &[("limit", "3")])).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["class"], "evidence", "{first}");
    assert_eq!(seqs(&first), vec![7, 6, 5]);
    assert!(
        first["entries"][0]["hash"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );
    assert!(first["entries"][0]["details"].is_object(), "{first}");
    let before = first["next_before"].as_u64().unwrap().to_string();
    let (_, second) = call(
        &env,
        audit_request("acme", "admin", &[("limit", "3"), ("before", &before)]),
    )
    .await;
    assert_eq!(seqs(&second), vec![4, 3, 2]);
    let before = second["next_before"].as_u64().unwrap().to_string();
    let (_, last) = call(
        &env,
        audit_request("acme", "admin", &[("limit", "3"), ("before", &before)]),
    )
    .await;
    assert_eq!(seqs(&last), vec![1]);
    assert!(last["next_before"].is_null(), "{last}");

    // Filters: one action; a time window.
    let (_, consent) = call(
        &env,
        audit_request("acme", "admin", &[("action", "consent.recorded")]),
    )
    .await;
    assert_eq!(seqs(&consent), vec![6, 3]);
    // Between the entries' times (they are recorded to the millisecond).
    let from = (start + chrono::Duration::seconds(90)).to_rfc3339();
    let to = (start + chrono::Duration::seconds(210)).to_rfc3339();
    let (status, window) = call(
        &env,
        audit_request("acme", "admin", &[("from", &from), ("to", &to)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{window}");
    assert_eq!(seqs(&window), vec![4, 3]);
    // The other chain.
    let (_, activity) = call(
        &env,
        audit_request("acme", "admin", &[("class", "activity")]),
    )
    .await;
    assert_eq!(activity["class"], "activity");
    assert_eq!(seqs(&activity), vec![2, 1]);

    // Another tenant's log is its own (empty here); below admin, nothing.
    let (_, other) = call(&env, audit_request("globex", "admin", &[])).await;
    assert_eq!(seqs(&other), Vec::<u64>::new());
    let (status, _) = call(&env, audit_request("acme", "operator", &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Every parameter is checked, naming itself.
    for (query, field) in [
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "101")], "limit"),
        (vec![("class", "secret")], "class"),
        (vec![("before", "0")], "before"),
        (vec![("action", "DROP TABLE")], "action"),
        (vec![("from", "yesterday")], "from"),
        (vec![("from", to.as_str()), ("to", from.as_str())], "to"),
    ] {
        let (status, problem) = call(&env, audit_request("acme", "admin", &query)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query:?}: {problem}");
        assert_eq!(problem["field"], field, "{query:?}");
    }
}

#[tokio::test]
async fn verification_reports_an_intact_chain_and_finds_a_tampered_entry() {
    let (env, _clock) = env().await;
    let deps = &env.deps;
    let stack = &env.stack;
    let acme = acme();
    for i in 1..=3 {
        deps.audit
            .append(
                &acme,
                Event::new("user:test", "privacy_request.received", format!("PR#{i}")),
            )
            .await
            .unwrap();
    }
    let verify = || request(VERIFY_AUDIT, "acme", "admin");
    let (status, result) = call(&env, verify()).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["verified"], true, "{result}");
    let evidence = result["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "evidence")
        .unwrap()
        .clone();
    assert_eq!(evidence["entries"], 3);
    assert!(result["latest_checkpoints"].get("evidence").is_some());

    // Someone with table access rewrites an entry's target: the chain breaks there.
    stack
        .clients
        .dynamodb
        .update_item()
        .table_name(&stack.config.audit_table)
        .key("chain", AttributeValue::S("acme#evidence".into()))
        .key("seq", AttributeValue::N("2".into()))
        .update_expression("SET #t = :t")
        .expression_attribute_names("#t", "target")
        .expression_attribute_values(":t", AttributeValue::S("PR#forged".into()))
        .send()
        .await
        .unwrap();
    let (status, result) = call(&env, verify()).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["verified"], false, "{result}");
    assert_eq!(result["broken"]["class"], "evidence");
    let (status, _) = call(&env, request(VERIFY_AUDIT, "acme", "viewer")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

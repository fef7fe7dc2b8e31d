//! The EMF lines the dsar function writes for real handler calls, captured from the
//! recorder the binaries install: the metric names and values, the namespace, and
//! that no dimension or property carries a tenant, a pseudonym, an identifier or a
//! request id. Its own test binary: the recorder is process-wide, and the other
//! tests' counts must not mix in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use custody::clock::ManualClock;
use custody::metrics::{FUNCTION_DIMENSION, NAMESPACE, SERVICE_DIMENSION, names};
use custody::privacy::PrivacyRequest;
use custody::tenant::TenantId;
use custody_local::harness::TestStack;
use dsar::{Budget, Deps, DsarConfig};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const SUBJECT: [&str; 3] = [
    "annabel.quixote@example.com",
    "+447700900101",
    "hl-ann-0001",
];

fn request(event: &str, tenant: &str, body: Value) -> lambda_http::Request {
    let mut ev: Value = serde_json::from_str(event).unwrap();
    let claims = ev
        .pointer_mut("/requestContext/authorizer/jwt/claims")
        .and_then(Value::as_object_mut)
        .unwrap();
    claims.insert("custom:tenant_id".into(), json!(tenant));
    claims.insert("custom:role".into(), json!("admin"));
    let text = body.to_string();
    ev["headers"]["content-length"] = json!(text.len().to_string());
    ev["headers"]["content-type"] = json!("application/json");
    ev["body"] = json!(text);
    lambda_http::request::from_str(&ev.to_string()).unwrap()
}

async fn file(deps: &Deps, regulation: &str) -> String {
    let event = include_str!("../../../events/dsar-api/post_privacy_export.json");
    let body = json!({
        "subject": { "email": SUBJECT[0], "phone": SUBJECT[1], "contact_id": SUBJECT[2] },
        "regulation": regulation,
    });
    let response = dsar::handle_http(deps, request(event, "acme", body)).await;
    assert_eq!(response.status(), 202);
    let lambda_http::Body::Text(text) = response.body() else {
        panic!("no body")
    };
    serde_json::from_str::<Value>(text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn deliver(deps: &Deps, id: &str) {
    let event = include_str!("../../../events/dsar/stream_request_pending.json")
        .replace("01JH0000000000000000000000", id);
    let response = dsar::handle_stream(
        deps,
        serde_json::from_str(&event).unwrap(),
        Budget::Unlimited,
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
}

/// Metric values by (name, dimensions), checking the shape of every line.
fn parse(emf: &str) -> BTreeMap<(String, Vec<(String, String)>), f64> {
    let mut values = BTreeMap::new();
    for line in emf.lines() {
        let doc: Value = serde_json::from_str(line).unwrap();
        let aws = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(aws["Namespace"], NAMESPACE, "{line}");
        let dimensions: Vec<String> = aws["Dimensions"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect();
        for dimension in &dimensions {
            assert!(
                [FUNCTION_DIMENSION, SERVICE_DIMENSION].contains(&dimension.as_str()),
                "dimension {dimension} in {line}"
            );
        }
        assert_eq!(doc[FUNCTION_DIMENSION], "dsar", "{line}");
        let metrics: BTreeSet<String> = aws["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_owned())
            .collect();
        // Nothing else in the document: no property beside dimensions and values.
        for key in doc.as_object().unwrap().keys() {
            assert!(
                key == "_aws" || dimensions.contains(key) || metrics.contains(key),
                "unexpected property {key} in {line}"
            );
        }
        let dims: Vec<(String, String)> = dimensions
            .iter()
            .map(|d| (d.clone(), doc[d].as_str().unwrap().to_owned()))
            .collect();
        for name in metrics {
            let value = doc[&name].as_f64().unwrap();
            *values.entry((name, dims.clone())).or_insert(0.0) += value;
        }
    }
    values
}

#[tokio::test]
async fn dsar_emits_emf_with_counts_and_gauges_and_no_identifier() {
    let metrics = custody::metrics::init_for("dsar").unwrap();
    let stack = TestStack::new().await;
    let clock = ManualClock::at(Utc::now());
    let app_secret = custody::subject::load_app_secret(
        &stack.clients.secrets,
        &stack.config.pseudonym_secret_id,
    )
    .await
    .unwrap();
    let deps = Deps::new(
        stack.config.clone(),
        DsarConfig {
            link_ttl: Duration::from_secs(300),
            egress: custody::egress::EgressPolicy::LOCAL,
            oauth_function: "custody-oauth-test".into(),
            // No wait before the purge's final sweep (tests of the wait set their own).
            purge_grace: chrono::Duration::zero(),
            notice_email_sender: None,
        },
        &stack.clients,
        app_secret,
        custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
        Arc::new(clock.clone()),
    );
    let acme = TenantId::parse("acme").unwrap();
    let globex = TenantId::parse("globex").unwrap();

    // Two requests filed, one answered; a purge of globex that never runs; 40 days on
    // the daily check finds one of each late; then acme's account is purged.
    let open = file(&deps, "gdpr").await;
    let answered = file(&deps, "gdpr").await;
    deliver(&deps, &answered).await;
    dsar::account::start(&deps, &globex, "user:admin")
        .await
        .unwrap();
    clock.advance(chrono::Duration::days(40));
    let report = dsar::deadlines::check(&deps).await.unwrap();
    assert_eq!((report.requests_overdue, report.purges_stuck), (1, 1));
    let pseudonyms = deps
        .store
        .get::<PrivacyRequest>(&PrivacyRequest::key_of(&acme, &open))
        .await
        .unwrap()
        .unwrap()
        .pseudonyms;
    dsar::account::start(&deps, &acme, "user:admin")
        .await
        .unwrap();
    let purged = dsar::account::purge(&deps, &acme, Budget::Unlimited)
        .await
        .unwrap();
    assert_eq!(purged, dsar::account::PurgeProgress::Done);

    // A DynamoDB client of the same construction, throttled once by the service.
    let aws = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("content-type", "application/x-amz-json-1.0")
                .set_body_string(r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#),
        )
        .up_to_n_times(1)
        .mount(&aws)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.0")
                .set_body_string("{}"),
        )
        .mount(&aws)
        .await;
    let throttled = custody::aws::Clients::new(&custody::aws::sdk_config_for_endpoint(
        &aws.uri(),
        "eu-west-1",
    ));
    throttled
        .dynamodb
        .get_item()
        .table_name("t")
        .key("pk", AttributeValue::S("x".into()))
        .send()
        .await
        .unwrap();

    let mut out = Vec::new();
    metrics.flush_to(&mut out).unwrap();
    let emf = String::from_utf8(out).unwrap();
    let values = parse(&emf);
    let dsar = || vec![(FUNCTION_DIMENSION.to_owned(), "dsar".to_owned())];
    let get = |name: &str| values.get(&(name.to_owned(), dsar())).copied();
    assert_eq!(get(names::PRIVACY_REQUESTS_OPENED), Some(2.0), "{emf}");
    assert_eq!(get(names::PRIVACY_REQUESTS_COMPLETED), Some(1.0), "{emf}");
    assert_eq!(get(names::PRIVACY_REQUESTS_OVERDUE), Some(1.0), "{emf}");
    assert_eq!(get(names::ACCOUNT_PURGES_STUCK), Some(1.0), "{emf}");
    assert_eq!(get(names::PURGES_COMPLETED), Some(1.0), "{emf}");
    assert!(
        get(names::PURGE_ITEMS_DELETED).unwrap_or(0.0) >= 2.0,
        "{emf}"
    );
    let mut dynamodb = dsar();
    dynamodb.push((SERVICE_DIMENSION.to_owned(), "dynamodb".to_owned()));
    assert_eq!(
        values.get(&(names::AWS_THROTTLES.to_owned(), dynamodb.clone())),
        Some(&1.0),
        "{emf}"
    );
    assert_eq!(
        values.get(&(names::AWS_RETRIES.to_owned(), dynamodb)),
        Some(&1.0),
        "{emf}"
    );

    // Nothing identifying anywhere in the lines.
    assert!(!pseudonyms.is_empty());
    let mut needles: Vec<String> = vec!["acme".into(), "globex".into(), "ps_".into()];
    needles.extend(pseudonyms);
    needles.extend(SUBJECT.iter().map(|s| s.to_string()));
    needles.extend([open, answered]);
    for needle in needles {
        assert!(!emf.contains(&needle), "{needle} in {emf}");
    }

    // Counters restart after a flush; gauges keep the last check's value.
    let mut again = Vec::new();
    metrics.flush_to(&mut again).unwrap();
    let again = parse(&String::from_utf8(again).unwrap());
    assert!(!again.contains_key(&(names::PRIVACY_REQUESTS_OPENED.to_owned(), dsar())));
    assert_eq!(
        again.get(&(names::PRIVACY_REQUESTS_OVERDUE.to_owned(), dsar())),
        Some(&1.0)
    );
}

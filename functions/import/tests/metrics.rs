//! The EMF lines the import function writes for real rows imports: rows delivered on
//! `complete` (store mode) and pushed at once (bypass), and rows the destination
//! refused. Exact counts, the `function` dimension only, and no tenant, import id or
//! row value in any line. Its own test binary: the recorder is process-wide.

use std::collections::BTreeMap;
use std::time::Duration;

use custody::metrics::{FUNCTION_DIMENSION, NAMESPACE, names};
use custody::webhook::RetryPolicy;
use custody_local::harness::TestStack;
use custody_sim::destination::DestinationSim;
use http::StatusCode;
use import::{Deps, Settings};
use serde_json::{Value, json};

const SECRET: &str = "whsec_test_0123456789abcdef0123456789abcdef";
const CREATE: &str = include_str!("../../../events/import/create.json");
const ROWS: &str = include_str!("../../../events/import/rows.json");
const COMPLETE: &str = include_str!("../../../events/import/complete.json");

fn with_id(file: &str, id: &str) -> Value {
    let mut e: Value = serde_json::from_str(file).unwrap();
    e["pathParameters"]["id"] = json!(id);
    let path = e["rawPath"]
        .as_str()
        .unwrap()
        .replace("01JD2Z7Q3X9V8W7T6S5R4Q3P2N", id);
    e["rawPath"] = json!(path);
    e["requestContext"]["http"]["path"] = json!(path);
    e
}

fn with_body(mut event: Value, body: &Value) -> Value {
    event["body"] = json!(body.to_string());
    event["headers"]
        .as_object_mut()
        .unwrap()
        .remove("content-length");
    event
}

async fn call(deps: &Deps, event: &Value) -> (StatusCode, Value) {
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = import::http::handle(deps, request).await;
    let body = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (response.status(), body)
}

async fn create(deps: &Deps, dest: &DestinationSim, mode: &str) -> String {
    let body = json!({
        "format": "rows",
        "mode": mode,
        "destination": {"url": dest.url(), "secret": SECRET},
        "required_columns": ["id"],
    });
    let create: Value = serde_json::from_str(CREATE).unwrap();
    let (status, out) = call(deps, &with_body(create, &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    out["import"]["id"].as_str().unwrap().to_owned()
}

async fn post_rows(deps: &Deps, id: &str, rows: Value) -> StatusCode {
    call(deps, &with_body(with_id(ROWS, id), &rows)).await.0
}

#[tokio::test]
async fn rows_delivered_and_failed_are_counted_without_identifiers() {
    let metrics = custody::metrics::init_for("import").unwrap();
    let stack = TestStack::new().await;
    let app_secret = custody::subject::load_app_secret(
        &stack.clients.secrets,
        &stack.config.pseudonym_secret_id,
    )
    .await
    .unwrap();
    let deps = Deps::new(
        stack.config.clone(),
        Settings {
            egress: custody::egress::EgressPolicy::LOCAL,
            retry: RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
            },
        },
        &stack.clients,
        custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
        app_secret,
        TestStack::system_clock(),
    );
    let dest = DestinationSim::start(SECRET).await.unwrap();

    // Store mode: 3 rows stored, delivered on complete.
    let stored = create(&deps, &dest, "store").await;
    let rows = json!([{"id": "s1", "email": "s1@example.com"}, {"id": "s2"}, {"id": "s3"}]);
    assert_eq!(post_rows(&deps, &stored, rows).await, StatusCode::OK);
    let (status, out) = call(&deps, &with_id(COMPLETE, &stored)).await;
    assert_eq!(status, StatusCode::OK, "{out}");

    // Bypass: 2 rows pushed at once; 1 refused while the destination is down (502).
    let bypass = create(&deps, &dest, "bypass").await;
    let rows = json!([{"id": "b1", "email": "b1@example.com"}, {"id": "b2"}]);
    assert_eq!(post_rows(&deps, &bypass, rows).await, StatusCode::OK);
    dest.go_down(503);
    let rows = json!([{"id": "b3"}]);
    assert_eq!(
        post_rows(&deps, &bypass, rows).await,
        StatusCode::BAD_GATEWAY
    );
    dest.recover();

    let mut out = Vec::new();
    metrics.flush_to(&mut out).unwrap();
    let emf = String::from_utf8(out).unwrap();
    let mut values = BTreeMap::new();
    for line in emf.lines() {
        let doc: Value = serde_json::from_str(line).unwrap();
        let aws = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(aws["Namespace"], NAMESPACE, "{line}");
        if aws["Dimensions"][0] != json!([FUNCTION_DIMENSION]) {
            assert_eq!(
                aws["Dimensions"][0],
                json!([FUNCTION_DIMENSION, "service"]),
                "{line}"
            );
            continue;
        }
        assert_eq!(doc[FUNCTION_DIMENSION], "import", "{line}");
        let metrics = aws["Metrics"].as_array().unwrap();
        assert_eq!(doc.as_object().unwrap().len(), 2 + metrics.len(), "{line}");
        for metric in metrics {
            let name = metric["Name"].as_str().unwrap().to_owned();
            values.insert(name.clone(), doc[&name].as_f64().unwrap());
        }
    }
    assert_eq!(
        values.get(names::IMPORT_ROWS_DELIVERED),
        Some(&5.0),
        "{emf}"
    );
    assert_eq!(values.get(names::IMPORT_ROWS_FAILED), Some(&1.0), "{emf}");
    for needle in [
        "acme",
        stored.as_str(),
        bypass.as_str(),
        "@example.com",
        "b3",
    ] {
        assert!(!emf.contains(needle), "{needle} in {emf}");
    }
}

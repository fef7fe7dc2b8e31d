//! Tests of the import function against the local stack (moto, provisioned from
//! template.yaml) and a real local destination webhook (`custody_sim::destination`).
//! Every request and trigger starts from the files in `events/import/`.

mod api;
mod bypass;
mod deletion;
mod delivery;
mod expired_reads;
mod faults;
mod fence;
mod files;
mod reuse;
mod rows;
mod session;
mod suppression;

use std::time::Duration;

use aws_lambda_events::s3::S3Event;
use custody::api::Problem;
use custody::imports::Status;
use custody::webhook::RetryPolicy;
use custody_local::harness::TestStack;
use custody_sim::destination::DestinationSim;
use http::StatusCode;
use import::http::{Created, ImportView};
use import::{Deps, Settings};
use serde_json::{Value, json};

pub const CREATE: &str = include_str!("../../../../events/import/create.json");
pub const LIST: &str = include_str!("../../../../events/import/list.json");
pub const GET: &str = include_str!("../../../../events/import/get.json");
pub const ROWS: &str = include_str!("../../../../events/import/rows.json");
pub const COMPLETE: &str = include_str!("../../../../events/import/complete.json");
pub const RETRY: &str = include_str!("../../../../events/import/retry.json");
pub const DOWNLOAD: &str = include_str!("../../../../events/import/download.json");
pub const DELETE: &str = include_str!("../../../../events/import/delete.json");
pub const DELETE_ALL: &str = include_str!("../../../../events/import/delete_all.json");
pub const S3_CREATED: &str = include_str!("../../../../events/import/s3_object_created.json");

/// The webhook secret the destination verifies with.
pub const SECRET: &str = "whsec_test_0123456789abcdef0123456789abcdef";

pub struct Env {
    pub stack: TestStack,
    pub deps: Deps,
    pub dest: DestinationSim,
}

/// Retries fast, so failure paths take milliseconds.
pub const TEST_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_delay: Duration::from_millis(5),
    max_delay: Duration::from_millis(20),
};

pub async fn env() -> Env {
    env_with_clock(TestStack::system_clock()).await
}

/// The same, on a clock the test moves (retention tests).
pub async fn env_with_clock(clock: custody::clock::SharedClock) -> Env {
    let stack = TestStack::new().await;
    let app_secret = custody::subject::load_app_secret(
        &stack.clients.secrets,
        &stack.config.pseudonym_secret_id,
    )
    .await
    .unwrap();
    let settings = Settings {
        egress: custody::egress::EgressPolicy::LOCAL,
        retry: TEST_RETRY,
    };
    let deps = Deps::new(
        stack.config.clone(),
        settings,
        &stack.clients,
        custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
        app_secret,
        clock,
    );
    let dest = DestinationSim::start(SECRET).await.unwrap();
    Env { stack, deps, dest }
}

/// An event file with changes applied.
pub fn event(file: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut event: Value = serde_json::from_str(file).unwrap();
    change(&mut event);
    event
}

/// Points an HTTP event at an import id.
pub fn for_import(file: &str, id: &str) -> Value {
    event(file, |e| {
        e["pathParameters"]["id"] = json!(id);
        let path = e["rawPath"]
            .as_str()
            .unwrap()
            .replace("01JD2Z7Q3X9V8W7T6S5R4Q3P2N", id);
        e["rawPath"] = json!(path);
        e["requestContext"]["http"]["path"] = json!(path);
    })
}

pub fn with_body(mut event: Value, body: &Value) -> Value {
    event["body"] = json!(body.to_string());
    event["headers"]
        .as_object_mut()
        .unwrap()
        .remove("content-length");
    event
}

pub fn with_role(mut event: Value, role: &str) -> Value {
    event["requestContext"]["authorizer"]["jwt"]["claims"]["custom:role"] = json!(role);
    event
}

pub fn with_tenant(mut event: Value, tenant: &str) -> Value {
    event["requestContext"]["authorizer"]["jwt"]["claims"]["custom:tenant_id"] = json!(tenant);
    event
}

/// Runs an HTTP event through the function and returns status and JSON body.
pub async fn call(deps: &Deps, event: &Value) -> (StatusCode, Value) {
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = import::http::handle(deps, request).await;
    let status = response.status();
    let body = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, body)
}

pub fn problem(body: &Value) -> Problem {
    serde_json::from_value(body.clone()).unwrap()
}

/// Creates an import through `POST /imports` (the create event with this body).
pub async fn create(env: &Env, body: Value) -> Created {
    let (status, response) = call(&env.deps, &with_body(event(CREATE, |_| {}), &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{response}");
    serde_json::from_value(response).unwrap()
}

pub fn file_body(env: &Env, format: &str, mode: &str, size: usize) -> Value {
    let mut body = json!({
        "format": format,
        "mode": mode,
        "destination": {"url": env.dest.url(), "secret": SECRET},
        "size": size,
    });
    // Bypass imports have their own class (`bypass`, the default for that mode).
    if mode == "store" {
        body["retention_class"] = json!("import-30d");
    }
    body
}

/// Uploads `content` with the presigned PUT the create response gave, exactly as a
/// client would (the signed headers included). Returns the new object version.
pub async fn upload(created: &Created, content: &[u8]) -> String {
    let upload = created
        .upload
        .as_ref()
        .expect("file imports get an upload URL");
    let client = reqwest::Client::new();
    let mut request = client.put(&upload.url).body(content.to_vec());
    for (name, value) in &upload.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "presigned PUT failed: {}",
        response.status()
    );
    response
        .headers()
        .get("x-amz-version-id")
        .expect("the imports bucket is versioned")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The S3 notification from `events/import/` for this stack's bucket and key.
pub fn s3_event(env: &Env, key: &str, version: &str, size: usize) -> S3Event {
    let value = event(S3_CREATED, |e| {
        let record = &mut e["Records"][0];
        record["s3"]["bucket"]["name"] = json!(env.stack.config.imports_bucket);
        record["s3"]["bucket"]["arn"] =
            json!(format!("arn:aws:s3:::{}", env.stack.config.imports_bucket));
        record["s3"]["object"]["key"] = json!(key);
        record["s3"]["object"]["versionId"] = json!(version);
        record["s3"]["object"]["size"] = json!(size);
    });
    serde_json::from_value(value).unwrap()
}

/// Create + upload + deliver the S3 event: a file import end to end.
pub async fn import_file(env: &Env, format: &str, mode: &str, content: &[u8]) -> Created {
    let created = create(env, file_body(env, format, mode, content.len())).await;
    let version = upload(&created, content).await;
    let key = format!(
        "imports/acme/{}/upload.{}",
        created.import.id,
        if format == "csv" { "csv" } else { "jsonl" }
    );
    import::process::handle_s3(
        &env.deps,
        s3_event(env, &key, &version, content.len()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    created
}

pub async fn view(env: &Env, id: &str) -> ImportView {
    let (status, body) = call(&env.deps, &for_import(GET, id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

pub async fn status_of(env: &Env, id: &str) -> Status {
    view(env, id).await.status
}

/// Every object version and delete marker under a prefix.
pub async fn versions_under(env: &Env, prefix: &str) -> usize {
    let out = env
        .stack
        .clients
        .s3
        .list_object_versions()
        .bucket(&env.stack.config.imports_bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    out.versions().len() + out.delete_markers().len()
}

/// Every object version and delete marker of exactly `key`: (version id, is a
/// delete marker). `list_object_versions` takes a prefix, so other keys are dropped.
pub async fn versions_of_key(env: &Env, key: &str) -> Vec<(String, bool)> {
    let out = env
        .stack
        .clients
        .s3
        .list_object_versions()
        .bucket(&env.stack.config.imports_bucket)
        .prefix(key)
        .send()
        .await
        .unwrap();
    let versions = out
        .versions()
        .iter()
        .filter(|v| v.key() == Some(key))
        .map(|v| (v.version_id().unwrap_or("null").to_owned(), false));
    let markers = out
        .delete_markers()
        .iter()
        .filter(|m| m.key() == Some(key))
        .map(|m| (m.version_id().unwrap_or("null").to_owned(), true));
    versions.chain(markers).collect()
}

/// Raw subject-ref items of the tenant (expired or not), straight from the table.
pub async fn raw_refs(
    env: &Env,
    tenant: &str,
    sk_prefix: &str,
) -> Vec<aws_sdk_dynamodb::types::AttributeValue> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let out = env
        .stack
        .clients
        .dynamodb
        .query()
        .table_name(&env.stack.config.table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
        .expression_attribute_values(":pk", AttributeValue::S(format!("T#{tenant}")))
        .expression_attribute_values(":p", AttributeValue::S(sk_prefix.to_owned()))
        .send()
        .await
        .unwrap();
    out.items()
        .iter()
        .filter_map(|item| item.get("sk").cloned())
        .collect()
}

/// The tenant's audit entries, oldest first; the chain must verify.
pub async fn audit_entries(env: &Env, tenant: &str) -> Vec<custody::audit::Entry> {
    let tenant = custody::TenantId::parse(tenant).unwrap();
    let audit = env.stack.audit(TestStack::system_clock());
    assert!(audit.verify(&tenant).await.unwrap().is_ok());
    audit.entries(&tenant, None, None).await.unwrap()
}

/// A CSV of `n` valid rows with subjects (`row-<i>` ids).
pub fn csv_rows(n: usize) -> String {
    let mut csv = String::from("id,email,phone,note\r\n");
    for i in 0..n {
        csv.push_str(&format!(
            "row-{i},person{i}@example.com,+4477009{i:05},\"line one\r\nline two, with comma\"\r\n"
        ));
    }
    csv
}

/// The `id` values of what the destination accepted, in order.
pub fn delivered_ids(dest: &DestinationSim) -> Vec<String> {
    dest.rows()
        .iter()
        .map(|row| row["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

//! Bypass mode keeps nothing: the upload carries the `bypass` retention class, and
//! when processing ends — delivered, delivery failed or invalid — every version of
//! the object goes, with its index entries and data marker. Failures are reported by
//! line, rule and count, never with a row's content. Processing the same S3 event
//! again changes nothing and does not fail on the missing object.

use custody::imports::{Status, import_refs_prefix};
use custody::retention::RetentionClass;
use custody::store::{Key, keys};
use custody::telemetry::CapturedLogs;
use std::sync::OnceLock;

use crate::*;

/// The logs of every test in this binary (one global subscriber).
fn logs() -> CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        custody::telemetry::init_with_writer(logs.clone());
        logs
    })
    .clone()
}

/// Creates a bypass file import and uploads `csv` with its presigned PUT, checking
/// the upload is bound to the `bypass` class. Returns (created, key, version).
async fn upload_bypass(env: &Env, csv: &str) -> (Created, String, String) {
    let created = create(env, file_body(env, "csv", "bypass", csv.len())).await;
    assert_eq!(created.import.retention_class, RetentionClass::Bypass);
    let upload = created.upload.as_ref().expect("an upload URL");
    assert_eq!(
        upload.headers.get("x-amz-tagging").map(String::as_str),
        Some("retention-class=bypass")
    );
    assert!(
        upload.url.contains("x-amz-tagging"),
        "the tag is not a signed header: {}",
        upload.url
    );
    let version = upload_file(&created, csv.as_bytes()).await;
    let key = format!("imports/acme/{}/upload.csv", created.import.id);
    // What S3 stored carries the class, so the 1-day lifecycle backstop applies to
    // an object whose processing never ends.
    let tags = env
        .stack
        .clients
        .s3
        .get_object_tagging()
        .bucket(&env.stack.config.imports_bucket)
        .key(&key)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    let tags: Vec<(&str, &str)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    assert_eq!(tags, vec![("retention-class", "bypass")]);
    (created, key, version)
}

async fn upload_file(created: &Created, content: &[u8]) -> String {
    upload(created, content).await
}

async fn process(env: &Env, key: &str, version: &str, size: usize) {
    import::process::handle_s3(
        &env.deps,
        s3_event(env, key, version, size),
        Duration::from_secs(60),
    )
    .await
    .expect("processing the S3 event");
}

/// Nothing of the import is left: no object version or delete marker under its key
/// or prefix, no subject ref, no data marker.
async fn assert_nothing_kept(env: &Env, id: &str, key: &str) {
    assert_eq!(versions_of_key(env, key).await, vec![], "versions of {key}");
    assert_eq!(versions_under(env, &format!("imports/acme/{id}/")).await, 0);
    assert!(
        raw_refs(env, "acme", &import_refs_prefix(id))
            .await
            .is_empty()
    );
    assert!(
        raw_refs(env, "acme", &keys::import_data(id))
            .await
            .is_empty(),
        "the data marker is left"
    );
}

/// Forgets that an event was processed (its idempotency record expired), so the
/// next delivery of it runs the handler again.
async fn forget_event(env: &Env, id: &str, version: &str) {
    let tenant = custody::TenantId::parse("acme").unwrap();
    let key = Key::new(
        keys::idempotency(&tenant, &format!("upload:{id}#{version}")),
        "IDEM",
    );
    assert!(
        env.deps
            .imports
            .store()
            .get_item(&key)
            .await
            .unwrap()
            .is_some(),
        "no idempotency record at {key:?}"
    );
    env.deps.imports.store().delete(&key).await.unwrap();
}

#[tokio::test]
async fn a_delivered_bypass_file_leaves_no_version_and_a_second_event_changes_nothing() {
    let env = env().await;
    let csv = csv_rows(25);
    let (created, key, version) = upload_bypass(&env, &csv).await;
    let id = created.import.id.clone();
    process(&env, &key, &version, csv.len()).await;

    let shown = view(&env, &id).await;
    assert_eq!(shown.status, Status::Delivered);
    assert_eq!(shown.rows_delivered, 25);
    assert!(shown.data_deleted_at.is_some());
    assert_eq!(shown.data_expires_at, None);
    assert_eq!(delivered_ids(&env.dest).len(), 25);
    assert_nothing_kept(&env, &id, &key).await;

    // The same event again (S3 delivers at least once): one push, no failure.
    process(&env, &key, &version, csv.len()).await;
    // And once more after its idempotency record is gone: the import has ended, so
    // the handler only makes sure nothing is left, though the object is long gone.
    forget_event(&env, &id, &version).await;
    process(&env, &key, &version, csv.len()).await;
    assert_eq!(env.dest.requests().len(), 1);
    assert_eq!(delivered_ids(&env.dest).len(), 25);
    assert_eq!(status_of(&env, &id).await, Status::Delivered);
    assert_nothing_kept(&env, &id, &key).await;
    let entries = audit_entries(&env, "acme").await;
    let delivered: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "import.delivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{entries:#?}");
    assert_eq!(delivered[0].details["mode"], "bypass");
    assert_eq!(delivered[0].details["object_versions_deleted"], 1);
    let (status, _) = call(&env.deps, &for_import(DOWNLOAD, &id)).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_failed_bypass_delivery_keeps_nothing_and_reports_no_row_data() {
    let logs = logs();
    let env = env().await;
    env.dest.go_down(503);
    // Valid rows and rejected ones, each with values found nowhere else.
    let mut csv = String::from("id,email,note\n");
    let mut values = Vec::new();
    for i in 0..30 {
        let (id, email, note) = (
            format!("zq-id-{i}-7731"),
            format!("zq.person{i}@bypass-7731.example"),
            format!("zq secret note {i} 7731"),
        );
        csv.push_str(&format!("{id},{email},{note}\n"));
        values.extend([id, email, note]);
    }
    for i in 0..3 {
        let (id, email) = (
            format!("zq-bad-{i}-7731"),
            format!("not-an-email-zq{i}-7731"),
        );
        csv.push_str(&format!("{id},{email},x\n"));
        values.extend([id, email]);
    }
    let (created, key, version) = upload_bypass(&env, &csv).await;
    let id = created.import.id.clone();
    process(&env, &key, &version, csv.len()).await;

    let shown = view(&env, &id).await;
    assert_eq!(shown.status, Status::DeliveryFailed);
    assert_eq!(shown.rows_delivered, 0);
    assert_eq!(shown.rows_valid, 30);
    assert_eq!(shown.rows_invalid, 3);
    assert!(shown.data_deleted_at.is_some());
    assert_eq!(shown.data_expires_at, None);
    // The report: line numbers, rules and counts.
    let lines: Vec<u64> = shown.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![32, 33, 34]);
    assert!(
        shown
            .error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 503")),
        "{shown:?}"
    );
    assert!(env.dest.accepted().is_empty());
    assert_nothing_kept(&env, &id, &key).await;

    // No row's content in the import log, its API view, the audit log or the logs.
    let table = format!(
        "{:?}",
        env.stack
            .clients
            .dynamodb
            .scan()
            .table_name(&env.stack.config.table)
            .send()
            .await
            .unwrap()
            .items
    );
    let (_, view_json) = call(&env.deps, &for_import(GET, &id)).await;
    let entries = audit_entries(&env, "acme").await;
    let failed: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "import.delivery_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{entries:#?}");
    assert_eq!(failed[0].details["object_versions_deleted"], 1);
    let audit = format!("{entries:?}");
    let logged = logs.contents();
    assert!(
        logged.contains("webhook delivery attempt failed"),
        "the logs were not captured"
    );
    for value in &values {
        for (place, text) in [
            ("table", &table),
            ("view", &view_json.to_string()),
            ("audit", &audit),
            ("logs", &logged),
        ] {
            assert!(!text.contains(value.as_str()), "{value} is in the {place}");
        }
    }

    // Nothing to retry from: refused, nothing sent.
    let sent = env.dest.requests().len();
    let (status, body) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The event delivered again, also after its idempotency record is gone: no
    // failure, no second attempt, still nothing kept.
    process(&env, &key, &version, csv.len()).await;
    forget_event(&env, &id, &version).await;
    process(&env, &key, &version, csv.len()).await;
    assert_eq!(env.dest.requests().len(), sent);
    assert_eq!(status_of(&env, &id).await, Status::DeliveryFailed);
    assert_nothing_kept(&env, &id, &key).await;
}

#[tokio::test]
async fn an_invalid_bypass_file_keeps_nothing() {
    let env = env().await;
    let content = "id,email\n1,a@example.com\n2,\"never closed\n";
    let (created, key, version) = upload_bypass(&env, content).await;
    let id = created.import.id.clone();
    process(&env, &key, &version, content.len()).await;
    process(&env, &key, &version, content.len()).await;
    assert_eq!(status_of(&env, &id).await, Status::Invalid);
    assert!(env.dest.requests().is_empty());
    assert_nothing_kept(&env, &id, &key).await;
}

#[tokio::test]
async fn bypass_imports_take_only_the_bypass_class() {
    let env = env().await;
    // Rows imports of bypass mode too.
    let rows = create(
        &env,
        json!({"format": "rows", "mode": "bypass", "destination": {"url": env.dest.url(), "secret": SECRET}}),
    )
    .await;
    assert_eq!(rows.import.retention_class, RetentionClass::Bypass);
    let named = create(
        &env,
        json!({"format": "csv", "mode": "bypass", "retention_class": "bypass", "size": 10,
               "destination": {"url": env.dest.url(), "secret": SECRET}}),
    )
    .await;
    assert_eq!(named.import.retention_class, RetentionClass::Bypass);
    for (mode, class) in [
        ("bypass", "import-30d"),
        ("bypass", "import-90d"),
        ("store", "bypass"),
    ] {
        let mut body = file_body(&env, "csv", mode, 10);
        body["retention_class"] = json!(class);
        let (status, response) = call(&env.deps, &with_body(event(CREATE, |_| {}), &body)).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{mode} {class}: {response}"
        );
        assert_eq!(problem(&response).field.as_deref(), Some("retention_class"));
    }
}

//! Data-subject rights on imports: rows of a subject whose processing is restricted,
//! or who withdrew consent for the import's purpose, are not pushed to the
//! destination; they are counted (`rows_restricted`, `rows_consent_withdrawn`) and
//! recorded nowhere else. The stored data keeps them (storage alone is allowed under
//! a restriction).

use chrono::Utc;
use custody::privacy::PrivacySettings;
use custody::subject::{Identifier, IdentifierKind};
use custody::suppression::{Scope, lift, suppress};
use custody::{TenantId, imports::Status};
use import::http::{Download, RowsAccepted};

use crate::*;

const TENANT: &str = "acme";
const MARKETING: &str = "marketing";
const BILLING: &str = "billing";

/// Restricted (every purpose).
const RESTRICTED: &str = "restricted.person@example.com";
const RESTRICTED_PHONE: &str = "+447700900001";
/// Withdrew consent for `marketing`.
const WITHDRAWN: &str = "withdrawn.person@example.com";
/// Withdrew consent for `billing` only.
const OTHER_PURPOSE: &str = "billing.only@example.com";

fn tenant() -> TenantId {
    TenantId::parse(TENANT).unwrap()
}

/// The tenant declares its purposes (what `PUT /privacy/settings` writes).
async fn declare(env: &Env, purposes: &[&str]) {
    env.deps
        .imports
        .store()
        .put(&PrivacySettings {
            tenant: tenant(),
            time_zone: "UTC".into(),
            verification_webhook: None,
            purposes: purposes.iter().map(|p| (*p).to_owned()).collect(),
            updated_at: Utc::now(),
        })
        .await
        .unwrap();
}

fn pseudonym(env: &Env, kind: IdentifierKind, value: &str) -> String {
    let key = env
        .deps
        .app_secret
        .key_if_loaded(&tenant())
        .expect("the tests load the secret");
    key.pseudonym(&Identifier::new(kind, value, None).unwrap())
        .to_string()
}

/// One subject restricted (by email and phone), one withdrawn for `marketing`, one
/// withdrawn for `billing`.
async fn mark_subjects(env: &Env) {
    let store = env.deps.imports.store();
    let restricted = vec![
        pseudonym(env, IdentifierKind::Email, RESTRICTED),
        pseudonym(env, IdentifierKind::Phone, RESTRICTED_PHONE),
    ];
    suppress(
        store,
        &tenant(),
        &Scope::Restricted,
        &restricted,
        "privacy_request:test",
        Utc::now(),
    )
    .await
    .unwrap();
    for (purpose, email) in [(MARKETING, WITHDRAWN), (BILLING, OTHER_PURPOSE)] {
        suppress(
            store,
            &tenant(),
            &Scope::ConsentWithdrawn(purpose.into()),
            &[pseudonym(env, IdentifierKind::Email, email)],
            "consent",
            Utc::now(),
        )
        .await
        .unwrap();
    }
}

async fn setup() -> Env {
    let env = env().await;
    declare(&env, &[MARKETING, BILLING]).await;
    mark_subjects(&env).await;
    env
}

/// A CSV naming the three marked subjects among ordinary rows: the restricted one
/// twice (once by email, once by phone only).
fn marked_csv() -> String {
    let mut csv = String::from("id,email,phone,note\n");
    for i in 0..10 {
        csv.push_str(&format!("row-{i},person{i}@example.com,,ordinary\n"));
    }
    csv.push_str(&format!("restricted-1,{RESTRICTED},,secret note one\n"));
    csv.push_str(&format!(
        "restricted-2,,{RESTRICTED_PHONE},secret note two\n"
    ));
    csv.push_str(&format!("withdrawn-1,{WITHDRAWN},,secret note three\n"));
    csv.push_str(&format!("billing-1,{OTHER_PURPOSE},,fine for marketing\n"));
    csv
}

fn csv_body(env: &Env, size: usize, purpose: Option<&str>) -> Value {
    let mut body = file_body(env, "csv", "store", size);
    if let Some(purpose) = purpose {
        body["purpose"] = json!(purpose);
    }
    body
}

/// Create (with `purpose`) + upload + the S3 event.
async fn import_csv(env: &Env, csv: &str, purpose: Option<&str>) -> String {
    let created = create(env, csv_body(env, csv.len(), purpose)).await;
    assert_eq!(created.import.purpose.as_deref(), purpose);
    let version = upload(&created, csv.as_bytes()).await;
    let key = format!("imports/{TENANT}/{}/upload.csv", created.import.id);
    import::process::handle_s3(
        &env.deps,
        s3_event(env, &key, &version, csv.len()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    created.import.id
}

/// Everything the destination received, accepted or not, as text.
fn received_text(env: &Env) -> String {
    env.dest
        .requests()
        .iter()
        .map(|r| serde_json::to_string(&r.batch).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The named texts appear nowhere: not in what the destination received, the import
/// as the API shows it, the import item as stored, or the audit log.
async fn appear_nowhere(env: &Env, id: &str, texts: &[&str]) {
    let received = received_text(env);
    let (_, shown) = call(&env.deps, &for_import(GET, id)).await;
    let item = env
        .deps
        .imports
        .get(&tenant(), id)
        .await
        .unwrap()
        .expect("the import item");
    let stored = serde_json::to_string(&item).unwrap();
    let audit = serde_json::to_string(&audit_entries(env, TENANT).await).unwrap();
    for text in texts {
        assert!(!received.contains(text), "{text} reached the destination");
        assert!(!shown.to_string().contains(text), "{text} in the view");
        assert!(!stored.contains(text), "{text} in the import item");
        assert!(!audit.contains(text), "{text} in the audit log");
    }
}

/// The `import.delivered` entry of `id`.
async fn delivered_entry(env: &Env, id: &str) -> custody::audit::Entry {
    let entries: Vec<_> = audit_entries(env, TENANT)
        .await
        .into_iter()
        .filter(|e| e.action == "import.delivered" && e.target.ends_with(id))
        .collect();
    assert_eq!(entries.len(), 1, "one import.delivered entry");
    entries.into_iter().next().unwrap()
}

fn ordinary_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("row-{i}")).collect()
}

#[tokio::test]
async fn a_file_import_for_a_purpose_leaves_out_restricted_and_withdrawn_subjects() {
    let env = setup().await;
    let csv = marked_csv();
    let id = import_csv(&env, &csv, Some(MARKETING)).await;

    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Delivered, "{view:?}");
    assert_eq!(view.purpose.as_deref(), Some(MARKETING));
    assert_eq!((view.rows_total, view.rows_valid), (14, 14));
    assert_eq!(view.rows_delivered, 11);
    assert_eq!((view.rows_restricted, view.rows_consent_withdrawn), (2, 1));
    assert!(view.errors.is_empty(), "{:?}", view.errors);
    let mut expected = ordinary_ids(10);
    expected.push("billing-1".into());
    assert_eq!(delivered_ids(&env.dest), expected);

    let entry = delivered_entry(&env, &id).await;
    assert_eq!(entry.details["rows_delivered"], json!(11));
    assert_eq!(entry.details["rows_restricted"], json!(2));
    assert_eq!(entry.details["rows_consent_withdrawn"], json!(1));
    appear_nowhere(
        &env,
        &id,
        &[RESTRICTED, RESTRICTED_PHONE, WITHDRAWN, "secret note"],
    )
    .await;

    // Storage alone is allowed: the stored file keeps every row as uploaded.
    let (status, body) = call(&env.deps, &for_import(DOWNLOAD, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let download: Download = serde_json::from_value(body).unwrap();
    let fetched = reqwest::get(&download.objects[0].url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(fetched, csv);

    // The same event again changes nothing: no push, no count added.
    let key = format!("imports/{TENANT}/{id}/upload.csv");
    let versions = versions_of_key(&env, &key).await;
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, &key, &versions[0].0, csv.len()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let again = crate::view(&env, &id).await;
    assert_eq!(
        (
            again.rows_delivered,
            again.rows_restricted,
            again.rows_consent_withdrawn
        ),
        (11, 2, 1)
    );
    assert_eq!(delivered_ids(&env.dest).len(), 11);
}

#[tokio::test]
async fn without_a_purpose_only_restricted_subjects_are_left_out() {
    let env = setup().await;
    let id = import_csv(&env, &marked_csv(), None).await;
    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Delivered);
    assert_eq!(view.purpose, None);
    assert_eq!(view.rows_delivered, 12);
    assert_eq!((view.rows_restricted, view.rows_consent_withdrawn), (2, 0));
    let mut expected = ordinary_ids(10);
    expected.extend(["withdrawn-1".to_owned(), "billing-1".to_owned()]);
    assert_eq!(delivered_ids(&env.dest), expected);
    appear_nowhere(&env, &id, &[RESTRICTED, RESTRICTED_PHONE]).await;
    let entry = delivered_entry(&env, &id).await;
    assert_eq!(entry.details["rows_restricted"], json!(2));
    assert_eq!(entry.details["rows_consent_withdrawn"], json!(0));
}

#[tokio::test]
async fn lifting_a_restriction_delivers_the_subject_again_on_the_next_import() {
    let env = setup().await;
    let csv = marked_csv();
    let first = import_csv(&env, &csv, Some(MARKETING)).await;
    assert_eq!(view(&env, &first).await.rows_restricted, 2);

    let restricted = vec![
        pseudonym(&env, IdentifierKind::Email, RESTRICTED),
        pseudonym(&env, IdentifierKind::Phone, RESTRICTED_PHONE),
    ];
    lift(
        env.deps.imports.store(),
        &tenant(),
        &Scope::Restricted,
        &restricted,
    )
    .await
    .unwrap();
    let before = delivered_ids(&env.dest).len();
    let second = import_csv(&env, &csv, Some(MARKETING)).await;
    let view = view(&env, &second).await;
    assert_eq!(view.status, Status::Delivered);
    assert_eq!(view.rows_delivered, 13);
    assert_eq!((view.rows_restricted, view.rows_consent_withdrawn), (0, 1));
    let ids = delivered_ids(&env.dest);
    let second_ids = &ids[before..];
    assert!(second_ids.contains(&"restricted-1".to_owned()));
    assert!(second_ids.contains(&"restricted-2".to_owned()));
    assert!(!second_ids.contains(&"withdrawn-1".to_owned()));
    // The first import's counts stay as they were.
    let first = crate::view(&env, &first).await;
    assert_eq!((first.rows_restricted, first.rows_delivered), (2, 11));
}

/// JSON rows naming the marked subjects in the places the index looks: an aliased
/// column, a nested object, a phone column.
fn marked_rows() -> Vec<Value> {
    let mut rows: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("row-{i}"), "email": format!("person{i}@example.com")}))
        .collect();
    rows.push(
        json!({"id": "restricted-1", "Customer Email": RESTRICTED, "note": "secret note one"}),
    );
    rows.push(json!({"id": "restricted-2", "contact": {"phone": RESTRICTED_PHONE}}));
    rows.push(json!({"id": "withdrawn-1", "contact": {"email": WITHDRAWN}}));
    rows.push(json!({"id": "billing-1", "email": OTHER_PURPOSE}));
    rows
}

fn rows_body(env: &Env, mode: &str, purpose: &str) -> Value {
    json!({
        "format": "rows",
        "mode": mode,
        "destination": {"url": env.dest.url(), "secret": SECRET},
        "required_columns": ["id"],
        "purpose": purpose,
    })
}

async fn post_rows(env: &Env, id: &str, rows: &[Value]) -> RowsAccepted {
    let (status, body) = call(&env.deps, &with_body(for_import(ROWS, id), &json!(rows))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

#[tokio::test]
async fn a_rows_import_leaves_them_out_on_complete_and_stores_them() {
    let env = setup().await;
    let created = create(&env, rows_body(&env, "store", MARKETING)).await;
    let id = created.import.id.clone();
    let accepted = post_rows(&env, &id, &marked_rows()).await;
    assert_eq!((accepted.accepted, accepted.rejected), (9, 0));
    assert!(env.dest.requests().is_empty());

    let (status, body) = call(&env.deps, &for_import(COMPLETE, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows_restricted"], json!(2));
    assert_eq!(body["rows_consent_withdrawn"], json!(1));
    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Delivered);
    assert_eq!(view.rows_delivered, 6);
    let mut expected = ordinary_ids(5);
    expected.push("billing-1".into());
    assert_eq!(delivered_ids(&env.dest), expected);
    let entry = delivered_entry(&env, &id).await;
    assert_eq!(entry.details["rows_restricted"], json!(2));
    assert_eq!(entry.details["rows_consent_withdrawn"], json!(1));
    appear_nowhere(
        &env,
        &id,
        &[RESTRICTED, RESTRICTED_PHONE, WITHDRAWN, "secret note"],
    )
    .await;
    // The stored batch keeps every row.
    let stored = env
        .stack
        .clients
        .s3
        .get_object()
        .bucket(&env.stack.config.imports_bucket)
        .key(custody::imports::rows_batch_key(&tenant(), &id, 1))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let stored = String::from_utf8(stored.to_vec()).unwrap();
    assert_eq!(stored.lines().count(), 9);
    assert!(stored.contains(RESTRICTED) && stored.contains(WITHDRAWN));
}

#[tokio::test]
async fn a_bypass_batch_is_pushed_without_them_and_a_batch_of_only_them_is_not_sent() {
    let env = setup().await;
    let created = create(&env, rows_body(&env, "bypass", MARKETING)).await;
    let id = created.import.id.clone();

    let accepted = post_rows(&env, &id, &marked_rows()).await;
    assert_eq!((accepted.accepted, accepted.rejected), (9, 0));
    let mut expected = ordinary_ids(5);
    expected.push("billing-1".into());
    assert_eq!(delivered_ids(&env.dest), expected);
    let shown = view(&env, &id).await;
    assert_eq!(
        (
            shown.rows_delivered,
            shown.rows_restricted,
            shown.rows_consent_withdrawn
        ),
        (6, 2, 1)
    );

    // A batch of left-out rows only: nothing is sent, the counts still grow.
    let only_marked: Vec<Value> = marked_rows()
        .into_iter()
        .filter(|r| r["id"].as_str().unwrap().starts_with("restricted"))
        .collect();
    let requests = env.dest.requests().len();
    let accepted = post_rows(&env, &id, &only_marked).await;
    assert_eq!(accepted.accepted, 2);
    assert_eq!(env.dest.requests().len(), requests, "nothing sent");

    let (status, body) = call(&env.deps, &for_import(COMPLETE, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Delivered);
    assert_eq!(
        (
            view.rows_valid,
            view.rows_delivered,
            view.rows_restricted,
            view.rows_consent_withdrawn
        ),
        (11, 6, 4, 1)
    );
    let entry = delivered_entry(&env, &id).await;
    assert_eq!(entry.details["rows_restricted"], json!(4));
    assert_eq!(entry.details["rows_consent_withdrawn"], json!(1));
    appear_nowhere(
        &env,
        &id,
        &[RESTRICTED, RESTRICTED_PHONE, WITHDRAWN, "secret note"],
    )
    .await;
    assert_eq!(
        versions_under(&env, &format!("imports/{TENANT}/{id}/")).await,
        0
    );
}

/// `POST /imports` with `body` is a 400 naming `purpose`; returns the detail.
async fn refused(env: &Env, body: Value) -> String {
    let (status, response) = call(&env.deps, &with_body(event(CREATE, |_| {}), &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    let problem = problem(&response);
    assert_eq!(problem.field.as_deref(), Some("purpose"), "{response}");
    problem.detail
}

#[tokio::test]
async fn a_purpose_not_declared_or_malformed_is_refused_naming_the_field() {
    let env = env().await;
    let body = |purpose: Value| {
        let mut body = file_body(&env, "csv", "store", 100);
        body["purpose"] = purpose;
        body
    };

    // None declared: the answer says how to declare them.
    let detail = refused(&env, body(json!(MARKETING))).await;
    assert!(detail.contains("PUT /privacy/settings"), "{detail}");

    declare(&env, &[MARKETING, BILLING]).await;
    let detail = refused(&env, body(json!("sales"))).await;
    assert!(
        detail.contains(MARKETING) && detail.contains(BILLING),
        "{detail}"
    );
    for malformed in [
        json!(""),
        json!("Marketing"),
        json!("mark#eting"),
        json!("a".repeat(custody::privacy::MAX_PURPOSE_LEN + 1)),
    ] {
        refused(&env, body(malformed)).await;
    }
    // Not a string at all: the body is refused.
    let (status, _) = call(
        &env.deps,
        &with_body(event(CREATE, |_| {}), &body(json!(7))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Nothing was created.
    let (status, listing) = call(&env.deps, &event(LIST, |_| {})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["imports"], json!([]));
    assert!(
        audit_entries(&env, TENANT)
            .await
            .iter()
            .all(|e| e.action != "import.created")
    );

    // A declared one is taken and shown, and the entry of the creation names it.
    let created = create(&env, body(json!(BILLING))).await;
    assert_eq!(created.import.purpose.as_deref(), Some(BILLING));
    let entry = audit_entries(&env, TENANT)
        .await
        .into_iter()
        .find(|e| e.action == "import.created")
        .unwrap();
    assert_eq!(entry.details["purpose"], json!(BILLING));
}

#[tokio::test]
async fn a_retried_delivery_does_not_count_left_out_rows_twice() {
    let env = setup().await;
    // Three batches of 1 000 rows; marked subjects in the first and the last.
    let mut csv = String::from("id,email\n");
    for i in 0..2500 {
        let email = match i {
            10 => RESTRICTED.to_owned(),
            20 => WITHDRAWN.to_owned(),
            2100 => RESTRICTED.to_owned(),
            2200 => WITHDRAWN.to_owned(),
            2300 => OTHER_PURPOSE.to_owned(),
            _ => format!("person{i}@example.com"),
        };
        csv.push_str(&format!("row-{i},{email}\n"));
    }
    // The first batch gets through, then the destination goes down.
    env.dest.go_down_after(1, 500);
    let id = import_csv(&env, &csv, Some(MARKETING)).await;
    let failed = view(&env, &id).await;
    assert_eq!(failed.status, Status::DeliveryFailed);
    assert_eq!(failed.batches_delivered, 1);
    assert_eq!(
        (
            failed.rows_delivered,
            failed.rows_restricted,
            failed.rows_consent_withdrawn
        ),
        (998, 1, 1)
    );

    // Retry while still down: nothing more is counted.
    let (status, _) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::OK);
    let still = view(&env, &id).await;
    assert_eq!(still.status, Status::DeliveryFailed);
    assert_eq!(
        (
            still.rows_delivered,
            still.rows_restricted,
            still.rows_consent_withdrawn
        ),
        (998, 1, 1)
    );

    env.dest.recover();
    let (status, body) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = view(&env, &id).await;
    assert_eq!(done.status, Status::Delivered);
    assert_eq!(
        (
            done.rows_delivered,
            done.rows_restricted,
            done.rows_consent_withdrawn
        ),
        (2496, 2, 2)
    );
    let ids = delivered_ids(&env.dest);
    assert_eq!(ids.len(), 2496, "no row twice");
    for left_out in ["row-10", "row-20", "row-2100", "row-2200"] {
        assert!(!ids.contains(&left_out.to_owned()), "{left_out}");
    }
    assert!(ids.contains(&"row-2300".to_owned()));
    let batches: Vec<u64> = env.dest.accepted().iter().map(|b| b.batch).collect();
    assert_eq!(batches, vec![0, 1, 2]);
    let entry = delivered_entry(&env, &id).await;
    assert_eq!(entry.details["rows_restricted"], json!(2));
    assert_eq!(entry.details["rows_consent_withdrawn"], json!(2));
    appear_nowhere(&env, &id, &[RESTRICTED, WITHDRAWN]).await;
}

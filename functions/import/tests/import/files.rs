//! File imports: CSV and JSON Lines uploaded with the presigned PUT, processed on the
//! S3 notification, pushed to the destination.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use custody::TenantId;
use custody::imports::{Status, import_refs_prefix};
use custody::subject::Identifier;
use custody_local::harness::TestStack;
use sha2::Digest as _;

use crate::*;

#[tokio::test]
async fn csv_rows_reach_the_destination_once_signed_and_invalid_rows_are_reported() {
    let env = env().await;
    // BOM, CRLF, quoted fields with commas, quotes and newlines; 1 203 valid rows so
    // two batches go out; two broken rows in between.
    let mut csv = String::from("\u{feff}");
    csv.push_str(&csv_rows(600));
    csv.push_str("bad-email,not-an-address,,x\r\n");
    csv.push_str("too,few\r\n");
    for i in 600..1203 {
        csv.push_str(&format!(
            "row-{i},person{i}@example.com,,\"say \"\"hi\"\"\"\r\n"
        ));
    }
    let created = import_file(&env, "csv", "store", csv.as_bytes()).await;
    let id = &created.import.id;

    let view = view(&env, id).await;
    assert_eq!(view.status, Status::Delivered, "{view:?}");
    assert_eq!(view.rows_total, 1205);
    assert_eq!(view.rows_valid, 1203);
    assert_eq!(view.rows_invalid, 2);
    assert_eq!(view.rows_delivered, 1203);
    assert_eq!(view.batches_delivered, 2);
    assert_eq!(view.bytes, csv.len() as u64);
    assert_eq!(
        view.sha256.as_deref(),
        Some(hex::encode(sha2::Sha256::digest(csv.as_bytes())).as_str())
    );
    // Each record spans two physical lines (the quoted newline): row i starts on
    // line 2 + 2i; the broken rows follow the first 600.
    let lines: Vec<u64> = view.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![1202, 1203]);
    assert!(
        view.errors[0].message.contains("email"),
        "{:?}",
        view.errors
    );
    assert!(
        !serde_json::to_string(&view)
            .unwrap()
            .contains("not-an-address")
    );

    let requests = env.dest.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.signature_valid && r.status == 200)
    );
    let ids = delivered_ids(&env.dest);
    let expected: Vec<String> = (0..1203).map(|i| format!("row-{i}")).collect();
    assert_eq!(ids, expected, "every valid row once, in order");
    let first = &env.dest.rows()[0];
    assert_eq!(first["note"], "line one\r\nline two, with comma");
    assert_eq!(env.dest.rows()[1202]["note"], "say \"hi\"");

    // Subjects are indexed by pseudonym, pointing at the stored object.
    let tenant = TenantId::parse("acme").unwrap();
    let key = env.deps.app_secret.pseudonym_key(&tenant).await.unwrap();
    let pseudonym = key.pseudonym(&Identifier::email("Person7@Example.com").unwrap());
    let store = env.stack.store(TestStack::system_clock());
    let refs = store
        .subject_items(&tenant, pseudonym.as_str())
        .await
        .unwrap();
    assert_eq!(refs.len(), 1);
    let sk = refs[0]["subject_sk"].as_s().unwrap();
    assert!(sk.contains(&format!("{id}/upload.csv")), "{sk}");
    let phone = key.pseudonym(&Identifier::phone("+447700900007", None).unwrap());
    assert_eq!(
        store
            .subject_items(&tenant, phone.as_str())
            .await
            .unwrap()
            .len(),
        1
    );
    // One ref per distinct identifier (1 203 emails + 600 phones).
    assert_eq!(
        raw_refs(&env, "acme", &import_refs_prefix(id)).await.len(),
        1803
    );

    // Metadata only: the import item holds no row data and no secret.
    let dump = format!(
        "{:?}",
        env.stack
            .clients
            .dynamodb
            .get_item()
            .table_name(&env.stack.config.table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S("T#acme".into())
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("IMP#{id}"))
            )
            .send()
            .await
            .unwrap()
            .item
    );
    assert!(!dump.contains("example.com") && !dump.contains(SECRET) && !dump.contains("line one"));

    // The object carries its retention tag.
    let tags = env
        .stack
        .clients
        .s3
        .get_object_tagging()
        .bucket(&env.stack.config.imports_bucket)
        .key(format!("imports/acme/{id}/upload.csv"))
        .send()
        .await
        .unwrap();
    assert!(
        tags.tag_set()
            .iter()
            .any(|t| t.key() == custody::retention::S3_TAG_KEY && t.value() == "import-30d")
    );

    // An audit entry says it was delivered.
    let entries = audit_entries(&env, "acme").await;
    assert!(
        entries
            .iter()
            .any(|e| e.action == "import.delivered" && e.target == format!("IMP#{id}"))
    );
}

#[tokio::test]
async fn the_same_s3_event_twice_pushes_once() {
    let env = env().await;
    let csv = csv_rows(10);
    let created = create(&env, file_body(&env, "csv", "store", csv.len())).await;
    let version = upload(&created, csv.as_bytes()).await;
    let key = format!("imports/acme/{}/upload.csv", created.import.id);
    for _ in 0..2 {
        import::process::handle_s3(
            &env.deps,
            s3_event(&env, &key, &version, csv.len()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    }
    assert_eq!(env.dest.requests().len(), 1);
    assert_eq!(delivered_ids(&env.dest).len(), 10);
    assert_eq!(status_of(&env, &created.import.id).await, Status::Delivered);
    // Two concurrent deliveries of the event: still one push.
    let env2 = crate::env().await;
    let created = create(&env2, file_body(&env2, "csv", "store", csv.len())).await;
    let version = upload(&created, csv.as_bytes()).await;
    let key = format!("imports/acme/{}/upload.csv", created.import.id);
    let deps = Arc::new(env2.deps.clone());
    let a = import::process::handle_s3(
        &deps,
        s3_event(&env2, &key, &version, csv.len()),
        Duration::from_secs(60),
    );
    let b = import::process::handle_s3(
        &deps,
        s3_event(&env2, &key, &version, csv.len()),
        Duration::from_secs(60),
    );
    let (a, b) = tokio::join!(a, b);
    // The loser sees the claim in progress and fails, so S3 redelivers it later.
    assert!(a.is_ok() || b.is_ok());
    assert_eq!(env2.dest.requests().len(), 1);
}

#[tokio::test]
async fn jsonl_rows_reach_the_destination_and_bad_lines_are_reported() {
    let env = env().await;
    let mut jsonl = String::new();
    for i in 0..5 {
        jsonl.push_str(&format!(
            "{{\"id\":\"row-{i}\",\"email\":\"p{i}@example.com\",\"tags\":[1,2],\"nested\":{{\"a\":true}}}}\r\n"
        ));
    }
    jsonl.push_str("[\"an array\"]\n");
    jsonl.push_str("{\"id\": broken\n");
    jsonl.push('\n');
    jsonl.push_str("{\"id\":\"row-5\",\"contact_id\":\"c-55\"}\n");
    let created = import_file(&env, "jsonl", "store", jsonl.as_bytes()).await;
    let view = view(&env, &created.import.id).await;
    assert_eq!(view.status, Status::Delivered, "{view:?}");
    assert_eq!((view.rows_valid, view.rows_invalid), (6, 2));
    let lines: Vec<u64> = view.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![6, 7]);
    let ids: HashSet<String> = delivered_ids(&env.dest).into_iter().collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(delivered_ids(&env.dest).len(), 6);
    assert_eq!(env.dest.rows()[0]["nested"]["a"], true);
    assert!(env.dest.requests().iter().all(|r| r.signature_valid));
}

#[tokio::test]
async fn malformed_files_end_invalid_with_nothing_pushed_and_nothing_kept() {
    let env = env().await;
    let mut huge_line = b"id,note\n1,".to_vec();
    huge_line.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    huge_line.push(b'\n');
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("csv", garbage.clone(), "binary"),
        ("jsonl", garbage, "binary"),
        // Latin-1 "café" is not UTF-8.
        (
            "csv",
            b"id,name\n1,caf\xe9\n".to_vec(),
            "line 2 is not valid UTF-8",
        ),
        (
            "csv",
            b"id,note\n1,\"never closed\n2,x\n".to_vec(),
            "line 2: a quoted field is never closed",
        ),
        ("csv", huge_line, "line 2 is longer than"),
        (
            "csv",
            b"jane@example.com,+447700900123\nx@example.com,1\n".to_vec(),
            "header row",
        ),
        ("csv", b"id,email\n".to_vec(), "no data rows"),
    ];
    for (format, content, expected) in cases {
        let before = env.dest.requests().len();
        let created = import_file(&env, format, "store", &content).await;
        let view = view(&env, &created.import.id).await;
        assert_eq!(view.status, Status::Invalid, "{expected}: {view:?}");
        let error = view.error.clone().unwrap_or_default();
        assert!(error.contains(expected), "{expected}: {error}");
        assert_eq!(
            env.dest.requests().len(),
            before,
            "{expected}: nothing pushed"
        );
        assert_eq!(view.rows_delivered, 0);
        let prefix = format!("imports/acme/{}/", created.import.id);
        assert_eq!(
            versions_under(&env, &prefix).await,
            0,
            "{expected}: data removed"
        );
        assert!(
            raw_refs(&env, "acme", &import_refs_prefix(&created.import.id))
                .await
                .is_empty()
        );
    }
}

#[tokio::test]
async fn an_empty_file_is_refused_at_creation_and_invalid_if_uploaded_anyway() {
    let env = env().await;
    let (status, body) = call(
        &env.deps,
        &with_body(event(CREATE, |_| {}), &file_body(&env, "csv", "store", 0)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem(&body).field.as_deref(), Some("size"));

    // A client that ignores the signed size and uploads nothing.
    let created = create(&env, file_body(&env, "csv", "store", 10)).await;
    let key = format!("imports/acme/{}/upload.csv", created.import.id);
    let put = env
        .stack
        .clients
        .s3
        .put_object()
        .bucket(&env.stack.config.imports_bucket)
        .key(&key)
        .body(Vec::new().into())
        .send()
        .await
        .unwrap();
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, &key, put.version_id().unwrap(), 0),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let view = view(&env, &created.import.id).await;
    assert_eq!(view.status, Status::Invalid);
    assert_eq!(view.error.as_deref(), Some("the file is empty"));
    assert!(env.dest.requests().is_empty());
}

#[tokio::test]
async fn bypass_file_import_leaves_no_object_version() {
    let env = env().await;
    let csv = csv_rows(25);
    let created = import_file(&env, "csv", "bypass", csv.as_bytes()).await;
    let view = view(&env, &created.import.id).await;
    assert_eq!(view.status, Status::Delivered);
    assert_eq!(view.rows_delivered, 25);
    assert!(view.data_deleted_at.is_some());
    assert_eq!(delivered_ids(&env.dest).len(), 25);
    let prefix = format!("imports/acme/{}/", created.import.id);
    assert_eq!(versions_under(&env, &prefix).await, 0);
    assert!(
        raw_refs(&env, "acme", &import_refs_prefix(&created.import.id))
            .await
            .is_empty()
    );
    let (status, _) = call(&env.deps, &for_import(DOWNLOAD, &created.import.id)).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn events_for_unknown_or_foreign_objects_are_ignored() {
    let env = env().await;
    // An id no import has, a key outside the layout, another bucket: no effect, no error.
    let unknown = "imports/acme/01JD2Z7Q3X9V8W7T6S5R4Q3P2N/upload.csv";
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, unknown, "v1", 10),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, "elsewhere/x.csv", "v1", 10),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut other = s3_event(&env, unknown, "v1", 10);
    other.records[0].s3.bucket.name = Some("someone-elses-bucket".into());
    import::process::handle_s3(&env.deps, other, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(env.dest.requests().is_empty());
}

/// Subjects named under aliased headers, inside nested objects, or in fields the
/// import declared are indexed like any other, so a data-subject request finds them.
#[tokio::test]
async fn declared_nested_and_aliased_identifiers_are_indexed() {
    let env = env().await;
    let tenant = TenantId::parse("acme").unwrap();
    let key = env.deps.app_secret.pseudonym_key(&tenant).await.unwrap();
    let store = env.stack.store(TestStack::system_clock());
    let refs_of = |id: Identifier| {
        let store = store.clone();
        let tenant = tenant.clone();
        let pseudonym = key.pseudonym(&id).to_string();
        async move {
            store
                .subject_items(&tenant, &pseudonym)
                .await
                .unwrap()
                .len()
        }
    };

    // Aliased CSV headers, no declaration needed.
    let csv = "id,Customer Email,Mobile Phone\nrow-0,Ann.Alias@Example.com,+44 7700 900555\n";
    import_file(&env, "csv", "store", csv.as_bytes()).await;
    assert_eq!(
        refs_of(Identifier::email("ann.alias@example.com").unwrap()).await,
        1
    );
    assert_eq!(
        refs_of(Identifier::phone("+447700900555", None).unwrap()).await,
        1
    );

    // Nested JSON Lines: `contact.email` by default, a declared pointer for the rest.
    let jsonl = concat!(
        r#"{"id":"row-0","contact":{"email":"nested@example.com"}}"#,
        "\n",
        r#"{"id":"row-1","payload":{"customer":{"mail":"deep@example.com","ref":"crm-42"}}}"#,
        "\n",
    );
    let mut body = file_body(&env, "jsonl", "store", jsonl.len());
    body["identifiers"] = json!({
        "email": ["/payload/customer/mail"],
        "contact_id": ["/payload/customer/ref"],
    });
    let created = create(&env, body).await;
    assert_eq!(
        created.import.identifiers.as_ref().unwrap().email,
        vec!["/payload/customer/mail".to_owned()]
    );
    let version = upload(&created, jsonl.as_bytes()).await;
    let object = format!("imports/acme/{}/upload.jsonl", created.import.id);
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, &object, &version, jsonl.len()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&env, &created.import.id).await, Status::Delivered);
    for id in [
        Identifier::email("nested@example.com").unwrap(),
        Identifier::email("deep@example.com").unwrap(),
        Identifier::contact_id("crm-42").unwrap(),
    ] {
        assert_eq!(refs_of(id).await, 1);
    }
}

#[tokio::test]
async fn bad_identifier_declarations_are_refused_naming_the_field() {
    let env = env().await;
    for (format, identifiers, field) in [
        (
            "jsonl",
            json!({"email": ["email", "/a//b"]}),
            "identifiers.email[1]",
        ),
        (
            "jsonl",
            json!({"phone": ["1st column"]}),
            "identifiers.phone[0]",
        ),
        (
            "csv",
            json!({"contact_id": ["/nested/id"]}),
            "identifiers.contact_id[0]",
        ),
        ("jsonl", json!({"mail": ["x"]}), "identifiers"),
    ] {
        let mut body = file_body(&env, format, "store", 10);
        body["identifiers"] = identifiers;
        let (status, problem) = call(&env.deps, &with_body(event(CREATE, |_| {}), &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert!(problem.to_string().contains(field), "{field}: {problem}");
    }
}

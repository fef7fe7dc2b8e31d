//! The API's own failure paths and contracts: roles, tenancy, bodies, the presigned
//! upload, listing, and the Lambda entry point for both kinds of invocation.

use custody::imports::Status;
use import::http::Listing;
use lambda_runtime::{Context, LambdaEvent};

use crate::*;

#[tokio::test]
async fn create_returns_a_presigned_put_bound_to_type_size_encryption_and_tag() {
    let env = env().await;
    let created = create(&env, file_body(&env, "csv", "store", 1234)).await;
    assert_eq!(created.import.status, Status::Created);
    assert_eq!(
        created.import.destination_host.as_deref(),
        Some("127.0.0.1")
    );
    assert!(
        created.destination_secret.is_none(),
        "the caller chose the secret"
    );
    let upload = created.upload.unwrap();
    assert_eq!(upload.method, "PUT");
    assert!(
        upload
            .url
            .contains(&format!("imports/acme/{}/upload.csv", created.import.id))
    );
    assert!(upload.url.contains("X-Amz-Signature="));
    assert!(upload.url.contains("X-Amz-Expires=900"));
    let header = |name: &str| upload.headers.get(name).cloned();
    assert_eq!(header("content-type").as_deref(), Some("text/csv"));
    assert_eq!(header("content-length").as_deref(), Some("1234"));
    assert_eq!(
        header("x-amz-server-side-encryption").as_deref(),
        Some("aws:kms")
    );
    assert_eq!(
        header("x-amz-server-side-encryption-aws-kms-key-id").as_deref(),
        Some(env.stack.config.data_key_id.as_str())
    );
    assert_eq!(
        header("x-amz-tagging").as_deref(),
        Some("retention-class=import-30d")
    );
    // Every one of these is signed.
    for name in [
        "content-type",
        "content-length",
        "x-amz-server-side-encryption",
        "x-amz-tagging",
    ] {
        assert!(
            upload.url.contains(name),
            "{name} is not a signed header: {}",
            upload.url
        );
    }

    // The secret is sealed: not in the table, not in the response.
    let dump = format!(
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
    assert!(!dump.contains(SECRET));
}

#[tokio::test]
async fn a_generated_secret_is_returned_once_and_never_again() {
    let env = env().await;
    let mut body = file_body(&env, "jsonl", "store", 10);
    body["destination"]
        .as_object_mut()
        .unwrap()
        .remove("secret");
    let created = create(&env, body).await;
    let secret = created
        .destination_secret
        .expect("generated secret returned once");
    assert_eq!(secret.len(), 64);
    let (_, again) = call(&env.deps, &for_import(GET, &created.import.id)).await;
    assert!(!again.to_string().contains(&secret));
}

#[tokio::test]
async fn caller_mistakes_are_4xx_naming_the_field() {
    let env = env().await;
    let base = file_body(&env, "csv", "store", 100);
    let cases: Vec<(Value, StatusCode, Option<&str>)> = vec![
        (
            json!({"format": "xml"}),
            StatusCode::BAD_REQUEST,
            Some("format"),
        ),
        (
            {
                let mut b = base.clone();
                b["destination"]["url"] = json!("http://hooks.example.com/x");
                b
            },
            StatusCode::BAD_REQUEST,
            Some("destination.url"),
        ),
        (
            {
                let mut b = base.clone();
                b["destination"]["url"] = json!("https://169.254.169.254/latest");
                b
            },
            StatusCode::BAD_REQUEST,
            Some("destination.url"),
        ),
        (
            {
                let mut b = base.clone();
                b["destination"]["secret"] = json!("short");
                b
            },
            StatusCode::BAD_REQUEST,
            Some("destination.secret"),
        ),
        (
            {
                let mut b = base.clone();
                b["retention_class"] = json!("export-log");
                b
            },
            StatusCode::BAD_REQUEST,
            Some("retention_class"),
        ),
        (
            {
                let mut b = base.clone();
                b.as_object_mut().unwrap().remove("size");
                b
            },
            StatusCode::BAD_REQUEST,
            Some("size"),
        ),
        (
            {
                let mut b = base.clone();
                b["size"] = json!(u64::MAX);
                b
            },
            StatusCode::BAD_REQUEST,
            Some("size"),
        ),
        (
            {
                let mut b = base.clone();
                b["required_columns"] = json!(["ok", "not@ok"]);
                b
            },
            StatusCode::BAD_REQUEST,
            Some("required_columns[1]"),
        ),
        (
            {
                let mut b = base.clone();
                b["default_country_code"] = json!("0x");
                b
            },
            StatusCode::BAD_REQUEST,
            Some("default_country_code"),
        ),
        (
            {
                let mut b = base.clone();
                b["format"] = json!("rows");
                b
            },
            StatusCode::BAD_REQUEST,
            Some("size"),
        ),
        (
            {
                let mut b = base.clone();
                b["surprise"] = json!(1);
                b
            },
            StatusCode::BAD_REQUEST,
            Some("surprise"),
        ),
    ];
    for (body, expected, field) in cases {
        let (status, response) = call(&env.deps, &with_body(event(CREATE, |_| {}), &body)).await;
        assert_eq!(status, expected, "{body}: {response}");
        assert_eq!(
            problem(&response).field.as_deref(),
            field,
            "{body}: {response}"
        );
    }
    // Roles, claims and ids.
    let (status, _) = call(
        &env.deps,
        &with_role(with_body(event(CREATE, |_| {}), &base), "viewer"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let no_claims = event(LIST, |e| {
        e["requestContext"]["authorizer"]["jwt"]["claims"] = json!({});
    });
    assert_eq!(
        call(&env.deps, &no_claims).await.0,
        StatusCode::UNAUTHORIZED
    );
    for id in ["not-an-id", "01JD2Z7Q3X9V8W7T6S5R4Q3P2N"] {
        assert_eq!(
            call(&env.deps, &for_import(GET, id)).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let created = create(&env, base.clone()).await;
    let other = with_tenant(for_import(GET, &created.import.id), "globex");
    assert_eq!(call(&env.deps, &other).await.0, StatusCode::NOT_FOUND);
    // Retry and complete are only for the right state and format.
    assert_eq!(
        call(&env.deps, &for_import(RETRY, &created.import.id))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        call(&env.deps, &for_import(COMPLETE, &created.import.id))
            .await
            .0,
        StatusCode::CONFLICT
    );
    // Nothing uploaded yet: nothing to download.
    assert_eq!(
        call(&env.deps, &for_import(DOWNLOAD, &created.import.id))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let unknown_route = event(LIST, |e| e["routeKey"] = json!("PATCH /imports"));
    let unknown_route = event(&unknown_route.to_string(), |e| {
        e["requestContext"]["routeKey"] = json!("PATCH /imports")
    });
    assert_eq!(
        call(&env.deps, &unknown_route).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn list_pages_through_the_tenants_imports_newest_first() {
    let env = env().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            create(&env, file_body(&env, "csv", "store", 10))
                .await
                .import
                .id,
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let page = |cursor: Option<String>| {
        let mut query = "limit=2".to_owned();
        if let Some(cursor) = &cursor {
            query.push_str(&format!("&cursor={cursor}"));
        }
        event(LIST, move |e| {
            e["rawQueryString"] = json!(query);
            e["queryStringParameters"]["limit"] = json!("2");
            if let Some(cursor) = cursor {
                e["queryStringParameters"]["cursor"] = json!(cursor);
            }
        })
    };
    let (status, body) = call(&env.deps, &page(None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first: Listing = serde_json::from_value(body).unwrap();
    assert_eq!(first.imports.len(), 2);
    let (_, body) = call(&env.deps, &page(first.next_cursor.clone())).await;
    let second: Listing = serde_json::from_value(body).unwrap();
    let listed: Vec<String> = first
        .imports
        .iter()
        .chain(&second.imports)
        .map(|i| i.id.clone())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    // API Gateway v2 passes both forms; lambda_http reads the raw query string.
    let bad_limit = event(LIST, |e| {
        e["rawQueryString"] = json!("limit=1000");
        e["queryStringParameters"]["limit"] = json!("1000");
    });
    assert_eq!(call(&env.deps, &bad_limit).await.0, StatusCode::BAD_REQUEST);
    let bad_cursor = event(LIST, |e| {
        e["rawQueryString"] = json!("cursor=garbage");
        e["queryStringParameters"]["cursor"] = json!("garbage");
    });
    assert_eq!(
        call(&env.deps, &bad_cursor).await.0,
        StatusCode::BAD_REQUEST
    );
    // Another tenant lists nothing of acme's.
    let (_, body) = call(&env.deps, &with_tenant(event(LIST, |_| {}), "globex")).await;
    assert_eq!(body["imports"], json!([]));
}

#[tokio::test]
async fn the_lambda_entry_point_serves_both_http_and_s3_invocations() {
    let env = env().await;
    let csv = csv_rows(2);
    let payload = with_body(
        event(CREATE, |_| {}),
        &file_body(&env, "csv", "store", csv.len()),
    );
    let context = || {
        let mut context = Context::default();
        context.deadline = (chrono::Utc::now().timestamp_millis() + 60_000) as u64;
        context
    };
    let response = import::handle(&env.deps, LambdaEvent::new(payload, context()))
        .await
        .unwrap();
    assert_eq!(response["statusCode"], 201);
    assert_eq!(response["headers"]["content-type"], "application/json");
    let created: import::http::Created =
        serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    let version = upload(&created, csv.as_bytes()).await;
    let key = format!("imports/acme/{}/upload.csv", created.import.id);
    let s3 = serde_json::to_value(s3_event(&env, &key, &version, csv.len())).unwrap();
    let response = import::handle(&env.deps, LambdaEvent::new(s3, context()))
        .await
        .unwrap();
    assert_eq!(response, Value::Null);
    assert_eq!(status_of(&env, &created.import.id).await, Status::Delivered);
    assert_eq!(delivered_ids(&env.dest), vec!["row-0", "row-1"]);
}

#[test]
fn settings_read_the_one_egress_switch() {
    use custody::egress::{ALLOW_LOOPBACK_VAR, EgressPolicy};
    assert_eq!(Settings::from_lookup(|_| None).egress, EgressPolicy::STRICT);
    let local = Settings::from_lookup(|name| (name == ALLOW_LOOPBACK_VAR).then(|| "true".into()));
    assert_eq!(local.egress, EgressPolicy::LOCAL);
    // Only the exact value relaxes it.
    let vague = Settings::from_lookup(|name| (name == ALLOW_LOOPBACK_VAR).then(|| "yes".into()));
    assert_eq!(vague.egress, EgressPolicy::STRICT);
}

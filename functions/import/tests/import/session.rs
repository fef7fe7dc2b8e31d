//! Import sessions: an operator mints a short-lived token; a page embedding
//! `<custody-importer>` creates imports with it, and only imports, for that tenant,
//! to the destination the session fixed, and sees only the imports it created.

use std::sync::Arc;

use chrono::{Duration as Span, Utc};
use custody::clock::ManualClock;
use custody::imports::Status;
use import::http::Minted;

use crate::*;

const MINT: &str = include_str!("../../../../events/import/session_mint.json");
const REVOKE: &str = include_str!("../../../../events/import/session_revoke.json");
const EMBED_CREATE: &str = include_str!("../../../../events/import/embed_create.json");
const EMBED_GET: &str = include_str!("../../../../events/import/embed_get.json");
const EMBED_ROWS: &str = include_str!("../../../../events/import/embed_rows.json");
const EMBED_COMPLETE: &str = include_str!("../../../../events/import/embed_complete.json");

const ORIGIN: &str = "https://app.example.com";

fn mint_body(env: &Env) -> Value {
    json!({
        "destination": {"url": env.dest.url(), "secret": SECRET},
        "origin": ORIGIN,
        "lifetime_minutes": 10,
    })
}

async fn mint(env: &Env, body: Value) -> Minted {
    let (status, response) = call(&env.deps, &with_body(event(MINT, |_| {}), &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{response}");
    serde_json::from_value(response).unwrap()
}

/// An embedded request: the session's token, from `origin` (none when `None`).
fn embedded(file: &str, token: &str, origin: Option<&str>) -> Value {
    event(file, |e| {
        e["headers"]["authorization"] = json!(format!("Bearer {token}"));
        match origin {
            Some(origin) => e["headers"]["origin"] = json!(origin),
            None => {
                e["headers"].as_object_mut().unwrap().remove("origin");
            }
        }
    })
}

fn embedded_for(file: &str, token: &str, id: &str) -> Value {
    let mut e = for_import(file, id);
    e["headers"]["authorization"] = json!(format!("Bearer {token}"));
    e["headers"]["origin"] = json!(ORIGIN);
    e
}

fn rows_import() -> Value {
    json!({"format": "rows", "mode": "store", "required_columns": ["id"]})
}

async fn embed_create(env: &Env, token: &str, body: &Value) -> (StatusCode, Value) {
    call(
        &env.deps,
        &with_body(embedded(EMBED_CREATE, token, Some(ORIGIN)), body),
    )
    .await
}

#[tokio::test]
async fn an_embedded_importer_imports_to_the_sessions_destination() {
    let env = env().await;
    let minted = mint(&env, mint_body(&env)).await;
    assert!(minted.token.starts_with("cis_"));
    assert!(minted.destination_secret.is_none(), "the secret was given");
    assert_eq!(minted.session.origin.as_deref(), Some(ORIGIN));
    let lifetime = minted.session.expires_at - minted.session.created_at;
    assert_eq!(lifetime, Span::minutes(10));

    // Rows, stored then delivered on complete, signed with the session's secret.
    let (status, body) = embed_create(&env, &minted.token, &rows_import()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.get("destination_secret").is_none(), "{body}");
    let id = body["import"]["id"].as_str().unwrap().to_owned();
    let rows: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("row-{i}"), "email": format!("p{i}@example.com")}))
        .collect();
    let (status, body) = call(
        &env.deps,
        &with_body(embedded_for(EMBED_ROWS, &minted.token, &id), &json!(rows)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&env.deps, &embedded_for(EMBED_COMPLETE, &minted.token, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&env.deps, &embedded_for(EMBED_GET, &minted.token, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], json!("delivered"));
    let expected: Vec<String> = (0..5).map(|i| format!("row-{i}")).collect();
    assert_eq!(delivered_ids(&env.dest), expected);
    assert!(env.dest.requests().iter().all(|r| r.signature_valid));

    // The console sees it like any other import; the audit says who made it.
    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Delivered);
    let entries = audit_entries(&env, "acme").await;
    let minted_entry = entries
        .iter()
        .find(|e| e.action == "import_session.created")
        .expect("the minting is audited");
    assert!(minted_entry.actor.starts_with("user:"), "{minted_entry:?}");
    let created = entries
        .iter()
        .find(|e| e.action == "import.created" && e.target.ends_with(&id))
        .expect("the import is audited");
    assert_eq!(
        created.actor,
        format!("import-session:{}", minted.session.id)
    );

    // A file import through the session: presigned upload, processed as usual.
    let csv = csv_rows(3);
    let body = json!({"format": "csv", "size": csv.len(), "required_columns": ["id"]});
    let (status, response) = embed_create(&env, &minted.token, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{response}");
    let created: Created = serde_json::from_value(response).unwrap();
    let version = upload(&created, csv.as_bytes()).await;
    let key = created.import.id.clone();
    let object = format!("imports/acme/{key}/upload.csv");
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, &object, &version, csv.len()),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    let (status, body) = call(&env.deps, &embedded_for(EMBED_GET, &minted.token, &key)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], json!("delivered"), "{body}");
    assert_eq!(body["rows_delivered"], json!(3));
}

#[tokio::test]
async fn a_session_reaches_only_its_own_imports_and_routes() {
    let env = env().await;
    let one = mint(&env, mint_body(&env)).await;
    let two = mint(&env, mint_body(&env)).await;
    // An import of the console, and one of session two.
    let console = create(
        &env,
        json!({"format": "rows", "destination": {"url": env.dest.url(), "secret": SECRET}}),
    )
    .await;
    let (status, body) = embed_create(&env, &two.token, &rows_import()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let theirs = body["import"]["id"].as_str().unwrap().to_owned();

    for id in [console.import.id.as_str(), theirs.as_str()] {
        for file in [EMBED_GET, EMBED_COMPLETE] {
            let (status, body) = call(&env.deps, &embedded_for(file, &one.token, id)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        }
        let (status, body) = call(
            &env.deps,
            &with_body(
                embedded_for(EMBED_ROWS, &one.token, id),
                &json!([{"id": "x"}]),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // Nothing was added to either.
    assert_eq!(view(&env, &theirs).await.rows_total, 0);

    // Only the four embedded routes exist: no listing, download or delete.
    for (method, path, route) in [
        ("GET", "/embed/imports", "GET /embed/imports"),
        ("DELETE", "/embed/imports/x", "DELETE /embed/imports/{id}"),
        (
            "GET",
            "/embed/imports/x/download",
            "GET /embed/imports/{id}/download",
        ),
    ] {
        let e = event(EMBED_GET, |e| {
            e["headers"]["authorization"] = json!(format!("Bearer {}", one.token));
            e["routeKey"] = json!(route);
            e["requestContext"]["routeKey"] = json!(route);
            e["rawPath"] = json!(path);
            e["requestContext"]["http"]["method"] = json!(method);
            e["requestContext"]["http"]["path"] = json!(path);
        });
        let (status, body) = call(&env.deps, &e).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{route}: {body}");
    }
    // The token is no login: a console route without JWT claims is a 401 (API
    // Gateway's authorizer refuses it first in AWS).
    let mut list = event(LIST, |e| {
        e["headers"]["authorization"] = json!(format!("Bearer {}", one.token));
    });
    list["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    let (status, body) = call(&env.deps, &list).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The destination is the session's: a body naming one is refused, nothing made.
    let mut body = rows_import();
    body["destination"] = json!({"url": "https://elsewhere.example.com/hook"});
    let (status, response) = embed_create(&env, &one.token, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    assert_eq!(problem(&response).field.as_deref(), Some("destination"));
    // And the console's route still requires one.
    let (status, response) = call(
        &env.deps,
        &with_body(event(CREATE, |_| {}), &json!({"format": "rows"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    assert_eq!(problem(&response).field.as_deref(), Some("destination"));
    let (status, response) = call(&env.deps, &event(LIST, |_| {})).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["imports"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tokens_are_refused_when_missing_wrong_expired_revoked_or_from_elsewhere() {
    let clock = ManualClock::at(Utc::now());
    let env = env_with_clock(Arc::new(clock.clone())).await;
    let minted = mint(&env, mint_body(&env)).await;
    let body = rows_import();
    let refused = |status: StatusCode, response: &Value, want: StatusCode| {
        assert_eq!(status, want, "{response}");
        assert!(
            !response.to_string().contains(&minted.token),
            "the token is never echoed: {response}"
        );
    };

    // No token, a malformed one, an unknown id, the right id with another secret.
    let mut none = embedded(EMBED_CREATE, "", Some(ORIGIN));
    none["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let (status, response) = call(&env.deps, &with_body(none, &body)).await;
    refused(status, &response, StatusCode::UNAUTHORIZED);
    let (id, _) = minted.token["cis_".len()..].split_once('_').unwrap();
    for token in [
        "nonsense".to_owned(),
        format!("cis_{id}"),
        format!("cis_{}_{}", "0".repeat(32), "ab".repeat(22)),
        format!("cis_{id}_{}", "ab".repeat(22)),
        minted.token.to_uppercase(),
    ] {
        let (status, response) = embed_create(&env, &token, &body).await;
        refused(status, &response, StatusCode::UNAUTHORIZED);
    }

    // Another origin, or none, is refused with 403.
    for origin in [Some("https://evil.example.com"), None] {
        let (status, response) = call(
            &env.deps,
            &with_body(embedded(EMBED_CREATE, &minted.token, origin), &body),
        )
        .await;
        refused(status, &response, StatusCode::FORBIDDEN);
    }
    // The right one works.
    let (status, response) = embed_create(&env, &minted.token, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{response}");

    // Past its lifetime, before TTL has deleted the record: refused.
    clock.advance(Span::minutes(10) + Span::seconds(1));
    let (status, response) = embed_create(&env, &minted.token, &body).await;
    refused(status, &response, StatusCode::UNAUTHORIZED);
    clock.advance(-(Span::minutes(10) + Span::seconds(1)));

    // Revoked: refused at once; revoking again, or another tenant revoking, is a 404.
    let other = mint(&env, mint_body(&env)).await;
    let revoke = |id: &str, tenant: &str| {
        let mut e = event(REVOKE, |e| {
            e["pathParameters"]["id"] = json!(id);
        });
        e = with_tenant(e, tenant);
        e
    };
    let (status, response) = call(&env.deps, &revoke(&other.session.id, "globex")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{response}");
    let (status, response) = embed_create(&env, &other.token, &body).await;
    assert_eq!(status, StatusCode::CREATED, "still live: {response}");
    let (status, _) = call(&env.deps, &revoke(&minted.session.id, "acme")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, response) = embed_create(&env, &minted.token, &body).await;
    refused(status, &response, StatusCode::UNAUTHORIZED);
    let (status, response) = call(&env.deps, &revoke(&minted.session.id, "acme")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{response}");
    let entries = audit_entries(&env, "acme").await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "import_session.revoked")
            .count(),
        1
    );
}

#[tokio::test]
async fn minting_checks_every_field_and_stores_no_secret() {
    let env = env().await;
    let good = mint_body(&env);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"origin": ORIGIN}), "destination"),
        (
            json!({"destination": {"url": "http://169.254.169.254/latest"}}),
            "destination.url",
        ),
        (
            json!({"destination": {"url": env.dest.url(), "secret": "short"}}),
            "destination.secret",
        ),
        (
            json!({"destination": {"url": env.dest.url()}, "origin": "https://app.example.com/path"}),
            "origin",
        ),
        (
            json!({"destination": {"url": env.dest.url()}, "origin": "http://app.example.com"}),
            "origin",
        ),
        (
            json!({"destination": {"url": env.dest.url()}, "lifetime_minutes": 0}),
            "lifetime_minutes",
        ),
        (
            json!({"destination": {"url": env.dest.url()}, "lifetime_minutes": 61}),
            "lifetime_minutes",
        ),
        (
            json!({"destination": {"url": env.dest.url()}, "scope": "everything"}),
            "scope",
        ),
    ];
    for (body, field) in cases {
        let (status, response) = call(&env.deps, &with_body(event(MINT, |_| {}), &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_eq!(problem(&response).field.as_deref(), Some(field), "{body}");
    }
    // A viewer may not mint.
    let (status, response) = call(
        &env.deps,
        &with_role(with_body(event(MINT, |_| {}), &good), "viewer"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{response}");
    // Nothing was stored by any refusal: the only session is the one minted now.
    let minted = mint(&env, json!({"destination": {"url": env.dest.url()}})).await;
    let secret = minted
        .destination_secret
        .clone()
        .expect("generated when not given");
    assert_eq!(minted.session.origin, None);
    assert_eq!(
        minted.session.expires_at - minted.session.created_at,
        Span::minutes(custody::import_session::DEFAULT_LIFETIME_MINUTES)
    );
    let items = env
        .stack
        .clients
        .dynamodb
        .scan()
        .table_name(&env.stack.config.table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let sessions: Vec<_> = items
        .iter()
        .filter(|item| {
            item.get("pk")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|pk| pk.starts_with(custody::import_session::KEY_PREFIX))
        })
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let stored = format!("{:?}", sessions[0]);
    assert!(
        !stored.contains(&minted.token),
        "the token is stored in plaintext"
    );
    assert!(
        !stored.contains(&secret),
        "the secret is stored in plaintext"
    );
    let ttl = sessions[0]
        .get("expires_at")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<i64>().ok())
        .expect("a TTL");
    assert_eq!(ttl, minted.session.expires_at.timestamp());
}

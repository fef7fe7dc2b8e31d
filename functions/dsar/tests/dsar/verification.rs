//! Subject verification: the code goes to the tenant's webhook (signed), three wrong
//! codes lock the request, an expired code is refused, unverified requests never run.

use chrono::Duration;
use dsar::{Budget, Progress};
use http::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::*;

const SECRET: &str = "tenant-webhook-secret-0123456789abcdef";

async fn configure_webhook(deps: &Deps, server: &MockServer) {
    let body = json!({
        "time_zone": "Europe/Berlin",
        "verification_webhook": { "url": format!("{}/verify", server.uri()), "secret": SECRET },
    });
    let (status, out) = call(
        deps,
        request(
            event!("put_privacy_settings"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert!(!out.to_string().contains(SECRET));
}

/// Files an erasure that needs the subject's code; returns its id and the code the
/// webhook received (after checking the webhook's signature).
async fn file_verified(deps: &Deps, server: &MockServer) -> (String, String) {
    let before = server.received_requests().await.unwrap().len();
    let body =
        json!({ "subject": { "email": ANN.email }, "regulation": "gdpr", "verify_subject": true });
    let (status, out) = call(
        deps,
        request(
            event!("post_privacy_delete"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    assert_eq!(out["status"], "identity_unverified");
    assert_eq!(out["verification"]["code_delivered"], true);
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), before + 1);
    let delivery = received.last().unwrap();
    let header = |name: &str| {
        delivery
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    custody::webhook::verify(
        SECRET.as_bytes(),
        header("custody-timestamp").as_deref(),
        header("custody-signature").as_deref(),
        &delivery.body,
        chrono::Utc::now().timestamp(),
        300,
    )
    .expect("the webhook delivery is signed with the tenant's secret");
    let message: Value = serde_json::from_slice(&delivery.body).unwrap();
    let id = out["id"].as_str().unwrap().to_owned();
    assert_eq!(message["request_id"], id.as_str());
    (id, message["code"].as_str().unwrap().to_owned())
}

async fn submit(deps: &Deps, id: &str, code: &str) -> (StatusCode, Value) {
    call(
        deps,
        request(
            event!("post_privacy_request_verify"),
            "acme",
            "operator",
            Some(json!({ "code": code })),
            Some(id),
        ),
    )
    .await
}

#[tokio::test]
async fn verification_codes_lock_expire_and_gate_processing() {
    let Env { stack, deps, clock } = env().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    configure_webhook(&deps, &server).await;
    seed_imports(&deps).await;
    let tenant = acme();

    // 1. Unverified: the stream record (even a forged "pending" image) does not run it.
    let (locked_id, code) = file_verified(&deps, &server).await;
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(!table.contains(&code), "the code is stored hashed only");
    deliver(&deps, &locked_id).await;
    let progress = dsar::process::process_request(&deps, &tenant, &locked_id, Budget::Unlimited)
        .await
        .unwrap();
    assert_eq!(
        progress,
        Progress::NotRunnable(Some(custody::privacy::Status::IdentityUnverified))
    );

    // 2. Three wrong codes lock it; then even the right code is refused.
    let (status, p) = submit(&deps, &locked_id, "WRONG00001").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("2 attempt"));
    assert_eq!(
        submit(&deps, &locked_id, "WRONG00002").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, p) = submit(&deps, &locked_id, "WRONG00003").await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(
        p["type"],
        "https://custody.dev/problems/verification-locked"
    );
    let (status, _) = submit(&deps, &locked_id, &code).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&locked_id),
        ),
    )
    .await;
    assert_eq!(detail["status"], "denied");
    assert_eq!(detail["steps_done"], json!([]));
    deliver(&deps, &locked_id).await;
    assert_eq!(
        dsar::process::process_request(&deps, &tenant, &locked_id, Budget::Unlimited)
            .await
            .unwrap(),
        Progress::Finished(custody::privacy::Status::Denied)
    );

    // 3. An expired code is refused (15 minutes), and the request does not run.
    let (expired_id, code) = file_verified(&deps, &server).await;
    clock.advance(Duration::minutes(16));
    let (status, p) = submit(&deps, &expired_id, &code).await;
    assert_eq!(status, StatusCode::GONE, "{p}");
    deliver(&deps, &expired_id).await;
    let (_, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&expired_id),
        ),
    )
    .await;
    assert_eq!(detail["status"], "identity_unverified");

    // 4. The right code in time: pending, then processed; a reused code is refused.
    let (ok_id, code) = file_verified(&deps, &server).await;
    let (status, out) = submit(&deps, &ok_id, &code.to_lowercase()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["status"], "pending");
    assert_eq!(submit(&deps, &ok_id, &code).await.0, StatusCode::CONFLICT);
    deliver(&deps, &ok_id).await;
    let (_, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&ok_id),
        ),
    )
    .await;
    assert_eq!(detail["status"], "complete");
    // Deadlines in the tenant's zone: the end of a day in Berlin (CET or CEST).
    let due = detail["deadlines"]["due_at"].as_str().unwrap();
    assert!(
        due.ends_with("T22:59:59Z") || due.ends_with("T21:59:59Z"),
        "{due}"
    );

    // Audit: failures and the denial are recorded, by pseudonym.
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "privacy_request.verification_failed")
            .count(),
        3
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "privacy_request.denied")
            .count(),
        1
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "privacy_request.verified")
            .count(),
        1
    );
}

#[tokio::test]
async fn verification_needs_a_configured_webhook_and_valid_settings() {
    let Env { deps, .. } = env().await;
    let body =
        json!({ "subject": { "email": ANN.email }, "regulation": "gdpr", "verify_subject": true });
    let (status, p) = call(
        &deps,
        request(
            event!("post_privacy_delete"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    for (body, field) in [
        (json!({ "time_zone": "Mars/Olympus" }), "time_zone"),
        (
            json!({ "verification_webhook": { "url": "http://169.254.169.254/x", "secret": SECRET } }),
            "verification_webhook.url",
        ),
        (
            json!({ "verification_webhook": { "url": "https://hooks.example.com/x", "secret": "short" } }),
            "verification_webhook.secret",
        ),
    ] {
        let (status, p) = call(
            &deps,
            request(
                event!("put_privacy_settings"),
                "acme",
                "admin",
                Some(body),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
        assert_eq!(p["field"], field);
    }
    let (status, _) = call(
        &deps,
        request(
            event!("put_privacy_settings"),
            "acme",
            "viewer",
            Some(json!({})),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

//! `access_token`: single-flight refresh with rotation, invalid_grant, tenant-bound
//! seals, and disconnecting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use custody::oauth::{Connection, ConnectionStatus, OauthError, access_token, connection_key};
use custody::seal::{Purpose, SealContext, SealError};
use secrecy::ExposeSecret;

use crate::common::*;

#[tokio::test]
async fn ten_concurrent_calls_refresh_once_and_store_the_rotated_refresh_token() {
    let env = Env::new().await;
    let sim = env.sim("highlevel");
    sim.set_expires_in(300); // inside the 15-minute refresh window
    env.connect_fully("acme", "highlevel").await;
    assert_eq!(sim.token_requests(), 1);
    sim.set_expires_in(86_399);
    sim.set_token_delay(Duration::from_millis(300));

    let acme = tenant("acme");
    let calls = (0..10).map(|_| access_token(&env.deps.oauth, &acme, "highlevel"));
    let tokens = futures::future::join_all(calls).await;

    assert_eq!(sim.token_requests(), 2, "exactly one refresh request");
    let new_access = sim.issued_access_tokens()[1].clone();
    for token in tokens {
        assert_eq!(token.unwrap().token.expose_secret(), new_access);
    }
    let stored: Connection = env
        .deps
        .oauth
        .store
        .get(&connection_key(&acme, "highlevel"))
        .await
        .unwrap()
        .unwrap();
    let rotated = env
        .deps
        .oauth
        .sealer
        .open(
            &SealContext::new(&acme, Purpose::OauthRefreshToken, "CONN#highlevel"),
            stored.refresh_token.as_ref().unwrap(),
        )
        .await
        .unwrap();
    let issued = sim.issued_refresh_tokens();
    assert_eq!(rotated.expose_secret(), issued[1]);
    assert!(
        !sim.refresh_token_live(&issued[0]),
        "the old refresh token is spent"
    );
    assert!(stored.lease_owner.is_none());
    // Fresh now: no further requests.
    access_token(&env.deps.oauth, &acme, "highlevel")
        .await
        .unwrap();
    assert_eq!(sim.token_requests(), 2);
}

/// A token endpoint slower than the old 30 s lease (simulated on the manual clock:
/// the time passes while the first caller's request is in flight), and a second
/// caller arriving then: it must wait for the lease holder, not refresh again with
/// the already spent refresh token (which would lose the rotated one, or mark the
/// connection as needing re-consent).
#[tokio::test]
async fn a_slow_token_endpoint_does_not_let_a_second_caller_refresh() {
    let env = Env::new().await;
    let sim = env.sim("highlevel");
    sim.set_expires_in(300);
    env.connect_fully("acme", "highlevel").await;
    assert_eq!(sim.token_requests(), 1);
    sim.set_expires_in(86_399);
    sim.set_token_delay(Duration::from_millis(1500));

    let acme = tenant("acme");
    let deps = env.deps.oauth.clone();
    let first_tenant = acme.clone();
    let first = tokio::spawn(async move { access_token(&deps, &first_tenant, "highlevel").await });
    // The first caller holds the lease and its refresh request is at the endpoint.
    while sim.token_requests() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The endpoint takes longer than the old lease (but within the HTTP timeout).
    env.clock.advance(chrono::Duration::seconds(45));
    let second = access_token(&env.deps.oauth, &acme, "highlevel").await;
    let first = first.await.unwrap();

    assert_eq!(sim.token_requests(), 2, "exactly one refresh request");
    let new_access = sim.issued_access_tokens()[1].clone();
    assert_eq!(first.unwrap().token.expose_secret(), new_access);
    assert_eq!(second.unwrap().token.expose_secret(), new_access);
    let stored: Connection = env
        .deps
        .oauth
        .store
        .get(&connection_key(&acme, "highlevel"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);
    let rotated = env
        .deps
        .oauth
        .sealer
        .open(
            &SealContext::new(&acme, Purpose::OauthRefreshToken, "CONN#highlevel"),
            stored.refresh_token.as_ref().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rotated.expose_secret(), sim.issued_refresh_tokens()[1]);
    assert!(sim.refresh_token_live(rotated.expose_secret()));
}

/// A KMS in front of the emulator that fails the next `failures` Encrypt calls with
/// a 500 (as KMS does when it is briefly unavailable) and forwards everything else.
async fn flaky_kms(emulator: String, failures: Arc<AtomicU32>, failed: Arc<AtomicU32>) -> String {
    let forward = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (forward, emulator, failures, failed) = (
            forward.clone(),
            emulator.clone(),
            failures.clone(),
            failed.clone(),
        );
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let encrypt = parts
                .headers
                .get("x-amz-target")
                .is_some_and(|t| t.as_bytes().ends_with(b".Encrypt"));
            if encrypt
                && failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                failed.fetch_add(1, Ordering::SeqCst);
                return axum::response::Response::builder()
                    .status(500)
                    .header("content-type", "application/x-amz-json-1.1")
                    .body(axum::body::Body::from(
                        r#"{"__type":"KMSInternalException","message":"unavailable"}"#,
                    ))
                    .unwrap();
            }
            let mut upstream = forward.request(
                parts.method,
                format!("{}{}", emulator.trim_end_matches('/'), parts.uri),
            );
            for (name, value) in &parts.headers {
                if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
                    upstream = upstream.header(name, value);
                }
            }
            let answer = upstream.body(body).send().await.unwrap();
            let mut response = axum::response::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            response
                .body(axum::body::Body::from(answer.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The provider has rotated the refresh token (the old one is spent); then sealing
/// the new tokens fails for longer than the SDK's own retries. The refresh must retry
/// and keep the rotated refresh token, not drop it and cut the connection.
#[tokio::test]
async fn a_rotated_refresh_token_survives_a_transient_sealing_failure() {
    let env = Env::new().await;
    let sim = env.sim("highlevel");
    sim.set_expires_in(300);
    env.connect_fully("acme", "highlevel").await;
    sim.set_expires_in(86_399);

    let failures = Arc::new(AtomicU32::new(0));
    let failed = Arc::new(AtomicU32::new(0));
    let kms_url = flaky_kms(env.stack.endpoint.clone(), failures.clone(), failed.clone()).await;
    // The SDK retries by itself (here twice in all); the failures outlast that.
    let sdk_attempts = 2;
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&env.stack.sdk)
            .endpoint_url(kms_url)
            .retry_config(
                aws_sdk_kms::config::retry::RetryConfig::standard().with_max_attempts(sdk_attempts),
            )
            .build(),
    );
    failures.store(sdk_attempts + 1, Ordering::SeqCst);
    let mut deps = env.deps.oauth.clone();
    deps.sealer = custody::seal::Sealer::new(kms, &env.stack.config.data_key_id);

    let acme = tenant("acme");
    let token = access_token(&deps, &acme, "highlevel").await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), sdk_attempts + 1);
    assert_eq!(sim.token_requests(), 2, "one refresh");
    assert_eq!(token.token.expose_secret(), sim.issued_access_tokens()[1]);
    let stored: Connection = deps
        .store
        .get(&connection_key(&acme, "highlevel"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert!(stored.lease_owner.is_none());
    let rotated = deps
        .sealer
        .open(
            &SealContext::new(&acme, Purpose::OauthRefreshToken, "CONN#highlevel"),
            stored.refresh_token.as_ref().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rotated.expose_secret(), sim.issued_refresh_tokens()[1]);
    assert!(sim.refresh_token_live(rotated.expose_secret()));
}

#[tokio::test]
async fn invalid_grant_marks_the_connection_needs_reconsent() {
    let env = Env::new().await;
    let sim = env.sim("crm");
    sim.set_expires_in(60);
    env.connect_fully("acme", "crm").await;
    sim.revoke_all_refresh_tokens();

    let acme = tenant("acme");
    let err = access_token(&env.deps.oauth, &acme, "crm")
        .await
        .unwrap_err();
    assert!(matches!(err, OauthError::NeedsReconsent(_)), "{err}");
    let requests = sim.token_requests();
    // Not retried forever: the next call answers from the stored status.
    let err = access_token(&env.deps.oauth, &acme, "crm")
        .await
        .unwrap_err();
    assert!(matches!(err, OauthError::NeedsReconsent(_)));
    assert_eq!(sim.token_requests(), requests);

    let stored: Connection = env
        .deps
        .oauth
        .store
        .get(&connection_key(&acme, "crm"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReconsent);
    let mut ev = event(LIST);
    set_claims(&mut ev, "acme", "viewer");
    let listed = body_json(&env.call(ev).await);
    assert_eq!(listed["connections"][0]["status"], "needs_reconsent");
    assert_eq!(
        env.audit_actions("acme").await,
        vec!["connection.created", "connection.needs_reconsent"]
    );
    let problem = custody::api::Problem::from(err);
    assert_eq!(problem.status, 409);
}

#[tokio::test]
async fn swapped_token_blobs_of_two_tenants_open_for_neither() {
    let env = Env::new().await;
    env.connect_fully("acme", "crm").await;
    env.connect_fully("globex", "crm").await;
    let acme = env.connection_item("acme", "crm").await.unwrap();
    let globex = env.connection_item("globex", "crm").await.unwrap();
    for (tenant_name, other) in [("acme", &globex), ("globex", &acme)] {
        env.stack
            .clients
            .dynamodb
            .update_item()
            .table_name(&env.stack.config.table)
            .key("pk", AttributeValue::S(format!("T#{tenant_name}")))
            .key("sk", AttributeValue::S("CONN#crm".into()))
            .update_expression("SET access_token = :a, refresh_token = :r")
            .expression_attribute_values(":a", other["access_token"].clone())
            .expression_attribute_values(":r", other["refresh_token"].clone())
            .send()
            .await
            .unwrap();
    }
    for tenant_name in ["acme", "globex"] {
        let err = access_token(&env.deps.oauth, &tenant(tenant_name), "crm")
            .await
            .unwrap_err();
        assert!(
            matches!(err, OauthError::Seal(SealError::Rejected)),
            "{err}"
        );
    }
    // The refresh path refuses too.
    env.clock.advance(chrono::Duration::hours(24));
    let err = access_token(&env.deps.oauth, &tenant("acme"), "crm")
        .await
        .unwrap_err();
    assert!(
        matches!(err, OauthError::Seal(SealError::Rejected)),
        "{err}"
    );
    assert_eq!(
        env.sim("crm").token_requests(),
        2,
        "only the two code exchanges"
    );
}

#[tokio::test]
async fn disconnect_deletes_at_once_revokes_removes_the_schedule_and_audits() {
    let env = Env::new().await;
    env.connect_fully("acme", "google").await;
    env.connect_fully("globex", "google").await;
    add_schedule(&env, "acme").await;

    let mut ev = event(DISCONNECT);
    set_claims(&mut ev, "acme", "admin");
    set_path(&mut ev, "provider", "google", "/connections/google");
    let resp = env.call(ev.clone()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let outcome = body_json(&resp);
    assert_eq!(outcome["deleted"], true);
    assert_eq!(outcome["revoked"], true);
    assert_eq!(outcome["schedule_removed"], true);

    assert!(env.connection_item("acme", "google").await.is_none());
    assert!(
        env.deps
            .schedules
            .get(&tenant("acme"))
            .await
            .unwrap()
            .is_none()
    );
    let sim = env.sim("google");
    assert!(sim.is_revoked(&sim.issued_refresh_tokens()[0]));
    assert_eq!(
        env.audit_actions("acme").await,
        vec!["connection.created", "connection.deleted"]
    );
    let err = access_token(&env.deps.oauth, &tenant("acme"), "google")
        .await
        .unwrap_err();
    assert!(matches!(err, OauthError::NotConnected(_)), "{err}");
    assert_eq!(err.to_string(), "not connected to google");
    // Another tenant's connection is untouched.
    access_token(&env.deps.oauth, &tenant("globex"), "google")
        .await
        .unwrap();

    // Delivered again: nothing left to delete, still a success.
    let again = env.call(ev).await;
    assert_eq!(again.status(), 200);
    assert_eq!(body_json(&again)["deleted"], false);
}

#[tokio::test]
async fn disconnect_needs_an_admin_and_a_known_provider() {
    let env = Env::new().await;
    env.connect_fully("acme", "crm").await;
    let mut ev = event(DISCONNECT);
    set_claims(&mut ev, "acme", "viewer");
    set_path(&mut ev, "provider", "crm", "/connections/crm");
    assert_eq!(env.call(ev.clone()).await.status(), 403);
    set_claims(&mut ev, "acme", "admin");
    set_path(&mut ev, "provider", "nosuch", "/connections/nosuch");
    assert_eq!(env.call(ev).await.status(), 404);
    assert!(env.connection_item("acme", "crm").await.is_some());
}

/// Even when the lease did run out (a refresh slower than everything allows) and
/// another caller took over with the spent refresh token, the rotated one the first
/// caller received is stored: the connection stays usable.
#[tokio::test]
async fn a_rotated_refresh_token_is_kept_when_the_lease_was_lost() {
    let env = Env::new().await;
    let sim = env.sim("highlevel");
    sim.set_expires_in(300);
    env.connect_fully("acme", "highlevel").await;
    sim.set_expires_in(86_399);
    sim.set_token_delay(Duration::from_millis(1500));
    let acme = tenant("acme");

    let first = {
        let deps = env.deps.oauth.clone();
        let acme = acme.clone();
        tokio::spawn(async move { access_token(&deps, &acme, "highlevel").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.clock
        .advance(custody::oauth::LEASE + chrono::Duration::seconds(1));
    // Takes the expired lease and refreshes with the refresh token the first call is
    // spending: the provider refuses it.
    let second = access_token(&env.deps.oauth, &acme, "highlevel").await;
    let first = first
        .await
        .unwrap()
        .expect("the first caller's refresh succeeds");

    assert_eq!(sim.token_requests(), 3);
    let issued = sim.issued_refresh_tokens();
    let stored: Connection = env
        .deps
        .oauth
        .store
        .get(&connection_key(&acme, "highlevel"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active, "{second:?}");
    let kept = env
        .deps
        .oauth
        .sealer
        .open(
            &SealContext::new(&acme, Purpose::OauthRefreshToken, "CONN#highlevel"),
            stored.refresh_token.as_ref().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        kept.expose_secret(),
        issued.last().unwrap(),
        "the rotated token is kept"
    );
    assert!(sim.refresh_token_live(kept.expose_secret()));
    // The second caller got the first one's token, or was told to try again; never a
    // broken connection.
    if let Ok(token) = &second {
        assert_eq!(token.token.expose_secret(), first.token.expose_secret());
    }
    let again = access_token(&env.deps.oauth, &acme, "highlevel")
        .await
        .unwrap();
    assert_eq!(again.token.expose_secret(), first.token.expose_secret());
}

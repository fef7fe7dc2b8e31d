//! `POST /webhooks/highlevel`: verified over the raw body, fresh, once.

use custody::clock::Clock as _;
use custody::oauth::{OauthError, access_token};
use custody_sim::oauth_provider::SimAccount;
use serde_json::{Value, json};

use crate::common::*;

enum Sig {
    Rsa,
    Ed25519,
    None,
    Garbage,
}

fn payload(env: &Env, kind: &str, id: &str, location: &str, age: chrono::Duration) -> String {
    json!({
        "type": kind,
        "appId": "66c0ffee0000000000000001",
        "locationId": location,
        "companyId": "coAcme01",
        "timestamp": (env.clock.now() - age).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "webhookId": id,
    })
    .to_string()
}

async fn deliver(env: &Env, body: &str, sig: Sig) -> lambda_http::Response<lambda_http::Body> {
    let mut ev: Value = event(WEBHOOK);
    ev["body"] = json!(body);
    let headers = ev["headers"].as_object_mut().unwrap();
    headers.remove("x-wh-signature");
    match sig {
        Sig::Rsa => {
            headers.insert(
                "x-wh-signature".into(),
                json!(env.signer.sign_rsa(body.as_bytes()).unwrap()),
            );
        }
        Sig::Ed25519 => {
            headers.insert(
                "x-ghl-signature".into(),
                json!(env.signer.sign_ed25519(body.as_bytes())),
            );
        }
        Sig::Garbage => {
            // Signed by the right key, but over another body.
            headers.insert(
                "x-wh-signature".into(),
                json!(env.signer.sign_rsa(b"{}").unwrap()),
            );
        }
        Sig::None => {}
    }
    env.call(ev).await
}

async fn connected_location(env: &Env, tenant_name: &str, location: &str) {
    env.sim("highlevel").set_account(SimAccount {
        location_id: location.into(),
        company_id: "coAcme01".into(),
        user_type: "Location".into(),
        subject: "user01".into(),
    });
    env.connect_fully(tenant_name, "highlevel").await;
}

#[tokio::test]
async fn valid_uninstall_deletes_the_connection_once_and_audits() {
    let env = Env::new().await;
    connected_location(&env, "acme", "locAcme01").await;
    add_schedule(&env, "acme").await;
    connected_location(&env, "globex", "locGlobex01").await;

    let body = payload(
        &env,
        "UNINSTALL",
        "wh-0001",
        "locAcme01",
        chrono::Duration::seconds(2),
    );
    let resp = deliver(&env, &body, Sig::Rsa).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert_eq!(
        body_json(&resp),
        json!({"status": "uninstalled", "connections_deleted": 1})
    );
    assert!(env.connection_item("acme", "highlevel").await.is_none());
    assert!(
        env.deps
            .schedules
            .get(&tenant("acme"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        env.audit_actions("acme").await,
        vec!["connection.created", "connection.deleted"]
    );
    let err = access_token(&env.deps.oauth, &tenant("acme"), "highlevel")
        .await
        .unwrap_err();
    assert!(matches!(err, OauthError::NotConnected(_)));
    assert!(env.connection_item("globex", "highlevel").await.is_some());

    // The same delivery again (at-least-once): acknowledged, no second effect — even
    // after the tenant reconnected to the same location in between.
    connected_location(&env, "acme", "locAcme01").await;
    let again = deliver(&env, &body, Sig::Rsa).await;
    assert_eq!(again.status(), 200);
    assert_eq!(body_json(&again)["status"], "duplicate");
    assert!(env.connection_item("acme", "highlevel").await.is_some());
    assert_eq!(
        env.audit_actions("acme").await,
        vec![
            "connection.created",
            "connection.deleted",
            "connection.created"
        ]
    );
}

#[tokio::test]
async fn bad_signature_stale_timestamp_and_replayed_id_delete_nothing() {
    let env = Env::new().await;
    connected_location(&env, "acme", "locAcme01").await;

    let fresh = payload(
        &env,
        "UNINSTALL",
        "wh-0002",
        "locAcme01",
        chrono::Duration::seconds(1),
    );
    for sig in [Sig::None, Sig::Garbage] {
        let resp = deliver(&env, &fresh, sig).await;
        assert_eq!(resp.status(), 401);
    }
    // A valid signature over the original body, with the body altered in transit.
    let signature = env.signer.sign_rsa(fresh.as_bytes()).unwrap();
    let tampered = fresh.replace("locAcme01", "locAcme02");
    let mut ev = event(WEBHOOK);
    ev["body"] = json!(tampered);
    ev["headers"]["x-wh-signature"] = json!(signature);
    assert_eq!(env.call(ev).await.status(), 401);
    // The documented key in the event file is not the test key.
    assert_eq!(env.call(event(WEBHOOK)).await.status(), 401);

    let stale = payload(
        &env,
        "UNINSTALL",
        "wh-0003",
        "locAcme01",
        chrono::Duration::minutes(10),
    );
    let resp = deliver(&env, &stale, Sig::Rsa).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(body_json(&resp)["field"], "timestamp");

    // An id already used (by an INSTALL) cannot carry an UNINSTALL.
    let install = payload(
        &env,
        "INSTALL",
        "wh-0004",
        "locAcme01",
        chrono::Duration::seconds(1),
    );
    let resp = deliver(&env, &install, Sig::Rsa).await;
    assert_eq!(body_json(&resp)["status"], "ignored");
    let replay = payload(
        &env,
        "UNINSTALL",
        "wh-0004",
        "locAcme01",
        chrono::Duration::seconds(1),
    );
    let resp = deliver(&env, &replay, Sig::Rsa).await;
    assert_eq!(resp.status(), 409);

    assert!(env.connection_item("acme", "highlevel").await.is_some());
    assert_eq!(env.audit_actions("acme").await, vec!["connection.created"]);
    access_token(&env.deps.oauth, &tenant("acme"), "highlevel")
        .await
        .unwrap();
}

#[tokio::test]
async fn ed25519_scheme_is_accepted_when_configured() {
    let env = Env::with_ed25519(true).await;
    connected_location(&env, "acme", "locAcme01").await;
    let body = payload(
        &env,
        "UNINSTALL",
        "wh-0005",
        "locAcme01",
        chrono::Duration::seconds(1),
    );
    // An Ed25519 header that does not verify is refused even if RSA would.
    let mut ev = event(WEBHOOK);
    ev["body"] = json!(body);
    ev["headers"]["x-wh-signature"] = json!(env.signer.sign_rsa(body.as_bytes()).unwrap());
    ev["headers"]["x-ghl-signature"] = json!(env.signer.sign_ed25519(b"other"));
    assert_eq!(env.call(ev).await.status(), 401);
    assert!(env.connection_item("acme", "highlevel").await.is_some());

    let resp = deliver(&env, &body, Sig::Ed25519).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert!(env.connection_item("acme", "highlevel").await.is_none());
}

#[tokio::test]
async fn unknown_event_types_are_acknowledged_and_ignored() {
    let env = Env::new().await;
    connected_location(&env, "acme", "locAcme01").await;
    let body = payload(
        &env,
        "ContactCreate",
        "wh-0006",
        "locAcme01",
        chrono::Duration::seconds(1),
    );
    let resp = deliver(&env, &body, Sig::Rsa).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(&resp)["status"], "ignored");
    let resp = deliver(&env, "not json", Sig::Rsa).await;
    assert_eq!(resp.status(), 400);
    assert!(env.connection_item("acme", "highlevel").await.is_some());
}

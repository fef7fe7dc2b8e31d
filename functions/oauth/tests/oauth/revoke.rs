//! Revoking the grants of connections another function deleted (account deletion in
//! the dsar function, which may not decrypt tokens): the event the oauth function
//! takes, what it revokes and refuses, and the simulated providers' count.

use custody::oauth::{Connection, RevocationOutcome};
use serde_json::json;

use crate::common::*;

async fn stored(env: &Env, tenant_name: &str, provider: &str) -> Connection {
    custody::store::Store::decode::<Connection>(
        env.connection_item(tenant_name, provider).await.unwrap(),
    )
    .unwrap()
}

async fn delete(env: &Env, tenant_name: &str, provider: &str) {
    env.stack
        .clients
        .dynamodb
        .delete_item()
        .table_name(&env.stack.config.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("T#{tenant_name}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("CONN#{provider}")),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn deleted_connections_are_revoked_at_their_providers_and_live_ones_refused() {
    let env = Env::new().await;
    for provider in ["google", "crm", "highlevel"] {
        env.connect_fully("acme", provider).await;
    }
    let google = stored(&env, "acme", "google").await;
    let crm = stored(&env, "acme", "crm").await;
    let highlevel = stored(&env, "acme", "highlevel").await;
    // The dsar function deleted Google's and HighLevel's; the CRM one is still live.
    delete(&env, "acme", "google").await;
    delete(&env, "acme", "highlevel").await;

    let event = json!({ "custody_revoke_deleted": [google, highlevel, crm] });
    let answer = oauth::handle_event(&env.deps, event).await.unwrap();
    let outcomes: Vec<(String, RevocationOutcome)> =
        serde_json::from_value::<Vec<custody::oauth::Revocation>>(answer["revocations"].clone())
            .unwrap()
            .into_iter()
            .map(|r| (r.provider, r.outcome))
            .collect();
    assert_eq!(
        outcomes,
        vec![
            ("google".to_owned(), RevocationOutcome::Revoked),
            // HighLevel has no revocation endpoint: uninstalling ends a grant there.
            ("highlevel".to_owned(), RevocationOutcome::NoEndpoint),
            ("crm".to_owned(), RevocationOutcome::StillConnected),
        ]
    );
    assert_eq!(env.sim("google").revocations(), 1);
    assert_eq!(
        env.sim("crm").revocations(),
        0,
        "a live grant is never revoked"
    );
    let actions = env.audit_actions("acme").await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.as_str() == "connection.revoked")
            .count(),
        3
    );
    // No token in the logs on the way.
    let logs = logs().contents();
    for token in env.sim("google").issued_refresh_tokens() {
        assert!(!logs.contains(&token));
    }
}

#[tokio::test]
async fn a_provider_that_keeps_failing_is_counted_and_audited_as_failed() {
    let env = Env::new().await;
    env.connect_fully("acme", "google").await;
    let google = stored(&env, "acme", "google").await;
    delete(&env, "acme", "google").await;
    env.sim("google").fail_revocations(true);
    let event = json!({ "custody_revoke_deleted": [google] });
    let answer = oauth::handle_event(&env.deps, event).await.unwrap();
    assert_eq!(answer["revocations"][0]["outcome"], "failed");
    assert!(env.sim("google").revocations() >= 3, "retried");
}

#[tokio::test]
async fn an_event_that_is_neither_http_nor_a_revocation_is_an_error() {
    let env = Env::new().await;
    assert!(
        oauth::handle_event(&env.deps, json!({"hello": "world"}))
            .await
            .is_err()
    );
}

/// A reconnect to another account revokes the old account's grant; a reconnect to the
/// same account does not (at Google, revoking one token ends the whole grant, so it
/// would end the new connection too).
#[tokio::test]
async fn a_reconnect_to_another_account_revokes_the_old_grant() {
    let env = Env::new().await;
    let google = env.sim("google");
    let account = |subject: &str| custody_sim::oauth_provider::SimAccount {
        location_id: String::new(),
        company_id: String::new(),
        user_type: String::new(),
        subject: subject.to_owned(),
    };
    google.set_account(account("1000000000001"));
    env.connect_fully("acme", "google").await;
    let first = stored(&env, "acme", "google").await;
    env.connect_fully("acme", "google").await;
    assert_eq!(google.revocations(), 0, "same account: nothing revoked");

    google.set_account(account("1999999999999"));
    env.connect_fully("acme", "google").await;
    let second = stored(&env, "acme", "google").await;
    assert_ne!(first.account, second.account);
    assert_eq!(
        google.revocations(),
        1,
        "the old account's grant is revoked"
    );
    let revoked = env
        .audit_actions("acme")
        .await
        .into_iter()
        .filter(|a| a == "connection.revoked")
        .count();
    assert_eq!(revoked, 1);
    // The new connection still works: its refresh token was not the one revoked.
    env.clock.advance(chrono::Duration::days(2));
    let token = custody::oauth::access_token(&env.deps.oauth, &tenant("acme"), "google").await;
    assert!(token.is_ok(), "{token:?}");
}

/// The account-deletion fence: once `DELETE /account` has started, no connection is
/// started, and a flow started before it stores nothing when it comes back.
#[tokio::test]
async fn an_account_being_deleted_gets_no_connection() {
    let env = Env::new().await;
    // Started before the deletion...
    let (pairs, binding) = env.authorize("acme", "google").await;
    let job =
        custody::privacy::AccountDeletion::new(&tenant("acme"), "user:admin", chrono::Utc::now());
    env.deps.oauth.store.create(&job).await.unwrap();
    // ... comes back after: refused, nothing stored, the code never exchanged.
    let before = env.sim("google").token_requests();
    let resp = env.callback("google", &pairs, Some(&binding)).await;
    assert_ne!(
        result_of(&resp).as_deref(),
        Some("connected"),
        "{}",
        body_text(&resp)
    );
    assert!(env.connection_item("acme", "google").await.is_none());
    assert_eq!(env.sim("google").token_requests(), before);
    // A new flow is refused at once.
    let resp = env.connect("acme", "google", RETURN_URL).await;
    assert_eq!(resp.status(), 409, "{}", body_text(&resp));
}

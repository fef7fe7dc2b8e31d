//! Connecting: the happy paths and every refusal, each storing nothing.

use custody::clock::Clock as _;
use custody::oauth::flow::{OauthState, pkce_context, state_key};
use custody::oauth::{Connection, ConnectionStatus};
use custody::seal::SealContext;
use custody::store::Entity as _;
use custody_sim::oauth_provider::SimAccount;
use secrecy::{ExposeSecret, SecretString};

use crate::common::*;

async fn assert_nothing_stored(env: &Env, tenant_name: &str) {
    for provider in ["highlevel", "google", "crm"] {
        assert!(
            env.connection_item(tenant_name, provider).await.is_none(),
            "{provider}"
        );
    }
    assert_eq!(env.count_kind("connection").await, 0);
    assert_eq!(env.count_kind("account_link").await, 0);
}

#[tokio::test]
async fn highlevel_google_and_generic_connect_and_store_no_plaintext_token() {
    let env = Env::new().await;
    env.sim("highlevel").set_account(SimAccount {
        location_id: "locAcme01".into(),
        company_id: "coAcme01".into(),
        user_type: "Location".into(),
        subject: "userAcme01".into(),
    });
    for provider in ["highlevel", "google", "crm"] {
        let resp = env.connect_fully("acme", provider).await;
        assert_eq!(header(&resp, "referrer-policy"), "no-referrer");
        assert_eq!(header(&resp, "cache-control"), "no-store");
        assert!(header(&resp, "location").contains(&format!("provider={provider}")));
    }

    let store = &env.deps.oauth.store;
    let hl: Connection = store
        .get(&custody::oauth::connection_key(
            &tenant("acme"),
            "highlevel",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hl.status, ConnectionStatus::Active);
    assert_eq!(hl.account.location_id.as_deref(), Some("locAcme01"));
    assert_eq!(hl.account.company_id.as_deref(), Some("coAcme01"));
    assert_eq!(hl.account.user_type.as_deref(), Some("Location"));
    assert!(hl.refresh_token.is_some());
    assert!(hl.access_expires_at > env.clock.now().timestamp() + 86_000);
    let google: Connection = store
        .get(&custody::oauth::connection_key(&tenant("acme"), "google"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        google
            .account
            .subject
            .as_deref()
            .is_some_and(|s| s.starts_with('1'))
    );
    let crm: Connection = store
        .get(&custody::oauth::connection_key(&tenant("acme"), "crm"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(crm.scopes, vec!["contacts.read", "messages.read"]);

    // The stored tokens open to exactly what each provider issued.
    let token = custody::oauth::access_token(&env.deps.oauth, &tenant("acme"), "highlevel")
        .await
        .unwrap();
    assert_eq!(
        token.token.expose_secret(),
        env.sim("highlevel").issued_access_tokens()[0]
    );
    assert_eq!(token.account.location_id.as_deref(), Some("locAcme01"));

    // Listing shows status and scopes, never a token.
    let mut ev = event(LIST);
    set_claims(&mut ev, "acme", "viewer");
    let resp = env.call(ev).await;
    assert_eq!(resp.status(), 200);
    let listed = body_json(&resp);
    assert_eq!(listed["connections"].as_array().unwrap().len(), 3);

    let dump = env.table_dump().await;
    let logs = logs().contents();
    let listed = listed.to_string();
    for sim in env.providers.values() {
        for token in sim
            .issued_access_tokens()
            .iter()
            .chain(&sim.issued_refresh_tokens())
        {
            assert!(!dump.contains(token.as_str()), "token in table");
            assert!(!logs.contains(token.as_str()), "token in logs");
            assert!(!listed.contains(token.as_str()), "token in listing");
        }
    }
    assert_eq!(
        env.audit_actions("acme").await,
        vec!["connection.created"; 3]
    );
}

#[tokio::test]
async fn missing_unknown_and_reused_state_are_refused() {
    let env = Env::new().await;
    let (pairs, binding) = env.authorize("acme", "highlevel").await;

    let missing = env
        .callback("highlevel", &without_pair(&pairs, "state"), Some(&binding))
        .await;
    assert_eq!(missing.status(), 400);
    let unknown = env
        .callback(
            "highlevel",
            &replace_pair(&pairs, "state", "not-a-state"),
            Some(&binding),
        )
        .await;
    assert_eq!(unknown.status(), 400);
    assert_nothing_stored(&env, "acme").await;

    // The first use consumes the state; the second, even with a fresh valid code, fails.
    env.callback("highlevel", &pairs, Some(&binding)).await;
    env.stack
        .clients
        .dynamodb
        .delete_item()
        .table_name(&env.stack.config.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("T#acme".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("CONN#highlevel".into()),
        )
        .send()
        .await
        .unwrap();
    let (fresh, _) = env.authorize("acme", "highlevel").await;
    let state = pairs.iter().find(|(k, _)| k == "state").unwrap().1.clone();
    let code = fresh.iter().find(|(k, _)| k == "code").unwrap().1.clone();
    let reused = env
        .callback(
            "highlevel",
            &[("state".into(), state), ("code".into(), code)],
            Some(&binding),
        )
        .await;
    assert_eq!(reused.status(), 400, "{}", body_text(&reused));
    assert!(env.connection_item("acme", "highlevel").await.is_none());
}

#[tokio::test]
async fn expired_state_is_refused() {
    let env = Env::new().await;
    let (pairs, binding) = env.authorize("acme", "crm").await;
    env.clock.advance(chrono::Duration::minutes(11));
    let resp = env.callback("crm", &pairs, Some(&binding)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        env.sim("crm").token_requests(),
        0,
        "no exchange for an expired state"
    );
    assert_nothing_stored(&env, "acme").await;
}

#[tokio::test]
async fn state_of_another_tenant_or_another_provider_is_refused() {
    let env = Env::new().await;
    // Tenant globex's flow completed in acme's browser (login CSRF): the binding differs.
    let (_, acme_binding) = env.authorize("acme", "crm").await;
    let (globex_pairs, _) = env.authorize("globex", "crm").await;
    let resp = env
        .callback("crm", &globex_pairs, Some(&acme_binding))
        .await;
    assert_eq!(resp.status(), 400);
    let no_cookie = env.callback("crm", &globex_pairs, None).await;
    assert_eq!(no_cookie.status(), 400);

    // A HighLevel state presented at the Google callback.
    let (hl_pairs, hl_binding) = env.authorize("acme", "highlevel").await;
    let resp = env.callback("google", &hl_pairs, Some(&hl_binding)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(env.sim("highlevel").token_requests(), 0);
    assert_eq!(env.sim("google").token_requests(), 0);
    assert_nothing_stored(&env, "acme").await;
    assert_nothing_stored(&env, "globex").await;
}

#[tokio::test]
async fn issuer_mismatch_is_refused_before_the_exchange() {
    let env = Env::new().await;
    for provider in ["google", "crm"] {
        let (pairs, binding) = env.authorize("acme", provider).await;
        let forged = replace_pair(&pairs, "iss", "https://attacker.example");
        let resp = env.callback(provider, &forged, Some(&binding)).await;
        assert_eq!(result_of(&resp).as_deref(), Some("issuer_mismatch"));
    }
    // Google always sends iss: a response without it is refused too.
    let (pairs, binding) = env.authorize("acme", "google").await;
    let resp = env
        .callback("google", &without_pair(&pairs, "iss"), Some(&binding))
        .await;
    assert_eq!(result_of(&resp).as_deref(), Some("issuer_mismatch"));
    assert_eq!(env.sim("google").token_requests(), 0);
    assert_eq!(env.sim("crm").token_requests(), 0);
    assert_nothing_stored(&env, "acme").await;
}

#[tokio::test]
async fn wrong_pkce_verifier_is_refused_by_the_provider() {
    let env = Env::new().await;
    let (pairs, binding) = env.authorize("acme", "highlevel").await;
    // Replace the sealed verifier in the stored state with another (validly sealed) one.
    let nonce = pairs.iter().find(|(k, _)| k == "state").unwrap().1.clone();
    let store = &env.deps.oauth.store;
    let mut state: OauthState = store.get(&state_key(&nonce)).await.unwrap().unwrap();
    let context: SealContext = pkce_context(&tenant("acme"), &nonce);
    state.pkce_verifier = Some(
        env.deps
            .oauth
            .sealer
            .seal(
                &context,
                &SecretString::from("a-different-verifier-aaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            )
            .await
            .unwrap(),
    );
    store.put(&state).await.unwrap();
    assert_eq!(state.key(), state_key(&nonce));
    let resp = env.callback("highlevel", &pairs, Some(&binding)).await;
    assert_eq!(result_of(&resp).as_deref(), Some("exchange_failed"));
    assert_eq!(env.sim("highlevel").token_requests(), 1);
    assert!(env.sim("highlevel").issued_access_tokens().is_empty());
    assert_nothing_stored(&env, "acme").await;
}

#[tokio::test]
async fn replayed_code_is_refused() {
    let env = Env::new().await;
    let (pairs, binding) = env.authorize("acme", "crm").await;
    let resp = env.callback("crm", &pairs, Some(&binding)).await;
    assert_eq!(result_of(&resp).as_deref(), Some("connected"));

    // The same code, carried by a fresh state of another tenant.
    let (fresh, fresh_binding) = env.authorize("globex", "crm").await;
    let code = pairs.iter().find(|(k, _)| k == "code").unwrap().1.clone();
    let replay = replace_pair(&fresh, "code", &code);
    let resp = env.callback("crm", &replay, Some(&fresh_binding)).await;
    assert_eq!(result_of(&resp).as_deref(), Some("exchange_failed"));
    for provider in ["highlevel", "google", "crm"] {
        assert!(env.connection_item("globex", provider).await.is_none());
    }
    assert_eq!(env.count_kind("connection").await, 1, "only acme's");
    // The provider revoked what the replayed code had issued (RFC 6749 §4.1.2).
    let first_refresh = env.sim("crm").issued_refresh_tokens()[0].clone();
    assert!(env.sim("crm").is_revoked(&first_refresh));
}

#[tokio::test]
async fn provider_access_denied_is_refused() {
    let env = Env::new().await;
    env.sim("google").deny_next();
    let (pairs, binding) = env.authorize("acme", "google").await;
    assert!(
        pairs
            .iter()
            .any(|(k, v)| k == "error" && v == "access_denied")
    );
    let resp = env.callback("google", &pairs, Some(&binding)).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(result_of(&resp).as_deref(), Some("access_denied"));
    assert_eq!(env.sim("google").token_requests(), 0);
    assert_nothing_stored(&env, "acme").await;
}

#[tokio::test]
async fn return_url_outside_the_allow_list_is_refused() {
    let env = Env::new().await;
    for url in [
        "https://evil.example/settings",
        "https://app.custody.test.evil.example/settings",
        "https://app.custody.test/settingsx",
        "http://app.custody.test/settings",
        "javascript:alert(1)",
        "not a url",
    ] {
        let resp = env.connect("acme", "highlevel", url).await;
        assert_eq!(resp.status(), 400, "{url}");
        assert_eq!(body_json(&resp)["field"], "return_url");
    }
    assert_eq!(env.count_kind("oauth_state").await, 0);
    assert_nothing_stored(&env, "acme").await;
}

#[tokio::test]
async fn connect_needs_an_admin_and_a_known_provider() {
    let env = Env::new().await;
    let mut ev = event(CONNECT);
    set_claims(&mut ev, "acme", "operator");
    assert_eq!(env.call(ev).await.status(), 403);
    let resp = env.connect("acme", "nosuch", RETURN_URL).await;
    assert_eq!(resp.status(), 404);
    let mut ev = event(CONNECT);
    ev["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    assert_eq!(env.call(ev).await.status(), 401);
    assert_eq!(env.count_kind("oauth_state").await, 0);

    // The authorize URL: exact redirect URI, PKCE S256, state.
    let resp = env.connect("acme", "highlevel", RETURN_URL).await;
    let url = url::Url::parse(&header(&resp, "location")).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(
        q["redirect_uri"],
        format!("{REDIRECT_BASE}/oauth/highlevel/callback")
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 40);
    assert!(header(&resp, "set-cookie").contains("HttpOnly"));
}

/// A browser app (the console) fetches the start with `Accept: application/json`: a
/// 200 whose body names the authorize URL (a fetch cannot read a redirect), with the
/// same binding cookie; the flow then completes as a redirect-started one does.
#[tokio::test]
async fn a_browser_app_gets_the_authorize_url_as_json_and_completes_the_flow() {
    let env = Env::new().await;
    let mut ev = event(CONNECT);
    set_claims(&mut ev, "acme", "admin");
    set_path(&mut ev, "provider", "highlevel", "/connect/highlevel");
    set_query(&mut ev, &[("return_url", RETURN_URL)]);
    ev["headers"]["accept"] = serde_json::json!("application/json, text/plain;q=0.5");
    let resp = env.call(ev).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert!(header(&resp, "location").is_empty());
    assert_eq!(header(&resp, "content-type"), "application/json");
    let authorize = body_json(&resp)["authorize_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = header(&resp, "set-cookie");
    let binding = cookie
        .strip_prefix("__Host-custody-oauth=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    let at_provider = env.browser.get(&authorize).send().await.unwrap();
    assert_eq!(at_provider.status(), 302);
    let back = url::Url::parse(at_provider.headers()["location"].to_str().unwrap()).unwrap();
    let pairs: Vec<(String, String)> = back.query_pairs().into_owned().collect();
    let done = env.callback("highlevel", &pairs, Some(&binding)).await;
    assert_eq!(result_of(&done).as_deref(), Some("connected"));
}

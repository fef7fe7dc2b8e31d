//! Installs that start in the HighLevel Marketplace: the simulated Marketplace sends
//! the browser to the callback with a code and no state; the install is held until
//! an admin claims it from that browser, once HighLevel's `INSTALL` webhook has
//! corroborated it.

use std::sync::Arc;

use custody::clock::Clock as _;
use custody::oauth::access_token;
use custody_sim::oauth_provider::SimAccount;
use lambda_http::{Body, Response};
use serde_json::{Value, json};
use url::Url;

use crate::common::*;

const CLAIM: &str = include_str!("../../../../events/oauth/claim_installation.json");
const SWEEP: &str = include_str!("../../../../events/oauth/schedule_expire_installations.json");
const COMPANY: &str = "coAcme01";

/// What the browser holds after the Marketplace sent it back through custody.
struct Arrived {
    installation: String,
    claim_token: String,
    binding: String,
}

fn account(location: &str) -> SimAccount {
    SimAccount {
        location_id: location.into(),
        company_id: COMPANY.into(),
        user_type: "Location".into(),
        subject: "user01".into(),
    }
}

/// Clicks Install in the simulated Marketplace for `location` and follows the
/// browser through custody's callback.
async fn install_from_marketplace(env: &Env, location: &str) -> Arrived {
    let sim = env.sim("highlevel");
    sim.set_account(account(location));
    let start = sim.marketplace_install_url(&format!("{REDIRECT_BASE}/oauth/highlevel/callback"));
    let at_marketplace = env.browser.get(&start).send().await.unwrap();
    assert_eq!(at_marketplace.status(), 302);
    let back = Url::parse(at_marketplace.headers()["location"].to_str().unwrap()).unwrap();
    let pairs: Vec<(String, String)> = back
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert!(pairs.iter().all(|(k, _)| k != "state"), "{pairs:?}");
    let resp = env.callback("highlevel", &pairs, None).await;
    assert_eq!(resp.status(), 302, "{}", body_text(&resp));
    assert_eq!(header(&resp, "referrer-policy"), "no-referrer");
    let landing = Url::parse(&header(&resp, "location")).unwrap();
    assert!(
        landing
            .as_str()
            .starts_with("https://app.custody.test/settings"),
        "{landing}"
    );
    let query = |name: &str| {
        landing
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(query("result").as_deref(), Some("install_pending"));
    let installation = query("installation").unwrap();
    assert_eq!(installation, format!("location:{location}"));
    // The claim token rides in the fragment: no server or Referer sees it.
    assert!(query("claim_token").is_none());
    let claim_token = landing
        .fragment()
        .and_then(|f| f.strip_prefix("claim_token="))
        .unwrap()
        .to_owned();
    let cookie = header(&resp, "set-cookie");
    for attribute in [
        "Path=/",
        "Max-Age=900",
        "Secure",
        "HttpOnly",
        "SameSite=None",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let binding = cookie
        .strip_prefix("__Host-custody-install=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    Arrived {
        installation,
        claim_token,
        binding,
    }
}

/// HighLevel's signed `INSTALL` webhook.
async fn install_webhook(env: &Env, location: &str, company: &str, app_id: &str) -> Value {
    let body = json!({
        "type": "INSTALL",
        "appId": app_id,
        "installType": "Location",
        "locationId": location,
        "companyId": company,
        "userId": "user01",
        "timestamp": env.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "webhookId": format!("wh-{}", ulid::Ulid::new()),
    })
    .to_string();
    let mut ev = event(WEBHOOK);
    ev["body"] = json!(body);
    ev["headers"]["x-wh-signature"] = json!(env.signer.sign_rsa(body.as_bytes()).unwrap());
    let resp = env.call(ev).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    body_json(&resp)
}

async fn claim_as(
    env: &Env,
    tenant_name: &str,
    role: &str,
    body: Value,
    binding: Option<&str>,
) -> Response<Body> {
    let mut ev = event(CLAIM);
    set_claims(&mut ev, tenant_name, role);
    ev["body"] = json!(body.to_string());
    let headers = ev["headers"].as_object_mut().unwrap();
    match binding {
        Some(b) => headers.insert(
            "cookie".into(),
            json!(format!("__Host-custody-install={b}")),
        ),
        None => headers.remove("cookie"),
    };
    env.call(ev).await
}

async fn claim(env: &Env, tenant_name: &str, arrived: &Arrived) -> Response<Body> {
    claim_as(
        env,
        tenant_name,
        "admin",
        json!({"installation": arrived.installation, "claim_token": arrived.claim_token}),
        Some(&arrived.binding),
    )
    .await
}

async fn listed(env: &Env, tenant_name: &str) -> Vec<Value> {
    let mut ev = event(LIST);
    set_claims(&mut ev, tenant_name, "viewer");
    let resp = env.call(ev).await;
    assert_eq!(resp.status(), 200);
    body_json(&resp)["connections"].as_array().unwrap().clone()
}

/// The tenant's audit entries (action, details), the chain verified.
async fn audit(env: &Env, tenant_name: &str) -> Vec<(String, Value)> {
    let clock: custody::clock::SharedClock = Arc::new(env.clock.clone());
    let log = env.stack.audit(clock);
    log.verify(&tenant(tenant_name)).await.unwrap().unwrap();
    log.entries(&tenant(tenant_name), None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, Value::Object(e.details)))
        .collect()
}

/// Nothing of a refused claim reached the tenant: no connection, no link, no entry.
async fn nothing_stored_for(env: &Env, tenant_name: &str) {
    assert!(
        env.connection_item(tenant_name, "highlevel")
            .await
            .is_none()
    );
    assert!(listed(env, tenant_name).await.is_empty());
    let links = env
        .stack
        .clients
        .dynamodb
        .scan()
        .table_name(&env.stack.config.table)
        .filter_expression("kind = :k AND sk = :t")
        .expression_attribute_values(
            ":k",
            aws_sdk_dynamodb::types::AttributeValue::S("account_link".into()),
        )
        .expression_attribute_values(
            ":t",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("T#{tenant_name}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(links.items.unwrap_or_default().len(), 0);
    assert!(audit(env, tenant_name).await.is_empty());
}

#[tokio::test]
async fn a_marketplace_install_claimed_by_an_admin_becomes_a_connection() {
    let env = Env::with_marketplace().await;
    let arrived = install_from_marketplace(&env, "locMkt01").await;

    // Held, bound to no tenant, tokens only sealed.
    assert_eq!(env.count_kind("pending_install").await, 1);
    let dump = env.table_dump().await;
    for token in env
        .sim("highlevel")
        .issued_access_tokens()
        .into_iter()
        .chain(env.sim("highlevel").issued_refresh_tokens())
    {
        assert!(!dump.contains(&token), "a token is stored in plaintext");
    }
    assert!(!dump.contains(&arrived.claim_token));
    assert!(!dump.contains(&arrived.binding));
    assert!(listed(&env, "acme").await.is_empty());

    let webhook = install_webhook(&env, "locMkt01", COMPANY, MARKETPLACE_APP_ID).await;
    assert_eq!(webhook["status"], "installed");
    let resp = claim(&env, "acme", &arrived).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let claimed = body_json(&resp);
    assert_eq!(claimed["installation"], "location:locMkt01");
    assert_eq!(claimed["account"]["location_id"], "locMkt01");
    assert_eq!(claimed["replaced"], false);
    // The binding cookie is cleared.
    assert!(header(&resp, "set-cookie").contains("Max-Age=0"));

    let connections = listed(&env, "acme").await;
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0]["account"]["location_id"], "locMkt01");
    let entries = audit(&env, "acme").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "connection.created");
    assert_eq!(entries[0].1["via"], "marketplace");
    assert_eq!(entries[0].1["installation"], "location:locMkt01");
    // The tokens open under the tenant's context now, and work.
    let token = access_token(&env.deps.oauth, &tenant("acme"), "highlevel")
        .await
        .unwrap();
    assert_eq!(token.account.location_id.as_deref(), Some("locMkt01"));
    // Nothing pending is left, and the claim does not work twice.
    assert_eq!(env.count_kind("pending_install").await, 0);
    assert_eq!(env.count_kind("install_notice").await, 0);
    let again = claim(&env, "acme", &arrived).await;
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn a_claim_waits_for_the_install_webhook_of_the_same_app_location_and_company() {
    let env = Env::with_marketplace().await;
    let arrived = install_from_marketplace(&env, "locMkt02").await;

    let early = claim(&env, "acme", &arrived).await;
    assert_eq!(early.status(), 409);
    assert!(
        body_json(&early)["type"]
            .as_str()
            .unwrap()
            .ends_with("install-unconfirmed")
    );
    // Another app's install, and our app's install of another company, corroborate
    // nothing.
    let other_app = install_webhook(&env, "locMkt02", COMPANY, "66c0ffee00000000000000ff").await;
    assert_eq!(other_app["status"], "ignored");
    assert_eq!(claim(&env, "acme", &arrived).await.status(), 409);
    install_webhook(&env, "locMkt02", "coSomeoneElse", MARKETPLACE_APP_ID).await;
    assert_eq!(claim(&env, "acme", &arrived).await.status(), 409);
    nothing_stored_for(&env, "acme").await;
    // Still claimable: an unconfirmed claim consumes nothing.
    assert_eq!(env.count_kind("pending_install").await, 1);

    install_webhook(&env, "locMkt02", COMPANY, MARKETPLACE_APP_ID).await;
    let resp = claim(&env, "acme", &arrived).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
}

#[tokio::test]
async fn reused_expired_foreign_and_unbound_claims_are_refused_with_nothing_stored() {
    let env = Env::with_marketplace().await;
    let first = install_from_marketplace(&env, "locMkt03").await;
    let second = install_from_marketplace(&env, "locMkt04").await;
    install_webhook(&env, "locMkt03", COMPANY, MARKETPLACE_APP_ID).await;
    install_webhook(&env, "locMkt04", COMPANY, MARKETPLACE_APP_ID).await;

    // A foreign claim token: the other installation's.
    let foreign = claim_as(
        &env,
        "acme",
        "admin",
        json!({"installation": first.installation, "claim_token": second.claim_token}),
        Some(&first.binding),
    )
    .await;
    assert_eq!(foreign.status(), 403);
    assert_eq!(body_json(&foreign)["field"], "claim_token");
    // Another browser (no cookie, or another install's cookie).
    let body = json!({"installation": first.installation, "claim_token": first.claim_token});
    for binding in [None, Some(second.binding.as_str())] {
        let resp = claim_as(&env, "acme", "admin", body.clone(), binding).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(body_json(&resp)["field"], "__Host-custody-install");
    }
    // Not an admin.
    let viewer = claim_as(&env, "acme", "viewer", body.clone(), Some(&first.binding)).await;
    assert_eq!(viewer.status(), 403);
    // Malformed bodies name their field.
    for (bad, field) in [
        (
            json!({"installation": "tenant:x", "claim_token": "abc"}),
            "installation",
        ),
        (
            json!({"installation": "location:a b", "claim_token": "abc"}),
            "installation",
        ),
        (
            json!({"installation": first.installation, "claim_token": ""}),
            "claim_token",
        ),
        (
            json!({"installation": first.installation, "claim_token": "x".repeat(129)}),
            "claim_token",
        ),
    ] {
        let resp = claim_as(&env, "acme", "admin", bad, Some(&first.binding)).await;
        assert_eq!(resp.status(), 400, "{}", body_text(&resp));
        assert_eq!(body_json(&resp)["field"], field);
    }
    nothing_stored_for(&env, "acme").await;
    assert_eq!(env.count_kind("pending_install").await, 2);

    // Reused: the first claim consumes it.
    assert_eq!(claim(&env, "acme", &first).await.status(), 200);
    let reused = claim(&env, "globex", &first).await;
    assert_eq!(reused.status(), 404);
    assert_eq!(body_json(&reused)["field"], "installation");
    nothing_stored_for(&env, "globex").await;

    // Expired: past its 15 minutes the install is gone, whatever the token.
    env.clock
        .advance(chrono::Duration::minutes(15) + chrono::Duration::seconds(1));
    let expired = claim(&env, "globex", &second).await;
    assert_eq!(expired.status(), 404);
    nothing_stored_for(&env, "globex").await;
}

#[tokio::test]
async fn an_unclaimed_install_expires_with_its_tokens_deleted_and_its_grant_revoked() {
    let env = Env::with_marketplace().await;
    let arrived = install_from_marketplace(&env, "locMkt05").await;
    install_webhook(&env, "locMkt05", COMPANY, MARKETPLACE_APP_ID).await;
    let refresh = env.sim("highlevel").issued_refresh_tokens();
    assert_eq!(refresh.len(), 1);

    // Within its time the sweep leaves it alone.
    let sweep = serde_json::from_str::<Value>(SWEEP).unwrap();
    let early = oauth::handle_event(&env.deps, sweep.clone()).await.unwrap();
    assert_eq!(early, json!({"expired": 0, "revoked": 0, "notices": 0}));
    assert_eq!(env.count_kind("pending_install").await, 1);

    env.clock.advance(chrono::Duration::minutes(16));
    let swept = oauth::handle_event(&env.deps, sweep.clone()).await.unwrap();
    assert_eq!(swept, json!({"expired": 1, "revoked": 1, "notices": 1}));
    assert!(env.sim("highlevel").is_revoked(&refresh[0]));
    assert_eq!(env.count_kind("pending_install").await, 0);
    assert_eq!(env.count_kind("install_notice").await, 0);
    assert_eq!(claim(&env, "acme", &arrived).await.status(), 404);
    nothing_stored_for(&env, "acme").await;
    // Idempotent: a second sweep finds nothing.
    let again = oauth::handle_event(&env.deps, sweep).await.unwrap();
    assert_eq!(again, json!({"expired": 0, "revoked": 0, "notices": 0}));
}

#[tokio::test]
async fn a_location_another_tenant_holds_is_refused_audited_and_its_install_deleted() {
    let env = Env::with_marketplace().await;
    env.sim("highlevel").set_account(account("locMkt06"));
    env.connect_fully("globex", "highlevel").await;

    let arrived = install_from_marketplace(&env, "locMkt06").await;
    install_webhook(&env, "locMkt06", COMPANY, MARKETPLACE_APP_ID).await;
    let resp = claim(&env, "acme", &arrived).await;
    assert_eq!(resp.status(), 409, "{}", body_text(&resp));
    assert!(
        body_json(&resp)["type"]
            .as_str()
            .unwrap()
            .ends_with("installation-held")
    );
    assert!(env.connection_item("acme", "highlevel").await.is_none());
    let entries = audit(&env, "acme").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "installation.refused");
    assert_eq!(entries[0].1["reason"], "held_by_another_tenant");
    // The install's tokens went at once; the holder is untouched.
    assert_eq!(env.count_kind("pending_install").await, 0);
    assert!(env.connection_item("globex", "highlevel").await.is_some());
    assert_eq!(
        audit(&env, "globex")
            .await
            .into_iter()
            .map(|(a, _)| a)
            .collect::<Vec<_>>(),
        vec!["connection.created"]
    );
}

#[tokio::test]
async fn a_reinstall_for_the_same_tenant_replaces_the_tokens_and_revokes_the_old_grant() {
    let env = Env::with_marketplace().await;
    env.sim("highlevel").set_account(account("locMkt07"));
    env.connect_fully("acme", "highlevel").await;
    let old_refresh = env.sim("highlevel").issued_refresh_tokens()[0].clone();

    let arrived = install_from_marketplace(&env, "locMkt07").await;
    install_webhook(&env, "locMkt07", COMPANY, MARKETPLACE_APP_ID).await;
    let resp = claim(&env, "acme", &arrived).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let claimed = body_json(&resp);
    assert_eq!(claimed["replaced"], true);
    assert_eq!(claimed["revocation"], "revoked");
    assert!(env.sim("highlevel").is_revoked(&old_refresh));
    let new_refresh = env.sim("highlevel").issued_refresh_tokens()[1].clone();
    assert!(env.sim("highlevel").refresh_token_live(&new_refresh));
    assert_eq!(
        audit(&env, "acme")
            .await
            .into_iter()
            .map(|(a, _)| a)
            .collect::<Vec<_>>(),
        vec![
            "connection.created",
            "connection.created",
            "connection.revoked"
        ]
    );
    assert_eq!(listed(&env, "acme").await.len(), 1);
}

#[tokio::test]
async fn uninstall_deletes_an_unclaimed_install_at_once() {
    let env = Env::with_marketplace().await;
    let arrived = install_from_marketplace(&env, "locMkt08").await;
    install_webhook(&env, "locMkt08", COMPANY, MARKETPLACE_APP_ID).await;
    let body = json!({
        "type": "UNINSTALL",
        "appId": MARKETPLACE_APP_ID,
        "locationId": "locMkt08",
        "timestamp": env.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "webhookId": "wh-uninstall-08",
    })
    .to_string();
    let mut ev = event(WEBHOOK);
    ev["body"] = json!(body);
    ev["headers"]["x-wh-signature"] = json!(env.signer.sign_rsa(body.as_bytes()).unwrap());
    let resp = env.call(ev).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert_eq!(env.count_kind("pending_install").await, 0);
    assert_eq!(env.count_kind("install_notice").await, 0);
    assert_eq!(claim(&env, "acme", &arrived).await.status(), 404);
}

#[tokio::test]
async fn a_stateless_callback_is_refused_where_marketplace_installs_are_off() {
    // Google takes no Marketplace installs, and neither does HighLevel without an
    // app id: the callback is refused as before, and nothing is exchanged.
    let env = Env::with_marketplace().await;
    let before = env.sim("google").token_requests();
    let pairs = vec![("code".to_owned(), "code_from_nowhere".to_owned())];
    let resp = env.callback("google", &pairs, None).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(env.sim("google").token_requests(), before);

    let plain = Env::new().await;
    let resp = plain.callback("highlevel", &pairs, None).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(plain.sim("highlevel").token_requests(), 0);
    assert_eq!(plain.count_kind("pending_install").await, 0);
}

#[tokio::test]
async fn a_marketplace_callback_with_a_code_custody_cannot_exchange_stores_nothing() {
    let env = Env::with_marketplace().await;
    let pairs = vec![("code".to_owned(), "code_never_issued".to_owned())];
    let resp = env.callback("highlevel", &pairs, None).await;
    assert_eq!(resp.status(), 302);
    let landing = header(&resp, "location");
    assert!(landing.contains("result=exchange_failed"), "{landing}");
    assert!(header(&resp, "set-cookie").is_empty());
    assert_eq!(env.count_kind("pending_install").await, 0);
}

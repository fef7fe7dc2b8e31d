//! The tenant's notice that a connection needs re-consent: written to the outbox by
//! the refresh that was refused (once, however many callers saw it), delivered by the
//! code the dsar function relays it with (`custody::notice::Notifier`), signed with
//! the tenant's notification secret, and carrying no account identifier or token.

use std::time::Duration;

use custody::notice::{Notice, NoticeKind, NoticeStatus, NotificationWebhook, Notifier};
use custody::oauth::{Connection, OauthError, access_token, connection_key};
use custody::privacy::WebhookTarget;
use custody::store::keys;
use custody_sim::destination::DestinationSim;
use secrecy::SecretString;

use crate::common::*;

const SECRET: &str = "tenant-notice-secret-0123456789abcdefghij";

async fn configure_notices(env: &Env, tenant: &custody::TenantId, url: String) {
    let oauth = &env.deps.oauth;
    let secret = oauth
        .sealer
        .seal(
            &NotificationWebhook::seal_context(tenant),
            &SecretString::from(SECRET),
        )
        .await
        .unwrap();
    oauth
        .store
        .put(&NotificationWebhook {
            tenant: tenant.clone(),
            webhook: WebhookTarget { url, secret },
            updated_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
}

async fn outbox(env: &Env, tenant: &custody::TenantId) -> Vec<Notice> {
    env.deps
        .oauth
        .store
        .query_all::<Notice>(&keys::tenant(tenant), "NOTICE#connection:")
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refused_refresh_writes_one_reconsent_notice_delivered_signed_without_identifiers() {
    let env = Env::new().await;
    let sim = env.sim("crm");
    sim.set_expires_in(60);
    env.connect_fully("acme", "crm").await;
    let acme = tenant("acme");
    let receiver = DestinationSim::start(SECRET).await.unwrap();
    configure_notices(&env, &acme, receiver.notice_url()).await;
    sim.revoke_all_refresh_tokens();

    // Several callers at once, then again: one marking, one notice.
    let calls =
        futures::future::join_all((0..4).map(|_| access_token(&env.deps.oauth, &acme, "crm")))
            .await;
    for call in calls {
        let err = call.unwrap_err();
        assert!(matches!(err, OauthError::NeedsReconsent(_)), "{err}");
    }
    let err = access_token(&env.deps.oauth, &acme, "crm")
        .await
        .unwrap_err();
    assert!(matches!(err, OauthError::NeedsReconsent(_)), "{err}");
    let notices = outbox(&env, &acme).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice = &notices[0];
    let stored: Connection = env
        .deps
        .oauth
        .store
        .get(&connection_key(&acme, "crm"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        notice.event_id,
        format!(
            "connection:crm:reconsent:{}",
            stored.connected_at.timestamp_millis()
        )
    );
    assert_eq!(notice.kind, NoticeKind::ConnectionNeedsReconsent);
    assert_eq!(
        notice.status,
        NoticeStatus::Pending,
        "written, not sent here"
    );
    assert!(Notice::is_relayed(&notice.event_id));
    // The same event written again (a second marking of the same connection) is
    // nothing new.
    assert!(
        !custody::notice::record(&env.deps.oauth.store, notice)
            .await
            .unwrap()
    );

    // Delivered as the dsar function relays it: signed, once.
    let http = custody::http::client_with_timeout(
        custody::egress::EgressPolicy::LOCAL,
        Duration::from_secs(5),
    )
    .unwrap();
    let notifier = Notifier::new(
        env.deps.oauth.store.clone(),
        env.deps.oauth.sealer.clone(),
        custody::webhook::Sender::new(http, custody::webhook::RetryPolicy::default()),
        env.deps.oauth.audit.clone(),
        "system:dsar",
        true,
    );
    let sent = notifier.deliver(notice.clone()).await.unwrap();
    assert_eq!(sent.status, NoticeStatus::Delivered, "{sent:?}");
    notifier.deliver(sent).await.unwrap();
    let received = receiver.notices();
    assert_eq!(received.len(), 1, "{received:?}");
    let got = &received[0];
    assert!(got.signature_valid, "signed with the tenant's secret");
    assert_eq!(got.delivery_id.as_deref(), Some(notice.event_id.as_str()));
    let body = got.json.clone().unwrap();
    assert_eq!(body["type"], "connection.needs_reconsent");
    assert_eq!(body["data"]["provider"], "crm");
    assert_eq!(body["data"]["reconnect"], "/connect/crm");
    let mut fields: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["provider", "reason", "reconnect"]);
    // No account id, scope or token of the connection.
    let text = body.to_string();
    for id in stored
        .account
        .location_id
        .iter()
        .chain(stored.account.company_id.iter())
        .chain(stored.scopes.iter())
    {
        assert!(!text.contains(id.as_str()), "{id} in {text}");
    }
    assert!(!text.contains(SECRET));
    assert!(
        env.audit_actions("acme")
            .await
            .contains(&"notice.sent".to_owned())
    );

    // Connected again and refused again: a new occurrence, a second notice.
    env.clock.advance(chrono::Duration::minutes(1));
    env.connect_fully("acme", "crm").await;
    sim.revoke_all_refresh_tokens();
    let err = access_token(&env.deps.oauth, &acme, "crm")
        .await
        .unwrap_err();
    assert!(matches!(err, OauthError::NeedsReconsent(_)), "{err}");
    assert_eq!(outbox(&env, &acme).await.len(), 2);
}

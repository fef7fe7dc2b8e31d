//! The tenant's notice that an export run failed: written to the outbox once per
//! failed invocation (a duplicate trigger writes nothing more), delivered by the code
//! the dsar function relays it with (`custody::notice::Notifier`), signed with the
//! tenant's notification secret, and carrying no identifier or error text.

use custody::notice::{Notice, NoticeKind, NoticeStatus, NotificationWebhook, Notifier};
use custody::privacy::WebhookTarget;
use custody::store::keys;
use custody_sim::destination::DestinationSim;
use custody_sim::highlevel::Seed;
use export::model::RunStatus;

use crate::*;

const SECRET: &str = "tenant-notice-secret-0123456789abcdefghij";

/// The tenant's notification webhook, as `PUT /privacy/settings` stores it.
async fn configure_notices(env: &Env, tenant: &TenantId, url: String) {
    let secret = env
        .stack
        .sealer()
        .seal(
            &NotificationWebhook::seal_context(tenant),
            &SecretString::from(SECRET),
        )
        .await
        .unwrap();
    env.deps
        .store
        .put(&NotificationWebhook {
            tenant: tenant.clone(),
            webhook: WebhookTarget { url, secret },
            updated_at: Utc::now(),
        })
        .await
        .unwrap();
}

async fn outbox(env: &Env, tenant: &TenantId) -> Vec<Notice> {
    env.deps
        .store
        .query_all::<Notice>(&keys::tenant(tenant), "NOTICE#export:")
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failed_run_writes_one_notice_that_is_delivered_signed_without_identifiers() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locNoticeFail01";
    env.connect(&acme, location, Some(&Seed::small(5, 4, 100)))
        .await;
    let settings = env
        .webdav_settings("notices", &[Channel::Sms], all_time())
        .await;
    env.configure(&acme, settings).await;
    let receiver = DestinationSim::start(SECRET).await.unwrap();
    configure_notices(&env, &acme, receiver.notice_url()).await;

    // The destination fails for good: the run fails. The same trigger delivered
    // twice resumes the run and fails it again: still one notice (once per run).
    env.dav.fail_next(507, 10_000);
    let kick = kick_event(&acme);
    let first = handle_trigger(&env.deps, kick.clone(), &Budget::unlimited())
        .await
        .unwrap();
    let Outcome::Failed { run_id, .. } = first else {
        panic!("{first:?}");
    };
    let again = handle_trigger(&env.deps, kick, &Budget::unlimited())
        .await
        .unwrap();
    assert!(
        matches!(&again, Outcome::Failed { run_id: id, .. } if *id == run_id),
        "{again:?}"
    );
    let run = env.run(&acme, &run_id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.invocations, 2);
    let notices = outbox(&env, &acme).await;
    assert_eq!(notices.len(), 1, "one notice: {notices:?}");
    let notice = &notices[0];
    assert_eq!(notice.event_id, format!("export:{run_id}:failed"));
    assert_eq!(notice.kind, NoticeKind::ExportRunFailed);
    assert_eq!(
        notice.status,
        NoticeStatus::Pending,
        "written, not sent here"
    );
    assert_eq!(notice.attempts, 0);
    assert!(Notice::is_relayed(&notice.event_id));

    // Writing the same event again (a retried step) changes nothing.
    assert!(
        !custody::notice::record(&env.deps.store, notice)
            .await
            .unwrap()
    );
    assert_eq!(outbox(&env, &acme).await.len(), notices.len());

    // Delivered as the dsar function relays it: signed, once.
    let http = custody::http::client_with_timeout(
        custody::egress::EgressPolicy::LOCAL,
        Duration::from_secs(5),
    )
    .unwrap();
    let notifier = Notifier::new(
        env.deps.store.clone(),
        env.deps.sealer.clone(),
        custody::webhook::Sender::new(http, custody::webhook::RetryPolicy::default()),
        env.deps.audit.clone(),
        "system:dsar",
        true,
    );
    for notice in outbox(&env, &acme).await {
        let sent = notifier.deliver(notice.clone()).await.unwrap();
        assert_eq!(sent.status, NoticeStatus::Delivered, "{sent:?}");
        // Delivered already: a second relay (a duplicate stream record) sends nothing.
        notifier.deliver(sent).await.unwrap();
    }
    let received = receiver.notices();
    assert_eq!(received.len(), notices.len(), "{received:?}");
    let got = &received[0];
    assert!(got.signature_valid, "signed with the tenant's secret");
    assert_eq!(got.status, 200);
    assert_eq!(got.delivery_id.as_deref(), Some(notice.event_id.as_str()));
    let body = got.json.clone().unwrap();
    assert_eq!(body["type"], "export.run_failed");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["data"]["run_id"], run_id.as_str());
    assert_eq!(body["data"]["error_kind"], "destination");
    assert_eq!(body["data"]["attempt"], 1);
    // Nothing identifying and no error text: ids, a kind, a count and a path only;
    // not the location, the destination or what it answered.
    let mut fields: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "attempt",
            "error_kind",
            "resumes_on_next_trigger",
            "run_id",
            "runs"
        ]
    );
    let text = body.to_string();
    for secret_or_id in [location, "webdav", "127.0.0.1", SECRET, "Insufficient"] {
        assert!(!text.contains(secret_or_id), "{secret_or_id} in {text}");
    }
    // Visible beside the run in the export log.
    let page = export::routes::runs_page(&env.deps, &acme, 10, None)
        .await
        .unwrap();
    let shown = &page["runs"][0];
    assert_eq!(shown["run_id"], run_id.as_str());
    assert_eq!(
        shown["failure_notice"]["event_id"],
        notice.event_id.as_str()
    );
    assert_eq!(shown["failure_notice"]["status"], "delivered", "{shown}");
    let sent = env
        .deps
        .audit
        .entries(&acme, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "notice.sent")
        .count();
    assert_eq!(sent, notices.len(), "every notice is audited");
}

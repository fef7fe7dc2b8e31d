//! Privacy notices to the tenant's notification webhook (a wiremock server stands in
//! for the tenant's receiver): received, verification issued, extended, completed,
//! deadline and overdue, account purged — signed, without identifiers, once per event
//! id, visible on the request; a failed one stays visible and the daily check sends
//! it again; no webhook → skipped; the settings keep or remove the webhook.

use chrono::Duration;
use custody::notice::NotificationWebhook;
use custody::privacy::PrivacySettings;
use custody::seal::{Purpose, SealContext};
use dsar::Budget;
use http::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::*;

const SECRET: &str = "tenant-notice-secret-0123456789abcdefghij";
const NOTICES: &str = "/notices";

async fn put_settings(deps: &Deps, body: Value) -> (StatusCode, Value) {
    call(
        deps,
        request(
            event!("put_privacy_settings"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await
}

async fn get_settings(deps: &Deps) -> Value {
    let (status, out) = call(
        deps,
        request(event!("get_privacy_settings"), "acme", "admin", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

async fn configure(deps: &Deps, server: &MockServer) {
    let (status, out) = put_settings(
        deps,
        json!({ "notification_webhook": { "url": format!("{}{NOTICES}", server.uri()), "secret": SECRET } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        out["notification_webhook"]["url"],
        format!("{}{NOTICES}", server.uri())
    );
    assert!(!out.to_string().contains(SECRET));
}

async fn receiver(status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(NOTICES))
        .respond_with(ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

/// Every notice the receiver got, each checked: signed with the tenant's secret, its
/// event id in the delivery header.
async fn received(server: &MockServer) -> Vec<Value> {
    let mut all = Vec::new();
    for delivery in server.received_requests().await.unwrap() {
        if delivery.url.path() != NOTICES {
            continue;
        }
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
        .expect("a notice is signed with the tenant's secret");
        let message: Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(
            header("custody-delivery").as_deref(),
            message["event_id"].as_str(),
            "the event id is the delivery id"
        );
        all.push(message);
    }
    all
}

fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

async fn detail(deps: &Deps, id: &str) -> Value {
    let (status, out) = call(
        deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

async fn audit_actions(deps: &Deps, action: &str) -> Vec<custody::audit::Entry> {
    deps.audit
        .entries(&acme(), None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
}

#[tokio::test]
async fn notices_arrive_signed_once_each_without_identifiers_and_show_on_the_request() {
    let Env { deps, .. } = env().await;
    let server = receiver(204).await;
    configure(&deps, &server).await;
    seed_imports(&deps).await;

    // Received: at once, when the request is filed.
    let erasure = file_request(&deps, "delete", &ANN, "gdpr").await;
    let messages = received(&server).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let first = &messages[0];
    assert_eq!(first["type"], "privacy_request.received");
    assert_eq!(first["event_id"], format!("{erasure}:received"));
    assert_eq!(first["request_id"], erasure.as_str());
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["data"]["request_kind"], "erasure");
    assert!(first["data"]["respond_by"].is_string());

    // Extended, with a reason that names the subject: only that one was given.
    let (status, out) = call(
        &deps,
        request(
            event!("post_privacy_request_extend"),
            "acme",
            "admin",
            Some(json!({ "reason": format!("{} has records in the paper archive", ANN.name), "months": 1 })),
            Some(&erasure),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let messages = received(&server).await;
    let extended = of_type(&messages, "privacy_request.extended");
    assert_eq!(extended.len(), 1, "{messages:?}");
    assert_eq!(extended[0]["event_id"], format!("{erasure}:extended:1"));
    assert_eq!(extended[0]["data"]["reason_given"], true);

    // Completed: the certificate's path. A duplicate stream record, an in-processing
    // record and a direct rerun send nothing more.
    deliver(&deps, &erasure).await;
    deliver(&deps, &erasure).await;
    let response = dsar::handle_stream(
        &deps,
        stream_event("acme", &erasure, "in_processing"),
        Budget::Unlimited,
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    dsar::process::process_request(&deps, &acme(), &erasure, Budget::Unlimited)
        .await
        .unwrap();

    // An access request: its bundle is ready (the bundle itself is not sent).
    let access = file_request(&deps, "export", &BOB, "ccpa").await;
    deliver(&deps, &access).await;
    deliver(&deps, &access).await;

    let messages = received(&server).await;
    let completed = of_type(&messages, "privacy_request.completed");
    assert_eq!(completed.len(), 2, "{messages:#?}");
    let of = |id: &str| {
        *completed
            .iter()
            .find(|m| m["request_id"] == id)
            .unwrap_or_else(|| panic!("no completion notice of {id}"))
    };
    assert_eq!(
        of(&erasure)["data"]["certificate"],
        format!("/privacy/requests/{erasure}/certificate")
    );
    assert_eq!(of(&access)["data"]["bundle_ready"], true);
    assert!(of(&access)["data"].get("certificate").is_none());
    // One of each event, nothing else.
    let mut ids: Vec<&str> = messages
        .iter()
        .map(|m| m["event_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![
        format!("{erasure}:received"),
        format!("{erasure}:extended:1"),
        format!("{erasure}:completed"),
        format!("{access}:received"),
        format!("{access}:completed"),
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    // No identifier of either person, no pseudonym, no free text.
    let everything = serde_json::to_string(&messages).unwrap();
    let mut needles = ANN.needles();
    needles.extend(BOB.needles());
    for kind in ["email", "phone", "contact_id"] {
        needles.push(ANN.pseudonym(&deps, kind));
        needles.push(BOB.pseudonym(&deps, kind));
    }
    needles.push("paper archive".into());
    needles.push("asked by".into());
    assert_eq!(contains_any(&everything, &needles), None, "{everything}");

    // The request shows its notices, delivered once.
    let shown = detail(&deps, &erasure).await;
    let notices = shown["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 3, "{shown}");
    for notice in notices {
        assert_eq!(notice["status"], "delivered", "{notice}");
        assert_eq!(notice["attempts"], 1, "{notice}");
        assert!(notice["delivered_at"].is_string(), "{notice}");
    }
    let types: Vec<&str> = notices
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "privacy_request.received",
            "privacy_request.extended",
            "privacy_request.completed"
        ]
    );
    // Another request's notices are not under this one's.
    assert_eq!(
        detail(&deps, &access).await["notices"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Each is audited once, by the notice's id.
    let sent = audit_actions(&deps, "notice.sent").await;
    assert_eq!(sent.len(), 5, "{sent:#?}");
    assert!(
        sent.iter()
            .any(|e| e.target == format!("NOTICE#{erasure}:completed")
                && e.details["kind"] == "privacy_request.completed")
    );
}

#[tokio::test]
async fn the_verification_notice_says_a_code_went_out_but_never_the_code() {
    let Env { deps, .. } = env().await;
    let server = receiver(204).await;
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let (status, out) = put_settings(
        &deps,
        json!({
            "verification_webhook": { "url": format!("{}/verify", server.uri()), "secret": "v".repeat(40) },
            "notification_webhook": { "url": format!("{}{NOTICES}", server.uri()), "secret": SECRET },
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let (status, out) = call(
        &deps,
        request(
            event!("post_privacy_delete"),
            "acme",
            "admin",
            Some(json!({ "subject": { "email": ANN.email }, "regulation": "gdpr", "verify_subject": true })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    let id = out["id"].as_str().unwrap();
    let code_delivery = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/verify")
        .expect("the code went to the verification webhook");
    let code: Value = serde_json::from_slice(&code_delivery.body).unwrap();
    let code = code["code"].as_str().unwrap().to_owned();

    let messages = received(&server).await;
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let received_notice = of_type(&messages, "privacy_request.received");
    assert_eq!(received_notice[0]["data"]["verification_required"], true);
    let issued = of_type(&messages, "privacy_request.verification_issued");
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["event_id"], format!("{id}:verification_issued"));
    assert!(issued[0]["data"]["code_expires_at"].is_string());
    let everything = serde_json::to_string(&messages).unwrap();
    assert!(!everything.contains(&code), "{everything}");
    assert_eq!(contains_any(&everything, &ANN.needles()), None);
}

#[tokio::test]
async fn a_failed_notice_stays_visible_and_the_daily_check_delivers_it_once_the_receiver_is_up() {
    let Env { deps, clock, .. } = env().await;
    let server = receiver(503).await;
    configure(&deps, &server).await;

    let id = file_request(&deps, "export", &ANN, "gdpr").await;
    // Every attempt of the round was made, then it is failed, and says so.
    let attempts = server.received_requests().await.unwrap().len() as u32;
    assert_eq!(
        attempts,
        deps.webhooks.retry_policy().max_attempts,
        "one round of attempts"
    );
    let notices = detail(&deps, &id).await["notices"].clone();
    assert_eq!(notices.as_array().unwrap().len(), 1, "{notices}");
    assert_eq!(notices[0]["status"], "failed");
    assert_eq!(notices[0]["attempts"], 1);
    assert_eq!(notices[0]["delivered_at"], Value::Null);
    let failed = audit_actions(&deps, "notice.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].outcome, custody::audit::Outcome::Failure);
    assert!(
        failed[0].details["error"]
            .as_str()
            .unwrap()
            .contains("HTTP 503"),
        "{:?}",
        failed[0].details
    );
    assert!(
        !failed[0].details["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );

    // The receiver is back. A check within minutes of the attempt leaves it (a round
    // may still be under way); the next day's delivers it, and later ones do not.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path(NOTICES))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    dsar::deadlines::check(&deps).await.unwrap();
    assert!(received(&server).await.is_empty());
    clock.advance(Duration::days(1));
    dsar::deadlines::check(&deps).await.unwrap();
    let messages = received(&server).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0]["event_id"], format!("{id}:received"));
    clock.advance(Duration::days(1));
    dsar::deadlines::check(&deps).await.unwrap();
    assert_eq!(received(&server).await.len(), 1);

    let notices = detail(&deps, &id).await["notices"].clone();
    assert_eq!(notices[0]["status"], "delivered", "{notices}");
    assert_eq!(notices[0]["attempts"], 2);
    assert!(notices[0]["delivered_at"].is_string());
    assert_eq!(audit_actions(&deps, "notice.sent").await.len(), 1);
}

#[tokio::test]
async fn the_daily_check_warns_of_a_deadline_and_of_an_overdue_request_once_each() {
    let Env { deps, clock, .. } = env().await;
    let server = receiver(204).await;
    configure(&deps, &server).await;
    let id = file_request(&deps, "export", &ANN, "gdpr").await;
    let respond_by: chrono::DateTime<chrono::Utc> = detail(&deps, &id).await["respond_by"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Four days before: nothing yet. Two days before: the warning, once.
    clock.set(respond_by - Duration::days(4));
    dsar::deadlines::check(&deps).await.unwrap();
    assert_eq!(received(&server).await.len(), 1, "only the received notice");
    clock.set(respond_by - Duration::days(2));
    dsar::deadlines::check(&deps).await.unwrap();
    clock.advance(Duration::hours(20));
    dsar::deadlines::check(&deps).await.unwrap();
    let messages = received(&server).await;
    let warnings = of_type(&messages, "privacy_request.deadline_approaching");
    assert_eq!(warnings.len(), 1, "{messages:#?}");
    let date = respond_by.date_naive();
    assert_eq!(warnings[0]["event_id"], format!("{id}:deadline:{date}"));
    assert_eq!(warnings[0]["data"]["days_left"], 2);

    // Past it: overdue, once, however many checks see it.
    clock.set(respond_by + Duration::hours(1));
    dsar::deadlines::check(&deps).await.unwrap();
    clock.advance(Duration::days(1));
    dsar::deadlines::check(&deps).await.unwrap();
    let messages = received(&server).await;
    let overdue = of_type(&messages, "privacy_request.overdue");
    assert_eq!(overdue.len(), 1, "{messages:#?}");
    assert_eq!(overdue[0]["event_id"], format!("{id}:overdue:response"));
    assert_eq!(overdue[0]["data"]["deadline"], "response");
    assert_eq!(messages.len(), 3, "{messages:#?}");
    assert_eq!(
        contains_any(&serde_json::to_string(&messages).unwrap(), &ANN.needles()),
        None
    );
}

#[tokio::test]
async fn without_a_notification_webhook_notices_are_skipped_not_failed() {
    let Env { deps, .. } = env().await;
    let id = file_request(&deps, "export", &ANN, "gdpr").await;
    deliver(&deps, &id).await;
    let notices = detail(&deps, &id).await["notices"].clone();
    let statuses: Vec<(&str, &str)> = notices
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["type"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("privacy_request.received", "skipped"),
            ("privacy_request.completed", "skipped")
        ]
    );
    assert_eq!(audit_actions(&deps, "notice.skipped").await.len(), 2);
    assert!(audit_actions(&deps, "notice.failed").await.is_empty());
}

#[tokio::test]
async fn settings_keep_replace_or_remove_the_notification_webhook() {
    let Env { stack, deps, .. } = env().await;
    let server = receiver(204).await;
    assert_eq!(
        get_settings(&deps).await["notification_webhook"],
        Value::Null
    );
    configure(&deps, &server).await;
    let url = format!("{}{NOTICES}", server.uri());

    // Left out: kept, whatever else changes (the verification webhook too).
    let (status, out) = put_settings(
        &deps,
        json!({ "time_zone": "Europe/Paris", "verification_webhook": { "url": "https://hooks.example.com/v", "secret": "v".repeat(40) } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["notification_webhook"]["url"], url.as_str());
    assert_eq!(
        out["verification_webhook"]["url"],
        "https://hooks.example.com/v"
    );
    assert_eq!(
        get_settings(&deps).await["notification_webhook"]["url"],
        url.as_str()
    );

    // Sealed under its own record: the verification webhook's context cannot open it.
    let stored = deps
        .store
        .get::<NotificationWebhook>(&NotificationWebhook::key_of(&acme()))
        .await
        .unwrap()
        .unwrap();
    let sealer = stack.sealer();
    let opened = sealer
        .open(
            &NotificationWebhook::seal_context(&acme()),
            &stored.webhook.secret,
        )
        .await
        .unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&opened), SECRET);
    assert!(
        sealer
            .open(
                &SealContext::new(&acme(), Purpose::WebhookSecret, PrivacySettings::RECORD),
                &stored.webhook.secret,
            )
            .await
            .is_err()
    );
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(!table.contains(SECRET));

    // Refused values name their field and change nothing.
    for (body, field) in [
        (
            json!({ "notification_webhook": { "url": "http://169.254.169.254/x", "secret": SECRET } }),
            "notification_webhook.url",
        ),
        (
            json!({ "notification_webhook": { "url": "https://hooks.example.com/n", "secret": "short" } }),
            "notification_webhook.secret",
        ),
    ] {
        let (status, p) = put_settings(&deps, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
        assert_eq!(p["field"], field);
    }
    assert_eq!(
        get_settings(&deps).await["notification_webhook"]["url"],
        url.as_str()
    );

    // null: removed; the verification webhook stays.
    let (status, out) = put_settings(&deps, json!({ "notification_webhook": null })).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["notification_webhook"], Value::Null);
    assert_eq!(
        out["verification_webhook"]["url"],
        "https://hooks.example.com/v"
    );
    assert!(
        deps.store
            .get::<NotificationWebhook>(&NotificationWebhook::key_of(&acme()))
            .await
            .unwrap()
            .is_none()
    );
    let entries = audit_actions(&deps, "privacy_settings.updated").await;
    let flags: Vec<bool> = entries
        .iter()
        .map(|e| e.details["notification_webhook"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [true, true, false]);
}

#[tokio::test]
async fn the_account_purge_notice_is_sent_once_when_the_purge_is_done_and_leaves_nothing() {
    let Env { stack, deps, .. } = env().await;
    let server = receiver(204).await;
    configure(&deps, &server).await;
    let id = file_request(&deps, "export", &ANN, "gdpr").await;
    deliver(&deps, &id).await;
    assert_eq!(received(&server).await.len(), 2);

    let started = dsar::account::start(&deps, &acme(), "user:admin")
        .await
        .unwrap();
    // Repeated, as `DELETE /account` may be: still one notice.
    dsar::account::start(&deps, &acme(), "user:admin")
        .await
        .unwrap();
    assert_eq!(
        received(&server).await.len(),
        2,
        "nothing before the purge ends"
    );
    let done = dsar::account::purge(&deps, &acme(), Budget::Unlimited)
        .await
        .unwrap();
    assert_eq!(done, dsar::account::PurgeProgress::Done);
    // A stray record of the job after it is gone: nothing more.
    dsar::account::purge(&deps, &acme(), Budget::Unlimited)
        .await
        .unwrap();

    let messages = received(&server).await;
    let purged = of_type(&messages, "account.purged");
    assert_eq!(purged.len(), 1, "{messages:#?}");
    assert_eq!(
        purged[0]["event_id"],
        format!("account:{}:purged", started.job_id)
    );
    assert_eq!(purged[0]["data"]["job_id"], started.job_id.as_str());
    assert!(purged[0]["data"]["certificate_id"].is_string());
    assert!(purged[0].get("request_id").is_none());

    // Nothing of the tenant is left, the notice included; the certificate's entry is
    // the chain's head and the notice is audited before it.
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(!table.contains("acme"), "{table}");
    let head = deps
        .audit
        .head(&acme(), custody::audit::AuditClass::Evidence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.action, "account.purged");
    let sent = audit_actions(&deps, "notice.sent").await;
    assert!(
        sent.iter()
            .any(|e| e.target == format!("NOTICE#account:{}:purged", started.job_id))
    );
}

/// A stream record of a notice item (`sk` `NOTICE#<event id>`), as the template's
/// filter passes it for notices other functions wrote.
fn notice_record(event_id: &str) -> aws_lambda_events::event::dynamodb::Event {
    let sk = format!("{}{event_id}", custody::notice::KEY_PREFIX);
    let text = worker_event!("stream_request_pending")
        .replace("DSAR#01JH0000000000000000000000", &sk)
        .replace("\"privacy_request\"", "\"notice\"")
        .replace("\"MODIFY\"", "\"INSERT\"");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn notices_other_functions_write_are_delivered_from_the_stream_once_and_signed() {
    use custody::notice::{Notice, NoticeKind, NoticeStatus, event_ids};
    use custody::store::Entity as _;

    let Env { deps, .. } = env().await;
    let server = receiver(204).await;
    configure(&deps, &server).await;
    let now = deps.now();
    let data = |v: Value| v.as_object().cloned().unwrap_or_default();
    // As the export function and a refused refresh write them: the outbox only.
    let failed = Notice::new(
        &acme(),
        event_ids::export_failed("01JHRUN0000000000000000000"),
        NoticeKind::ExportRunFailed,
        None,
        now,
        data(json!({ "run_id": "01JHRUN0000000000000000000", "error_kind": "destination" })),
        now,
    );
    let reconsent = Notice::new(
        &acme(),
        event_ids::connection_reconsent("highlevel", 1_700_000_000_000),
        NoticeKind::ConnectionNeedsReconsent,
        None,
        now,
        data(json!({ "provider": "highlevel", "reason": "invalid_grant" })),
        now,
    );
    for notice in [&failed, &reconsent] {
        assert!(custody::notice::record(&deps.store, notice).await.unwrap());
    }
    // A notice of the dsar function's own, pending: delivered where it is written,
    // never from the stream (it would race its writer).
    let own = Notice::new(
        &acme(),
        event_ids::completed("01JH0000000000000000000000"),
        NoticeKind::Completed,
        Some("01JH0000000000000000000000"),
        now,
        serde_json::Map::new(),
        now,
    );
    assert!(custody::notice::record(&deps.store, &own).await.unwrap());

    // Each record twice (a duplicate stream record): one delivery each.
    for event_id in [&failed.event_id, &reconsent.event_id, &own.event_id] {
        for _ in 0..2 {
            let response =
                dsar::handle_stream(&deps, notice_record(event_id), Budget::Unlimited).await;
            assert!(response.batch_item_failures.is_empty(), "{response:?}");
        }
    }
    let messages = received(&server).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let kinds: Vec<&Value> = messages.iter().map(|m| &m["type"]).collect();
    assert_eq!(kinds, ["export.run_failed", "connection.needs_reconsent"]);
    assert_eq!(messages[0]["event_id"], failed.event_id.as_str());
    assert!(messages[0].get("request_id").is_none());
    for notice in [&failed, &reconsent] {
        let stored: Notice = deps.store.get(&notice.key()).await.unwrap().unwrap();
        assert_eq!(stored.status, NoticeStatus::Delivered);
        assert_eq!(stored.attempts, 1);
    }
    let own_now: Notice = deps.store.get(&own.key()).await.unwrap().unwrap();
    assert_eq!(own_now.attempts, 0, "not delivered from the stream");
    assert_eq!(audit_actions(&deps, "notice.sent").await.len(), 2);
}

#[tokio::test]
async fn the_daily_check_writes_the_reconsent_notice_of_a_marked_connection_once() {
    use custody::oauth::{Connection, ConnectionStatus, ProviderAccount};
    use custody::store::keys;

    let Env { deps, stack, .. } = env().await;
    let server = receiver(204).await;
    configure(&deps, &server).await;
    let connected_at = deps.now() - Duration::days(3);
    let context = SealContext::new(
        &acme(),
        Purpose::OauthAccessToken,
        keys::connection("highlevel"),
    );
    let sealed = stack
        .sealer()
        .seal(&context, &secrecy::SecretString::from("ya29.token-of-acme"))
        .await
        .unwrap();
    let connection = |provider: &str, status| Connection {
        tenant: acme(),
        provider: provider.into(),
        status,
        account: ProviderAccount {
            location_id: Some("loc-acme-reconsent".into()),
            ..ProviderAccount::default()
        },
        scopes: vec!["conversations.readonly".into()],
        access_token: sealed.clone(),
        refresh_token: None,
        access_expires_at: 0,
        connected_at,
        refreshed_at: None,
        version: 3,
        lease_owner: None,
        lease_until: None,
    };
    // The refresh that marked it could not write its notice; another is active.
    deps.store
        .put(&connection("highlevel", ConnectionStatus::NeedsReconsent))
        .await
        .unwrap();
    deps.store
        .put(&connection("google", ConnectionStatus::Active))
        .await
        .unwrap();
    dsar::deadlines::check(&deps).await.unwrap();
    dsar::deadlines::check(&deps).await.unwrap();
    let messages = received(&server).await;
    let reconsent = of_type(&messages, "connection.needs_reconsent");
    assert_eq!(reconsent.len(), 1, "{messages:?}");
    assert_eq!(
        reconsent[0]["event_id"],
        format!(
            "connection:highlevel:reconsent:{}",
            connected_at.timestamp_millis()
        )
    );
    assert_eq!(reconsent[0]["data"]["reconnect"], "/connect/highlevel");
    let text = reconsent[0].to_string();
    assert!(!text.contains("loc-acme-reconsent"), "{text}");
}

/// How many mails moto's SES accepted for delivery (SES v1 `GetSendStatistics`, read
/// from the emulator: what was really sent, not what the call answered). Counted over
/// the whole emulator: no other test sends mail.
async fn ses_delivery_attempts(endpoint: &str) -> u64 {
    let text = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("content-type", "application/x-www-form-urlencoded")
        // Names the service for the emulator's router; moto checks no signature.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ses/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body("Action=GetSendStatistics&Version=2010-12-01")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.split("<DeliveryAttempts>")
        .skip(1)
        .filter_map(|rest| rest.split('<').next()?.parse::<u64>().ok())
        .sum()
}

/// Keeps what was handed to SES (to check the mail's content), then sends it.
#[derive(Debug)]
struct Recording {
    inner: dsar::mail::SesMailer,
    sent: std::sync::Mutex<Vec<(String, String, String)>>,
}

impl custody::notice::Mailer for Recording {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        text: &'a str,
    ) -> custody::notice::MailFuture<'a> {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push((to.to_owned(), subject.to_owned(), text.to_owned()));
        }
        self.inner.send(to, subject, text)
    }
}

#[tokio::test]
async fn notices_are_also_emailed_through_ses_where_a_sender_and_an_address_are_set() {
    use aws_sdk_sesv2::Client as Ses;
    use std::sync::Arc;

    let Env { deps, stack, .. } = env().await;
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let sender = format!("notices-{run}@custody.test");
    let ses = Ses::new(&stack.sdk);
    // Not yet verified: SES refuses the sender.
    let mailer = Arc::new(Recording {
        inner: dsar::mail::SesMailer {
            client: ses.clone(),
            from: sender.clone(),
        },
        sent: std::sync::Mutex::new(Vec::new()),
    });
    let mut deps = deps.with_mailer(mailer.clone());
    // The routes read the setting (they run in dsar-api, which has no mailer).
    deps.dsar.notice_email_sender = Some(sender.clone());
    let sent_before = ses_delivery_attempts(&stack.endpoint).await;
    let server = receiver(204).await;
    configure(&deps, &server).await;

    // The address is checked: a 400 names the field.
    for bad in [
        "not-an-address",
        "Ops <ops@acme.test>",
        "ops@localhost",
        "a b@acme.test",
    ] {
        let (status, out) = put_settings(&deps, json!({ "notification_email": bad })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {out}");
        assert_eq!(out["field"], "notification_email", "{out}");
    }
    let to = format!("privacy-{run}@acme.test");
    let (status, out) = put_settings(&deps, json!({ "notification_email": to })).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["notification_email"], to.as_str());
    assert_eq!(out["notification_email_enabled"], true);
    // Left out: kept.
    let (_, out) = put_settings(&deps, json!({ "time_zone": "Europe/Berlin" })).await;
    assert_eq!(out["notification_email"], to.as_str());

    // The sender is not verified yet: the webhook gets the notice, the mail fails and
    // the notice says so, per channel.
    let first = file_request(&deps, "export", &ANN, "gdpr").await;
    assert_eq!(received(&server).await.len(), 1);
    let shown = detail(&deps, &first).await;
    let notice = &shown["notices"][0];
    assert_eq!(notice["status"], "failed", "{shown}");
    let channel = |name: &str| {
        notice["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(channel("webhook")["status"], "delivered");
    assert_eq!(channel("email")["status"], "failed");
    assert_eq!(ses_delivery_attempts(&stack.endpoint).await, sent_before);

    // Verified: the next notice goes both ways; the redelivery of the failed one sends
    // the mail only (the webhook had it).
    ses.create_email_identity()
        .email_identity(&sender)
        .send()
        .await
        .unwrap();
    let second = file_request(&deps, "delete", &BOB, "gdpr").await;
    assert_eq!(
        ses_delivery_attempts(&stack.endpoint).await,
        sent_before + 1
    );
    let (mail_to, subject, mail) = mailer.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!(mail_to, to);
    assert_eq!(subject, "custody notice: privacy_request.received");
    assert!(mail.contains(&format!("{second}:received")), "{mail}");
    assert!(mail.contains("privacy_request.received"), "{mail}");
    for needle in BOB.needles() {
        assert!(!mail.contains(&needle), "{needle} in {mail}");
    }
    let shown = detail(&deps, &second).await;
    assert_eq!(shown["notices"][0]["status"], "delivered", "{shown}");
    assert_eq!(shown["notices"][0]["channels"].as_array().unwrap().len(), 2);

    let failed = dsar::notices::notifier(&deps)
        .of_request(&acme(), &first)
        .await
        .unwrap();
    let webhook_before = received(&server).await.len();
    dsar::notices::notifier(&deps)
        .deliver(failed[0].clone())
        .await
        .unwrap();
    assert_eq!(
        received(&server).await.len(),
        webhook_before,
        "webhook not sent again"
    );
    assert_eq!(
        ses_delivery_attempts(&stack.endpoint).await,
        sent_before + 2
    );
    let shown = detail(&deps, &first).await;
    assert_eq!(shown["notices"][0]["status"], "delivered", "{shown}");

    // Removed: webhooks only again.
    let (_, out) = put_settings(&deps, json!({ "notification_email": null })).await;
    assert_eq!(out["notification_email"], Value::Null);
    file_request(&deps, "export", &CARA, "gdpr").await;
    assert_eq!(
        ses_delivery_attempts(&stack.endpoint).await,
        sent_before + 2
    );

    // The account purge's notice is mailed too, to the address as it was when the
    // deletion started: the purge deletes the settings before the notice goes out.
    put_settings(&deps, json!({ "notification_email": to })).await;
    let started = dsar::account::start(&deps, &acme(), "user:admin")
        .await
        .unwrap();
    let done = dsar::account::purge(&deps, &acme(), Budget::Unlimited)
        .await
        .unwrap();
    assert_eq!(done, dsar::account::PurgeProgress::Done);
    let (mail_to, subject, mail) = mailer.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!(mail_to, to);
    assert_eq!(subject, "custody notice: account.purged");
    assert!(
        mail.contains(&format!("account:{}:purged", started.job_id)),
        "{mail}"
    );
    assert_eq!(
        ses_delivery_attempts(&stack.endpoint).await,
        sent_before + 3
    );
    // The held address went with the notice: nothing of the tenant is left.
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(!table.contains(&to), "{table}");
}

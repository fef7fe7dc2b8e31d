//! Account deletion: tokens and schedule go at once; the tracked purge removes every
//! item and object version of the tenant (and nothing of another); the audit log
//! stays, still verifies, and ends with the signed certificate.

use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use custody::oauth::{AccountLink, Connection, ConnectionStatus, ProviderAccount};
use custody::schedule::ScheduleSpec;
use custody::seal::{Purpose, SealContext};
use custody::store::keys;
use dsar::Budget;
use http::StatusCode;
use secrecy::SecretString;
use serde_json::json;

use crate::*;

#[tokio::test]
async fn account_deletion_removes_tokens_at_once_and_purges_everything() {
    let Env { stack, deps, .. } = env().await;
    let tenant = acme();
    let globex = TenantId::parse("globex").unwrap();

    // The tenant's data in every store.
    let objects = seed_imports(&deps).await;
    // A second version of one file (the first is now noncurrent).
    deps.s3
        .put_object()
        .bucket(&deps.config.imports_bucket)
        .key(&objects[1])
        .body(ByteStream::from_static(b"{\"name\":\"v2\"}\n"))
        .send()
        .await
        .unwrap();
    put_consent(&deps, &ANN, "marketing_email", "granted").await;
    let access = file_request(&deps, "export", &ANN, "gdpr").await;
    deliver(&deps, &access).await;
    let settings = json!({ "time_zone": "UTC", "verification_webhook": { "url": "https://hooks.example.com/v", "secret": "x".repeat(40) } });
    assert_eq!(
        call(
            &deps,
            request(
                event!("put_privacy_settings"),
                "acme",
                "admin",
                Some(settings),
                None
            )
        )
        .await
        .0,
        StatusCode::OK
    );
    let sealer = stack.sealer();
    let context = SealContext::new(
        &tenant,
        Purpose::OauthAccessToken,
        keys::connection("highlevel"),
    );
    let token = SecretString::from("ya29.access-token-of-acme".to_owned());
    let connection = Connection {
        tenant: tenant.clone(),
        provider: "highlevel".into(),
        status: ConnectionStatus::Active,
        account: ProviderAccount {
            location_id: Some("loc-acme-1".into()),
            ..ProviderAccount::default()
        },
        scopes: vec!["conversations.readonly".into()],
        access_token: sealer.seal(&context, &token).await.unwrap(),
        refresh_token: None,
        access_expires_at: 0,
        connected_at: chrono::Utc::now(),
        refreshed_at: None,
        version: 1,
        lease_owner: None,
        lease_until: None,
    };
    deps.store.put(&connection).await.unwrap();
    deps.store
        .put(&AccountLink {
            pk: keys::highlevel_location("loc-acme-1"),
            tenant: tenant.clone(),
            provider: "highlevel".into(),
        })
        .await
        .unwrap();
    let schedules = stack.schedules();
    schedules
        .upsert(
            &tenant,
            &ScheduleSpec {
                expression: "rate(1 day)".into(),
                timezone: "UTC".into(),
                target_arn: "arn:aws:lambda:us-east-1:123456789012:function:export".into(),
                role_arn: "arn:aws:iam::123456789012:role/scheduler".into(),
                dead_letter_arn: "arn:aws:sqs:us-east-1:123456789012:custody-export-failures"
                    .into(),
            },
        )
        .await
        .unwrap();
    assert!(schedules.get(&tenant).await.unwrap().is_some());

    // Another tenant's data, which must survive.
    let (status, _) = call(&deps, request(event!("put_privacy_consent"), "globex", "admin", Some(json!({
        "subject": { "email": "someone@globex.example" }, "purpose": "marketing_email", "state": "granted",
        "source": "api", "policy_version": "1" })), None)).await;
    assert_eq!(status, StatusCode::OK);
    deps.s3
        .put_object()
        .bucket(&deps.config.imports_bucket)
        .key("imports/globex/01JH4444444444444444444444/upload.csv")
        .body(ByteStream::from_static(b"email\nsomeone@globex.example\n"))
        .send()
        .await
        .unwrap();

    // Confirmation must name the tenant.
    let (status, p) = call(
        &deps,
        request(
            event!("delete_account"),
            "acme",
            "admin",
            Some(json!({ "confirm": "globex" })),
            None,
        ),
    )
    .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("confirm"))
    );
    let (status, started) = call(
        &deps,
        request(
            event!("delete_account"),
            "acme",
            "admin",
            Some(json!({ "confirm": "acme" })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["connections_deleted"], 1);
    assert_eq!(started["schedule_removed"], true);
    let job_id = started["job_id"].as_str().unwrap().to_owned();

    // At once: no token to read, no schedule. A repeated call is the same job.
    assert!(
        deps.store
            .get::<Connection>(&custody::oauth::connection_key(&tenant, "highlevel"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !table_dump(&stack.clients.dynamodb, &stack.config.table)
            .await
            .contains("CONN#")
    );
    assert!(schedules.get(&tenant).await.unwrap().is_none());
    let (_, again) = call(
        &deps,
        request(
            event!("delete_account"),
            "acme",
            "admin",
            Some(json!({ "confirm": "acme" })),
            None,
        ),
    )
    .await;
    assert_eq!(again["job_id"], job_id.as_str());

    // The purge, interrupted after one page, then continued; duplicates are harmless.
    let record: aws_lambda_events::event::dynamodb::Event =
        serde_json::from_str(worker_event!("stream_account_deletion")).unwrap();
    assert!(
        dsar::handle_stream(&deps, record.clone(), Budget::Steps(1))
            .await
            .batch_item_failures
            .is_empty()
    );
    let job = deps
        .store
        .get::<custody::privacy::AccountDeletion>(&custody::privacy::AccountDeletion::key_of(
            &tenant,
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.steps_done, vec![custody::privacy::PurgeStep::Table]);
    for _ in 0..2 {
        assert!(
            dsar::handle_stream(&deps, record.clone(), Budget::Unlimited)
                .await
                .batch_item_failures
                .is_empty()
        );
    }

    // Nothing of acme in the table (globex's consent stays) ...
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(!table.contains("acme"), "{table}");
    assert!(table.contains("T#globex#S#"), "{table}");
    // ... nor in any version of any object (globex's file stays).
    for bucket in [
        &deps.config.imports_bucket,
        &deps.config.dsar_results_bucket,
    ] {
        for (key, _, body) in bucket_versions(&deps.s3, bucket).await {
            assert!(!key.contains("/acme/"), "{bucket}/{key} survived");
            assert_eq!(contains_any(&body, &ANN.needles()), None);
        }
    }
    assert_eq!(
        bucket_versions(&deps.s3, &deps.config.imports_bucket)
            .await
            .len(),
        1
    );

    // The audit log is kept, verifies, and ends with the certificate, exactly once.
    let verified = deps.audit.verify(&tenant).await.unwrap().unwrap();
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last.action, "account.purged");
    assert_eq!(
        verified
            .chain(custody::audit::AuditClass::Evidence)
            .map(|c| c.head_hash.as_str()),
        Some(last.hash.as_str())
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "account.purged")
            .count(),
        1
    );
    let signed = custody::certificate::SignedCertificate {
        document: last.details["certificate"].as_str().unwrap().to_owned(),
        signature: last.details["signature"].as_str().unwrap().to_owned(),
        key_id: last.details["key_id"].as_str().unwrap().to_owned(),
        algorithm: "ECDSA_SHA_256".into(),
    };
    let public = deps.signer.public_key().await.unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&public.der_base64)
        .unwrap();
    let certificate = custody::certificate::verify(&signed, &der).unwrap();
    assert_eq!(certificate.scope, custody::certificate::Scope::Account);
    assert_eq!(certificate.request_id, job_id);
    let count = |unit: &str| {
        certificate
            .erased
            .iter()
            .find(|e| e.unit == unit)
            .unwrap()
            .count
    };
    assert!(count("items") >= 10, "{certificate:?}");
    assert_eq!(count("object_versions"), 4);
    assert_eq!(contains_any(&format!("{entries:?}"), &ANN.needles()), None);
    // globex is untouched.
    assert!(deps.audit.verify(&globex).await.unwrap().is_ok());
}

/// Records what it is asked to revoke, and answers as a provider would (or fails).
struct RecordingRevoker {
    asked: std::sync::Mutex<Vec<Connection>>,
    fail: bool,
}

impl dsar::revoke::Revoker for RecordingRevoker {
    fn revoke<'a>(&'a self, connections: &'a [Connection]) -> dsar::revoke::RevokeFuture<'a> {
        Box::pin(async move {
            self.asked
                .lock()
                .unwrap()
                .extend(connections.iter().cloned());
            if self.fail {
                return Err("the oauth function could not be invoked".into());
            }
            Ok(connections
                .iter()
                .map(|c| custody::oauth::Revocation {
                    provider: c.provider.clone(),
                    outcome: custody::oauth::RevocationOutcome::Revoked,
                })
                .collect())
        })
    }
}

/// The deleted connections go to the function that may decrypt them (the oauth
/// function, in production) to be revoked at their providers; a failure there does not
/// stop the deletion, and what was revoked is on the record.
#[tokio::test]
async fn account_deletion_has_the_deleted_grants_revoked() {
    for fail in [false, true] {
        let Env { stack, deps, .. } = env().await;
        let revoker = std::sync::Arc::new(RecordingRevoker {
            asked: std::sync::Mutex::new(Vec::new()),
            fail,
        });
        let deps = deps.with_revoker(revoker.clone());
        let tenant = acme();
        let sealer = stack.sealer();
        let seal = |purpose| {
            let sealer = sealer.clone();
            let tenant = tenant.clone();
            async move {
                sealer
                    .seal(
                        &SealContext::new(&tenant, purpose, keys::connection("google")),
                        &SecretString::from(format!("{purpose:?}-of-acme")),
                    )
                    .await
                    .unwrap()
            }
        };
        let connection = Connection {
            tenant: tenant.clone(),
            provider: "google".into(),
            status: ConnectionStatus::Active,
            account: ProviderAccount {
                subject: Some("google-sub-1".into()),
                ..ProviderAccount::default()
            },
            scopes: vec!["openid".into()],
            access_token: seal(Purpose::OauthAccessToken).await,
            refresh_token: Some(seal(Purpose::OauthRefreshToken).await),
            access_expires_at: 0,
            connected_at: chrono::Utc::now(),
            refreshed_at: None,
            version: 1,
            lease_owner: None,
            lease_until: None,
        };
        deps.store.put(&connection).await.unwrap();

        let (status, started) = call(
            &deps,
            request(
                event!("delete_account"),
                "acme",
                "admin",
                Some(json!({ "confirm": "acme" })),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{started}");
        assert_eq!(started["connections_deleted"], 1);
        assert_eq!(started["grants_revoked"], if fail { 0 } else { 1 });
        // Asked once, with the deleted connection, its tokens still sealed.
        let asked = revoker.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].provider, "google");
        assert_eq!(asked[0].refresh_token, connection.refresh_token);
        let requested = deps
            .audit
            .entries(&tenant, None, None)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.action == "account.deletion_requested")
            .unwrap();
        assert_eq!(
            requested.details["grants_revoked"],
            if fail { 0 } else { 1 }
        );
    }
}

/// Once account deletion starts, writers refuse the tenant; a write that was already
/// under way when the fence went up (it checked just before) lands after the first
/// passes, and the final sweep, a grace later, removes it before the certificate.
/// OAuth `STATE#` items, kept outside the tenant's partition, go too.
#[tokio::test]
async fn a_write_racing_the_purge_leaves_nothing_behind_the_certificate() {
    let Env {
        stack,
        mut deps,
        clock,
    } = env().await;
    deps.dsar.purge_grace = custody::privacy::PURGE_GRACE;
    let tenant = acme();
    seed_imports(&deps).await;
    let (status, started) = call(
        &deps,
        request(
            event!("delete_account"),
            "acme",
            "admin",
            Some(json!({ "confirm": "acme" })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");

    // The fence: writers refuse the tenant now (409), readers do not.
    let consent = json!({ "subject": { "email": ANN.email }, "purpose": "marketing_email",
        "state": "granted", "source": "api", "policy_version": "1" });
    let (status, problem) = call(
        &deps,
        request(
            event!("put_privacy_consent"),
            "acme",
            "admin",
            Some(consent),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, _) = call(
        &deps,
        request(
            event!("post_privacy_export"),
            "acme",
            "admin",
            Some(json!({
            "subject": ANN.subject(), "regulation": "gdpr" })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The first passes run; the final sweep is not due yet, so no certificate.
    let soon = Budget::Until(std::time::Instant::now() + std::time::Duration::from_secs(1));
    let progress = dsar::account::purge(&deps, &tenant, soon).await.unwrap();
    assert_eq!(progress, dsar::account::PurgeProgress::Stopped);
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(!table.contains("T#acme#S#"), "the first pass ran: {table}");

    // A writer that checked the fence just before it went up writes now: an index
    // entry, an object, and an OAuth state of a connect started meanwhile.
    put_import_object(
        &deps,
        "01JH6666666666666666666666",
        "upload.csv",
        &format!("email\n{}\n", ANN.email),
        &[(&ANN, "email")],
    )
    .await;
    let state = custody::oauth::flow::OauthState {
        nonce: "racing-nonce".into(),
        tenant: tenant.clone(),
        provider: "google".into(),
        actor: "user:racer".into(),
        pkce_verifier: None,
        issuer: None,
        return_url: "https://app.example.com".into(),
        binding_hash: "0".repeat(64),
        created_at: chrono::Utc::now(),
        expires_at: (chrono::Utc::now() + chrono::Duration::minutes(10)).timestamp(),
    };
    deps.store.put(&state).await.unwrap();

    // The grace passes; the final sweep removes what the racing writer left.
    clock.advance(custody::privacy::PURGE_GRACE + chrono::Duration::seconds(1));
    let progress = dsar::account::purge(&deps, &tenant, Budget::Unlimited)
        .await
        .unwrap();
    assert_eq!(progress, dsar::account::PurgeProgress::Done);
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(
        !table.contains("acme"),
        "left behind the certificate: {table}"
    );
    assert!(!table.contains("racing-nonce"), "{table}");
    let versions = bucket_versions(&deps.s3, &deps.config.imports_bucket).await;
    assert!(
        versions.iter().all(|(key, _, _)| !key.contains("/acme/")),
        "{:?}",
        versions.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    let head = deps
        .audit
        .head(&tenant, custody::audit::AuditClass::Evidence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.action, "account.purged");
    // The racing writes count in the certificate: more items than the first pass.
    assert!(head.details["table_items"].as_u64().unwrap() > 0);
}

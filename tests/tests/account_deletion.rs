//! A tenant deletes its account while everything is in place: a HighLevel
//! connection, export settings with their schedule, a delivered import, consent and
//! a completed access request. `DELETE /account` removes the tokens and the schedule
//! at once; the purge (started by the job's stream record) removes every item and
//! every object version of the tenant; what the design keeps is exactly the audit
//! log, which still verifies and ends with the signed certificate of deletion.
//!
//! The API offers no route for the purge's progress (`openapi.yaml` has only
//! `DELETE /account`), so completion is read where the design records it: the
//! `account.purged` entry at the head of the tenant's audit chain, and the job item
//! gone from the table.

use std::time::Duration;

use custody::certificate::{Scope, SignedCertificate};
use custody::privacy::AccountDeletion;
use custody::schedule::ExportSchedules;
use custody::store::Store;
use custody_journeys::build_binaries;
use custody_journeys::world::{
    Api, audit_log, connect_highlevel, import_csv, object_versions, poll, public_key_der,
    scan_json, tenant, verify_certificate, wait_privacy_request, webdav_export_settings,
};
use custody_local::demo::{
    Environment, LOCATION, SUBJECT_CONTACT, SUBJECT_EMAIL, SUBJECT_NAME, SUBJECT_PHONE, TENANT,
    demo_csv,
};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_deletion_removes_tokens_at_once_then_everything_but_the_audit_log() {
    build_binaries();
    let env = Environment::start(&custody_local::harness::unique_stage())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(&env);
    let tenant = tenant();
    let config = &env.stack.provisioned.config;
    let schedules =
        ExportSchedules::new(env.stack.clients.scheduler.clone(), &config.schedule_group);

    // 1. The account in use: connection, export settings (schedule), an import,
    //    consent and an access request whose bundle is in the results bucket.
    connect_highlevel(&api).await;
    let tokens: Vec<String> = env
        .oauth
        .issued_access_tokens()
        .into_iter()
        .chain(env.oauth.issued_refresh_tokens())
        .collect();
    api.expect(
        Method::PUT,
        "/export/settings",
        Some(&webdav_export_settings(&env)),
        200,
    )
    .await;
    assert!(
        schedules.get(&tenant).await.expect("schedule").is_some(),
        "no export schedule"
    );
    let import = import_csv(&env, &api, &demo_csv()).await;
    let import_id = import["id"].as_str().expect("import id").to_owned();
    api.expect(
        Method::PUT,
        "/privacy/consent",
        Some(&json!({"subject": {"email": SUBJECT_EMAIL}, "purpose": "marketing_email", "state": "granted", "source": "web_form", "policy_version": "2025-01"})),
        200,
    )
    .await;
    let filed = api
        .expect(
            Method::POST,
            "/privacy/export",
            Some(&json!({"subject": {"email": SUBJECT_EMAIL, "phone": SUBJECT_PHONE, "contact_id": SUBJECT_CONTACT}, "regulation": "gdpr"})),
            202,
        )
        .await;
    let access = wait_privacy_request(&api, filed["id"].as_str().expect("request id")).await;
    assert!(!access["download"]["url"].is_null(), "no bundle: {access}");

    let import_prefix = format!("imports/{TENANT}/");
    let results_prefix = format!("dsar/{TENANT}/");
    let import_versions = object_versions(&env, &config.imports_bucket, &import_prefix)
        .await
        .len() as u64;
    let result_versions = object_versions(&env, &config.dsar_results_bucket, &results_prefix)
        .await
        .len() as u64;
    assert!(import_versions >= 1 && result_versions >= 1);
    let before = scan_json(&env, &config.table).await;
    assert!(
        before
            .iter()
            .any(|item| item["sk"] == "CONN#highlevel" && item["kind"] == "connection"),
        "no sealed connection before the deletion"
    );

    // 2. DELETE /account: the confirmation must name the tenant.
    let (status, problem) = api
        .call(
            Method::DELETE,
            "/account",
            Some(&json!({"confirm": "someone-else"})),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "confirm", "{problem}");
    let started = api
        .expect(
            Method::DELETE,
            "/account",
            Some(&json!({"confirm": TENANT})),
            202,
        )
        .await;
    assert_eq!(started["status"], "purging", "{started}");
    assert_eq!(started["connections_deleted"], 1, "{started}");
    assert_eq!(started["schedule_removed"], true, "{started}");
    let job_id = started["job_id"].as_str().expect("job id").to_owned();
    // The dsar function may not decrypt tokens: it had the oauth function (through
    // Lambda's Invoke) revoke the deleted grant. HighLevel has no revocation endpoint
    // (uninstalling the app ends a grant there), which is what the entry says.
    assert_eq!(started["grants_revoked"], 0, "{started}");
    let revoked: Vec<custody::audit::Entry> = audit_log(&env)
        .entries(&tenant, None, None)
        .await
        .expect("audit entries")
        .into_iter()
        .filter(|e| e.action == "connection.revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].actor, "system:oauth");
    assert_eq!(revoked[0].details["outcome"], "no_endpoint");

    // 3. At once: no token record, no account link, no issued token anywhere in the
    //    table; no schedule; no connection listed.
    let table = scan_json(&env, &config.table).await;
    let token_records: Vec<&Value> = table
        .iter()
        .filter(|item| {
            item["kind"] == "connection"
                || item["sk"]
                    .as_str()
                    .is_some_and(|sk| sk.starts_with("CONN#"))
                || item["pk"] == format!("LOC#{LOCATION}")
        })
        .collect();
    assert!(
        token_records.is_empty(),
        "token records left: {token_records:?}"
    );
    let dump = format!("{table:?}");
    for token in &tokens {
        assert!(!dump.contains(token.as_str()), "an issued token is stored");
    }
    assert!(
        schedules.get(&tenant).await.expect("schedule").is_none(),
        "the export schedule survived DELETE /account"
    );
    let listing = api.expect(Method::GET, "/connections", None, 200).await;
    assert_eq!(listing, json!({"connections": []}));

    // 4. The purge completes: `account.purged` heads the audit chain and the job,
    //    the tenant's last item, is gone.
    let log = audit_log(&env);
    let store = Store::new(
        env.stack.clients.dynamodb.clone(),
        &config.table,
        custody::clock::system(),
    );
    let purged = poll(
        "the purge to complete",
        Duration::from_secs(120),
        || async {
            let head = log
                .head(&tenant, custody::audit::AuditClass::Evidence)
                .await
                .expect("audit head")?;
            if head.action != "account.purged" {
                return None;
            }
            let job = store
                .get_item(&AccountDeletion::key_of(&tenant))
                .await
                .expect("read the job");
            job.is_none().then_some(head)
        },
    )
    .await;
    assert_eq!(purged.target, job_id);
    assert_eq!(purged.actor, "system:dsar");

    // 5. The certificate of deletion, from the audit entry, verifies offline with the
    //    published key and accounts for what was there.
    let detail = |name: &str| {
        purged.details[name]
            .as_str()
            .unwrap_or_else(|| panic!("account.purged has no {name}: {purged:?}"))
            .to_owned()
    };
    let signed = SignedCertificate {
        document: detail("certificate"),
        signature: detail("signature"),
        key_id: detail("key_id"),
        algorithm: "ECDSA_SHA_256".into(),
    };
    let certificate = verify_certificate(&signed, &public_key_der(&api).await);
    assert_eq!(certificate.scope, Scope::Account);
    assert_eq!(certificate.tenant, TENANT);
    assert_eq!(certificate.request_id, job_id);
    assert!(certificate.subject_pseudonyms.is_empty());
    let erased = |store: &str, unit: &str| {
        certificate
            .erased
            .iter()
            .find(|e| e.store == store && e.unit == unit)
            .unwrap_or_else(|| panic!("no {store}/{unit} in {certificate:?}"))
            .count
    };
    assert_eq!(erased("custody-table", "connections"), 1);
    assert!(erased("custody-table", "items") > 0, "{certificate:?}");
    assert_eq!(
        erased("imports-bucket", "object_versions"),
        import_versions,
        "{certificate:?}"
    );
    assert_eq!(
        erased("dsar-results-bucket", "object_versions"),
        result_versions,
        "{certificate:?}"
    );
    let entries = log
        .entries(&tenant, None, None)
        .await
        .expect("audit entries");
    // The certificate anchors the evidence chain, where the purge itself is logged.
    let evidence: Vec<_> = entries
        .iter()
        .filter(|e| e.class == custody::audit::AuditClass::Evidence)
        .collect();
    // After signing come only the purge-finished notice's outcome (`notice.*`, sent
    // once the certificate exists) and `account.purged`, the head.
    let signed_at = evidence
        .iter()
        .rposition(|e| e.action != "account.purged" && !e.action.starts_with("notice."))
        .expect("entries before the signing");
    let after: Vec<&str> = evidence[signed_at + 1..]
        .iter()
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(after.last(), Some(&"account.purged"), "{after:?}");
    assert!(after.len() <= 2, "{after:?}");
    let at_signing = evidence[signed_at];
    assert_eq!(
        certificate.audit_head_hash, at_signing.hash,
        "the certificate does not anchor the chain as it was when signed"
    );

    // 6. Afterwards, raw: the table holds nothing at all (every item of this stack
    //    was the tenant's), neither bucket holds a version or delete marker, and
    //    the schedule group is empty.
    let table = scan_json(&env, &config.table).await;
    assert!(table.is_empty(), "items left after the purge: {table:#?}");
    for bucket in [&config.imports_bucket, &config.dsar_results_bucket] {
        let left = object_versions(&env, bucket, "").await;
        assert!(left.is_empty(), "{bucket} still holds {left:?}");
    }
    let listed = env
        .stack
        .clients
        .scheduler
        .list_schedules()
        .group_name(&config.schedule_group)
        .send()
        .await
        .expect("list schedules");
    assert!(listed.schedules().is_empty(), "{:?}", listed.schedules());

    // What the design keeps: the audit log, and nothing else. It verifies, holds the
    // deletion request and exactly one `account.purged` (the certificate), and no
    // personal data or token (subjects appear by pseudonym only).
    let verified = log
        .verify(&tenant)
        .await
        .expect("read the audit chain")
        .unwrap_or_else(|e| panic!("the audit chain is broken: {e}"));
    assert_eq!(
        verified
            .chain(custody::audit::AuditClass::Evidence)
            .map(|c| c.head_hash.as_str()),
        Some(purged.hash.as_str())
    );
    let requested: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "account.deletion_requested")
        .collect();
    assert_eq!(requested.len(), 1, "{entries:#?}");
    assert_eq!(requested[0].details["job_id"], job_id.as_str());
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "account.purged")
            .count(),
        1
    );
    let audit_items = scan_json(&env, &config.audit_table).await;
    assert_eq!(
        audit_items.len(),
        entries.len(),
        "the audit table holds more"
    );
    assert!(audit_items.iter().all(|item| item["tenant"] == TENANT));
    let audit_dump = format!("{audit_items:?}");
    for needle in [
        SUBJECT_EMAIL,
        SUBJECT_PHONE,
        SUBJECT_CONTACT,
        SUBJECT_NAME,
        "person1@example.org",
    ] {
        assert!(!audit_dump.contains(needle), "the audit log holds {needle}");
    }
    for token in &tokens {
        assert!(
            !audit_dump.contains(token.as_str()),
            "the audit log holds a token"
        );
    }

    // 7. The API agrees: nothing to list or show.
    for (path, want) in [
        ("/connections", json!({"connections": []})),
        ("/privacy/requests", json!({"requests": []})),
    ] {
        assert_eq!(
            api.expect(Method::GET, path, None, 200).await,
            want,
            "{path}"
        );
    }
    let imports = api.expect(Method::GET, "/imports", None, 200).await;
    assert_eq!(imports["imports"], json!([]), "{imports}");
    let runs = api.expect(Method::GET, "/export/runs", None, 200).await;
    assert_eq!(runs["runs"], json!([]), "{runs}");
    for path in [
        format!("/imports/{import_id}"),
        "/export/settings".to_owned(),
    ] {
        let (status, body) = api.call(Method::GET, &path, None).await;
        assert_eq!(status, 404, "GET {path} after the purge: {body}");
    }
}

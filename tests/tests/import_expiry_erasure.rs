//! An import's life after delivery: one data subject in the file is erased (every
//! table and every object version checked raw; the other rows stay downloadable),
//! then the import's retention runs out and the expiry evidence is recorded once per
//! platform event, however often the event is delivered.
//!
//! moto does not run S3 lifecycle rules or DynamoDB TTL. This test plays the
//! platform's part: it deletes the object versions as the bucket's lifecycle rule
//! for `import-30d` would (current version → delete marker, then the noncurrent
//! version), deletes the `import_data` marker as TTL would, and after each delivers
//! exactly the notification AWS sends for it, with the real bucket, key, version
//! ids and removed item.

use custody::certificate::SignedCertificate;
use custody::store::{Key, Store};
use custody_journeys::build_binaries;
use custody_journeys::world::{
    Api, audit_log, import_csv, invoke, invoke_over_http, lifecycle_event, object_versions,
    public_key_der, scan, scan_json, stream_arn, tenant, ttl_removal_event, unique_id,
    verify_certificate, wait_privacy_request,
};
use custody_local::demo::{
    Environment, SUBJECT_CONTACT, SUBJECT_EMAIL, SUBJECT_NAME, SUBJECT_PHONE, TENANT, demo_csv,
};
use reqwest::Method;
use serde_json::{Value, json};

const OTHER_EMAIL: &str = "person1@example.org";

/// Everything stored: both tables and every version of every object of both buckets.
async fn everything_stored(env: &Environment) -> String {
    let config = &env.stack.provisioned.config;
    let mut dump = format!("{:?}", scan_json(env, &config.table).await);
    dump.push_str(&format!("{:?}", scan_json(env, &config.audit_table).await));
    for bucket in [&config.imports_bucket, &config.dsar_results_bucket] {
        for version in object_versions(env, bucket, "").await {
            dump.push_str(&version.key);
            dump.push_str(&String::from_utf8_lossy(&version.body));
        }
    }
    dump
}

/// The `import.expired` audit entries of the tenant with this `trigger` detail.
async fn expiry_entries(env: &Environment, trigger: &str) -> Vec<custody::audit::Entry> {
    audit_log(env)
        .entries(&tenant(), None, None)
        .await
        .expect("audit entries")
        .into_iter()
        .filter(|e| e.action == "import.expired" && e.details["trigger"] == trigger)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_then_expiry_of_an_import_leave_nothing_and_are_recorded_once() {
    build_binaries();
    let env = Environment::start(&custody_local::harness::unique_stage())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(&env);
    let config = &env.stack.provisioned.config;
    let bucket = config.imports_bucket.clone();

    // 1. A CSV import through the presigned upload; the S3 event processes it and
    //    the destination receives every valid row, signed.
    let csv = demo_csv();
    let import = import_csv(&env, &api, &csv).await;
    let id = import["id"].as_str().expect("import id").to_owned();
    let rows_valid = import["rows_valid"].as_u64().unwrap_or(0);
    assert_eq!(rows_valid, 49, "{import}");
    assert_eq!(import["rows_invalid"], 1, "{import}");
    assert!(env.destination.requests().iter().all(|r| r.signature_valid));
    assert_eq!(env.destination.rows().len() as u64, rows_valid);
    let key = format!("imports/{TENANT}/{id}/upload.csv");
    let prefix = format!("imports/{TENANT}/{id}/");

    // 2a. Erasure of a subject who is in the file.
    let filed = api
        .expect(
            Method::POST,
            "/privacy/delete",
            Some(&json!({
                "subject": {"email": SUBJECT_EMAIL, "phone": SUBJECT_PHONE, "contact_id": SUBJECT_CONTACT},
                "regulation": "gdpr",
            })),
            202,
        )
        .await;
    let request_id = filed["id"].as_str().expect("request id").to_owned();
    let done = wait_privacy_request(&api, &request_id).await;
    assert_eq!(done["certificate_available"], true, "{done}");

    // Raw: nothing of the subject in either table or any object version; the other
    // subjects' rows are still stored.
    let stored = everything_stored(&env).await;
    for needle in [SUBJECT_EMAIL, SUBJECT_PHONE, SUBJECT_CONTACT, SUBJECT_NAME] {
        assert!(
            !stored.contains(needle),
            "{needle} is still stored somewhere"
        );
    }
    assert!(
        stored.contains(OTHER_EMAIL),
        "another subject's row was lost"
    );
    let versions = object_versions(&env, &bucket, &prefix).await;
    assert_eq!(
        versions.len(),
        1,
        "the rewritten file should be the only version left: {versions:?}"
    );

    // The other rows download, through the API, without the erased one.
    let download = api
        .expect(Method::GET, &format!("/imports/{id}/download"), None, 200)
        .await;
    let url = download["objects"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no download link: {download}"));
    let bytes = api
        .http()
        .get(url)
        .send()
        .await
        .expect("presigned download")
        .text()
        .await
        .expect("download body");
    assert!(!bytes.contains(SUBJECT_EMAIL) && !bytes.contains(SUBJECT_NAME));
    for i in 1..=48 {
        assert!(
            bytes.contains(&format!("person{i}@example.org")),
            "person{i}'s row is no longer downloadable"
        );
    }
    assert_eq!(bytes.lines().count(), csv.lines().count() - 1);

    // The certificate of deletion verifies offline with the published key.
    let certificate = api
        .expect(
            Method::GET,
            &format!("/privacy/requests/{request_id}/certificate"),
            None,
            200,
        )
        .await;
    let text = |name: &str| certificate[name].as_str().unwrap_or_default().to_owned();
    let signed = SignedCertificate {
        document: text("document"),
        signature: text("signature"),
        key_id: text("key_id"),
        algorithm: text("algorithm"),
    };
    let document = verify_certificate(&signed, &public_key_der(&api).await);
    assert_eq!(document.request_id, request_id);

    // 2b. Retention. The object's current version reaches `ExpirationInDays: 30`: in
    //     a versioned bucket the lifecycle rule puts a delete marker on top. We play
    //     the platform: create the marker, then deliver the notification S3 sends,
    //     twice (S3 notifications are at-least-once), once through each API.
    let s3 = &env.stack.clients.s3;
    let data_version = versions[0].version_id.clone();
    let deleted = s3
        .delete_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("the platform's delete marker");
    let marker_version = match deleted.version_id() {
        Some(version) => version.to_owned(),
        None => {
            object_versions(&env, &bucket, &prefix)
                .await
                .into_iter()
                .find(|v| v.delete_marker)
                .expect("a delete marker")
                .version_id
        }
    };
    let marker_created = lifecycle_event(
        &bucket,
        &key,
        &marker_version,
        "LifecycleExpiration:DeleteMarkerCreated",
    );
    invoke(&env, "expiry", &marker_created).await;
    invoke_over_http(&env, "expiry", &marker_created).await;

    let shown = api
        .expect(Method::GET, &format!("/imports/{id}"), None, 200)
        .await;
    assert_eq!(shown["status"], "expired", "{shown}");
    assert!(!shown["data_deleted_at"].is_null(), "{shown}");
    let (status, refused) = api
        .call(Method::GET, &format!("/imports/{id}/download"), None)
        .await;
    assert_eq!(status, 410, "download of an expired import: {refused}");
    let entries = expiry_entries(&env, "LifecycleExpiration:DeleteMarkerCreated").await;
    assert_eq!(entries.len(), 1, "one event, delivered twice: {entries:#?}");
    let entry = &entries[0];
    assert_eq!(entry.actor, "system:expiry");
    assert_eq!(entry.target, format!("IMP#{id}"));
    assert_eq!(entry.details["object"], "upload.csv", "{entry:?}");
    assert_eq!(entry.details["retention_class"], "import-30d", "{entry:?}");
    // The subject index no longer points at the expired object.
    let refs: Vec<Value> = scan_json(&env, &config.table)
        .await
        .into_iter()
        .filter(|item| {
            item["sk"]
                .as_str()
                .is_some_and(|sk| sk.starts_with(&format!("REF#import_object#{id}/")))
        })
        .collect();
    assert!(refs.is_empty(), "index entries left: {refs:?}");

    // A day later `NoncurrentVersionExpiration: 1` removes the data version for good
    // (notification `LifecycleExpiration:Delete`, again delivered twice), and
    // `ExpiredObjectDeleteMarker` then removes the marker that is left alone.
    s3.delete_object()
        .bucket(&bucket)
        .key(&key)
        .version_id(&data_version)
        .send()
        .await
        .expect("the platform's noncurrent-version expiration");
    let version_deleted =
        lifecycle_event(&bucket, &key, &data_version, "LifecycleExpiration:Delete");
    invoke(&env, "expiry", &version_deleted).await;
    invoke_over_http(&env, "expiry", &version_deleted).await;
    s3.delete_object()
        .bucket(&bucket)
        .key(&key)
        .version_id(&marker_version)
        .send()
        .await
        .expect("the platform's expired-delete-marker cleanup");
    assert_eq!(
        expiry_entries(&env, "LifecycleExpiration:Delete")
            .await
            .len(),
        1
    );
    let left = object_versions(&env, &bucket, &prefix).await;
    assert!(left.is_empty(), "object versions left: {left:?}");

    // The `import_data` marker's TTL: DynamoDB deletes the item (we do, as the
    // platform) and the stream carries a REMOVE by the service principal, delivered
    // twice with the same event id.
    let store = Store::new(
        env.stack.clients.dynamodb.clone(),
        &config.table,
        custody::clock::system(),
    );
    let marker_key = Key::new(format!("T#{TENANT}"), format!("IMPDATA#{id}"));
    let old = scan(&env, &config.table)
        .await
        .into_iter()
        .find(|item| {
            item.get("pk").and_then(|v| v.as_s().ok()) == Some(&marker_key.pk)
                && item.get("sk").and_then(|v| v.as_s().ok()) == Some(&marker_key.sk)
        })
        .expect("the import_data marker is still in the table");
    store
        .delete(&marker_key)
        .await
        .expect("the platform's TTL deletion");
    let removal = ttl_removal_event(&stream_arn(&env, &config.table).await, &unique_id(), &old);
    invoke(&env, "expiry", &removal).await;
    invoke_over_http(&env, "expiry", &removal).await;
    let entries = expiry_entries(&env, "ttl").await;
    assert_eq!(
        entries.len(),
        1,
        "one TTL removal, delivered twice: {entries:#?}"
    );
    assert_eq!(entries[0].details["retention_class"], "import-30d");
    assert_eq!(entries[0].details["object_versions_removed"], 0);

    // Afterwards: the import is shown expired by id and left out of the listing, its
    // download is refused, nothing of it is stored, and the audit chain verifies
    // with exactly one `import.expired` entry per platform event.
    let shown = api
        .expect(Method::GET, &format!("/imports/{id}"), None, 200)
        .await;
    assert_eq!(shown["status"], "expired", "{shown}");
    let listing = api.expect(Method::GET, "/imports", None, 200).await;
    assert!(
        !listing.to_string().contains(id.as_str()),
        "an expired import is still listed: {listing}"
    );
    let (status, _) = api
        .call(Method::GET, &format!("/imports/{id}/download"), None)
        .await;
    assert_eq!(status, 410, "an expired import's download is gone");
    let stored = everything_stored(&env).await;
    assert!(
        !stored.contains(OTHER_EMAIL),
        "expired rows are still stored somewhere"
    );
    let table = scan_json(&env, &config.table).await;
    assert!(
        !table.iter().any(|item| item["sk"] == marker_key.sk),
        "the import_data marker is back"
    );
    let log = audit_log(&env);
    let entries = log.entries(&tenant(), None, None).await.expect("audit");
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "import.expired")
            .count(),
        3,
        "{entries:#?}"
    );
    log.verify(&tenant())
        .await
        .expect("read the audit chain")
        .unwrap_or_else(|e| panic!("the audit chain is broken: {e}"));
}

//! Erasure: every store is clean of the subject afterwards, the others' rows stay,
//! the certificate verifies offline (openssl and the p256 crate) and breaks with one
//! changed byte; a run interrupted between steps and duplicate events complete once.

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dsar::{Budget, Progress};
use http::StatusCode;
use serde_json::{Value, json};

use crate::*;

#[tokio::test]
async fn erasure_removes_the_subject_everywhere_and_is_certified() {
    let Env { stack, deps, .. } = env().await;
    let objects = seed_imports(&deps).await;
    put_consent(&deps, &ANN, "marketing_email", "granted").await;
    put_consent(&deps, &ANN, "marketing_email", "withdrawn").await;
    put_consent(&deps, &BOB, "marketing_email", "granted").await;
    // An earlier, completed access request: its bundle holds Ann's data.
    let earlier = file_request(&deps, "export", &ANN, "gdpr").await;
    deliver(&deps, &earlier).await;
    let results = bucket_versions(&deps.s3, &deps.config.dsar_results_bucket).await;
    assert!(
        contains_any(&results[0].2, &ANN.needles()).is_some(),
        "the access bundle holds Ann's data"
    );

    let id = file_request(&deps, "delete", &ANN, "gdpr").await;
    let tenant = acme();

    // A run that stops between steps (the Lambda died or ran out of time) ...
    let first = dsar::process::process_request(&deps, &tenant, &id, Budget::Steps(1))
        .await
        .unwrap();
    assert_eq!(first, Progress::Stopped);
    let second = dsar::process::process_request(&deps, &tenant, &id, Budget::Steps(1))
        .await
        .unwrap();
    assert_eq!(second, Progress::Stopped);
    // ... continues from the next step when the stream redelivers, and duplicates of
    // the record (the pending image and later in_processing ones) change nothing.
    deliver(&deps, &id).await;
    deliver(&deps, &id).await;
    let response = dsar::handle_stream(
        &deps,
        stream_event("acme", &id, "in_processing"),
        Budget::Unlimited,
    )
    .await;
    assert!(response.batch_item_failures.is_empty());

    // Raw scan of every table (audit included) and every version of every object.
    let needles = ANN.needles();
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert_eq!(
        contains_any(&table, &needles),
        None,
        "custody table still names Ann"
    );
    let audit = table_dump(&stack.clients.dynamodb, &stack.config.audit_table).await;
    assert_eq!(contains_any(&audit, &needles), None, "audit log names Ann");
    assert!(
        audit.contains(&ANN.pseudonym(&deps, "email")),
        "audit keeps the pseudonym"
    );
    for bucket in [
        &deps.config.imports_bucket,
        &deps.config.dsar_results_bucket,
    ] {
        for (key, version, body) in bucket_versions(&deps.s3, bucket).await {
            assert_eq!(
                contains_any(&body, &needles),
                None,
                "{bucket}/{key}@{version} names Ann"
            );
        }
    }
    // The others' rows are intact, and each file has exactly one version left.
    let csv = current_object(&deps, &objects[0]).await;
    assert!(csv.starts_with("name,email,city\n"), "{csv}");
    assert!(
        csv.contains(BOB.email) && csv.contains(CARA.email) && csv.contains(BOB.name),
        "{csv}"
    );
    assert!(current_object(&deps, &objects[1]).await.contains(BOB.phone));
    assert!(
        current_object(&deps, &objects[2])
            .await
            .contains(CARA.contact_id)
    );
    let versions = bucket_versions(&deps.s3, &deps.config.imports_bucket).await;
    assert_eq!(
        versions.len(),
        3,
        "{:?}",
        versions.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    // Bob's consent and his index entries stay.
    let (_, bob_consent) = call(
        &deps,
        request(
            event!("post_privacy_consent_lookup"),
            "acme",
            "admin",
            Some(json!({ "subject": { "email": BOB.email } })),
            None,
        ),
    )
    .await;
    assert_eq!(
        bob_consent["consent"].as_array().unwrap().len(),
        1,
        "{bob_consent}"
    );
    assert_eq!(
        deps.store
            .subject_items(&tenant, &BOB.pseudonym(&deps, "email"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        deps.store
            .subject_items(&tenant, &ANN.pseudonym(&deps, "email"))
            .await
            .unwrap()
            .is_empty()
    );

    // Exactly once: one completion, one erasure entry, one certificate; chain intact.
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    let target = format!("DSAR#{id}");
    let count = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.target == target)
            .count()
    };
    assert_eq!(count("privacy_request.completed"), 1);
    assert_eq!(count("privacy_request.erased"), 1);
    assert_eq!(count("privacy_request.files_erased"), 1);
    assert!(deps.audit.verify(&tenant).await.unwrap().is_ok());

    // The certificate.
    let (status, cert) = call(
        &deps,
        request(
            event!("get_privacy_request_certificate"),
            "acme",
            "viewer",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cert}");
    let doc = &cert["certificate"];
    assert_eq!(doc["request_id"], id.as_str());
    assert_eq!(doc["scope"], "subject");
    let erased = |store: &str, unit: &str| {
        doc["erased"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["store"] == store && e["unit"] == unit)
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(erased("imports-bucket", "rows"), 3);
    assert_eq!(erased("custody-table", "consent_records"), 1);
    assert!(erased("dsar-results-bucket", "object_versions_deleted") >= 1);
    let erased_entry = entries
        .iter()
        .find(|e| e.action == "privacy_request.erased")
        .unwrap();
    assert_eq!(doc["audit_head_hash"], erased_entry.hash.as_str());
    assert!(
        doc["audit_entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["hash"] == erased_entry.hash.as_str())
    );

    let (_, key) = call(
        &deps,
        request(
            event!("get_privacy_public_key"),
            "acme",
            "viewer",
            None,
            None,
        ),
    )
    .await;
    // The certificate names its key exactly as the published key does.
    assert_eq!(cert["key_id"], key["key_id"], "{cert} {key}");
    let document = cert["document"].as_str().unwrap();
    let signature = STANDARD
        .decode(cert["signature"].as_str().unwrap())
        .unwrap();
    let pem = key["pem"].as_str().unwrap();
    assert!(
        openssl_verifies(pem, document.as_bytes(), &signature),
        "openssl rejects the certificate"
    );
    let mut tampered = document.as_bytes().to_vec();
    let at = document.find("\"count\":3").unwrap() + "\"count\":".len();
    tampered[at] = b'4';
    assert!(
        !openssl_verifies(pem, &tampered, &signature),
        "openssl accepted a changed byte"
    );

    // The same with the p256 crate through the offline helper.
    let der = STANDARD
        .decode(key["der_base64"].as_str().unwrap())
        .unwrap();
    let signed: custody::certificate::SignedCertificate = serde_json::from_value(serde_json::json!({
        "document": document, "signature": cert["signature"], "key_id": cert["key_id"], "algorithm": cert["algorithm"],
    })).unwrap();
    assert!(custody::certificate::verify(&signed, &der).is_ok());
    let mut forged = signed.clone();
    forged.document = String::from_utf8(tampered).unwrap();
    assert!(matches!(
        custody::certificate::verify(&forged, &der),
        Err(custody::certificate::CertificateError::Invalid)
    ));

    // The request keeps pseudonyms only (its note is gone), and says what was erased.
    let (_, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "admin",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(detail["status"], "complete");
    assert_eq!(detail["erased"]["import_rows"], 3);
    let _: Value = detail;
}

/// `openssl dgst -sha256 -verify`: an implementation independent of ours.
fn openssl_verifies(pem: &str, document: &[u8], signature: &[u8]) -> bool {
    let dir = std::env::temp_dir().join(format!("dsar-cert-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.pem"), pem).unwrap();
    std::fs::write(dir.join("doc.json"), document).unwrap();
    std::fs::write(dir.join("sig.der"), signature).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("key.pem"))
        .arg("-signature")
        .arg(dir.join("sig.der"))
        .arg(dir.join("doc.json"))
        .output()
        .expect("openssl must be installed for this test");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.contains("Verified OK")
}

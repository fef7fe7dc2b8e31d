//! Access: the bundle holds every record of the subject and nothing of the others.

use http::StatusCode;
use serde_json::Value;

use crate::*;

#[tokio::test]
async fn access_bundle_has_all_of_the_subject_and_nothing_of_others() {
    let Env { deps, .. } = env().await;
    seed_imports(&deps).await;
    put_consent(&deps, &ANN, "marketing_email", "granted").await;
    put_consent(&deps, &ANN, "marketing_email", "withdrawn").await;
    put_consent(&deps, &ANN, "analytics", "granted").await;
    put_consent(&deps, &BOB, "marketing_email", "granted").await;
    // An earlier request about Ann (an erasure of Bob's too, to be sure it stays out).
    let earlier = file_request(&deps, "delete", &ANN, "ccpa").await;
    let _bobs = file_request(&deps, "export", &BOB, "gdpr").await;

    let id = file_request(&deps, "export", &ANN, "gdpr").await;
    deliver(&deps, &id).await;

    // A viewer reads the request's metadata, never the bundle (raw personal data).
    let (status, metadata) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{metadata}");
    assert_eq!(metadata["status"], "complete");
    assert!(metadata["download"].is_null(), "{metadata}");

    let (status, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "operator",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["status"], "complete");
    let url = detail["download"]["url"]
        .as_str()
        .expect("a download link")
        .to_owned();
    let bundle_text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let bundle: Value = serde_json::from_str(&bundle_text).unwrap();

    assert_eq!(bundle["schema"], "custody.dsar.bundle/v1");
    // Ann's row from each of the three files, found by email, phone and contact id.
    let imported = bundle["imported_records"].as_array().unwrap();
    assert_eq!(imported.len(), 3, "{bundle:#}");
    let formats: Vec<&str> = imported
        .iter()
        .map(|f| f["format"].as_str().unwrap())
        .collect();
    assert!(
        formats.contains(&"csv") && formats.contains(&"jsonl"),
        "{formats:?}"
    );
    for file in imported {
        let rows = file["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{file:#}");
        assert!(rows[0].to_string().contains(ANN.name), "{file:#}");
    }
    // Consent: both purposes, with the marketing history.
    let consent = bundle["consent"].as_array().unwrap();
    assert_eq!(consent.len(), 2, "{bundle:#}");
    let marketing = consent
        .iter()
        .find(|c| c["purpose"] == "marketing_email")
        .unwrap();
    assert_eq!(marketing["state"], "withdrawn");
    assert_eq!(marketing["history"].as_array().unwrap().len(), 2);
    // Earlier requests (and this one).
    let requests: Vec<&str> = bundle["privacy_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        requests.contains(&earlier.as_str()) && requests.contains(&id.as_str()),
        "{requests:?}"
    );
    assert_eq!(requests.len(), 2);
    // Nothing of Bob or Cara, although they share the files.
    for other in [BOB, CARA] {
        assert_eq!(
            contains_any(&bundle_text, &other.needles()),
            None,
            "bundle leaks another subject"
        );
    }

    // A later call gets a fresh link to the same bundle.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, again) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "operator",
            None,
            Some(&id),
        ),
    )
    .await;
    let second = again["download"]["url"].as_str().unwrap();
    assert_ne!(second, url);
    assert_eq!(
        reqwest::get(second).await.unwrap().text().await.unwrap(),
        bundle_text
    );

    // The bundle is SSE-KMS with the data key and carries the retention tag.
    let key = format!("dsar/acme/{id}/bundle.json");
    let head = deps
        .s3
        .head_object()
        .bucket(&deps.config.dsar_results_bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("aws:kms")
    );
    let tags = deps
        .s3
        .get_object_tagging()
        .bucket(&deps.config.dsar_results_bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert!(
        tags.tag_set()
            .iter()
            .any(|t| t.key() == "retention-class" && t.value() == "dsar-result")
    );

    // Audited by pseudonym.
    let entries = deps.audit.entries(&acme(), None, None).await.unwrap();
    let exported = entries
        .iter()
        .find(|e| e.action == "privacy_request.exported")
        .unwrap();
    assert!(exported.subject.as_deref().unwrap().starts_with("ps_"));
    // One per link issued to the operator; none for the viewer's read.
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "privacy_request.bundle_link_issued")
            .count(),
        2
    );
    assert_eq!(contains_any(&format!("{entries:?}"), &ANN.needles()), None);
}

#[tokio::test]
async fn unknown_route_and_missing_claims_are_refused() {
    let Env { deps, .. } = env().await;
    // The public key route needs no claims; the others do.
    let (status, key) = call(
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
    assert_eq!(status, StatusCode::OK, "{key}");
    assert!(
        key["pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    let mut ev: Value = serde_json::from_str(event!("get_privacy_requests")).unwrap();
    ev["requestContext"]["authorizer"] = Value::Null;
    let (status, _) = call(
        &deps,
        lambda_http::request::from_str(&ev.to_string()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Bodies: missing subject identifiers, bad email, unknown regulation.
    for (body, field) in [
        (
            serde_json::json!({"subject": {}, "regulation": "gdpr"}),
            "subject",
        ),
        (
            serde_json::json!({"subject": {"email": "not-an-email"}, "regulation": "gdpr"}),
            "subject.email",
        ),
        (
            serde_json::json!({"subject": {"email": "a@b.c"}, "regulation": "lgpd"}),
            "regulation",
        ),
    ] {
        let (status, problem) = call(
            &deps,
            request(
                event!("post_privacy_export"),
                "acme",
                "admin",
                Some(body),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
        assert!(!problem.to_string().contains("not-an-email"));
    }
}

//! Reads refuse what has expired before the platform deletes it: S3 lifecycle and
//! DynamoDB TTL act days late, but past its retention an import's data is not
//! downloadable (410 Gone), and no link outlives the retention.

use std::sync::Arc;

use chrono::{DateTime, Duration as Days, Utc};
use custody::clock::{Clock as _, ManualClock};
use http::StatusCode;

use super::*;

#[tokio::test]
async fn download_is_gone_past_retention_though_the_objects_remain() {
    let clock = ManualClock::at(Utc::now());
    let env = env_with_clock(Arc::new(clock.clone())).await;
    let created = import_file(&env, "csv", "store", csv_rows(5).as_bytes()).await;
    let id = created.import.id.clone();
    let expires = view(&env, &id)
        .await
        .data_expires_at
        .expect("stored data has an expiry");
    let expires_at = DateTime::<Utc>::from_timestamp(expires, 0).expect("timestamp");
    // The default class: a month from when S3 stored the object (a moment after the
    // manual clock's start).
    let month = expires_at - clock.now();
    assert!(
        month >= Days::days(30) && month <= Days::days(30) + Days::minutes(1),
        "{month}"
    );

    // Fresh: links for 5 minutes.
    let (status, body) = call(&env.deps, &for_import(DOWNLOAD, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A minute before the end, the link ends with the data, not 5 minutes later.
    clock.set(expires_at - Days::seconds(60));
    let (status, body) = call(&env.deps, &for_import(DOWNLOAD, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for link in body["objects"].as_array().expect("objects") {
        let until: DateTime<Utc> =
            serde_json::from_value(link["expires_at"].clone()).expect("expires_at");
        assert!(
            until <= expires_at,
            "a link outlives the data: {until} > {expires_at}"
        );
    }

    // Past it: gone, although lifecycle has not run and the objects are still there.
    clock.set(expires_at + Days::seconds(1));
    assert!(versions_under(&env, &format!("imports/acme/{id}/")).await > 0);
    let (status, body) = call(&env.deps, &for_import(DOWNLOAD, &id)).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    let problem = problem(&body);
    assert!(problem.type_uri.ends_with("gone"), "{problem:?}");
    assert!(problem.detail.contains("import-30d"), "{problem:?}");
    assert!(body["objects"].is_null(), "no link in a refusal: {body}");
}

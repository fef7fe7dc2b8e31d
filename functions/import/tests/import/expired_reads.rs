//! Reads refuse what has expired before the platform deletes it: S3 lifecycle and
//! DynamoDB TTL act days late, but past its retention an import's data is not
//! downloadable (410 Gone), no link outlives the retention, listings leave the import
//! out and by id it is shown `expired`.

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
    // manual clock's start; S3's Last-Modified has whole seconds, so up to a second
    // before it).
    let month = expires_at - clock.now();
    assert!(
        month >= Days::days(30) - Days::seconds(1) && month <= Days::days(30) + Days::minutes(1),
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

/// The ids `GET /imports` lists, every page.
async fn listed(env: &Env) -> Vec<String> {
    let (status, body) = call(&env.deps, &event(LIST, |_| {})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing: import::http::Listing = serde_json::from_value(body).expect("listing");
    assert_eq!(listing.next_cursor, None, "one page expected");
    listing.imports.into_iter().map(|i| i.id).collect()
}

#[tokio::test]
async fn listing_leaves_out_and_get_shows_expired_an_import_past_retention() {
    let clock = ManualClock::at(Utc::now());
    let env = env_with_clock(Arc::new(clock.clone())).await;
    let old = import_file(&env, "csv", "store", csv_rows(3).as_bytes())
        .await
        .import
        .id;
    let expires = view(&env, &old)
        .await
        .data_expires_at
        .expect("stored data has an expiry");
    let expires_at = DateTime::<Utc>::from_timestamp(expires, 0).expect("timestamp");

    // Inside its retention: listed, shown as delivered.
    clock.set(expires_at - Days::seconds(1));
    assert_eq!(listed(&env).await, vec![old.clone()]);
    assert_eq!(view(&env, &old).await.status, Status::Delivered);

    // Past it, with nothing deleted by the platform yet (no lifecycle run, no TTL,
    // no expiry event): not listed; by id it is shown expired, its download and a
    // retry are gone. An import created now is listed as usual.
    clock.set(expires_at + Days::seconds(1));
    assert!(versions_under(&env, &format!("imports/acme/{old}/")).await > 0);
    let raw = env
        .deps
        .imports
        .get(&custody::TenantId::parse("acme").expect("tenant"), &old)
        .await
        .expect("read")
        .expect("the item is still there");
    assert_eq!(raw.status, Status::Delivered, "nothing was written");
    let fresh = create(&env, file_body(&env, "csv", "store", 10))
        .await
        .import
        .id;
    assert_eq!(listed(&env).await, vec![fresh]);
    let shown = view(&env, &old).await;
    assert_eq!(shown.status, Status::Expired);
    assert_eq!(shown.data_expires_at, Some(expires));
    let (status, body) = call(&env.deps, &for_import(DOWNLOAD, &old)).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    let (status, body) = call(&env.deps, &for_import(RETRY, &old)).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    // Deleting it still reaches the data the platform has not deleted yet.
    let (status, body) = call(&env.deps, &for_import(DELETE, &old)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        versions_under(&env, &format!("imports/acme/{old}/")).await,
        0
    );
}

//! Imports past their retention: S3 lifecycle and DynamoDB TTL delete days late, so
//! an access bundle goes by the import's own expiry and leaves such an import out
//! while its object is still stored; erasure still reaches it (erasing more is safe)
//! and deletes it whole.

use chrono::{Duration as Days, Utc};
use custody::clock::Clock as _;
use custody::imports::Import;
use serde_json::{Value, json};

use crate::*;

/// Puts the import item the import function would have written for `id`, its data
/// expiring at `data_expires_at`.
async fn put_import_item(deps: &Deps, id: &str, data_expires_at: i64) {
    let now = deps.now();
    let import: Import = serde_json::from_value(json!({
        "tenant": "acme",
        "id": id,
        "format": "csv",
        "mode": "store",
        "retention_class": "import-30d",
        "status": "delivered",
        "destination_url": "https://hooks.example.com/custody",
        "destination_secret": "AAAA",
        "created_by": "user:test",
        "created_at": now,
        "updated_at": now,
        "data_expires_at": data_expires_at,
    }))
    .unwrap();
    deps.store.put(&import).await.unwrap();
}

/// Files an access request about Ann, runs it, and returns the bundle (read from the
/// results bucket) and its text.
async fn access_bundle(deps: &Deps) -> (Value, String) {
    let id = file_request(deps, "export", &ANN, "gdpr").await;
    deliver(deps, &id).await;
    let body = deps
        .s3
        .get_object()
        .bucket(&deps.config.dsar_results_bucket)
        .key(format!("dsar/acme/{id}/bundle.json"))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

fn bundled_imports(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["imported_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["import_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Every version and delete marker of exactly `key`.
async fn versions_of(deps: &Deps, key: &str) -> usize {
    let out = deps
        .s3
        .list_object_versions()
        .bucket(&deps.config.imports_bucket)
        .prefix(key)
        .send()
        .await
        .unwrap();
    out.versions()
        .iter()
        .filter(|v| v.key() == Some(key))
        .count()
        + out
            .delete_markers()
            .iter()
            .filter(|m| m.key() == Some(key))
            .count()
}

#[tokio::test]
async fn an_import_past_retention_is_left_out_of_the_bundle_and_still_erased() {
    let Env { deps, clock, .. } = env().await;
    let objects = seed_imports(&deps).await;
    let csv = objects[0].clone();
    // The CSV import's data expires in 10 days: earlier than its index entries (30
    // days), so what leaves it out below is the import's own retention, not the
    // index's TTL filter.
    let expires = clock.now() + Days::days(10);
    put_import_item(&deps, IMPORT_CSV, expires.timestamp()).await;
    // The JSON Lines import is of a longer class; the rows import has no item (its
    // data is judged by its index entries' expiry).
    put_import_item(
        &deps,
        IMPORT_JSONL,
        (Utc::now() + Days::days(90)).timestamp(),
    )
    .await;

    // Inside its retention: Ann's row of every import is in the bundle.
    clock.set(expires - Days::seconds(1));
    let (bundle, text) = access_bundle(&deps).await;
    assert_eq!(
        bundled_imports(&bundle),
        vec![IMPORT_CSV, IMPORT_JSONL, IMPORT_ROWS],
        "{bundle:#}"
    );
    assert!(
        text.contains("Leeds"),
        "Ann's CSV row (city Leeds): {bundle:#}"
    );

    // Past it, with the object still stored (no lifecycle run, nothing deleted):
    // the CSV import is left out, the others are still there.
    clock.set(expires + Days::seconds(1));
    assert!(versions_of(&deps, &csv).await > 0);
    let (bundle, text) = access_bundle(&deps).await;
    assert_eq!(
        bundled_imports(&bundle),
        vec![IMPORT_JSONL, IMPORT_ROWS],
        "{bundle:#}"
    );
    assert!(!text.contains("Leeds"), "the expired CSV row: {bundle:#}");
    assert!(
        current_object(&deps, &csv).await.contains(ANN.name),
        "nothing was deleted by the access request"
    );

    // Past the index entries' expiry too: nothing imported is disclosed, but an
    // erasure still reaches every object. The CSV, past its retention, goes whole
    // (a rewrite would restart its lifecycle clock); the others lose Ann's rows only.
    // The index entries are past their expiry, not yet deleted by TTL.
    clock.set(Utc::now() + Days::days(31));
    let (bundle, _) = access_bundle(&deps).await;
    assert_eq!(bundled_imports(&bundle), Vec::<String>::new(), "{bundle:#}");
    let erasure = file_request(&deps, "delete", &ANN, "gdpr").await;
    deliver(&deps, &erasure).await;
    assert_eq!(versions_of(&deps, &csv).await, 0, "the expired CSV is left");
    for key in &objects[1..] {
        let body = current_object(&deps, key).await;
        assert_eq!(contains_any(&body, &ANN.needles()), None, "{key}: {body}");
        assert!(!body.is_empty(), "{key}: the others' rows are gone too");
    }
    let detail = deps
        .store
        .get::<custody::privacy::PrivacyRequest>(&custody::privacy::PrivacyRequest::key_of(
            &acme(),
            &erasure,
        ))
        .await
        .unwrap()
        .expect("the erasure request");
    let erased = detail.erased.expect("erasure counts");
    assert_eq!(erased.import_rows, 3, "{erased:?}");
}

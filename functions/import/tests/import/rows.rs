//! Rows imports: JSON batches posted by the client, delivered on complete (store) or
//! at once (bypass).

use custody::imports::{Status, import_refs_prefix};
use import::http::RowsAccepted;
use serde_json::json;

use crate::*;

fn rows_body(env: &Env, mode: &str) -> Value {
    json!({
        "format": "rows",
        "mode": mode,
        "destination": {"url": env.dest.url(), "secret": SECRET},
        "required_columns": ["id"],
    })
}

async fn post_rows(env: &Env, id: &str, rows: &Value) -> (StatusCode, Value) {
    call(&env.deps, &with_body(for_import(ROWS, id), rows)).await
}

#[tokio::test]
async fn rows_import_reaches_the_destination_on_complete() {
    let env = env().await;
    let created = create(&env, rows_body(&env, "store")).await;
    let id = created.import.id.clone();
    assert!(created.upload.is_none());

    let batch1: Vec<Value> = (0..700)
        .map(|i| json!({"id": format!("row-{i}"), "email": format!("p{i}@example.com")}))
        .collect();
    let (status, body) = post_rows(&env, &id, &json!(batch1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let accepted: RowsAccepted = serde_json::from_value(body).unwrap();
    assert_eq!(
        (accepted.batch, accepted.accepted, accepted.rejected),
        (1, 700, 0)
    );

    let mut batch2: Vec<Value> = (700..1000)
        .map(|i| json!({"id": format!("row-{i}")}))
        .collect();
    batch2.insert(3, json!("not an object"));
    batch2.insert(5, json!({"id": "bad", "email": "nope"}));
    batch2.insert(7, json!({"email": "missing-id@example.com"}));
    let (status, body) = post_rows(&env, &id, &json!(batch2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let accepted: RowsAccepted = serde_json::from_value(body).unwrap();
    assert_eq!(
        (accepted.batch, accepted.accepted, accepted.rejected),
        (2, 300, 3)
    );
    let positions: Vec<(Option<u64>, u64)> =
        accepted.errors.iter().map(|e| (e.batch, e.line)).collect();
    assert_eq!(positions, vec![(Some(2), 4), (Some(2), 6), (Some(2), 8)]);
    assert!(!serde_json::to_string(&accepted).unwrap().contains("nope"));
    // Nothing is pushed before complete.
    assert!(env.dest.requests().is_empty());
    // Stored as one JSON Lines object per batch, indexed by subject.
    let prefix = format!("imports/acme/{id}/rows/");
    assert_eq!(versions_under(&env, &prefix).await, 2);
    assert_eq!(
        raw_refs(&env, "acme", &import_refs_prefix(&id)).await.len(),
        700
    );

    let (status, body) = call(&env.deps, &for_import(COMPLETE, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Delivered);
    assert_eq!(
        (view.rows_total, view.rows_valid, view.rows_invalid),
        (1003, 1000, 3)
    );
    assert_eq!(view.rows_delivered, 1000);
    let expected: Vec<String> = (0..1000).map(|i| format!("row-{i}")).collect();
    assert_eq!(delivered_ids(&env.dest), expected);
    assert!(env.dest.requests().iter().all(|r| r.signature_valid));

    // Complete again: nothing more is pushed; rows after complete are refused.
    let (status, _) = call(&env.deps, &for_import(COMPLETE, &id)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = post_rows(&env, &id, &json!([{"id": "late"}])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(delivered_ids(&env.dest).len(), 1000);
}

#[tokio::test]
async fn oversized_and_malformed_batches_are_refused_with_nothing_pushed() {
    let env = env().await;
    let created = create(&env, rows_body(&env, "store")).await;
    let id = created.import.id.clone();

    let too_many: Vec<Value> = (0..1001).map(|i| json!({"id": i})).collect();
    let (status, body) = post_rows(&env, &id, &json!(too_many)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let wide = "x".repeat(600 * 1024);
    let (status, _) = post_rows(
        &env,
        &id,
        &json!([{"id": 1, "a": wide}, {"id": 2, "b": wide}]),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, body) = post_rows(&env, &id, &json!({"id": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem(&body).field.as_deref(), Some("body"));

    let (status, _) = post_rows(&env, &id, &json!([])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A row over the row limit is rejected alone, by position.
    let (status, body) = post_rows(
        &env,
        &id,
        &json!([{"id": 1, "a": "y".repeat(70 * 1024)}, {"id": 2}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rejected"], 1);
    assert_eq!(body["errors"][0]["line"], 1);

    // Rows on a file import: conflict.
    let file = create(&env, file_body(&env, "csv", "store", 10)).await;
    let (status, _) = post_rows(&env, &file.import.id, &json!([{"id": 1}])).await;
    assert_eq!(status, StatusCode::CONFLICT);

    assert!(env.dest.requests().is_empty());
    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Created);
    assert_eq!(view.rows_valid, 1);
}

#[tokio::test]
async fn a_batch_posted_twice_with_one_idempotency_key_is_stored_once() {
    let env = env().await;
    let created = create(&env, rows_body(&env, "store")).await;
    let id = created.import.id.clone();
    let mut request = with_body(for_import(ROWS, &id), &json!([{"id": "a"}, {"id": "b"}]));
    request["headers"]["idempotency-key"] = json!("batch-0001");
    let (first_status, first) = call(&env.deps, &request).await;
    let (second_status, second) = call(&env.deps, &request).await;
    assert_eq!(
        (first_status, second_status),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(first, second);
    assert_eq!(
        versions_under(&env, &format!("imports/acme/{id}/rows/")).await,
        1
    );
    assert_eq!(view(&env, &id).await.rows_valid, 2);
    // The same key with other rows is a client bug.
    let mut reused = with_body(for_import(ROWS, &id), &json!([{"id": "c"}]));
    reused["headers"]["idempotency-key"] = json!("batch-0001");
    let (status, _) = call(&env.deps, &reused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn bypass_rows_are_pushed_at_once_and_never_stored() {
    let env = env().await;
    let created = create(&env, rows_body(&env, "bypass")).await;
    let id = created.import.id.clone();
    let (status, body) = post_rows(
        &env,
        &id,
        &json!([{"id": "a", "email": "a@example.com"}, {"id": "b"}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(delivered_ids(&env.dest), vec!["a", "b"]);

    // Destination down: the caller hears it (502) and sends the batch again later.
    env.dest.go_down(503);
    let (status, body) = post_rows(&env, &id, &json!([{"id": "c"}])).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        env.dest.requests().len(),
        1 + TEST_RETRY.max_attempts as usize
    );
    env.dest.recover();
    let (status, _) = post_rows(&env, &id, &json!([{"id": "c"}])).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = call(&env.deps, &for_import(COMPLETE, &id)).await;
    assert_eq!(status, StatusCode::OK);
    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Delivered);
    assert_eq!(view.rows_delivered, 3);
    assert_eq!(delivered_ids(&env.dest), vec!["a", "b", "c"]);
    assert_eq!(
        versions_under(&env, &format!("imports/acme/{id}/")).await,
        0
    );
    assert!(
        raw_refs(&env, "acme", &import_refs_prefix(&id))
            .await
            .is_empty()
    );
}

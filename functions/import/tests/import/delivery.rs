//! The destination failing: retries, `delivery_failed`, data kept and downloadable,
//! then a retry that delivers each row once.

use custody::imports::Status;
use import::http::Download;

use crate::*;

#[tokio::test]
async fn destination_down_then_retry_delivers_every_row_once() {
    let env = env().await;
    env.dest.go_down(503);
    let csv = csv_rows(1500);
    let created = import_file(&env, "csv", "store", csv.as_bytes()).await;
    let id = created.import.id.clone();

    let failed = view(&env, &id).await;
    assert_eq!(failed.status, Status::DeliveryFailed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("HTTP 503"),
        "{failed:?}"
    );
    assert_eq!(failed.rows_delivered, 0);
    // The first batch was tried the policy's number of times, then it stopped.
    assert_eq!(env.dest.requests().len(), TEST_RETRY.max_attempts as usize);
    assert!(env.dest.accepted().is_empty());

    // Nothing is lost: the file is still stored and downloadable as uploaded.
    let (status, body) = call(&env.deps, &for_import(DOWNLOAD, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let download: Download = serde_json::from_value(body).unwrap();
    assert_eq!(download.objects.len(), 1);
    assert_eq!(download.objects[0].name, "upload.csv");
    let fetched = reqwest::get(&download.objects[0].url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(fetched.as_ref(), csv.as_bytes());

    // Retry while still down: failed again, still nothing accepted.
    let (status, _) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(status_of(&env, &id).await, Status::DeliveryFailed);

    env.dest.recover();
    let (status, body) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "delivered");
    let expected: Vec<String> = (0..1500).map(|i| format!("row-{i}")).collect();
    assert_eq!(delivered_ids(&env.dest), expected);

    // Retrying a delivered import is refused; nothing more goes out.
    let (status, _) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(delivered_ids(&env.dest).len(), 1500);
    let entries = audit_entries(&env, "acme").await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"import.delivery_failed"));
    assert!(actions.contains(&"import.downloaded"));
    assert!(actions.contains(&"import.delivered"));
}

#[tokio::test]
async fn a_destination_dying_mid_import_resumes_after_the_acknowledged_batches() {
    let env = env().await;
    // Two of three batches get through, then the destination goes down.
    env.dest.go_down_after(2, 500);
    let csv = csv_rows(2500);
    let created = import_file(&env, "csv", "store", csv.as_bytes()).await;
    let id = created.import.id.clone();
    let failed = view(&env, &id).await;
    assert_eq!(failed.status, Status::DeliveryFailed);
    assert_eq!((failed.batches_delivered, failed.rows_delivered), (2, 2000));

    env.dest.recover();
    let (status, _) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::OK);
    let expected: Vec<String> = (0..2500).map(|i| format!("row-{i}")).collect();
    assert_eq!(
        delivered_ids(&env.dest),
        expected,
        "no batch twice, none lost"
    );
    let batches: Vec<u64> = env.dest.accepted().iter().map(|b| b.batch).collect();
    assert_eq!(batches, vec![0, 1, 2]);
    let ids: Vec<String> = env
        .dest
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.delivery_id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![format!("{id}.0"), format!("{id}.1"), format!("{id}.2")]
    );
}

#[tokio::test]
async fn a_receiver_that_refuses_the_batch_is_not_retried() {
    let env = env().await;
    // The destination verifies with another secret: 401, a refusal retrying cannot fix.
    let other =
        custody_sim::destination::DestinationSim::start("a-different-secret-0123456789abcdef")
            .await
            .unwrap();
    let csv = csv_rows(3);
    let mut body = file_body(&env, "csv", "store", csv.len());
    body["destination"]["url"] = json!(other.url());
    let created = create(&env, body).await;
    let version = upload(&created, csv.as_bytes()).await;
    let key = format!("imports/acme/{}/upload.csv", created.import.id);
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, &key, &version, csv.len()),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    let view = view(&env, &created.import.id).await;
    assert_eq!(view.status, Status::DeliveryFailed);
    assert!(view.error.unwrap().contains("401"));
    let requests = other.requests();
    assert_eq!(requests.len(), 1);
    assert!(!requests[0].signature_valid);
}

#[tokio::test]
async fn a_slow_destination_still_gets_everything_once() {
    let env = env().await;
    env.dest.set_delay(std::time::Duration::from_millis(200));
    let csv = csv_rows(1001);
    let created = import_file(&env, "csv", "store", csv.as_bytes()).await;
    assert_eq!(status_of(&env, &created.import.id).await, Status::Delivered);
    assert_eq!(delivered_ids(&env.dest).len(), 1001);
    assert_eq!(env.dest.requests().len(), 2);
}

/// A retry's end whose audit entry could not be written is written before the next
/// attempt, even though the first attempt's end has the same action and target: each
/// attempt's end is its own entry, and a redelivered event adds none.
#[tokio::test]
async fn a_retrys_lost_end_entry_is_written_before_the_next_attempt() {
    let env = env().await;
    env.dest.go_down(503);
    let csv = csv_rows(3);
    let created = create(&env, file_body(&env, "csv", "store", csv.len())).await;
    let version = upload(&created, csv.as_bytes()).await;
    let id = created.import.id.clone();
    let key = format!("imports/acme/{id}/upload.csv");
    let event = || s3_event(&env, &key, &version, csv.len());
    let minute = std::time::Duration::from_secs(60);
    import::process::handle_s3(&env.deps, event(), minute)
        .await
        .unwrap();
    assert_eq!(status_of(&env, &id).await, Status::DeliveryFailed);

    // The retry fails again, and its end entry cannot be written (the audit table is
    // unreachable for this one call).
    let mut broken = env.deps.clone();
    let mut config = env.stack.config.clone();
    config.audit_table = "no-such-audit-table".into();
    broken.audit = custody::audit::AuditLog::from_config(
        &env.stack.clients,
        &config,
        TestStack::system_clock(),
    );
    let (status, _) = call(&broken, &for_import(RETRY, &id)).await;
    assert!(status.is_server_error(), "{status}");
    assert_eq!(status_of(&env, &id).await, Status::DeliveryFailed);
    let ends = |entries: &[custody::audit::Entry]| -> Vec<(String, u64)> {
        entries
            .iter()
            .filter(|e| e.action.starts_with("import.deliver") && e.target.ends_with(&id))
            .map(|e| (e.action.clone(), e.details["attempt"].as_u64().unwrap()))
            .collect()
    };
    let failed = |attempt| ("import.delivery_failed".to_owned(), attempt);
    assert_eq!(ends(&audit_entries(&env, "acme").await), vec![failed(0)]);

    // The upload's event delivered again adds nothing.
    import::process::handle_s3(&env.deps, event(), minute)
        .await
        .unwrap();
    assert_eq!(ends(&audit_entries(&env, "acme").await), vec![failed(0)]);

    // The next retry writes the lost end first, then its own.
    env.dest.recover();
    let (status, body) = call(&env.deps, &for_import(RETRY, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ends(&audit_entries(&env, "acme").await),
        vec![failed(0), failed(1), ("import.delivered".to_owned(), 2)]
    );
}

/// Acknowledged batches are recorded together (`process::CHECKPOINT_BATCHES`), not one
/// write of the import item per batch; the counts still come out exact.
#[tokio::test]
async fn acknowledged_batches_are_recorded_together_and_counted_once() {
    let env = env().await;
    let tenant = custody::TenantId::parse("acme").unwrap();
    let revision = |id: String| {
        let deps = &env.deps;
        let tenant = tenant.clone();
        async move {
            let import = deps.imports.get(&tenant, &id).await.unwrap().unwrap();
            assert_eq!(import.status, Status::Delivered);
            (
                import.revision,
                import.batches_delivered,
                import.rows_delivered,
            )
        }
    };
    let small = import_file(&env, "csv", "store", csv_rows(1500).as_bytes()).await;
    let (small_revision, batches, rows) = revision(small.import.id.clone()).await;
    assert_eq!((batches, rows), (2, 1500));
    let before = env.dest.rows().len();
    let large = import_file(&env, "csv", "store", csv_rows(23_500).as_bytes()).await;
    let (large_revision, batches, rows) = revision(large.import.id.clone()).await;
    assert_eq!((batches, rows), (24, 23_500));
    // One write per batch would make 22 more revisions; one per ten batches (or per
    // second, on a slow machine) makes a handful.
    assert!(
        large_revision - small_revision <= 8,
        "{small_revision} -> {large_revision}"
    );
    let ids = delivered_ids(&env.dest);
    let expected: Vec<String> = (0..23_500).map(|i| format!("row-{i}")).collect();
    assert_eq!(ids[before..], expected[..], "every row once, in order");
}

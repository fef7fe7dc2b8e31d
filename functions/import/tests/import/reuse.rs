//! A presigned upload URL used again after its file was processed: the second
//! version is deleted and audited, never left unvalidated, unindexed and invisible to
//! data-subject requests; an erasure's rewrite of the file (tagged) stays.

use std::time::Duration;

use custody::imports::{REWRITE_TAG, Status};

use crate::*;

#[tokio::test]
async fn a_second_upload_to_a_processed_import_is_deleted_and_audited() {
    let env = env().await;
    let csv = "id,email\nrow-0,first@example.com\n";
    let created = create(&env, file_body(&env, "csv", "store", csv.len())).await;
    let id = created.import.id.clone();
    let key = format!("imports/acme/{id}/upload.csv");
    let first = upload(&created, csv.as_bytes()).await;
    let deliver = |version: String| {
        let event = s3_event(&env, &key, &version, csv.len());
        let deps = env.deps.clone();
        async move {
            import::process::handle_s3(&deps, event, Duration::from_secs(60))
                .await
                .unwrap()
        }
    };
    deliver(first.clone()).await;
    assert_eq!(status_of(&env, &id).await, Status::Delivered);

    // The same URL again, same size, other content.
    let other = "id,email\nrow-9,other@example.com\n";
    let second = upload(&created, other.as_bytes()).await;
    assert_ne!(second, first);
    // Delivered twice (Lambda's retry): deleted once, audited once.
    deliver(second.clone()).await;
    deliver(second.clone()).await;
    let versions: Vec<String> = versions_of_key(&env, &key)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(
        versions,
        vec![first.clone()],
        "only the processed version stays"
    );
    let rejected: Vec<_> = audit_entries(&env, "acme")
        .await
        .into_iter()
        .filter(|e| e.action == "import.upload_rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].details["version"], second.as_str());
    // Nothing of it went anywhere: the destination saw the first file's row only, and
    // the import still describes the first file.
    assert_eq!(delivered_ids(&env.dest), vec!["row-0"]);
    let view = view(&env, &id).await;
    assert_eq!((view.status, view.rows_total), (Status::Delivered, 1));

    // An erasure's rewrite of the file is a new version too, tagged: it stays.
    let (mark, value) = REWRITE_TAG;
    let rewrite = env
        .stack
        .clients
        .s3
        .put_object()
        .bucket(&env.stack.config.imports_bucket)
        .key(&key)
        .body(b"id,email\n".to_vec().into())
        .tagging(format!("retention-class=import-30d&{mark}={value}"))
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    deliver(rewrite.clone()).await;
    let versions: Vec<String> = versions_of_key(&env, &key)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert!(versions.contains(&rewrite), "{versions:?}");
    assert_eq!(
        audit_entries(&env, "acme")
            .await
            .iter()
            .filter(|e| e.action == "import.upload_rejected")
            .count(),
        1
    );
}

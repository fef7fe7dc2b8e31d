//! The account-deletion fence: once `DELETE /account` has started, the import
//! function writes nothing more for the tenant, on its routes and on S3 events.

use std::time::Duration;

use custody::imports::Status;
use custody::privacy::AccountDeletion;

use crate::*;

#[tokio::test]
async fn an_account_being_deleted_gets_no_new_import_and_no_processing() {
    let env = env().await;
    let csv = "id,email\nrow-0,fenced@example.com\n";
    // Created and uploaded before the deletion started...
    let created = create(&env, file_body(&env, "csv", "store", csv.len())).await;
    let version = upload(&created, csv.as_bytes()).await;
    let tenant = custody::TenantId::parse("acme").unwrap();
    let job = AccountDeletion::new(&tenant, "user:admin", chrono::Utc::now());
    env.deps.imports.store().create(&job).await.unwrap();

    // ... processed after: nothing happens (the purge removes the upload), and the
    // event is not a failure to retry.
    let key = format!("imports/acme/{}/upload.csv", created.import.id);
    import::process::handle_s3(
        &env.deps,
        s3_event(&env, &key, &version, csv.len()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&env, &created.import.id).await, Status::Created);
    assert!(env.dest.requests().is_empty());
    assert!(
        raw_refs(
            &env,
            "acme",
            &custody::imports::import_refs_prefix(&created.import.id)
        )
        .await
        .is_empty()
    );

    // New imports and row batches are refused with a 409 naming why.
    let body = file_body(&env, "csv", "store", 10);
    let (status, problem) = call(&env.deps, &with_body(event(CREATE, |_| {}), &body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("being deleted")
    );
    // Reading is still allowed.
    let (status, _) = call(&env.deps, &for_import(GET, &created.import.id)).await;
    assert_eq!(status, StatusCode::OK);
}

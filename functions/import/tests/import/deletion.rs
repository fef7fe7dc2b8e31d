//! Delete one, delete all: every object version and every index entry goes, the
//! metadata stays (marked deleted), and the audit log says so.

use custody::imports::{Status, all_refs_prefix, import_refs_prefix};

use crate::*;

#[tokio::test]
async fn delete_one_removes_every_version_and_index_entry() {
    let env = env().await;
    let csv = csv_rows(20);
    let created = import_file(&env, "csv", "store", csv.as_bytes()).await;
    let id = created.import.id.clone();
    let prefix = format!("imports/acme/{id}/");
    // A second version of the object (a re-upload), so "every version" is tested.
    upload(&created, csv.as_bytes()).await;
    assert_eq!(versions_under(&env, &prefix).await, 2);
    assert_eq!(
        raw_refs(&env, "acme", &import_refs_prefix(&id)).await.len(),
        40
    );

    // Viewers and operators may not delete.
    for role in ["viewer", "operator"] {
        let (status, _) = call(&env.deps, &with_role(for_import(DELETE, &id), role)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // Another tenant's admin sees nothing there.
    let (status, _) = call(&env.deps, &with_tenant(for_import(DELETE, &id), "globex")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(versions_under(&env, &prefix).await, 2);

    let (status, body) = call(&env.deps, &for_import(DELETE, &id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"]["object_versions"], 2);
    assert_eq!(body["deleted"]["index_entries"], 40);
    assert_eq!(versions_under(&env, &prefix).await, 0);
    assert!(
        raw_refs(&env, "acme", &import_refs_prefix(&id))
            .await
            .is_empty()
    );
    assert!(
        raw_refs(&env, "acme", &format!("IMPDATA#{id}"))
            .await
            .is_empty()
    );

    let view = view(&env, &id).await;
    assert_eq!(view.status, Status::Deleted);
    assert!(view.data_deleted_at.is_some());
    assert_eq!(view.rows_delivered, 20, "the log outlives the data");
    let (status, _) = call(&env.deps, &for_import(DOWNLOAD, &id)).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let entries = audit_entries(&env, "acme").await;
    let deleted = entries
        .iter()
        .find(|e| e.action == "import.deleted")
        .expect("an audit entry for the deletion");
    assert_eq!(deleted.target, format!("IMP#{id}"));
    assert!(deleted.actor.starts_with("user:"));
    assert_eq!(deleted.details["object_versions"], 2);

    // Deleting again is harmless.
    let (status, body) = call(&env.deps, &for_import(DELETE, &id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["deleted"]["object_versions"], 0);
}

#[tokio::test]
async fn delete_all_removes_every_import_of_the_tenant_and_nothing_else() {
    let env = env().await;
    let csv = csv_rows(5);
    let first = import_file(&env, "csv", "store", csv.as_bytes()).await;
    let failed_dest = {
        env.dest.go_down(503);
        let created = import_file(&env, "csv", "store", csv.as_bytes()).await;
        env.dest.recover();
        created
    };
    assert_eq!(
        status_of(&env, &failed_dest.import.id).await,
        Status::DeliveryFailed
    );
    // Another tenant's import must survive.
    let globex = {
        let body = with_tenant(
            with_body(
                event(CREATE, |_| {}),
                &file_body(&env, "csv", "store", csv.len()),
            ),
            "globex",
        );
        let (status, response) = call(&env.deps, &body).await;
        assert_eq!(status, StatusCode::CREATED);
        let created: import::http::Created = serde_json::from_value(response).unwrap();
        let version = upload(&created, csv.as_bytes()).await;
        let key = format!("imports/globex/{}/upload.csv", created.import.id);
        import::process::handle_s3(
            &env.deps,
            s3_event(&env, &key, &version, csv.len()),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        created
    };
    assert!(versions_under(&env, "imports/acme/").await >= 2);

    let (status, body) = call(&env.deps, &event(DELETE_ALL, |_| {})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["imports"], 2);
    assert_eq!(versions_under(&env, "imports/acme/").await, 0);
    assert!(raw_refs(&env, "acme", &all_refs_prefix()).await.is_empty());
    for id in [&first.import.id, &failed_dest.import.id] {
        assert_eq!(status_of(&env, id).await, Status::Deleted);
    }
    assert_eq!(
        versions_under(&env, &format!("imports/globex/{}/", globex.import.id)).await,
        1
    );
    assert_eq!(raw_refs(&env, "globex", &all_refs_prefix()).await.len(), 10);

    let entries = audit_entries(&env, "acme").await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "import.deleted")
            .count(),
        2
    );
    assert!(entries.iter().any(|e| e.action == "import.deleted_all"));

    // Operators may not delete everything.
    let (status, _) = call(&env.deps, &with_role(event(DELETE_ALL, |_| {}), "operator")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

//! Rows found by identifiers beyond top-level column names: aliased CSV headers,
//! nested JSON objects, and the fields an import declared (read from the stored
//! import, as the import indexed the rows by them).

use chrono::Utc;
use custody::imports::{Format, IdentifierFields, Import, Mode, Status};
use custody::retention::RetentionClass;
use custody::seal::Sealed;

use crate::*;

const IMPORT_ALIASED: &str = "01JH4444444444444444444444";
const IMPORT_NESTED: &str = "01JH5555555555555555555555";

async fn store_import(
    deps: &Deps,
    id: &str,
    format: Format,
    identifiers: Option<IdentifierFields>,
) {
    let now = Utc::now();
    let class = RetentionClass::Import30d;
    let import = Import {
        tenant: acme(),
        id: id.to_owned(),
        format,
        mode: Mode::Store,
        retention_class: class,
        status: Status::Delivered,
        destination_url: "https://hooks.example.com/x".into(),
        destination_secret: Sealed::from_bytes(vec![1, 2, 3]),
        required_columns: Vec::new(),
        default_country_code: Some("44".into()),
        identifier_fields: identifiers,
        declared_bytes: None,
        created_by: "user:test".into(),
        created_at: now,
        updated_at: now,
        completed_at: Some(now),
        bytes: 10,
        sha256: None,
        rows_total: 2,
        rows_valid: 2,
        rows_invalid: 0,
        rows_delivered: 2,
        batches_delivered: 1,
        row_batches: 0,
        errors: Vec::new(),
        error: None,
        data_expires_at: class.expires_at(now),
        data_deleted_at: None,
        processed_version: None,
        final_audited: true,
        retries: 0,
        revision: 0,
        purpose: None,
        rows_restricted: 0,
        rows_consent_withdrawn: 0,
    };
    deps.store.create(&import).await.unwrap();
}

/// Ann under an aliased CSV header (by email) and inside nested JSON (by a declared
/// pointer to her contact id, and by a national phone number in `contact.phone`).
async fn seed(deps: &Deps) -> (String, String) {
    store_import(deps, IMPORT_ALIASED, Format::Csv, None).await;
    let csv = format!(
        "Full Name,Customer Email\n{},{}\n{},{}\n",
        ANN.name, ANN.email, BOB.name, BOB.email
    );
    let aliased = put_import_object(
        deps,
        IMPORT_ALIASED,
        "upload.csv",
        &csv,
        &[(&ANN, "email"), (&BOB, "email")],
    )
    .await;
    store_import(
        deps,
        IMPORT_NESTED,
        Format::Jsonl,
        Some(IdentifierFields {
            contact_id: vec!["/crm/record/ref".into()],
            ..IdentifierFields::default()
        }),
    )
    .await;
    let jsonl = format!(
        "{}\n{}\n{}\n",
        json!({"crm": {"record": {"ref": ANN.contact_id}}, "who": ANN.name}),
        json!({"contact": {"phone": "07700 900101"}, "who": ANN.name}),
        json!({"crm": {"record": {"ref": BOB.contact_id}}, "who": BOB.name}),
    );
    let nested = put_import_object(
        deps,
        IMPORT_NESTED,
        "upload.jsonl",
        &jsonl,
        &[(&ANN, "contact_id"), (&ANN, "phone"), (&BOB, "contact_id")],
    )
    .await;
    (aliased, nested)
}

#[tokio::test]
async fn access_and_erasure_find_rows_by_aliased_nested_and_declared_identifiers() {
    let Env { deps, .. } = env().await;
    let (aliased, nested) = seed(&deps).await;

    // Access: Ann's three rows, nothing of Bob's.
    let id = file_request(&deps, "export", &ANN, "gdpr").await;
    deliver(&deps, &id).await;
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
    let url = detail["download"]["url"].as_str().unwrap().to_owned();
    let bundle_text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let bundle: Value = serde_json::from_str(&bundle_text).unwrap();
    let rows: usize = bundle["imported_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|object| object["rows"].as_array().unwrap().len())
        .sum();
    assert_eq!(rows, 3, "{bundle:#}");
    assert_eq!(contains_any(&bundle_text, &BOB.needles()), None);

    // Erasure: Ann's rows go from both files, Bob's stay byte for byte.
    let id = file_request(&deps, "delete", &ANN, "gdpr").await;
    deliver(&deps, &id).await;
    let csv = current_object(&deps, &aliased).await;
    assert_eq!(
        csv,
        format!("Full Name,Customer Email\n{},{}\n", BOB.name, BOB.email)
    );
    let jsonl = current_object(&deps, &nested).await;
    assert_eq!(
        jsonl,
        format!(
            "{}\n",
            json!({"crm": {"record": {"ref": BOB.contact_id}}, "who": BOB.name})
        )
    );
}

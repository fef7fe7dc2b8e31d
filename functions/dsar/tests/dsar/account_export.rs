//! The account holder's copy (`POST /account/export`): one tar archive of everything
//! custody holds for the tenant, built by a resumable job on the stream, served
//! behind a short presigned link; never a token, secret or sealed blob, never
//! another tenant's data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use base64::Engine as _;
use custody::imports::{Format, Import, Mode, Status};
use custody::oauth::{AccountLink, Connection, ConnectionStatus, ProviderAccount};
use custody::retention::RetentionClass;
use custody::seal::{Purpose, SealContext};
use custody::store::keys;
use dsar::Budget;
use dsar::account_export::{AccountExport, ExportStatus};
use http::StatusCode;
use secrecy::SecretString;
use serde_json::json;

use crate::*;

const TOKEN: &str = "ya29.plaintext-access-token-of-acme";
const WEBHOOK_SECRET: &str = "whsec-plaintext-webhook-secret-0123456789abcdef";
const DAV_PASSWORD: &str = "dav-plaintext-password-of-acme";
const IMPORT: &str = "01JH5555555555555555555555";

fn stream(id: &str, tenant: &str) -> aws_lambda_events::event::dynamodb::Event {
    let text = worker_event!("stream_account_export")
        .replace("01JH0000000000000000000000", id)
        .replace("T#acme", &format!("T#{tenant}"));
    serde_json::from_str(&text).unwrap()
}

async fn job(deps: &Deps, id: &str) -> AccountExport {
    deps.store
        .get::<AccountExport>(&AccountExport::key_of(&acme(), id))
        .await
        .unwrap()
        .unwrap()
}

/// An import as the import function records it, its secret really sealed.
async fn store_import(deps: &Deps, sealed: custody::seal::Sealed, bytes: u64) {
    let now = Utc::now();
    let class = RetentionClass::Import30d;
    let import = Import {
        tenant: acme(),
        id: IMPORT.to_owned(),
        format: Format::Csv,
        mode: Mode::Store,
        retention_class: class,
        status: Status::Delivered,
        destination_url: "https://hooks.example.com/x".into(),
        destination_secret: sealed,
        required_columns: Vec::new(),
        default_country_code: Some("44".into()),
        identifier_fields: None,
        declared_bytes: None,
        created_by: "user:test".into(),
        created_at: now,
        updated_at: now,
        completed_at: Some(now),
        bytes,
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

/// A CSV longer than one upload part, so the archive takes several.
fn big_csv() -> Vec<u8> {
    let mut csv = format!("name,email,city\n{},{},Leeds\n", ANN.name, ANN.email).into_bytes();
    let mut i = 0u64;
    while csv.len() < 11 * 1024 * 1024 {
        i += 1;
        csv.extend_from_slice(
            format!("Person {i},person{i}@example.com,\"Town, {}\"\n", i % 977).as_bytes(),
        );
    }
    csv
}

/// Runs the job's stream records until it is finished: one unit of work per
/// invocation (every save is the next record), so every resumption point is crossed.
async fn run_to_end(deps: &Deps, id: &str) -> AccountExport {
    for _ in 0..200 {
        let current = job(deps, id).await;
        if !matches!(
            current.status,
            ExportStatus::Pending | ExportStatus::Running
        ) {
            return current;
        }
        let response = dsar::handle_stream(deps, stream(id, "acme"), Budget::Steps(1)).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
    }
    panic!("the export never finished");
}

fn unpack(bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("custody-export-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("archive.tar");
    std::fs::write(&archive, bytes).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The system's GNU tar: a user's tool opens it.
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "tar -xf failed");
    out
}

fn json_file(dir: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_account_holders_copy_holds_everything_but_secrets_and_others() {
    let Env { stack, deps, .. } = env().await;
    let tenant = acme();
    let sealer = stack.sealer();

    // A connection with a sealed token, and its account link.
    let context = SealContext::new(
        &tenant,
        Purpose::OauthAccessToken,
        keys::connection("highlevel"),
    );
    let access_token = sealer
        .seal(&context, &SecretString::from(TOKEN.to_owned()))
        .await
        .unwrap();
    let connection = Connection {
        tenant: tenant.clone(),
        provider: "highlevel".into(),
        status: ConnectionStatus::Active,
        account: ProviderAccount {
            location_id: Some("loc-acme-1".into()),
            ..ProviderAccount::default()
        },
        scopes: vec!["conversations.readonly".into()],
        access_token: access_token.clone(),
        refresh_token: None,
        access_expires_at: 0,
        connected_at: Utc::now(),
        refreshed_at: None,
        version: 1,
        lease_owner: None,
        lease_until: None,
    };
    deps.store.put(&connection).await.unwrap();
    deps.store
        .put(&AccountLink {
            pk: keys::highlevel_location("loc-acme-1"),
            tenant: tenant.clone(),
            provider: "highlevel".into(),
        })
        .await
        .unwrap();

    // Export settings (the export function's item) with a sealed WebDAV password,
    // and an export run.
    let password = sealer
        .seal(
            &SealContext::new(
                &tenant,
                Purpose::DestinationPassword,
                keys::export_settings(),
            ),
            &SecretString::from(DAV_PASSWORD.to_owned()),
        )
        .await
        .unwrap();
    let sealed_password = base64::engine::general_purpose::STANDARD.encode(password.as_bytes());
    let now = Utc::now();
    let raw = |pairs: Vec<(&str, AttributeValue)>| -> HashMap<String, AttributeValue> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let s = |v: &str| AttributeValue::S(v.to_owned());
    for item in [
        raw(vec![
            ("pk", s("T#acme")),
            ("sk", s(&keys::export_settings())),
            ("kind", s("export_settings")),
            ("tenant", s("acme")),
            ("channels", AttributeValue::L(vec![s("SMS")])),
            (
                "destination",
                AttributeValue::M(raw(vec![
                    ("type", s("webdav")),
                    ("url", s("https://dav.example.com/acme")),
                    ("username", s("acme-dav")),
                    ("password", s(&sealed_password)),
                ])),
            ),
            ("updated_at", s(&now.to_rfc3339())),
        ]),
        raw(vec![
            ("pk", s("T#acme")),
            ("sk", s(&keys::export_run("01JH6666666666666666666666"))),
            ("kind", s("export_run")),
            ("tenant", s("acme")),
            ("status", s("completed")),
            ("messages", AttributeValue::N("42".into())),
            (
                "expires_at",
                AttributeValue::N(
                    RetentionClass::ExportLog
                        .expires_at(now)
                        .unwrap()
                        .to_string(),
                ),
            ),
        ]),
    ] {
        deps.store
            .client()
            .put_item()
            .table_name(deps.store.table())
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    // Privacy settings with a (sealed) verification webhook secret.
    let settings = json!({ "time_zone": "UTC", "verification_webhook": { "url": "https://hooks.example.com/v", "secret": WEBHOOK_SECRET } });
    let (status, out) = call(
        &deps,
        request(
            event!("put_privacy_settings"),
            "acme",
            "admin",
            Some(settings),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");

    // An import with its CSV, a privacy request (answered), consent.
    let import_secret = sealer
        .seal(
            &SealContext::new(&tenant, Purpose::WebhookSecret, keys::import(IMPORT)),
            &SecretString::from("import-webhook-secret-plaintext".to_owned()),
        )
        .await
        .unwrap();
    let csv = big_csv();
    store_import(&deps, import_secret.clone(), csv.len() as u64).await;
    deps.s3
        .put_object()
        .bucket(&deps.config.imports_bucket)
        .key(format!("imports/acme/{IMPORT}/upload.csv"))
        .body(ByteStream::from(csv.clone()))
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(&deps.config.data_key_id)
        .tagging("retention-class=import-30d")
        .send()
        .await
        .unwrap();
    put_consent(&deps, &ANN, "marketing_email", "granted").await;
    let request_id = file_request(&deps, "export", &ANN, "gdpr").await;
    deliver(&deps, &request_id).await;

    // Another tenant's data, which must stay out.
    let (status, _) = call(&deps, request(event!("put_privacy_consent"), "globex", "admin", Some(json!({
        "subject": { "email": "someone@globex.example" }, "purpose": "globex_purpose", "state": "granted",
        "source": "api", "policy_version": "1" })), None)).await;
    assert_eq!(status, StatusCode::OK);
    deps.s3
        .put_object()
        .bucket(&deps.config.imports_bucket)
        .key("imports/globex/01JH4444444444444444444444/upload.csv")
        .body(ByteStream::from_static(b"email\nsomeone@globex.example\n"))
        .send()
        .await
        .unwrap();

    // Only an admin starts it; a second call while it runs is the same job.
    let (status, _) = call(
        &deps,
        request(
            event!("post_account_export"),
            "acme",
            "operator",
            None,
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, started) = call(
        &deps,
        request(event!("post_account_export"), "acme", "admin", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["status"], "pending");
    let id = started["job_id"].as_str().unwrap().to_owned();
    let (status, again) = call(
        &deps,
        request(event!("post_account_export"), "acme", "admin", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["job_id"], id.as_str());

    // Not ready yet: no link.
    let (status, pending) = call(
        &deps,
        request(
            event!("get_account_export"),
            "acme",
            "admin",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    assert!(pending["download"].is_null());

    // Built one unit per invocation, then the records delivered again change nothing.
    let done = run_to_end(&deps, &id).await;
    assert_eq!(done.status, ExportStatus::Ready, "{done:?}");
    // 8 MiB parts: the second starts inside the import file (a ranged read).
    assert!(done.parts.len() >= 2, "{} parts", done.parts.len());
    assert!(done.upload_id.is_none());
    for _ in 0..2 {
        let response = dsar::handle_stream(&deps, stream(&id, "acme"), Budget::Unlimited).await;
        assert!(response.batch_item_failures.is_empty());
    }
    assert_eq!(job(&deps, &id).await.version, done.version);
    let prefix = format!("dsar/acme/account-exports/{id}/");
    let listed = deps
        .s3
        .list_objects_v2()
        .bucket(&deps.config.dsar_results_bucket)
        .prefix("dsar/acme/account-exports/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    // One archive; the staging objects are gone.
    assert_eq!(keys, vec![format!("{prefix}archive.tar").as_str()]);
    let uploads = deps
        .s3
        .list_multipart_uploads()
        .bucket(&deps.config.dsar_results_bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no upload left open");
    let tags = deps
        .s3
        .get_object_tagging()
        .bucket(&deps.config.dsar_results_bucket)
        .key(format!("{prefix}archive.tar"))
        .send()
        .await
        .unwrap();
    assert!(
        tags.tag_set()
            .iter()
            .any(|t| t.key() == "retention-class" && t.value() == "dsar-result")
    );

    // Another tenant does not see it; a viewer may not fetch it.
    let (status, _) = call(
        &deps,
        request(
            event!("get_account_export"),
            "globex",
            "admin",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &deps,
        request(
            event!("get_account_export"),
            "acme",
            "viewer",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, ready) = call(
        &deps,
        request(
            event!("get_account_export"),
            "acme",
            "admin",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ready");
    let url = ready["download"]["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Expires=300"), "{url}");
    let archive = reqwest::get(url)
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert_eq!(
        archive.len() as u64,
        ready["download"]["bytes"].as_u64().unwrap()
    );
    assert_eq!(archive.len() % 512, 0);

    // Nothing secret anywhere in the bytes: plaintexts, sealed blobs (as stored, and
    // their raw ciphertexts), nor another tenant's data.
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("token".into(), TOKEN.into()),
        ("webhook secret".into(), WEBHOOK_SECRET.into()),
        ("dav password".into(), DAV_PASSWORD.into()),
        (
            "import secret".into(),
            b"import-webhook-secret-plaintext".to_vec(),
        ),
    ];
    for (name, sealed) in [
        ("sealed token", access_token.as_bytes().to_vec()),
        ("sealed password", password.as_bytes().to_vec()),
        ("sealed import secret", import_secret.as_bytes().to_vec()),
    ] {
        secrets.push((format!("{name} (base64)"), b64(&sealed).into_bytes()));
        secrets.push((format!("{name} (raw)"), sealed));
    }
    // Every sealed or secret attribute the table holds (the webhook secret's too).
    let blobs = secret_attributes(&deps).await;
    assert!(blobs.contains(&b64(access_token.as_bytes())), "{blobs:?}");
    for blob in blobs {
        secrets.push(("a sealed attribute".into(), blob.into_bytes()));
    }
    for (name, needle) in &secrets {
        assert!(!find(&archive, needle), "the archive holds the {name}");
    }
    for needle in ["globex", "someone@globex.example"] {
        assert!(
            !find(&archive, needle.as_bytes()),
            "the archive holds another tenant's {needle}"
        );
    }

    // Unpacked by the system's tar: every section.
    let dir = unpack(&archive);
    let manifest = json_file(&dir, "manifest.json");
    assert_eq!(manifest["schema"], "custody.account.export/v1");
    assert_eq!(manifest["tenant"], "acme");
    assert_eq!(manifest["job_id"], id.as_str());
    assert!(manifest["generated_at"].is_string());
    let included = &manifest["item_types_included"];
    for kind in [
        "connection",
        "account_link",
        "export_settings",
        "export_run",
        "privacy_settings",
        "import",
        "privacy_request",
        "consent",
        "subject_ref",
    ] {
        assert!(
            included[kind].as_u64().unwrap_or(0) >= 1,
            "{kind} not included: {included}"
        );
    }
    assert!(manifest["item_types_excluded"].is_object());
    assert_eq!(manifest["import_files"]["count"], 1);

    let connections = json_file(&dir, "connections.json");
    let connection = connections
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "connection")
        .unwrap();
    assert_eq!(connection["provider"], "highlevel");
    assert_eq!(connection["account"]["location_id"], "loc-acme-1");
    assert!(connection.get("access_token").is_none());
    assert!(
        connections
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "account_link" && c["link"] == "LOC#loc-acme-1")
    );

    let settings = json_file(&dir, "settings.json");
    let export_settings = settings
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "export_settings")
        .unwrap();
    assert_eq!(export_settings["destination"]["password_present"], true);
    assert!(export_settings["destination"].get("password").is_none());
    assert_eq!(
        export_settings["destination"]["url"],
        "https://dav.example.com/acme"
    );
    let privacy_settings = settings
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "privacy_settings")
        .unwrap();
    assert_eq!(privacy_settings["time_zone"], "UTC");
    assert!(
        privacy_settings.to_string().contains("_present"),
        "{privacy_settings}"
    );

    let log = json_file(&dir, "export-log.json");
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "export_run" && r["messages"] == 42)
    );
    let imports = json_file(&dir, "imports.json");
    let import = imports
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "import")
        .unwrap();
    assert_eq!(import["id"], IMPORT);
    assert_eq!(import["destination_secret_present"], true);
    assert_eq!(
        std::fs::read(dir.join(format!("imports/{IMPORT}/upload.csv"))).unwrap(),
        csv,
        "the import file is byte-identical"
    );
    let requests = json_file(&dir, "privacy-requests.json");
    let filed = requests
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == request_id.as_str())
        .unwrap();
    assert_eq!(filed["status"], "complete");
    assert!(
        filed["pseudonyms"]
            .as_array()
            .unwrap()
            .contains(&json!(ANN.pseudonym(&deps, "email")))
    );
    let consent = json_file(&dir, "consent.json");
    assert!(
        consent
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["purpose"] == "marketing_email")
    );
    let index = json_file(&dir, "subject-index.json");
    assert!(!index.as_array().unwrap().is_empty());
    json_file(&dir, "other.json");
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for action in [
        "account.export_requested",
        "privacy_request.created",
        "privacy_request.exported",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    assert!(
        actions.iter().all(|a| a != "account.exported"),
        "written after the archive"
    );

    // Audited: the request, the export, the link.
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    for action in [
        "account.export_requested",
        "account.exported",
        "account.export_link_issued",
    ] {
        assert_eq!(
            entries.iter().filter(|e| e.action == action).count(),
            1,
            "{action}"
        );
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));

    // Finished, the tenant may start another.
    let (status, next) = call(
        &deps,
        request(event!("post_account_export"), "acme", "admin", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(next["job_id"], id.as_str());
}

/// Every string attribute, at any depth, whose name says it is sealed or secret.
async fn secret_attributes(deps: &Deps) -> Vec<String> {
    fn walk(name: &str, value: &AttributeValue, out: &mut Vec<String>) {
        let lower = name.to_ascii_lowercase();
        match value {
            AttributeValue::S(text)
                if text.len() >= 16
                    && ["token", "secret", "sealed", "password"]
                        .iter()
                        .any(|h| lower.contains(h)) =>
            {
                out.push(text.clone());
            }
            AttributeValue::M(map) => map.iter().for_each(|(k, v)| walk(k, v, out)),
            AttributeValue::L(items) => items.iter().for_each(|v| walk(name, v, out)),
            _ => {}
        }
    }
    let out = deps
        .store
        .client()
        .scan()
        .table_name(deps.store.table())
        .send()
        .await
        .unwrap();
    let mut found = Vec::new();
    for item in out.items.unwrap_or_default() {
        item.iter().for_each(|(k, v)| walk(k, v, &mut found));
    }
    found
}

/// A source file that changes under a running export fails it visibly: the upload is
/// aborted, staging removed, the failure audited, and the tenant may start again.
#[tokio::test]
async fn an_export_that_cannot_finish_fails_visibly_and_leaves_no_upload() {
    let Env { deps, .. } = env().await;
    let tenant = acme();
    let csv = big_csv();
    let key = format!("imports/acme/{IMPORT}/upload.csv");
    deps.s3
        .put_object()
        .bucket(&deps.config.imports_bucket)
        .key(&key)
        .body(ByteStream::from(csv))
        .send()
        .await
        .unwrap();
    let (status, started) = call(
        &deps,
        request(event!("post_account_export"), "acme", "admin", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["job_id"].as_str().unwrap().to_owned();
    // Until the first part is uploaded.
    for _ in 0..50 {
        if job(&deps, &id).await.parts.len() == 1 {
            break;
        }
        let response = dsar::handle_stream(&deps, stream(&id, "acme"), Budget::Steps(1)).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
    }
    assert_eq!(job(&deps, &id).await.parts.len(), 1);
    // The file changes: the planned bytes can no longer be produced.
    deps.s3
        .put_object()
        .bucket(&deps.config.imports_bucket)
        .key(&key)
        .body(ByteStream::from_static(b"email\nchanged@example.com\n"))
        .send()
        .await
        .unwrap();
    let mut failures = 0;
    for _ in 0..dsar::account_export::MAX_ATTEMPTS + 2 {
        let response = dsar::handle_stream(&deps, stream(&id, "acme"), Budget::Unlimited).await;
        failures += response.batch_item_failures.len();
    }
    assert_eq!(failures as u32, dsar::account_export::MAX_ATTEMPTS);
    let failed = job(&deps, &id).await;
    assert_eq!(failed.status, ExportStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("s3"));
    let uploads = deps
        .s3
        .list_multipart_uploads()
        .bucket(&deps.config.dsar_results_bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "the upload was aborted");
    let listed = deps
        .s3
        .list_objects_v2()
        .bucket(&deps.config.dsar_results_bucket)
        .prefix("dsar/acme/account-exports/")
        .send()
        .await
        .unwrap();
    assert!(listed.contents().is_empty(), "no archive, no staging");
    let (status, shown) = call(
        &deps,
        request(
            event!("get_account_export"),
            "acme",
            "admin",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["status"], "failed");
    assert!(shown["download"].is_null());
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    assert!(
        entries.iter().any(|e| e.action == "account.export_failed"
            && e.outcome == custody::audit::Outcome::Failure)
    );
    let (status, next) = call(
        &deps,
        request(event!("post_account_export"), "acme", "admin", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(next["job_id"], id.as_str());
}

#[tokio::test]
async fn an_erasure_takes_the_account_holders_copies_that_hold_the_subject() {
    let Env { deps, .. } = env().await;
    seed_imports(&deps).await;
    let (status, started) = call(
        &deps,
        request(event!("post_account_export"), "acme", "admin", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["job_id"].as_str().unwrap().to_owned();
    let done = run_to_end(&deps, &id).await;
    assert_eq!(done.status, ExportStatus::Ready, "{done:?}");
    let copies = |all: Vec<(String, String, String)>| {
        all.into_iter()
            .filter(|(key, _, _)| key.contains("/account-exports/"))
            .count()
    };
    let bucket = &deps.config.dsar_results_bucket;
    assert_eq!(copies(bucket_versions(&deps.s3, bucket).await), 1);

    // The copy holds Ann's rows: erasing her takes it, every version.
    let erasure = file_request(&deps, "delete", &ANN, "gdpr").await;
    deliver(&deps, &erasure).await;
    assert_eq!(copies(bucket_versions(&deps.s3, bucket).await), 0);
    let (status, shown) = call(
        &deps,
        request(
            event!("get_account_export"),
            "acme",
            "admin",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(shown["download"].is_null(), "{shown}");
}

//! Tests of the expiry function against the local stack. moto never runs lifecycle
//! rules or TTL, so the tests deliver the events in `events/expiry/` themselves,
//! patched to point at the data they set up with `custody::imports`.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::dynamodb::Event as StreamEvent;
use aws_lambda_events::s3::S3Event;
use chrono::Utc;
use custody::TenantId;
use custody::imports::{
    Format, Import, ImportData, Imports, Mode, ObjectKey, Status, import_refs_prefix,
    new_import_id, rows_batch_key,
};
use custody::retention::RetentionClass;
use custody::seal::Sealed;
use custody::subject::{Identifier, PseudonymKey};
use custody_local::harness::TestStack;
use expiry::{Deps, Effect};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

const LIFECYCLE: &str = include_str!("../../../../events/expiry/s3_lifecycle_expiration.json");
const TTL_REMOVAL: &str = include_str!("../../../../events/expiry/dynamodb_ttl_removal.json");

struct Env {
    stack: TestStack,
    deps: Deps,
    imports: Imports,
    tenant: TenantId,
}

async fn env() -> Env {
    let stack = TestStack::new().await;
    let deps = Deps::new(&stack.config, &stack.clients, TestStack::system_clock());
    let imports = Imports::new(
        stack.store(TestStack::system_clock()),
        stack.clients.s3.clone(),
        &stack.config.imports_bucket,
    );
    Env {
        stack,
        deps,
        imports,
        tenant: TenantId::parse("acme").unwrap(),
    }
}

/// Stored import data as the import function leaves it: the import item, an object
/// (two versions), subject refs pointing at it, and the data marker.
struct Stored {
    import_id: String,
    object: ObjectKey,
    version: String,
    expires_at: i64,
}

async fn store_import(env: &Env, format: Format) -> Stored {
    let import_id = new_import_id();
    let now = Utc::now();
    let class = RetentionClass::Import30d;
    let import = Import {
        tenant: env.tenant.clone(),
        id: import_id.clone(),
        format,
        mode: Mode::Store,
        retention_class: class,
        status: Status::Delivered,
        destination_url: "https://hooks.example.com/x".into(),
        destination_secret: Sealed::from_bytes(vec![1, 2, 3]),
        required_columns: Vec::new(),
        default_country_code: None,
        identifier_fields: None,
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
        final_audited: false,
        retries: 0,
        revision: 0,
        purpose: None,
        rows_restricted: 0,
        rows_consent_withdrawn: 0,
    };
    env.imports.create(&import).await.unwrap();
    let key = match format {
        Format::Rows => rows_batch_key(&env.tenant, &import_id, 1),
        _ => format!("imports/acme/{import_id}/upload.csv"),
    };
    let mut version = String::new();
    for _ in 0..2 {
        let put = env
            .stack
            .clients
            .s3
            .put_object()
            .bucket(&env.stack.config.imports_bucket)
            .key(&key)
            .body(b"email\njane@example.com\n".to_vec().into())
            .send()
            .await
            .unwrap();
        version = put.version_id().unwrap().to_owned();
    }
    let object = ObjectKey::parse(&key).unwrap();
    let expires_at = class.expires_at(now).unwrap();
    let pseudonyms = PseudonymKey::derive(&app_secret(env).await, &env.tenant);
    let counts: HashMap<_, _> = ["jane@example.com", "joe@example.com"]
        .iter()
        .map(|email| (pseudonyms.pseudonym(&Identifier::email(email).unwrap()), 1))
        .collect();
    env.imports
        .add_subject_refs(&object, counts, expires_at, true)
        .await
        .unwrap();
    env.imports
        .record_data_expiry(&env.tenant, &import_id, class, expires_at)
        .await
        .unwrap();
    Stored {
        import_id,
        object,
        version,
        expires_at,
    }
}

async fn app_secret(env: &Env) -> secrecy::SecretSlice<u8> {
    custody::subject::load_app_secret(
        &env.stack.clients.secrets,
        &env.stack.config.pseudonym_secret_id,
    )
    .await
    .unwrap()
}

fn lifecycle_event(env: &Env, stored: &Stored) -> S3Event {
    let mut event: Value = serde_json::from_str(LIFECYCLE).unwrap();
    let record = &mut event["Records"][0];
    record["s3"]["bucket"]["name"] = json!(env.stack.config.imports_bucket);
    record["s3"]["object"]["key"] = json!(stored.object.key());
    record["s3"]["object"]["versionId"] = json!(stored.version);
    serde_json::from_value(event).unwrap()
}

fn ttl_event(stored: &Stored) -> StreamEvent {
    let mut event: Value = serde_json::from_str(TTL_REMOVAL).unwrap();
    let change = &mut event["Records"][0]["dynamodb"];
    let sk = format!("IMPDATA#{}", stored.import_id);
    change["Keys"]["sk"]["S"] = json!(sk);
    change["OldImage"]["sk"]["S"] = json!(sk);
    change["OldImage"]["import_id"]["S"] = json!(stored.import_id);
    change["OldImage"]["expires_at"]["N"] = json!(stored.expires_at.to_string());
    serde_json::from_value(event).unwrap()
}

async fn refs(env: &Env, import_id: &str) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue;
    env.stack
        .clients
        .dynamodb
        .query()
        .table_name(&env.stack.config.table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
        .expression_attribute_values(":pk", AttributeValue::S("T#acme".into()))
        .expression_attribute_values(":p", AttributeValue::S(import_refs_prefix(import_id)))
        .send()
        .await
        .unwrap()
        .items()
        .len()
}

async fn versions(env: &Env, import_id: &str) -> usize {
    let out = env
        .stack
        .clients
        .s3
        .list_object_versions()
        .bucket(&env.stack.config.imports_bucket)
        .prefix(format!("imports/acme/{import_id}/"))
        .send()
        .await
        .unwrap();
    out.versions().len() + out.delete_markers().len()
}

async fn audit(env: &Env) -> Vec<custody::audit::Entry> {
    let log = env.stack.audit(TestStack::system_clock());
    assert!(log.verify(&env.tenant).await.unwrap().is_ok());
    log.entries(&env.tenant, None, None).await.unwrap()
}

async fn status(env: &Env, import_id: &str) -> Status {
    env.imports
        .get(&env.tenant, import_id)
        .await
        .unwrap()
        .unwrap()
        .status
}

const REMAINING: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_lifecycle_expiration_is_recorded_once_cleans_the_index_and_marks_the_import() {
    let env = env().await;
    let expired = store_import(&env, Format::Csv).await;
    let other = store_import(&env, Format::Rows).await;

    let first = expiry::handle_lifecycle(&env.deps, lifecycle_event(&env, &expired), REMAINING)
        .await
        .unwrap();
    let second = expiry::handle_lifecycle(&env.deps, lifecycle_event(&env, &expired), REMAINING)
        .await
        .unwrap();
    assert_eq!(first, vec![Effect::Recorded]);
    assert_eq!(second, vec![Effect::Duplicate]);

    let entries = audit(&env).await;
    assert_eq!(entries.len(), 1, "the same event twice: one entry");
    let entry = &entries[0];
    assert_eq!(entry.action, "import.expired");
    assert_eq!(entry.actor, expiry::ACTOR);
    assert_eq!(entry.target, format!("IMP#{}", expired.import_id));
    assert_eq!(entry.details["retention_class"], "import-30d");
    assert_eq!(entry.details["object"], "upload.csv");
    assert_eq!(
        entry.details["trigger"],
        "LifecycleExpiration:DeleteMarkerCreated"
    );
    assert_eq!(entry.details["expired_at"], "2025-02-01T00:00:00Z");
    assert_eq!(entry.details["index_entries_removed"], 2);
    assert!(
        !serde_json::to_string(&entries)
            .unwrap()
            .contains("example.com")
    );

    assert_eq!(refs(&env, &expired.import_id).await, 0);
    assert_eq!(status(&env, &expired.import_id).await, Status::Expired);
    // Another import's data and index are untouched.
    assert_eq!(refs(&env, &other.import_id).await, 2);
    assert_eq!(status(&env, &other.import_id).await, Status::Delivered);
}

#[tokio::test]
async fn a_ttl_removal_of_the_data_marker_is_recorded_once_and_removes_what_is_left() {
    let env = env().await;
    let stored = store_import(&env, Format::Rows).await;
    assert_eq!(versions(&env, &stored.import_id).await, 2);

    let first = expiry::handle_stream(&env.deps, ttl_event(&stored), REMAINING)
        .await
        .unwrap();
    let second = expiry::handle_stream(&env.deps, ttl_event(&stored), REMAINING)
        .await
        .unwrap();
    assert_eq!(
        (first, second),
        (vec![Effect::Recorded], vec![Effect::Duplicate])
    );

    let entries = audit(&env).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].action, "import.expired");
    assert_eq!(entries[0].details["trigger"], "ttl");
    assert_eq!(entries[0].details["retention_class"], "import-30d");
    assert_eq!(entries[0].details["object_versions_removed"], 2);
    assert_eq!(entries[0].details["index_entries_removed"], 2);
    assert_eq!(versions(&env, &stored.import_id).await, 0);
    assert_eq!(refs(&env, &stored.import_id).await, 0);
    let import = env
        .imports
        .get(&env.tenant, &stored.import_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(import.status, Status::Expired);
    assert!(import.data_deleted_at.is_some());
    assert_eq!(import.rows_delivered, 2, "the log outlives the data");
}

#[tokio::test]
async fn only_ttl_removals_and_lifecycle_expirations_count() {
    let env = env().await;
    let stored = store_import(&env, Format::Csv).await;
    // A user's delete (no service identity), an insert, a modify: not expiries.
    let mut event: Value = serde_json::to_value(ttl_event(&stored)).unwrap();
    event["Records"][0]
        .as_object_mut()
        .unwrap()
        .remove("userIdentity");
    let user_delete: StreamEvent = serde_json::from_value(event.clone()).unwrap();
    event["Records"][0]["eventName"] = json!("INSERT");
    event["Records"][0]["userIdentity"] =
        json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
    let insert: StreamEvent = serde_json::from_value(event).unwrap();
    for e in [user_delete, insert] {
        assert_eq!(
            expiry::handle_stream(&env.deps, e, REMAINING)
                .await
                .unwrap(),
            vec![Effect::Ignored]
        );
    }
    // An upload notification, another bucket, a key outside the layout.
    let mut created = lifecycle_event(&env, &stored);
    created.records[0].event_name = Some("ObjectCreated:Put".into());
    let mut foreign = lifecycle_event(&env, &stored);
    foreign.records[0].s3.bucket.name = Some("someone-elses".into());
    let mut outside = lifecycle_event(&env, &stored);
    outside.records[0].s3.object.key = Some("elsewhere/file.csv".into());
    for e in [created, foreign, outside] {
        assert_eq!(
            expiry::handle_lifecycle(&env.deps, e, REMAINING)
                .await
                .unwrap(),
            vec![Effect::Ignored]
        );
    }
    assert!(audit(&env).await.is_empty());
    assert_eq!(refs(&env, &stored.import_id).await, 2);
    assert_eq!(status(&env, &stored.import_id).await, Status::Delivered);
}

#[tokio::test]
async fn a_deleted_import_stays_deleted_when_its_expiry_arrives() {
    let env = env().await;
    let stored = store_import(&env, Format::Csv).await;
    env.imports
        .update(&env.tenant, &stored.import_id, |imp| {
            imp.status = Status::Deleted;
            Ok(())
        })
        .await
        .unwrap();
    expiry::handle_lifecycle(&env.deps, lifecycle_event(&env, &stored), REMAINING)
        .await
        .unwrap();
    assert_eq!(status(&env, &stored.import_id).await, Status::Deleted);
    assert_eq!(audit(&env).await.len(), 1);
}

#[tokio::test]
async fn the_entry_point_dispatches_both_triggers() {
    let env = env().await;
    let a = store_import(&env, Format::Csv).await;
    let b = store_import(&env, Format::Csv).await;
    let context = || {
        let mut context = Context::default();
        context.deadline = (Utc::now().timestamp_millis() + 60_000) as u64;
        context
    };
    let s3 = serde_json::to_value(lifecycle_event(&env, &a)).unwrap();
    let effects = expiry::handle(&env.deps, LambdaEvent::new(s3, context()))
        .await
        .unwrap();
    assert_eq!(effects, vec![Effect::Recorded]);
    let stream = serde_json::to_value(ttl_event(&b)).unwrap();
    let effects = expiry::handle(&env.deps, LambdaEvent::new(stream, context()))
        .await
        .unwrap();
    assert_eq!(effects, vec![Effect::Recorded]);
    assert_eq!(audit(&env).await.len(), 2);
    let unknown = expiry::handle(&env.deps, LambdaEvent::new(json!({"hello": 1}), context()))
        .await
        .unwrap();
    assert!(unknown.is_empty());
}

#[test]
fn the_marker_kind_in_the_stream_filter_is_the_entity_kind() {
    let template = std::fs::read_to_string(custody_local::template_path()).unwrap();
    let filter = format!(r#""kind": {{"S": ["{}"]}}"#, ImportData::KIND);
    assert!(
        template.contains(&filter),
        "template.yaml filters on {filter}"
    );
    assert!(template.contains(r#""principalId": ["dynamodb.amazonaws.com"]"#));
    assert_eq!(expiry::TTL_PRINCIPAL, "dynamodb.amazonaws.com");
}

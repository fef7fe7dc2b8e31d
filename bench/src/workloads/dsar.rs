//! DSAR cost (issue 8, item 5): the DynamoDB requests and time the dsar function's
//! own `process_request` takes to export, then erase, a subject with 10 records in a
//! table of `size` items. The approach of `functions/dsar/tests/dsar/cost.rs`:
//! counted SDK client for the function, a plain one for seeding and counting.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, Select, WriteRequest};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use custody::privacy::PrivacyRequest;
use custody::subject::Identifier;
use custody::subject_index::{Source, SubjectRef};
use custody::tenant::TenantId;
use custody_local::harness::TestStack;
use dsar::{Budget, Deps, DsarConfig, Progress};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::BenchError;
use crate::request_count::{RequestCounter, counted_dynamodb};

const TENANT: &str = "acme";
const EMAIL: &str = "bench.subject@example.com";
/// Imported files naming the subject (one row each) and consents given by it.
const SUBJECT_FILES: u64 = 8;
const CONSENT_PURPOSES: [&str; 2] = ["marketing_email", "analytics"];
const SUBJECT_CONSENTS: u64 = CONSENT_PURPOSES.len() as u64;
const SUBJECT_RECORDS: u64 = SUBJECT_FILES + SUBJECT_CONSENTS;

fn failed(what: &str, err: impl std::fmt::Display) -> BenchError {
    BenchError::Measurement(format!("dsar workload: {what}: {err}"))
}

macro_rules! event {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/dsar-api/",
            $name,
            ".json"
        ))
    };
}

pub async fn run(size: u64) -> Result<Value, BenchError> {
    let stack = TestStack::new().await;
    let counter = RequestCounter::default();
    let mut clients = stack.clients.clone();
    clients.dynamodb = counted_dynamodb(&stack.sdk, &counter);
    let plain = stack.clients.dynamodb.clone();
    let table = stack.config.table.clone();
    let app_secret = custody::subject::load_app_secret(
        &stack.clients.secrets,
        &stack.config.pseudonym_secret_id,
    )
    .await
    .map_err(|e| failed("app secret", e))?;
    let deps = Deps::new(
        stack.config.clone(),
        DsarConfig {
            link_ttl: Duration::from_secs(300),
            egress: custody::egress::EgressPolicy::LOCAL,
            oauth_function: "custody-oauth-test".into(),
            // No wait before the purge's final sweep (tests of the wait set their own).
            purge_grace: chrono::Duration::zero(),
            notice_email_sender: None,
        },
        &clients,
        app_secret,
        custody::http::client(custody::egress::EgressPolicy::LOCAL)
            .map_err(|e| failed("http client", e))?,
        TestStack::system_clock(),
    );
    let tenant = TenantId::parse(TENANT).map_err(|e| failed("tenant", e))?;

    seed_subject(&deps, &tenant).await?;
    let own = table_size(&plain, &table).await?;
    let seeding = Instant::now();
    seed_filler(&plain, &table, own, size).await?;
    let seeding = seeding.elapsed();
    let items = table_size(&plain, &table).await?;

    let export = measure(&deps, &tenant, &counter, "export").await?;
    let erase = measure(&deps, &tenant, &counter, "delete").await?;
    Ok(json!({
        "table_items": items,
        "subject_records_seeded": SUBJECT_RECORDS,
        // What the function itself reports, so a run that found nothing shows.
        "export_records_found": export.request.bundle.as_ref().map(|b| b.records),
        "erased": export_erased(&erase.request),
        "seeding_s": seeding.as_secs_f64(),
        "export_dynamodb_requests": export.requests,
        "export_ms": export.elapsed.as_secs_f64() * 1e3,
        "export_operations": export.operations,
        "erase_dynamodb_requests": erase.requests,
        "erase_ms": erase.elapsed.as_secs_f64() * 1e3,
        "erase_operations": erase.operations,
    }))
}

struct Measured {
    requests: u64,
    elapsed: Duration,
    operations: Value,
    /// The finished request as stored: what the function says it found or erased.
    request: PrivacyRequest,
}

/// Files the request through the HTTP route (untimed), then times and counts the
/// processing the stream trigger would run.
async fn measure(
    deps: &Deps,
    tenant: &TenantId,
    counter: &RequestCounter,
    route: &str,
) -> Result<Measured, BenchError> {
    let event = match route {
        "export" => event!("post_privacy_export"),
        _ => event!("post_privacy_delete"),
    };
    let body = json!({ "subject": { "email": EMAIL }, "regulation": "gdpr" });
    let out = call(deps, event, body).await?;
    let id = out["id"]
        .as_str()
        .ok_or_else(|| BenchError::Measurement(format!("dsar workload: {route} filed: {out}")))?
        .to_owned();
    counter.reset();
    let started = Instant::now();
    let progress = dsar::process::process_request(deps, tenant, &id, Budget::Unlimited)
        .await
        .map_err(|e| failed("process_request", e))?;
    let elapsed = started.elapsed();
    let requests = counter.count();
    if progress != Progress::Finished(custody::privacy::Status::Complete) {
        return Err(BenchError::Measurement(format!(
            "dsar workload: {route} ended {progress:?}"
        )));
    }
    let operations = json!(counter.operations());
    let request = deps
        .store
        .get::<PrivacyRequest>(&PrivacyRequest::key_of(tenant, &id))
        .await
        .map_err(|e| failed("read the finished request", e))?
        .ok_or_else(|| failed("read the finished request", "gone"))?;
    Ok(Measured {
        requests,
        elapsed,
        operations,
        request,
    })
}

/// One HTTP route of the function from its event file, as an admin of the tenant.
pub(super) async fn call(deps: &Deps, event: &str, body: Value) -> Result<Value, BenchError> {
    let mut ev: Value = serde_json::from_str(event).map_err(|e| failed("event file", e))?;
    if let Some(claims) = ev
        .pointer_mut("/requestContext/authorizer/jwt/claims")
        .and_then(Value::as_object_mut)
    {
        claims.insert("custom:tenant_id".into(), json!(TENANT));
        claims.insert("custom:role".into(), json!("admin"));
    }
    let text = body.to_string();
    ev["headers"]["content-length"] = json!(text.len().to_string());
    ev["headers"]["content-type"] = json!("application/json");
    ev["body"] = json!(text);
    let request =
        lambda_http::request::from_str(&ev.to_string()).map_err(|e| failed("event", e))?;
    let response = dsar::handle_http(deps, request).await;
    let status = response.status();
    let out = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    if !status.is_success() {
        return Err(BenchError::Measurement(format!(
            "dsar workload: HTTP {status}: {out}"
        )));
    }
    Ok(out)
}

/// [`SUBJECT_RECORDS`] records: imported files naming the subject (one row each)
/// and consents.
async fn seed_subject(deps: &Deps, tenant: &TenantId) -> Result<(), BenchError> {
    let email = Identifier::email(EMAIL).map_err(|e| failed("identifier", e))?;
    let pseudonym = deps
        .pseudonym_key(tenant)
        .await
        .map_err(|e| failed("pseudonym key", e))?
        .pseudonym(&email)
        .to_string();
    for n in 0..SUBJECT_FILES {
        let import = format!("01JHBENCH{n:017}");
        let key = format!("imports/{TENANT}/{import}/upload.csv");
        let csv = format!("name,email\nBench Subject,{EMAIL}\nOther Person,other{n}@example.com\n");
        deps.s3
            .put_object()
            .bucket(&deps.config.imports_bucket)
            .key(&key)
            .body(ByteStream::from(csv.into_bytes()))
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&deps.config.data_key_id)
            .tagging("retention-class=import-30d")
            .send()
            .await
            .map_err(|e| failed("put import object", e))?;
        let subject_ref = SubjectRef {
            tenant: tenant.clone(),
            pseudonym: pseudonym.clone(),
            source: Source::ImportObject,
            source_id: format!("{import}/upload.csv"),
            object_key: Some(key),
            count: 1,
            expires_at: Some((chrono::Utc::now() + chrono::Duration::days(30)).timestamp()),
        };
        deps.store
            .put(&subject_ref)
            .await
            .map_err(|e| failed("subject ref", e))?;
    }
    for purpose in CONSENT_PURPOSES {
        call(
            deps,
            event!("put_privacy_consent"),
            json!({
                "subject": { "email": EMAIL },
                "purpose": purpose,
                "state": "granted",
                "source": "web_form",
                "policy_version": "2025-01",
            }),
        )
        .await?;
    }
    Ok(())
}

/// Items counted by a real scan (Select COUNT), so the size is measured.
async fn table_size(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<u64, BenchError> {
    let mut start = None;
    let mut count = 0u64;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .select(Select::Count)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| failed("count scan", e))?;
        count += u64::try_from(out.count).unwrap_or(0);
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return Ok(count),
        }
    }
}

/// Filler items `from..to` loading the table and its `by_subject` index (other
/// subjects of other tenants), 25 per BatchWriteItem, 16 batches in flight.
async fn seed_filler(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    from: u64,
    to: u64,
) -> Result<(), BenchError> {
    let batches: Vec<Vec<WriteRequest>> = (from..to)
        .map(|i| {
            let item = [
                ("pk", format!("T#f{}", i % 97)),
                ("sk", format!("F#{i}")),
                ("subject_pk", format!("T#f{}#S#ps_{}", i % 97, i % 5000)),
                ("subject_sk", format!("f#{i}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), AttributeValue::S(v)))
            .collect();
            PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map(|put| WriteRequest::builder().put_request(put).build())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed("filler item", e))?
        .chunks(25)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    let results: Vec<Result<(), BenchError>> = futures_util::stream::iter(batches)
        .map(|batch| async move {
            let mut pending = batch;
            while !pending.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(table, pending)
                    .send()
                    .await
                    .map_err(|e| failed("batch write", e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
            }
            Ok(())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

/// The erasure's own counts, as stored on the finished request.
fn export_erased(request: &PrivacyRequest) -> Value {
    request
        .erased
        .as_ref()
        .map_or(Value::Null, |counts| json!(counts))
}

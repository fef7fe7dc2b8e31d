//! Nothing lost silently, under injected faults: the privacy-request journey (a
//! subject's rows stored among others', a request filed, its stream record processed)
//! runs once per seed with `custody::faults` throttling, 5xx and timeouts injected into
//! the function's DynamoDB, KMS, S3 and Secrets Manager calls at seeded points. Even
//! seeds are erasures, odd seeds access requests.
//!
//! Lambda's part is played as the template configures the dsar stream source: a
//! record is delivered up to 1 + 10 times (`MaximumRetryAttempts: 10`); if every
//! attempt fails it goes to the failure queue (whose depth is the metric
//! `DsarFailureQueueAlarm` watches), and the operator's redrive delivers it again,
//! marked `custody::redrive::FIELD`, with the fault gone. Every seed must end with the
//! request complete and each of its effects once: one completion entry, one entry per
//! step, at most one certificate, the subject's rows gone and everyone else's rows
//! there exactly once (erasure), one bundle (access), and an intact audit chain.
//! Seeds: `FAULT_SEEDS` (100 by default). The summary line is printed for `make test`'s
//! log.
//!
//! Time: the function's clock is the env's `ManualClock`, advanced between attempts
//! (Lambda's retry backoff) and before the redrive (the last invocation has ended, so
//! any idempotency claim it could not release has expired). No real sleeping, so 100
//! seeds stay within a couple of minutes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_smithy_types::retry::RetryConfig;
use custody::audit::Entry;
use custody::faults::FaultPlan;
use custody::privacy::{PrivacyRequest, Status};
use custody::subject::Identifier;
use custody::subject_index::{Source, SubjectRef};
use custody::tenant::TenantId;
use dsar::{Budget, Deps};
use http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::*;

/// Lambda's deliveries of one stream record: the first and `MaximumRetryAttempts: 10`.
const ATTEMPTS: usize = 11;
/// Faults per thousand calls: most seeds see some, some see bursts that exhaust the
/// SDK's retries often enough that the request ends in `error` and is dead-lettered.
const RATE: u64 = 60;
/// The time each faulted invocation is given (its budget, and the lifetime of a claim
/// it could not release). Short, so the run stays bounded.
const INVOCATION: Duration = Duration::from_secs(3);
/// Lambda's pause before redelivering a failed stream record: shorter than
/// [`INVOCATION`], so a claim left by a failed attempt still blocks the next ones.
const RETRY_GAP_MS: i64 = 1000;
/// A record that succeeds while the request is not complete (its budget ran out)
/// is followed by the record of the step it saved; more than this is a stuck request.
const MAX_RECORDS: usize = 4;
/// The subject's rows in the seed's import file, and the others'.
const SUBJECT_ROWS: usize = 2;
const OTHER_ROWS: usize = 3;

/// Per-request audit actions that must each appear exactly once.
const ERASURE_ACTIONS: [&str; 4] = [
    "privacy_request.files_erased",
    "privacy_request.items_erased",
    "privacy_request.erased",
    "privacy_request.completed",
];
const ACCESS_ACTIONS: [&str; 2] = ["privacy_request.exported", "privacy_request.completed"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_privacy_request_completes_exactly_once_or_is_dead_lettered_then_completed_by_redrive()
 {
    let env = env().await;
    let seeds: u64 = std::env::var("FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    // The SDK's own retries, with short pauses so the run stays bounded.
    let sdk = env
        .stack
        .sdk
        .to_builder()
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(2))
                .with_max_backoff(Duration::from_millis(10)),
        )
        .build();
    let app_secret = custody::subject::load_app_secret(
        &env.stack.clients.secrets,
        &env.stack.config.pseudonym_secret_id,
    )
    .await
    .unwrap();
    let faulty = |plan: &FaultPlan| {
        let clients = custody::aws::Clients::with_faults(&sdk, Some(plan.clone()));
        Deps::new(
            env.stack.config.clone(),
            env.deps.dsar.clone(),
            &clients,
            app_secret.clone(),
            custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
            Arc::new(env.clock.clone()),
        )
    };

    let (mut completed, mut dead_lettered, mut duplicates, mut injected) = (0u64, 0u64, 0u64, 0u64);
    let mut duplicated: Vec<String> = Vec::new();
    for seed in 0..seeds {
        let erasure = seed % 2 == 0;
        // The tenant's own calls (storing data, filing the request) are not the
        // function's stream path; they run without faults. A tenant per seed keeps the
        // seeds' audit chains and subjects apart.
        let world = World::seed(&env, seed).await;
        let id = file(&env.deps, &world, erasure).await;

        let plan = FaultPlan::new(seed, RATE);
        let deps = faulty(&plan);
        let mut image = "pending";
        let mut outcome = None;
        for _ in 0..MAX_RECORDS {
            let mut delivered = false;
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    env.clock
                        .advance(chrono::Duration::milliseconds(RETRY_GAP_MS));
                }
                let failures = invoke(
                    &deps,
                    record(world.tenant.as_str(), &id, image),
                    Budget::Until(Instant::now() + INVOCATION),
                )
                .await;
                if failures == 0 {
                    delivered = true;
                    break;
                }
            }
            if !delivered {
                outcome = Some(false);
                break;
            }
            if request_of(&env, &world.tenant, &id).await.status == Status::Complete {
                outcome = Some(true);
                break;
            }
            // Succeeded but stopped between steps: the step's own save is the next
            // stream record (in_processing), delivered with its own attempts.
            image = "in_processing";
        }
        injected += plan.injected();
        match outcome {
            Some(true) => completed += 1,
            Some(false) => {
                // Every attempt failed: the record is in the failure queue. Nothing
                // may be half-written meanwhile; the redrive (fault gone) completes it.
                dead_lettered += 1;
                let request = request_of(&env, &world.tenant, &id).await;
                assert_ne!(request.status, Status::Complete, "seed {seed}");
                // The completion entry is written (under its claim) before the status,
                // so an attempt may have written it and failed on the status; the
                // redrive then replays it, never writes another (checked below).
                assert!(
                    count(&request_entries(&env, &world.tenant, &id).await)
                        .get("privacy_request.completed")
                        .is_none_or(|n| *n == 1),
                    "seed {seed}: completion entries for a request that did not complete"
                );
                if erasure {
                    world.assert_file_whole_or_erased(&env, seed).await;
                }
                // The redrive comes after the last attempt's invocation has ended, so
                // any claim it left has expired.
                env.clock
                    .advance(chrono::Duration::from_std(INVOCATION).unwrap());
                let mut event = record(world.tenant.as_str(), &id, image);
                event[custody::redrive::FIELD] = json!(true);
                let failures = invoke(
                    &env.deps,
                    event,
                    Budget::Until(Instant::now() + Duration::from_secs(60)),
                )
                .await;
                assert_eq!(failures, 0, "seed {seed}: the redrive failed");
            }
            None => panic!("seed {seed}: the request is stuck after {MAX_RECORDS} records"),
        }

        // Completed exactly once, whichever way.
        let request = request_of(&env, &world.tenant, &id).await;
        assert_eq!(
            request.status,
            Status::Complete,
            "seed {seed}: not complete"
        );
        let entries = request_entries(&env, &world.tenant, &id).await;
        let counts = count(&entries);
        let actions: &[&str] = if erasure {
            &ERASURE_ACTIONS
        } else {
            &ACCESS_ACTIONS
        };
        for action in actions {
            let n = counts.get(*action).copied().unwrap_or(0);
            assert!(n >= 1, "seed {seed}: no {action} entry");
            if n > 1 {
                duplicates += n as u64 - 1;
                duplicated.push(format!("seed {seed}: {action} ×{n}"));
            }
        }
        assert!(
            env.deps.audit.verify(&world.tenant).await.unwrap().is_ok(),
            "seed {seed}: the audit chain does not verify"
        );
        if erasure {
            world.assert_erased(&env, seed, &request, &entries).await;
        } else {
            world.assert_bundle(&env, seed, &request).await;
        }
    }
    let summary = format!(
        "fault injection (dsar): seeds={seeds} completed={completed} dead_lettered={dead_lettered} duplicates={duplicates} faults_injected={injected}"
    );
    println!("{summary}");
    // `make test` prints this file after the run (cargo keeps a passing test's output).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-injection-summary-dsar.txt"),
        format!("{summary}\n"),
    );
    assert_eq!(duplicates, 0, "{duplicated:#?}");
    assert_eq!(completed + dead_lettered, seeds);
    // The test must exercise both outcomes, or it proves less than it claims.
    if seeds >= 50 {
        assert!(
            dead_lettered > 0 && completed > 0,
            "completed={completed} dead_lettered={dead_lettered}"
        );
    }
}

/// What one seed stores about its subject and others.
struct World {
    tenant: TenantId,
    email: String,
    pseudonym: String,
    key: String,
    original: String,
    /// The file as it must read after the erasure: the others' rows, byte for byte.
    kept: String,
}

impl World {
    /// An import file of the seed's tenant holding the subject's rows among the
    /// others', with the subject ref an import writes.
    async fn seed(env: &Env, seed: u64) -> World {
        let tenant = TenantId::parse(&format!("faults-{seed}")).unwrap();
        let email = format!("subject-{seed}@example.com");
        let header = "name,email,city\n";
        let (mut original, mut kept) = (header.to_owned(), header.to_owned());
        for i in 0..SUBJECT_ROWS.max(OTHER_ROWS) {
            if i < OTHER_ROWS {
                let row = format!("Other {i},other{i}-{seed}@example.com,Leeds\n");
                original.push_str(&row);
                kept.push_str(&row);
            }
            if i < SUBJECT_ROWS {
                // Matched by pseudonym, so case does not hide a row.
                let shown = if i == 0 {
                    email.to_uppercase()
                } else {
                    email.clone()
                };
                original.push_str(&format!("Subject {seed},{shown},York\n"));
            }
        }
        let import = ulid::Ulid::new().to_string();
        let key = format!("imports/{tenant}/{import}/upload.csv");
        let deps = &env.deps;
        deps.s3
            .put_object()
            .bucket(&deps.config.imports_bucket)
            .key(&key)
            .body(ByteStream::from(original.as_bytes().to_vec()))
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&deps.config.data_key_id)
            .tagging("retention-class=import-30d")
            .send()
            .await
            .unwrap();
        let pseudonym = deps
            .pseudonym_key(&tenant)
            .await
            .unwrap()
            .pseudonym(&Identifier::email(&email).unwrap())
            .to_string();
        deps.store
            .put(&SubjectRef {
                tenant: tenant.clone(),
                pseudonym: pseudonym.clone(),
                source: Source::ImportObject,
                source_id: format!("{import}/upload.csv"),
                object_key: Some(key.clone()),
                count: SUBJECT_ROWS as u64,
                expires_at: Some((chrono::Utc::now() + chrono::Duration::days(30)).timestamp()),
            })
            .await
            .unwrap();
        World {
            tenant,
            email,
            pseudonym,
            key,
            original,
            kept,
        }
    }

    /// Every version of the seed's file (and delete markers).
    async fn versions(&self, env: &Env) -> usize {
        let out = env
            .deps
            .s3
            .list_object_versions()
            .bucket(&env.deps.config.imports_bucket)
            .prefix(&self.key)
            .send()
            .await
            .unwrap();
        out.versions().len() + out.delete_markers().len()
    }

    /// Mid-way, the current file is the original or the erased one, never a part.
    async fn assert_file_whole_or_erased(&self, env: &Env, seed: u64) {
        let current = current_object(&env.deps, &self.key).await;
        assert!(
            current == self.original || current == self.kept,
            "seed {seed}: half-written file:\n{current}"
        );
    }

    async fn assert_erased(
        &self,
        env: &Env,
        seed: u64,
        request: &PrivacyRequest,
        entries: &[Entry],
    ) {
        // The subject's rows are gone, every other row is there exactly once, and no
        // older version keeps the subject's rows.
        assert_eq!(
            current_object(&env.deps, &self.key).await,
            self.kept,
            "seed {seed}"
        );
        assert_eq!(self.versions(env).await, 1, "seed {seed}: versions left");
        assert!(
            env.deps
                .store
                .subject_items(&self.tenant, &self.pseudonym)
                .await
                .unwrap()
                .is_empty(),
            "seed {seed}: the subject is still indexed"
        );
        // One certificate, over the one erasure entry, counting the rows erased.
        let signed = request
            .certificate
            .as_ref()
            .unwrap_or_else(|| panic!("seed {seed}: no certificate"));
        let doc: Value = serde_json::from_str(&signed.document).unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e.action == "privacy_request.erased" && doc["audit_head_hash"] == e.hash),
            "seed {seed}: the certificate is not over an erasure entry"
        );
        let rows = doc["erased"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["store"] == "imports-bucket" && e["unit"] == "rows")
            .map(|e| e["count"].clone());
        assert_eq!(rows, Some(json!(SUBJECT_ROWS)), "seed {seed}: {doc}");
        assert!(!signed.document.contains(&self.email), "seed {seed}");
    }

    async fn assert_bundle(&self, env: &Env, seed: u64, request: &PrivacyRequest) {
        // The bundle exists, is the one the request records, and holds the subject's
        // rows once each.
        let info = request
            .bundle
            .as_ref()
            .unwrap_or_else(|| panic!("seed {seed}: no bundle"));
        let body = env
            .deps
            .s3
            .get_object()
            .bucket(&env.deps.config.dsar_results_bucket)
            .key(&info.key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert_eq!(
            hex::encode(Sha256::digest(&body)),
            info.sha256,
            "seed {seed}"
        );
        let bundle: Value = serde_json::from_slice(&body).unwrap();
        let files = bundle["imported_records"].as_array().unwrap();
        assert_eq!(files.len(), 1, "seed {seed}: {bundle}");
        assert_eq!(
            files[0]["rows"].as_array().unwrap().len(),
            SUBJECT_ROWS,
            "seed {seed}: {bundle}"
        );
        // The file is untouched by an access request.
        assert_eq!(
            current_object(&env.deps, &self.key).await,
            self.original,
            "seed {seed}"
        );
    }
}

/// Files the seed's request as an admin (no verification: it is `pending` at once).
async fn file(deps: &Deps, world: &World, erasure: bool) -> String {
    let event = if erasure {
        event!("post_privacy_delete")
    } else {
        event!("post_privacy_export")
    };
    let body = json!({ "subject": { "email": world.email }, "regulation": "gdpr" });
    let (status, out) = call(
        deps,
        request(event, world.tenant.as_str(), "admin", Some(body), None),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    out["id"].as_str().unwrap().to_owned()
}

/// The stream record of request `id` with `status`, as the event source delivers it
/// (the payload `stream_event` parses).
fn record(tenant: &str, id: &str, status: &str) -> Value {
    let text = worker_event!("stream_request_pending")
        .replace("01JH0000000000000000000000", id)
        .replace("T#acme", &format!("T#{tenant}"))
        .replace("\"pending\"", &format!("\"{status}\""));
    serde_json::from_str(&text).unwrap()
}

/// What the function's runtime does with a stream payload (src/main.rs): the redrive
/// marker decides resumption. Returns the records reported failed.
async fn invoke(deps: &Deps, payload: Value, budget: Budget) -> usize {
    let redriven = custody::redrive::is_redriven(&payload);
    let stream: StreamEvent = serde_json::from_value(payload).unwrap();
    dsar::handle_stream_records(deps, stream, budget, redriven)
        .await
        .batch_item_failures
        .len()
}

async fn request_of(env: &Env, tenant: &TenantId, id: &str) -> PrivacyRequest {
    env.deps
        .store
        .get::<PrivacyRequest>(&PrivacyRequest::key_of(tenant, id))
        .await
        .unwrap()
        .unwrap()
}

async fn request_entries(env: &Env, tenant: &TenantId, id: &str) -> Vec<Entry> {
    let target = custody::store::keys::privacy_request(id);
    env.deps
        .audit
        .entries(tenant, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.target == target)
        .collect()
}

fn count(entries: &[Entry]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in entries {
        *counts.entry(entry.action.clone()).or_default() += 1;
    }
    counts
}

//! Nothing lost silently, under injected faults: the import journey (create, upload,
//! the S3 event processed and pushed to the destination) runs once per seed with
//! `custody::faults` throttling, 5xx and timeouts injected into the function's
//! DynamoDB, KMS, S3 and Secrets Manager calls at seeded points.
//!
//! Lambda's part is played as the template configures it: the event is delivered up
//! to 1 + 2 times (`EventInvokeConfig`); if every attempt fails, the event goes to the
//! failure queue, and the operator's redrive delivers it again with the fault gone.
//! Every seed must end with each row pushed exactly once and one `import.delivered`
//! entry: completed at once, or dead-lettered and then completed by the redrive, with
//! nothing duplicated in between. Seeds: `FAULT_SEEDS` (100 by default; `make faults`
//! runs more). The summary line is printed for `make test`'s log.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use custody::faults::FaultPlan;
use import::{Deps, Settings};

use crate::*;

/// Lambda's attempts for an asynchronous event: the first and two retries.
const ATTEMPTS: usize = 3;
/// Faults per thousand calls: most seeds see some, some see bursts that exhaust the
/// SDK's retries.
const RATE: u64 = 60;
/// The remaining time each faulted invocation is given. A claim on the event that a
/// failed attempt could not release (its release was faulted too) lasts this long;
/// Lambda retries and a redrive come after it. Short, so the run stays bounded.
const INVOCATION: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_import_completes_exactly_once_or_is_dead_lettered_then_completed_by_redrive() {
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
            Settings {
                egress: custody::egress::EgressPolicy::LOCAL,
                retry: TEST_RETRY,
            },
            &clients,
            custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
            app_secret.clone(),
            TestStack::system_clock(),
        )
    };

    let (mut completed, mut dead_lettered, mut duplicates, mut injected) = (0u64, 0u64, 0u64, 0u64);
    for seed in 0..seeds {
        let rows = 3;
        let csv: String = std::iter::once("id,email\n".to_owned())
            .chain((0..rows).map(|i| format!("s{seed}-r{i},s{seed}r{i}@example.com\n")))
            .collect();
        // The tenant's own calls (create, the presigned upload) are not the function's
        // event path; they run without faults.
        let created = create(&env, file_body(&env, "csv", "store", csv.len())).await;
        let version = upload(&created, csv.as_bytes()).await;
        let key = format!("imports/acme/{}/upload.csv", created.import.id);

        let plan = FaultPlan::new(seed, RATE);
        let deps = faulty(&plan);
        let mut ok = false;
        for _ in 0..ATTEMPTS {
            let attempt = import::process::handle_s3(
                &deps,
                s3_event(&env, &key, &version, csv.len()),
                INVOCATION,
            )
            .await;
            if attempt.is_ok() {
                ok = true;
                break;
            }
        }
        injected += plan.injected();
        if ok && status_of(&env, &created.import.id).await == Status::Delivered {
            completed += 1;
        } else {
            // Given up: the event is in the failure queue. Nothing may have been pushed
            // twice meanwhile; the redrive (fault gone) completes it.
            dead_lettered += 1;
            // The redrive comes after the last attempt's invocation has ended, so any
            // claim it left has expired.
            tokio::time::sleep(INVOCATION).await;
            import::process::handle_s3(
                &env.deps,
                s3_event(&env, &key, &version, csv.len()),
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: the redrive failed: {e}"));
            assert_eq!(
                status_of(&env, &created.import.id).await,
                Status::Delivered,
                "seed {seed}: not delivered after the redrive"
            );
        }
        duplicates += duplicated_rows(&env, seed);
        let pushed = delivered_rows(&env, seed).len();
        assert_eq!(pushed, rows, "seed {seed}: rows pushed");
        let delivered = audit_entries(&env, "acme")
            .await
            .into_iter()
            .filter(|e| e.action == "import.delivered" && e.target.ends_with(&created.import.id))
            .count();
        assert_eq!(delivered, 1, "seed {seed}: import.delivered entries");
    }
    let summary = format!(
        "fault injection (import): seeds={seeds} completed={completed} dead_lettered={dead_lettered} duplicates={duplicates} faults_injected={injected}"
    );
    println!("{summary}");
    // `make test` prints this file after the run (cargo keeps a passing test's output).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fault-injection-summary-import.txt"),
        format!("{summary}\n"),
    );
    assert_eq!(duplicates, 0);
    assert_eq!(completed + dead_lettered, seeds);
    // The test must exercise both outcomes, or it proves less than it claims.
    if seeds >= 50 {
        assert!(
            dead_lettered > 0 && completed > 0,
            "completed={completed} dead_lettered={dead_lettered}"
        );
    }
}

/// The rows of this seed the destination accepted, one per delivery id: a batch
/// re-sent with the same delivery id (a retry after its answer was lost) is one
/// delivery, which the receiver deduplicates by that id (README's receiver
/// contract).
fn delivered_rows(env: &Env, seed: u64) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for received in env.dest.requests() {
        if received.status >= 300 {
            continue;
        }
        let (Some(id), Some(batch)) = (received.delivery_id, received.batch) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        for row in batch.rows {
            let row_id = row["id"].as_str().unwrap_or_default().to_owned();
            if row_id.starts_with(&format!("s{seed}-")) {
                rows.push(row_id);
            }
        }
    }
    rows
}

/// Rows of this seed delivered under more than one delivery id: a duplicate no
/// receiver could recognise.
fn duplicated_rows(env: &Env, seed: u64) -> u64 {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for id in delivered_rows(env, seed) {
        *counts.entry(id).or_default() += 1;
    }
    counts.values().map(|n| n.saturating_sub(1)).sum()
}

//! Nothing lost silently, under injected faults on every side at once: the export
//! journey (a kick, the run through HighLevel to WebDAV) runs once per seed with
//! `custody::faults` throttling, 5xx and timeouts injected into the function's
//! DynamoDB, KMS, S3 and Secrets Manager calls (its own and the token source's), while
//! the simulated HighLevel and WebDAV inject 429 bursts, 500s, resets, slow answers and
//! 500/507s from the same seed.
//!
//! Lambda's part is played as the template configures it: an event that fails is
//! delivered up to 1 + 2 times (`EventInvokeConfig`), then it goes to the failure
//! queue, and the operator's redrive delivers it again with the AWS faults gone. An
//! invocation that ends `Continued` or `Failed` is followed by the next trigger (the
//! kick it scheduled, or the next fire of the tenant's schedule). Every seed must end
//! with one run, every message in the archive exactly once, and exactly one
//! `export.started` and one `export.completed` entry. Seeds: `FAULT_SEEDS` (100 by
//! default; `FAULT_SEED_FROM` starts later, to replay one seed). The summary line is
//! printed for `make test`'s log.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use chrono::Utc;
use custody::clock::{ManualClock, SharedClock};
use custody::faults::FaultPlan;
use custody::highlevel::Channel;
use custody::oauth::{OauthConfig, OauthDeps};
use custody_local::harness::TestStack;
use custody_sim::highlevel::{Faults, Seed, SplitMix};
use custody_sim::webdav::DavFaults;
use export::model::RunStatus;
use export::tokens::OauthTokens;
use export::{Budget, Deps, Outcome, handle_trigger};

use crate::{Archive, Env, all_time, dav_run_dir, expected, fast_limits, kick_event, tenant};

/// Lambda's attempts for an asynchronous event: the first and two retries.
const ATTEMPTS: usize = 3;
/// AWS fault bursts per thousand calls.
const RATE: u64 = 50;
/// Triggers a seed may take before it counts as stuck.
const MAX_TRIGGERS: usize = 80;

/// The export function's deps as `Env::new` builds them, on `clock`, with the AWS
/// clients (the token source's too) injecting `plan`'s faults when there is one.
fn deps_with(
    env: &Env,
    sdk: &aws_config::SdkConfig,
    plan: Option<&FaultPlan>,
    clock: SharedClock,
) -> Deps {
    let clients = custody::aws::Clients::with_faults(sdk, plan.cloned());
    let oauth_config = OauthConfig::from_lookup(|name| match name {
        "CUSTODY_OAUTH_PROVIDERS" => {
            Some(r#"[{"name":"highlevel","kind":"highlevel","client_id":"sim-client"}]"#.into())
        }
        "CUSTODY_OAUTH_CLIENT_SECRETS_ID" => Some("unused-no-refresh-happens".into()),
        custody::egress::ALLOW_LOOPBACK_VAR => Some("true".into()),
        _ => None,
    })
    .unwrap();
    let config = &env.stack.config;
    let oauth = OauthDeps::new(
        oauth_config,
        custody::store::Store::new(clients.dynamodb.clone(), &config.table, clock.clone()),
        custody::seal::Sealer::new(clients.kms.clone(), &config.data_key_id),
        custody::audit::AuditLog::from_config(&clients, config, clock.clone()),
        clients.secrets.clone(),
        env.deps.http.clone(),
    );
    let mut deps = Deps::new(
        config,
        &clients,
        env.deps.config.clone(),
        env.deps.http.clone(),
        Arc::new(OauthTokens { deps: oauth }),
        clock,
    );
    deps.sdk = Some(sdk.clone());
    deps.highlevel_retry = env.deps.highlevel_retry;
    deps.sink_retry = env.deps.sink_retry;
    deps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_export_completes_exactly_once_or_is_dead_lettered_then_completed_by_redrive() {
    let env = Env::new(fast_limits()).await;
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
    let channels = [Channel::Sms, Channel::Email, Channel::WhatsApp];
    let (mut completed, mut dead_lettered, mut duplicates) = (0u64, 0u64, 0u64);
    let (mut aws_injected, mut world_injected) = (0u64, 0u64);
    let first: u64 = std::env::var("FAULT_SEED_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..seeds {
        let mut rng = SplitMix::new(0xE4_0000 + seed);
        let tenant = tenant(&format!("awsfaults{seed}"));
        let location = format!("locAwsFaults{seed}");
        let root = format!("awsfaults{seed}");
        // Setting up (the tenant's own calls) runs without faults.
        env.connect(&tenant, &location, Some(&Seed::small(seed, 3, 40)))
            .await;
        let settings = env.webdav_settings(&root, &channels, all_time()).await;
        env.configure(&tenant, settings).await;

        // The outside world misbehaves too, from the same seed.
        env.highlevel.set_faults(Faults {
            seed: rng.next_u64(),
            burst_429: rng.below(80) as u32,
            burst_len: 1 + rng.below(3) as u32,
            error_500: rng.below(80) as u32,
            reset: rng.below(60) as u32,
            slow: 0,
            slow_by: Duration::ZERO,
        });
        env.dav.set_faults(DavFaults {
            seed: rng.next_u64(),
            error_rate: rng.below(100) as u32,
            statuses: vec![500, 507],
            methods: vec![],
            after: rng.below(10),
        });
        let before = (env.highlevel.counters(), env.dav.counters());

        // The clock moves past a lease that a failed attempt could not release (its
        // release was faulted too), as time does before Lambda's next retry.
        let clock = ManualClock::at(Utc::now());
        let shared: SharedClock = Arc::new(clock.clone());
        let plan = FaultPlan::new(seed, RATE);
        let faulty = deps_with(&env, &sdk, Some(&plan), shared.clone());
        let clean = deps_with(&env, &sdk, None, shared);
        // Some seeds also stop at a deadline now and then, and continue.
        let checks = (rng.below(3) == 0).then(|| 2 + rng.below(6) as u32);
        let budget = || checks.map_or_else(Budget::unlimited, Budget::checks);

        let mut given_up = false;
        let mut finished = false;
        let mut outcomes = Vec::new();
        'triggers: for _ in 0..MAX_TRIGGERS {
            // Each trigger is a new kick; its retries and its redrive are the same one.
            let mut event = kick_event(&tenant);
            event.kick_id = Some(ulid::Ulid::new().to_string());
            let mut failures = 0;
            let outcome = loop {
                let deps = if given_up { &clean } else { &faulty };
                match handle_trigger(deps, event.clone(), &budget()).await {
                    Ok(outcome) => break outcome,
                    Err(err) => {
                        outcomes.push(format!("error: {err}"));
                        assert!(!given_up, "seed {seed}: the redrive failed: {err}");
                        // The next delivery comes after this invocation's lease ran out.
                        clock.advance(chrono::Duration::seconds(901));
                        failures += 1;
                        if failures == ATTEMPTS {
                            // Every attempt failed: the event is in the failure queue.
                            // The redrive delivers it again once the cause (here, the
                            // AWS faults) is gone.
                            given_up = true;
                            dead_lettered += 1;
                        }
                    }
                }
            };
            outcomes.push(format!("{outcome:?}"));
            match outcome {
                // Completed now, or by an earlier delivery of this trigger whose answer
                // was an error after the run ended.
                Outcome::Completed { .. }
                | Outcome::Ended {
                    status: RunStatus::Completed,
                    ..
                }
                | Outcome::Duplicate => {
                    finished = true;
                    break 'triggers;
                }
                // A lease left by an attempt that could not release it: the next trigger
                // comes after it ran out.
                Outcome::Busy => clock.advance(chrono::Duration::seconds(901)),
                Outcome::Continued { .. } | Outcome::Failed { .. } => {}
                other => panic!("seed {seed}: unexpected {other:?}"),
            }
            // Whoever finished the run (an answer lost after its end was recorded), no
            // further trigger is needed: a new one would rightly start a new run.
            if env
                .runs(&tenant)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Completed)
            {
                finished = true;
                break;
            }
        }
        assert!(
            finished,
            "seed {seed} did not finish in {MAX_TRIGGERS} triggers: {outcomes:?}"
        );
        if !given_up {
            completed += 1;
        }
        aws_injected += plan.injected();
        let after = (env.highlevel.counters(), env.dav.counters());
        world_injected += (after.0.injected_429 + after.0.injected_500 + after.0.resets)
            - (before.0.injected_429 + before.0.injected_500 + before.0.resets)
            + (after.1.injected - before.1.injected);
        env.highlevel.clear_faults();
        env.dav.clear_faults();

        // One run, every message in it exactly once.
        let runs = env.runs(&tenant).await;
        assert_eq!(
            runs.len(),
            1,
            "seed {seed}: runs {outcomes:?} {:#?}",
            runs.iter()
                .map(|r| (&r.run_id, r.status, r.invocations, &r.errors))
                .collect::<Vec<_>>()
        );
        let run = runs.into_iter().next().unwrap();
        assert_eq!(run.status, RunStatus::Completed, "seed {seed}");
        let run_id = run.run_id.clone();
        let files = env.dav.files().await;
        let archive = Archive::verify(&files, &dav_run_dir(&root, &location, &run));
        archive.assert_exactly(&expected(
            &env.highlevel.messages(&location),
            &channels,
            run.window_start,
            run.window_end,
        ));
        // The run's start and end are each on the record once: none lost, none twice.
        let audit = env.stack.audit(TestStack::system_clock());
        assert!(
            audit.verify(&tenant).await.unwrap().is_ok(),
            "seed {seed}: the audit chain does not verify"
        );
        let entries = audit.entries(&tenant, None, None).await.unwrap();
        let target = format!("RUN#{run_id}");
        for action in ["export.started", "export.completed"] {
            let n = entries
                .iter()
                .filter(|e| e.action == action && e.target == target)
                .count();
            duplicates += n.saturating_sub(1) as u64;
            assert!(n >= 1, "seed {seed}: no {action} entry {outcomes:?}");
        }
    }
    let summary = format!(
        "fault injection (export): seeds={seeds} completed={completed} dead_lettered={dead_lettered} duplicates={duplicates} faults_injected={aws_injected} highlevel_webdav_faults={world_injected}"
    );
    println!("{summary}");
    // `make test` prints this file after the run (cargo keeps a passing test's output).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fault-injection-summary-export.txt"),
        format!("{summary}\n"),
    );
    assert_eq!(duplicates, 0);
    assert_eq!(completed + dead_lettered, seeds);
    if seeds >= 50 {
        assert!(
            dead_lettered > 0 && completed > 0,
            "completed={completed} dead_lettered={dead_lettered}"
        );
        assert!(world_injected > 0 && aws_injected > 0);
    }
}

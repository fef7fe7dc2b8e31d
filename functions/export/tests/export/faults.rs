//! Random fault schedules on both sides: HighLevel 429 bursts, 500s, connections
//! broken mid-response, slow responses; WebDAV 500 and 507 in the middle of the run;
//! and deadline stops. Whatever happens, the finished archive holds every message once.

use std::time::Duration;

use custody::highlevel::Channel;
use custody_sim::highlevel::{Faults, Seed, SplitMix};
use custody_sim::webdav::DavFaults;
use export::{Budget, Outcome, handle_trigger};

use crate::{Archive, Env, all_time, dav_run_dir, expected, fast_limits, kick_event, tenant};

const SCHEDULES: u64 = 20;

#[tokio::test]
async fn twenty_random_fault_schedules_never_lose_or_duplicate_a_message() {
    let env = Env::new(fast_limits()).await;
    let location = "locFaults01";
    env.highlevel
        .seed_location(location, &Seed::small(99, 20, 500));
    let channels = [Channel::Sms, Channel::Email, Channel::WhatsApp];
    let mut injected_total = (0u64, 0u64);
    for schedule in 0..SCHEDULES {
        let mut rng = SplitMix::new(0xFA17 + schedule);
        let tenant = tenant(&format!("faults{schedule}"));
        let root = format!("faults{schedule}");
        env.connect(&tenant, location, None).await;
        let settings = env.webdav_settings(&root, &channels, all_time()).await;
        env.configure(&tenant, settings).await;

        let highlevel_faults = Faults {
            seed: rng.next_u64(),
            burst_429: rng.below(120) as u32,
            burst_len: 1 + rng.below(4) as u32,
            error_500: rng.below(150) as u32,
            reset: rng.below(120) as u32,
            slow: rng.below(30) as u32,
            // Sometimes slower than the client's timeout (700 ms), then a retry.
            slow_by: Duration::from_millis(100 + rng.below(900)),
        };
        let dav_faults = DavFaults {
            seed: rng.next_u64(),
            error_rate: rng.below(150) as u32,
            statuses: vec![500, 507],
            methods: vec![],
            after: rng.below(40),
        };
        env.highlevel.set_faults(highlevel_faults);
        env.dav.set_faults(dav_faults.clone());
        let before = (env.highlevel.counters(), env.dav.counters());

        // Some schedules also hit the deadline now and then.
        let checks = if rng.below(2) == 0 {
            None
        } else {
            Some(3 + rng.below(20) as u32)
        };
        let mut run_id = None;
        let mut outcomes = Vec::new();
        for _ in 0..200 {
            let budget = checks.map_or_else(Budget::unlimited, Budget::checks);
            let outcome = handle_trigger(&env.deps, kick_event(&tenant), &budget)
                .await
                .unwrap();
            outcomes.push(outcome.clone());
            match outcome {
                Outcome::Completed { run_id: id, .. } => {
                    run_id = Some(id);
                    break;
                }
                Outcome::Continued { .. } | Outcome::Failed { .. } => {}
                other => panic!("schedule {schedule}: unexpected {other:?}"),
            }
        }
        let run_id = run_id.unwrap_or_else(|| {
            panic!("schedule {schedule} did not finish: {highlevel_faults:?} {dav_faults:?} {outcomes:?}")
        });
        let after = (env.highlevel.counters(), env.dav.counters());
        injected_total.0 +=
            (after.0.injected_429 + after.0.injected_500 + after.0.resets + after.0.slow)
                - (before.0.injected_429 + before.0.injected_500 + before.0.resets + before.0.slow);
        injected_total.1 += after.1.injected - before.1.injected;

        let run = env.run(&tenant, &run_id).await;
        let files = env.dav.files().await;
        let archive = Archive::verify(&files, &dav_run_dir(&root, location, &run));
        let want = expected(
            &env.highlevel.messages(location),
            &channels,
            run.window_start,
            run.window_end,
        );
        archive.assert_exactly(&want);
        assert_eq!(
            env.runs(&tenant).await.len(),
            1,
            "schedule {schedule}: one run"
        );
    }
    env.highlevel.clear_faults();
    env.dav.clear_faults();
    // The schedules really did inject faults on both sides.
    assert!(
        injected_total.0 > 50,
        "HighLevel faults: {}",
        injected_total.0
    );
    assert!(injected_total.1 > 20, "WebDAV faults: {}", injected_total.1);
}

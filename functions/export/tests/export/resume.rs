//! A run stopped at its deadline continues in the next invocation, and ends exactly
//! like an uninterrupted run.

use std::collections::BTreeMap;

use custody::highlevel::Channel;
use custody_sim::highlevel::Seed;
use export::kick::kick_name;
use export::model::RunStatus;
use export::{Budget, Outcome};
use serde_json::Value;

use crate::{Archive, Env, all_time, dav_run_dir, expected, fast_limits, tenant};

/// The content of each conversation file without run-specific fields.
fn contents(archive: &Archive) -> BTreeMap<String, (Value, Value)> {
    archive
        .files
        .iter()
        .map(|(path, doc)| {
            (
                path.clone(),
                (doc["conversation"].clone(), doc["messages"].clone()),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_run_stopped_at_its_deadline_continues_and_equals_an_uninterrupted_run() {
    let env = Env::new(fast_limits()).await;
    let location = "locResume01";
    env.highlevel
        .seed_location(location, &Seed::small(17, 45, 2500));
    let channels = [Channel::Sms, Channel::Email, Channel::Call];

    let whole = tenant("whole");
    env.connect(&whole, location, None).await;
    let settings = env.webdav_settings("whole", &channels, all_time()).await;
    env.configure(&whole, settings).await;
    let (whole_run, _) = env.run_to_completion(&whole, 1, Budget::unlimited).await;

    let parts = tenant("parts");
    env.connect(&parts, location, None).await;
    let settings = env.webdav_settings("parts", &channels, all_time()).await;
    env.configure(&parts, settings).await;
    // Each invocation may pass 4 checkpoints before its time is up.
    let (parts_run, outcomes) = env
        .run_to_completion(&parts, 100, || Budget::checks(4))
        .await;
    let continued = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Continued { .. }))
        .count();
    assert!(continued >= 10, "stopped in every phase: {outcomes:?}");
    assert!(outcomes.iter().all(|o| match o {
        Outcome::Continued { run_id } | Outcome::Completed { run_id, .. } => *run_id == parts_run,
        _ => false,
    }));

    // Each stop scheduled its continuation: a one-time schedule delivering kick.json.
    let kick = env
        .stack
        .clients
        .scheduler
        .get_schedule()
        .name(kick_name(&parts))
        .group_name(&env.stack.config.schedule_group)
        .send()
        .await
        .unwrap();
    assert!(kick.schedule_expression().unwrap().starts_with("at("));
    let input: Value = serde_json::from_str(kick.target().unwrap().input().unwrap()).unwrap();
    assert_eq!(input["tenant_id"], "parts");

    let files = env.dav.files().await;
    let whole_run = env.run(&whole, &whole_run).await;
    let parts_run = env.run(&parts, &parts_run).await;
    assert_eq!(parts_run.status, RunStatus::Completed);
    assert_eq!(parts_run.invocations as usize, outcomes.len());
    let a = Archive::verify(&files, &dav_run_dir("whole", location, &whole_run));
    let b = Archive::verify(&files, &dav_run_dir("parts", location, &parts_run));
    let want = expected(
        &env.highlevel.messages(location),
        &channels,
        None,
        parts_run.window_end,
    );
    a.assert_exactly(&want);
    b.assert_exactly(&want);
    assert_eq!(contents(&a), contents(&b));
    assert_eq!(a.manifest["totals"], b.manifest["totals"]);
    assert_eq!(
        (whole_run.conversations, whole_run.messages),
        (parts_run.conversations, parts_run.messages)
    );
    let runs = env.runs(&parts).await;
    assert_eq!(runs.len(), 1);
}

#[tokio::test]
async fn a_run_that_crashed_mid_way_resumes_from_its_checkpoint() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locCrash01";
    env.connect(&acme, location, Some(&Seed::small(23, 30, 900)))
        .await;
    let settings = env
        .webdav_settings("crash", &[Channel::Sms], all_time())
        .await;
    env.configure(&acme, settings).await;
    // The destination fails for good part-way through: the run fails, keeps its
    // checkpoint and stays the tenant's active run.
    env.dav.fail_next(507, 10_000);
    let first = export::handle_trigger(&env.deps, crate::kick_event(&acme), &Budget::unlimited())
        .await
        .unwrap();
    let Outcome::Failed { run_id, error } = first else {
        panic!("{first:?}");
    };
    assert!(error.contains("507"), "{error}");
    let failed = env.run(&acme, &run_id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.errors[0].kind, "destination");
    env.dav.clear_faults();
    let (resumed, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    assert_eq!(resumed, run_id, "the same run resumed");
    let run = env.run(&acme, &run_id).await;
    let archive = Archive::verify(
        &env.dav.files().await,
        &dav_run_dir("crash", location, &run),
    );
    archive.assert_exactly(&expected(
        &env.highlevel.messages(location),
        &[Channel::Sms],
        run.window_start,
        run.window_end,
    ));
}

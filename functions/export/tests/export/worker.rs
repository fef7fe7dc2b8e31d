//! Full exports, filters, S3, rate limits, duplicates and connection states.

use std::time::Duration;

use custody::highlevel::Channel;
use custody::oauth::ConnectionStatus;
use custody_sim::highlevel::{Limits, Seed};
use export::model::RunStatus;
use export::{Budget, Outcome, handle_trigger};

use crate::{
    Archive, Env, all_time, at, dav_run_dir, expected, fast_limits, kick_event, schedule_event,
    tenant,
};

#[tokio::test]
async fn full_export_of_the_seeded_location_to_webdav() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locSeedStandard01";
    env.connect(&acme, location, Some(&Seed::standard(1))).await;
    let settings = env
        .webdav_settings("exports", &Channel::ALL, all_time())
        .await;
    env.configure(&acme, settings).await;

    let (run_id, outcomes) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let run = env.run(&acme, &run_id).await;
    assert_eq!(run.status, RunStatus::Completed);

    let files = env.dav.files().await;
    let archive = Archive::verify(&files, &dav_run_dir("exports", location, &run));
    let seeded = env.highlevel.messages(location);
    let want = expected(&seeded, &Channel::ALL, run.window_start, run.window_end);
    assert!(
        want.len() > 19_000,
        "almost every seeded message has a channel"
    );
    archive.assert_exactly(&want);

    // One file per conversation touched, each holding only its own messages.
    let conversations: std::collections::HashSet<&str> = seeded
        .iter()
        .filter(|m| want.contains(&m.id))
        .map(|m| m.conversation_id.as_str())
        .collect();
    assert_eq!(archive.files.len(), conversations.len());
    assert_eq!(archive.files.len(), 500);
    for document in archive.files.values() {
        let id = document["conversation"]["id"].as_str().unwrap();
        let messages = document["messages"].as_array().unwrap();
        assert!(
            messages.iter().all(|m| {
                seeded
                    .iter()
                    .find(|s| s.id == m["id"])
                    .is_some_and(|s| s.conversation_id == id)
            }) || messages.is_empty()
        );
        // Stable names, ISO-8601 times, in order.
        let times: Vec<&str> = messages
            .iter()
            .map(|m| m["date_added"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times.iter().all(|t| t.ends_with('Z') && t.len() == 24));
    }
    assert_eq!(run.messages, want.len() as u64);
    assert_eq!(run.conversations, 500);
    assert_eq!(archive.manifest["totals"]["conversations"], 500);
    assert!(
        matches!(outcomes[0], Outcome::Completed { messages, .. } if messages == want.len() as u64)
    );

    // The export log and the audit trail record it.
    let actions: Vec<String> = env
        .stack
        .audit(custody_local::harness::TestStack::system_clock())
        .entries(&acme, None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"export.started".to_owned()));
    assert!(actions.contains(&"export.completed".to_owned()));
}

#[tokio::test]
async fn channel_and_date_filters_are_respected() {
    let env = Env::new(fast_limits()).await;
    let location = "locFilters01";
    env.highlevel
        .seed_location(location, &Seed::small(11, 60, 3000));
    let seeded = env.highlevel.messages(location);
    let cases: [(&str, Vec<Channel>); 3] = [
        ("sms-email", vec![Channel::Sms, Channel::Email]),
        ("whatsapp", vec![Channel::WhatsApp]),
        (
            "social",
            vec![Channel::Instagram, Channel::Facebook, Channel::Call],
        ),
    ];
    for (name, channels) in cases {
        let tenant = tenant(name);
        env.connect(&tenant, location, None).await;
        let range = serde_json::json!({"mode": "fixed", "start": "2025-02-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"});
        let settings = env.webdav_settings(name, &channels, range).await;
        env.configure(&tenant, settings).await;
        let (run_id, _) = env.run_to_completion(&tenant, 1, Budget::unlimited).await;
        let run = env.run(&tenant, &run_id).await;
        assert_eq!(run.window_start, Some(at("2025-02-01T00:00:00Z")));
        assert_eq!(run.window_end, at("2025-04-01T00:00:00Z"));
        let files = env.dav.files().await;
        let archive = Archive::verify(&files, &dav_run_dir(name, location, &run));
        let want = expected(&seeded, &channels, run.window_start, run.window_end);
        assert!(!want.is_empty());
        archive.assert_exactly(&want);
        for document in archive.files.values() {
            for message in document["messages"].as_array().unwrap() {
                let channel: Channel = serde_json::from_value(message["channel"].clone()).unwrap();
                assert!(channels.contains(&channel), "{name}: {channel}");
            }
        }
    }
}

#[tokio::test]
async fn full_export_to_an_s3_destination_bucket() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locS3Export01";
    env.connect(&acme, location, Some(&Seed::small(5, 80, 3000)))
        .await;
    // The customer's bucket: not ours, so not in the template.
    let bucket = format!("customer-archive-{}", env.stack.provisioned.stage);
    let s3 = &env.stack.clients.s3;
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let role = env.customer_role("custody-writer", acme.as_str()).await;
    let settings = serde_json::json!({
        "schedule": {"expression": "rate(1 day)", "timezone": "UTC"},
        "channels": Channel::ALL,
        "date_range": all_time(),
        "destination": {"type": "s3", "bucket": bucket, "prefix": "/custody/exports/",
                        "role_arn": role}
    });
    env.configure(&acme, settings).await;
    let (run_id, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let run = env.run(&acme, &run_id).await;

    // Read everything back from the bucket.
    let mut objects = std::collections::BTreeMap::new();
    let mut token = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket(&bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap();
        for object in out.contents() {
            let key = object.key().unwrap().to_owned();
            let body = s3
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
            let bytes = body.body.collect().await.unwrap().into_bytes().to_vec();
            objects.insert(key, bytes);
        }
        match out.next_continuation_token() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    let dir = format!(
        "custody/exports/{}",
        export::archive::run_dir(location, &run)
    );
    let archive = Archive::verify(&objects, &dir);
    let want = expected(
        &env.highlevel.messages(location),
        &Channel::ALL,
        run.window_start,
        run.window_end,
    );
    archive.assert_exactly(&want);
    assert_eq!(archive.files.len(), 80);
}

#[tokio::test]
async fn steady_state_stays_within_the_limit_without_a_single_429() {
    // A tight window (20 requests per second) so the limiter must pace the run.
    let limits = Limits {
        max: 20,
        interval: Duration::from_secs(1),
        daily: 200_000,
    };
    let env = Env::new(limits).await;
    let acme = tenant("acme");
    let location = "locSteady01";
    env.connect(&acme, location, Some(&Seed::small(21, 100, 3000)))
        .await;
    let settings = env
        .webdav_settings("steady", &[Channel::Sms, Channel::Call], all_time())
        .await;
    env.configure(&acme, settings).await;
    env.highlevel.reset_counters();
    let (run_id, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let counters = env.highlevel.counters();
    assert!(
        counters.requests > 80,
        "the run spans several windows: {counters:?}"
    );
    assert_eq!(counters.rate_limited, 0, "{counters:?}");
    assert!(counters.peak_in_window <= 20, "{counters:?}");
    let run = env.run(&acme, &run_id).await;
    assert_eq!(run.throttled, 0);
    assert_eq!(run.requests, counters.requests);
}

#[tokio::test]
async fn the_same_schedule_event_delivered_twice_is_one_run() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    env.connect(&acme, "locTwice01", Some(&Seed::small(3, 20, 400)))
        .await;
    let settings = env
        .webdav_settings("twice", &[Channel::Sms, Channel::Call], all_time())
        .await;
    env.configure(&acme, settings).await;

    // Concurrently: one runs, the other is a no-op.
    let event = schedule_event(&acme, "2025-06-30T03:00:00Z");
    let budget_a = Budget::unlimited();
    let budget_b = Budget::unlimited();
    let (a, b) = tokio::join!(
        handle_trigger(&env.deps, event.clone(), &budget_a),
        handle_trigger(&env.deps, event.clone(), &budget_b)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let completed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Completed { .. }))
        .count();
    assert_eq!(completed, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Duplicate | Outcome::Busy)),
        "{outcomes:?}"
    );
    // Later, once more: still a no-op.
    let again = handle_trigger(&env.deps, event, &Budget::unlimited())
        .await
        .unwrap();
    assert_eq!(again, Outcome::Duplicate);
    assert_eq!(env.runs(&acme).await.len(), 1);

    // The next scheduled time is a new run, exporting only what is new ("since last
    // run" would; a fixed range exports its range again).
    let next = handle_trigger(
        &env.deps,
        schedule_event(&acme, "2025-07-01T03:00:00Z"),
        &Budget::unlimited(),
    )
    .await
    .unwrap();
    assert!(matches!(next, Outcome::Completed { .. }), "{next:?}");
    assert_eq!(env.runs(&acme).await.len(), 2);
}

/// A kick delivered again after its run ended (its first answer lost: Lambda retries,
/// or an operator redrives it) starts no second run; another kick does.
#[tokio::test]
async fn the_same_kick_delivered_again_after_its_run_ended_is_one_run() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    env.connect(&acme, "locKickTwice", Some(&Seed::small(4, 5, 60)))
        .await;
    let settings = env
        .webdav_settings("kicktwice", &[Channel::Sms], all_time())
        .await;
    env.configure(&acme, settings).await;
    // What `kick::kick` schedules: the input carries the kick's own id.
    let input: serde_json::Value = serde_json::from_str(&export::kick::kick_input(&acme)).unwrap();
    let kick: export::TriggerEvent = serde_json::from_value(input).unwrap();
    assert!(kick.kick_id.is_some());

    let first = handle_trigger(&env.deps, kick.clone(), &Budget::unlimited())
        .await
        .unwrap();
    assert!(matches!(first, Outcome::Completed { .. }), "{first:?}");
    let again = handle_trigger(&env.deps, kick, &Budget::unlimited())
        .await
        .unwrap();
    assert_eq!(again, Outcome::Duplicate);
    assert_eq!(env.runs(&acme).await.len(), 1);

    let other: export::TriggerEvent =
        serde_json::from_str(&export::kick::kick_input(&acme)).unwrap();
    let next = handle_trigger(&env.deps, other, &Budget::unlimited())
        .await
        .unwrap();
    assert!(matches!(next, Outcome::Completed { .. }), "{next:?}");
    assert_eq!(env.runs(&acme).await.len(), 2);
}

#[tokio::test]
async fn since_last_run_windows_touch_so_nothing_is_lost_or_repeated() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locSince01";
    env.connect(&acme, location, Some(&Seed::small(8, 30, 900)))
        .await;
    let range = serde_json::json!({"mode": "since_last_run", "initial_days": 3650});
    let settings = env
        .webdav_settings("since", &[Channel::Sms, Channel::Email], range)
        .await;
    env.configure(&acme, settings).await;
    let (first, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let (second, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let first = env.run(&acme, &first).await;
    let second = env.run(&acme, &second).await;
    assert_eq!(second.window_start, Some(first.window_end));
    assert_eq!(second.messages, 0, "nothing new since the first run");
    assert!(first.messages > 0);
}

#[tokio::test]
async fn no_connection_or_needs_reconsent_ends_the_run_with_a_clear_status_and_no_retries() {
    let env = Env::new(fast_limits()).await;
    let settings = env
        .webdav_settings("noconn", &[Channel::Sms], all_time())
        .await;
    let cases = [
        ("never", None, RunStatus::NotConnected),
        (
            "reconsent",
            Some(ConnectionStatus::NeedsReconsent),
            RunStatus::NeedsReconsent,
        ),
    ];
    for (name, connection, status) in cases {
        let tenant = tenant(name);
        if let Some(connection) = connection {
            let token = env.highlevel.issue_token("locNoConn");
            env.store_connection(&tenant, "locNoConn", &token, connection)
                .await;
        }
        env.configure(&tenant, settings.clone()).await;
        env.highlevel.reset_counters();
        let outcome = handle_trigger(&env.deps, kick_event(&tenant), &Budget::unlimited())
            .await
            .unwrap();
        let Outcome::Ended {
            run_id,
            status: ended,
        } = outcome
        else {
            panic!("{name}: {outcome:?}");
        };
        assert_eq!(ended, status);
        let run = env.run(&tenant, &run_id).await;
        assert_eq!(run.status, status);
        assert!(run.finished_at.is_some());
        assert_eq!(run.errors.len(), 1);
        assert_eq!(run.errors[0].kind, "connection");
        // No calls to HighLevel, no follow-up invocation scheduled.
        assert_eq!(env.highlevel.counters().requests, 0);
        let kick = env
            .stack
            .clients
            .scheduler
            .get_schedule()
            .name(export::kick::kick_name(&tenant))
            .group_name(&env.stack.config.schedule_group)
            .send()
            .await;
        assert!(kick.is_err(), "{name}: no follow-up");
        // The run is over: the next trigger starts a new one, which ends the same way.
        let again = handle_trigger(&env.deps, kick_event(&tenant), &Budget::unlimited())
            .await
            .unwrap();
        assert!(matches!(again, Outcome::Ended { status: s, .. } if s == status));
        assert_eq!(env.runs(&tenant).await.len(), 2);
    }
}

#[tokio::test]
async fn a_refused_token_fails_the_run_and_the_next_trigger_resumes_it() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locRevoked01";
    env.highlevel
        .seed_location(location, &Seed::small(4, 20, 500));
    // A stored token the API does not accept.
    env.store_connection(&acme, location, "revoked-token", ConnectionStatus::Active)
        .await;
    let settings = env
        .webdav_settings("revoked", &[Channel::Sms], all_time())
        .await;
    env.configure(&acme, settings).await;
    let outcome = handle_trigger(&env.deps, kick_event(&acme), &Budget::unlimited())
        .await
        .unwrap();
    let Outcome::Failed { run_id, error } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(error.contains("401"), "{error}");
    assert_eq!(env.highlevel.counters().unauthorized, 1, "not retried");
    // Reconnected: the same run resumes and completes.
    env.connect(&acme, location, None).await;
    let (completed, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    assert_eq!(completed, run_id);
    let run = env.run(&acme, &run_id).await;
    assert_eq!(run.invocations, 2);
    assert_eq!(run.errors.len(), 1);
}

/// The account-deletion fence: once `DELETE /account` has started, a trigger exports
/// nothing and writes nothing (not even the lease), and settings are refused.
#[tokio::test]
async fn an_account_being_deleted_is_not_exported_and_gets_no_settings() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    env.connect(&acme, "locFenced01", Some(&Seed::small(5, 3, 20)))
        .await;
    let settings = env
        .webdav_settings("fenced", &[Channel::Sms], all_time())
        .await;
    env.configure(&acme, settings.clone()).await;
    let job = custody::privacy::AccountDeletion::new(&acme, "user:admin", chrono::Utc::now());
    env.deps.store.create(&job).await.unwrap();

    let outcome = handle_trigger(&env.deps, kick_event(&acme), &Budget::unlimited())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::AccountClosing);
    assert!(env.runs(&acme).await.is_empty());
    assert!(
        env.deps
            .store
            .get_item(&export::model::ExportState::key_of(&acme))
            .await
            .unwrap()
            .is_none(),
        "no lease written"
    );
    assert_eq!(env.highlevel.counters().requests, 0);

    let request = crate::api::request(
        include_str!("../../../../events/export/put_settings.json"),
        &acme,
        "admin",
        Some(settings),
    );
    let response = export::handle_http(&env.deps, request).await;
    assert_eq!(response.status(), 409);
}

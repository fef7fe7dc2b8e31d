//! The pipelined worker (discovery and conversations in flight together, committed in
//! work-list order) writes what a one-conversation-at-a-time run would: every file
//! once, each exactly the document of its conversation, and a manifest that is the
//! whole-document encoding of the run's files; and a run stopped mid-way by its budget
//! resumes without a gap or a second write.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use custody::highlevel::{Channel, Message};
use custody::retention::TTL_ATTRIBUTE;
use custody::store::Entity as _;
use custody::store::keys;
use custody_sim::highlevel::{Seed, SimMessage};
use export::model::{ExportRun, Phase, RunFile, RunPage, RunSeen, RunStatus};
use export::{Budget, Outcome};

use crate::{Archive, Env, all_time, dav_run_dir, expected, fast_limits, tenant};

/// The seeded messages as the client reads them (the simulator's JSON shape).
fn as_messages(seeded: &[SimMessage]) -> Vec<Message> {
    seeded
        .iter()
        .map(|m| serde_json::from_value(serde_json::to_value(m).unwrap()).unwrap())
        .collect()
}

/// Every file a run over `channels` must hold, byte for byte: one per conversation with
/// a selected message, its messages sorted, encoded by `export::archive`.
fn expected_files(
    run: &ExportRun,
    location: &str,
    seeded: &[SimMessage],
    channels: &[Channel],
) -> BTreeMap<String, Vec<u8>> {
    let mut by_conversation: HashMap<String, Vec<Message>> = HashMap::new();
    for message in as_messages(seeded) {
        let selected = message.channel().is_some_and(|c| channels.contains(&c))
            && run.window_start.is_none_or(|s| message.date_added >= s)
            && message.date_added < run.window_end;
        if selected {
            by_conversation
                .entry(message.conversation_id.clone())
                .or_default()
                .push(message);
        }
    }
    by_conversation
        .into_iter()
        .map(|(id, mut messages)| {
            messages.sort_by(|a, b| (a.date_added, &a.id).cmp(&(b.date_added, &b.id)));
            let content =
                export::archive::conversation_file(run, location, &id, &messages).unwrap();
            (export::archive::conversation_path(&id), content)
        })
        .collect()
}

/// The run's files on the WebDAV server, relative to its directory (manifest aside).
fn run_files_on_server(
    all: &BTreeMap<String, Vec<u8>>,
    root: &str,
    location: &str,
    run: &ExportRun,
) -> BTreeMap<String, Vec<u8>> {
    let prefix = format!("{}/", dav_run_dir(root, location, run));
    all.iter()
        .filter_map(|(path, bytes)| {
            let relative = path.strip_prefix(&prefix)?;
            (relative != export::archive::MANIFEST_NAME)
                .then(|| (relative.to_owned(), bytes.clone()))
        })
        .collect()
}

pub(crate) async fn stored_files(env: &Env, run: &ExportRun) -> Vec<RunFile> {
    env.deps
        .store
        .query_all::<RunFile>(
            &keys::tenant(&run.tenant),
            &format!("RUNFILE#{}#", run.run_id),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pipelined_run_over_many_pages_writes_each_file_once_with_the_expected_bytes() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locPipeline01";
    // 4 000 messages: 8 discovery pages of the unfiltered query and more of the Email
    // one, 300 conversations over several work-list pages.
    env.connect(&acme, location, Some(&Seed::small(4242, 300, 4000)))
        .await;
    let channels = Channel::ALL;
    let settings = env.webdav_settings("pipeline", &channels, all_time()).await;
    env.configure(&acme, settings).await;
    let before = env.dav.counters();
    let (run_id, outcomes) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let after = env.dav.counters();
    let run = env.run(&acme, &run_id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert!(run.pages > 1, "several work-list pages: {}", run.pages);

    let seeded = env.highlevel.messages(location);
    let all = env.dav.files().await;
    let archive = Archive::verify(&all, &dav_run_dir("pipeline", location, &run));
    archive.assert_exactly(&expected(
        &seeded,
        &channels,
        run.window_start,
        run.window_end,
    ));
    // Byte for byte the documents of a sequential run (they depend only on the run and
    // the conversation's messages).
    let want = expected_files(&run, location, &seeded, &channels);
    let got = run_files_on_server(&all, "pipeline", location, &run);
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "a file differs from its conversation's document"
    );
    // The manifest is the whole-document encoding of the run's files.
    let manifest = &all[&format!(
        "{}/{}",
        dav_run_dir("pipeline", location, &run),
        export::archive::MANIFEST_NAME
    )];
    let files = stored_files(&env, &run).await;
    assert_eq!(
        *manifest,
        export::archive::manifest(&run, location, &files).unwrap()
    );
    // Each file delivered once: one PUT (to its temporary name) and one MOVE per file,
    // the manifest's included.
    let writes = want.len() as u64 + 1;
    assert_eq!(
        (after.puts - before.puts, after.moves - before.moves),
        (writes, writes)
    );
    assert_eq!(run.conversations, want.len() as u64);
    assert!(
        matches!(outcomes[..], [Outcome::Completed { conversations, .. }] if conversations == want.len() as u64)
    );
}

#[tokio::test]
async fn a_run_stopped_by_its_budget_resumes_without_a_gap_or_a_second_write() {
    let env = Env::new(fast_limits()).await;
    let location = "locPipeline02";
    env.highlevel
        .seed_location(location, &Seed::small(4343, 120, 2600));
    let channels = [Channel::Sms, Channel::Email, Channel::WhatsApp];

    let whole = tenant("whole");
    env.connect(&whole, location, None).await;
    let settings = env.webdav_settings("whole", &channels, all_time()).await;
    env.configure(&whole, settings).await;
    let (whole_run, _) = env.run_to_completion(&whole, 1, Budget::unlimited).await;
    let whole_run = env.run(&whole, &whole_run).await;

    let parts = tenant("parts");
    env.connect(&parts, location, None).await;
    let settings = env.webdav_settings("parts", &channels, all_time()).await;
    env.configure(&parts, settings).await;
    let before = env.dav.counters();
    // Each invocation stops after a few steps, with conversations still in flight.
    let mut positions = Vec::new();
    let mut outcomes = Vec::new();
    let mut run_id = None;
    for _ in 0..200 {
        let outcome =
            export::handle_trigger(&env.deps, crate::kick_event(&parts), &Budget::checks(7))
                .await
                .unwrap();
        outcomes.push(outcome.clone());
        match outcome {
            Outcome::Continued { run_id: id } => {
                let run = env.run(&parts, &id).await;
                positions.push((run.write_page, run.write_offset, run.conversations));
                run_id = Some(id);
            }
            Outcome::Completed { run_id: id, .. } => {
                run_id = Some(id);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let run_id = run_id.unwrap();
    assert!(
        matches!(outcomes.last(), Some(Outcome::Completed { .. })),
        "{outcomes:?}"
    );
    assert!(
        outcomes.len() > 10,
        "stopped many times: {}",
        outcomes.len()
    );
    // The checkpoint only moves forward.
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{positions:?}");
    let after = env.dav.counters();
    let run = env.run(&parts, &run_id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.invocations as usize, outcomes.len());

    let all = env.dav.files().await;
    let a = Archive::verify(&all, &dav_run_dir("whole", location, &whole_run));
    let b = Archive::verify(&all, &dav_run_dir("parts", location, &run));
    let want = expected(
        &env.highlevel.messages(location),
        &channels,
        None,
        run.window_end,
    );
    a.assert_exactly(&want);
    b.assert_exactly(&want);
    assert_eq!(a.manifest["totals"], b.manifest["totals"]);
    assert_eq!(
        (whole_run.conversations, whole_run.messages),
        (run.conversations, run.messages)
    );
    // No gap and no second write: every stop waited for the steps in flight and
    // committed them, so each file went to the destination exactly once.
    let writes = b.files.len() as u64 + 1;
    assert_eq!(
        (after.puts - before.puts, after.moves - before.moves),
        (writes, writes)
    );
}

/// Discovery marks a page's conversations seen only after the page's checkpoint, so a
/// crash between the two leaves a committed page without its `RunSeen` items. Each
/// stop here is turned into that crash (the last page's items deleted, `seen_pages`
/// moved back): the resumed run must write them again before it reads the next page,
/// or those conversations would be listed, written and counted twice.
#[tokio::test]
async fn a_crash_between_a_discovery_checkpoint_and_its_seen_marks_lists_nothing_twice() {
    let env = Env::new(fast_limits()).await;
    let location = "locPipeline03";
    // Two messages per conversation on average, spread over the whole window, so
    // later discovery pages meet conversations earlier pages listed.
    env.highlevel
        .seed_location(location, &Seed::small(4545, 600, 1300));
    let channels = Channel::ALL;
    let acme = tenant("crash");
    env.connect(&acme, location, None).await;
    let settings = env.webdav_settings("crash", &channels, all_time()).await;
    env.configure(&acme, settings).await;
    let before = env.dav.counters();
    let mut run_id = None;
    let mut rewound = 0;
    let mut discovering = true;
    for _ in 0..200 {
        // Short invocations while discovery lasts, then one to the end.
        let budget = if discovering {
            Budget::checks(3)
        } else {
            Budget::unlimited()
        };
        let outcome = export::handle_trigger(&env.deps, crate::kick_event(&acme), &budget)
            .await
            .unwrap();
        match outcome {
            Outcome::Continued { run_id: id } => {
                let mut run = env.run(&acme, &id).await;
                discovering = run.phase == Phase::Discover;
                if discovering && run.pages > 0 {
                    let last = run.pages - 1;
                    let pk = keys::tenant(&run.tenant);
                    let seen = env
                        .deps
                        .store
                        .query_all::<RunSeen>(&pk, &format!("RUNSEEN#{}#", run.run_id))
                        .await
                        .unwrap();
                    let mut deleted = 0;
                    for item in seen.iter().filter(|s| s.page == last) {
                        env.deps.store.delete(&item.key()).await.unwrap();
                        deleted += 1;
                    }
                    assert!(deleted > 0, "page {last} had its seen items");
                    run.seen_pages = last;
                    env.deps.store.put(&run).await.unwrap();
                    rewound += 1;
                }
                run_id = Some(id);
            }
            Outcome::Completed { run_id: id, .. } => {
                run_id = Some(id);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(rewound >= 3, "crashed during discovery {rewound} times");
    let run = env.run(&acme, &run_id.unwrap()).await;
    assert_eq!(run.status, RunStatus::Completed);
    // Each conversation on the work list once.
    let pk = keys::tenant(&run.tenant);
    let pages = env
        .deps
        .store
        .query_all::<RunPage>(&pk, &format!("RUNPAGE#{}#", run.run_id))
        .await
        .unwrap();
    let listed: Vec<&String> = pages.iter().flat_map(|p| &p.conversation_ids).collect();
    let distinct: std::collections::HashSet<&String> = listed.iter().copied().collect();
    assert_eq!(listed.len(), distinct.len(), "a conversation listed twice");

    let seeded = env.highlevel.messages(location);
    let all = env.dav.files().await;
    let archive = Archive::verify(&all, &dav_run_dir("crash", location, &run));
    archive.assert_exactly(&expected(&seeded, &channels, None, run.window_end));
    assert_eq!(run.conversations, archive.files.len() as u64);
    assert_eq!(distinct.len(), archive.files.len());
    let after = env.dav.counters();
    let writes = archive.files.len() as u64 + 1;
    assert_eq!(
        (after.puts - before.puts, after.moves - before.moves),
        (writes, writes)
    );

    // Every work item of the run (one mark per listed conversation, the pages, the
    // files) carries the run's expiry as the table's TTL attribute, read raw, so TTL
    // removes them with the export log.
    for prefix in ["RUNSEEN#", "RUNPAGE#", "RUNFILE#"] {
        let items = env
            .deps
            .store
            .client()
            .query()
            .table_name(env.deps.store.table())
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
            .expression_attribute_values(
                ":prefix",
                AttributeValue::S(format!("{prefix}{}#", run.run_id)),
            )
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        match prefix {
            // The marks a stop took away after the last discovery page are not
            // written again: discovery was over, nothing asks for them.
            "RUNSEEN#" => assert!(
                !items.is_empty() && items.len() <= distinct.len(),
                "{} marks for {} listed conversations",
                items.len(),
                distinct.len()
            ),
            "RUNPAGE#" => assert_eq!(items.len(), pages.len()),
            _ => assert_eq!(items.len(), archive.files.len()),
        }
        for item in &items {
            assert_eq!(
                item.get(TTL_ATTRIBUTE),
                Some(&AttributeValue::N(run.expires_at.to_string())),
                "{prefix} item without the run's expiry: {item:?}"
            );
        }
    }
}

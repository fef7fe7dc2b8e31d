//! Exports leave out suppressed subjects (`custody::suppression`): contacts under a
//! restriction always, contacts who withdrew consent for `export` with the settings'
//! `exclude_withdrawn_consent`. A left-out conversation is not written (no file, no
//! manifest entry), is counted on the run, and its content appears nowhere.

use std::collections::{BTreeMap, HashSet};

use custody::TenantId;
use custody::highlevel::Channel;
use custody::subject::{Identifier, PseudonymKey};
use custody::suppression::{EXPORT_PURPOSE, Scope, lift, suppress};
use custody_sim::highlevel::{Seed, SimMessage};
use export::model::{ExportRun, RunStatus};
use export::{Budget, Outcome};
use serde_json::Value;

use crate::{
    Archive, Env, all_time, dav_run_dir, expected, fast_limits, kick_event, logs, raw_table_dump,
    tenant,
};

/// The tenant's pseudonym key, from the stack's application secret.
async fn pseudonym_key(env: &Env, tenant: &TenantId) -> PseudonymKey {
    let secret = custody::subject::load_app_secret(
        &env.stack.clients.secrets,
        &env.stack.config.pseudonym_secret_id,
    )
    .await
    .unwrap();
    PseudonymKey::derive(&secret, tenant)
}

fn pseudonym(key: &PseudonymKey, contact: &str) -> String {
    key.pseudonym(&Identifier::contact_id(contact).unwrap())
        .to_string()
}

/// A conversation of the seeded location, as the test needs it.
#[derive(Debug, Clone)]
struct Conversation {
    id: String,
    contact: String,
    /// Ids of its messages a run over every channel exports.
    exported: HashSet<String>,
    /// Every body of it.
    bodies: Vec<String>,
}

/// The conversations an export over every channel writes, by id.
fn conversations(
    messages: &[SimMessage],
    want: &HashSet<String>,
) -> BTreeMap<String, Conversation> {
    let mut by_id: BTreeMap<String, Conversation> = BTreeMap::new();
    for message in messages {
        let entry = by_id
            .entry(message.conversation_id.clone())
            .or_insert_with(|| Conversation {
                id: message.conversation_id.clone(),
                contact: message.contact_id.clone(),
                exported: HashSet::new(),
                bodies: Vec::new(),
            });
        assert_eq!(
            entry.contact, message.contact_id,
            "one contact per conversation"
        );
        entry.bodies.push(message.body.clone());
        if want.contains(&message.id) {
            entry.exported.insert(message.id.clone());
        }
    }
    by_id.retain(|_, c| !c.exported.is_empty());
    by_id
}

/// Every file under the run's directory, as one text.
async fn run_files_text(env: &Env, root: &str, location: &str, run: &ExportRun) -> String {
    let dir = format!("{}/", dav_run_dir(root, location, run));
    env.dav
        .files()
        .await
        .iter()
        .filter(|(path, _)| path.starts_with(&dir))
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .collect()
}

/// The `export.completed` entry of `run_id`.
async fn completed_entry(
    env: &Env,
    tenant: &TenantId,
    run_id: &str,
) -> serde_json::Map<String, Value> {
    env.stack
        .audit(custody_local::harness::TestStack::system_clock())
        .entries(tenant, None, None)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.action == "export.completed" && e.target == format!("RUN#{run_id}"))
        .unwrap_or_else(|| panic!("no export.completed for {run_id}"))
        .details
}

/// The run as `GET /export/runs` shows it.
async fn run_shown(env: &Env, tenant: &TenantId, run_id: &str) -> Value {
    let page = export::routes::runs_page(&env.deps, tenant, 100, None)
        .await
        .unwrap();
    page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run_id)
        .cloned()
        .unwrap()
}

/// Asserts that nothing of `left_out` is in the run's files (manifest included), its
/// record, its log entry or the audit table.
async fn assert_nowhere(
    env: &Env,
    tenant: &TenantId,
    root: &str,
    location: &str,
    run: &ExportRun,
    left_out: &[&Conversation],
) {
    let files = run_files_text(env, root, location, run).await;
    let record = serde_json::to_string(run).unwrap();
    let shown = run_shown(env, tenant, &run.run_id).await.to_string();
    let audit = raw_table_dump(&env.stack.clients.dynamodb, &env.stack.config.audit_table).await;
    let captured = logs().contents();
    for conversation in left_out {
        for (name, text) in [
            ("destination files", &files),
            ("run record", &record),
            ("runs API", &shown),
            ("audit table", &audit),
        ] {
            assert!(
                !text.contains(&conversation.id),
                "conversation id in the {name}"
            );
            assert!(
                !text.contains(&conversation.contact),
                "contact id in the {name}"
            );
        }
        for body in &conversation.bodies {
            for (name, text) in [
                ("destination files", &files),
                ("run record", &record),
                ("runs API", &shown),
                ("audit table", &audit),
                ("logs", &captured),
            ] {
                assert!(!text.contains(body.as_str()), "a body in the {name}");
            }
        }
    }
}

#[tokio::test]
async fn restricted_contacts_are_always_left_out_withdrawn_ones_when_asked_and_lifting_brings_them_back()
 {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locSuppress01";
    env.connect(&acme, location, Some(&Seed::small(4101, 14, 500)))
        .await;
    let messages = env.highlevel.messages(location);
    let want = expected(&messages, &Channel::ALL, None, chrono::Utc::now());
    let all = conversations(&messages, &want);
    assert!(all.len() >= 10, "{}", all.len());
    let picked: Vec<&Conversation> = all.values().take(3).collect();
    let (restricted, withdrawn, other_purpose) = (picked[0], picked[1], picked[2]);

    let key = pseudonym_key(&env, &acme).await;
    let store = &env.deps.store;
    let now = chrono::Utc::now();
    suppress(
        store,
        &acme,
        &Scope::Restricted,
        &[pseudonym(&key, &restricted.contact)],
        "privacy_request:test-restrict",
        now,
    )
    .await
    .unwrap();
    let export_consent = Scope::ConsentWithdrawn(EXPORT_PURPOSE.to_owned());
    suppress(
        store,
        &acme,
        &export_consent,
        &[pseudonym(&key, &withdrawn.contact)],
        "consent",
        now,
    )
    .await
    .unwrap();
    // Consent withdrawn for another purpose does not touch exports.
    suppress(
        store,
        &acme,
        &Scope::ConsentWithdrawn("newsletter".into()),
        &[pseudonym(&key, &other_purpose.contact)],
        "consent",
        now,
    )
    .await
    .unwrap();

    let without = |left_out: &[&Conversation]| -> HashSet<String> {
        let mut ids = want.clone();
        for conversation in left_out {
            ids.retain(|id| !conversation.exported.contains(id));
        }
        ids
    };
    let file_of = |c: &Conversation| export::archive::conversation_path(&c.id);

    // 1. Without the flag: only the restricted contact is left out.
    let settings = env
        .webdav_settings("suppress", &Channel::ALL, all_time())
        .await;
    env.configure(&acme, settings.clone()).await;
    let (first, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let run = env.run(&acme, &first).await;
    assert_eq!(run.status, RunStatus::Completed);
    let archive = Archive::verify(
        &env.dav.files().await,
        &dav_run_dir("suppress", location, &run),
    );
    archive.assert_exactly(&without(&[restricted]));
    assert!(!archive.files.contains_key(&file_of(restricted)));
    assert!(archive.files.contains_key(&file_of(withdrawn)));
    assert!(archive.files.contains_key(&file_of(other_purpose)));
    assert_eq!(
        (
            run.conversations,
            run.conversations_restricted,
            run.conversations_consent_withdrawn
        ),
        (all.len() as u64 - 1, 1, 0)
    );
    assert_eq!(archive.manifest["totals"]["conversations"], all.len() - 1);
    assert_nowhere(&env, &acme, "suppress", location, &run, &[restricted]).await;
    let details = completed_entry(&env, &acme, &first).await;
    assert_eq!(details["conversations_restricted"], 1);
    assert_eq!(details["conversations_consent_withdrawn"], 0);
    let shown = run_shown(&env, &acme, &first).await;
    assert_eq!(shown["conversations_restricted"], 1);
    assert_eq!(shown["conversations_consent_withdrawn"], 0);

    // 2. With the flag: both are left out.
    let mut flagged = settings.clone();
    flagged["exclude_withdrawn_consent"] = true.into();
    env.configure(&acme, flagged).await;
    let (_, shown_settings) = {
        let request = crate::api::request(
            include_str!("../../../../events/export/get_settings.json"),
            &acme,
            "viewer",
            None,
        );
        let response = export::handle_http(&env.deps, request).await;
        let body: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
        (response.status(), body)
    };
    assert_eq!(shown_settings["exclude_withdrawn_consent"], true);
    let (second, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let run = env.run(&acme, &second).await;
    let archive = Archive::verify(
        &env.dav.files().await,
        &dav_run_dir("suppress", location, &run),
    );
    archive.assert_exactly(&without(&[restricted, withdrawn]));
    assert!(!archive.files.contains_key(&file_of(withdrawn)));
    assert!(archive.files.contains_key(&file_of(other_purpose)));
    assert_eq!(
        (
            run.conversations,
            run.conversations_restricted,
            run.conversations_consent_withdrawn
        ),
        (all.len() as u64 - 2, 1, 1)
    );
    assert_nowhere(
        &env,
        &acme,
        "suppress",
        location,
        &run,
        &[restricted, withdrawn],
    )
    .await;
    let details = completed_entry(&env, &acme, &second).await;
    assert_eq!(details["conversations_restricted"], 1);
    assert_eq!(details["conversations_consent_withdrawn"], 1);
    let shown = run_shown(&env, &acme, &second).await;
    assert_eq!(shown["conversations_restricted"], 1);
    assert_eq!(shown["conversations_consent_withdrawn"], 1);

    // 3. Lifted (restriction) and given again (consent): both are back in the next run.
    lift(
        store,
        &acme,
        &Scope::Restricted,
        &[pseudonym(&key, &restricted.contact)],
    )
    .await
    .unwrap();
    lift(
        store,
        &acme,
        &export_consent,
        &[pseudonym(&key, &withdrawn.contact)],
    )
    .await
    .unwrap();
    let (third, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let run = env.run(&acme, &third).await;
    let archive = Archive::verify(
        &env.dav.files().await,
        &dav_run_dir("suppress", location, &run),
    );
    archive.assert_exactly(&want);
    assert!(archive.files.contains_key(&file_of(restricted)));
    assert!(archive.files.contains_key(&file_of(withdrawn)));
    assert_eq!(
        (
            run.conversations,
            run.conversations_restricted,
            run.conversations_consent_withdrawn
        ),
        (all.len() as u64, 0, 0)
    );
}

#[tokio::test]
async fn a_resumed_run_counts_each_left_out_conversation_once() {
    let env = Env::new(fast_limits()).await;
    let location = "locSuppress02";
    env.highlevel
        .seed_location(location, &Seed::small(4102, 30, 900));
    let messages = env.highlevel.messages(location);
    let want = expected(&messages, &Channel::ALL, None, chrono::Utc::now());
    let all = conversations(&messages, &want);
    let contacts: Vec<&Conversation> = all.values().collect();
    // Every fifth conversation restricted, every fifth (offset) withdrawn.
    let restricted: Vec<&Conversation> = contacts.iter().step_by(5).copied().collect();
    let withdrawn: Vec<&Conversation> = contacts.iter().skip(2).step_by(5).copied().collect();

    async fn prepare(
        env: &Env,
        name: &str,
        location: &str,
        restricted: &[&Conversation],
        withdrawn: &[&Conversation],
    ) -> TenantId {
        let tenant = tenant(name);
        env.connect(&tenant, location, None).await;
        let key = pseudonym_key(env, &tenant).await;
        let now = chrono::Utc::now();
        let of = |list: &[&Conversation]| -> Vec<String> {
            list.iter().map(|c| pseudonym(&key, &c.contact)).collect()
        };
        suppress(
            &env.deps.store,
            &tenant,
            &Scope::Restricted,
            &of(restricted),
            "privacy_request:r",
            now,
        )
        .await
        .unwrap();
        suppress(
            &env.deps.store,
            &tenant,
            &Scope::ConsentWithdrawn(EXPORT_PURPOSE.to_owned()),
            &of(withdrawn),
            "consent",
            now,
        )
        .await
        .unwrap();
        let mut settings = env.webdav_settings(name, &Channel::ALL, all_time()).await;
        settings["exclude_withdrawn_consent"] = true.into();
        env.configure(&tenant, settings).await;
        tenant
    }

    let whole = prepare(&env, "whole", location, &restricted, &withdrawn).await;
    let (whole_run, _) = env.run_to_completion(&whole, 1, Budget::unlimited).await;
    let whole_run = env.run(&whole, &whole_run).await;
    let counts = |run: &ExportRun| {
        (
            run.conversations,
            run.conversations_restricted,
            run.conversations_consent_withdrawn,
        )
    };
    let want_counts = (
        (all.len() - restricted.len() - withdrawn.len()) as u64,
        restricted.len() as u64,
        withdrawn.len() as u64,
    );
    assert_eq!(counts(&whole_run), want_counts);

    // The same run in short invocations (a stop every other checkpoint), and a failed
    // one (the destination refuses) after some conversations were left out.
    let parts = prepare(&env, "parts", location, &restricted, &withdrawn).await;
    let mut outcomes = Vec::new();
    let mut run_id = None;
    for _ in 0..60 {
        let outcome = export::handle_trigger(&env.deps, kick_event(&parts), &Budget::checks(2))
            .await
            .unwrap();
        let Outcome::Continued { run_id: id } = &outcome else {
            panic!("{outcome:?}");
        };
        let run = env.run(&parts, id).await;
        run_id = Some(id.clone());
        outcomes.push(outcome);
        if run.conversations_restricted + run.conversations_consent_withdrawn >= 2 {
            break;
        }
    }
    let run_id = run_id.unwrap();
    let before = env.run(&parts, &run_id).await;
    assert!(before.conversations_restricted + before.conversations_consent_withdrawn >= 2);
    env.dav.fail_next(507, 10_000);
    let failed = export::handle_trigger(&env.deps, kick_event(&parts), &Budget::unlimited())
        .await
        .unwrap();
    assert!(matches!(failed, Outcome::Failed { .. }), "{failed:?}");
    env.dav.clear_faults();
    let failed_run = env.run(&parts, &run_id).await;
    assert!(counts(&failed_run) >= counts(&before));
    let (resumed, more) = env
        .run_to_completion(&parts, 200, || Budget::checks(2))
        .await;
    assert_eq!(resumed, run_id, "the same run resumed");
    let parts_run = env.run(&parts, &run_id).await;
    assert!(
        parts_run.invocations as usize >= outcomes.len() + more.len(),
        "stopped and resumed many times"
    );
    assert_eq!(counts(&parts_run), want_counts);
    let details = completed_entry(&env, &parts, &run_id).await;
    assert_eq!(details["conversations_restricted"], want_counts.1);
    assert_eq!(details["conversations_consent_withdrawn"], want_counts.2);

    // Both runs wrote the same: everything but the left-out conversations, once.
    let files = env.dav.files().await;
    let a = Archive::verify(&files, &dav_run_dir("whole", location, &whole_run));
    let b = Archive::verify(&files, &dav_run_dir("parts", location, &parts_run));
    let mut kept = want.clone();
    for conversation in restricted.iter().chain(&withdrawn) {
        kept.retain(|id| !conversation.exported.contains(id));
    }
    a.assert_exactly(&kept);
    b.assert_exactly(&kept);
    assert_eq!(a.manifest["totals"], b.manifest["totals"]);
    let left_out: Vec<&Conversation> = restricted.iter().chain(&withdrawn).copied().collect();
    assert_nowhere(&env, &parts, "parts", location, &parts_run, &left_out).await;
}

/// Nobody suppressed: the run computes no pseudonym and the container never reads the
/// application secret (it is read lazily, on first need).
#[tokio::test]
async fn with_nobody_suppressed_no_secret_is_read() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locSuppress03";
    env.connect(&acme, location, Some(&Seed::small(4103, 6, 120)))
        .await;
    let mut settings = env
        .webdav_settings("plain", &Channel::ALL, all_time())
        .await;
    settings["exclude_withdrawn_consent"] = true.into();
    env.configure(&acme, settings).await;
    let (run_id, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let run = env.run(&acme, &run_id).await;
    assert_eq!(
        (
            run.conversations_restricted,
            run.conversations_consent_withdrawn
        ),
        (0, 0)
    );
    assert!(run.conversations > 0);
    assert!(!env.deps.app_secret.is_loaded());
}

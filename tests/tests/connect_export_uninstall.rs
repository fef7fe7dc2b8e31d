//! Connect HighLevel, export to WebDAV, then the app is uninstalled in HighLevel: the
//! signed `UNINSTALL` webhook (delivered twice, as providers retry) deletes the
//! connection and its sealed tokens once, removes the export schedule, is audited,
//! and a later "run now" exports nothing.
//!
//! Everything goes through the local stack as in production: the HTTP API, the
//! provider's OAuth hops, the local EventBridge Scheduler firing the run-now kick,
//! and the HighLevel webhook signed with the key the stack is configured to trust.

use std::collections::BTreeMap;
use std::time::Duration;

use custody::schedule::ExportSchedules;
use custody_journeys::build_binaries;
use custody_journeys::world::{
    Api, audit_log, connect_highlevel, latest_run, poll, scan_json, signed_uninstall, tenant,
    wait_for_new_final_run, webdav_export_settings,
};
use custody_local::demo::{Environment, LOCATION, TENANT};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Checks the manifest on the WebDAV server against the files next to it; returns
/// how many conversation files it lists.
fn check_manifest(files: &BTreeMap<String, Vec<u8>>) -> usize {
    let (manifest_path, manifest) = files
        .iter()
        .find(|(path, _)| path.ends_with("manifest.json"))
        .unwrap_or_else(|| panic!("no manifest.json among {:?}", files.keys()));
    let manifest: Value = serde_json::from_slice(manifest).expect("the manifest is JSON");
    let listed = manifest["files"]
        .as_array()
        .unwrap_or_else(|| panic!("the manifest lists no files: {manifest}"));
    let dir = manifest_path.trim_end_matches("manifest.json");
    for entry in listed {
        let name = entry["name"]
            .as_str()
            .or(entry["path"].as_str())
            .unwrap_or_else(|| panic!("a manifest entry without a name: {entry}"));
        let bytes = files
            .get(&format!("{dir}{name}"))
            .unwrap_or_else(|| panic!("the manifest names {name}, which is not on the server"));
        assert_eq!(
            entry["sha256"].as_str(),
            Some(hex::encode(Sha256::digest(bytes)).as_str()),
            "{name}: its SHA-256 differs from the manifest"
        );
    }
    listed.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_deletes_the_connection_once_stops_exports_and_is_audited() {
    build_binaries();
    let env = Environment::start(&custody_local::harness::unique_stage())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(&env);
    let tenant = tenant();
    let config = &env.stack.provisioned.config;
    let schedules =
        ExportSchedules::new(env.stack.clients.scheduler.clone(), &config.schedule_group);

    // 1. Connect HighLevel over HTTP: our start, the provider's consent, our callback.
    connect_highlevel(&api).await;
    let tokens: Vec<String> = env
        .oauth
        .issued_access_tokens()
        .into_iter()
        .chain(env.oauth.issued_refresh_tokens())
        .collect();
    assert!(!tokens.is_empty(), "the provider issued no token");
    let table = scan_json(&env, &config.table).await;
    let connection = table
        .iter()
        .find(|item| item["pk"] == format!("T#{TENANT}") && item["sk"] == "CONN#highlevel")
        .unwrap_or_else(|| panic!("no sealed connection item in the table: {table:?}"));
    assert_eq!(connection["kind"], "connection", "{connection}");

    // 2. Export settings (WebDAV), which create the recurring schedule.
    let saved = api
        .expect(
            Method::PUT,
            "/export/settings",
            Some(&webdav_export_settings(&env)),
            200,
        )
        .await;
    assert_eq!(saved["schedule_active"], true, "{saved}");
    let shown = api.expect(Method::GET, "/export/settings", None, 200).await;
    assert_eq!(shown["schedule_active"], true, "{shown}");
    assert!(
        schedules
            .get(&tenant)
            .await
            .expect("get the schedule")
            .is_some(),
        "PUT /export/settings created no schedule"
    );

    // 3. Run now: the local scheduler fires the one-time kick; wait for the run.
    let queued = api.expect(Method::POST, "/export/runs", None, 202).await;
    assert_eq!(queued, json!({"status": "queued", "resumes_run": null}));
    let run = wait_for_new_final_run(&api, None).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["trigger"], "kick", "{run}");
    let conversations = run["conversations"].as_u64().unwrap_or(0);
    assert!(conversations > 0, "the run exported nothing: {run}");

    // 4. The files landed on the WebDAV server, each matching the manifest.
    let files_after_export = env.webdav.files().await;
    assert_eq!(
        check_manifest(&files_after_export) as u64,
        conversations,
        "the manifest lists another number of files than the run exported"
    );

    // 5. The app is uninstalled in HighLevel: the signed webhook, delivered twice
    //    (the provider retries), both acknowledged with 2xx; only the first acts.
    let (body, signature) = signed_uninstall(&env);
    let mut answers = Vec::new();
    for delivery in 1..=2 {
        let response = api
            .http()
            .post(api.url("/webhooks/highlevel"))
            .header("content-type", "application/json")
            .header("x-wh-signature", &signature)
            .body(body.clone())
            .send()
            .await
            .expect("webhook delivery");
        let status = response.status();
        let answer: Value = response.json().await.expect("the webhook answer is JSON");
        assert!(
            status.is_success(),
            "UNINSTALL delivery {delivery} answered {status}: {answer}"
        );
        answers.push(answer);
    }
    assert_eq!(
        answers,
        vec![
            json!({"status": "uninstalled", "connections_deleted": 1}),
            json!({"status": "duplicate"}),
        ]
    );

    // 6a. The connection is no longer listed.
    let listing = api.expect(Method::GET, "/connections", None, 200).await;
    assert_eq!(listing, json!({"connections": []}));

    // 6b. The export schedule is gone: settings stay, shown inactive; the scheduler
    //     has no schedule for the tenant.
    let shown = api.expect(Method::GET, "/export/settings", None, 200).await;
    assert_eq!(shown["schedule_active"], false, "{shown}");
    assert!(
        schedules
            .get(&tenant)
            .await
            .expect("get the schedule")
            .is_none(),
        "the export schedule survived the uninstall"
    );
    let listed = env
        .stack
        .clients
        .scheduler
        .list_schedules()
        .group_name(&config.schedule_group)
        .send()
        .await
        .expect("list schedules");
    let names: Vec<&str> = listed.schedules().iter().filter_map(|s| s.name()).collect();
    assert!(
        !names.contains(&ExportSchedules::name(&tenant).as_str()),
        "schedules left: {names:?}"
    );

    // 6c. Raw scan: no sealed token record of the tenant, no account link to the
    //     uninstalled location, and no issued token in any form.
    let table = scan_json(&env, &config.table).await;
    let leftovers: Vec<&Value> = table
        .iter()
        .filter(|item| {
            item["kind"] == "connection"
                || item["sk"]
                    .as_str()
                    .is_some_and(|sk| sk.starts_with("CONN#"))
                || item["pk"] == format!("LOC#{LOCATION}")
                || item["pk"].as_str().is_some_and(|pk| pk.starts_with("CO#"))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "token records or account links survived the uninstall: {leftovers:?}"
    );
    let dump = format!("{table:?}");
    for token in &tokens {
        assert!(
            !dump.contains(token.as_str()),
            "an issued token is in the table"
        );
    }

    // 6d. The audit log records the uninstall once, by the provider, and verifies.
    let log = audit_log(&env);
    let entries = log
        .entries(&tenant, None, None)
        .await
        .expect("audit entries");
    let uninstalls: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "connection.deleted")
        .collect();
    assert_eq!(uninstalls.len(), 1, "{entries:#?}");
    let uninstall = uninstalls[0];
    assert_eq!(uninstall.actor, "provider:highlevel");
    assert_eq!(uninstall.target, "CONN#highlevel");
    assert_eq!(uninstall.details["reason"], "uninstall", "{uninstall:?}");
    assert_eq!(uninstall.details["schedule_removed"], true, "{uninstall:?}");
    log.verify(&tenant)
        .await
        .expect("read the audit chain")
        .unwrap_or_else(|e| panic!("the audit chain is broken: {e}"));

    // 7. "Run now" after the uninstall. The API still queues it (202: settings are
    //    there and no run holds the lease), but the run ends `not_connected` without
    //    a single HighLevel request and without writing to the destination.
    let requests_before = env.highlevel.counters().requests;
    let previous = latest_run(&api).await.expect("the first run is listed");
    let (status, answer) = api.call(Method::POST, "/export/runs", None).await;
    assert_eq!(status, 202, "POST /export/runs after uninstall: {answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    let refused = wait_for_new_final_run(&api, previous["run_id"].as_str()).await;
    assert_eq!(refused["status"], "not_connected", "{refused}");
    assert_eq!(refused["conversations"], 0, "{refused}");
    assert_eq!(refused["messages"], 0, "{refused}");
    assert!(
        refused["errors"].to_string().contains("connection"),
        "the run does not say why it ended: {refused}"
    );
    assert_eq!(
        env.highlevel.counters().requests,
        requests_before,
        "the export called HighLevel without a connection"
    );
    assert_eq!(
        env.webdav.files().await,
        files_after_export,
        "the destination changed after the uninstall"
    );
    // The one-time kick deleted itself after firing: nothing is left scheduled.
    poll(
        "the run-now kick to delete itself",
        Duration::from_secs(30),
        || async {
            let listed = env
                .stack
                .clients
                .scheduler
                .list_schedules()
                .group_name(&config.schedule_group)
                .send()
                .await
                .expect("list schedules");
            listed.schedules().is_empty().then_some(())
        },
    )
    .await;
    let entries = log
        .entries(&tenant, None, None)
        .await
        .expect("audit entries");
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "connection.deleted")
            .count(),
        1,
        "a later event deleted a connection again"
    );
}

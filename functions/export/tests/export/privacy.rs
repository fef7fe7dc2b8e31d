//! "We do not retain copies": after an export, no message body and no WebDAV
//! password is in our table, our audit table, our buckets or our logs.

use custody::highlevel::Channel;
use custody_sim::highlevel::{BODY_MARKER, Seed};
use export::Budget;

use crate::{Env, all_time, fast_limits, logs, raw_table_dump, tenant};

async fn bucket_dump(env: &Env, bucket: &str) -> String {
    let s3 = &env.stack.clients.s3;
    let mut dump = String::new();
    let listed = s3
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    for version in listed.versions() {
        let key = version.key().unwrap();
        let object = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.version_id().map(str::to_owned))
            .send()
            .await
            .unwrap();
        let bytes = object.body.collect().await.unwrap().into_bytes();
        dump.push_str(key);
        dump.push_str(&String::from_utf8_lossy(&bytes));
    }
    dump
}

#[tokio::test]
async fn no_message_body_or_password_in_table_buckets_or_logs() {
    let logs = logs();
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let location = "locPrivacy01";
    env.connect(&acme, location, Some(&Seed::small(31, 40, 1500)))
        .await;
    let settings = env
        .webdav_settings("private", &Channel::ALL, all_time())
        .await;
    env.configure(&acme, settings).await;
    // A failing attempt too, so error paths are covered by the scan.
    env.dav.fail_next(500, 4);
    let _ = export::handle_trigger(&env.deps, crate::kick_event(&acme), &Budget::unlimited())
        .await
        .unwrap();
    let (run_id, _) = env.run_to_completion(&acme, 2, Budget::unlimited).await;
    let run = env.run(&acme, &run_id).await;
    assert!(run.messages > 1000);

    // The export really carried bodies to the destination …
    let exported: String = env
        .dav
        .files()
        .await
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(exported.contains(BODY_MARKER));
    let some_body = &env.highlevel.messages(location)[0].body;

    // … and nowhere else.
    let table = raw_table_dump(&env.stack.clients.dynamodb, &env.stack.config.table).await;
    let audit = raw_table_dump(&env.stack.clients.dynamodb, &env.stack.config.audit_table).await;
    let imports = bucket_dump(&env, &env.stack.config.imports_bucket).await;
    let dsar = bucket_dump(&env, &env.stack.config.dsar_results_bucket).await;
    let captured = logs.contents();
    assert!(
        table.contains(&run_id) && captured.contains(&run_id),
        "the scans see the run"
    );
    for (name, dump) in [
        ("table", &table),
        ("audit table", &audit),
        ("imports bucket", &imports),
        ("dsar-results bucket", &dsar),
        ("logs", &captured),
    ] {
        assert!(!dump.contains(BODY_MARKER), "message body in {name}");
        assert!(!dump.contains(some_body.as_str()), "message body in {name}");
        assert!(
            !dump.contains(&env.dav_password),
            "WebDAV password in {name}"
        );
    }
}

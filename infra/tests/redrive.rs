//! Redrive (`custody-redrive`, `custody_local::redrive`), end to end on the local
//! stack: an event fails until its retries run out and lands in the failure queue
//! (the alarm's metric moves); the cause is fixed; a dry run changes nothing; the
//! redrive processes it and the work completes once; the same record delivered again
//! changes nothing.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use custody_local::demo::{Environment, TENANT};
use custody_local::redrive::{self, Clients, Options, Record};
use serde_json::{Value, json};

async fn environment() -> Environment {
    custody_local::harness::build_binaries();
    Environment::start(&custody_local::harness::unique_stage())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn clients(env: &Environment) -> Clients {
    let lambda =
        custody::aws::sdk_config_for_endpoint(&env.stack.lambda_url, custody_local::REGION);
    Clients {
        sqs: aws_sdk_sqs::Client::new(&env.stack.sdk),
        streams: aws_sdk_dynamodbstreams::Client::new(&env.stack.sdk),
        lambda: aws_sdk_lambda::Client::new(&lambda),
    }
}

fn queue_url(env: &Environment, logical: &str) -> String {
    env.stack.provisioned.resources[logical].id.clone()
}

/// Waits until the queue holds at least one message and its count stayed the same
/// for two seconds (retries still running would add more); returns the count.
async fn settled_count(clients: &Clients, url: &str) -> u64 {
    let until = Instant::now() + Duration::from_secs(180);
    let mut last = (0, Instant::now());
    loop {
        let count = redrive::visible_messages(clients, url).await.unwrap();
        if count != last.0 {
            last = (count, Instant::now());
        } else if count > 0 && last.1.elapsed() > Duration::from_secs(2) {
            return count;
        }
        assert!(
            Instant::now() < until,
            "the failure queue did not fill and settle"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn api(
    env: &Environment,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", env.stack.base_url))
        .bearer_auth(env.admin_token());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn audit_actions(env: &Environment, action: &str, target: &str) -> usize {
    let log = custody::audit::AuditLog::from_config(
        &env.stack.clients,
        &env.stack.provisioned.config,
        custody::clock::system(),
    );
    let tenant = custody::TenantId::parse(TENANT).unwrap();
    log.entries(&tenant, None, None)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == action && e.target.ends_with(target))
        .count()
}

async fn options(url: &str, dry_run: bool) -> Options {
    Options {
        queue_url: url.to_owned(),
        function: None,
        dry_run,
        limit: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_upload_is_redriven_once_its_cause_is_fixed() {
    let env = environment().await;
    let clients = clients(&env);
    let url = queue_url(&env, "ImportFailureQueue");
    let state = env.state();
    let table = &env.stack.provisioned.config.table;
    let dynamodb = &env.stack.clients.dynamodb;

    // A real import, created through the API …
    let csv = "email,name\nredrive@example.org,Re Drive\n";
    let (status, created) = api(
        &env,
        reqwest::Method::POST,
        "/imports",
        Some(json!({
            "format": "csv", "mode": "store", "retention_class": "import-30d",
            "destination": {"url": state["destination"]["url"], "secret": state["destination"]["secret"]},
            "size": csv.len(), "required_columns": ["email"],
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["import"]["id"].as_str().unwrap().to_owned();
    // … whose item is then broken, so every attempt at the upload fails: the fault.
    let key = |item: aws_sdk_dynamodb::operation::get_item::builders::GetItemFluentBuilder| {
        item.table_name(table)
            .key("pk", AttributeValue::S(format!("T#{TENANT}")))
            .key("sk", AttributeValue::S(format!("IMP#{id}")))
    };
    let good = key(dynamodb.get_item())
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the import item");
    let mut broken = good.clone();
    broken.insert("retention_class".into(), AttributeValue::N("7".into()));
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(broken))
        .send()
        .await
        .unwrap();
    let upload = &created["upload"];
    let mut put = reqwest::Client::new().put(upload["url"].as_str().unwrap());
    for (name, value) in upload["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    assert!(put.body(csv).send().await.unwrap().status().is_success());

    // After the retries, the event is in the queue: the alarm's metric moved.
    assert_eq!(settled_count(&clients, &url).await, 1);
    assert!(env.destination.rows().is_empty());

    // A dry run lists it and changes nothing.
    let report = redrive::run(&clients, &options(&url, true).await, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.planned.len(), 1, "{report:?}");
    assert!(
        report.planned[0]
            .1
            .starts_with("async → import: ObjectCreated:Put")
            && report.planned[0].1.contains(&id),
        "{report:?}"
    );
    assert_eq!(redrive::visible_messages(&clients, &url).await.unwrap(), 1);
    let held = redrive::receive(&clients, &url, None, 10).await.unwrap();
    assert!(matches!(held[0].record, Record::Async { .. }));
    let body = held[0].body.clone();
    redrive::release(&clients, &url, &held[0]).await;

    // The fault is fixed; the redrive processes the upload, once.
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(good))
        .send()
        .await
        .unwrap();
    let mut progress = Vec::new();
    let report = redrive::run(
        &clients,
        &options(&url, false).await,
        &mut |done, total, _| progress.push((done, total)),
    )
    .await
    .unwrap();
    assert_eq!((report.replayed, report.failed.len()), (1, 0), "{report:?}");
    assert_eq!(progress, vec![(1, 1)]);
    let (_, import) = api(&env, reqwest::Method::GET, &format!("/imports/{id}"), None).await;
    assert_eq!(import["status"], "delivered", "{import}");
    assert_eq!(redrive::visible_messages(&clients, &url).await.unwrap(), 0);

    // The same record delivered again (a second redrive of a duplicate): one effect.
    clients
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body(body)
        .send()
        .await
        .unwrap();
    let report = redrive::run(&clients, &options(&url, false).await, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    assert_eq!(audit_actions(&env, "import.delivered", &id).await, 1);
    assert_eq!(env.destination.rows().len(), 1, "one row, pushed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_privacy_request_is_redriven_from_the_stream_once_its_cause_is_fixed() {
    let env = environment().await;
    let clients = clients(&env);
    let url = queue_url(&env, "DsarFailureQueue");
    let s3 = &env.stack.clients.s3;
    let results = env.stack.provisioned.config.dsar_results_bucket.clone();

    // The fault: the results bucket (where the access bundle goes) is gone.
    s3.delete_bucket().bucket(&results).send().await.unwrap();
    let (status, filed) = api(
        &env,
        reqwest::Method::POST,
        "/privacy/export",
        Some(json!({"subject": {"email": "redrive@example.org"}, "regulation": "gdpr"})),
    )
    .await;
    assert_eq!(status, 202, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();

    // The request fails until its attempts run out, and the stream's batches end in the
    // queue after theirs.
    let count = settled_count(&clients, &url).await;
    let (_, request) = api(
        &env,
        reqwest::Method::GET,
        &format!("/privacy/requests/{id}"),
        None,
    )
    .await;
    assert_eq!(request["status"], "error", "{request}");

    // A dry run: stream records, nothing changed.
    let report = redrive::run(&clients, &options(&url, true).await, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.planned.len() as u64, count, "{report:?}");
    assert!(
        report
            .planned
            .iter()
            .all(|(_, s)| s.starts_with("stream → dsar")),
        "{report:?}"
    );
    let held = redrive::receive(&clients, &url, None, 100).await.unwrap();
    let body = held[0].body.clone();
    for message in &held {
        redrive::release(&clients, &url, message).await;
    }
    let (_, request) = api(
        &env,
        reqwest::Method::GET,
        &format!("/privacy/requests/{id}"),
        None,
    )
    .await;
    assert_eq!(request["status"], "error", "{request}");

    // Fixed: the bucket is back. The redrive reads the records back from the stream
    // and the request completes, once.
    s3.create_bucket().bucket(&results).send().await.unwrap();
    let report = redrive::run(&clients, &options(&url, false).await, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.failed, Vec::new(), "{report:?}");
    assert_eq!(report.replayed as u64, count);
    let (_, request) = api(
        &env,
        reqwest::Method::GET,
        &format!("/privacy/requests/{id}"),
        None,
    )
    .await;
    assert_eq!(request["status"], "complete", "{request}");
    assert_eq!(audit_actions(&env, "privacy_request.resumed", &id).await, 1);

    // The same stream record again: nothing more happens.
    clients
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body(body)
        .send()
        .await
        .unwrap();
    let report = redrive::run(&clients, &options(&url, false).await, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    assert_eq!(
        audit_actions(&env, "privacy_request.completed", &id).await,
        1
    );
    assert_eq!(
        audit_actions(&env, "privacy_request.exported", &id).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecognised_message_is_reported_and_left() {
    let env = environment().await;
    let clients = clients(&env);
    let url = queue_url(&env, "ExpiryFailureQueue");
    clients
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body("{\"hello\": 1}")
        .send()
        .await
        .unwrap();
    let report = redrive::run(&clients, &options(&url, false).await, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(
        (report.replayed, report.skipped.len()),
        (0, 1),
        "{report:?}"
    );
    assert!(report.line(false).contains("1 skipped"));
    assert_eq!(redrive::visible_messages(&clients, &url).await.unwrap(), 1);
}

//! The HTTP routes, through the event files in events/export/.

use custody::TenantId;
use export::kick::kick_name;
use export::model::{ExportRun, Trigger};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use crate::{Env, fast_limits, tenant};

const PUT: &str = include_str!("../../../../events/export/put_settings.json");
const GET: &str = include_str!("../../../../events/export/get_settings.json");
const DELETE: &str = include_str!("../../../../events/export/delete_settings.json");
const POST_RUNS: &str = include_str!("../../../../events/export/post_runs.json");
const GET_RUNS: &str = include_str!("../../../../events/export/get_runs.json");

/// The event file as a request of `tenant` with `role`, and optionally another body.
pub fn request(event: &str, tenant: &TenantId, role: &str, body: Option<Value>) -> Request {
    let mut event: Value = serde_json::from_str(event).unwrap();
    let claims = &mut event["requestContext"]["authorizer"]["jwt"]["claims"];
    claims["custom:tenant_id"] = json!(tenant.as_str());
    claims["custom:role"] = json!(role);
    if let Some(body) = body {
        event["body"] = json!(body.to_string());
    }
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

fn with_query(event: &str, query: &[(&str, &str)]) -> String {
    let mut event: Value = serde_json::from_str(event).unwrap();
    event["queryStringParameters"] = query
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    event["rawQueryString"] = json!(
        query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    );
    event.to_string()
}

fn body(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null)
}

async fn call(env: &Env, request: Request) -> (u16, Value) {
    let response = export::handle_http(&env.deps, request).await;
    (response.status().as_u16(), body(&response))
}

#[tokio::test]
async fn settings_round_trip_creates_and_removes_the_schedule() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let settings = env
        .webdav_settings(
            "exports",
            &[custody::highlevel::Channel::Sms],
            crate::all_time(),
        )
        .await;
    let (status, saved) = call(&env, request(PUT, &acme, "admin", Some(settings.clone()))).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["destination"]["password_set"], true);
    assert!(!saved.to_string().contains(&env.dav_password));

    let schedule = env.stack.schedules().get(&acme).await.unwrap().unwrap();
    assert_eq!(schedule.expression, "cron(0 3 * * ? *)");
    assert_eq!(schedule.timezone.as_deref(), Some("UTC"));

    let (status, shown) = call(&env, request(GET, &acme, "viewer", None)).await;
    assert_eq!(status, 200);
    assert_eq!(shown["schedule_active"], true);
    // Daily at 03:00 UTC: the next run is the next 03:00 after now.
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(shown["next_run_at"].clone()).expect("next_run_at");
    let now = chrono::Utc::now();
    assert!(
        next > now - chrono::Duration::minutes(1) && next <= now + chrono::Duration::days(1),
        "{next}"
    );
    assert_eq!(next.format("%H:%M:%S").to_string(), "03:00:00");
    assert_eq!(shown["destination"]["username"], crate::DAV_USER);
    assert!(shown["destination"].get("password").is_none());
    assert!(!shown.to_string().contains(&env.dav_password));

    // Without a password, the stored one is kept for the same URL and user …
    let mut keep = settings.clone();
    keep["destination"]
        .as_object_mut()
        .unwrap()
        .remove("password");
    keep["schedule"]["expression"] = json!("rate(1 day)");
    let (status, _) = call(&env, request(PUT, &acme, "admin", Some(keep.clone()))).await;
    assert_eq!(status, 200);
    assert_eq!(
        env.stack
            .schedules()
            .get(&acme)
            .await
            .unwrap()
            .unwrap()
            .expression,
        "rate(1 day)"
    );
    // … but never handed to another server.
    keep["destination"]["url"] = json!("https://other.example.com/dav");
    let (status, problem) = call(&env, request(PUT, &acme, "admin", Some(keep))).await;
    assert_eq!(status, 400);
    assert_eq!(problem["field"], "destination.password");

    // Another tenant sees nothing.
    let (status, _) = call(&env, request(GET, &tenant("globex"), "admin", None)).await;
    assert_eq!(status, 404);

    let (status, _) = call(&env, request(DELETE, &acme, "admin", None)).await;
    assert_eq!(status, 204);
    assert!(env.stack.schedules().get(&acme).await.unwrap().is_none());
    let (status, _) = call(&env, request(GET, &acme, "viewer", None)).await;
    assert_eq!(status, 404);
    // Deleting again is not an error.
    let (status, _) = call(&env, request(DELETE, &acme, "admin", None)).await;
    assert_eq!(status, 204);

    let actions: Vec<String> = env
        .stack
        .audit(TestStackClock::clock())
        .entries(&acme, None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.actor, e.action))
        .collect();
    let user = "user:7d8e9f00-1111-4222-8333-944455556666";
    assert!(
        actions.contains(&format!("{user} export_settings.updated")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&format!("{user} export_settings.deleted")),
        "{actions:?}"
    );
}

struct TestStackClock;
impl TestStackClock {
    fn clock() -> custody::clock::SharedClock {
        custody_local::harness::TestStack::system_clock()
    }
}

#[tokio::test]
async fn settings_failures_are_4xx_naming_the_field() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let good: Value = serde_json::from_str::<Value>(PUT).unwrap()["body"]
        .as_str()
        .map(|b| serde_json::from_str(b).unwrap())
        .unwrap();

    // Roles and claims.
    let (status, _) = call(&env, request(PUT, &acme, "operator", Some(good.clone()))).await;
    assert_eq!(status, 403);
    let mut anonymous: Value = serde_json::from_str(PUT).unwrap();
    anonymous["requestContext"]["authorizer"] = Value::Null;
    let (status, _) = call(
        &env,
        lambda_http::request::from_str(&anonymous.to_string()).unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    let cases = [
        (
            "/destination/url",
            json!("http://dav.example.com/x"),
            "destination.url",
        ),
        (
            "/schedule/timezone",
            json!("Nowhere/Special"),
            "schedule.timezone",
        ),
        (
            "/schedule/expression",
            json!("rate(1 minute)"),
            "schedule.expression",
        ),
        ("/channels", json!(["Fax"]), "channels[0]"),
        ("/date_range", json!({"mode": "rolling"}), "date_range.days"),
        ("/destination/type", json!("ftp"), "destination.type"),
    ];
    for (pointer, value, field) in cases {
        let mut body = good.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        let (status, problem) = call(&env, request(PUT, &acme, "admin", Some(body))).await;
        assert_eq!(status, 400, "{pointer}: {problem}");
        assert!(
            problem["field"]
                .as_str()
                .unwrap_or("")
                .starts_with(field.split('[').next().unwrap()),
            "{pointer}: {problem}"
        );
        assert!(!problem.to_string().contains("example-password-not-real"));
    }
    // Nothing was stored and no schedule was made by the refused requests.
    assert!(env.stack.schedules().get(&acme).await.unwrap().is_none());
    let (status, _) = call(&env, request(GET, &acme, "viewer", None)).await;
    assert_eq!(status, 404);

    // Unknown routes are 404.
    let mut other: Value = serde_json::from_str(GET).unwrap();
    other["routeKey"] = json!("GET /export/nothing");
    other["requestContext"]["routeKey"] = json!("GET /export/nothing");
    let (status, _) = call(
        &env,
        lambda_http::request::from_str(&other.to_string()).unwrap(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn run_now_queues_a_one_time_invocation() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let (status, problem) = call(&env, request(POST_RUNS, &acme, "operator", None)).await;
    assert_eq!(status, 409, "no settings yet: {problem}");

    let settings = env
        .webdav_settings(
            "now",
            &[custody::highlevel::Channel::Sms],
            crate::all_time(),
        )
        .await;
    env.configure(&acme, settings).await;
    let (status, _) = call(&env, request(POST_RUNS, &acme, "viewer", None)).await;
    assert_eq!(status, 403);
    let (status, accepted) = call(&env, request(POST_RUNS, &acme, "operator", None)).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");

    let kick = env
        .stack
        .clients
        .scheduler
        .get_schedule()
        .name(kick_name(&acme))
        .group_name(&env.stack.config.schedule_group)
        .send()
        .await
        .unwrap();
    assert!(kick.schedule_expression().unwrap_or("").starts_with("at("));
    let target = kick.target().unwrap();
    assert_eq!(target.arn(), env.deps.config.function_arn);
    assert_eq!(target.role_arn(), env.deps.config.scheduler_role_arn);
    // Undeliverable kicks go to the failure queue, after bounded retries.
    assert_eq!(
        target.dead_letter_config().and_then(|d| d.arn()),
        Some(env.deps.config.dead_letter_queue_arn.as_str())
    );
    let retry = target.retry_policy().expect("retry policy");
    assert_eq!(
        retry.maximum_retry_attempts(),
        Some(custody::schedule::RETRY_ATTEMPTS)
    );
    assert_eq!(
        retry.maximum_event_age_in_seconds(),
        Some(custody::schedule::MAX_EVENT_AGE_SECONDS)
    );
    let input: Value = serde_json::from_str(target.input().unwrap()).unwrap();
    let file: Value =
        serde_json::from_str(include_str!("../../../../events/export/kick.json")).unwrap();
    assert_eq!(input["kick"], file["kick"]);
    assert_eq!(input["tenant_id"], "acme");
}

#[tokio::test]
async fn export_log_lists_newest_first_in_pages_and_hides_runs_older_than_90_days() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for days_ago in [200, 91, 10, 5, 2, 1] {
        let started = now - chrono::Duration::days(days_ago);
        let id = ulid::Ulid::from_parts(started.timestamp_millis() as u64, rand_bits()).to_string();
        let mut run = ExportRun::new(
            &acme,
            id.clone(),
            Trigger::Schedule,
            started,
            None,
            started,
            vec![],
        );
        run.status = export::model::RunStatus::Completed;
        run.messages = days_ago as u64;
        env.deps.store.put(&run).await.unwrap();
        ids.push((days_ago, id));
    }
    // The old runs are still in the table (TTL has not run) …
    let dump = crate::raw_table_dump(&env.stack.clients.dynamodb, &env.stack.config.table).await;
    assert!(dump.contains(&ids[0].1) && dump.contains(&ids[1].1));

    // … but never listed: pages of 2, newest first, only the last 90 days.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let mut query = vec![("limit", "2")];
        if let Some(c) = cursor.as_deref() {
            query.push(("cursor", c));
        }
        let event = with_query(GET_RUNS, &query);
        let (status, page) = call(&env, request(&event, &acme, "viewer", None)).await;
        assert_eq!(status, 200, "{page}");
        for run in page["runs"].as_array().unwrap() {
            listed.push(run["run_id"].as_str().unwrap().to_owned());
            assert!(run.get("cursor").is_none(), "no checkpoint internals");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let want: Vec<String> = ids[2..].iter().rev().map(|(_, id)| id.clone()).collect();
    assert_eq!(listed, want);

    // Caller mistakes: bad limit, a cursor of another tenant's listing.
    let (status, problem) = call(
        &env,
        request(
            &with_query(GET_RUNS, &[("limit", "0")]),
            &acme,
            "viewer",
            None,
        ),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("limit")));
    let (status, problem) = call(
        &env,
        request(
            &with_query(GET_RUNS, &[("cursor", "bm90LWEtY3Vyc29y")]),
            &acme,
            "viewer",
            None,
        ),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("cursor")));
    // Another tenant's log is empty.
    let (status, page) = call(&env, request(GET_RUNS, &tenant("globex"), "viewer", None)).await;
    assert_eq!(status, 200);
    assert_eq!(page["runs"], json!([]));
}

fn rand_bits() -> u128 {
    ulid::Ulid::new().random()
}

#[tokio::test]
async fn handle_event_dispatches_http_and_trigger_events() {
    let env = Env::new(fast_limits()).await;
    let budget = export::Budget::unlimited();
    let mut http: Value = serde_json::from_str(GET).unwrap();
    http["requestContext"]["authorizer"]["jwt"]["claims"]["custom:tenant_id"] = json!("acme");
    let response = export::handle_event(&env.deps, http, &budget)
        .await
        .unwrap();
    assert_eq!(response["statusCode"], 404);
    assert_eq!(
        response["headers"]["content-type"],
        "application/problem+json"
    );

    let trigger: Value =
        serde_json::from_str(include_str!("../../../../events/export/schedule.json")).unwrap();
    let outcome = export::handle_event(&env.deps, trigger, &budget)
        .await
        .unwrap();
    assert_eq!(outcome["outcome"], "not_configured");

    let bad = export::handle_event(&env.deps, json!({"tenant": 1}), &budget).await;
    assert!(bad.is_err());
    let invalid = export::handle_event(&env.deps, json!({"tenant_id": "a#b"}), &budget)
        .await
        .unwrap();
    assert_eq!(invalid["outcome"], "invalid_event");
}

/// Security: a tenant cannot aim its exports at another customer's bucket. custody's
/// own role writes no customer bucket, so the only way in is the other customer's
/// role, which trusts only *their* tenant id as ExternalId.
#[tokio::test]
async fn a_tenant_naming_another_customers_bucket_is_refused() {
    let env = Env::new(fast_limits()).await;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let bucket = format!("globex-archive-{}", env.stack.provisioned.stage);
    env.stack
        .clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let globex_role = env.customer_role("globex-writer", globex.as_str()).await;
    let s3 = |role: Option<&str>| {
        let mut destination = json!({"type": "s3", "bucket": bucket, "prefix": "exports"});
        if let Some(role) = role {
            destination["role_arn"] = json!(role);
        }
        json!({
            "schedule": {"expression": "rate(1 day)", "timezone": "UTC"},
            "channels": ["SMS"],
            "date_range": crate::all_time(),
            "destination": destination,
        })
    };

    // globex configures its own bucket through its own role.
    let (status, saved) = call(
        &env,
        request(PUT, &globex, "admin", Some(s3(Some(&globex_role)))),
    )
    .await;
    assert_eq!(status, 200, "{saved}");

    // acme names globex's bucket: without a role (custody's own credentials) …
    let (status, problem) = call(&env, request(PUT, &acme, "admin", Some(s3(None)))).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "destination.role_arn");
    // … and with globex's role, which STS refuses for acme's external id.
    let (status, problem) = call(
        &env,
        request(PUT, &acme, "admin", Some(s3(Some(&globex_role)))),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "destination.role_arn");
    assert_eq!(
        problem["type"],
        "https://custody.dev/problems/destination-refused"
    );
    // A role that does not exist is refused the same way.
    let (status, problem) = call(
        &env,
        request(
            PUT,
            &acme,
            "admin",
            Some(s3(Some("arn:aws:iam::123456789012:role/nobody-here"))),
        ),
    )
    .await;
    assert_eq!(status, 422, "{problem}");

    // Nothing was stored for acme: no settings, no schedule, no audit entry.
    let (status, _) = call(&env, request(GET, &acme, "viewer", None)).await;
    assert_eq!(status, 404);
    assert!(env.stack.schedules().get(&acme).await.unwrap().is_none());
    let entries = env
        .stack
        .audit(TestStackClock::clock())
        .entries(&acme, None, None)
        .await
        .unwrap();
    assert!(entries.is_empty(), "{entries:?}");
}

/// The external id custody sends is the caller's tenant id, and only that one opens
/// a role: a role bound to another id is refused even for its intended bucket.
#[tokio::test]
async fn a_role_bound_to_another_external_id_is_refused() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let bucket = format!("acme-archive-{}", env.stack.provisioned.stage);
    let settings = |role: &str| {
        json!({
            "schedule": {"expression": "rate(1 day)", "timezone": "UTC"},
            "channels": ["SMS"],
            "date_range": crate::all_time(),
            "destination": {"type": "s3", "bucket": bucket, "role_arn": role},
        })
    };
    // The customer typed the wrong external id into their trust policy.
    let wrong = env.customer_role("acme-typo", "acme-prod").await;
    let (status, problem) = call(&env, request(PUT, &acme, "admin", Some(settings(&wrong)))).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "destination.role_arn");
    assert!(
        !problem.to_string().contains("acme-prod"),
        "echoes the trust policy: {problem}"
    );
    // Fixed: the same settings with a role bound to "acme" pass.
    let right = env.customer_role("acme-writer", "acme").await;
    let (status, saved) = call(&env, request(PUT, &acme, "admin", Some(settings(&right)))).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["destination"]["role_arn"], right.as_str());
}

const TEST_DESTINATION: &str = include_str!("../../../../events/export/post_destination_test.json");

/// `POST /export/destination/test` writes a probe the way a run writes and removes it:
/// the destination is left as it was. Its answer is the destination's.
#[tokio::test]
async fn testing_a_destination_leaves_no_file_and_reports_what_the_server_said() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let settings = env
        .webdav_settings(
            "exports",
            &[custody::highlevel::Channel::Sms],
            crate::all_time(),
        )
        .await;
    let destination = settings["destination"].clone();
    let test = |destination: Value| json!({ "destination": destination });

    let (status, result) = call(
        &env,
        request(
            TEST_DESTINATION,
            &acme,
            "admin",
            Some(test(destination.clone())),
        ),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["destination"], "webdav");
    assert_eq!(result["probe_removed"], true);
    assert!(
        env.dav.files().await.is_empty(),
        "the probe was left: {:?}",
        env.dav.files().await.keys()
    );
    assert!(!result.to_string().contains(&env.dav_password));

    // A wrong password: the server's refusal is the answer, nothing is written.
    let mut wrong = destination.clone();
    wrong["password"] = json!("not-the-password");
    let (status, result) = call(
        &env,
        request(TEST_DESTINATION, &acme, "admin", Some(test(wrong))),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["ok"], false);
    assert!(
        result["error"].as_str().unwrap().contains("credentials"),
        "{result}"
    );
    assert!(!result.to_string().contains("not-the-password"));
    assert!(env.dav.files().await.is_empty());

    // Without a password: only the saved one for the same server and user.
    let mut without = destination.clone();
    without.as_object_mut().unwrap().remove("password");
    let (status, problem) = call(
        &env,
        request(
            TEST_DESTINATION,
            &acme,
            "admin",
            Some(test(without.clone())),
        ),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "destination.password");
    let (status, _) = call(&env, request(PUT, &acme, "admin", Some(settings.clone()))).await;
    assert_eq!(status, 200);
    let (status, result) = call(
        &env,
        request(
            TEST_DESTINATION,
            &acme,
            "admin",
            Some(test(without.clone())),
        ),
    )
    .await;
    assert_eq!(
        (status, result["ok"].clone()),
        (200, json!(true)),
        "{result}"
    );
    let mut elsewhere = without;
    elsewhere["url"] = json!("https://other.example.com/dav/");
    let (status, problem) = call(
        &env,
        request(TEST_DESTINATION, &acme, "admin", Some(test(elsewhere))),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "destination.password");

    // The settings' own rules, and the role.
    let mut internal = destination.clone();
    internal["url"] = json!("https://169.254.169.254/latest/");
    let (status, problem) = call(
        &env,
        request(TEST_DESTINATION, &acme, "admin", Some(test(internal))),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "destination.url");
    let (status, _) = call(
        &env,
        request(TEST_DESTINATION, &acme, "operator", Some(test(destination))),
    )
    .await;
    assert_eq!(status, 403);

    // Audited as export activity, success and failure alike.
    let tested: Vec<_> = env
        .stack
        .audit(TestStackClock::clock())
        .entries(&acme, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "export_destination.tested")
        .map(|e| e.details["ok"].clone())
        .collect();
    assert_eq!(tested, vec![json!(true), json!(false), json!(true)]);
}

/// On S3 the probe goes through the customer's role and its exact version is deleted,
/// so a versioned bucket keeps no trace; a role that does not trust the tenant is the
/// settings' 422.
#[tokio::test]
async fn testing_an_s3_destination_deletes_the_probe_version_through_the_customer_role() {
    let env = Env::new(fast_limits()).await;
    let acme = tenant("acme");
    let s3 = &env.stack.clients.s3;
    let bucket = format!("acme-probe-{}", env.stack.provisioned.stage);
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let role = env.customer_role("acme-probe-writer", "acme").await;
    let destination = |role: &str| json!({"destination": {"type": "s3", "bucket": bucket, "prefix": "exports", "role_arn": role}});
    let (status, result) = call(
        &env,
        request(TEST_DESTINATION, &acme, "admin", Some(destination(&role))),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["probe_removed"], true);
    let versions = s3
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        versions.versions().is_empty() && versions.delete_markers().is_empty(),
        "the probe left {versions:?}"
    );

    let globex_role = env.customer_role("globex-probe-writer", "globex").await;
    let (status, problem) = call(
        &env,
        request(
            TEST_DESTINATION,
            &acme,
            "admin",
            Some(destination(&globex_role)),
        ),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "destination.role_arn");
}

//! The EMF lines the export function writes for real runs: a completed run against
//! the simulated HighLevel (429 bursts injected) and WebDAV, and a run ended for want
//! of a connection. Exact counts against the run's own record, only the `function`
//! dimension, and no tenant, location or token in any line. Its own test binary: the
//! recorder is process-wide, and the other tests' counts must not mix in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use custody::TenantId;
use custody::highlevel::{Channel, RetryPolicy};
use custody::metrics::{FUNCTION_DIMENSION, NAMESPACE, names};
use custody::oauth::{Connection, ConnectionStatus, OauthConfig, OauthDeps, ProviderAccount};
use custody::seal::{Purpose, SealContext};
use custody::sink::SinkRetry;
use custody::store::keys;
use custody_local::harness::TestStack;
use custody_sim::highlevel::{Faults, HighLevelSim, Limits, Seed};
use custody_sim::webdav::WebDavSim;
use export::model::ExportRun;
use export::tokens::OauthTokens;
use export::{Budget, Deps, ExportConfig, Outcome, TriggerEvent, handle_trigger};
use secrecy::SecretString;
use serde_json::{Value, json};

const DAV_USER: &str = "metrics-export";
const LOCATION: &str = "loc-metrics-1";

fn kick(tenant: &TenantId) -> TriggerEvent {
    let mut event: TriggerEvent =
        serde_json::from_str(include_str!("../../../events/export/kick.json")).unwrap();
    event.tenant_id = tenant.to_string();
    event
}

async fn configure(deps: &Deps, tenant: &TenantId, settings: Value) {
    let mut event: Value =
        serde_json::from_str(include_str!("../../../events/export/put_settings.json")).unwrap();
    let claims = &mut event["requestContext"]["authorizer"]["jwt"]["claims"];
    claims["custom:tenant_id"] = json!(tenant.as_str());
    claims["custom:role"] = json!("admin");
    event["body"] = json!(settings.to_string());
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    assert_eq!(export::handle_http(deps, request).await.status(), 200);
}

/// Values by metric name, checking every line's namespace and dimensions.
fn parse(emf: &str) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::new();
    for line in emf.lines() {
        let doc: Value = serde_json::from_str(line).unwrap();
        let aws = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(aws["Namespace"], NAMESPACE, "{line}");
        if aws["Dimensions"][0] != json!([FUNCTION_DIMENSION]) {
            // AWS-service metrics carry `service` too; nothing else may appear.
            assert_eq!(
                aws["Dimensions"][0],
                json!([FUNCTION_DIMENSION, "service"]),
                "{line}"
            );
            continue;
        }
        assert_eq!(doc[FUNCTION_DIMENSION], "export", "{line}");
        for metric in aws["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            *values.entry(name.to_owned()).or_insert(0.0) += doc[name].as_f64().unwrap();
        }
        let known = doc.as_object().unwrap().len();
        assert_eq!(
            known,
            2 + aws["Metrics"].as_array().unwrap().len(),
            "a property beside the dimension and the values: {line}"
        );
    }
    values
}

#[tokio::test]
async fn export_runs_emit_their_counts_and_no_tenant_or_location() {
    let metrics = custody::metrics::init_for("export").unwrap();
    let stack = TestStack::new().await;
    let highlevel = HighLevelSim::start(Limits {
        max: 5_000,
        interval: Duration::from_secs(1),
        daily: 10_000_000,
    })
    .await
    .unwrap();
    let dav_password = format!("dav-pw-{}", ulid::Ulid::new());
    let dav = WebDavSim::start(DAV_USER, &dav_password).await.unwrap();
    let clock = TestStack::system_clock();
    let http = custody::http::client_with_timeout(
        custody::egress::EgressPolicy::LOCAL,
        Duration::from_secs(10),
    )
    .unwrap();
    let oauth_config = OauthConfig::from_lookup(|name| match name {
        "CUSTODY_OAUTH_PROVIDERS" => {
            Some(r#"[{"name":"highlevel","kind":"highlevel","client_id":"sim-client"}]"#.into())
        }
        "CUSTODY_OAUTH_CLIENT_SECRETS_ID" => Some("unused-no-refresh-happens".into()),
        // The simulators listen on loopback.
        custody::egress::ALLOW_LOOPBACK_VAR => Some("true".into()),
        _ => None,
    })
    .unwrap();
    let oauth = OauthDeps::new(
        oauth_config,
        stack.store(clock.clone()),
        stack.sealer(),
        stack.audit(clock.clone()),
        stack.clients.secrets.clone(),
        http.clone(),
    );
    let stage = &stack.provisioned.stage;
    let config = ExportConfig {
        function_arn: format!(
            "arn:aws:lambda:us-east-1:123456789012:function:custody-export-{stage}"
        ),
        scheduler_role_arn: format!(
            "arn:aws:iam::123456789012:role/custody-export-scheduler-{stage}"
        ),
        dead_letter_queue_arn: format!(
            "arn:aws:sqs:us-east-1:123456789012:custody-export-failures-{stage}"
        ),
        highlevel_base_url: highlevel.base_url(),
        egress: custody::egress::EgressPolicy::LOCAL,
    };
    let mut deps = Deps::new(
        &stack.config,
        &stack.clients,
        config,
        http,
        Arc::new(OauthTokens { deps: oauth }),
        clock,
    );
    deps.sdk = Some(stack.sdk.clone());
    deps.highlevel_retry = RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
        request_timeout: Duration::from_millis(700),
    };
    deps.sink_retry = SinkRetry {
        max_attempts: 4,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
    };

    // A connected tenant with a small seeded location; HighLevel answers 429 now and then.
    let connected = TenantId::parse("metricsco").unwrap();
    highlevel.seed_location(LOCATION, &Seed::small(11, 12, 240));
    let token = highlevel.issue_token(LOCATION);
    let context = SealContext::new(
        &connected,
        Purpose::OauthAccessToken,
        keys::connection("highlevel"),
    );
    let connection = Connection {
        tenant: connected.clone(),
        provider: "highlevel".into(),
        status: ConnectionStatus::Active,
        account: ProviderAccount {
            location_id: Some(LOCATION.to_owned()),
            user_type: Some("Location".into()),
            ..ProviderAccount::default()
        },
        scopes: vec!["conversations/message.readonly".into()],
        access_token: stack
            .sealer()
            .seal(&context, &SecretString::from(token.clone()))
            .await
            .unwrap(),
        refresh_token: None,
        access_expires_at: (Utc::now() + chrono::Duration::days(1)).timestamp(),
        connected_at: Utc::now(),
        refreshed_at: None,
        version: 1,
        lease_owner: None,
        lease_until: None,
    };
    deps.store.put(&connection).await.unwrap();
    let settings = |root: &str| {
        json!({
            "schedule": {"expression": "cron(0 3 * * ? *)", "timezone": "UTC"},
            "channels": [Channel::Sms, Channel::Email],
            "date_range": {"mode": "fixed", "start": "2024-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"},
            "destination": {"type": "webdav", "url": dav.url(root), "username": DAV_USER, "password": dav_password},
        })
    };
    dav.collection("metricsco").await.unwrap();
    configure(&deps, &connected, settings("metricsco")).await;
    // A second tenant with settings but no connection: its run ends without exporting.
    let unconnected = TenantId::parse("lonelyco").unwrap();
    dav.collection("lonelyco").await.unwrap();
    configure(&deps, &unconnected, settings("lonelyco")).await;

    highlevel.set_faults(Faults {
        seed: 0x429,
        burst_429: 250,
        burst_len: 1,
        ..Faults::default()
    });
    let outcome = handle_trigger(&deps, kick(&connected), &Budget::unlimited())
        .await
        .unwrap();
    let Outcome::Completed { run_id, .. } = outcome else {
        panic!("{outcome:?}")
    };
    highlevel.clear_faults();
    let ended = handle_trigger(&deps, kick(&unconnected), &Budget::unlimited())
        .await
        .unwrap();
    assert!(matches!(ended, Outcome::Ended { .. }), "{ended:?}");
    let run: ExportRun = deps
        .store
        .get(&custody::store::Key::new(
            keys::tenant(&connected),
            keys::export_run(&run_id),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(run.messages > 0 && run.throttled > 0, "{run:?}");

    let mut out = Vec::new();
    metrics.flush_to(&mut out).unwrap();
    let emf = String::from_utf8(out).unwrap();
    let values = parse(&emf);
    let get = |name: &str| values.get(name).copied().unwrap_or(0.0);
    assert_eq!(get(names::EXPORT_RUNS_STARTED), 2.0, "{emf}");
    assert_eq!(get(names::EXPORT_RUNS_COMPLETED), 1.0, "{emf}");
    assert_eq!(get(names::EXPORT_RUNS_FAILED), 1.0, "{emf}");
    assert_eq!(get(names::EXPORT_RUNS_CONTINUED), 0.0, "{emf}");
    assert_eq!(get(names::EXPORT_MESSAGES), run.messages as f64, "{emf}");
    assert_eq!(get(names::EXPORT_BYTES), run.bytes as f64, "{emf}");
    assert_eq!(
        get(names::HIGHLEVEL_THROTTLED),
        run.throttled as f64,
        "{emf}"
    );
    let counters = highlevel.counters();
    assert_eq!(
        run.throttled,
        counters.injected_429 + counters.rate_limited,
        "{counters:?}"
    );

    for needle in [
        "metricsco",
        "lonelyco",
        LOCATION,
        token.as_str(),
        dav_password.as_str(),
        run_id.as_str(),
    ] {
        assert!(!emf.contains(needle), "{needle} in {emf}");
    }
}

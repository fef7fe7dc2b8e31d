//! Export throughput (issue 8, item 3): `messages` messages from the simulated
//! HighLevel, its real rate limiter on, through the export function's trigger entry
//! point (`export::handle_trigger`, the `kick` event) to the embedded WebDAV server:
//! share of the rate ceiling used, 429 count, messages/s, peak RSS.
//!
//! HighLevel documents 100 requests per 10 s; the benchmark keeps the rate and
//! scales the window down to [`LIMIT_MAX`] per [`LIMIT_INTERVAL`] so a run spans many
//! windows. Both simulators hold all their data in memory, so they run in their own
//! process (`custody-bench sim-export-services`): the peak RSS is the function's.
//!
//! Two shapes. `messages` (workload `export`): N messages in N/40 conversations, at
//! the scaled rate ceiling; next to the export's share of the ceiling,
//! `best_case_share` is what one request always in flight gets from the same limiter
//! (the same client issuing sequential requests, nothing else, for as long as the
//! export ran, at most [`BEST_CASE_MAX`]). `conversations` (workload
//! `export-conversations`): N conversations of one message each, for peak RSS against
//! the number of conversations; at 10 requests / s 100 000 conversations would take
//! hours, so this shape raises the simulated limit to [`CONVERSATIONS_LIMIT_MAX`] / s
//! (its share of the ceiling is against that limit and says little).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use custody::TenantId;
use custody::highlevel::{Channel, ExportQuery, HighLevelClient, RetryPolicy};
use custody::oauth::{Connection, ConnectionStatus, OauthConfig, OauthDeps, ProviderAccount};
use custody::seal::{Purpose, SealContext};
use custody::store::keys;
use custody_local::harness::TestStack;
use custody_sim::highlevel::{HighLevelSim, Limits, Seed};
use custody_sim::webdav::WebDavSim;
use export::tokens::OauthTokens;
use export::{Budget, Deps, ExportConfig, Outcome, TriggerEvent, handle_trigger};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::BenchError;

/// 100 requests / 10 s, scaled down: the same rate in a 1 s window.
const LIMIT_MAX: u32 = 10;
const LIMIT_INTERVAL: Duration = Duration::from_secs(1);
const LOCATION: &str = "locBench0001";
const DAV_USER: &str = "bench-export";
const DAV_ROOT: &str = "bench";
/// Messages per conversation in the generated location.
const MESSAGES_PER_CONVERSATION: u64 = 40;
/// The conversations shape's simulated limit per [`LIMIT_INTERVAL`].
pub const CONVERSATIONS_LIMIT_MAX: u32 = 2_000;
/// The longest the best case (sequential requests) is measured.
pub const BEST_CASE_MAX: Duration = Duration::from_secs(60);
/// Tells `sim-export-services` the shape (set by [`run`] on the process it starts).
const SIM_SHAPE_VAR: &str = "CUSTODY_BENCH_EXPORT_SIM_SHAPE";

/// What the location holds and how fast the simulated API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `size` messages, 40 per conversation, at the scaled ceiling.
    Messages,
    /// `size` conversations of one message each, at a raised limit.
    Conversations,
}

impl Shape {
    fn from_env(var: &str) -> Shape {
        match std::env::var(var).as_deref() {
            Ok("conversations") => Shape::Conversations,
            _ => Shape::Messages,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Messages => "messages",
            Shape::Conversations => "conversations",
        }
    }

    fn limit_max(self) -> u32 {
        match self {
            Shape::Messages => LIMIT_MAX,
            Shape::Conversations => CONVERSATIONS_LIMIT_MAX,
        }
    }

    /// `(conversations, messages)` seeded for `size`.
    fn seed(self, size: u64) -> (u64, u64) {
        match self {
            Shape::Messages => ((size / MESSAGES_PER_CONVERSATION).max(1), size),
            Shape::Conversations => (size.max(1), size.max(1)),
        }
    }
}

const PUT_SETTINGS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/export/put_settings.json"
));
const KICK: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/export/kick.json"
));

fn failed(what: &str, err: impl std::fmt::Display) -> BenchError {
    BenchError::Measurement(format!("export workload: {what}: {err}"))
}

/// `custody-bench workload export <size>`: `size` messages, 40 per conversation.
pub async fn run(size: u64) -> Result<Value, BenchError> {
    run_shape(Shape::Messages, size).await
}

/// `custody-bench workload export-conversations <size>`: `size` conversations of one
/// message each.
pub async fn run_conversations(size: u64) -> Result<Value, BenchError> {
    run_shape(Shape::Conversations, size).await
}

async fn run_shape(shape: Shape, size: u64) -> Result<Value, BenchError> {
    let messages = shape.seed(size).1;
    let exe = std::env::current_exe().map_err(|e| failed("own path", e))?;
    let mut services = tokio::process::Command::new(exe)
        .args(["sim-export-services", &size.to_string()])
        .env(SIM_SHAPE_VAR, shape.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed("simulator process", e))?;
    let mut out = BufReader::new(
        services
            .stdout
            .take()
            .ok_or_else(|| failed("simulators", "no stdout"))?,
    );
    let mut line = String::new();
    out.read_line(&mut line)
        .await
        .map_err(|e| failed("simulators", e))?;
    let sims: Value = serde_json::from_str(line.trim()).map_err(|e| failed("simulators", e))?;
    let field = |name: &str| {
        sims[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| failed("simulators", format!("no {name}")))
    };
    let (highlevel_url, token, dav_url, dav_password) = (
        field("highlevel_base_url")?,
        field("token")?,
        field("dav_url")?,
        field("dav_password")?,
    );

    let stack = TestStack::new().await;
    let deps = deps(&stack, &highlevel_url)?;
    let tenant = TenantId::parse("acme").map_err(|e| failed("tenant", e))?;
    store_connection(&stack, &deps, &tenant, &token).await?;
    configure(&deps, &tenant, &dav_url, &dav_password).await?;

    let mut kick: TriggerEvent = serde_json::from_str(KICK).map_err(|e| failed("kick", e))?;
    kick.tenant_id = tenant.to_string();
    let started = Instant::now();
    let outcome = handle_trigger(&deps, kick, &Budget::unlimited())
        .await
        .map_err(|e| failed("handle_trigger", e))?;
    let elapsed = started.elapsed();
    let peak = crate::workloads::peak_rss_bytes();
    let Outcome::Completed {
        run_id,
        conversations,
        messages: exported,
    } = outcome
    else {
        return Err(failed("run", format!("{outcome:?}")));
    };
    let run = deps
        .store
        .get::<export::model::ExportRun>(&custody::store::Key::new(
            keys::tenant(&tenant),
            keys::export_run(&run_id),
        ))
        .await
        .map_err(|e| failed("run record", e))?
        .ok_or_else(|| failed("run record", "gone"))?;

    // The export's counters, then the best case against the same limiter.
    let mut stdin = services
        .stdin
        .take()
        .ok_or_else(|| failed("simulators", "no stdin"))?;
    stdin
        .write_all(b"report\n")
        .await
        .map_err(|e| failed("simulator report", e))?;
    let mut report = String::new();
    out.read_line(&mut report)
        .await
        .map_err(|e| failed("simulator report", e))?;
    let counters: Value =
        serde_json::from_str(report.trim()).map_err(|e| failed("simulator report", e))?;
    let best = best_case(&highlevel_url, &token, elapsed.min(BEST_CASE_MAX)).await?;
    drop(stdin);
    let mut report = String::new();
    out.read_to_string(&mut report)
        .await
        .map_err(|e| failed("simulator report", e))?;
    let _ = services.wait().await;
    let best_counters: Value =
        serde_json::from_str(report.trim()).map_err(|e| failed("simulator report", e))?;

    let seconds = elapsed.as_secs_f64();
    let requests = counters["requests"].as_u64().unwrap_or(0);
    let ceiling = f64::from(shape.limit_max()) / LIMIT_INTERVAL.as_secs_f64();
    let best_requests = best_counters["requests"].as_u64().unwrap_or(0);
    let best_seconds = best.as_secs_f64();
    let best_share = best_requests as f64 / best_seconds / ceiling;
    let share = requests as f64 / seconds / ceiling;
    let (conversations_seeded, _) = shape.seed(size);
    let mut metrics = json!({
        "shape": shape.name(),
        "conversations_seeded": conversations_seeded,
        "messages_seeded": messages,
        "messages_exported": exported,
        "conversations": conversations,
        "seconds": seconds,
        "messages_per_s": exported as f64 / seconds,
        "rate_limit": match shape {
            Shape::Messages => format!("{LIMIT_MAX} requests / {} s (HighLevel's 100 / 10 s, window scaled down)", LIMIT_INTERVAL.as_secs()),
            Shape::Conversations => format!("{CONVERSATIONS_LIMIT_MAX} requests / {} s (raised: this shape measures memory)", LIMIT_INTERVAL.as_secs()),
        },
        "highlevel_requests": requests,
        "requests_per_s": requests as f64 / seconds,
        "share_of_rate_ceiling": share,
        // One request always in flight (sequential requests through the same client,
        // nothing else) against the same limiter: what a run without overlap could
        // reach at best.
        "best_case_share": best_share,
        "best_case_seconds": best_seconds,
        "best_case_requests": best_requests,
        "best_case_http_429": best_counters["rate_limited"],
        "share_of_best_case": if best_share > 0.0 { share / best_share } else { 0.0 },
        "http_429": counters["rate_limited"],
        "peak_requests_in_window": counters["peak_in_window"],
        "run_requests": run.requests,
        "run_throttled": run.throttled,
        "run_retries": run.retries,
        "bytes_written": run.bytes,
    });
    if let (Some(object), Some(peak)) = (metrics.as_object_mut(), peak) {
        object.insert("processing_peak_rss_bytes".into(), peak.into());
    }
    Ok(metrics)
}

fn deps(stack: &TestStack, highlevel_url: &str) -> Result<Deps, BenchError> {
    let clock = TestStack::system_clock();
    let http = custody::http::client(custody::egress::EgressPolicy::LOCAL)
        .map_err(|e| failed("http client", e))?;
    let oauth_config = OauthConfig::from_lookup(|name| match name {
        "CUSTODY_OAUTH_PROVIDERS" => {
            Some(r#"[{"name":"highlevel","kind":"highlevel","client_id":"sim-client"}]"#.into())
        }
        // The token lives a day: no refresh happens during the run.
        "CUSTODY_OAUTH_CLIENT_SECRETS_ID" => Some("unused-no-refresh-happens".into()),
        // The simulators listen on loopback.
        custody::egress::ALLOW_LOOPBACK_VAR => Some("true".into()),
        _ => None,
    })
    .map_err(|e| failed("oauth config", e))?;
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
        highlevel_base_url: highlevel_url.to_owned(),
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
    Ok(deps)
}

/// An active HighLevel connection whose sealed token the simulator accepts.
async fn store_connection(
    stack: &TestStack,
    deps: &Deps,
    tenant: &TenantId,
    token: &str,
) -> Result<(), BenchError> {
    let context = SealContext::new(
        tenant,
        Purpose::OauthAccessToken,
        keys::connection("highlevel"),
    );
    let sealed = stack
        .sealer()
        .seal(&context, &SecretString::from(token.to_owned()))
        .await
        .map_err(|e| failed("seal token", e))?;
    let connection = Connection {
        tenant: tenant.clone(),
        provider: "highlevel".into(),
        status: ConnectionStatus::Active,
        account: ProviderAccount {
            location_id: Some(LOCATION.to_owned()),
            user_type: Some("Location".into()),
            ..ProviderAccount::default()
        },
        scopes: vec!["conversations/message.readonly".into()],
        access_token: sealed,
        refresh_token: None,
        access_expires_at: (Utc::now() + chrono::Duration::days(1)).timestamp(),
        connected_at: Utc::now(),
        refreshed_at: None,
        version: 1,
        lease_owner: None,
        lease_until: None,
    };
    deps.store
        .put(&connection)
        .await
        .map_err(|e| failed("connection", e))
}

/// Settings through the real `PUT /export/settings` route: every channel, all time,
/// to the WebDAV folder.
async fn configure(
    deps: &Deps,
    tenant: &TenantId,
    dav_url: &str,
    dav_password: &str,
) -> Result<(), BenchError> {
    let settings = json!({
        "schedule": {"expression": "cron(0 3 * * ? *)", "timezone": "UTC"},
        "channels": Channel::ALL,
        "date_range": {"mode": "fixed", "start": "2024-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"},
        "destination": {
            "type": "webdav",
            "url": dav_url,
            "username": DAV_USER,
            "password": dav_password,
        }
    });
    let mut event: Value = serde_json::from_str(PUT_SETTINGS).map_err(|e| failed("event", e))?;
    let claims = &mut event["requestContext"]["authorizer"]["jwt"]["claims"];
    claims["custom:tenant_id"] = json!(tenant.as_str());
    claims["custom:role"] = json!("admin");
    event["body"] = json!(settings.to_string());
    let request =
        lambda_http::request::from_str(&event.to_string()).map_err(|e| failed("event", e))?;
    let response = export::handle_http(deps, request).await;
    if response.status() != 200 {
        return Err(failed(
            "PUT /export/settings",
            format!(
                "{}: {}",
                response.status(),
                String::from_utf8_lossy(response.body().as_ref())
            ),
        ));
    }
    Ok(())
}

/// `custody-bench sim-export-services <messages>`: HighLevel (rate limiter on, one
/// seeded location) and WebDAV in a process of their own. Prints their addresses
/// as one JSON line, serves until stdin closes, then prints HighLevel's counters.
pub async fn serve_simulators(size: u64) -> Result<(), BenchError> {
    let shape = Shape::from_env(SIM_SHAPE_VAR);
    let highlevel = HighLevelSim::start(Limits {
        max: shape.limit_max(),
        interval: LIMIT_INTERVAL,
        daily: 10_000_000,
    })
    .await
    .map_err(|e| failed("HighLevel simulator", e))?;
    let (conversations, messages) = shape.seed(size);
    let count = usize::try_from(messages).map_err(|e| failed("size", e))?;
    let conversations = usize::try_from(conversations).map_err(|e| failed("size", e))?;
    highlevel.seed_location(LOCATION, &Seed::small(8, conversations, count));
    let token = highlevel.issue_token(LOCATION);
    let dav_password = format!("dav-pw-{}", ulid_like());
    let dav = WebDavSim::start(DAV_USER, &dav_password)
        .await
        .map_err(|e| failed("WebDAV simulator", e))?;
    dav.collection(DAV_ROOT)
        .await
        .map_err(|e| failed("WebDAV collection", e))?;
    println!(
        "{}",
        json!({
            "highlevel_base_url": highlevel.base_url(),
            "token": token,
            "dav_url": dav.url(DAV_ROOT),
            "dav_password": dav_password,
        })
    );
    highlevel.reset_counters();
    let report = |highlevel: &HighLevelSim| {
        let counters = highlevel.counters();
        highlevel.reset_counters();
        println!(
            "{}",
            json!({
                "requests": counters.requests,
                "ok": counters.ok,
                "rate_limited": counters.rate_limited,
                "peak_in_window": counters.peak_in_window,
            })
        );
    };
    // `report` on stdin: the counters so far (then from zero again); end of stdin:
    // the counters since, and exit.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "report" {
            report(&highlevel);
        }
    }
    report(&highlevel);
    Ok(())
}

/// Sequential requests through a fresh client of the export's kind (its limiter, its
/// retries) for `duration`: one request always in flight, no other work. Returns how
/// long it ran; the simulator counts the requests.
async fn best_case(
    base_url: &str,
    token: &str,
    duration: Duration,
) -> Result<Duration, BenchError> {
    let http = custody::http::client(custody::egress::EgressPolicy::LOCAL)
        .map_err(|e| failed("http client", e))?;
    let client = HighLevelClient::new(
        http,
        base_url,
        SecretString::from(token.to_owned()),
        RetryPolicy::default(),
    )
    .map_err(|e| failed("best case client", e))?;
    let query = ExportQuery {
        location_id: LOCATION.to_owned(),
        limit: 1,
        ..ExportQuery::default()
    };
    let started = Instant::now();
    while started.elapsed() < duration {
        client
            .export_page(&query)
            .await
            .map_err(|e| failed("best case request", e))?;
    }
    Ok(started.elapsed())
}

fn ulid_like() -> String {
    format!("{:x}", Utc::now().timestamp_nanos_opt().unwrap_or(0))
}

//! Tests of the export function against the local stack (moto, provisioned from
//! template.yaml), the simulated HighLevel API and an in-process WebDAV server. Tokens
//! come from a real stored HighLevel connection through `custody::oauth`.

mod api;
mod audit_log;
mod aws_faults;
mod faults;
mod notices;
mod pipeline;
mod privacy;
mod resume;
mod stream;
mod suppression;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use custody::TenantId;
use custody::highlevel::{Channel, RetryPolicy};
use custody::oauth::{
    Connection, ConnectionStatus, OauthConfig, OauthDeps, ProviderAccount, connection_key,
};
use custody::seal::{Purpose, SealContext};
use custody::sink::SinkRetry;
use custody::store::keys;
use custody::telemetry::CapturedLogs;
use custody_local::harness::TestStack;
use custody_sim::highlevel::{HighLevelSim, Limits, Seed, SimMessage};
use custody_sim::webdav::WebDavSim;
use export::model::ExportRun;
use export::tokens::OauthTokens;
use export::{Budget, Deps, ExportConfig, Outcome, TriggerEvent, handle_trigger};
use secrecy::SecretString;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const DAV_USER: &str = "acme-export";

/// The logs of every test in this binary (one global subscriber).
pub fn logs() -> CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        custody::telemetry::init_with_writer(logs.clone());
        logs
    })
    .clone()
}

/// A stack, the two simulated services, and deps wired to them.
pub struct Env {
    pub stack: TestStack,
    pub highlevel: HighLevelSim,
    pub dav: WebDavSim,
    pub dav_password: String,
    pub deps: Deps,
}

/// Limits high enough not to slow tests that are not about rate limits; the client
/// adopts them from the response headers like it would HighLevel's.
pub fn fast_limits() -> Limits {
    Limits {
        max: 5_000,
        interval: Duration::from_secs(1),
        daily: 10_000_000,
    }
}

impl Env {
    pub async fn new(limits: Limits) -> Env {
        logs();
        let stack = TestStack::new().await;
        let highlevel = HighLevelSim::start(limits).await.unwrap();
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
            max_attempts: 6,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(40),
            request_timeout: Duration::from_millis(700),
        };
        deps.sink_retry = SinkRetry {
            max_attempts: 4,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(40),
        };
        Env {
            stack,
            highlevel,
            dav,
            dav_password,
            deps,
        }
    }

    /// Seeds `location`, and stores an active HighLevel connection for `tenant` whose
    /// token the simulated API accepts.
    pub async fn connect(&self, tenant: &TenantId, location: &str, seed: Option<&Seed>) {
        if let Some(seed) = seed {
            self.highlevel.seed_location(location, seed);
        }
        let token = self.highlevel.issue_token(location);
        self.store_connection(tenant, location, &token, ConnectionStatus::Active)
            .await;
    }

    pub async fn store_connection(
        &self,
        tenant: &TenantId,
        location: &str,
        token: &str,
        status: ConnectionStatus,
    ) {
        let sealer = self.stack.sealer();
        let context = SealContext::new(
            tenant,
            Purpose::OauthAccessToken,
            keys::connection("highlevel"),
        );
        let sealed = sealer
            .seal(&context, &SecretString::from(token.to_owned()))
            .await
            .unwrap();
        let connection = Connection {
            tenant: tenant.clone(),
            provider: "highlevel".into(),
            status,
            account: ProviderAccount {
                location_id: Some(location.to_owned()),
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
        assert_eq!(connection_key(tenant, "highlevel").pk, keys::tenant(tenant));
        self.deps.store.put(&connection).await.unwrap();
    }

    /// Saves settings through the real `PUT /export/settings` handler.
    pub async fn configure(&self, tenant: &TenantId, settings: Value) {
        let request = api::request(
            include_str!("../../../../events/export/put_settings.json"),
            tenant,
            "admin",
            Some(settings),
        );
        let response = export::handle_http(&self.deps, request).await;
        assert_eq!(
            response.status(),
            200,
            "{}",
            String::from_utf8_lossy(response.body().as_ref())
        );
    }

    /// A customer's IAM role in the emulator's IAM whose trust policy allows
    /// `sts:AssumeRole` only with `sts:ExternalId` = `external_id` (what a customer
    /// following the README creates for their tenant id). Returns its ARN.
    pub async fn customer_role(&self, name: &str, external_id: &str) -> String {
        let iam = aws_sdk_iam::Client::new(&self.stack.sdk);
        let trust = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": external_id}}
            }]
        });
        let name = format!("{name}-{}", self.stack.provisioned.stage);
        iam.create_role()
            .role_name(&name)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .unwrap()
            .role
            .unwrap()
            .arn
    }

    /// Settings exporting to a new WebDAV folder `root`.
    pub async fn webdav_settings(&self, root: &str, channels: &[Channel], range: Value) -> Value {
        self.dav.collection(root).await.unwrap();
        serde_json::json!({
            "schedule": {"expression": "cron(0 3 * * ? *)", "timezone": "UTC"},
            "channels": channels,
            "date_range": range,
            "destination": {
                "type": "webdav",
                "url": self.dav.url(root),
                "username": DAV_USER,
                "password": self.dav_password,
            }
        })
    }

    /// Invokes the worker with `kick.json` until the run completes (at most `limit`
    /// invocations), with a fresh budget from `budget` each time.
    pub async fn run_to_completion(
        &self,
        tenant: &TenantId,
        limit: usize,
        budget: impl Fn() -> Budget,
    ) -> (String, Vec<Outcome>) {
        let mut outcomes = Vec::new();
        for _ in 0..limit {
            let outcome = handle_trigger(&self.deps, kick_event(tenant), &budget())
                .await
                .unwrap();
            outcomes.push(outcome.clone());
            if let Outcome::Completed { run_id, .. } = outcome {
                return (run_id, outcomes);
            }
        }
        panic!("run did not complete in {limit} invocations: {outcomes:?}");
    }

    pub async fn run(&self, tenant: &TenantId, run_id: &str) -> ExportRun {
        self.deps
            .store
            .get::<ExportRun>(&custody::store::Key::new(
                keys::tenant(tenant),
                keys::export_run(run_id),
            ))
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn runs(&self, tenant: &TenantId) -> Vec<ExportRun> {
        self.deps
            .store
            .query_all::<ExportRun>(&keys::tenant(tenant), "RUN#")
            .await
            .unwrap()
    }
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

pub fn kick_event(tenant: &TenantId) -> TriggerEvent {
    let mut event: TriggerEvent =
        serde_json::from_str(include_str!("../../../../events/export/kick.json")).unwrap();
    event.tenant_id = tenant.to_string();
    event
}

pub fn schedule_event(tenant: &TenantId, time: &str) -> TriggerEvent {
    let mut event: TriggerEvent =
        serde_json::from_str(include_str!("../../../../events/export/schedule.json")).unwrap();
    event.tenant_id = tenant.to_string();
    event.scheduled_time = Some(time.to_owned());
    event
}

pub fn all_time() -> Value {
    serde_json::json!({"mode": "fixed", "start": "2024-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"})
}

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// The seeded messages a run with these channels and window must export.
pub fn expected(
    messages: &[SimMessage],
    channels: &[Channel],
    start: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
) -> HashSet<String> {
    messages
        .iter()
        .filter(|m| {
            Channel::of_message_type(&m.message_type).is_some_and(|c| channels.contains(&c))
                && start.is_none_or(|s| m.date_added >= s)
                && m.date_added < end
        })
        .map(|m| m.id.clone())
        .collect()
}

/// One run's files as read back from the destination.
#[derive(Debug)]
pub struct Archive {
    pub manifest: Value,
    /// Conversation file path (relative to the run directory) → parsed document.
    pub files: BTreeMap<String, Value>,
    /// Message id → how many times it occurs across the run's files.
    pub message_counts: HashMap<String, usize>,
}

impl Archive {
    /// Checks the manifest against the files (every file listed, hashes and counts
    /// match, nothing extra, no partial file anywhere) and collects message ids.
    pub fn verify(all: &BTreeMap<String, Vec<u8>>, run_dir: &str) -> Archive {
        assert!(
            !all.keys()
                .any(|path| path.ends_with(custody::sink::PARTIAL_SUFFIX)),
            "partial files left behind: {:?}",
            all.keys()
                .filter(|p| p.ends_with(".partial"))
                .collect::<Vec<_>>()
        );
        let prefix = format!("{}/", run_dir.trim_end_matches('/'));
        let manifest_bytes = all
            .get(&format!("{prefix}manifest.json"))
            .unwrap_or_else(|| panic!("no manifest under {prefix}"));
        let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
        assert_eq!(manifest["format"], "custody.manifest/v1");
        let entries = manifest["files"].as_array().unwrap();
        let mut files = BTreeMap::new();
        let mut message_counts: HashMap<String, usize> = HashMap::new();
        for entry in entries {
            let path = entry["path"].as_str().unwrap();
            let content = all
                .get(&format!("{prefix}{path}"))
                .unwrap_or_else(|| panic!("manifest lists missing file {path}"));
            assert_eq!(
                entry["sha256"].as_str().unwrap(),
                hex::encode(Sha256::digest(content)),
                "hash of {path}"
            );
            assert_eq!(entry["bytes"].as_u64().unwrap(), content.len() as u64);
            let document: Value = serde_json::from_slice(content).unwrap();
            let messages = document["messages"].as_array().unwrap();
            assert_eq!(entry["messages"].as_u64().unwrap(), messages.len() as u64);
            assert_eq!(
                document["conversation"]["id"], entry["conversation_id"],
                "file of the right conversation"
            );
            for message in messages {
                *message_counts
                    .entry(message["id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            files.insert(path.to_owned(), document);
        }
        let on_disk: Vec<&String> = all
            .keys()
            .filter(|p| p.starts_with(&prefix) && !p.ends_with("manifest.json"))
            .collect();
        assert_eq!(on_disk.len(), entries.len(), "files not in the manifest");
        assert_eq!(
            manifest["totals"]["messages"].as_u64().unwrap(),
            message_counts.values().sum::<usize>() as u64
        );
        Archive {
            manifest,
            files,
            message_counts,
        }
    }

    /// Asserts that the run exported exactly `expected`, each message once.
    pub fn assert_exactly(&self, expected: &HashSet<String>) {
        let duplicated: Vec<_> = self
            .message_counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect();
        assert!(
            duplicated.is_empty(),
            "messages written twice: {duplicated:?}"
        );
        let got: HashSet<String> = self.message_counts.keys().cloned().collect();
        let missing = expected.difference(&got).count();
        let extra = got.difference(expected).count();
        assert_eq!((missing, extra), (0, 0), "missing and unexpected messages");
    }
}

/// The run directory on the WebDAV server (`/<root>/<location>/<yyyy>/<mm>/<dd>/<run>`).
pub fn dav_run_dir(root: &str, location: &str, run: &ExportRun) -> String {
    format!("/{root}/{}", export::archive::run_dir(location, run))
}

/// Every item of a table, raw, as text.
pub async fn raw_table_dump(client: &aws_sdk_dynamodb::Client, table: &str) -> String {
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    let mut dump = String::new();
    loop {
        let out = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap();
        for item in out.items.unwrap_or_default() {
            dump.push_str(&format!("{item:?}\n"));
        }
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return dump,
        }
    }
}

//! One environment per test: an isolated stack, three local providers (HighLevel,
//! Google, generic), the function's deps, a manual clock, and a webhook signer.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use aws_sdk_dynamodb::types::AttributeValue;
use custody::TenantId;
use custody::clock::ManualClock;
use custody::oauth::webhook::WebhookKeys;
use custody::oauth::{OauthConfig, OauthDeps};
use custody::telemetry::CapturedLogs;
use custody_local::harness::TestStack;
use custody_sim::oauth_provider::{Flavour, OauthProviderSim, WebhookSigner};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

pub const REDIRECT_BASE: &str = "https://api.custody.test/prod";
/// The Marketplace app id of [`Env::with_marketplace`] (and of the webhooks' `appId`).
pub const MARKETPLACE_APP_ID: &str = "66c0ffee0000000000000001";
pub const RETURN_URL: &str = "https://app.custody.test/settings/connections";

pub const CONNECT: &str = include_str!("../../../../events/oauth/connect.json");
pub const CALLBACK: &str = include_str!("../../../../events/oauth/callback.json");
pub const LIST: &str = include_str!("../../../../events/oauth/list_connections.json");
pub const DISCONNECT: &str = include_str!("../../../../events/oauth/disconnect.json");
pub const WEBHOOK: &str = include_str!("../../../../events/oauth/webhook_highlevel.json");

/// Every log line of this test binary: no token may ever appear in it.
pub fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        custody::telemetry::init_with_writer(logs.clone());
        logs
    })
}

pub struct Env {
    pub stack: TestStack,
    pub clock: ManualClock,
    pub deps: oauth::Deps,
    pub providers: HashMap<&'static str, OauthProviderSim>,
    pub signer: WebhookSigner,
    /// The test's browser: never follows redirects, so each hop is checked.
    pub browser: reqwest::Client,
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

impl Env {
    pub async fn new() -> Env {
        Self::with_ed25519(false).await
    }

    pub async fn with_ed25519(ed25519: bool) -> Env {
        Self::build(ed25519, false).await
    }

    /// HighLevel takes Marketplace installs (and, to show revocation where a
    /// provider can, has a revocation endpoint).
    pub async fn with_marketplace() -> Env {
        Self::build(false, true).await
    }

    async fn build(ed25519: bool, marketplace: bool) -> Env {
        logs();
        let stack = TestStack::new().await;
        let clock = ManualClock::at(chrono::Utc::now());
        let mut providers = HashMap::new();
        let mut config = Vec::new();
        let mut secrets = serde_json::Map::new();
        for (name, flavour) in [
            ("highlevel", Flavour::HighLevel),
            ("google", Flavour::Google),
            ("crm", Flavour::Generic),
        ] {
            let secret = format!("secret-{name}-{}", ulid::Ulid::new());
            let sim = OauthProviderSim::start(flavour, &format!("client-{name}"), &secret)
                .await
                .unwrap();
            sim.register_redirect_uri(&format!("{REDIRECT_BASE}/oauth/{name}/callback"));
            let mut entry = json!({
                "name": name,
                "client_id": format!("client-{name}"),
                "authorize_url": sim.authorize_url(),
                "token_url": sim.token_url(),
            });
            match flavour {
                Flavour::HighLevel => {
                    entry["kind"] = json!("highlevel");
                    if marketplace {
                        entry["marketplace_app_id"] = json!(MARKETPLACE_APP_ID);
                        entry["revocation_url"] = json!(sim.revocation_url());
                    }
                }
                Flavour::Google => {
                    entry["kind"] = json!("google");
                    entry["revocation_url"] = json!(sim.revocation_url());
                    entry["userinfo_url"] = json!(sim.userinfo_url());
                    entry["issuer"] = json!(sim.issuer());
                }
                Flavour::Generic => {
                    entry["kind"] = json!("generic");
                    entry["revocation_url"] = json!(sim.revocation_url());
                    entry["issuer"] = json!(sim.issuer());
                    entry["scopes"] = json!(["contacts.read", "messages.read"]);
                }
            }
            config.push(entry);
            secrets.insert(name.to_owned(), json!(secret));
            providers.insert(name, sim);
        }
        let secret_id = stack.provisioned.resources["OauthClientSecrets"].id.clone();
        stack
            .clients
            .secrets
            .put_secret_value()
            .secret_id(&secret_id)
            .secret_string(Value::Object(secrets).to_string())
            .send()
            .await
            .unwrap();
        let providers_json = Value::Array(config).to_string();
        let oauth_config = OauthConfig::from_lookup(|name| match name {
            "CUSTODY_OAUTH_PROVIDERS" => Some(providers_json.clone()),
            "CUSTODY_OAUTH_CLIENT_SECRETS_ID" => Some(secret_id.clone()),
            "CUSTODY_OAUTH_REDIRECT_BASE" => Some(REDIRECT_BASE.into()),
            "CUSTODY_OAUTH_RETURN_URLS" => Some("https://app.custody.test/settings".into()),
            // The simulators listen on loopback.
            custody::egress::ALLOW_LOOPBACK_VAR => Some("true".into()),
            _ => None,
        })
        .unwrap();
        let signer = WebhookSigner::generate().unwrap();
        let ed_pem = signer.ed25519_public_key_pem().unwrap();
        let webhook_keys = WebhookKeys::new(
            Some(&signer.rsa_public_key_pem().unwrap()),
            ed25519.then_some(ed_pem.as_str()),
        )
        .unwrap();
        let shared_clock: custody::clock::SharedClock = Arc::new(clock.clone());
        let deps = oauth::Deps {
            oauth: OauthDeps::new(
                oauth_config,
                stack.store(shared_clock.clone()),
                stack.sealer(),
                stack.audit(shared_clock),
                stack.clients.secrets.clone(),
                custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
            ),
            schedules: stack.schedules(),
            webhook_keys,
        };
        Env {
            stack,
            clock,
            deps,
            providers,
            signer,
            browser: custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
        }
    }

    pub fn sim(&self, name: &str) -> &OauthProviderSim {
        &self.providers[name]
    }

    pub async fn call(&self, event: Value) -> Response<Body> {
        let req: Request = lambda_http::request::from_str(&event.to_string()).unwrap();
        oauth::handle(&self.deps, req).await
    }

    /// `GET /connect/{provider}` as an admin of `tenant`.
    pub async fn connect(&self, tenant: &str, provider: &str, return_url: &str) -> Response<Body> {
        let mut ev = event(CONNECT);
        set_claims(&mut ev, tenant, "admin");
        set_path(
            &mut ev,
            "provider",
            provider,
            &format!("/connect/{provider}"),
        );
        set_query(&mut ev, &[("return_url", return_url)]);
        self.call(ev).await
    }

    /// Starts a flow and lets the provider answer: returns (callback query pairs,
    /// binding cookie value).
    pub async fn authorize(&self, tenant: &str, provider: &str) -> (Vec<(String, String)>, String) {
        let resp = self.connect(tenant, provider, RETURN_URL).await;
        assert_eq!(resp.status(), 302, "{}", body_text(&resp));
        let authorize_url = header(&resp, "location");
        let cookie = header(&resp, "set-cookie");
        let binding = cookie
            .strip_prefix("__Host-custody-oauth=")
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .to_owned();
        let at_provider = self.browser.get(&authorize_url).send().await.unwrap();
        assert_eq!(at_provider.status(), 302);
        let back = at_provider.headers()["location"]
            .to_str()
            .unwrap()
            .to_owned();
        let back = url::Url::parse(&back).unwrap();
        assert!(
            back.as_str()
                .starts_with(&format!("{REDIRECT_BASE}/oauth/{provider}/callback"))
        );
        let pairs = back
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        (pairs, binding)
    }

    /// The provider's redirect arriving at `GET /oauth/{provider}/callback`.
    pub async fn callback(
        &self,
        provider: &str,
        pairs: &[(String, String)],
        binding: Option<&str>,
    ) -> Response<Body> {
        let mut ev = event(CALLBACK);
        set_path(
            &mut ev,
            "provider",
            provider,
            &format!("/oauth/{provider}/callback"),
        );
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        set_query(&mut ev, &refs);
        let headers = ev["headers"].as_object_mut().unwrap();
        match binding {
            Some(b) => headers.insert("cookie".into(), json!(format!("__Host-custody-oauth={b}"))),
            None => headers.remove("cookie"),
        };
        self.call(ev).await
    }

    /// A full successful connection; returns the callback response.
    pub async fn connect_fully(&self, tenant: &str, provider: &str) -> Response<Body> {
        let (pairs, binding) = self.authorize(tenant, provider).await;
        let resp = self.callback(provider, &pairs, Some(&binding)).await;
        assert_eq!(
            result_of(&resp).as_deref(),
            Some("connected"),
            "{}",
            body_text(&resp)
        );
        resp
    }

    pub async fn connection_item(
        &self,
        tenant: &str,
        provider: &str,
    ) -> Option<HashMap<String, AttributeValue>> {
        self.stack
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.stack.config.table)
            .key("pk", AttributeValue::S(format!("T#{tenant}")))
            .key("sk", AttributeValue::S(format!("CONN#{provider}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
    }

    /// Every item of the table, raw, as text.
    pub async fn table_dump(&self) -> String {
        let out = self
            .stack
            .clients
            .dynamodb
            .scan()
            .table_name(&self.stack.config.table)
            .send()
            .await
            .unwrap();
        format!("{:?}", out.items.unwrap_or_default())
    }

    pub async fn count_kind(&self, kind: &str) -> usize {
        let out = self
            .stack
            .clients
            .dynamodb
            .scan()
            .table_name(&self.stack.config.table)
            .filter_expression("kind = :k")
            .expression_attribute_values(":k", AttributeValue::S(kind.into()))
            .send()
            .await
            .unwrap();
        out.items.unwrap_or_default().len()
    }

    /// The tenant's audit actions in order; the chain must verify.
    pub async fn audit_actions(&self, tenant: &str) -> Vec<String> {
        let clock: custody::clock::SharedClock = Arc::new(self.clock.clone());
        let log = self.stack.audit(clock);
        log.verify(&self::tenant(tenant)).await.unwrap().unwrap();
        log.entries(&self::tenant(tenant), None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect()
    }
}

pub fn event(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

pub fn set_claims(ev: &mut Value, tenant: &str, role: &str) {
    let claims = &mut ev["requestContext"]["authorizer"]["jwt"]["claims"];
    claims["custom:tenant_id"] = json!(tenant);
    claims["custom:role"] = json!(role);
}

pub fn set_path(ev: &mut Value, param: &str, value: &str, path: &str) {
    ev["pathParameters"] = json!({ param: value });
    ev["rawPath"] = json!(path);
    ev["requestContext"]["http"]["path"] = json!(path);
}

pub fn set_query(ev: &mut Value, pairs: &[(&str, &str)]) {
    let raw = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    ev["rawQueryString"] = json!(raw);
    ev["queryStringParameters"] = Value::Object(map);
}

pub fn header(resp: &Response<Body>, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

pub fn body_text(resp: &Response<Body>) -> String {
    String::from_utf8_lossy(resp.body().as_ref()).into_owned()
}

pub fn body_json(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap()
}

/// The `result` the browser is sent back with, if it was redirected to the app.
pub fn result_of(resp: &Response<Body>) -> Option<String> {
    let location = header(resp, "location");
    let url = url::Url::parse(&location).ok()?;
    if !url.as_str().starts_with(RETURN_URL) {
        return None;
    }
    url.query_pairs()
        .find(|(k, _)| k == "result")
        .map(|(_, v)| v.into_owned())
}

pub fn replace_pair(pairs: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != name).cloned().collect();
    out.push((name.to_owned(), value.to_owned()));
    out
}

pub fn without_pair(pairs: &[(String, String)], name: &str) -> Vec<(String, String)> {
    pairs.iter().filter(|(k, _)| k != name).cloned().collect()
}

pub async fn add_schedule(env: &Env, tenant_name: &str) {
    env.deps
        .schedules
        .upsert(
            &tenant(tenant_name),
            &custody::schedule::ScheduleSpec {
                expression: "rate(1 day)".into(),
                timezone: "UTC".into(),
                target_arn: "arn:aws:lambda:us-east-1:123456789012:function:export".into(),
                role_arn: "arn:aws:iam::123456789012:role/custody-scheduler".into(),
                dead_letter_arn: "arn:aws:sqs:us-east-1:123456789012:custody-export-failures"
                    .into(),
            },
        )
        .await
        .unwrap();
}

//! The demo journey: custody doing its whole job on the local stack, step by step,
//! through the real function binaries and the HTTP API, as a newcomer meets it.
//!
//! Every step checks its own result; the first failed check ends the journey with
//! an error naming the step. `custody-local demo` prints the journey; `custody-local
//! up` starts the same environment and leaves it running.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custody::TenantId;
use custody::audit::AuditLog;
use custody::clock::SystemClock;
use custody_sim::destination::DestinationSim;
use custody_sim::highlevel::{HighLevelSim, Limits, Seed};
use custody_sim::oauth_provider::{Flavour, OauthProviderSim, SimAccount, WebhookSigner};
use custody_sim::webdav::WebDavSim;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::stack::{LocalStack, StackError, StackOptions};

pub const TENANT: &str = "demo";
pub const LOCATION: &str = "loc_demo_0001";
const CLIENT_ID: &str = "custody-demo";
const RETURN_URL: &str = "http://127.0.0.1/app/connections";
const DAV_USER: &str = "demo-export";
/// The contact the privacy steps follow; shares the import file with others.
pub const SUBJECT_EMAIL: &str = "jane.doe@example.com";
/// The subject's email as the privacy step's rectification corrects it.
pub const SUBJECT_CORRECTED_EMAIL: &str = "jane.doe-smith@example.com";
pub const SUBJECT_PHONE: &str = "+447700900123";
pub const SUBJECT_CONTACT: &str = "hl_contact_42";
pub const SUBJECT_NAME: &str = "Jane Doe";

/// The Marketplace app id the demo's HighLevel app is configured with.
const MARKETPLACE_APP_ID: &str = "custody-demo-app";

pub const STEPS: [&str; 9] = [
    "connect HighLevel (OAuth, state + PKCE)",
    "export conversations to WebDAV",
    "import a CSV file",
    "restrict a subject's processing: imports leave their rows out until it is lifted",
    "consent, access, rectification and erasure of a data subject",
    "uninstall through the signed HighLevel webhook",
    "install again from the HighLevel Marketplace and claim it",
    "notices received by the tenant's notification webhook, signatures verified",
    "verify the audit chain",
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("setting up the local stack: {0}")]
    Setup(String),
    #[error("step {step} ({name}) failed: {message}")]
    Step {
        step: usize,
        name: &'static str,
        message: String,
    },
}

impl From<StackError> for DemoError {
    fn from(err: StackError) -> Self {
        DemoError::Setup(err.to_string())
    }
}

/// The local stack plus the simulated outside world.
pub struct Environment {
    pub stack: LocalStack,
    pub oauth: OauthProviderSim,
    pub highlevel: HighLevelSim,
    pub webdav: WebDavSim,
    pub destination: DestinationSim,
    /// The tenant's notification webhook (privacy notices), a receiver of its own
    /// that verifies every signature with [`Environment::notice_secret`].
    pub notices: DestinationSim,
    /// Signs HighLevel's webhooks; the simulated Marketplace sends its `INSTALL`
    /// webhooks with it too.
    pub signer: Arc<WebhookSigner>,
    client_secret: String,
    dav_password: String,
    destination_secret: String,
    notice_secret: String,
    /// Secret values the journey handled (OAuth state, code and cookie, bearer
    /// tokens, presigned-URL signatures), for tests that look for them in logs.
    handled: Mutex<BTreeSet<String>>,
    http: reqwest::Client,
}

/// How the environment runs its functions.
#[derive(Debug, Clone)]
pub struct EnvironmentOptions {
    /// Keep each function's output in `<dir>/<function>.log` (besides printing it).
    pub log_dir: Option<PathBuf>,
    /// The functions' `RUST_LOG`. The demo's is `warn`, so its transcript stays
    /// readable; a test of what the logs contain asks for more.
    pub log_filter: String,
}

impl Default for EnvironmentOptions {
    fn default() -> Self {
        Self {
            log_dir: None,
            log_filter: "warn".into(),
        }
    }
}

fn random_secret(prefix: &str) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 32)
    )
}

impl Environment {
    /// Starts the simulated services, then the local stack configured to use them.
    pub async fn start(stage: &str) -> Result<Environment, DemoError> {
        Self::start_with(stage, EnvironmentOptions::default()).await
    }

    /// [`Environment::start`] with its functions' logs kept and filtered as asked.
    pub async fn start_with(
        stage: &str,
        run: EnvironmentOptions,
    ) -> Result<Environment, DemoError> {
        Self::start_adjusted(stage, run, |_| {}).await
    }

    /// [`Environment::start_with`], with a last say on the stack's options (a test
    /// serves its own console build, for example).
    pub async fn start_adjusted(
        stage: &str,
        run: EnvironmentOptions,
        adjust: impl FnOnce(&mut StackOptions),
    ) -> Result<Environment, DemoError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| DemoError::Setup(format!("{what}: {e}"));
        let client_secret = random_secret("cs_");
        let oauth = OauthProviderSim::start(Flavour::HighLevel, CLIENT_ID, &client_secret)
            .await
            .map_err(|e| setup("simulated HighLevel OAuth", &e))?;
        oauth.set_account(SimAccount {
            location_id: LOCATION.into(),
            company_id: "co_demo_0001".into(),
            user_type: "Location".into(),
            subject: "demo-user".into(),
        });
        let highlevel = HighLevelSim::start(Limits::default())
            .await
            .map_err(|e| setup("simulated HighLevel API", &e))?;
        highlevel.seed_location(LOCATION, &Seed::small(7, 25, 600));
        // One world: the API accepts exactly the tokens the provider issues.
        highlevel.trust(oauth.token_authority());
        let dav_password = random_secret("dav_");
        let webdav = WebDavSim::start(DAV_USER, &dav_password)
            .await
            .map_err(|e| setup("WebDAV server", &e))?;
        webdav
            .collection("exports")
            .await
            .map_err(|e| setup("WebDAV collection", &e))?;
        let destination_secret = random_secret("whsec_");
        let destination = DestinationSim::start(&destination_secret)
            .await
            .map_err(|e| setup("destination webhook receiver", &e))?;
        let notice_secret = random_secret("whsec_");
        let notices = DestinationSim::start(&notice_secret)
            .await
            .map_err(|e| setup("notification webhook receiver", &e))?;
        let signer =
            Arc::new(WebhookSigner::generate().map_err(|e| setup("webhook signing key", &e))?);
        let rsa_public = signer
            .rsa_public_key_pem()
            .map_err(|e| setup("webhook public key", &e))?;

        let providers = json!([{
            "name": "highlevel",
            "kind": "highlevel",
            "client_id": CLIENT_ID,
            "authorize_url": oauth.authorize_url(),
            "token_url": oauth.token_url(),
            "user_type": "Location",
            "marketplace_app_id": MARKETPLACE_APP_ID,
        }])
        .to_string();
        let mut options = StackOptions::new(stage);
        options.overrides = BTreeMap::from([
            ("CUSTODY_OAUTH_PROVIDERS".into(), providers),
            ("CUSTODY_OAUTH_REDIRECT_BASE".into(), "{base_url}".into()),
            // The web console's connections page first: a Marketplace install's
            // browser lands on the first (the claim page). Then the demo's own
            // return URL, and the console's origin (the stack binds it before the
            // functions start).
            (
                "CUSTODY_OAUTH_RETURN_URLS".into(),
                "{console_url}/connections,http://127.0.0.1/app,{console_url}".into(),
            ),
            ("CUSTODY_HIGHLEVEL_WEBHOOK_RSA_KEY".into(), rsa_public),
            ("CUSTODY_HIGHLEVEL_API_URL".into(), highlevel.base_url()),
            // The purge's final sweep waits `custody::privacy::PURGE_GRACE` (4 minutes)
            // in AWS; a demo does not wait that long. The template never shortens it
            // (shared/tests/integration/template.rs holds that).
            ("CUSTODY_DSAR_PURGE_GRACE_SECONDS".into(), "2".into()),
            ("RUST_LOG".into(), run.log_filter.clone()),
        ]);
        options.log_dir = run.log_dir.clone();
        adjust(&mut options);
        let stack = LocalStack::start(options).await?;
        oauth.register_redirect_uri(&format!("{}/oauth/highlevel/callback", stack.base_url));
        // HighLevel reports every Marketplace install with a signed INSTALL webhook.
        oauth.set_marketplace_webhook(
            &format!("{}/webhooks/highlevel", stack.base_url),
            Arc::clone(&signer),
            MARKETPLACE_APP_ID,
        );
        // The client secret lives in Secrets Manager, as in production.
        let secret_id = stack
            .provisioned
            .resources
            .get("OauthClientSecrets")
            .map(|p| p.id.clone())
            .ok_or_else(|| DemoError::Setup("template has no OauthClientSecrets".into()))?;
        stack
            .clients
            .secrets
            .put_secret_value()
            .secret_id(secret_id)
            .secret_string(json!({ "highlevel": client_secret }).to_string())
            .send()
            .await
            .map_err(|e| setup("client secret", &e))?;
        let http = custody::http::client(custody::egress::EgressPolicy::LOCAL)
            .map_err(|e| setup("HTTP client", &e))?;
        Ok(Environment {
            stack,
            oauth,
            highlevel,
            webdav,
            destination,
            notices,
            signer,
            client_secret,
            dav_password,
            destination_secret,
            notice_secret,
            handled: Mutex::new(BTreeSet::new()),
            http,
        })
    }

    /// Where a browser clicks Install in the simulated HighLevel Marketplace: it
    /// comes back through custody's callback to the console's claim page, and the
    /// signed `INSTALL` webhook follows by itself. A `location_id` parameter added
    /// to it installs another location (the sub-account picked at install).
    pub fn marketplace_install_url(&self) -> String {
        self.oauth
            .marketplace_install_url(&format!("{}/oauth/highlevel/callback", self.stack.base_url))
    }

    pub fn admin_token(&self) -> String {
        let token = self.stack.token(TENANT, "admin");
        self.handled_secret(&token);
        token
    }

    fn handled_secret(&self, value: &str) {
        if !value.is_empty() {
            self.handled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(value.to_owned());
        }
    }

    /// The signature of a presigned URL, which is what makes the link a credential.
    fn handled_presigned(&self, url: &str) {
        if let Ok(url) = url::Url::parse(url) {
            for (name, value) in url.query_pairs() {
                if name.eq_ignore_ascii_case("X-Amz-Signature")
                    || name.eq_ignore_ascii_case("X-Amz-Security-Token")
                {
                    self.handled_secret(&value);
                }
            }
        }
    }

    /// Every secret of this world a log line must never hold: the OAuth client
    /// secret, every access and refresh token the provider issued, the WebDAV
    /// password, the destination's signing secret, the pseudonym application secret,
    /// and what the journey handled so far (OAuth state, code and browser-binding
    /// cookie, bearer tokens, presigned-URL signatures).
    pub async fn secrets(&self) -> Result<Vec<String>, DemoError> {
        let mut all: BTreeSet<String> = self
            .handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        all.extend([
            self.client_secret.clone(),
            self.dav_password.clone(),
            self.destination_secret.clone(),
            self.notice_secret.clone(),
        ]);
        all.extend(self.oauth.issued_access_tokens());
        all.extend(self.oauth.issued_refresh_tokens());
        let pseudonym = self
            .stack
            .clients
            .secrets
            .get_secret_value()
            .secret_id(&self.stack.provisioned.config.pseudonym_secret_id)
            .send()
            .await
            .map_err(|e| DemoError::Setup(format!("pseudonym secret: {e}")))?;
        all.extend(pseudonym.secret_string().map(str::to_owned));
        Ok(all.into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// Every value that identifies a person the journey handles: the privacy steps'
    /// subject (its email before and after the rectification), every contact of the imported file (contact id, name, email, phone,
    /// the phone without its `+`) and every contact of the simulated HighLevel
    /// location the export reads (contact ids).
    pub fn subject_identifiers(&self) -> Vec<String> {
        let mut all = BTreeSet::new();
        all.extend(
            [
                SUBJECT_EMAIL,
                SUBJECT_CORRECTED_EMAIL,
                SUBJECT_PHONE,
                SUBJECT_CONTACT,
                SUBJECT_NAME,
            ]
            .map(str::to_owned),
        );
        let csv = demo_csv();
        for line in csv.lines().skip(1) {
            // contact_id,name,email,phone,note: the note is free text, not an id.
            for field in line.split(',').take(4) {
                let field = field.trim();
                if !field.is_empty() {
                    all.insert(field.to_owned());
                    if let Some(digits) = field.strip_prefix('+') {
                        all.insert(digits.to_owned());
                    }
                }
            }
        }
        for message in self.highlevel.messages(LOCATION).iter() {
            all.insert(message.contact_id.clone());
        }
        all.into_iter().collect()
    }

    /// The running stack as JSON (`custody-local up --state-file`): what a script or a
    /// test needs to drive it over HTTP alone.
    pub fn state(&self) -> Value {
        json!({
            "base_url": self.stack.base_url,
            "console": format!("{}/", self.stack.console_url),
            // Where a page embedding <custody-importer> may run (CORS allows it).
            "importer_origin": self.stack.importer_origin,
            "oidc": {
                "issuer": self.stack.oidc_url,
                "client_id": crate::console::CLIENT_ID,
            },
            "lambda_url": self.stack.lambda_url,
            "emulator": self.stack.endpoint,
            // The failure queues by logical id (`make redrive ARGS="--queue …"`).
            "failure_queues": self
                .stack
                .provisioned
                .resources
                .iter()
                .filter(|(_, p)| p.kind == "AWS::SQS::Queue")
                .map(|(logical, p)| (logical.clone(), json!(p.id)))
                .collect::<serde_json::Map<_, _>>(),
            "tenant": TENANT,
            // Clicking Install in the simulated HighLevel Marketplace (a browser GET).
            "highlevel_marketplace_install": self.marketplace_install_url(),
            "token": self.admin_token(),
            "viewer_token": self.stack.token(TENANT, "viewer"),
            "return_url": RETURN_URL,
            "webdav": {
                "url": self.webdav.url("exports"),
                "username": DAV_USER,
                "password": self.dav_password,
            },
            "highlevel": {
                "api": self.highlevel.base_url(),
                "oauth": self.oauth.base_url(),
                "location_id": LOCATION,
            },
            "destination": {
                "url": self.destination.url(),
                "secret": self.destination_secret,
            },
        })
    }

    /// What a person needs to poke at the running stack.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let base = &self.stack.base_url;
        let _ = writeln!(out, "custody local stack is up");
        let _ = writeln!(out, "Console  {}/", self.stack.console_url);
        let _ = writeln!(out, "  HTTP API          {base}");
        let _ = writeln!(
            out,
            "  Importer origin   {} (pages embedding <custody-importer>: {}/custody-importer.js)",
            self.stack.importer_origin, self.stack.console_url
        );
        let _ = writeln!(
            out,
            "  OIDC (local)      {} (client {}; the console's login: any tenant, any role)",
            self.stack.oidc_url,
            crate::console::CLIENT_ID
        );
        let _ = writeln!(out, "  AWS emulator      {}", self.stack.endpoint);
        let _ = writeln!(out, "  HighLevel (sim)   {}", self.highlevel.base_url());
        let _ = writeln!(out, "  OAuth (sim)       {}", self.oauth.base_url());
        let _ = writeln!(
            out,
            "  Marketplace (sim) {} (open it in a browser: Install, claim in the console; the signed INSTALL webhook follows by itself)",
            self.marketplace_install_url()
        );
        let _ = writeln!(
            out,
            "  WebDAV            {} (user {DAV_USER}, password {})",
            self.webdav.url("exports"),
            self.dav_password
        );
        let _ = writeln!(
            out,
            "  destination hook  {} (secret {})",
            self.destination.url(),
            self.destination_secret
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "export CUSTODY={base}");
        let _ = writeln!(
            out,
            "export TOKEN={}   # tenant '{TENANT}', role admin, 12 h",
            self.admin_token()
        );
        let _ = writeln!(out, "export VIEWER={}", self.stack.token(TENANT, "viewer"));
        let _ = writeln!(
            out,
            "export DAV_URL={} DAV_USER={DAV_USER} DAV_PASSWORD={}",
            self.webdav.url("exports"),
            self.dav_password
        );
        let _ = writeln!(out, "export LAMBDA={}", self.stack.lambda_url);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Schedules fire by themselves (local EventBridge Scheduler). Deliver any event:"
        );
        let _ = writeln!(
            out,
            "  target/debug/custody-local invoke export events/export/kick.json"
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Routes (all but the callback and webhook need -H \"authorization: Bearer $TOKEN\"):"
        );
        for route in crate::gateway::routes(&self.stack.template) {
            let path = route
                .path
                .replace("{provider}", "highlevel")
                .replace("{id}", "ID");
            let auth = if route.public {
                ""
            } else {
                " -H \"authorization: Bearer $TOKEN\""
            };
            let body = match example_body(&route.key()) {
                Some(body) => format!(
                    " -H 'content-type: application/json' -d '{}'",
                    body.replace('\'', "'\\''")
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  curl -i -X {} \"$CUSTODY{path}\"{auth}{body}",
                route.method
            );
        }
        out
    }

    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.stack.base_url))
            .bearer_auth(self.admin_token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("{path}: {e}"))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value, String> {
        let (status, value) = self.api(method.clone(), path, body).await?;
        if status != want {
            return Err(format!(
                "{method} {path} answered {status}, expected {want}: {value}"
            ));
        }
        Ok(value)
    }
}

/// The example body of a route, from its event file in `events/`.
fn example_body(route_key: &str) -> Option<String> {
    let events = crate::repo_root().join("events");
    for dir in std::fs::read_dir(events).ok()?.flatten() {
        for file in std::fs::read_dir(dir.path()).ok()?.flatten() {
            let Ok(text) = std::fs::read_to_string(file.path()) else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if event["routeKey"].as_str() == Some(route_key) {
                return event["body"]
                    .as_str()
                    .filter(|b| !b.is_empty())
                    .map(str::to_owned);
            }
        }
    }
    None
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

/// Runs the journey, printing progress through `say`.
pub async fn journey(env: &Environment, say: &mut dyn FnMut(&str)) -> Result<(), DemoError> {
    let steps: [&dyn Fn(&Environment) -> StepFuture<'_>; 9] = [
        &|e| Box::pin(connect(e)),
        &|e| Box::pin(export(e)),
        &|e| Box::pin(import(e)),
        &|e| Box::pin(restrict(e)),
        &|e| Box::pin(privacy(e)),
        &|e| Box::pin(uninstall(e)),
        &|e| Box::pin(marketplace(e)),
        &|e| Box::pin(notices(e)),
        &|e| Box::pin(audit(e)),
    ];
    // Before any step, so every notice of the journey reaches the receiver.
    let url = configure_notices(env).await.map_err(DemoError::Setup)?;
    say(&format!("tenant's notification webhook: {url}"));
    for (index, step) in steps.iter().enumerate() {
        let name = STEPS[index];
        say(&format!("[{}/{}] {name}", index + 1, STEPS.len()));
        let lines = step(env).await.map_err(|message| DemoError::Step {
            step: index + 1,
            name,
            message,
        })?;
        for line in lines {
            say(&format!("      ✓ {line}"));
        }
    }
    Ok(())
}

type StepFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<String>, String>> + 'a>>;

async fn poll<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<Value, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Value>, String>>,
{
    let until = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > until {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ----------------------------------------------------------------------------- 1

async fn connect(env: &Environment) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let start = env
        .http
        .get(format!("{}/connect/highlevel", env.stack.base_url))
        .query(&[("return_url", RETURN_URL)])
        .bearer_auth(env.admin_token())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(start.status() == 302, || {
        format!("GET /connect/highlevel answered {}", start.status())
    })?;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("no {name} header"))
    };
    let authorize = header(&start, "location")?;
    let cookie = header(&start, "set-cookie")?;
    let binding = cookie.split(';').next().unwrap_or_default().to_owned();
    let authorize_url = url::Url::parse(&authorize).map_err(|e| e.to_string())?;
    let params: BTreeMap<String, String> = authorize_url.query_pairs().into_owned().collect();
    check(
        params.get("code_challenge_method").map(String::as_str) == Some("S256"),
        || "authorize URL has no PKCE S256 challenge".into(),
    )?;
    check(params.contains_key("state"), || {
        "authorize URL has no state".into()
    })?;
    if let Some(state) = params.get("state") {
        env.handled_secret(state);
    }
    if let Some((_, value)) = binding.split_once('=') {
        env.handled_secret(value);
    }
    lines.push(format!(
        "redirected to the provider with state and PKCE S256 ({})",
        authorize_url.path()
    ));
    let at_provider = env
        .http
        .get(&authorize)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(at_provider.status() == 302, || {
        format!("provider answered {}", at_provider.status())
    })?;
    let callback = header(&at_provider, "location")?;
    if let Ok(url) = url::Url::parse(&callback) {
        for (name, value) in url.query_pairs() {
            if name == "code" || name == "state" {
                env.handled_secret(&value);
            }
        }
    }
    let done = env
        .http
        .get(&callback)
        .header("cookie", &binding)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(done.status() == 302, || {
        format!("callback answered {}", done.status())
    })?;
    let back = header(&done, "location")?;
    check(
        back.starts_with(RETURN_URL) && back.contains("connected"),
        || format!("callback returned to {back}"),
    )?;
    check(
        done.headers()
            .get("referrer-policy")
            .and_then(|v| v.to_str().ok())
            == Some("no-referrer"),
        || "callback has no Referrer-Policy: no-referrer".into(),
    )?;
    lines.push(format!(
        "callback consumed the state and returned to {back}"
    ));
    let listing = env
        .expect(reqwest::Method::GET, "/connections", None, 200)
        .await?;
    let text = listing.to_string();
    check(text.contains(LOCATION), || {
        format!("connection listing lacks the location: {text}")
    })?;
    lines.push(format!("GET /connections: {text}"));
    // The tokens the provider issued are nowhere in our table.
    let dump = raw_table(env, &env.stack.provisioned.config.table).await?;
    let tokens = env.oauth.issued_access_tokens();
    let refresh = env.oauth.issued_refresh_tokens();
    check(!tokens.is_empty(), || "the provider issued no token".into())?;
    for token in tokens.iter().chain(&refresh) {
        check(!dump.contains(token.as_str()), || {
            "a plaintext token is in the table".into()
        })?;
    }
    lines.push(format!(
        "raw table scan: {} issued token(s) stored only sealed with KMS",
        tokens.len() + refresh.len()
    ));
    Ok(lines)
}

// ----------------------------------------------------------------------------- 2

async fn export(env: &Environment) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let settings = json!({
        "schedule": {"expression": "cron(0 3 * * ? *)", "timezone": "Europe/Berlin"},
        "channels": ["SMS", "Email", "Call", "WhatsApp", "Instagram", "Facebook"],
        "date_range": {"mode": "fixed", "start": "2025-01-01T00:00:00Z", "end": "2025-07-01T00:00:00Z"},
        "destination": {"type": "webdav", "url": env.webdav.url("exports"), "username": DAV_USER, "password": env.dav_password},
    });
    env.expect(
        reqwest::Method::PUT,
        "/export/settings",
        Some(settings),
        200,
    )
    .await?;
    let shown = env
        .expect(reqwest::Method::GET, "/export/settings", None, 200)
        .await?;
    check(!shown.to_string().contains(&env.dav_password), || {
        "settings show the password".into()
    })?;
    let tenant = TenantId::parse(TENANT).map_err(|e| e.to_string())?;
    let schedules = custody::schedule::ExportSchedules::new(
        env.stack.clients.scheduler.clone(),
        &env.stack.provisioned.config.schedule_group,
    );
    let schedule = schedules
        .get(&tenant)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no export schedule was created")?;
    lines.push(format!(
        "settings saved (password sealed); schedule {} {} ({})",
        custody::schedule::ExportSchedules::name(&tenant),
        schedule.expression,
        schedule.timezone.unwrap_or_default()
    ));
    // The 03:00 cron is hours away: deliver the event it will send, once. The run's
    // continuations are one-time schedules the local EventBridge Scheduler fires.
    let export = env
        .stack
        .function("export")
        .ok_or("export function is not running")?;
    let event = json!({"tenant_id": TENANT, "scheduled_time": chrono::Utc::now().to_rfc3339()});
    export.invoke(&event).await.map_err(|e| e.to_string())?;
    let run = poll(
        "the export run to complete",
        Duration::from_secs(180),
        || async move {
            let runs = env
                .expect(reqwest::Method::GET, "/export/runs", None, 200)
                .await?;
            let latest = runs["runs"][0].clone();
            match latest["status"].as_str() {
                Some("completed") => Ok(Some(latest)),
                Some("continued") | Some("running") => Ok(None),
                other => Err(format!("export run ended {other:?}: {latest}")),
            }
        },
    )
    .await?;
    lines.push(format!(
        "scheduled run {}: {} conversations, {} messages, {} bytes in {} invocation(s)",
        run["run_id"].as_str().unwrap_or("?"),
        run["conversations"],
        run["messages"],
        run["bytes"],
        run["invocations"]
    ));
    let files = env.webdav.files().await;
    let (manifest_path, manifest) = files
        .iter()
        .find(|(path, _)| path.ends_with("manifest.json"))
        .ok_or("no manifest.json on the WebDAV server")?;
    let manifest: Value = serde_json::from_slice(manifest).map_err(|e| format!("manifest: {e}"))?;
    let listed = manifest["files"]
        .as_array()
        .ok_or("manifest lists no files")?;
    let dir = manifest_path.trim_end_matches("manifest.json");
    let mut checked = 0;
    for entry in listed {
        let name = entry["name"]
            .as_str()
            .or(entry["path"].as_str())
            .unwrap_or_default();
        let bytes = files
            .get(&format!("{dir}{name}"))
            .or_else(|| {
                files
                    .iter()
                    .find(|(p, _)| p.ends_with(name))
                    .map(|(_, b)| b)
            })
            .ok_or_else(|| format!("manifest names {name}, which is not on the server"))?;
        let digest = hex::encode(Sha256::digest(bytes));
        check(entry["sha256"].as_str() == Some(digest.as_str()), || {
            format!("{name}: hash differs from the manifest")
        })?;
        checked += 1;
    }
    check(checked > 0, || "the manifest is empty".into())?;
    lines.push(format!(
        "WebDAV {manifest_path}: {checked} conversation files, every SHA-256 matches the manifest"
    ));
    for (path, bytes) in files.iter().take(3) {
        lines.push(format!("  {path} ({} bytes)", bytes.len()));
    }
    let runs = env
        .expect(reqwest::Method::GET, "/export/runs", None, 200)
        .await?;
    lines.push(format!(
        "export log: {} run(s), kept 90 days",
        runs["runs"].as_array().map_or(0, Vec::len)
    ));
    Ok(lines)
}

// ----------------------------------------------------------------------------- 3

pub fn demo_csv() -> String {
    let mut csv = String::from("contact_id,name,email,phone,note\r\n");
    csv.push_str(&format!(
        "{SUBJECT_CONTACT},{SUBJECT_NAME},{SUBJECT_EMAIL},{SUBJECT_PHONE},\"asked about pricing, twice\"\r\n"
    ));
    for i in 1..=48 {
        csv.push_str(&format!(
            "hl_contact_{i:03},Person {i},person{i}@example.org,+4477009{i:05},row {i}\r\n"
        ));
    }
    csv.push_str("hl_contact_999,No Email,,+447700999999,missing email\r\n");
    csv
}

async fn import(env: &Environment) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let csv = demo_csv();
    let created = env
        .expect(
            reqwest::Method::POST,
            "/imports",
            Some(json!({
                "format": "csv", "mode": "store", "retention_class": "import-30d",
                "destination": {"url": env.destination.url(), "secret": env.destination_secret},
                "size": csv.len(), "required_columns": ["email"],
            })),
            201,
        )
        .await?;
    let id = created["import"]["id"]
        .as_str()
        .ok_or("no import id")?
        .to_owned();
    let upload = &created["upload"];
    let upload_url = upload["url"].as_str().ok_or("no upload URL")?;
    env.handled_presigned(upload_url);
    let mut put = env.http.put(upload_url);
    for (name, value) in upload["headers"].as_object().into_iter().flatten() {
        put = put.header(name.as_str(), value.as_str().unwrap_or_default());
    }
    let uploaded = put
        .body(csv.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(uploaded.status().is_success(), || {
        format!("presigned upload answered {}", uploaded.status())
    })?;
    lines.push(format!(
        "import {id}: {} bytes uploaded with a presigned PUT (SSE-KMS, retention tag)",
        csv.len()
    ));
    let path = format!("/imports/{id}");
    let import = poll(
        "the S3 event to be processed",
        Duration::from_secs(60),
        || async {
            let value = env.expect(reqwest::Method::GET, &path, None, 200).await?;
            Ok(match value["status"].as_str() {
                Some("delivered") => Some(value),
                Some("delivery_failed") | Some("invalid") => {
                    return Err(format!("import ended {value}"));
                }
                _ => None,
            })
        },
    )
    .await?;
    let received = env.destination.requests();
    check(received.iter().all(|r| r.signature_valid), || {
        "a batch had an invalid signature".into()
    })?;
    let rows = env.destination.rows();
    check(
        rows.len() as u64 == import["rows_valid"].as_u64().unwrap_or(0),
        || {
            format!(
                "destination got {} rows, import says {}",
                rows.len(),
                import["rows_valid"]
            )
        },
    )?;
    lines.push(format!(
        "S3 ObjectCreated → processed: {} rows valid, {} invalid (line-numbered: {}), {} delivered in {} signed batch(es)",
        import["rows_valid"], import["rows_invalid"], import["errors"], rows.len(), received.len()
    ));
    let download = env
        .expect(reqwest::Method::GET, &format!("{path}/download"), None, 200)
        .await?;
    let url = download["objects"][0]["url"]
        .as_str()
        .ok_or("no download link")?;
    env.handled_presigned(url);
    let bytes = env
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    check(bytes.as_ref() == csv.as_bytes(), || {
        "downloaded bytes differ from the upload".into()
    })?;
    lines.push("downloaded it back through a presigned GET: identical bytes".into());
    let listing = env
        .expect(reqwest::Method::GET, "/imports", None, 200)
        .await?;
    let log = listing.to_string();
    check(!log.contains(SUBJECT_EMAIL), || {
        "the import log holds row data".into()
    })?;
    lines.push(format!(
        "import log: status {}, sha256 {}, no row data",
        import["status"], import["sha256"]
    ));
    Ok(lines)
}

// ----------------------------------------------------------------------------- 4

/// A rows import of one row per email, completed; the import as it ended and the
/// rows the destination received for it.
async fn push_rows(
    env: &Environment,
    emails: &[&str],
) -> Result<(Value, Vec<serde_json::Map<String, Value>>), String> {
    let before = env.destination.rows().len();
    let created = env
        .expect(
            reqwest::Method::POST,
            "/imports",
            Some(json!({
                "format": "rows", "mode": "store",
                "destination": {"url": env.destination.url(), "secret": env.destination_secret},
                "required_columns": ["email"],
            })),
            201,
        )
        .await?;
    let id = created["import"]["id"].as_str().ok_or("no import id")?;
    let rows: Vec<Value> = emails
        .iter()
        .map(|email| json!({"email": email, "note": "newsletter signup"}))
        .collect();
    env.expect(
        reqwest::Method::POST,
        &format!("/imports/{id}/rows"),
        Some(json!(rows)),
        200,
    )
    .await?;
    let import = env
        .expect(
            reqwest::Method::POST,
            &format!("/imports/{id}/complete"),
            None,
            200,
        )
        .await?;
    let received = env.destination.rows().split_off(before);
    Ok((import, received))
}

async fn restrict(env: &Environment) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    // Someone else than the subject the privacy step follows, so that step's
    // first-request-free rule is untouched.
    let objector = "person7@example.org";
    let other = "person8@example.org";
    let filed = env
        .expect(
            reqwest::Method::POST,
            "/privacy/restrict",
            Some(json!({
                "subject": {"email": objector}, "regulation": "gdpr", "ground": "objection",
            })),
            202,
        )
        .await?;
    check(
        filed["status"] == "complete" && filed["restriction"]["ground"] == "objection",
        || format!("the restriction is not in force at once: {filed}"),
    )?;
    let id = filed["id"].as_str().ok_or("no request id")?.to_owned();
    lines.push(format!(
        "restriction {id} (objection) in force from filing, in the request's own write"
    ));
    let has = |rows: &[serde_json::Map<String, Value>], email: &str| {
        rows.iter()
            .any(|r| r.get("email").and_then(Value::as_str) == Some(email))
    };
    let (import, received) = push_rows(env, &[objector, other]).await?;
    check(
        import["rows_restricted"] == 1 && import["rows_delivered"] == 1,
        || format!("the restricted row was not left out: {import}"),
    )?;
    check(!has(&received, objector) && has(&received, other), || {
        "the destination got the restricted subject's row".into()
    })?;
    lines.push(format!(
        "a rows import naming them and one other: 1 row pushed, 1 left out (rows_restricted {}), nothing of theirs at the destination",
        import["rows_restricted"]
    ));
    let lifted = env
        .expect(
            reqwest::Method::POST,
            &format!("/privacy/requests/{id}/lift"),
            Some(json!({"reason": "objection weighed: the subject was told processing resumes"})),
            200,
        )
        .await?;
    check(lifted["restriction"]["lifted_at"].is_string(), || {
        format!("not lifted: {lifted}")
    })?;
    let (import, received) = push_rows(env, &[objector]).await?;
    check(
        import["rows_restricted"] == 0 && has(&received, objector),
        || format!("the lifted subject is still left out: {import}"),
    )?;
    lines.push("lifted with a reason: the next import pushes their row again".into());
    Ok(lines)
}

async fn wait_request(env: &Environment, id: &str) -> Result<Value, String> {
    let path = format!("/privacy/requests/{id}");
    poll(
        "the privacy request to complete",
        Duration::from_secs(90),
        || async {
            let value = env.expect(reqwest::Method::GET, &path, None, 200).await?;
            Ok(match value["status"].as_str() {
                Some("complete") => Some(value),
                Some("denied") | Some("error") => return Err(format!("request ended {value}")),
                _ => None,
            })
        },
    )
    .await
}

async fn privacy(env: &Environment) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let subject =
        json!({"email": SUBJECT_EMAIL, "phone": SUBJECT_PHONE, "contact_id": SUBJECT_CONTACT});
    env.expect(
        reqwest::Method::PUT,
        "/privacy/consent",
        Some(json!({"subject": {"email": SUBJECT_EMAIL}, "purpose": "marketing_email", "state": "granted", "source": "web_form", "policy_version": "2025-01"})),
        200,
    )
    .await?;
    lines.push(format!(
        "consent recorded for {SUBJECT_EMAIL}: marketing_email granted"
    ));

    let filed = env
        .expect(
            reqwest::Method::POST,
            "/privacy/export",
            Some(json!({"subject": subject, "regulation": "gdpr"})),
            202,
        )
        .await?;
    let id = filed["id"].as_str().ok_or("no request id")?.to_owned();
    lines.push(format!(
        "access request {id} (GDPR): due {}",
        filed["due_at"]
    ));
    let done = wait_request(env, &id).await?;
    let url = done["download"]["url"].as_str().ok_or("no bundle link")?;
    env.handled_presigned(url);
    let bundle = env
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    check(
        bundle.contains(SUBJECT_EMAIL) && bundle.contains("marketing_email"),
        || "the bundle lacks the subject's rows or consent".into(),
    )?;
    check(!bundle.contains("person1@example.org"), || {
        "the bundle holds another subject's data".into()
    })?;
    lines.push(format!(
        "access bundle ({} bytes) holds the contact's imported row and consent, nobody else's",
        bundle.len()
    ));

    // Rectification: the contact's email was wrong. The stored import is rewritten
    // with the corrected one; every other row stays byte for byte.
    let corrected = SUBJECT_CORRECTED_EMAIL;
    let filed = env
        .expect(
            reqwest::Method::POST,
            "/privacy/rectify",
            Some(json!({
                "subject": {"email": SUBJECT_EMAIL},
                "corrections": {"email": corrected},
                "regulation": "gdpr",
            })),
            202,
        )
        .await?;
    let id = filed["id"].as_str().ok_or("no request id")?.to_owned();
    let done = wait_request(env, &id).await?;
    let imports = env
        .expect(reqwest::Method::GET, "/imports", None, 200)
        .await?;
    let import_id = imports["imports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|import| import["format"] == "csv")
        .and_then(|import| import["id"].as_str())
        .ok_or("no CSV import to re-download")?
        .to_owned();
    let download = env
        .expect(
            reqwest::Method::GET,
            &format!("/imports/{import_id}/download"),
            None,
            200,
        )
        .await?;
    let url = download["objects"][0]["url"]
        .as_str()
        .ok_or("no download link")?;
    env.handled_presigned(url);
    let stored = env
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let expected = demo_csv().replace(&format!(",{SUBJECT_EMAIL},"), &format!(",{corrected},"));
    check(stored == expected, || {
        "the re-downloaded import does not hold exactly the corrected row and the others".into()
    })?;
    lines.push(format!(
        "rectification {id}: the contact's email corrected in {} stored file(s), {} row(s); the re-downloaded import carries {corrected}, every other row byte for byte",
        done["rectification"]["files_rewritten"], done["rectification"]["rows_rectified"]
    ));

    let filed = env
        .expect(
            reqwest::Method::POST,
            "/privacy/delete",
            Some(json!({"subject": subject, "regulation": "gdpr"})),
            202,
        )
        .await?;
    let id = filed["id"].as_str().ok_or("no request id")?.to_owned();
    let done = wait_request(env, &id).await?;
    lines.push(format!("erasure request {id} complete: {}", done["erased"]));
    // The corrected email went with the row.
    let needles = [
        SUBJECT_EMAIL,
        corrected,
        SUBJECT_PHONE,
        SUBJECT_CONTACT,
        SUBJECT_NAME,
    ];
    let config = &env.stack.provisioned.config;
    let mut haystack = raw_table(env, &config.table).await?;
    haystack.push_str(&raw_table(env, &config.audit_table).await?);
    for bucket in [&config.imports_bucket, &config.dsar_results_bucket] {
        haystack.push_str(&all_object_versions(env, bucket).await?);
    }
    for needle in needles {
        check(!haystack.contains(needle), || {
            format!("{needle} is still stored somewhere")
        })?;
    }
    check(haystack.contains("person1@example.org"), || {
        "another subject's row was lost".into()
    })?;
    lines.push("raw scan of both tables and every object version: the contact is gone; the other rows are intact".into());

    let certificate = env
        .expect(
            reqwest::Method::GET,
            &format!("/privacy/requests/{id}/certificate"),
            None,
            200,
        )
        .await?;
    let key = env
        .expect(reqwest::Method::GET, "/privacy/public-key", None, 200)
        .await?;
    let der = STANDARD
        .decode(key["der_base64"].as_str().ok_or("no public key")?)
        .map_err(|e| e.to_string())?;
    let signed = custody::certificate::SignedCertificate {
        document: certificate["document"]
            .as_str()
            .ok_or("no document")?
            .to_owned(),
        signature: certificate["signature"]
            .as_str()
            .ok_or("no signature")?
            .to_owned(),
        key_id: certificate["key_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        algorithm: certificate["algorithm"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    custody::certificate::verify(&signed, &der)
        .map_err(|e| format!("certificate does not verify: {e}"))?;
    let mut tampered = signed.clone();
    tampered.document = tampered.document.replacen('"', "'", 1);
    check(
        custody::certificate::verify(&tampered, &der).is_err(),
        || "a changed certificate still verifies".into(),
    )?;
    lines.push(format!(
        "certificate of deletion verifies offline with the public key ({}); a changed byte does not",
        signed.algorithm
    ));
    if let Some(verdict) = openssl_verify(&signed, key["pem"].as_str().unwrap_or_default()) {
        lines.push(format!("openssl dgst -sha256 -verify: {verdict}"));
    }
    Ok(lines)
}

/// Checks the signature with the openssl command line too, when it is installed.
fn openssl_verify(signed: &custody::certificate::SignedCertificate, pem: &str) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("custody-demo-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).ok()?;
    let signature = STANDARD.decode(&signed.signature).ok()?;
    std::fs::write(dir.join("key.pem"), pem).ok()?;
    std::fs::write(dir.join("certificate.json"), &signed.document).ok()?;
    std::fs::write(dir.join("signature.der"), signature).ok()?;
    let output = std::process::Command::new("openssl")
        .current_dir(&dir)
        .args([
            "dgst",
            "-sha256",
            "-verify",
            "key.pem",
            "-signature",
            "signature.der",
            "certificate.json",
        ])
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

// ----------------------------------------------------------------------------- 5

async fn uninstall(env: &Environment) -> Result<Vec<String>, String> {
    let body = json!({
        "type": "UNINSTALL",
        "appId": MARKETPLACE_APP_ID,
        "locationId": LOCATION,
        "companyId": "co_demo_0001",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "webhookId": ulid::Ulid::new().to_string(),
    })
    .to_string();
    let signature = env
        .signer
        .sign_rsa(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let url = format!("{}/webhooks/highlevel", env.stack.base_url);
    let forged = env
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("x-wh-signature", STANDARD.encode([0u8; 256]))
        .body(body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(forged.status().is_client_error(), || {
        format!("a forged webhook answered {}", forged.status())
    })?;
    let listing = env
        .expect(reqwest::Method::GET, "/connections", None, 200)
        .await?;
    check(listing.to_string().contains(LOCATION), || {
        "a forged webhook removed the connection".into()
    })?;
    let mut lines = vec![format!(
        "a webhook with a bad signature is refused ({}), nothing deleted",
        forged.status()
    )];
    for delivery in 1..=2 {
        let response = env
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-wh-signature", &signature)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        check(response.status().is_success(), || {
            format!("signed UNINSTALL answered {}", response.status())
        })?;
        lines.push(format!(
            "signed UNINSTALL delivery {delivery}: {}",
            response.status()
        ));
    }
    let listing = env
        .expect(reqwest::Method::GET, "/connections", None, 200)
        .await?;
    check(!listing.to_string().contains(LOCATION), || {
        format!("connection still listed: {listing}")
    })?;
    let dump = raw_table(env, &env.stack.provisioned.config.table).await?;
    check(!dump.contains("CONN#highlevel"), || {
        "the connection item is still in the table".into()
    })?;
    let tenant = TenantId::parse(TENANT).map_err(|e| e.to_string())?;
    let schedules = custody::schedule::ExportSchedules::new(
        env.stack.clients.scheduler.clone(),
        &env.stack.provisioned.config.schedule_group,
    );
    check(
        schedules
            .get(&tenant)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        || "the export schedule is still there".into(),
    )?;
    lines.push("tokens deleted at once (no CONN# item left), export schedule removed".into());
    Ok(lines)
}

// ----------------------------------------------------------------------------- 6

/// What the browser holds after clicking Install in the simulated Marketplace and
/// coming back through custody's stateless callback.
struct Arrived {
    installation: String,
    claim_token: String,
    /// `name=value` of the browser-binding cookie.
    binding: String,
}

/// Clicks Install in the simulated Marketplace and follows the browser through the
/// callback to the console's claim page.
async fn install_from_marketplace(env: &Environment) -> Result<Arrived, String> {
    let at_marketplace = env
        .http
        .get(env.marketplace_install_url())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(at_marketplace.status() == 302, || {
        format!("the Marketplace answered {}", at_marketplace.status())
    })?;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("no {name} header"))
    };
    let back = header(&at_marketplace, "location")?;
    let back_url = url::Url::parse(&back).map_err(|e| e.to_string())?;
    for (name, value) in back_url.query_pairs() {
        check(name != "state", || "the Marketplace sent a state".into())?;
        if name == "code" {
            env.handled_secret(&value);
        }
    }
    // The browser arrives with no custody cookie and no state.
    let arrived = env
        .http
        .get(&back)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(arrived.status() == 302, || {
        format!("the stateless callback answered {}", arrived.status())
    })?;
    let landing = url::Url::parse(&header(&arrived, "location")?).map_err(|e| e.to_string())?;
    let query: BTreeMap<String, String> = landing.query_pairs().into_owned().collect();
    check(
        query.get("result").map(String::as_str) == Some("install_pending"),
        || format!("the callback sent the browser to {}", landing.path()),
    )?;
    check(landing.path() == "/connections", || {
        format!(
            "the claim page is {}, not the console's connections",
            landing.path()
        )
    })?;
    let installation = query
        .get("installation")
        .cloned()
        .ok_or("the claim page names no installation")?;
    let claim_token = landing
        .fragment()
        .and_then(|f| f.strip_prefix("claim_token="))
        .map(str::to_owned)
        .ok_or("the claim page carries no claim token")?;
    env.handled_secret(&claim_token);
    let cookie = header(&arrived, "set-cookie")?;
    let binding = cookie.split(';').next().unwrap_or_default().to_owned();
    if let Some((_, value)) = binding.split_once('=') {
        env.handled_secret(value);
    }
    Ok(Arrived {
        installation,
        claim_token,
        binding,
    })
}

/// The admin's claim from the browser that arrived: status and body.
async fn claim(env: &Environment, arrived: &Arrived) -> Result<(u16, String), String> {
    let response = env
        .http
        .post(format!(
            "{}/installations/highlevel/claim",
            env.stack.base_url
        ))
        .bearer_auth(env.admin_token())
        .header("cookie", &arrived.binding)
        .json(&json!({
            "installation": arrived.installation,
            "claim_token": arrived.claim_token,
        }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, text))
}

/// HighLevel's other way in: the admin clicks Install in the Marketplace, the browser
/// arrives with a code and no state, HighLevel sends its signed `INSTALL` webhook by
/// itself, and a custody admin claims the install once that webhook corroborated it.
async fn marketplace(env: &Environment) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();

    // First an install whose INSTALL webhook never comes: no claim.
    env.oauth.pause_marketplace_webhook(true);
    let unconfirmed = install_from_marketplace(env).await;
    env.oauth.pause_marketplace_webhook(false);
    let unconfirmed = unconfirmed?;
    lines.push(format!(
        "stateless callback held the install ({}) for 15 minutes, sealed, and sent the browser to the console's claim page",
        unconfirmed.installation
    ));
    let (status, text) = claim(env, &unconfirmed).await?;
    check(
        status == 409 && text.contains("install-unconfirmed"),
        || format!("a claim with no INSTALL webhook from HighLevel answered {status}: {text}"),
    )?;
    check(env.oauth.marketplace_deliveries().is_empty(), || {
        "the simulated Marketplace sent a webhook while switched off".into()
    })?;
    lines.push(
        "with HighLevel's INSTALL webhook held back, the claim is refused: 409 install-unconfirmed, nothing consumed"
            .into(),
    );

    // Then a normal install: HighLevel's webhook follows by itself.
    let arrived = install_from_marketplace(env).await?;
    let refused = &std::cell::Cell::new(0);
    let pending = &arrived;
    let claimed = poll("the claim", Duration::from_secs(20), || async move {
        let (status, text) = claim(env, pending).await?;
        match status {
            200 => Ok(Some(Value::String(text))),
            409 if text.contains("install-unconfirmed") => {
                refused.set(refused.get() + 1);
                Ok(None)
            }
            _ => Err(format!("the claim answered {status}: {text}")),
        }
    })
    .await?;
    let deliveries = env.oauth.marketplace_deliveries();
    check(
        deliveries.len() == 1
            && deliveries[0].accepted()
            && deliveries[0].location_id == LOCATION
            && env.oauth.marketplace_webhooks_in_flight() == 0,
        || format!("the Marketplace's INSTALL webhooks: {deliveries:?}"),
    )?;
    let webhook_id = deliveries[0].webhook_id.clone();
    let dump = raw_table(env, &env.stack.provisioned.config.table).await?;
    check(dump.contains(&format!("WH#highlevel#{webhook_id}")), || {
        format!("no receipt of the INSTALL webhook {webhook_id} in the table")
    })?;
    lines.push(format!(
        "the simulated Marketplace sent one signed INSTALL webhook by itself ({webhook_id}, answered {}); its receipt is stored",
        deliveries[0].status.unwrap_or_default()
    ));
    lines.push(format!(
        "the admin's claim, once corroborated ({} early 409s while it was on its way): {}",
        refused.get(),
        claimed.as_str().unwrap_or_default()
    ));
    let (again, _) = claim(env, &arrived).await?;
    check(again == 404, || {
        format!("a second claim with the same token answered {again}")
    })?;
    lines.push("the claim token works once (second claim: 404)".into());
    let listing = env
        .expect(reqwest::Method::GET, "/connections", None, 200)
        .await?;
    check(listing.to_string().contains(LOCATION), || {
        format!("the claimed connection is not listed: {listing}")
    })?;
    for token in env
        .oauth
        .issued_access_tokens()
        .iter()
        .chain(&env.oauth.issued_refresh_tokens())
    {
        check(!dump.contains(token.as_str()), || {
            "a plaintext token is in the table".into()
        })?;
    }
    lines.push(format!(
        "GET /connections lists {LOCATION} again; tokens only sealed"
    ));
    Ok(lines)
}

// ----------------------------------------------------------------------------- notices

/// `PUT /privacy/settings` with the notification webhook: the local receiver.
async fn configure_notices(env: &Environment) -> Result<String, String> {
    let url = env.notices.notice_url();
    let saved = env
        .expect(
            reqwest::Method::PUT,
            "/privacy/settings",
            Some(json!({"notification_webhook": {"url": url, "secret": env.notice_secret}})),
            200,
        )
        .await?;
    check(saved["notification_webhook"]["url"] == url.as_str(), || {
        format!("the settings do not show the notification webhook: {saved}")
    })?;
    Ok(url)
}

/// Every notice the receiver got, each signature verified (by the receiver, with
/// `custody::webhook::verify` and the tenant's secret), once per event id; and every
/// notice a privacy request says was delivered is among them.
async fn notices(env: &Environment) -> Result<Vec<String>, String> {
    // The completion notices go out just after the requests show complete.
    let wanted = ["privacy_request.received", "privacy_request.completed"];
    poll("the privacy notices", Duration::from_secs(20), || async {
        let types: BTreeSet<String> = env
            .notices
            .notices()
            .iter()
            .filter_map(|r| r.json.as_ref()?["type"].as_str().map(str::to_owned))
            .collect();
        Ok(wanted
            .iter()
            .all(|w| types.contains(*w))
            .then_some(Value::Null))
    })
    .await?;
    let received = env.notices.notices();
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    let mut requests = BTreeSet::new();
    for notice in &received {
        let body = notice
            .json
            .as_ref()
            .ok_or("a notice whose body is not a JSON object")?;
        let event_id = body["event_id"].as_str().unwrap_or_default();
        check(notice.signature_valid, || {
            format!("notice {event_id}: signature missing or invalid")
        })?;
        check(notice.delivery_id.as_deref() == Some(event_id), || {
            format!("notice {event_id}: its delivery id is not its event id")
        })?;
        check(seen.insert(event_id.to_owned()), || {
            format!("notice {event_id} delivered twice")
        })?;
        if let Some(id) = body["request_id"].as_str() {
            requests.insert(id.to_owned());
        }
        lines.push(format!(
            "{:<38} {event_id}: signature verified",
            body["type"].as_str().unwrap_or_default()
        ));
    }
    // What each request says it delivered, the receiver has.
    for id in &requests {
        let detail = env
            .expect(
                reqwest::Method::GET,
                &format!("/privacy/requests/{id}"),
                None,
                200,
            )
            .await?;
        for listed in detail["notices"].as_array().into_iter().flatten() {
            let event_id = listed["event_id"].as_str().unwrap_or_default();
            check(
                listed["status"] != "delivered" || seen.contains(event_id),
                || format!("request {id} says notice {event_id} was delivered; none arrived"),
            )?;
        }
    }
    lines.push(format!(
        "{} notice(s), {} request(s): each signed with the tenant's secret, once per event id",
        received.len(),
        requests.len()
    ));
    Ok(lines)
}

// ----------------------------------------------------------------------------- 7

async fn audit(env: &Environment) -> Result<Vec<String>, String> {
    let tenant = TenantId::parse(TENANT).map_err(|e| e.to_string())?;
    let log = AuditLog::from_config(
        &env.stack.clients,
        &env.stack.provisioned.config,
        std::sync::Arc::new(SystemClock),
    );
    let verified = log
        .verify(&tenant)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the audit chain is broken: {e}"))?;
    let entries = log
        .entries(&tenant, None, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut lines: Vec<String> = verified
        .chains
        .iter()
        .map(|chain| {
            format!(
                "{} chain: {} entries, unbroken, {} signed checkpoint(s), head {}…",
                chain.class.name(),
                chain.entries,
                chain.checkpoints,
                &chain.head_hash[..16]
            )
        })
        .collect();
    for entry in entries {
        lines.push(format!(
            "  #{:<3} {} {:<34} {:<22} {:?} {}",
            entry.seq,
            entry.at,
            entry.action,
            entry.actor,
            entry.outcome,
            entry
                .subject
                .as_deref()
                .map(|s| &s[..s.len().min(14)])
                .unwrap_or("")
        ));
    }
    Ok(lines)
}

// ----------------------------------------------------------------------------- raw reads

async fn raw_table(env: &Environment, table: &str) -> Result<String, String> {
    let mut dump = String::new();
    let mut start = None;
    loop {
        let out = env
            .stack
            .clients
            .dynamodb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| format!("scan {table}: {e}"))?;
        for item in out.items() {
            let _ = writeln!(dump, "{item:?}");
        }
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return Ok(dump),
        }
    }
}

async fn all_object_versions(env: &Environment, bucket: &str) -> Result<String, String> {
    let s3 = &env.stack.clients.s3;
    let listing = s3
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| format!("list {bucket}: {e}"))?;
    let mut dump = String::new();
    for version in listing.versions() {
        let object = s3
            .get_object()
            .bucket(bucket)
            .key(version.key().unwrap_or_default())
            .set_version_id(version.version_id().map(str::to_owned))
            .send()
            .await
            .map_err(|e| format!("get {bucket}: {e}"))?;
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .into_bytes();
        dump.push_str(&String::from_utf8_lossy(&bytes));
    }
    Ok(dump)
}

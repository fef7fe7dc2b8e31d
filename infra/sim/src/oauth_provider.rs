//! A local OAuth 2.0 / OpenID Connect provider on 127.0.0.1 (random port), in three
//! flavours: HighLevel (its paths; the token response carries `locationId`,
//! `companyId`, `userType`, `scope`, `expires_in`), Google (sends `iss` in the
//! authorization response; a `userinfo` endpoint gives the `sub`), and a generic one.
//!
//! It is strict where custody's safety depends on a provider being strict: exact
//! redirect URI, client authentication, PKCE S256, single-use codes (a replayed code
//! also revokes what the code issued, RFC 6749 §4.1.2), refresh-token rotation with
//! `invalid_grant` for a used or revoked refresh token, form-encoded token requests.
//! Tests observe it through counters and the tokens it issued, and steer it with
//! switches (deny the next authorization, short expiry, slow token endpoint).
//!
//! [`WebhookSigner`] signs HighLevel marketplace webhooks with a test key pair
//! (RSA-SHA256 `x-wh-signature`, Ed25519 `x-ghl-signature`). Given one with
//! [`OauthProviderSim::set_marketplace_webhook`], the simulated Marketplace sends the
//! signed `INSTALL` webhook of every install by itself, as HighLevel does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    HighLevel,
    Google,
    Generic,
}

/// The account the next authorization is for (HighLevel ids, or the OIDC subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimAccount {
    pub location_id: String,
    pub company_id: String,
    pub user_type: String,
    pub subject: String,
}

#[derive(Debug, Clone)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    scope: String,
    account: SimAccount,
    used: bool,
    /// Tokens issued for this code, revoked if the code is replayed.
    issued: Vec<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    account: SimAccount,
    scope: String,
    used: bool,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct AccessGrant {
    account: SimAccount,
    revoked: bool,
    expires: Instant,
}

/// Answers "which location may this bearer token read?" for a resource server (the
/// simulated HighLevel API): `Some(location)` for an access token this provider
/// issued that is neither revoked nor expired.
pub type TokenAuthority = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where and how the simulated Marketplace reports its installs.
#[derive(Debug, Clone)]
struct MarketplaceWebhook {
    url: String,
    signer: Arc<WebhookSigner>,
    app_id: String,
}

/// One `INSTALL` webhook the simulated Marketplace sent, and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketplaceDelivery {
    pub webhook_id: String,
    pub location_id: String,
    pub company_id: String,
    /// The receiver's HTTP status; `None` when the POST failed (then `error` says why).
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl MarketplaceDelivery {
    /// Whether the receiver accepted it (2xx).
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Debug, Default)]
struct Inner {
    redirect_uris: Vec<String>,
    marketplace_webhook: Option<MarketplaceWebhook>,
    /// While set, installs send no webhook (HighLevel's is late or lost).
    marketplace_webhook_paused: bool,
    marketplace_webhook_delay: Duration,
    /// Sends that finished (answered or failed), oldest first.
    marketplace_deliveries: Vec<MarketplaceDelivery>,
    /// Sends started and not finished.
    marketplace_in_flight: usize,
    deny_next: bool,
    account: Option<SimAccount>,
    expires_in: u64,
    token_delay: Duration,
    codes: HashMap<String, Code>,
    refresh_tokens: HashMap<String, Grant>,
    access_tokens: HashMap<String, AccessGrant>,
    issued_refresh_order: Vec<String>,
    issued_access_order: Vec<String>,
}

struct Shared {
    flavour: Flavour,
    issuer: String,
    client_id: String,
    client_secret: String,
    token_requests: AtomicUsize,
    revocations: AtomicUsize,
    /// While set, the revocation endpoint answers 503 (a provider outage).
    revocations_fail: std::sync::atomic::AtomicBool,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running provider; stops when dropped.
pub struct OauthProviderSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for OauthProviderSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn random_id() -> String {
    let mut bytes = [0u8; 10];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl OauthProviderSim {
    /// Starts a provider with one registered client.
    pub async fn start(
        flavour: Flavour,
        client_id: &str,
        client_secret: &str,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            flavour,
            issuer: format!("http://{addr}"),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            token_requests: AtomicUsize::new(0),
            revocations: AtomicUsize::new(0),
            revocations_fail: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(Inner {
                expires_in: 86_399,
                ..Inner::default()
            }),
        });
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/oauth/chooselocation", get(authorize))
            .route("/marketplace/install", get(marketplace_install))
            .route("/token", post(token))
            .route("/oauth/token", post(token))
            .route("/revoke", post(revoke))
            .route("/userinfo", get(userinfo))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The issuer identifier sent as `iss` (Google and generic flavours).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    pub fn authorize_url(&self) -> String {
        match self.shared.flavour {
            Flavour::HighLevel => format!("{}/oauth/chooselocation", self.base_url()),
            _ => format!("{}/authorize", self.base_url()),
        }
    }

    pub fn token_url(&self) -> String {
        match self.shared.flavour {
            Flavour::HighLevel => format!("{}/oauth/token", self.base_url()),
            _ => format!("{}/token", self.base_url()),
        }
    }

    pub fn revocation_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }

    pub fn userinfo_url(&self) -> String {
        format!("{}/userinfo", self.base_url())
    }

    /// Where a browser clicking Install in the simulated Marketplace starts: the
    /// provider answers with a redirect to `redirect_uri` carrying a `code` and no
    /// `state` (HighLevel's Marketplace-initiated install). The account is the one of
    /// [`OauthProviderSim::set_account`]; a `location_id` query parameter added to
    /// the URL picks another location of it (the sub-account chosen at install).
    /// With [`OauthProviderSim::set_marketplace_webhook`], the install's signed
    /// `INSTALL` webhook follows by itself.
    pub fn marketplace_install_url(&self, redirect_uri: &str) -> String {
        let mut url = match Url::parse(&format!("{}/marketplace/install", self.base_url())) {
            Ok(url) => url,
            Err(_) => return String::new(),
        };
        url.query_pairs_mut()
            .append_pair("client_id", &self.shared.client_id)
            .append_pair("redirect_uri", redirect_uri);
        url.to_string()
    }

    /// Registers a redirect URI; only registered ones are accepted, exactly.
    pub fn register_redirect_uri(&self, uri: &str) {
        self.shared.lock().redirect_uris.push(uri.to_owned());
    }

    /// Makes every Marketplace install (`GET /marketplace/install`) send HighLevel's
    /// signed `INSTALL` webhook to `url` right after the code is issued, in the
    /// background (the browser's redirect does not wait): the payload HighLevel
    /// sends (`type`, `appId`, `installType`, `locationId`, `companyId`, `userId`,
    /// `timestamp`, a new `webhookId`), signed with `signer`'s RSA key in
    /// `x-wh-signature` over the exact body. A failed send is logged and recorded
    /// ([`OauthProviderSim::marketplace_deliveries`]), never retried.
    pub fn set_marketplace_webhook(&self, url: &str, signer: Arc<WebhookSigner>, app_id: &str) {
        self.shared.lock().marketplace_webhook = Some(MarketplaceWebhook {
            url: url.to_owned(),
            signer,
            app_id: app_id.to_owned(),
        });
    }

    /// While `true`, Marketplace installs send no webhook (a late or lost
    /// `INSTALL`); `false` sends them again (for the installs from then on).
    pub fn pause_marketplace_webhook(&self, paused: bool) {
        self.shared.lock().marketplace_webhook_paused = paused;
    }

    /// Waits this long after an install before sending its webhook.
    pub fn set_marketplace_webhook_delay(&self, delay: Duration) {
        self.shared.lock().marketplace_webhook_delay = delay;
    }

    /// The Marketplace webhooks whose send finished (answered or failed), oldest
    /// first.
    pub fn marketplace_deliveries(&self) -> Vec<MarketplaceDelivery> {
        self.shared.lock().marketplace_deliveries.clone()
    }

    /// Marketplace webhooks being sent now (started, not yet answered).
    pub fn marketplace_webhooks_in_flight(&self) -> usize {
        self.shared.lock().marketplace_in_flight
    }

    /// The next authorization is refused with `error=access_denied`.
    pub fn deny_next(&self) {
        self.shared.lock().deny_next = true;
    }

    /// `expires_in` of the tokens issued from now on (e.g. 60 s to force refreshes).
    pub fn set_expires_in(&self, seconds: u64) {
        self.shared.lock().expires_in = seconds;
    }

    /// Delays every token response (widens races in concurrency tests).
    pub fn set_token_delay(&self, delay: Duration) {
        self.shared.lock().token_delay = delay;
    }

    /// The account the next authorizations are for.
    pub fn set_account(&self, account: SimAccount) {
        self.shared.lock().account = Some(account);
    }

    /// Requests received by the token endpoint (any grant, any outcome).
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Requests received by the revocation endpoint.
    pub fn revocations(&self) -> usize {
        self.shared.revocations.load(Ordering::SeqCst)
    }

    /// Makes the revocation endpoint answer 503 (`true`) or work again (`false`).
    pub fn fail_revocations(&self, fail: bool) {
        self.shared.revocations_fail.store(fail, Ordering::SeqCst);
    }

    /// Every access token issued, oldest first.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_access_order.clone()
    }

    /// What the resource server of this provider consults: the location an access
    /// token grants, while the token is live (issued here, not revoked, not expired).
    /// With it, the simulated HighLevel API accepts exactly what this provider issued.
    pub fn token_authority(&self) -> TokenAuthority {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |token: &str| {
            let inner = shared.lock();
            let grant = inner.access_tokens.get(token)?;
            (!grant.revoked && Instant::now() < grant.expires)
                .then(|| grant.account.location_id.clone())
        })
    }

    /// Every refresh token issued, oldest first.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_refresh_order.clone()
    }

    /// Whether a refresh token is still usable (issued, not used, not revoked).
    pub fn refresh_token_live(&self, token: &str) -> bool {
        self.shared
            .lock()
            .refresh_tokens
            .get(token)
            .is_some_and(|g| !g.used && !g.revoked)
    }

    /// Whether a token was revoked (refresh or access).
    pub fn is_revoked(&self, token: &str) -> bool {
        let inner = self.shared.lock();
        inner.refresh_tokens.get(token).is_some_and(|g| g.revoked)
            || inner.access_tokens.get(token).is_some_and(|g| g.revoked)
    }

    /// Revokes every refresh token (the user removed the app at the provider).
    pub fn revoke_all_refresh_tokens(&self) {
        for grant in self.shared.lock().refresh_tokens.values_mut() {
            grant.revoked = true;
        }
    }
}

fn default_account(flavour: Flavour) -> SimAccount {
    SimAccount {
        location_id: format!("loc{}", random_id()),
        company_id: format!("co{}", random_id()),
        user_type: "Location".into(),
        subject: match flavour {
            Flavour::Google => format!("1{}", &random_id()[..12]),
            _ => format!("user{}", random_id()),
        },
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let get = |name: &str| params.get(name).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let mut inner = shared.lock();
    // A wrong client or redirect URI is shown to the user, never redirected to.
    if get("client_id") != shared.client_id {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    if !inner.redirect_uris.contains(&redirect_uri) {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not registered").into_response();
    }
    let Ok(mut target) = Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    let challenge = params.get("code_challenge").cloned();
    let method_ok = match (&challenge, params.get("code_challenge_method")) {
        (None, _) => true,
        (Some(_), Some(method)) => method == "S256",
        (Some(_), None) => false,
    };
    {
        let mut query = target.query_pairs_mut();
        if get("response_type") != "code" {
            query.append_pair("error", "unsupported_response_type");
        } else if !method_ok {
            query.append_pair("error", "invalid_request");
        } else if std::mem::take(&mut inner.deny_next) {
            query.append_pair("error", "access_denied");
        } else {
            let code = random_token("code_");
            let account = inner
                .account
                .clone()
                .unwrap_or_else(|| default_account(shared.flavour));
            inner.codes.insert(
                code.clone(),
                Code {
                    client_id: get("client_id"),
                    redirect_uri: redirect_uri.clone(),
                    challenge,
                    scope: get("scope"),
                    account,
                    used: false,
                    issued: Vec::new(),
                },
            );
            query.append_pair("code", &code);
        }
        if let Some(state) = params.get("state") {
            query.append_pair("state", state);
        }
        if shared.flavour != Flavour::HighLevel {
            query.append_pair("iss", &shared.issuer);
        }
    }
    // 302, as providers answer an authorization request.
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

/// The Marketplace's Install button: the admin picked a location (the configured
/// account, or the `location_id` parameter) and approved the app's scopes; the
/// browser goes to the app's registered redirect URI with a code, no state, no PKCE.
/// When configured, HighLevel's `INSTALL` webhook for that account follows.
async fn marketplace_install(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let get = |name: &str| params.get(name).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let mut inner = shared.lock();
    if get("client_id") != shared.client_id {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    if !inner.redirect_uris.contains(&redirect_uri) {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not registered").into_response();
    }
    let Ok(mut target) = Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    let code = random_token("code_");
    let mut account = inner
        .account
        .clone()
        .unwrap_or_else(|| default_account(shared.flavour));
    if let Some(location) = params.get("location_id").filter(|l| !l.is_empty()) {
        account.location_id = location.clone();
    }
    inner.codes.insert(
        code.clone(),
        Code {
            client_id: shared.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge: None,
            scope: "conversations.readonly conversations/message.readonly".into(),
            account: account.clone(),
            used: false,
            issued: Vec::new(),
        },
    );
    if shared.flavour == Flavour::HighLevel
        && !inner.marketplace_webhook_paused
        && let Some(hook) = inner.marketplace_webhook.clone()
    {
        inner.marketplace_in_flight += 1;
        let delay = inner.marketplace_webhook_delay;
        tokio::spawn(send_install_webhook(
            Arc::clone(&shared),
            hook,
            account,
            delay,
        ));
    }
    drop(inner);
    target.query_pairs_mut().append_pair("code", &code);
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

/// HighLevel's `INSTALL` webhook for an install of `account`, signed and sent.
async fn send_install_webhook(
    shared: Arc<Shared>,
    hook: MarketplaceWebhook,
    account: SimAccount,
    delay: Duration,
) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let webhook_id = format!("wh_{}", random_id());
    let body = json!({
        "type": "INSTALL",
        "appId": hook.app_id,
        "installType": "Location",
        "locationId": account.location_id,
        "companyId": account.company_id,
        "userId": account.subject,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "webhookId": webhook_id,
    })
    .to_string();
    let result = post_signed(&hook, body).await;
    let (status, error) = match result {
        Ok(status) if (200..300).contains(&status) => (Some(status), None),
        Ok(status) => {
            tracing::warn!(%webhook_id, status, url = %hook.url, "simulated Marketplace: INSTALL webhook refused");
            (Some(status), None)
        }
        Err(error) => {
            tracing::warn!(%webhook_id, %error, url = %hook.url, "simulated Marketplace: INSTALL webhook not delivered");
            (None, Some(error))
        }
    };
    let mut inner = shared.lock();
    inner.marketplace_in_flight = inner.marketplace_in_flight.saturating_sub(1);
    inner.marketplace_deliveries.push(MarketplaceDelivery {
        webhook_id,
        location_id: account.location_id,
        company_id: account.company_id,
        status,
        error,
    });
}

/// POSTs `body` with its RSA signature; the receiver's status.
async fn post_signed(hook: &MarketplaceWebhook, body: String) -> Result<u16, String> {
    let signature = hook
        .signer
        .sign_rsa(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let client =
        custody::http::client(custody::egress::EgressPolicy::LOCAL).map_err(|e| e.to_string())?;
    let response = client
        .post(&hook.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-wh-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// `client_secret_basic` or `client_secret_post`.
fn client_authenticated(
    shared: &Shared,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> bool {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let (id, secret) = match basic {
        Some(pair) => match pair.split_once(':') {
            Some((id, secret)) => (url_decode(id), url_decode(secret)),
            None => return false,
        },
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    id == shared.client_id && secret == shared.client_secret
}

/// RFC 6749 §2.3.1: Basic credentials are form-urlencoded first.
fn url_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn issue(
    shared: &Shared,
    inner: &mut Inner,
    account: &SimAccount,
    scope: &str,
) -> serde_json::Value {
    let access = random_token("at_");
    let refresh = random_token("rt_");
    let expires = Instant::now() + Duration::from_secs(inner.expires_in);
    inner.access_tokens.insert(
        access.clone(),
        AccessGrant {
            account: account.clone(),
            revoked: false,
            expires,
        },
    );
    inner.refresh_tokens.insert(
        refresh.clone(),
        Grant {
            account: account.clone(),
            scope: scope.to_owned(),
            used: false,
            revoked: false,
        },
    );
    inner.issued_access_order.push(access.clone());
    inner.issued_refresh_order.push(refresh.clone());
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": inner.expires_in,
        "refresh_token": refresh,
        "scope": scope,
    });
    if shared.flavour == Flavour::HighLevel {
        body["userType"] = json!(account.user_type);
        body["companyId"] = json!(account.company_id);
        if account.user_type == "Location" {
            body["locationId"] = json!(account.location_id);
        }
        body["userId"] = json!(account.subject);
    }
    body
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let delay = shared.lock().token_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if !client_authenticated(&shared, &headers, &form) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let get = |name: &str| form.get(name).cloned().unwrap_or_default();
    if shared.flavour == Flavour::HighLevel
        && let Some(user_type) = form.get("user_type")
        && user_type != "Location"
        && user_type != "Company"
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "user_type");
    }
    let mut inner = shared.lock();
    match get("grant_type").as_str() {
        "authorization_code" => {
            let code_value = get("code");
            let Some(code) = inner.codes.get(&code_value).cloned() else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown code");
            };
            if code.used {
                // A replayed code: revoke everything it produced.
                for token in &code.issued {
                    if let Some(grant) = inner.refresh_tokens.get_mut(token) {
                        grant.revoked = true;
                    }
                    if let Some(entry) = inner.access_tokens.get_mut(token) {
                        entry.revoked = true;
                    }
                }
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code already used",
                );
            }
            // Any attempt spends the code, as real providers do.
            if let Some(stored) = inner.codes.get_mut(&code_value) {
                stored.used = true;
            }
            if code.client_id != shared.client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code of another client",
                );
            }
            if get("redirect_uri") != code.redirect_uri {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri mismatch",
                );
            }
            if let Some(challenge) = &code.challenge {
                let verifier = get("code_verifier");
                if verifier.is_empty() || pkce_s256(&verifier) != *challenge {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "PKCE verification failed",
                    );
                }
            }
            let body = issue(&shared, &mut inner, &code.account, &code.scope);
            let issued = [
                body["access_token"].as_str().unwrap_or_default().to_owned(),
                body["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ];
            if let Some(stored) = inner.codes.get_mut(&code_value) {
                stored.issued.extend(issued);
            }
            (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                Json(body),
            )
                .into_response()
        }
        "refresh_token" => {
            let presented = get("refresh_token");
            let Some(grant) = inner.refresh_tokens.get(&presented).cloned() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                );
            };
            if grant.used || grant.revoked {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token used or revoked",
                );
            }
            // Rotation: the presented refresh token dies now.
            if let Some(stored) = inner.refresh_tokens.get_mut(&presented) {
                stored.used = true;
            }
            let body = issue(&shared, &mut inner, &grant.account, &grant.scope);
            (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                Json(body),
            )
                .into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type",
        ),
    }
}

async fn revoke(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    shared.revocations.fetch_add(1, Ordering::SeqCst);
    if shared.revocations_fail.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !client_authenticated(&shared, &headers, &form) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let mut inner = shared.lock();
    if let Some(grant) = inner.refresh_tokens.get_mut(&token) {
        grant.revoked = true;
    }
    if let Some(entry) = inner.access_tokens.get_mut(&token) {
        entry.revoked = true;
    }
    // RFC 7009: 200 whether or not the token was known.
    StatusCode::OK.into_response()
}

async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let inner = shared.lock();
    match inner.access_tokens.get(&token) {
        Some(grant) if !grant.revoked => {
            Json(json!({ "sub": grant.account.subject })).into_response()
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response(),
    }
}

/// Signs HighLevel webhooks with a key pair generated for the test; the function
/// under test gets the public keys through its configuration.
pub struct WebhookSigner {
    rsa: RsaKeyPair,
    ed25519: Ed25519KeyPair,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSigner(<keys>)")
    }
}

/// Errors of key generation or signing (the crypto library gives no detail).
#[derive(Debug, thiserror::Error)]
#[error("webhook signing: {0}")]
pub struct SignError(&'static str);

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl WebhookSigner {
    pub fn generate() -> Result<Self, SignError> {
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| SignError("RSA key generation failed"))?;
        let ed25519 =
            Ed25519KeyPair::generate().map_err(|_| SignError("Ed25519 key generation failed"))?;
        Ok(Self { rsa, ed25519 })
    }

    /// The RSA public key as `BEGIN PUBLIC KEY` PEM (what HighLevel publishes).
    pub fn rsa_public_key_pem(&self) -> Result<String, SignError> {
        let der = self
            .rsa
            .public_key()
            .as_der()
            .map_err(|_| SignError("RSA public key encoding failed"))?;
        Ok(pem("PUBLIC KEY", der.as_ref()))
    }

    /// The Ed25519 public key as `BEGIN PUBLIC KEY` PEM.
    pub fn ed25519_public_key_pem(&self) -> Result<String, SignError> {
        let der = self
            .ed25519
            .public_key()
            .as_der()
            .map_err(|_| SignError("Ed25519 public key encoding failed"))?;
        Ok(pem("PUBLIC KEY", der.as_ref()))
    }

    /// Base64 RSA-SHA256 (PKCS#1 v1.5) signature for `x-wh-signature`.
    pub fn sign_rsa(&self, body: &[u8]) -> Result<String, SignError> {
        let mut signature = vec![0u8; self.rsa.public_modulus_len()];
        self.rsa
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                body,
                &mut signature,
            )
            .map_err(|_| SignError("RSA signing failed"))?;
        Ok(STANDARD.encode(signature))
    }

    /// Base64 Ed25519 signature for `x-ghl-signature`.
    pub fn sign_ed25519(&self, body: &[u8]) -> String {
        STANDARD.encode(self.ed25519.sign(body).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

    /// A webhook receiver that keeps what it gets and answers `status`.
    async fn receiver(status: StatusCode) -> (String, Received, JoinHandle<()>) {
        let received: Received = Arc::default();
        let kept = Arc::clone(&received);
        let app = Router::new().route(
            "/webhooks/highlevel",
            post(move |headers: HeaderMap, body: String| {
                let kept = Arc::clone(&kept);
                async move {
                    kept.lock().unwrap().push((headers, body));
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/webhooks/highlevel",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, received, task)
    }

    async fn install(sim: &OauthProviderSim, query: &str) -> Url {
        let client = custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap();
        let response = client
            .get(format!(
                "{}{query}",
                sim.marketplace_install_url("http://127.0.0.1:9/cb")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 302);
        Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
    }

    async fn settled(sim: &OauthProviderSim, count: usize) -> Vec<MarketplaceDelivery> {
        for _ in 0..100 {
            let deliveries = sim.marketplace_deliveries();
            if deliveries.len() >= count && sim.marketplace_webhooks_in_flight() == 0 {
                return deliveries;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("deliveries: {:?}", sim.marketplace_deliveries());
    }

    fn account() -> SimAccount {
        SimAccount {
            location_id: "loc1".into(),
            company_id: "co1".into(),
            user_type: "Location".into(),
            subject: "user1".into(),
        }
    }

    #[tokio::test]
    async fn marketplace_install_sends_a_signed_install_webhook_when_configured() {
        let sim = OauthProviderSim::start(Flavour::HighLevel, "app", "secret")
            .await
            .unwrap();
        sim.register_redirect_uri("http://127.0.0.1:9/cb");
        sim.set_account(account());
        // Not configured: the redirect only, as before.
        install(&sim, "").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(sim.marketplace_deliveries().is_empty());

        let (url, received, _task) = receiver(StatusCode::ACCEPTED).await;
        let signer = Arc::new(WebhookSigner::generate().unwrap());
        sim.set_marketplace_webhook(&url, Arc::clone(&signer), "app-id-1");
        let back = install(&sim, "&location_id=loc2").await;
        assert!(back.query_pairs().any(|(k, _)| k == "code"));
        let deliveries = settled(&sim, 1).await;
        assert_eq!(deliveries.len(), 1);
        assert!(deliveries[0].accepted(), "{deliveries:?}");
        assert_eq!(deliveries[0].location_id, "loc2");

        let (headers, body) = received.lock().unwrap()[0].clone();
        let signature = STANDARD
            .decode(headers["x-wh-signature"].to_str().unwrap())
            .unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            signer.rsa.public_key().as_ref(),
        )
        .verify(body.as_bytes(), &signature)
        .expect("x-wh-signature verifies over the raw body");
        let payload: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(payload["type"], "INSTALL");
        assert_eq!(payload["appId"], "app-id-1");
        assert_eq!(payload["installType"], "Location");
        assert_eq!(payload["locationId"], "loc2");
        assert_eq!(payload["companyId"], "co1");
        assert_eq!(payload["userId"], "user1");
        assert_eq!(payload["webhookId"], deliveries[0].webhook_id.as_str());
        let at =
            chrono::DateTime::parse_from_rfc3339(payload["timestamp"].as_str().unwrap()).unwrap();
        assert!((chrono::Utc::now() - at.to_utc()).num_seconds().abs() < 10);
        // The code the browser carries is for the same account.
        let code = back
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned();
        assert_eq!(sim.shared.lock().codes[&code].account.location_id, "loc2");

        // Paused: no webhook; every install has its own webhook id.
        sim.pause_marketplace_webhook(true);
        install(&sim, "").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sim.marketplace_deliveries().len(), 1);
        sim.pause_marketplace_webhook(false);
        install(&sim, "").await;
        let deliveries = settled(&sim, 2).await;
        assert_ne!(deliveries[0].webhook_id, deliveries[1].webhook_id);
        assert_eq!(deliveries[1].location_id, "loc1");
    }

    #[tokio::test]
    async fn a_failed_webhook_send_is_recorded_not_fatal() {
        let sim = OauthProviderSim::start(Flavour::HighLevel, "app", "secret")
            .await
            .unwrap();
        sim.register_redirect_uri("http://127.0.0.1:9/cb");
        let signer = Arc::new(WebhookSigner::generate().unwrap());
        // Nothing listens on port 9 (discard): the POST fails.
        sim.set_marketplace_webhook("http://127.0.0.1:9/webhooks", Arc::clone(&signer), "a");
        install(&sim, "").await;
        let deliveries = settled(&sim, 1).await;
        assert!(!deliveries[0].accepted());
        assert!(deliveries[0].status.is_none() && deliveries[0].error.is_some());
        // Refused by the receiver: recorded with its status.
        let (url, _received, _task) = receiver(StatusCode::UNAUTHORIZED).await;
        sim.set_marketplace_webhook(&url, signer, "a");
        install(&sim, "").await;
        let deliveries = settled(&sim, 2).await;
        assert_eq!(deliveries[1].status, Some(401));
        // The provider still works.
        install(&sim, "").await;
    }
}

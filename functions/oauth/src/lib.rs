//! The `oauth` function: start a connection, the OAuth callback, list and delete
//! connections, and the HighLevel marketplace webhook. The OAuth logic itself lives in
//! `custody::oauth`; this is the HTTP surface.

use custody::api::{self, Problem, Role};
use custody::oauth::flow::{self, BINDING_COOKIE, CallbackFailure, CallbackParams};
use custody::oauth::install::{self, ClaimRequest, INSTALL_COOKIE};
use custody::oauth::webhook::{self, WebhookKeys};
use custody::oauth::{OauthDeps, OauthError};
use custody::schedule::ExportSchedules;
use http::StatusCode;
use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE,
};
use lambda_http::{Body, Request, RequestExt, Response};
use secrecy::ExposeSecret;
use url::Url;

/// What the handler needs, built once per cold start.
#[derive(Clone, Debug)]
pub struct Deps {
    pub oauth: OauthDeps,
    pub schedules: ExportSchedules,
    pub webhook_keys: WebhookKeys,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Neither an HTTP API request nor a revocation request (a Lambda error: only the
    /// gateway and custody's own functions may invoke this one).
    #[error("event is neither an HTTP API request nor a revocation request: {0}")]
    Unrecognised(String),
    #[error(transparent)]
    Oauth(#[from] OauthError),
}

/// The Lambda entry point: HTTP API events go to the routes; `{"custody_revoke_deleted":
/// […]}` from the dsar function (which deleted those connections on account deletion
/// and may not decrypt their tokens) revokes their grants at the providers;
/// `{"custody_expire_installations": {}}` (every 5 minutes, from the template's
/// schedule) deletes unclaimed Marketplace installs past their time.
pub async fn handle_event(
    deps: &Deps,
    event: serde_json::Value,
) -> Result<serde_json::Value, EventError> {
    if event.get("requestContext").is_some() {
        let request = lambda_http::request::from_str(&event.to_string())
            .map_err(|e| EventError::Unrecognised(format!("HTTP API event: {e}")))?;
        let response = handle(deps, request).await;
        return serde_json::to_value(api::gateway_response(response))
            .map_err(|e| EventError::Unrecognised(e.to_string()));
    }
    if event.get(SWEEP_EVENT).is_some() {
        let swept = install::sweep_expired(&deps.oauth).await?;
        return serde_json::to_value(swept).map_err(|e| EventError::Unrecognised(e.to_string()));
    }
    let request: custody::oauth::RevokeDeleted = serde_json::from_value(event)
        .map_err(|e| EventError::Unrecognised(format!("revocation request: {e}")))?;
    let revoked = custody::oauth::revoke_deleted(
        &deps.oauth,
        &request.custody_revoke_deleted,
        "system:oauth",
    )
    .await?;
    Ok(serde_json::json!({ "revocations": revoked }))
}

/// The key of the scheduled sweep's event (template: `ExpireInstallations`).
pub const SWEEP_EVENT: &str = "custody_expire_installations";

/// Dispatches on the API Gateway route key. Never fails: every error is a response.
pub async fn handle(deps: &Deps, req: Request) -> Response<Body> {
    let route = api::route_key(&req).unwrap_or_default();
    let result = match route.as_str() {
        "GET /connect/{provider}" => connect(deps, &req).await,
        "GET /oauth/{provider}/callback" => Ok(callback(deps, &req).await),
        "GET /connections" => list(deps, &req).await,
        "DELETE /connections/{provider}" => disconnect(deps, &req).await,
        "POST /webhooks/highlevel" => highlevel_webhook(deps, &req).await,
        "POST /installations/{provider}/claim" => claim(deps, &req).await,
        _ => Err(Problem::not_found()),
    };
    result.unwrap_or_else(Problem::into_response)
}

fn query(req: &Request, name: &str) -> Option<String> {
    req.query_string_parameters_ref()
        .and_then(|q| q.first(name))
        .map(str::to_owned)
}

fn cookie(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// A redirect that leaks nothing onwards: no referrer, not cached.
fn redirect(location: &Url) -> Result<Response<Body>, Problem> {
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::FOUND;
    let headers = resp.headers_mut();
    headers.insert(
        LOCATION,
        HeaderValue::from_str(location.as_str()).map_err(|_| Problem::internal())?,
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Ok(resp)
}

async fn connect(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let caller = api::caller(req)?;
    caller.require(Role::Admin)?;
    let provider = api::path_param(req, "provider")?;
    let return_url = query(req, "return_url");
    let started = flow::start(
        &deps.oauth,
        &caller.tenant,
        &caller.actor(),
        &provider,
        return_url.as_deref(),
    )
    .await?;
    let mut resp = redirect(&started.authorize_url)?;
    // The body repeats the URL for a client that fetched this with a bearer token and
    // navigates itself. A browser app asks for JSON: a fetch cannot read a redirect's
    // body (it follows it, or sees an opaque response), so it gets a 200.
    *resp.body_mut() = Body::Text(
        serde_json::json!({ "authorize_url": started.authorize_url.as_str() }).to_string(),
    );
    if wants_json(req) {
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().remove(LOCATION);
    }
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let cookie = format!(
        "{BINDING_COOKIE}={}; Path=/; Max-Age=600; Secure; HttpOnly; SameSite=Lax",
        started.binding.expose_secret()
    );
    headers.insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| Problem::internal())?,
    );
    Ok(resp)
}

/// Whether the caller prefers JSON to a redirect (`Accept: application/json`).
fn wants_json(req: &Request) -> bool {
    req.headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        })
}

fn with_result(mut url: Url, result: &str, provider: &str) -> Url {
    url.query_pairs_mut()
        .append_pair("result", result)
        .append_pair("provider", provider);
    url
}

async fn callback(deps: &Deps, req: &Request) -> Response<Body> {
    let provider = match api::path_param(req, "provider") {
        Ok(provider) => provider,
        Err(problem) => return problem.into_response(),
    };
    let params = CallbackParams {
        state: query(req, "state"),
        code: query(req, "code"),
        error: query(req, "error"),
        iss: query(req, "iss"),
    };
    // An unknown provider is a 404 before anything is read or consumed (the providers
    // are no secret: the template names them).
    let config = match deps.oauth.provider(&provider) {
        Ok(config) => config,
        Err(err) => return with_no_referrer(Problem::from(err).into_response()),
    };
    let marketplace =
        params.state.as_deref().is_none_or(str::is_empty) && config.marketplace_app_id.is_some();
    if marketplace {
        return marketplace_callback(deps, &provider, &params).await;
    }
    let binding = cookie(req, BINDING_COOKIE);
    let result = flow::complete(&deps.oauth, &provider, &params, binding.as_deref()).await;
    let response = match result {
        Ok(done) => {
            tracing::info!(provider = %done.provider, tenant = %done.tenant, "connection stored");
            redirect(&with_result(done.return_url, "connected", &provider))
        }
        Err(failure) => {
            let CallbackFailure { error, return_url } = *failure;
            let code = error.result_code();
            match &error {
                flow::CallbackError::Oauth(
                    OauthError::Provider { .. } | OauthError::InvalidGrant(_),
                )
                | flow::CallbackError::Oauth(
                    OauthError::Config(_)
                    | OauthError::Seal(_)
                    | OauthError::Store(_)
                    | OauthError::Audit(_),
                ) => {
                    tracing::error!(provider = %provider, error = %error, result = code, "OAuth callback failed")
                }
                _ => {
                    tracing::warn!(provider = %provider, error = %error, result = code, "OAuth callback refused")
                }
            }
            match (return_url, error) {
                (Some(url), _) => redirect(&with_result(url, code, &provider)),
                // Our own faults (store, KMS, audit, configuration) are a bare 500 through
                // the one error mapping, never a 4xx carrying internal text.
                (
                    None,
                    flow::CallbackError::Oauth(
                        err @ (OauthError::Config(_)
                        | OauthError::Seal(_)
                        | OauthError::Store(_)
                        | OauthError::Audit(_)),
                    ),
                ) => Err(Problem::from(err)),
                (None, error) => Err(Problem::bad_request("state", error.to_string())),
            }
        }
    };
    let mut response = response.unwrap_or_else(Problem::into_response);
    // The binding cookie has served its purpose either way.
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{BINDING_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("")),
    );
    response
        .headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// A callback without state for a provider that takes Marketplace installs: the
/// install is held, and the browser goes to the console's claim page with the
/// binding cookie. Failures go to the same page with a result code.
async fn marketplace_callback(
    deps: &Deps,
    provider: &str,
    params: &CallbackParams,
) -> Response<Body> {
    let Ok(config) = deps.oauth.provider(provider) else {
        return Problem::not_found().into_response();
    };
    let response = match install::receive(&deps.oauth, config, params).await {
        Ok(received) => {
            let cookie = format!(
                "{INSTALL_COOKIE}={}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=None",
                received.binding.expose_secret(),
                install::claim_window().num_seconds()
            );
            redirect(&received.claim_url).and_then(|mut resp| {
                resp.headers_mut().insert(
                    SET_COOKIE,
                    HeaderValue::from_str(&cookie).map_err(|_| Problem::internal())?,
                );
                Ok(resp)
            })
        }
        Err(error) => {
            let code = error.result_code();
            tracing::warn!(provider = %provider, error = %error, result = code, "Marketplace install refused");
            match (install::landing_url(&deps.oauth), error) {
                (
                    _,
                    flow::CallbackError::Oauth(
                        err @ (OauthError::Config(_)
                        | OauthError::Seal(_)
                        | OauthError::Store(_)
                        | OauthError::Audit(_)),
                    ),
                ) => Err(Problem::from(err)),
                (Ok(url), _) => redirect(&with_result(url, code, provider)),
                (Err(err), _) => Err(Problem::from(err)),
            }
        }
    };
    with_no_referrer(response.unwrap_or_else(Problem::into_response))
}

fn with_no_referrer(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// `POST /installations/{provider}/claim`: an admin claims a Marketplace install for
/// their tenant, from the browser the install arrived in.
async fn claim(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let caller = api::caller(req)?;
    caller.require(Role::Admin)?;
    let provider = api::path_param(req, "provider")?;
    let body: ClaimRequest = api::json_body(req, install::MAX_CLAIM_BODY_BYTES)?;
    let binding = cookie(req, INSTALL_COOKIE);
    let claimed = install::claim(
        &deps.oauth,
        &caller.tenant,
        &caller.actor(),
        &provider,
        &body,
        binding.as_deref(),
    )
    .await?;
    tracing::info!(provider = %claimed.provider, tenant = %caller.tenant, "Marketplace install claimed");
    let mut resp = api::json_response(StatusCode::OK, &claimed)?;
    // The binding has served its purpose.
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{INSTALL_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=None"
        ))
        .map_err(|_| Problem::internal())?,
    );
    Ok(resp)
}

async fn list(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let caller = api::caller(req)?;
    caller.require(Role::Viewer)?;
    let connections = custody::oauth::list_connections(&deps.oauth, &caller.tenant).await?;
    api::json_response(
        StatusCode::OK,
        &serde_json::json!({ "connections": connections }),
    )
}

async fn disconnect(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let caller = api::caller(req)?;
    caller.require(Role::Admin)?;
    let provider = api::path_param(req, "provider")?;
    deps.oauth.provider(&provider)?;
    let outcome = custody::oauth::disconnect(
        &deps.oauth,
        &deps.schedules,
        &caller.tenant,
        &provider,
        &caller.actor(),
    )
    .await?;
    api::json_response(StatusCode::OK, &outcome)
}

async fn highlevel_webhook(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let outcome = webhook::handle_highlevel(
        &deps.oauth,
        &deps.schedules,
        &deps.webhook_keys,
        header,
        req.body().as_ref(),
    )
    .await?;
    api::json_response(StatusCode::OK, &outcome)
}

//! A minimal OpenID Connect provider for the local stack (local only): the
//! authorization code flow with PKCE (S256 required) for one public client, the web
//! console ([`crate::console::CLIENT_ID`]), whose tokens are the
//! [`LocalIssuer`]'s, so the local HTTP API accepts them as it accepts every local
//! token.
//!
//! Logging in is choosing a tenant and a role on a form; there are no passwords and no
//! sessions (every authorization shows the form again, `prompt=none` is answered with
//! `login_required`). Endpoints, under the issuer URL (which is also its `iss`):
//! `/.well-known/openid-configuration`, `/authorize` (GET: the form; POST: the
//! redirect with the code), `/token`, `/jwks`, `/userinfo`, `/logout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::console::{CLIENT_ID, REDIRECT_PATH};
use crate::local_jwt::{ALGORITHM, LocalIssuer};

/// How long an authorization code can be exchanged (once).
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of the tokens it issues, in seconds.
pub const TOKEN_TTL_SECONDS: i64 = 3600;
/// The roles the login form offers (custody's roles).
pub const ROLES: [&str; 3] = ["admin", "operator", "viewer"];
/// The tenant the login form proposes (the demo's).
pub const DEFAULT_TENANT: &str = crate::demo::TENANT;

/// An issued, not yet exchanged authorization code.
struct Grant {
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    tenant: String,
    role: String,
    expires: Instant,
}

pub struct OidcProvider {
    issuer: LocalIssuer,
    console_origin: String,
    codes: Mutex<HashMap<String, Grant>>,
}

/// The parameters of an authorization request, validated.
struct AuthorizeRequest {
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
}

/// Why an authorization request is refused: before the redirect URI is trusted the
/// browser gets a page; after, the client gets `error` at its redirect URI.
enum Refusal {
    Page(String),
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl OidcProvider {
    /// A provider issuing `issuer`'s tokens to the console at `console_origin`
    /// (`scheme://host:port`, no trailing slash). The issuer must accept
    /// [`CLIENT_ID`] as an audience for the tokens to pass the gateway.
    pub fn new(issuer: LocalIssuer, console_origin: impl Into<String>) -> Self {
        Self {
            issuer,
            console_origin: console_origin.into(),
            codes: Mutex::new(HashMap::new()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.issuer().trim_end_matches('/'))
    }

    /// The one registered redirect URI.
    pub fn redirect_uri(&self) -> String {
        format!("{}{REDIRECT_PATH}", self.console_origin)
    }

    /// `/.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer.issuer(),
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "jwks_uri": self.url("/jwks"),
            "userinfo_endpoint": self.url("/userinfo"),
            "end_session_endpoint": self.url("/logout"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "scopes_supported": ["openid"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "custom:tenant_id", "custom:role"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
        })
    }

    /// Serves on `listener`; returns the address.
    pub fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let address = listener.local_addr()?;
        let provider = Arc::new(self);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let provider = provider.clone();
                async move { provider.handle(method, uri, headers, body) }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((address, task))
    }

    fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let query = uri.query().unwrap_or("");
        let mut response = match (method.as_str(), uri.path()) {
            ("OPTIONS", _) => StatusCode::NO_CONTENT.into_response(),
            ("GET", "/.well-known/openid-configuration") => {
                axum::Json(self.discovery()).into_response()
            }
            ("GET", "/jwks") => axum::Json(self.issuer.jwks()).into_response(),
            ("GET", "/authorize") => self.authorize_page(&params(query.as_bytes())),
            ("POST", "/authorize") => self.authorize_submit(&params(&body)),
            ("POST", "/token") => self.token(&params(&body)),
            ("GET", "/userinfo") => self.userinfo(&headers),
            ("GET", "/logout") => self.logout(&params(query.as_bytes())),
            (_, "/authorize" | "/token" | "/jwks" | "/userinfo" | "/logout")
            | (_, "/.well-known/openid-configuration") => {
                StatusCode::METHOD_NOT_ALLOWED.into_response()
            }
            _ => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        };
        self.cors(&method, &headers, &mut response);
        response
    }

    /// The browser calls discovery, token, JWKS and userinfo with `fetch` from the
    /// console origin: that origin (only) may read the answers.
    fn cors(&self, method: &Method, request: &HeaderMap, response: &mut Response) {
        let headers = response.headers_mut();
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let allowed = request
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes() == self.console_origin.as_bytes());
        let Ok(origin) = HeaderValue::from_str(&self.console_origin) else {
            return;
        };
        if !allowed {
            return;
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if method == Method::OPTIONS {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }

    /// Checks an authorization request (the query of GET, the form of POST).
    fn validate(&self, p: &Params) -> Result<AuthorizeRequest, Refusal> {
        let client_id = p.one("client_id").map_err(Refusal::Page)?;
        if client_id.as_deref() != Some(CLIENT_ID) {
            return Err(Refusal::Page(format!(
                "Unknown client_id. The only client is {CLIENT_ID}."
            )));
        }
        let redirect_uri = p.one("redirect_uri").map_err(Refusal::Page)?;
        let registered = self.redirect_uri();
        if redirect_uri.as_deref() != Some(registered.as_str()) {
            return Err(Refusal::Page(format!(
                "redirect_uri is not registered. The only one is {registered}."
            )));
        }
        let state = p.one("state").ok().flatten();
        let refuse = |error: &'static str, description: &str| Refusal::Redirect {
            redirect_uri: registered.clone(),
            state: state.clone(),
            error,
            description: description.to_owned(),
        };
        let (response_type, scope, challenge, method, nonce, prompt) = match (
            p.one("response_type"),
            p.one("scope"),
            p.one("code_challenge"),
            p.one("code_challenge_method"),
            p.one("nonce"),
            p.one("prompt"),
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e), Ok(f)) => (a, b, c, d, e, f),
            _ => {
                return Err(refuse(
                    "invalid_request",
                    "a parameter is given more than once",
                ));
            }
        };
        if response_type.as_deref() != Some("code") {
            return Err(refuse(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let scope = scope.unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(refuse("invalid_scope", "scope must include openid"));
        }
        let challenge = challenge.unwrap_or_default();
        // S256 challenges are base64url SHA-256 digests: 43 characters.
        let well_formed = challenge.len() == 43
            && challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if method.as_deref() != Some("S256") || !well_formed {
            return Err(refuse(
                "invalid_request",
                "PKCE is required: code_challenge with code_challenge_method=S256",
            ));
        }
        if prompt.as_deref() == Some("none") {
            // No sessions: every login shows the form.
            return Err(refuse(
                "login_required",
                "the local provider keeps no session",
            ));
        }
        Ok(AuthorizeRequest {
            redirect_uri: registered,
            state,
            nonce,
            code_challenge: challenge,
            scope,
        })
    }

    fn refused(refusal: Refusal) -> Response {
        match refusal {
            Refusal::Page(message) => html(StatusCode::BAD_REQUEST, &error_page(&message)),
            Refusal::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => {
                let mut pairs = vec![
                    ("error", error.to_owned()),
                    ("error_description", description),
                ];
                pairs.extend(state.map(|s| ("state", s)));
                redirect(&with_query(&redirect_uri, &pairs))
            }
        }
    }

    /// GET `/authorize`: the login form.
    fn authorize_page(&self, p: &Params) -> Response {
        match self.validate(p) {
            Ok(request) => html(
                StatusCode::OK,
                &login_page(&request, DEFAULT_TENANT, ROLES[0], None),
            ),
            Err(refusal) => Self::refused(refusal),
        }
    }

    /// POST `/authorize`: the form submitted; a code for the chosen tenant and role.
    fn authorize_submit(&self, p: &Params) -> Response {
        let request = match self.validate(p) {
            Ok(request) => request,
            Err(refusal) => return Self::refused(refusal),
        };
        let tenant = p.one("tenant").ok().flatten().unwrap_or_default();
        let role = p.one("role").ok().flatten().unwrap_or_default();
        let tenant = tenant.trim();
        let role_known = ROLES.contains(&role.as_str());
        if custody::TenantId::parse(tenant).is_err() || !role_known {
            let message = if role_known {
                "A tenant is letters, digits, '-' and '_' (at most 64)."
            } else {
                "Choose admin, operator or viewer."
            };
            let role = if role_known { role.as_str() } else { ROLES[0] };
            return html(
                StatusCode::BAD_REQUEST,
                &login_page(&request, tenant, role, Some(message)),
            );
        }
        let code = random_token();
        {
            let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            codes.retain(|_, grant| grant.expires > now);
            codes.insert(
                code.clone(),
                Grant {
                    redirect_uri: request.redirect_uri.clone(),
                    code_challenge: request.code_challenge,
                    nonce: request.nonce,
                    tenant: tenant.to_owned(),
                    role,
                    expires: now + CODE_TTL,
                },
            );
        }
        let mut pairs = vec![("code", code)];
        pairs.extend(request.state.map(|s| ("state", s)));
        redirect(&with_query(&request.redirect_uri, &pairs))
    }

    /// POST `/token`: the code for tokens, once, with the verifier, for the client and
    /// redirect URI it was issued to.
    fn token(&self, p: &Params) -> Response {
        let field = |name: &str| p.one(name).ok().flatten();
        if p.one("code").is_err() || p.one("client_id").is_err() {
            return token_error("invalid_request", "a parameter is given more than once");
        }
        if field("grant_type").as_deref() != Some("authorization_code") {
            return token_error(
                "unsupported_grant_type",
                "only authorization_code is supported",
            );
        }
        let Some(code) = field("code") else {
            return token_error("invalid_request", "code is missing");
        };
        // Taken out whatever follows: a code is tried once, right or wrong.
        let grant = self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&code);
        let Some(grant) = grant.filter(|g| g.expires > Instant::now()) else {
            return token_error("invalid_grant", "unknown, used or expired code");
        };
        if field("client_id").as_deref() != Some(CLIENT_ID) {
            return token_error_status(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client_id",
            );
        }
        if field("redirect_uri").as_deref() != Some(grant.redirect_uri.as_str()) {
            return token_error(
                "invalid_grant",
                "redirect_uri differs from the authorization's",
            );
        }
        let verifier = field("code_verifier").unwrap_or_default();
        // RFC 7636: 43 to 128 unreserved characters.
        let verifier_ok = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if !verifier_ok || computed != grant.code_challenge {
            return token_error(
                "invalid_grant",
                "code_verifier does not match the challenge",
            );
        }
        let now = chrono::Utc::now().timestamp();
        let sub = format!("local-{}", grant.role);
        let mut id_claims = json!({
            "iss": self.issuer.issuer(),
            "aud": CLIENT_ID,
            "sub": sub,
            "custom:tenant_id": grant.tenant,
            "custom:role": grant.role,
            "iat": now,
            "auth_time": now,
            "exp": now + TOKEN_TTL_SECONDS,
        });
        if let Some(nonce) = grant.nonce {
            id_claims["nonce"] = Value::String(nonce);
        }
        let access_claims = json!({
            "iss": self.issuer.issuer(),
            "aud": CLIENT_ID,
            "client_id": CLIENT_ID,
            "sub": sub,
            "custom:tenant_id": grant.tenant,
            "custom:role": grant.role,
            "scope": "openid",
            "token_use": "access",
            "iat": now,
            "exp": now + TOKEN_TTL_SECONDS,
        });
        no_store(axum::Json(json!({
            "access_token": self.issuer.sign_claims(&access_claims),
            "id_token": self.issuer.sign_claims(&id_claims),
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL_SECONDS,
            "scope": "openid",
        })))
    }

    /// GET `/userinfo`: the claims of a valid access token.
    fn userinfo(&self, headers: &HeaderMap) -> Response {
        let claims = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.issuer.verify(t));
        match claims {
            Some(claims) => {
                let pick = |k: &str| claims.get(k).cloned().unwrap_or(Value::Null);
                no_store(axum::Json(json!({
                    "sub": pick("sub"),
                    "custom:tenant_id": pick("custom:tenant_id"),
                    "custom:role": pick("custom:role"),
                })))
            }
            None => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            )
                .into_response(),
        }
    }

    /// GET `/logout`: nothing to end (no sessions); back to the console.
    fn logout(&self, p: &Params) -> Response {
        let target = match p.one("post_logout_redirect_uri") {
            Ok(None) => format!("{}/", self.console_origin),
            Ok(Some(uri)) if self.under_console(&uri) => uri,
            _ => {
                return html(
                    StatusCode::BAD_REQUEST,
                    &error_page(&format!(
                        "post_logout_redirect_uri must be under {}/.",
                        self.console_origin
                    )),
                );
            }
        };
        let state: Vec<_> = p
            .one("state")
            .ok()
            .flatten()
            .map(|s| ("state", s))
            .into_iter()
            .collect();
        redirect(&with_query(&target, &state))
    }

    /// Same origin as the console, no userinfo or fragment.
    fn under_console(&self, uri: &str) -> bool {
        url::Url::parse(uri).is_ok_and(|u| {
            u.origin().ascii_serialization() == self.console_origin
                && u.username().is_empty()
                && u.password().is_none()
                && u.fragment().is_none()
        })
    }
}

/// Form or query parameters, each name possibly repeated.
struct Params(Vec<(String, String)>);

fn params(raw: &[u8]) -> Params {
    Params(
        url::form_urlencoded::parse(raw)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

impl Params {
    /// The value of `name`, `None` if absent or empty; an error if given twice with
    /// different values (RFC 6749 §3.1: parameters must not repeat).
    fn one(&self, name: &str) -> Result<Option<String>, String> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        let first = values.next();
        if let Some(first) = first
            && values.any(|v| v != first)
        {
            return Err(format!("{name} is given more than once."));
        }
        Ok(first.filter(|v| !v.is_empty()).cloned())
    }
}

fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn with_query(base: &str, pairs: &[(&str, String)]) -> String {
    match url::Url::parse(base) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (k, v) in pairs {
                    query.append_pair(k, v);
                }
            }
            url.to_string()
        }
        Err(_) => base.to_owned(),
    }
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn no_store(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn token_error(error: &str, description: &str) -> Response {
    token_error_status(StatusCode::BAD_REQUEST, error, description)
}

fn token_error_status(status: StatusCode, error: &str, description: &str) -> Response {
    no_store((
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    ))
}

/// The login pages' policy: no script at all, no inline style; the form posts to
/// this origin, whose answer redirects to the console (`form-action` covers
/// redirects after a submission, so both are listed).
fn page_csp(console_origin: &str) -> String {
    format!(
        "default-src 'none'; form-action 'self' {console_origin}; frame-ancestors 'none'; base-uri 'none'"
    )
}

fn html(status: StatusCode, page: &(String, String)) -> Response {
    let (console_origin, body) = page;
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-frame-options", "DENY")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer");
    if let Ok(csp) = HeaderValue::from_str(&page_csp(console_origin)) {
        builder = builder.header(header::CONTENT_SECURITY_POLICY, csp);
    }
    builder
        .body(Body::from(body.clone()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Escapes text for HTML content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn error_page(message: &str) -> (String, String) {
    (
        String::new(),
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>custody local login: error</title></head>\n<body><h1>Login request refused</h1><p id=\"error\">{}</p></body></html>\n",
            escape(message)
        ),
    )
}

/// The form: the request's parameters carried as hidden fields, a tenant and a role.
fn login_page(
    request: &AuthorizeRequest,
    tenant: &str,
    role: &str,
    error: Option<&str>,
) -> (String, String) {
    let console_origin = url::Url::parse(&request.redirect_uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let mut hidden = vec![
        ("client_id", CLIENT_ID.to_owned()),
        ("redirect_uri", request.redirect_uri.clone()),
        ("response_type", "code".to_owned()),
        ("scope", request.scope.clone()),
        ("code_challenge", request.code_challenge.clone()),
        ("code_challenge_method", "S256".to_owned()),
    ];
    hidden.extend(request.state.clone().map(|s| ("state", s)));
    hidden.extend(request.nonce.clone().map(|n| ("nonce", n)));
    let hidden: String = hidden
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
                escape(value)
            )
        })
        .collect();
    let roles: String = ROLES
        .iter()
        .map(|r| {
            let selected = if *r == role { " selected" } else { "" };
            format!("<option value=\"{r}\"{selected}>{r}</option>\n")
        })
        .collect();
    let error = error
        .map(|e| format!("<p id=\"error\" role=\"alert\">{}</p>\n", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>custody local login</title></head>\n<body>\n<h1>custody local login</h1>\n<p>Local stack only: choose who to be. No password.</p>\n{error}<form method=\"post\" action=\"/authorize\">\n{hidden}<p><label for=\"tenant\">Tenant</label>\n<input id=\"tenant\" name=\"tenant\" type=\"text\" value=\"{}\" required pattern=\"[A-Za-z0-9_\\-]{{1,64}}\"></p>\n<p><label for=\"role\">Role</label>\n<select id=\"role\" name=\"role\">\n{roles}</select></p>\n<p><button type=\"submit\">Sign in</button></p>\n</form>\n</body></html>\n",
        escape(tenant)
    );
    (console_origin, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_attribute_values() {
        assert_eq!(
            escape("\"><script>alert('x')</script>&"),
            "&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
    }

    #[test]
    fn repeated_parameters_must_agree() {
        let p = params(b"a=1&a=1&b=1&b=2&c=");
        assert_eq!(p.one("a").unwrap().as_deref(), Some("1"));
        assert!(p.one("b").is_err());
        assert_eq!(p.one("c").unwrap(), None);
        assert_eq!(p.one("d").unwrap(), None);
    }
}

//! Providers from configuration, the client secrets in Secrets Manager, and the calls
//! to a provider's endpoints: code exchange and refresh through the `oauth2` crate on
//! custody's own HTTP client (no redirects followed), revocation (RFC 7009) and
//! OpenID Connect userinfo.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType, BasicTokenType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    StandardTokenResponse, TokenResponse as _, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{OauthError, ProviderAccount};
use crate::kernel::egress::{self, EgressPolicy};

/// Environment variables of the OAuth configuration (functions that call
/// [`super::access_token`] need the first two).
pub mod vars {
    /// JSON array of [`super::ProviderConfig`].
    pub const PROVIDERS: &str = "CUSTODY_OAUTH_PROVIDERS";
    /// Secrets Manager id of a JSON object `{"<provider>": "<client secret>", …}`.
    pub const CLIENT_SECRETS_ID: &str = "CUSTODY_OAUTH_CLIENT_SECRETS_ID";
    /// Public base URL of the API; the redirect URI is `<base>/oauth/<provider>/callback`.
    pub const REDIRECT_BASE: &str = "CUSTODY_OAUTH_REDIRECT_BASE";
    /// Comma-separated URL prefixes the browser may be sent back to after a connection.
    pub const RETURN_URLS: &str = "CUSTODY_OAUTH_RETURN_URLS";
}

/// What kind of provider, which decides the defaults and the response fields read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// HighLevel: `chooselocation` authorize URL; the token response carries
    /// `locationId`, `companyId`, `userType`.
    Highlevel,
    /// Google (OpenID Connect): identity from the userinfo endpoint.
    Google,
    /// Any OAuth2 provider, defined entirely by configuration.
    Generic,
}

/// One provider as configured. URLs default per kind, so production only names the
/// client id; tests point every URL at a local server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The path segment (`/connect/{provider}`): `[a-z0-9_-]{1,32}`.
    pub name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    #[serde(default)]
    pub authorize_url: Option<Url>,
    #[serde(default)]
    pub token_url: Option<Url>,
    #[serde(default)]
    pub revocation_url: Option<Url>,
    #[serde(default)]
    pub userinfo_url: Option<Url>,
    /// The issuer expected in the authorization response's `iss` (RFC 9207).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Whether the provider always sends `iss`; then a response without it is refused.
    #[serde(default)]
    pub requires_iss: Option<bool>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// PKCE S256; on unless the provider rejects it.
    #[serde(default)]
    pub pkce: Option<bool>,
    /// HighLevel `user_type` on token requests: `Location` or `Company`.
    #[serde(default)]
    pub user_type: Option<String>,
    /// HighLevel only: the Marketplace app id. When set, an install started in the
    /// Marketplace (a callback with a code and no state) is accepted as a pending
    /// installation, and `INSTALL` webhooks must name this app. Empty means off.
    #[serde(default)]
    pub marketplace_app_id: Option<String>,
}

const HIGHLEVEL_AUTHORIZE: &str = "https://marketplace.gohighlevel.com/oauth/chooselocation";
const HIGHLEVEL_TOKEN: &str = "https://services.leadconnectorhq.com/oauth/token";
const HIGHLEVEL_SCOPES: [&str; 2] = ["conversations.readonly", "conversations/message.readonly"];
const GOOGLE_AUTHORIZE: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const GOOGLE_TOKEN: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_REVOKE: &str = "https://oauth2.googleapis.com/revoke";
const GOOGLE_USERINFO: &str = "https://openidconnect.googleapis.com/v1/userinfo";
const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// A provider with every default resolved.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    pub authorize_url: Url,
    pub token_url: Url,
    pub revocation_url: Option<Url>,
    pub userinfo_url: Option<Url>,
    pub issuer: Option<String>,
    pub requires_iss: bool,
    pub scopes: Vec<String>,
    pub pkce: bool,
    pub user_type: Option<String>,
    /// Set: Marketplace-initiated installs are accepted (`custody::oauth::install`).
    pub marketplace_app_id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("{var} is not valid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

fn parse_url(text: &str) -> Result<Url, String> {
    Url::parse(text).map_err(|e| format!("{text}: {e}"))
}

impl Provider {
    fn resolve(config: ProviderConfig) -> Result<Self, String> {
        let valid_name = !config.name.is_empty()
            && config.name.len() <= 32
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(format!(
                "provider name '{}' must be [a-z0-9_-]{{1,32}}",
                config.name
            ));
        }
        if config.client_id.trim().is_empty() {
            return Err(format!("provider {}: client_id is empty", config.name));
        }
        let default = |url: Option<Url>, fallback: Option<&str>, what: &str| match (url, fallback) {
            (Some(url), _) => Ok(url),
            (None, Some(text)) => parse_url(text),
            (None, None) => Err(format!("provider {}: {what} is required", config.name)),
        };
        let (authorize, token) = match config.kind {
            ProviderKind::Highlevel => (Some(HIGHLEVEL_AUTHORIZE), Some(HIGHLEVEL_TOKEN)),
            ProviderKind::Google => (Some(GOOGLE_AUTHORIZE), Some(GOOGLE_TOKEN)),
            ProviderKind::Generic => (None, None),
        };
        let google = config.kind == ProviderKind::Google;
        let authorize_url = default(config.authorize_url, authorize, "authorize_url")?;
        let token_url = default(config.token_url, token, "token_url")?;
        let revocation_url = match config.revocation_url {
            Some(url) => Some(url),
            None if google => Some(parse_url(GOOGLE_REVOKE)?),
            None => None,
        };
        let userinfo_url = match config.userinfo_url {
            Some(url) => Some(url),
            None if google => Some(parse_url(GOOGLE_USERINFO)?),
            None => None,
        };
        let issuer = config
            .issuer
            .or_else(|| google.then(|| GOOGLE_ISSUER.to_owned()));
        let scopes = config.scopes.unwrap_or_else(|| match config.kind {
            ProviderKind::Highlevel => HIGHLEVEL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            ProviderKind::Google => vec!["openid".into()],
            ProviderKind::Generic => Vec::new(),
        });
        let user_type = match config.kind {
            ProviderKind::Highlevel => Some(config.user_type.unwrap_or_else(|| "Location".into())),
            _ => config.user_type,
        };
        if let Some(user_type) = &user_type
            && user_type != "Location"
            && user_type != "Company"
        {
            return Err(format!(
                "provider {}: user_type must be Location or Company",
                config.name
            ));
        }
        let marketplace_app_id = config
            .marketplace_app_id
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        if let Some(app_id) = &marketplace_app_id {
            // A callback without state is safe only where the provider's install
            // itself is the consent and its webhook corroborates it: HighLevel.
            if config.kind != ProviderKind::Highlevel {
                return Err(format!(
                    "provider {}: marketplace_app_id is for kind highlevel only",
                    config.name
                ));
            }
            if app_id.len() > 128
                || !app_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "provider {}: marketplace_app_id must be [A-Za-z0-9_-]{{1,128}}",
                    config.name
                ));
            }
        }
        Ok(Self {
            requires_iss: config.requires_iss.unwrap_or(google),
            marketplace_app_id,
            name: config.name,
            kind: config.kind,
            client_id: config.client_id,
            authorize_url,
            token_url,
            revocation_url,
            userinfo_url,
            issuer,
            scopes,
            pkce: config.pkce.unwrap_or(true),
            user_type,
        })
    }
}

/// The configured providers, by name.
#[derive(Debug, Clone, Default)]
pub struct Providers(HashMap<String, Provider>);

impl Providers {
    pub fn from_json(json: &str) -> Result<Self, ProviderConfigError> {
        let invalid = |reason: String| ProviderConfigError::Invalid {
            var: vars::PROVIDERS,
            reason,
        };
        let configs: Vec<ProviderConfig> =
            serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        let mut providers = HashMap::new();
        for config in configs {
            let provider = Provider::resolve(config).map_err(invalid)?;
            if providers.contains_key(&provider.name) {
                return Err(invalid(format!(
                    "provider {} is defined twice",
                    provider.name
                )));
            }
            providers.insert(provider.name.clone(), provider);
        }
        Ok(Self(providers))
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.0.get(name)
    }

    /// Checks every URL custody itself calls (token, revocation, userinfo) with the
    /// egress guard, so a misconfigured provider fails at cold start by name rather
    /// than at the first refresh. (The authorize URL is opened by the browser.)
    pub fn check_egress(&self, policy: EgressPolicy) -> Result<(), ProviderConfigError> {
        for provider in self.0.values() {
            let outbound = std::iter::once(&provider.token_url)
                .chain(provider.revocation_url.as_ref())
                .chain(provider.userinfo_url.as_ref());
            for url in outbound {
                egress::check_url(url.as_str(), policy).map_err(|e| {
                    ProviderConfigError::Invalid {
                        var: vars::PROVIDERS,
                        reason: format!("provider {}: {url}: {}", provider.name, e.reason()),
                    }
                })?;
            }
        }
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// OAuth configuration shared by the functions, read once at cold start.
#[derive(Debug, Clone)]
pub struct OauthConfig {
    pub providers: Providers,
    pub client_secrets_id: String,
    /// Public base URL of the API (no trailing slash).
    pub redirect_base: Option<Url>,
    /// Allowed return URL prefixes.
    pub return_urls: Vec<Url>,
}

impl OauthConfig {
    pub fn from_env() -> Result<Self, ProviderConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `PROVIDERS` and `CLIENT_SECRETS_ID` are required; the redirect base and return
    /// URLs only where connections are started (the oauth function checks for them).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ProviderConfigError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ProviderConfigError::Missing(name))
        };
        let providers = Providers::from_json(&required(vars::PROVIDERS)?)?;
        providers.check_egress(EgressPolicy::from_lookup(&lookup))?;
        let client_secrets_id = required(vars::CLIENT_SECRETS_ID)?.trim().to_owned();
        let redirect_base = lookup(vars::REDIRECT_BASE)
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                parse_url(v.trim().trim_end_matches('/')).map_err(|reason| {
                    ProviderConfigError::Invalid {
                        var: vars::REDIRECT_BASE,
                        reason,
                    }
                })
            })
            .transpose()?;
        let return_urls = lookup(vars::RETURN_URLS)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                parse_url(v).map_err(|reason| ProviderConfigError::Invalid {
                    var: vars::RETURN_URLS,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            providers,
            client_secrets_id,
            redirect_base,
            return_urls,
        })
    }

    /// The exact redirect URI registered with `provider`.
    pub fn redirect_uri(&self, provider: &str) -> Result<Url, OauthError> {
        let base = self
            .redirect_base
            .as_ref()
            .ok_or_else(|| OauthError::Config(format!("{} is not set", vars::REDIRECT_BASE)))?;
        parse_url(&format!(
            "{}/oauth/{provider}/callback",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(OauthError::Config)
    }

    /// Whether `candidate` may receive the browser after a connection: same scheme,
    /// host and port as an allowed URL, and a path under its path. No userinfo, no
    /// fragment (an open redirect is how OAuth codes and phishing pages travel).
    pub fn return_url_allowed(&self, candidate: &Url) -> bool {
        if !candidate.username().is_empty()
            || candidate.password().is_some()
            || candidate.fragment().is_some()
        {
            return false;
        }
        self.return_urls.iter().any(|allowed| {
            allowed.scheme() == candidate.scheme()
                && allowed.host_str() == candidate.host_str()
                && allowed.port_or_known_default() == candidate.port_or_known_default()
                && path_under(allowed.path(), candidate.path())
        })
    }
}

fn path_under(allowed: &str, candidate: &str) -> bool {
    if allowed == "/" || allowed == candidate {
        return true;
    }
    let prefix = allowed.trim_end_matches('/');
    candidate
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Client secrets from Secrets Manager, fetched on first use and kept for the warm
/// container (re-read after a while, so a rotated secret is picked up).
#[derive(Clone, Debug)]
pub struct ClientSecrets {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    cache: Arc<tokio::sync::Mutex<Option<(Instant, SecretMap)>>>,
}

type SecretMap = Arc<HashMap<String, SecretString>>;

const CLIENT_SECRETS_TTL: Duration = Duration::from_secs(15 * 60);

impl ClientSecrets {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
            cache: Arc::default(),
        }
    }

    pub async fn get(&self, provider: &str) -> Result<SecretString, OauthError> {
        let mut cache = self.cache.lock().await;
        let fresh = cache
            .as_ref()
            .filter(|(at, _)| at.elapsed() < CLIENT_SECRETS_TTL)
            .map(|(_, map)| map.clone());
        let map = match fresh {
            Some(map) => map,
            None => {
                let out = self
                    .client
                    .get_secret_value()
                    .secret_id(&self.secret_id)
                    .send()
                    .await
                    .map_err(|e| {
                        OauthError::Config(format!(
                            "client secrets: {}",
                            crate::kernel::aws::error_text(&e)
                        ))
                    })?;
                let text = out.secret_string.unwrap_or_default();
                let parsed: HashMap<String, String> =
                    serde_json::from_str(&text).map_err(|_| {
                        // The value is secret: say what is wrong, never what it is.
                        OauthError::Config(
                            "client secrets secret is not a JSON object of provider → secret"
                                .into(),
                        )
                    })?;
                let map: SecretMap = Arc::new(
                    parsed
                        .into_iter()
                        .map(|(k, v)| (k, SecretString::from(v)))
                        .collect(),
                );
                *cache = Some((Instant::now(), map.clone()));
                map
            }
        };
        map.get(provider)
            .cloned()
            .ok_or_else(|| OauthError::Config(format!("no client secret for provider {provider}")))
    }
}

/// Fields beyond RFC 6749 that providers put in the token response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderTokenFields {
    #[serde(
        rename = "locationId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub location_id: Option<String>,
    #[serde(rename = "companyId", default, skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    #[serde(rename = "userType", default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl ExtraTokenFields for ProviderTokenFields {}

type ProviderTokenResponse = StandardTokenResponse<ProviderTokenFields, BasicTokenType>;

type ProviderClient = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Tokens a provider issued, with what it said about them.
pub struct IssuedTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
    pub scopes: Option<Vec<String>>,
    pub account: ProviderAccount,
}

/// A transport failure, described without the request (which carries secrets).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(String);

async fn send(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, TransportError> {
    let request = reqwest::Request::try_from(request)
        .map_err(|e| TransportError(format!("request could not be built: {e}")))?;
    let url = request.url().clone();
    let response = http
        .execute(request)
        .await
        .map_err(|e| TransportError(format!("{}: {}", redact_url(&url), e.without_url())))?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| TransportError(format!("{}: {}", redact_url(&url), e.without_url())))?;
    builder
        .body(body.to_vec())
        .map_err(|e| TransportError(e.to_string()))
}

/// The HTTP client for `oauth2`, as a closure whose futures own their client: a
/// future borrowing it would not be `Send` for every lifetime, which the Lambda
/// runtime requires of the handler.
fn owned_client(
    http: &reqwest::Client,
) -> impl Fn(
    oauth2::HttpRequest,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, TransportError>> + Send>,
> {
    let http = http.clone();
    move |request| {
        let http = http.clone();
        Box::pin(async move { send(&http, request).await })
    }
}

/// Scheme, host, port and path only: query strings may carry codes or tokens.
fn redact_url(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

fn map_token_error(
    provider: &str,
    err: RequestTokenError<TransportError, BasicErrorResponse>,
) -> OauthError {
    match err {
        RequestTokenError::ServerResponse(response)
            if *response.error() == BasicErrorResponseType::InvalidGrant =>
        {
            OauthError::InvalidGrant(provider.to_owned())
        }
        RequestTokenError::ServerResponse(response) => OauthError::Provider {
            provider: provider.to_owned(),
            reason: format!("token endpoint refused: {}", response.error()),
        },
        RequestTokenError::Request(err) => OauthError::Provider {
            provider: provider.to_owned(),
            reason: format!("token endpoint unreachable: {err}"),
        },
        // The body may hold tokens: report only that it was malformed.
        RequestTokenError::Parse(err, _body) => OauthError::Provider {
            provider: provider.to_owned(),
            reason: format!("token response malformed at {}", err.path()),
        },
        RequestTokenError::Other(reason) => OauthError::Provider {
            provider: provider.to_owned(),
            reason,
        },
    }
}

impl Provider {
    fn client(
        &self,
        secret: &SecretString,
        redirect_uri: Option<&Url>,
    ) -> Result<ProviderClient, OauthError> {
        let config =
            |e: url::ParseError| OauthError::Config(format!("provider {}: {e}", self.name));
        let mut client = oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()))
            .set_auth_uri(AuthUrl::from_url(self.authorize_url.clone()))
            .set_token_uri(TokenUrl::from_url(self.token_url.clone()))
            // HighLevel reads the credentials from the form body; Google accepts both.
            .set_auth_type(match self.kind {
                ProviderKind::Generic => AuthType::BasicAuth,
                _ => AuthType::RequestBody,
            });
        if let Some(uri) = redirect_uri {
            client = client.set_redirect_uri(RedirectUrl::new(uri.to_string()).map_err(config)?);
        }
        Ok(client)
    }

    /// The URL the browser is sent to: exact redirect URI, scopes, state, and the
    /// PKCE S256 challenge when the provider takes it.
    pub fn authorize_url(
        &self,
        redirect_uri: &Url,
        state: &str,
        pkce_verifier: Option<&SecretString>,
    ) -> Result<Url, OauthError> {
        // The authorize URL needs no client secret.
        let client = self.client(&SecretString::from("unused"), Some(redirect_uri))?;
        let state = oauth2::CsrfToken::new(state.to_owned());
        let mut request = client
            .authorize_url(|| state)
            .add_scopes(self.scopes.iter().cloned().map(oauth2::Scope::new));
        if let Some(verifier) = pkce_verifier {
            let verifier = PkceCodeVerifier::new(verifier.expose_secret().to_owned());
            request = request.set_pkce_challenge(
                oauth2::PkceCodeChallenge::from_code_verifier_sha256(&verifier),
            );
        }
        if self.kind == ProviderKind::Google {
            // A refresh token, so exports keep working without the user.
            request = request
                .add_extra_param("access_type", "offline")
                .add_extra_param("prompt", "consent");
        }
        Ok(request.url().0)
    }

    fn tokens(&self, response: ProviderTokenResponse) -> IssuedTokens {
        let extra = response.extra_fields();
        IssuedTokens {
            access_token: SecretString::from(response.access_token().secret().to_owned()),
            refresh_token: response
                .refresh_token()
                .map(|t| SecretString::from(t.secret().to_owned())),
            expires_in: response.expires_in(),
            scopes: response
                .scopes()
                .map(|scopes| scopes.iter().map(|s| s.to_string()).collect()),
            account: ProviderAccount {
                location_id: extra.location_id.clone(),
                company_id: extra.company_id.clone(),
                user_type: extra.user_type.clone(),
                subject: extra.user_id.clone(),
            },
        }
    }

    /// Exchanges an authorization code (confidential client, PKCE verifier, exact
    /// redirect URI). For HighLevel the response's account ids are read too.
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        secret: &SecretString,
        redirect_uri: &Url,
        code: &str,
        pkce_verifier: Option<&SecretString>,
    ) -> Result<IssuedTokens, OauthError> {
        let client = self.client(secret, Some(redirect_uri))?;
        let mut request = client.exchange_code(AuthorizationCode::new(code.to_owned()));
        if let Some(verifier) = pkce_verifier {
            request = request
                .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_owned()));
        }
        if let Some(user_type) = &self.user_type {
            request = request.add_extra_param("user_type", user_type.clone());
        }
        let http_client = owned_client(http);
        let response = request
            .request_async(&http_client)
            .await
            .map_err(|e| map_token_error(&self.name, e))?;
        Ok(self.tokens(response))
    }

    /// Uses a refresh token. Providers that rotate return a new refresh token, which
    /// must replace the old one (the old one is dead after this call).
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        secret: &SecretString,
        refresh_token: &SecretString,
    ) -> Result<IssuedTokens, OauthError> {
        let client = self.client(secret, None)?;
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let mut request = client.exchange_refresh_token(&token);
        if let Some(user_type) = &self.user_type {
            request = request.add_extra_param("user_type", user_type.clone());
        }
        let http_client = owned_client(http);
        let response = request
            .request_async(&http_client)
            .await
            .map_err(|e| map_token_error(&self.name, e))?;
        Ok(self.tokens(response))
    }

    /// Revokes a token at the provider (RFC 7009), when it has a revocation endpoint.
    /// Returns whether the provider confirmed.
    pub async fn revoke(
        &self,
        http: &reqwest::Client,
        secret: &SecretString,
        token: &SecretString,
        hint: &str,
    ) -> Result<bool, OauthError> {
        let Some(url) = &self.revocation_url else {
            return Ok(false);
        };
        let response = http
            .post(url.clone())
            .basic_auth(&self.client_id, Some(secret.expose_secret()))
            .form(&[("token", token.expose_secret()), ("token_type_hint", hint)])
            .send()
            .await
            .map_err(|e| OauthError::Provider {
                provider: self.name.clone(),
                reason: format!("revocation endpoint unreachable: {}", e.without_url()),
            })?;
        // RFC 7009: 200 also for a token that was already invalid.
        Ok(response.status().is_success())
    }

    /// The OpenID Connect `sub` from the userinfo endpoint, called with the fresh
    /// access token over TLS (OIDC Core 5.3).
    pub async fn userinfo_subject(
        &self,
        http: &reqwest::Client,
        access_token: &SecretString,
    ) -> Result<Option<String>, OauthError> {
        let Some(url) = &self.userinfo_url else {
            return Ok(None);
        };
        let provider_error = |reason: String| OauthError::Provider {
            provider: self.name.clone(),
            reason,
        };
        let response = http
            .get(url.clone())
            .bearer_auth(access_token.expose_secret())
            .send()
            .await
            .map_err(|e| provider_error(format!("userinfo unreachable: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(provider_error(format!(
                "userinfo answered {}",
                response.status()
            )));
        }
        #[derive(Deserialize)]
        struct UserInfo {
            sub: String,
        }
        let info: UserInfo = response
            .json()
            .await
            .map_err(|_| provider_error("userinfo response has no 'sub'".into()))?;
        if info.sub.is_empty() || info.sub.len() > 255 {
            return Err(provider_error("userinfo 'sub' is malformed".into()));
        }
        Ok(Some(info.sub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(return_urls: &str) -> OauthConfig {
        OauthConfig::from_lookup(|name| match name {
            vars::PROVIDERS => Some(
                r#"[{"name":"highlevel","kind":"highlevel","client_id":"c1"},
                    {"name":"google","kind":"google","client_id":"c2"},
                    {"name":"crm","kind":"generic","client_id":"c3",
                     "authorize_url":"https://crm.example/auth","token_url":"https://crm.example/token"}]"#
                    .into(),
            ),
            vars::CLIENT_SECRETS_ID => Some("arn:secret".into()),
            vars::REDIRECT_BASE => Some("https://api.example.com/prod/".into()),
            vars::RETURN_URLS => Some(return_urls.into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn internal_provider_urls_are_refused_unless_loopback_is_configured() {
        let providers = |token: &str| {
            format!(
                r#"[{{"name":"crm","kind":"generic","client_id":"c",
                     "authorize_url":"https://crm.example/auth","token_url":"{token}"}}]"#
            )
        };
        let load = |token: &str, loopback: bool| {
            let json = providers(token);
            OauthConfig::from_lookup(|name| match name {
                vars::PROVIDERS => Some(json.clone()),
                vars::CLIENT_SECRETS_ID => Some("arn:secret".into()),
                egress::ALLOW_LOOPBACK_VAR if loopback => Some("true".into()),
                _ => None,
            })
        };
        for bad in [
            "https://169.254.169.254/token",
            "https://[fd00::1]/token",
            "http://crm.example/token",
        ] {
            let err = load(bad, true).unwrap_err();
            assert!(
                matches!(
                    err,
                    ProviderConfigError::Invalid {
                        var: vars::PROVIDERS,
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        assert!(load("http://127.0.0.1:9000/token", false).is_err());
        assert!(load("http://127.0.0.1:9000/token", true).is_ok());
        assert!(load("https://crm.example/token", false).is_ok());
    }

    #[test]
    fn defaults_per_kind() {
        let config = config("https://app.example.com/settings");
        let hl = config.providers.get("highlevel").unwrap();
        assert_eq!(hl.token_url.as_str(), HIGHLEVEL_TOKEN);
        assert_eq!(hl.user_type.as_deref(), Some("Location"));
        assert!(hl.pkce && !hl.requires_iss);
        let google = config.providers.get("google").unwrap();
        assert_eq!(google.issuer.as_deref(), Some(GOOGLE_ISSUER));
        assert!(google.requires_iss && google.userinfo_url.is_some());
        assert_eq!(
            config.redirect_uri("crm").unwrap().as_str(),
            "https://api.example.com/prod/oauth/crm/callback"
        );
    }

    #[test]
    fn generic_needs_its_urls_and_names_are_checked() {
        for json in [
            r#"[{"name":"crm","kind":"generic","client_id":"c"}]"#,
            r#"[{"name":"Bad Name","kind":"highlevel","client_id":"c"}]"#,
            r#"[{"name":"a","kind":"highlevel","client_id":"c"},{"name":"a","kind":"google","client_id":"d"}]"#,
            r#"[{"name":"a","kind":"highlevel","client_id":"c","user_type":"Admin"}]"#,
        ] {
            assert!(Providers::from_json(json).is_err(), "{json}");
        }
    }

    #[test]
    fn return_urls_are_an_allow_list_not_a_prefix_match() {
        let config = config("https://app.example.com/settings, http://127.0.0.1:3000/");
        let ok = |u: &str| config.return_url_allowed(&Url::parse(u).unwrap());
        assert!(ok("https://app.example.com/settings"));
        assert!(ok("https://app.example.com/settings/connections?x=1"));
        assert!(ok("http://127.0.0.1:3000/anything"));
        assert!(!ok("https://app.example.com/settingsevil"));
        assert!(!ok("https://app.example.com.evil.com/settings"));
        assert!(!ok("http://app.example.com/settings"));
        assert!(!ok("https://user@app.example.com/settings"));
        assert!(!ok("https://app.example.com:8443/settings"));
        assert!(!ok("https://app.example.com/settings#frag"));
        assert!(!ok("http://127.0.0.1:3001/"));
    }
}

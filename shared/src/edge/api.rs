//! HTTP plumbing for the functions behind the API Gateway HTTP API (payload v2.0)
//! with a JWT authorizer: who is calling ([`caller`], [`Role`]), tenant isolation
//! ([`ensure_owned`]), request bodies ([`json_body`]), responses ([`json_response`]),
//! and errors as RFC 9457 problem details ([`Problem`]).
//!
//! The JWT itself is verified by API Gateway before the function runs; here the
//! verified claims are read from the request context. The tenant id comes only from
//! those claims, never from the request body or path.
//!
//! Problem details never carry internals, tokens or the values a caller sent (those
//! may be personal data and problem details end up in logs): they name the offending
//! field and the rule it broke.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kernel::http::{HttpAnswer, HttpError, LogLevel};
use crate::kernel::tenant::TenantId;

/// Base of every problem `type` URI: `https://custody.dev/problems/<slug>`.
pub const PROBLEM_TYPE_BASE: &str = "https://custody.dev/problems/";
/// Media type of problem responses (RFC 9457).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Claims that carry the tenant id, in order of preference (Cognito custom attribute
/// first, then a plain claim, read only under [`ClaimNames::PrefixedOrPlain`]).
const TENANT_CLAIMS: [&str; 2] = ["custom:tenant_id", "tenant_id"];
/// Claims that carry the role, in order of preference.
const ROLE_CLAIMS: [&str; 2] = ["custom:role", "role"];

/// Which claim names carry tenant and role. A plain `tenant_id` or `role` is often a
/// claim the user may edit (a profile field), so it is read only when the deployment
/// says its issuer guarantees otherwise (template parameter `OidcPlainClaims`,
/// README § Identity provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimNames {
    /// Only `custom:tenant_id` and `custom:role` (the default).
    Prefixed,
    /// The `custom:` claims, else `tenant_id` and `role`.
    PrefixedOrPlain,
}

impl ClaimNames {
    /// From `CUSTODY_OIDC_PLAIN_CLAIMS`: `enabled` turns the fallback on; unset or any
    /// other value keeps it off (fail closed).
    pub fn from_env() -> Self {
        Self::parse(
            std::env::var(crate::kernel::config::vars::OIDC_PLAIN_CLAIMS)
                .ok()
                .as_deref(),
        )
    }

    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("enabled") => Self::PrefixedOrPlain,
            _ => Self::Prefixed,
        }
    }

    fn count(self) -> usize {
        match self {
            Self::Prefixed => 1,
            Self::PrefixedOrPlain => 2,
        }
    }

    fn missing(self, what: &str) -> String {
        match self {
            Self::Prefixed => format!("missing JWT claim 'custom:{what}'"),
            Self::PrefixedOrPlain => {
                format!("missing JWT claim 'custom:{what}' (or '{what}')")
            }
        }
    }
}
/// Longest `sub` claim accepted.
const MAX_SUBJECT_LEN: usize = 255;

// ---------------------------------------------------------------------------------
// Roles and callers
// ---------------------------------------------------------------------------------

/// What a caller may do. Ordered: `Admin` ≥ `Operator` ≥ `Viewer`, so
/// `role >= Role::Operator` reads as "at least operator".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads metadata: logs, listings, request status. Never raw data.
    Viewer,
    /// Runs exports and imports; downloads raw data (import files, access bundles);
    /// verifies subjects.
    Operator,
    /// Manages connections, settings, privacy requests and deletes.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role (expected viewer, operator or admin)")]
pub struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;

    /// Case-insensitive `viewer`, `operator` or `admin`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Viewer, Self::Operator, Self::Admin]
            .into_iter()
            .find(|r| s.eq_ignore_ascii_case(r.as_str()))
            .ok_or(UnknownRole)
    }
}

/// The authenticated caller, from the JWT the API Gateway authorizer verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub role: Role,
    /// The JWT `sub` claim: who, within the tenant, is acting (for the audit log).
    pub subject: String,
}

impl Caller {
    /// 403 unless the caller's role is at least `min`.
    /// The caller as an audit-log actor: `user:<sub>`.
    pub fn actor(&self) -> String {
        format!("user:{}", self.subject)
    }

    pub fn require(&self, min: Role) -> Result<(), Problem> {
        if self.role >= min {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this action requires the {min} role"
            )))
        }
    }
}

/// Reads the caller from the JWT claims in the API Gateway v2 request context.
///
/// Missing authorizer or claims, or a missing or malformed tenant, role or `sub`
/// claim, is a 401 whose detail names the claim (never its value, never the token).
/// Claim names as the deployment configures them ([`ClaimNames::from_env`], read once).
pub fn caller(req: &Request) -> Result<Caller, Problem> {
    static NAMES: std::sync::OnceLock<ClaimNames> = std::sync::OnceLock::new();
    caller_with(req, *NAMES.get_or_init(ClaimNames::from_env))
}

/// [`caller`] with the claim names given.
pub fn caller_with(req: &Request, names: ClaimNames) -> Result<Caller, Problem> {
    let ctx = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx,
        _ => {
            return Err(Problem::unauthorized(
                "request did not come through the API Gateway HTTP API",
            ));
        }
    };
    let claims = ctx
        .authorizer
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .map(|jwt| &jwt.claims)
        .filter(|claims| !claims.is_empty())
        .ok_or_else(|| Problem::unauthorized("request carries no JWT authorizer claims"))?;

    let claim = |candidates: &[&'static str]| -> Option<(&'static str, &str)> {
        candidates[..names.count()]
            .iter()
            .find_map(|&name| claims.get(name).map(|v| (name, v.as_str())))
    };

    let (name, raw) =
        claim(&TENANT_CLAIMS).ok_or_else(|| Problem::unauthorized(names.missing("tenant_id")))?;
    let tenant = TenantId::parse(raw).map_err(|e| {
        Problem::unauthorized(format!("JWT claim '{name}' is not a valid tenant id: {e}"))
    })?;

    let (name, raw) =
        claim(&ROLE_CLAIMS).ok_or_else(|| Problem::unauthorized(names.missing("role")))?;
    let role = raw.parse::<Role>().map_err(|e| {
        Problem::unauthorized(format!("JWT claim '{name}' is not a valid role: {e}"))
    })?;

    let subject = claims
        .get("sub")
        .ok_or_else(|| Problem::unauthorized("missing JWT claim 'sub'"))?;
    if subject.is_empty()
        || subject.len() > MAX_SUBJECT_LEN
        || subject.chars().any(char::is_control)
    {
        return Err(Problem::unauthorized("JWT claim 'sub' is malformed"));
    }

    Ok(Caller {
        tenant,
        role,
        subject: subject.clone(),
    })
}

/// Succeeds when the resource's `owner` is the caller's tenant. Otherwise a 404, not a
/// 403: a 403 would confirm that the id exists in some other tenant.
pub fn ensure_owned(caller: &Caller, owner: &TenantId) -> Result<(), Problem> {
    if caller.tenant == *owner {
        Ok(())
    } else {
        Err(Problem::not_found())
    }
}

// ---------------------------------------------------------------------------------
// Problem details (RFC 9457)
// ---------------------------------------------------------------------------------

/// An RFC 9457 problem detail, the body of every error response.
///
/// `type` is `https://custody.dev/problems/<slug>`, stable per kind of problem so
/// clients can branch on it. `field` (an extension member) names the offending input
/// as a dotted path (`destination.url`, `rows[3].email`), `body` for the body as a
/// whole, or a path parameter's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    #[serde(with = "status_code_serde")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    /// Any problem; `slug` names its kind and becomes the `type` URI's last segment.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            type_uri: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title: title.into(),
            status,
            detail: detail.into(),
            field: None,
        }
    }

    /// The problem an error's [`HttpAnswer`] describes. Its cause, if it has one to
    /// log, is logged here, where the response is made.
    pub fn from_answer(answer: HttpAnswer<'_>) -> Self {
        if let Some(log) = &answer.log {
            match log.level {
                LogLevel::Warn => tracing::warn!(error = %log.cause, "{}", log.message),
                LogLevel::Error => tracing::error!(error = %log.cause, "{}", log.message),
            }
        }
        Self {
            type_uri: format!("{PROBLEM_TYPE_BASE}{}", answer.kind.slug),
            title: answer.kind.title.to_owned(),
            status: answer.status,
            detail: answer.detail.into_owned(),
            field: answer.field.map(Cow::into_owned),
        }
    }

    /// Names the offending input.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: the input at `field` is invalid.
    pub fn bad_request(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::from_answer(HttpAnswer::bad_request(field.into(), detail.into()))
    }

    /// 401: no usable credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::from_answer(HttpAnswer::unauthorized(detail.into()))
    }

    /// 403: authenticated, but the role does not allow this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::from_answer(HttpAnswer::forbidden(detail.into()))
    }

    /// 404. Also what another tenant's resources look like (see [`ensure_owned`]).
    pub fn not_found() -> Self {
        Self::from_answer(HttpAnswer::not_found())
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::from_answer(HttpAnswer::conflict(detail.into()))
    }

    /// 410: gone for good (data past its retention).
    pub fn gone(detail: impl Into<String>) -> Self {
        Self::from_answer(HttpAnswer::gone(detail.into()))
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::from_answer(HttpAnswer::payload_too_large(limit))
    }

    /// 415: the body is not JSON.
    pub fn unsupported_media_type() -> Self {
        Self::from_answer(HttpAnswer::unsupported_media_type())
    }

    /// 500 with a generic detail. Log the cause where it happens; never put it here.
    pub fn internal() -> Self {
        Self::from_answer(HttpAnswer::internal())
    }

    /// The problem as an HTTP response: `application/problem+json`, `no-store`, and
    /// `WWW-Authenticate: Bearer` on a 401 (RFC 6750).
    pub fn into_response(self) -> Response<Body> {
        let json = serde_json::to_string(&self).unwrap_or_else(|_| {
            // Unreachable in practice (strings and a number), but never panic here.
            r#"{"type":"https://custody.dev/problems/internal","title":"Internal server error","status":500}"#
                .to_owned()
        });
        let status = self.status;
        let mut resp = Response::new(Body::Text(json));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.title,
            self.detail
        )?;
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl From<Problem> for Response<Body> {
    fn from(problem: Problem) -> Self {
        problem.into_response()
    }
}

mod status_code_serde {
    use http::StatusCode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(status.as_u16())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StatusCode, D::Error> {
        let code = u16::deserialize(d)?;
        StatusCode::from_u16(code).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------

/// The API Gateway HTTP API (payload 2.0) response for `response`: what a function
/// that serves other events besides HTTP returns to the Lambda runtime (one place, so
/// every such function answers the gateway alike).
pub fn gateway_response(
    response: Response<Body>,
) -> lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse {
    let (parts, body) = response.into_parts();
    let mut out = lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    out.is_base64_encoded = matches!(body, Body::Binary(_));
    out.body = match body {
        Body::Empty => None,
        other => Some(other),
    };
    out
}

/// Parses the request body as JSON into `T`.
///
/// In order: 413 if the body is larger than `max_bytes` (before anything is parsed);
/// 415 if a content-type is given and is not JSON (`application/json` or
/// `application/*+json`, parameters allowed); 400 with field `body` if the body is
/// empty; 400 with line and column if it is not well-formed JSON; 400 naming the field
/// path (`destination.url`) if it does not have the expected shape.
pub fn json_body<T: DeserializeOwned>(req: &Request, max_bytes: usize) -> Result<T, Problem> {
    // `Body::Binary` is what API Gateway's base64-encoded bodies become; `Body::Empty`
    // is `&[]`.
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > max_bytes {
        return Err(Problem::payload_too_large(max_bytes));
    }
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ok = ct.to_str().map(is_json_media_type).unwrap_or(false);
        if !ok {
            return Err(Problem::unsupported_media_type());
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::bad_request(
            "body",
            "request body is empty; expected a JSON document",
        ));
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        json_problem(err.inner(), &path)
    })?;
    // Reject trailing content after the document ("{} {}").
    de.end().map_err(|err| json_problem(&err, "."))?;
    Ok(value)
}

/// A JSON response with `status`, `content-type: application/json` and
/// `cache-control: no-store` (responses carry tenant data). A value that fails to
/// serialise is logged and becomes a 500.
pub fn json_response<T: Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Result<Response<Body>, Problem> {
    let json = serde_json::to_string(value).map_err(|err| {
        tracing::error!(error = %err, "response body could not be serialised");
        Problem::internal()
    })?;
    let mut resp = Response::new(Body::Text(json));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The path parameter `name` (from the route, e.g. `/connections/{connection_id}`);
/// 400 naming it when it is missing or empty.
pub fn path_param(req: &Request, name: &str) -> Result<String, Problem> {
    req.path_parameters_ref()
        .and_then(|params| params.first(name))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Problem::bad_request(name, format!("missing path parameter '{name}'")))
}

/// The API Gateway v2 route key of the request (`"GET /connections"`,
/// `"DELETE /connections/{provider}"`), which HTTP functions dispatch on.
pub fn route_key(req: &Request) -> Option<String> {
    match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => ctx.route_key.clone(),
        _ => None,
    }
}

/// `application/json` or `application/<anything>+json`, with any parameters.
fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((ty, subtype)) = essence.split_once('/') else {
        return false;
    };
    ty.trim().eq_ignore_ascii_case("application") && {
        let subtype = subtype.trim().to_ascii_lowercase();
        subtype == "json" || (subtype.len() > "+json".len() && subtype.ends_with("+json"))
    }
}

/// Turns a serde_json error at `path` (serde_path_to_error's dotted form, `.` for the
/// root) into a 400.
fn json_problem(err: &serde_json::Error, path: &str) -> Problem {
    use serde_json::error::Category;

    let full = err.to_string();
    // serde_json appends the position; it is reported separately.
    let position = format!(" at line {} column {}", err.line(), err.column());
    let message = full.strip_suffix(&position).unwrap_or(&full);

    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => Problem::bad_request(
            "body",
            format!(
                "malformed JSON at line {}, column {}: {message}",
                err.line(),
                err.column()
            ),
        ),
        Category::Data => {
            let mut field = if path == "." || path.is_empty() {
                String::new()
            } else {
                path.to_owned()
            };
            // "missing field `url`" is reported at the enclosing object; point at
            // the field itself.
            if let Some(missing) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'))
            {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(missing);
            }
            if field.is_empty() {
                field.push_str("body");
            }
            let detail = redact_serde_message(message);
            let detail = if field == "body" {
                format!("invalid request body: {detail}")
            } else {
                format!("invalid value at '{field}': {detail}")
            };
            Problem::bad_request(field, detail)
        }
    }
}

/// Removes the caller's values from serde's messages (`invalid type: string "jane@…",
/// expected a URL` → `invalid type: string, expected a URL`) so a problem detail never
/// carries personal data. Field names and expectations stay.
fn redact_serde_message(message: &str) -> Cow<'_, str> {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (kind, after) = split_unexpected(rest);
            return Cow::Owned(format!("{prefix}{kind}{after}"));
        }
    }
    for prefix in ["unknown variant ", "unknown field "] {
        if let Some(after) = message.strip_prefix(prefix).and_then(skip_backticked) {
            return Cow::Owned(format!("{}{after}", prefix.trim_end()));
        }
    }
    Cow::Borrowed(message)
}

/// Splits serde's `Unexpected` rendering from what follows it:
/// `string "x", expected …` → (`string`, `, expected …`);
/// ``integer `5`, expected …`` → (`integer`, `, expected …`);
/// `map, expected …` → (`map, expected …`, empty).
fn split_unexpected(rest: &str) -> (&str, &str) {
    if let Some(quoted) = rest.strip_prefix("string \"") {
        // Rust's Debug form of a string: ends at the first unescaped quote.
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return ("string", &quoted[i + 1..]),
                _ => {}
            }
        }
        return ("string", "");
    }
    for kind in ["integer", "floating point", "boolean", "character"] {
        if let Some(after) = rest
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(skip_backticked)
        {
            return (kind, after);
        }
    }
    (rest, "")
}

/// Skips a leading backticked literal: `` `x`, tail `` → `, tail`.
fn skip_backticked(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('`')?;
    let end = inner.find('`')?;
    Some(&inner[end + 1..])
}

// ---------------------------------------------------------------------------------
// Errors of the other modules: each states its answer beside its definition
// (`kernel::http::HttpError`), so this module needs none of them.

impl<E: HttpError> From<E> for Problem {
    fn from(err: E) -> Self {
        Problem::from_answer(err.answer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const JWT_EVENT: &str = include_str!("../../tests/fixtures/apigw/http_api_jwt.json");
    const NO_AUTH_EVENT: &str =
        include_str!("../../tests/fixtures/apigw/http_api_no_authorizer.json");
    const FAKE_TOKEN_PART: &str = "FAKE-SIGNATURE-NOT-A-REAL-TOKEN";

    fn event() -> Value {
        serde_json::from_str(JWT_EVENT).unwrap()
    }

    fn request(event: &Value) -> Request {
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    fn with_claims(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Request {
        let mut ev = event();
        let claims = ev["requestContext"]["authorizer"]["jwt"]["claims"]
            .as_object_mut()
            .unwrap();
        f(claims);
        request(&ev)
    }

    fn with_body(body: &str, content_type: Option<&str>) -> Request {
        let mut ev = event();
        ev["body"] = json!(body);
        let headers = ev["headers"].as_object_mut().unwrap();
        headers.remove("content-length");
        match content_type {
            Some(ct) => headers.insert("content-type".into(), json!(ct)),
            None => headers.remove("content-type"),
        };
        request(&ev)
    }

    fn assert_no_secrets(p: &Problem) {
        let text = format!("{p} {p:?}");
        assert!(!text.contains(FAKE_TOKEN_PART), "{text}");
        assert!(!text.contains("eyJ"), "{text}");
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        destination: Destination,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Destination {
        url: String,
        #[serde(default)]
        retries: Option<u8>,
    }

    #[test]
    fn valid_claims_give_a_caller() {
        let c = caller(&request(&event())).unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert_eq!(c.role, Role::Admin);
        assert_eq!(c.subject, "7d8e9f00-1111-4222-8333-944455556666");
    }

    fn plain_claims_only() -> Request {
        with_claims(|c| {
            c.remove("custom:tenant_id");
            c.remove("custom:role");
            c.insert("tenant_id".into(), json!("globex_2"));
            c.insert("role".into(), json!("OPERATOR"));
        })
    }

    #[test]
    fn plain_claim_names_are_refused_unless_configured() {
        // A plain `role` claim is often a profile field its user may edit: by default
        // it grants nothing.
        let p = caller_with(&plain_claims_only(), ClaimNames::Prefixed).unwrap_err();
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert_eq!(p.detail, "missing JWT claim 'custom:tenant_id'");
        let only_role = with_claims(|c| {
            c.remove("custom:role");
            c.insert("role".into(), json!("admin"));
        });
        let p = caller_with(&only_role, ClaimNames::Prefixed).unwrap_err();
        assert_eq!(p.detail, "missing JWT claim 'custom:role'");
        // The process-wide default is the same (no CUSTODY_OIDC_PLAIN_CLAIMS in tests).
        assert!(caller(&plain_claims_only()).is_err());
    }

    #[test]
    fn plain_claim_names_and_any_role_case_are_accepted_when_configured() {
        let c = caller_with(&plain_claims_only(), ClaimNames::PrefixedOrPlain).unwrap();
        assert_eq!(c.tenant.as_str(), "globex_2");
        assert_eq!(c.role, Role::Operator);
    }

    #[test]
    fn only_the_word_enabled_turns_plain_claims_on() {
        assert_eq!(
            ClaimNames::parse(Some("enabled")),
            ClaimNames::PrefixedOrPlain
        );
        for off in [
            None,
            Some("disabled"),
            Some(""),
            Some("true"),
            Some("ENABLED"),
        ] {
            assert_eq!(ClaimNames::parse(off), ClaimNames::Prefixed, "{off:?}");
        }
    }

    #[test]
    fn custom_claims_take_precedence() {
        let req = with_claims(|c| {
            c.insert("tenant_id".into(), json!("other"));
            c.insert("role".into(), json!("viewer"));
        });
        let c = caller_with(&req, ClaimNames::PrefixedOrPlain).unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert_eq!(c.role, Role::Admin);
    }

    #[test]
    fn missing_authorizer_is_401() {
        let req = lambda_http::request::from_str(NO_AUTH_EVENT).unwrap();
        let p = caller(&req).unwrap_err();
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.detail.contains("JWT"), "{}", p.detail);

        // An authorizer without a jwt section (e.g. IAM) is no better.
        let mut ev = event();
        ev["requestContext"]["authorizer"] = json!({ "iam": null });
        let p = caller(&request(&ev)).unwrap_err();
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert_no_secrets(&p);
    }

    #[test]
    fn a_request_built_without_context_is_401() {
        let req = http::Request::builder().body(Body::Empty).unwrap();
        assert_eq!(caller(&req).unwrap_err().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn bad_tenant_claim_is_401_naming_the_claim() {
        let req = with_claims(|c| {
            c.insert("custom:tenant_id".into(), json!("acme#T#globex"));
        });
        let p = caller(&req).unwrap_err();
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.detail.contains("custom:tenant_id"), "{}", p.detail);
        assert!(
            !p.detail.contains("globex"),
            "echoed the claim: {}",
            p.detail
        );
        assert_no_secrets(&p);
    }

    #[test]
    fn missing_tenant_role_or_sub_is_401_naming_the_claim() {
        for (claim, want) in [
            ("custom:tenant_id", "tenant_id"),
            ("custom:role", "role"),
            ("sub", "'sub'"),
        ] {
            let req = with_claims(|c| {
                c.remove(claim);
            });
            let p = caller(&req).unwrap_err();
            assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{claim}");
            assert!(p.detail.contains(want), "{claim}: {}", p.detail);
            assert_no_secrets(&p);
        }
        let req = with_claims(|c| {
            c.insert("sub".into(), json!(""));
        });
        assert_eq!(caller(&req).unwrap_err().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn unknown_role_is_401() {
        let req = with_claims(|c| {
            c.insert("custom:role".into(), json!("superuser"));
        });
        let p = caller(&req).unwrap_err();
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.detail.contains("custom:role"), "{}", p.detail);
        assert!(!p.detail.contains("superuser"));
    }

    #[test]
    fn roles_are_ordered_and_parse_case_insensitively() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!("Admin".parse::<Role>(), Ok(Role::Admin));
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert_eq!(" admin".parse::<Role>(), Err(UnknownRole));
        assert_eq!("".parse::<Role>(), Err(UnknownRole));
        assert_eq!(
            serde_json::to_string(&Role::Operator).unwrap(),
            "\"operator\""
        );
    }

    #[test]
    fn viewer_requiring_admin_is_403() {
        let req = with_claims(|c| {
            c.insert("custom:role".into(), json!("viewer"));
        });
        let c = caller(&req).unwrap();
        let p = c.require(Role::Admin).unwrap_err();
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert!(p.detail.contains("admin"), "{}", p.detail);
        assert!(c.require(Role::Viewer).is_ok());

        let admin = caller(&request(&event())).unwrap();
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert!(admin.require(r).is_ok());
        }
    }

    #[test]
    fn other_tenant_is_404() {
        let c = caller(&request(&event())).unwrap();
        let p = ensure_owned(&c, &TenantId::parse("globex").unwrap()).unwrap_err();
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        assert_eq!(p, Problem::not_found());
        assert!(ensure_owned(&c, &TenantId::parse("acme").unwrap()).is_ok());
    }

    #[test]
    fn valid_body_parses() {
        let s: Settings = json_body(&request(&event()), 1024).unwrap();
        assert_eq!(s.destination.url, "https://dav.example.com/exports");

        for ct in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            let req = with_body(r#"{"destination":{"url":"u"}}"#, Some(ct));
            assert!(json_body::<Settings>(&req, 1024).is_ok(), "{ct}");
        }
        // No content-type at all is accepted (the body is still parsed strictly).
        let req = with_body(r#"{"destination":{"url":"u"}}"#, None);
        assert!(json_body::<Settings>(&req, 1024).is_ok());
    }

    #[test]
    fn base64_body_arrives_as_binary_and_parses() {
        use base64::Engine;
        let mut ev = event();
        ev["isBase64Encoded"] = json!(true);
        ev["body"] = json!(
            base64::engine::general_purpose::STANDARD
                .encode(r#"{"destination":{"url":"https://b.example"}}"#)
        );
        let req = request(&ev);
        assert!(matches!(req.body(), Body::Binary(_)));
        let s: Settings = json_body(&req, 1024).unwrap();
        assert_eq!(s.destination.url, "https://b.example");
    }

    #[test]
    fn oversized_body_is_413_before_parsing() {
        // Malformed on purpose: the size check must come first.
        let body = format!("{{\"destination\": \"{}", "x".repeat(100));
        let p = json_body::<Settings>(&with_body(&body, Some("application/json")), 64).unwrap_err();
        assert_eq!(p.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(p.detail.contains("64"), "{}", p.detail);

        // Exactly at the limit is fine.
        let body = r#"{"destination":{"url":"u"}}"#;
        assert!(json_body::<Settings>(&with_body(body, None), body.len()).is_ok());
    }

    #[test]
    fn wrong_content_type_is_415() {
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "application/+json",
        ] {
            let req = with_body(r#"{"destination":{"url":"u"}}"#, Some(ct));
            let p = json_body::<Settings>(&req, 1024).unwrap_err();
            assert_eq!(p.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        }
    }

    #[test]
    fn empty_body_is_400_on_body() {
        let mut ev = event();
        ev.as_object_mut().unwrap().remove("body");
        let req = request(&ev);
        assert!(matches!(req.body(), Body::Empty));
        let p = json_body::<Settings>(&req, 1024).unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert_eq!(p.field.as_deref(), Some("body"));

        let p = json_body::<Settings>(&with_body("  \n", None), 1024).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("body"));
    }

    #[test]
    fn malformed_json_is_400_with_position() {
        let req = with_body("{\n  \"destination\": {\"url\": \"u\",}\n}", None);
        let p = json_body::<Settings>(&req, 1024).unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert_eq!(p.field.as_deref(), Some("body"));
        assert!(p.detail.contains("line 2, column"), "{}", p.detail);

        let p = json_body::<Settings>(&with_body(r#"{"destination""#, None), 1024).unwrap_err();
        assert!(p.detail.contains("line 1, column 14"), "{}", p.detail);

        let p = json_body::<Settings>(&with_body(r#"{"destination":{"url":"u"}} []"#, None), 1024)
            .unwrap_err();
        assert!(p.detail.contains("trailing"), "{}", p.detail);
    }

    #[test]
    fn wrong_type_names_the_field_path_without_echoing_the_value() {
        let req = with_body(
            r#"{"destination":{"url":"ok","retries":"jane@example.com"}}"#,
            None,
        );
        let p = json_body::<Settings>(&req, 1024).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("destination.retries"));
        assert!(!p.detail.contains("jane"), "{}", p.detail);

        let req = with_body(r#"{"destination":{"url":42}}"#, None);
        let p = json_body::<Settings>(&req, 1024).unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert_eq!(p.field.as_deref(), Some("destination.url"));
        assert!(p.detail.contains("expected a string"), "{}", p.detail);
        assert!(!p.detail.contains("42"), "{}", p.detail);

        let req = with_body(r#"{"destination":{}}"#, None);
        let p = json_body::<Settings>(&req, 1024).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("destination.url"));
        assert!(p.detail.contains("missing field"), "{}", p.detail);

        // A wrong type for the whole document is reported on `body`.
        let req = with_body(r#""just a string""#, None);
        let p = json_body::<Settings>(&req, 1024).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("body"));
        assert!(!p.detail.contains("just a string"), "{}", p.detail);
    }

    #[test]
    fn serde_messages_are_redacted() {
        let cases = [
            (
                r#"invalid type: string "jane@example.com", expected u8"#,
                "invalid type: string, expected u8",
            ),
            (
                r#"invalid value: string "a\"b, expected x", expected a URL"#,
                "invalid value: string, expected a URL",
            ),
            (
                "invalid type: integer `42`, expected a string",
                "invalid type: integer, expected a string",
            ),
            (
                "invalid type: floating point `1.5`, expected u8",
                "invalid type: floating point, expected u8",
            ),
            (
                "invalid type: map, expected a string",
                "invalid type: map, expected a string",
            ),
            (
                "unknown variant `jane`, expected one of `email`, `phone`",
                "unknown variant, expected one of `email`, `phone`",
            ),
            (
                "unknown field `secret`, expected `url`",
                "unknown field, expected `url`",
            ),
            ("missing field `url`", "missing field `url`"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_serde_message(input), want, "{input}");
        }
    }

    #[test]
    fn problem_response_has_type_headers_and_body() {
        let resp = Problem::bad_request("destination.url", "must be https").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        let body: Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(
            body,
            json!({
                "type": "https://custody.dev/problems/invalid-request",
                "title": "Invalid request",
                "status": 400,
                "detail": "must be https",
                "field": "destination.url",
            })
        );

        // `field` is omitted when absent; 401 carries a Bearer challenge.
        let resp: Response<Body> = Problem::unauthorized("missing JWT claim 'sub'").into();
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        let body: Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert!(body.get("field").is_none());
        let back: Problem = serde_json::from_value(body).unwrap();
        assert_eq!(back, Problem::unauthorized("missing JWT claim 'sub'"));
    }

    #[test]
    fn every_constructor_has_its_status_and_a_stable_type() {
        let cases = [
            (Problem::bad_request("x", "d"), 400, "invalid-request"),
            (Problem::unauthorized("d"), 401, "unauthorized"),
            (Problem::forbidden("d"), 403, "forbidden"),
            (Problem::not_found(), 404, "not-found"),
            (Problem::conflict("d"), 409, "conflict"),
            (Problem::payload_too_large(10), 413, "payload-too-large"),
            (
                Problem::unsupported_media_type(),
                415,
                "unsupported-media-type",
            ),
            (Problem::internal(), 500, "internal"),
        ];
        for (p, status, slug) in cases {
            assert_eq!(p.status.as_u16(), status);
            assert_eq!(p.type_uri, format!("https://custody.dev/problems/{slug}"));
            assert!(!p.title.is_empty() && !p.detail.is_empty());
        }
        let p = Problem::conflict("already running");
        assert_eq!(p.to_string(), "409 Conflict: already running");
        let e: Box<dyn std::error::Error> = Box::new(Problem::bad_request("a.b", "bad"));
        assert_eq!(e.to_string(), "400 Invalid request: bad (field a.b)");
    }

    #[test]
    fn json_response_sets_status_and_headers() {
        let resp = json_response(StatusCode::CREATED, &json!({"id": "x"})).unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        let body: Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(body, json!({"id": "x"}));

        // A map with non-string keys cannot be JSON: a generic 500, no internals.
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let p = json_response(StatusCode::OK, &bad).unwrap_err();
        assert_eq!(p, Problem::internal());
    }

    #[test]
    fn path_param_present_and_missing() {
        let req = request(&event());
        assert_eq!(path_param(&req, "connection_id").unwrap(), "conn_01HZX3");
        let p = path_param(&req, "import_id").unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert_eq!(p.field.as_deref(), Some("import_id"));
        assert!(p.detail.contains("import_id"));

        let req = lambda_http::request::from_str(NO_AUTH_EVENT).unwrap();
        assert!(path_param(&req, "connection_id").is_err());
    }
}

#[cfg(test)]
mod error_mapping_tests {
    use super::*;
    use crate::kernel::store::StoreError;

    #[test]
    fn caller_mistakes_are_4xx_and_our_faults_are_bare_500s() {
        assert_eq!(
            Problem::from(StoreError::InvalidCursor).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            Problem::from(StoreError::AlreadyExists).status,
            StatusCode::CONFLICT
        );
        let internal = Problem::from(StoreError::Dynamo(
            "ResourceNotFoundException: table custody-x".into(),
        ));
        assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !internal.detail.contains("custody-x"),
            "no internals in the response"
        );
        let rejected = Problem::from(crate::kernel::seal::SealError::Rejected);
        assert_eq!(rejected.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn an_errors_answer_becomes_the_problem_unchanged() {
        use crate::kernel::idempotency::IdempotencyError;

        let problem = Problem::from(IdempotencyError::PayloadMismatch);
        assert_eq!(
            serde_json::to_value(&problem).unwrap(),
            serde_json::json!({
                "type": "https://custody.dev/problems/idempotency-key-reused",
                "title": "Idempotency key reused",
                "status": 422,
                "detail": "the same idempotency key was used with a different payload",
                "field": "idempotency-key",
            })
        );
        // The generic constructors are the kernel's answers too.
        assert_eq!(
            Problem::from(StoreError::Encode("x".into())),
            Problem::internal()
        );
    }
}

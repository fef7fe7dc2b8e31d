//! HTTP in both directions, as far as the kernel knows it: the outbound client, and
//! how an error answers a caller ([`HttpError`]).
//!
//! The outbound HTTP client for CRMs, OAuth providers, WebDAV and webhooks is built
//! once per cold start. It never follows redirects: a provider or customer
//! endpoint that redirects could otherwise point custody at an internal address
//! (SSRF), or carry credentials to another host. Every name it resolves and every
//! peer it connects to passes the egress guard (`kernel::egress`). Timeouts bound every call so a slow
//! peer cannot eat the Lambda's deadline.

use std::borrow::Cow;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use reqwest::dns::Resolve;

use crate::kernel::egress::{EgressPolicy, GuardedResolver, PeerCheckLayer, SystemResolver};

pub const USER_AGENT: &str = concat!("custody/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
#[error("HTTP client could not be built: {0}")]
pub struct HttpClientError(String);

/// The default total time of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The shared client: rustls (aws-lc-rs, the AWS SDK's TLS stack), no redirects, no
/// proxies, 5 s connect timeout, [`DEFAULT_TIMEOUT`] per request, and the egress
/// guard of `policy` on every name it resolves and every peer it connects to.
pub fn client(policy: EgressPolicy) -> Result<reqwest::Client, HttpClientError> {
    client_with_timeout(policy, DEFAULT_TIMEOUT)
}

pub fn client_with_timeout(
    policy: EgressPolicy,
    timeout: Duration,
) -> Result<reqwest::Client, HttpClientError> {
    client_with_resolver(policy, timeout, Arc::new(SystemResolver))
}

/// [`client_with_timeout`] over another resolver (tests make names resolve to
/// internal addresses with it). The guard wraps whatever resolver is given.
pub fn client_with_resolver(
    policy: EgressPolicy,
    timeout: Duration,
    resolver: Arc<dyn Resolve>,
) -> Result<reqwest::Client, HttpClientError> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would make every peer the proxy's address and
        // blind the peer check.
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver::new(resolver, policy)))
        .connector_layer(PeerCheckLayer::new(policy))
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .map_err(|e| HttpClientError(e.to_string()))
}

// ---------------------------------------------------------------------------------
// Errors as HTTP answers
// ---------------------------------------------------------------------------------
//
// Each module's error states its answer beside its definition (`impl HttpError`), so
// the edge (`api::Problem`) turns any of them into a response without knowing the
// modules. Caller mistakes are 4xx naming the problem; our own faults are a bare 500
// whose cause is logged where the response is made (causes never contain a secret:
// those types redact themselves).

/// An error that knows how it answers over HTTP.
///
/// `api::Problem` converts every `HttpError` (`?` works in handlers), logging the
/// cause when the answer says so.
pub trait HttpError: Error {
    /// Status, problem kind, detail and field of the answer to this error.
    fn answer(&self) -> HttpAnswer<'_>;

    /// The answer's status alone.
    fn status(&self) -> StatusCode {
        self.answer().status
    }
}

/// The kind of a problem: the last segment of its `type` URI
/// (`https://custody.dev/problems/<slug>`) and its title. Stable per kind, so
/// clients can branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemKind {
    pub slug: &'static str,
    pub title: &'static str,
}

impl ProblemKind {
    pub const fn new(slug: &'static str, title: &'static str) -> Self {
        Self { slug, title }
    }

    pub const INVALID_REQUEST: Self = Self::new("invalid-request", "Invalid request");
    pub const UNAUTHORIZED: Self = Self::new("unauthorized", "Unauthorized");
    pub const FORBIDDEN: Self = Self::new("forbidden", "Forbidden");
    pub const NOT_FOUND: Self = Self::new("not-found", "Not found");
    pub const CONFLICT: Self = Self::new("conflict", "Conflict");
    pub const GONE: Self = Self::new("gone", "Gone");
    pub const PAYLOAD_TOO_LARGE: Self = Self::new("payload-too-large", "Payload too large");
    pub const UNSUPPORTED_MEDIA_TYPE: Self =
        Self::new("unsupported-media-type", "Unsupported media type");
    pub const INTERNAL: Self = Self::new("internal", "Internal server error");
}

/// How loud the cause of an answer is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Someone else's fault (a provider, a customer's receiver).
    Warn,
    /// Our own fault.
    Error,
}

/// The cause to log when the answer is made: never shown to the caller.
#[derive(Debug, Clone, Copy)]
pub struct LoggedCause<'a> {
    pub level: LogLevel,
    /// The log line's message (`"store error"`); the cause goes in its `error` field.
    pub message: &'static str,
    pub cause: &'a dyn Error,
}

/// What an error answers: everything an RFC 9457 problem detail needs, plus the
/// cause to log. The detail is only ever text that is safe to show: the rule that was
/// broken, never a caller's value, a secret or an internal (our own faults say
/// [`HttpAnswer::internal`]'s generic text).
#[derive(Debug, Clone)]
pub struct HttpAnswer<'a> {
    pub status: StatusCode,
    pub kind: ProblemKind,
    pub detail: Cow<'a, str>,
    /// The offending input as a dotted path (`destination.url`), `body`, or a path
    /// parameter's name.
    pub field: Option<Cow<'a, str>>,
    pub log: Option<LoggedCause<'a>>,
}

impl<'a> HttpAnswer<'a> {
    /// Any answer.
    pub fn new(status: StatusCode, kind: ProblemKind, detail: impl Into<Cow<'a, str>>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            field: None,
            log: None,
        }
    }

    /// Names the offending input.
    pub fn with_field(mut self, field: impl Into<Cow<'a, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Logs `cause` at `level` with `message` when the answer is made.
    pub fn logged(mut self, level: LogLevel, message: &'static str, cause: &'a dyn Error) -> Self {
        self.log = Some(LoggedCause {
            level,
            message,
            cause,
        });
        self
    }

    /// 400: the input at `field` is invalid.
    pub fn bad_request(field: impl Into<Cow<'a, str>>, detail: impl Into<Cow<'a, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ProblemKind::INVALID_REQUEST,
            detail,
        )
        .with_field(field)
    }

    /// 401: no usable credentials.
    pub fn unauthorized(detail: impl Into<Cow<'a, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ProblemKind::UNAUTHORIZED, detail)
    }

    /// 403: authenticated, but the role does not allow this.
    pub fn forbidden(detail: impl Into<Cow<'a, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ProblemKind::FORBIDDEN, detail)
    }

    /// 404, with a detail that says nothing more.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ProblemKind::NOT_FOUND, "not found")
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(detail: impl Into<Cow<'a, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, ProblemKind::CONFLICT, detail)
    }

    /// 410: the resource existed and is gone for good (past its retention).
    pub fn gone(detail: impl Into<Cow<'a, str>>) -> Self {
        Self::new(StatusCode::GONE, ProblemKind::GONE, detail)
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .with_field("body")
    }

    /// 415: the body is not JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemKind::UNSUPPORTED_MEDIA_TYPE,
            "request body must be JSON (content-type application/json)",
        )
    }

    /// 500 with a generic detail. The cause goes to the log ([`Self::logged`]), never
    /// into the answer.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemKind::INTERNAL,
            "the request could not be completed because of an internal error",
        )
    }

    /// 500 with a generic detail, `cause` logged as an error with `message`.
    pub fn internal_logged(message: &'static str, cause: &'a dyn Error) -> Self {
        Self::internal().logged(LogLevel::Error, message, cause)
    }
}

/// The status tables beside each `impl HttpError` read their rows through this, so
/// every table checks the same things the same way.
#[cfg(test)]
pub(crate) mod table {
    use super::{HttpAnswer, HttpError, LogLevel};

    /// What an answer's detail is.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Detail {
        /// The error's own message.
        Message,
        /// [`HttpAnswer::internal`]'s generic text.
        Generic,
        /// Another fixed text.
        Fixed(String),
    }

    /// Status, problem slug, field, detail and logged level of `err`'s answer.
    pub type Row = (u16, &'static str, Option<String>, Detail, Option<LogLevel>);

    /// `err`'s row. Panics if the detail is not the message and still contains it (a
    /// hidden cause must not leak through a fixed text).
    pub fn row(err: &dyn HttpError) -> Row {
        let answer = err.answer();
        let message = err.to_string();
        let detail = if answer.detail == message {
            Detail::Message
        } else {
            assert!(
                !answer.detail.contains(&message),
                "detail {:?} carries the message {message:?}",
                answer.detail
            );
            if answer.detail == HttpAnswer::internal().detail {
                Detail::Generic
            } else {
                Detail::Fixed(answer.detail.into_owned())
            }
        };
        (
            answer.status.as_u16(),
            answer.kind.slug,
            answer.field.map(|f| f.into_owned()),
            detail,
            answer.log.map(|l| l.level),
        )
    }

    /// The row of a caller mistake that shows the error's message.
    pub fn shown(status: u16, slug: &'static str, field: Option<&str>) -> Row {
        (
            status,
            slug,
            field.map(str::to_owned),
            Detail::Message,
            None,
        )
    }

    /// The row of our own fault: a bare 500, the cause logged as an error.
    pub fn internal() -> Row {
        (
            500,
            "internal",
            None,
            Detail::Generic,
            Some(LogLevel::Error),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("secret internals")]
    struct Fault;

    impl HttpError for Fault {
        fn answer(&self) -> HttpAnswer<'_> {
            HttpAnswer::internal_logged("fault", self)
        }
    }

    #[test]
    fn internal_answers_log_the_cause_and_show_a_generic_detail() {
        let answer = Fault.answer();
        assert_eq!(Fault.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.kind, ProblemKind::INTERNAL);
        assert!(!answer.detail.contains("secret"), "{}", answer.detail);
        let log = answer.log.expect("logged");
        assert_eq!((log.level, log.message), (LogLevel::Error, "fault"));
        assert_eq!(log.cause.to_string(), "secret internals");
    }

    #[test]
    fn constructors_carry_their_status_kind_and_field() {
        let cases = [
            (
                HttpAnswer::bad_request("x", "d"),
                400,
                "invalid-request",
                Some("x"),
            ),
            (HttpAnswer::unauthorized("d"), 401, "unauthorized", None),
            (HttpAnswer::forbidden("d"), 403, "forbidden", None),
            (HttpAnswer::not_found(), 404, "not-found", None),
            (HttpAnswer::conflict("d"), 409, "conflict", None),
            (
                HttpAnswer::payload_too_large(10),
                413,
                "payload-too-large",
                Some("body"),
            ),
            (
                HttpAnswer::unsupported_media_type(),
                415,
                "unsupported-media-type",
                None,
            ),
            (HttpAnswer::internal(), 500, "internal", None),
        ];
        for (answer, status, slug, field) in cases {
            assert_eq!(answer.status.as_u16(), status);
            assert_eq!(answer.kind.slug, slug);
            assert!(!answer.kind.title.is_empty() && !answer.detail.is_empty());
            assert_eq!(answer.field.as_deref(), field);
            assert!(answer.log.is_none());
        }
    }
}

//! The web console's local origin: `console/dist/` served as a single-page app on
//! its own loopback port, its `config.json`, and the headers production serves it
//! with.
//!
//! This module is the single statement of the console's browser-facing contract: the
//! Content-Security-Policy, the HTTP API's CORS configuration and the imports bucket's
//! CORS rule. The local stack applies them; a template test can compare
//! template.yaml's `CorsConfiguration`s and response-headers policy with these.
//!
//! Other apps' pages embed `<custody-importer>` (`custody-importer.js` and the
//! assets it loads are served to any origin); the HTTP API and the imports bucket
//! allow the console origin and the "importer origins" such pages are on (locally
//! one: [`importer_origin`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The console's OAuth client id at the local OIDC provider.
pub const CLIENT_ID: &str = "custody-console-local";
/// Where the provider sends the browser back with the code (under the console origin).
pub const REDIRECT_PATH: &str = "/callback";
/// `config.json`'s `stage`.
pub const STAGE: &str = "local";

/// The HTTP API's `CorsConfiguration.AllowMethods`.
pub const CORS_ALLOW_METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
/// The HTTP API's `CorsConfiguration.AllowHeaders`.
pub const CORS_ALLOW_HEADERS: [&str; 3] = ["authorization", "content-type", "idempotency-key"];
/// The HTTP API's `CorsConfiguration.ExposeHeaders`: the console reads where a
/// redirect goes and a download's file name.
pub const CORS_EXPOSE_HEADERS: [&str; 2] = ["location", "content-disposition"];
/// The HTTP API's `CorsConfiguration.MaxAge`, in seconds.
pub const CORS_MAX_AGE_SECONDS: u32 = 600;
/// The HTTP API's `CorsConfiguration.AllowCredentials`.
pub const CORS_ALLOW_CREDENTIALS: bool = true;

/// What other apps' pages load from the console's origin (the embeddable importer's
/// script and the assets it imports), served with CORS for any origin: template.yaml's
/// `CacheBehaviors` path patterns, in order.
pub const IMPORTER_PATHS: [&str; 2] = ["custody-importer.js", "assets/*"];

/// The imports bucket's CORS rule (`AllowedMethods`): the browser PUTs a presigned
/// upload. Downloads are navigations, which CORS does not govern.
pub const UPLOAD_CORS_ALLOWED_METHODS: [&str; 1] = ["PUT"];
/// The imports bucket's CORS rule (`AllowedHeaders`): the headers the presigned
/// upload signs besides `content-length` (which the browser sets itself), and
/// `x-amzn-trace-id`, which the SDK adds inside Lambda and the upload's `headers`
/// list with the signed ones (unsigned; a console that sends the list as given
/// sends it too).
pub const UPLOAD_CORS_ALLOWED_HEADERS: [&str; 5] = [
    "content-type",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-tagging",
    "x-amzn-trace-id",
];
/// The imports bucket's CORS rule (`ExposedHeaders`).
pub const UPLOAD_CORS_EXPOSED_HEADERS: [&str; 1] = ["etag"];
/// The imports bucket's CORS rule (`MaxAge`), in seconds.
pub const UPLOAD_CORS_MAX_AGE_SECONDS: i32 = 600;

/// `Strict-Transport-Security` (harmless over http: browsers ignore it there).
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=63072000; includeSubDomains";
/// Every console response's headers besides the CSP.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("strict-transport-security", STRICT_TRANSPORT_SECURITY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// The console's Content-Security-Policy: its own scripts, styles and fonts only (no
/// `unsafe-inline`, no `unsafe-eval`), and `fetch` to itself, the HTTP API, the OIDC
/// issuer and S3 (presigned uploads). Each argument is an origin
/// (`scheme://host[:port]`).
pub fn content_security_policy(api_origin: &str, issuer_origin: &str, s3_origin: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self' {api_origin} {issuer_origin} {s3_origin}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    )
}

/// `scheme://host[:port]` of a URL (the URL itself if it does not parse).
pub fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| url.trim_end_matches('/').to_owned())
}

/// The local stack's importer origin: the console's own server under another name
/// (`http://localhost:PORT` for `http://127.0.0.1:PORT`), so a page there is a
/// different origin from the console, as another app's page embedding
/// `<custody-importer>` is. The console URL as it is when it names no loopback IP.
pub fn importer_origin(console_url: &str) -> String {
    match url::Url::parse(console_url) {
        Ok(mut url) if url.host_str() == Some("127.0.0.1") => {
            let _ = url.set_host(Some("localhost"));
            url.origin().ascii_serialization()
        }
        _ => origin_of(console_url),
    }
}

/// Whether `path` is one a page on another origin loads to embed the importer:
/// `custody-importer.js` and the build's assets it imports (its chunks, the parse
/// worker). A cross-origin `<script type="module">` is fetched in CORS mode, so these
/// are served with `Access-Control-Allow-Origin: *` (public files, no credentials).
pub fn is_embeddable(path: &str) -> bool {
    // The patterns of [`IMPORTER_PATHS`], as CloudFront matches them.
    let path = path.trim_start_matches('/');
    IMPORTER_PATHS
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *pattern,
        })
}

/// What the console site needs to know about the stack.
#[derive(Debug, Clone)]
pub struct ConsoleSite {
    /// The built console (`<repo>/console/dist`).
    pub dist: PathBuf,
    /// The HTTP API's base URL (no trailing slash).
    pub api_url: String,
    /// The OIDC issuer (its `authority`).
    pub authority: String,
    /// The S3 endpoint presigned URLs point at.
    pub s3_url: String,
}

impl ConsoleSite {
    /// `GET /config.json`.
    pub fn config(&self) -> Value {
        json!({
            "apiUrl": self.api_url.trim_end_matches('/'),
            "authority": self.authority,
            "clientId": CLIENT_ID,
            "redirectPath": REDIRECT_PATH,
            "stage": STAGE,
        })
    }

    pub fn csp(&self) -> String {
        content_security_policy(
            &origin_of(&self.api_url),
            &origin_of(&self.authority),
            &origin_of(&self.s3_url),
        )
    }

    /// Serves on `listener` (bound first, so the stack knows the console origin before
    /// it configures CORS and the OAuth return URLs).
    pub fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let address = listener.local_addr()?;
        let site = Arc::new(self);
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let site = site.clone();
            async move { site.handle(&method, &uri) }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((address, task))
    }

    fn handle(&self, method: &Method, uri: &Uri) -> Response {
        let mut response = self.respond(method, uri.path());
        let headers = response.headers_mut();
        if let Ok(csp) = HeaderValue::from_str(&self.csp()) {
            headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        for (name, value) in SECURITY_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
        if is_embeddable(uri.path()) && response.status().is_success() {
            response.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        response
    }

    fn respond(&self, method: &Method, path: &str) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, HEAD")],
                "method not allowed\n",
            )
                .into_response();
        }
        if path == "/config.json" {
            return (
                [(header::CACHE_CONTROL, "no-store")],
                axum::Json(self.config()),
            )
                .into_response();
        }
        if path.starts_with("/config.json") {
            return (StatusCode::NOT_FOUND, "not found\n").into_response();
        }
        let index = self.dist.join("index.html");
        if !index.is_file() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                format!(
                    "The console is not built ({} has no index.html).\nBuild it with: npm --prefix console run build\n",
                    self.dist.display()
                ),
            )
                .into_response();
        }
        // A file of the build, else the app's entry page (client-side routes).
        let file = static_file(&self.dist, path).unwrap_or(index);
        match std::fs::read(&file) {
            Ok(bytes) => Response::builder()
                .header(header::CONTENT_TYPE, content_type(&file))
                // Local builds change under a running stack: always revalidate.
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            Err(err) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {err}\n", file.display()),
            )
                .into_response(),
        }
    }
}

/// The regular file under `dist` that `path` names, if any. Only plain segments:
/// nothing percent-encoded, no `.`/`..`, no hidden files, nothing a symlink takes
/// out of `dist`.
fn static_file(dist: &Path, path: &str) -> Option<PathBuf> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return None;
    }
    let mut candidate = dist.to_path_buf();
    for segment in relative.split('/') {
        if segment.is_empty() || segment.starts_with('.') || segment.contains(['%', '\\', '\0']) {
            return None;
        }
        candidate.push(segment);
    }
    let real = candidate.canonicalize().ok()?;
    let root = dist.canonicalize().ok()?;
    (real.starts_with(&root) && real.is_file()).then_some(real)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// The HTTP API's CORS, as API Gateway applies a `CorsConfiguration` whose
/// `AllowOrigins` lists the console origin and the importer origins: it answers
/// preflights itself and sets the headers on every response (its own and the
/// integration's, whose CORS headers it replaces), echoing whichever allowed origin
/// asked; any other origin gets no `Access-Control-Allow-*` header.
#[derive(Debug, Clone)]
pub struct Cors {
    /// The allowed origins (`scheme://host[:port]`), the console's first.
    pub origins: Vec<String>,
}

impl Cors {
    /// CORS for these origins (each as `scheme://host[:port]`, compared exactly).
    pub fn new<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut list: Vec<String> = Vec::new();
        for origin in origins {
            let origin = origin.into();
            if !list.contains(&origin) {
                list.push(origin);
            }
        }
        Self { origins: list }
    }

    /// The request's `Origin` when it is an allowed one.
    fn allowed(&self, request: &HeaderMap) -> Option<HeaderValue> {
        let origin = request.get(header::ORIGIN)?;
        self.origins
            .iter()
            .any(|o| o.as_bytes() == origin.as_bytes())
            .then(|| origin.clone())
    }

    /// Whether the request is a CORS preflight (`OPTIONS` with
    /// `Access-Control-Request-Method`).
    pub fn is_preflight(method: &Method, request: &HeaderMap) -> bool {
        method == Method::OPTIONS && request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: the allow headers for an allowed origin, none for
    /// any other.
    pub fn preflight(&self, request: &HeaderMap) -> Response {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = self.allowed(request) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static(if CORS_ALLOW_CREDENTIALS {
                    "true"
                } else {
                    "false"
                }),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(CORS_MAX_AGE_SECONDS),
            );
        }
        response
    }

    /// Sets the CORS headers of an actual response to `request`.
    pub fn apply(&self, request: &HeaderMap, response: &mut Response) {
        let headers = response.headers_mut();
        // API Gateway ignores an integration's CORS headers once CORS is configured.
        let theirs: Vec<_> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in theirs {
            headers.remove(name);
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = self.allowed(request) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if CORS_ALLOW_CREDENTIALS {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
}

// The header values, from the lists above (checked equal by a test below).
const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE";
const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key";
const EXPOSE_HEADERS: &str = "location, content-disposition";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_the_lists() {
        assert_eq!(ALLOW_METHODS, CORS_ALLOW_METHODS.join(", "));
        assert_eq!(ALLOW_HEADERS, CORS_ALLOW_HEADERS.join(", "));
        assert_eq!(EXPOSE_HEADERS, CORS_EXPOSE_HEADERS.join(", "));
    }

    #[test]
    fn csp_allows_no_inline_code() {
        let csp = content_security_policy("http://a:1", "http://b:2", "http://c:3");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("connect-src 'self' http://a:1 http://b:2 http://c:3;"));
        assert!(csp.starts_with("default-src 'none'; script-src 'self'; "));
        assert!(csp.ends_with("form-action 'self'; object-src 'none'"));
    }

    #[test]
    fn static_files_stay_inside_dist() {
        let dir = std::env::temp_dir().join(format!("console-dist-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("assets/app.js"), "x").unwrap();
        std::fs::write(dir.join(".env"), "secret").unwrap();
        assert!(static_file(&dir, "/assets/app.js").is_some());
        for path in [
            "/",
            "/assets",
            "/.env",
            "/assets/../.env",
            "/assets/%2e%2e/.env",
            "/../etc/passwd",
            "//etc/passwd",
            "/privacy/requests/x",
        ] {
            assert!(static_file(&dir, path).is_none(), "{path}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn with_origin(origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        headers
    }

    fn acao(response: &Response) -> Option<&str> {
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok())
    }

    fn cors_headers(response: &Response) -> Vec<String> {
        response
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .map(|k| k.as_str().to_owned())
            .collect()
    }

    #[test]
    fn cors_echoes_whichever_listed_origin_asked_and_nothing_for_others() {
        let console = "http://127.0.0.1:4000";
        let importer = importer_origin(console);
        let cors = Cors::new([console.to_owned(), importer.clone(), console.to_owned()]);
        assert_eq!(cors.origins, [console, importer.as_str()], "deduplicated");
        for origin in [console, importer.as_str()] {
            let request = with_origin(Some(origin));
            let preflight = cors.preflight(&request);
            assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
            assert_eq!(acao(&preflight), Some(origin));
            assert_eq!(
                preflight.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
                ALLOW_HEADERS
            );
            assert_eq!(preflight.headers()[header::VARY], "Origin");
            let mut response = (
                [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
                "from the function",
            )
                .into_response();
            cors.apply(&request, &mut response);
            assert_eq!(acao(&response), Some(origin), "the function's is replaced");
            assert_eq!(
                response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS],
                EXPOSE_HEADERS
            );
        }
        // Unlisted origins (another port, scheme or host; a trailing slash; none at
        // all) get no CORS header, and the function's own are still removed.
        for origin in [
            Some("http://127.0.0.1:4001"),
            Some("https://127.0.0.1:4000"),
            Some("http://localhost:4001"),
            Some("http://127.0.0.1:4000/"),
            Some("http://evil.example"),
            Some("null"),
            None,
        ] {
            let request = with_origin(origin);
            let preflight = cors.preflight(&request);
            assert!(cors_headers(&preflight).is_empty(), "{origin:?}");
            assert_eq!(preflight.headers()[header::VARY], "Origin");
            let mut response = (
                [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
                "from the function",
            )
                .into_response();
            cors.apply(&request, &mut response);
            assert!(cors_headers(&response).is_empty(), "{origin:?}");
        }
    }

    #[test]
    fn the_importer_origin_is_the_console_server_under_another_name() {
        assert_eq!(
            importer_origin("http://127.0.0.1:4000"),
            "http://localhost:4000"
        );
        assert_eq!(
            importer_origin("http://127.0.0.1:4000/"),
            "http://localhost:4000"
        );
        assert_eq!(
            importer_origin("https://console.example.com/"),
            "https://console.example.com"
        );
        assert!(is_embeddable("/custody-importer.js"));
        assert!(is_embeddable("/assets/parse.worker-abc.js"));
        for path in ["/", "/index.html", "/config.json", "/imports"] {
            assert!(!is_embeddable(path), "{path}");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("http://127.0.0.1:8080/x/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin_of("https://example.com/"), "https://example.com");
    }
}

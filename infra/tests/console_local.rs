//! The web console's side of the local stack, over real HTTP: the console origin
//! (`console/dist/`, `config.json`, the production security headers), the local OIDC
//! provider (authorization code + PKCE S256) whose tokens the HTTP API accepts, the
//! HTTP API's CORS for the console origin and the importer origin only, the OAuth
//! return-URL allow-list with the console origin, and presigned uploads (from both
//! origins) and downloads.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use custody_local::console::{self, ConsoleSite};
use custody_local::demo::{Environment, EnvironmentOptions};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const INDEX: &str = "<!doctype html><title>custody console</title><div id=app></div>";
const APP_JS: &str = "console.log('app');";
const IMPORTER_JS: &str = "export class CustodyImporter {}";

fn http() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A console build of our own: an entry page, one asset and the embeddable importer.
fn fake_dist() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("custody-console-dist-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), INDEX).unwrap();
    std::fs::write(dir.join("assets/app.js"), APP_JS).unwrap();
    std::fs::write(dir.join("custody-importer.js"), IMPORTER_JS).unwrap();
    dir
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn assert_security_headers(response: &reqwest::Response, site: &ConsoleSite) {
    let url = response.url().to_string();
    let csp =
        header(response, "content-security-policy").unwrap_or_else(|| panic!("{url}: no CSP"));
    assert_eq!(csp, site.csp(), "{url}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(header(response, name), Some(value), "{url}: {name}");
    }
}

async fn serve_site(site: ConsoleSite) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let (address, _task) = site.serve(listener).unwrap();
    format!("http://{address}")
}

fn site(dist: PathBuf) -> ConsoleSite {
    ConsoleSite {
        dist,
        api_url: "http://127.0.0.1:4001".into(),
        authority: "http://127.0.0.1:4002".into(),
        s3_url: "http://127.0.0.1:4003".into(),
    }
}

#[tokio::test]
async fn the_console_origin_serves_the_app_its_config_and_the_security_headers() {
    let dist = fake_dist();
    let site = site(dist.clone());
    let origin = serve_site(site.clone()).await;
    let http = http();

    // The entry page for the root and for any client-side route.
    for path in [
        "/",
        "/privacy/requests/x",
        "/connections?connected=highlevel",
    ] {
        let response = http.get(format!("{origin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_security_headers(&response, &site);
        assert!(
            header(&response, "content-type")
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(response.text().await.unwrap(), INDEX, "{path}");
    }
    // Files of the build as they are.
    let response = http
        .get(format!("{origin}/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_security_headers(&response, &site);
    assert!(
        header(&response, "content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(response.text().await.unwrap(), APP_JS);
    // What a page on another origin loads to embed the importer (a module script is
    // fetched in CORS mode): any origin may read it; the app's pages are not shared.
    for path in ["/custody-importer.js", "/assets/app.js"] {
        let response = http
            .get(format!("{origin}{path}"))
            .header("origin", "https://app.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_security_headers(&response, &site);
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
    }
    let response = http
        .get(format!("{origin}/custody-importer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), IMPORTER_JS);
    for path in ["/", "/config.json", "/imports"] {
        let response = http
            .get(format!("{origin}{path}"))
            .header("origin", "https://app.example.com")
            .send()
            .await
            .unwrap();
        assert!(
            header(&response, "access-control-allow-origin").is_none(),
            "{path}"
        );
    }
    // Nothing outside the build: a traversal gets the entry page, never the file.
    std::fs::write(dist.join(".secret"), "no").unwrap();
    for path in ["/.secret", "/assets/%2e%2e/.secret", "/assets/..%2f.secret"] {
        let response = http.get(format!("{origin}{path}")).send().await.unwrap();
        assert_ne!(response.text().await.unwrap(), "no", "{path}");
    }

    let response = http
        .get(format!("{origin}/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_security_headers(&response, &site);
    let config: Value = response.json().await.unwrap();
    assert_eq!(
        config,
        json!({
            "apiUrl": "http://127.0.0.1:4001",
            "authority": "http://127.0.0.1:4002",
            "clientId": "custody-console-local",
            "redirectPath": "/callback",
            "stage": "local",
        })
    );
    assert_eq!(
        site.csp(),
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self' http://127.0.0.1:4001 http://127.0.0.1:4002 \
         http://127.0.0.1:4003; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
         object-src 'none'"
    );
    // Only config.json itself is the config; nothing else is served under its name.
    let response = http
        .get(format!("{origin}/config.json.bak"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_security_headers(&response, &site);
    let response = http.post(format!("{origin}/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_security_headers(&response, &site);
    let _ = std::fs::remove_dir_all(dist);
}

#[tokio::test]
async fn without_a_build_the_console_origin_says_how_to_build_it() {
    let missing = std::env::temp_dir().join(format!("custody-no-dist-{}", ulid::Ulid::new()));
    let site = site(missing);
    let origin = serve_site(site.clone()).await;
    let http = http();
    for path in ["/", "/connections"] {
        let response = http.get(format!("{origin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_security_headers(&response, &site);
        let text = response.text().await.unwrap();
        assert!(text.contains("npm --prefix console run build"), "{text}");
    }
    let response = http
        .get(format!("{origin}/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A PKCE pair: the verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = format!(
        "{}{}",
        ulid::Ulid::new().to_string().to_lowercase(),
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn query_of(location: &str) -> Vec<(String, String)> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_value(location: &str, name: &str) -> Option<String> {
    query_of(location)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The authorization request's parameters.
fn authorize_params(redirect_uri: &str, challenge: &str, state: &str) -> Vec<(String, String)> {
    [
        ("client_id", console::CLIENT_ID),
        ("redirect_uri", redirect_uri),
        ("response_type", "code"),
        ("scope", "openid"),
        ("state", state),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

struct Login {
    code: String,
    verifier: String,
}

/// Submits the login form as `tenant`/`role`; returns the code the redirect carries.
async fn log_in(
    http: &Client,
    discovery: &Value,
    redirect_uri: &str,
    tenant: &str,
    role: &str,
) -> Login {
    let (verifier, challenge) = pkce();
    let state = format!("st-{}", ulid::Ulid::new());
    let mut form = authorize_params(redirect_uri, &challenge, &state);
    form.push(("tenant".into(), tenant.into()));
    form.push(("role".into(), role.into()));
    let response = http
        .post(discovery["authorization_endpoint"].as_str().unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = header(&response, "location").unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{redirect_uri}?")),
        "{location}"
    );
    assert_eq!(
        query_value(&location, "state").as_deref(),
        Some(state.as_str())
    );
    Login {
        code: query_value(&location, "code").expect("a code"),
        verifier,
    }
}

async fn exchange(
    http: &Client,
    discovery: &Value,
    fields: &[(&str, &str)],
    origin: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(discovery["token_endpoint"].as_str().unwrap())
        .form(fields);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_calls_the_api_connects_and_uploads_on_the_local_stack() {
    custody_local::harness::build_binaries();
    let dist = fake_dist();
    let stage = custody_local::harness::unique_stage();
    let env = Environment::start_adjusted(&stage, EnvironmentOptions::default(), |options| {
        options.console_dist = dist.clone();
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let stack = &env.stack;
    let console_origin = stack.console_url.clone();
    let api = stack.base_url.clone();
    let redirect_uri = format!("{console_origin}/callback");
    let http = http();

    // --- The console origin, as `make up` reports it.
    let state = env.state();
    assert_eq!(state["console"], format!("{console_origin}/"));
    // Where pages embedding <custody-importer> run: the console's server under
    // another name, so another origin.
    let importer_origin = stack.importer_origin.clone();
    assert_eq!(state["importer_origin"], importer_origin.as_str());
    assert_eq!(importer_origin, console::importer_origin(&console_origin));
    assert_ne!(importer_origin, console_origin);
    // Where a browser clicks Install in the simulated Marketplace (the console's
    // browser journey reads it), back to custody's callback.
    let install = state["highlevel_marketplace_install"].as_str().unwrap();
    assert!(
        install.starts_with(&format!("{}/marketplace/install?", env.oauth.base_url())),
        "{install}"
    );
    assert!(
        url::Url::parse(install)
            .unwrap()
            .query_pairs()
            .any(|(k, v)| k == "redirect_uri" && v == format!("{api}/oauth/highlevel/callback")),
        "{install}"
    );
    assert!(env.describe().contains(install), "{}", env.describe());
    assert!(
        env.describe()
            .lines()
            .any(|l| l == format!("Console  {console_origin}/")),
        "{}",
        env.describe()
    );
    let response = http.get(format!("{console_origin}/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = header(&response, "content-security-policy")
        .unwrap()
        .to_owned();
    assert_eq!(
        csp,
        console::content_security_policy(&api, &stack.oidc_url, &stack.endpoint)
    );
    assert_eq!(response.text().await.unwrap(), INDEX);
    let config: Value = http
        .get(format!("{console_origin}/config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["apiUrl"], api.as_str());
    assert_eq!(config["authority"], stack.oidc_url.as_str());
    assert_eq!(config["clientId"], "custody-console-local");

    // --- OIDC: discovery, the login form, the code, the tokens.
    let authority = config["authority"].as_str().unwrap();
    let response = http
        .get(format!("{authority}/.well-known/openid-configuration"))
        .header("origin", &console_origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(console_origin.as_str())
    );
    let discovery: Value = response.json().await.unwrap();
    assert_eq!(discovery["issuer"], authority);
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "end_session_endpoint",
    ] {
        assert!(
            discovery[endpoint]
                .as_str()
                .is_some_and(|u| u.starts_with(authority)),
            "{endpoint}"
        );
    }
    let jwks: Value = http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(jwks["keys"][0].get("d").is_none(), "no private key");

    let (_, challenge) = pkce();
    let page = http
        .get(discovery["authorization_endpoint"].as_str().unwrap())
        .query(&authorize_params(&redirect_uri, &challenge, "s1"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        header(&page, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let page_csp = header(&page, "content-security-policy").unwrap().to_owned();
    assert!(!page_csp.contains("unsafe-inline"), "{page_csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\""), "{html}");
    assert!(
        html.contains("name=\"tenant\"") && html.contains("value=\"demo\""),
        "{html}"
    );
    for role in ["admin", "operator", "viewer"] {
        assert!(
            html.contains(&format!("<option value=\"{role}\"")),
            "{html}"
        );
    }
    assert!(
        !html.contains("<script") && !html.contains("style="),
        "{html}"
    );

    // Requests the provider refuses before showing the form.
    for (name, value, status) in [
        (
            "redirect_uri",
            "http://evil.example/callback",
            StatusCode::BAD_REQUEST,
        ),
        ("client_id", "someone-else", StatusCode::BAD_REQUEST),
        ("code_challenge_method", "plain", StatusCode::FOUND),
    ] {
        let mut params = authorize_params(&redirect_uri, &challenge, "s2");
        for pair in params.iter_mut().filter(|(k, _)| k == name) {
            pair.1 = value.to_owned();
        }
        let response = http
            .get(discovery["authorization_endpoint"].as_str().unwrap())
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{name}={value}");
        if status == StatusCode::FOUND {
            let location = header(&response, "location").unwrap();
            assert!(location.starts_with(&redirect_uri), "{location}");
            assert_eq!(
                query_value(location, "error").as_deref(),
                Some("invalid_request")
            );
            assert_eq!(query_value(location, "state").as_deref(), Some("s2"));
        }
    }

    let login = log_in(&http, &discovery, &redirect_uri, "console-t1", "operator").await;
    // Refused: the wrong verifier (the code is spent by the attempt, as it would be
    // by an attacker's guess).
    let (wrong_verifier, _) = pkce();
    let response = exchange(
        &http,
        &discovery,
        &[
            ("grant_type", "authorization_code"),
            ("code", &login.code),
            ("code_verifier", &wrong_verifier),
            ("client_id", console::CLIENT_ID),
            ("redirect_uri", &redirect_uri),
        ],
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let response = exchange(
        &http,
        &discovery,
        &[
            ("grant_type", "authorization_code"),
            ("code", &login.code),
            ("code_verifier", &login.verifier),
            ("client_id", console::CLIENT_ID),
            ("redirect_uri", &redirect_uri),
        ],
        None,
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a tried code is spent"
    );

    // Refused: another redirect_uri, another client.
    for (name, value) in [
        ("redirect_uri", format!("{console_origin}/elsewhere")),
        ("client_id", "custody-local".to_owned()),
    ] {
        let login = log_in(&http, &discovery, &redirect_uri, "console-t1", "operator").await;
        let mut fields = [
            ("grant_type", "authorization_code".to_owned()),
            ("code", login.code.clone()),
            ("code_verifier", login.verifier.clone()),
            ("client_id", console::CLIENT_ID.to_owned()),
            ("redirect_uri", redirect_uri.clone()),
        ];
        for field in fields.iter_mut().filter(|(k, _)| *k == name) {
            field.1 = value.clone();
        }
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = exchange(&http, &discovery, &fields, None).await;
        assert!(response.status().is_client_error(), "{name}={value}");
        let error = response.json::<Value>().await.unwrap()["error"].clone();
        assert!(
            error == "invalid_grant" || error == "invalid_client",
            "{error}"
        );
    }

    // The right verifier, once: tokens (readable by the console origin).
    let login = log_in(&http, &discovery, &redirect_uri, "console-t1", "operator").await;
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", login.code.as_str()),
        ("code_verifier", login.verifier.as_str()),
        ("client_id", console::CLIENT_ID),
        ("redirect_uri", redirect_uri.as_str()),
    ];
    let response = exchange(&http, &discovery, &fields, Some(&console_origin)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(console_origin.as_str())
    );
    assert!(
        header(&response, "content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "openid");
    assert!(tokens["expires_in"].as_i64().unwrap() > 0);
    let id_token = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token["iss"], discovery["issuer"]);
    assert_eq!(id_token["aud"], console::CLIENT_ID);
    assert_eq!(id_token["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id_token["custom:tenant_id"], "console-t1");
    assert_eq!(id_token["custom:role"], "operator");
    assert!(id_token["sub"].as_str().is_some_and(|s| !s.is_empty()));
    let response = exchange(&http, &discovery, &fields, None).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a used code is refused"
    );

    // The gateway accepts both tokens as that tenant and role.
    for token in ["access_token", "id_token"] {
        let response = http
            .get(format!("{api}/connections"))
            .bearer_auth(tokens[token].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{token}");
    }
    // As an operator: an admin route answers 403 (the role reached the function).
    let response = http
        .put(format!("{api}/export/settings"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // The end-session endpoint returns to the console.
    let response = http
        .get(discovery["end_session_endpoint"].as_str().unwrap())
        .query(&[
            ("id_token_hint", tokens["id_token"].as_str().unwrap()),
            ("post_logout_redirect_uri", &format!("{console_origin}/")),
            ("state", "bye"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        header(&response, "location"),
        Some(format!("{console_origin}/?state=bye").as_str())
    );
    let response = http
        .get(discovery["end_session_endpoint"].as_str().unwrap())
        .query(&[("post_logout_redirect_uri", "http://evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // --- CORS on the HTTP API: the console origin and the importer origin only.
    for (path, origin) in [
        ("/connections", &console_origin),
        ("/imports/01jc0000000000000000000000", &console_origin),
        ("/export/runs", &console_origin),
        ("/imports", &importer_origin),
    ] {
        let response = http
            .request(Method::OPTIONS, format!("{api}{path}"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{path}");
        for (name, value) in [
            ("access-control-allow-origin", origin.as_str()),
            ("access-control-allow-methods", "GET, POST, PUT, DELETE"),
            (
                "access-control-allow-headers",
                "authorization, content-type, idempotency-key",
            ),
            ("access-control-allow-credentials", "true"),
            ("access-control-max-age", "600"),
            ("vary", "Origin"),
        ] {
            assert_eq!(header(&response, name), Some(value), "{path}: {name}");
        }
    }
    let response = http
        .request(Method::OPTIONS, format!("{api}/connections"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    let allow: Vec<_> = response
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(allow.is_empty(), "evil.example got {allow:?}");
    let token = tokens["access_token"].as_str().unwrap();
    let response = http
        .get(format!("{api}/connections"))
        .bearer_auth(token)
        .header("origin", &console_origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(console_origin.as_str())
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&response, "access-control-expose-headers"),
        Some("location, content-disposition")
    );
    // The gateway's own answers carry them too (the console reads a 401).
    let response = http
        .get(format!("{api}/connections"))
        .header("origin", &console_origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(console_origin.as_str())
    );
    let response = http
        .get(format!("{api}/connections"))
        .bearer_auth(token)
        .header("origin", &importer_origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(importer_origin.as_str())
    );
    let response = http
        .get(format!("{api}/connections"))
        .bearer_auth(token)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "access-control-allow-origin").is_none());

    // --- The OAuth return URL: the console origin is allowed, and the provider's
    // callback sends the browser back to it.
    let admin = log_in(&http, &discovery, &redirect_uri, "console-t2", "admin").await;
    let response = exchange(
        &http,
        &discovery,
        &[
            ("grant_type", "authorization_code"),
            ("code", &admin.code),
            ("code_verifier", &admin.verifier),
            ("client_id", console::CLIENT_ID),
            ("redirect_uri", &redirect_uri),
        ],
        None,
    )
    .await;
    let admin_token = response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = http
        .get(format!("{api}/connect/highlevel"))
        .query(&[("return_url", "http://evil.example/connections")])
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "an unlisted return URL"
    );
    let response = http
        .get(format!("{api}/connect/highlevel"))
        .query(&[("return_url", format!("{console_origin}/connections"))])
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "the console's return URL"
    );
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next().map(str::to_owned))
        .collect();
    let consent = header(&response, "location").unwrap().to_owned();
    let response = http.get(&consent).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let callback = header(&response, "location").unwrap().to_owned();
    let response = http
        .get(&callback)
        .header("cookie", cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let back = header(&response, "location").unwrap();
    assert!(
        back.starts_with(&format!("{console_origin}/connections?")),
        "{back}"
    );
    // The oauth function's result parameters (`result=connected&provider=highlevel`).
    let query = query_of(back);
    assert!(
        query.iter().any(|(_, v)| v == "connected") && query.iter().any(|(_, v)| v == "highlevel"),
        "{back}"
    );

    // --- A presigned upload from the console origin, and the download as a plain
    // navigation.
    let csv = "contact_id,email\r\nc1,a@example.org\r\n";
    let response = http
        .post(format!("{api}/imports"))
        .bearer_auth(&admin_token)
        .header("origin", &console_origin)
        .json(&json!({
            "format": "csv", "mode": "store", "retention_class": "import-30d",
            "destination": {"url": env.destination.url(), "secret": "whsec_console_test_0123456789abcdef"},
            "size": csv.len(), "required_columns": ["email"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["import"]["id"].as_str().unwrap().to_owned();
    let upload = &created["upload"];
    let upload_url = upload["url"].as_str().unwrap();
    assert!(
        upload_url.starts_with(&format!("{}/", stack.endpoint)),
        "the presigned URL is the emulator's (the CSP's S3 origin): {upload_url}"
    );
    let signed: Vec<(String, String)> = upload["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().to_owned()))
        .collect();
    // What the browser asks first: the signed headers it will send (it sets
    // content-length and host itself).
    let requested: Vec<&str> = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "content-length" && *k != "host")
        .collect();
    for name in &requested {
        assert!(
            console::UPLOAD_CORS_ALLOWED_HEADERS.contains(name),
            "the bucket's CORS rule lacks {name}"
        );
    }
    let preflight = |origin: String| {
        http.request(Method::OPTIONS, upload_url)
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", requested.join(","))
            .send()
    };
    let response = preflight(console_origin.clone()).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(console_origin.as_str())
    );
    let methods = header(&response, "access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("PUT"), "{methods}");
    // Pages embedding <custody-importer> upload from the importer origin.
    let response = preflight(importer_origin.clone()).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(importer_origin.as_str())
    );
    let response = preflight("http://evil.example".into()).await.unwrap();
    assert!(
        !response.status().is_success(),
        "a preflight from another origin is refused: {}",
        response.status()
    );
    let mut put = http
        .put(upload_url)
        .header("origin", &console_origin)
        .body(csv);
    for (name, value) in &signed {
        put = put.header(name.as_str(), value.as_str());
    }
    let response = put.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(console_origin.as_str())
    );
    let response = http
        .get(format!("{api}/imports/{id}/download"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let download: Value = response.json().await.unwrap();
    let link = download["objects"][0]["url"].as_str().unwrap();
    // A navigation: no origin, no extra headers.
    let response = http.get(link).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), csv);

    let _ = std::fs::remove_dir_all(dist);
}

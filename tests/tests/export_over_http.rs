//! The product's main job on `make up`'s stack, through HTTP alone, as a new user does
//! it with the README's curl lines: connect HighLevel, save WebDAV export settings,
//! "run now", wait for the run in the export log, and find every file on the WebDAV
//! server (PROPFIND) matching the manifest's SHA-256. No function is called directly:
//! the run-now kick and the run's continuations are one-time schedules that the local
//! EventBridge Scheduler fires; the simulated HighLevel accepts the tokens the
//! simulated OAuth provider issued.

use std::time::{Duration, Instant};

use custody_journeys::UpStack;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{} has no Location", response.url()))
        .to_owned()
}

/// `href`s of a WebDAV multistatus answer.
fn hrefs(xml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("href>") {
        let after = &rest[start + 5..];
        let Some(end) = after.find("</") else { break };
        out.push(after[..end].trim().to_owned());
        rest = &after[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_journey_over_http_on_the_up_stack() {
    let stack = UpStack::start();
    // The state file holds bearer tokens and the WebDAV password: owner-only.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(stack.state_file())
            .expect("state file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "state file mode {mode:o}");
    }
    let http = client();
    let base = stack.get("/base_url");
    let token = stack.get("/token");
    let api = |method: Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(&token)
    };

    // 1. Connect HighLevel: our start, the provider's consent, our callback.
    let start = api(Method::GET, "/connect/highlevel")
        .query(&[("return_url", stack.get("/return_url"))])
        .send()
        .await
        .expect("connect");
    assert_eq!(start.status(), StatusCode::FOUND, "GET /connect/highlevel");
    let cookie = start
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("the start binds the browser with a cookie")
        .to_owned();
    let consent = http.get(location(&start)).send().await.expect("provider");
    assert_eq!(
        consent.status(),
        StatusCode::FOUND,
        "the provider's consent"
    );
    let callback = http
        .get(location(&consent))
        .header("cookie", cookie)
        .send()
        .await
        .expect("callback");
    assert_eq!(callback.status(), StatusCode::FOUND, "callback");
    assert!(
        location(&callback).contains("connected"),
        "{}",
        location(&callback)
    );
    let connections: Value = api(Method::GET, "/connections")
        .send()
        .await
        .expect("connections")
        .json()
        .await
        .expect("json");
    assert!(
        connections
            .to_string()
            .contains(&stack.get("/highlevel/location_id")),
        "{connections}"
    );

    // 2. Export settings with the stack's WebDAV server as the destination.
    let settings = json!({
        "schedule": {"expression": "cron(0 3 * * ? *)", "timezone": "Europe/Berlin"},
        "channels": ["SMS", "Email", "Call", "WhatsApp", "Instagram", "Facebook"],
        "date_range": {"mode": "fixed", "start": "2025-01-01T00:00:00Z", "end": "2025-07-01T00:00:00Z"},
        "destination": {
            "type": "webdav",
            "url": stack.get("/webdav/url"),
            "username": stack.get("/webdav/username"),
            "password": stack.get("/webdav/password"),
        },
    });
    let saved = api(Method::PUT, "/export/settings")
        .json(&settings)
        .send()
        .await
        .expect("settings");
    assert_eq!(
        saved.status(),
        StatusCode::OK,
        "{}",
        saved.text().await.unwrap_or_default()
    );

    // 3. Run now, then wait for the run to complete in the export log.
    let kicked = api(Method::POST, "/export/runs")
        .send()
        .await
        .expect("run now");
    assert_eq!(kicked.status(), StatusCode::ACCEPTED, "POST /export/runs");
    let deadline = Instant::now() + Duration::from_secs(180);
    let run = loop {
        let runs: Value = api(Method::GET, "/export/runs")
            .send()
            .await
            .expect("runs")
            .json()
            .await
            .expect("json");
        let latest = runs["runs"][0].clone();
        match latest["status"].as_str() {
            Some("completed") => break latest,
            Some("failed") => panic!("the run failed: {latest}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no completed run after 3 min: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(run["conversations"].as_u64().unwrap_or(0) > 0, "{run}");

    // 4. The files on the WebDAV server, found as a user would: PROPFIND.
    let dav = stack.get("/webdav/url");
    let (user, password) = (stack.get("/webdav/username"), stack.get("/webdav/password"));
    let propfind = Method::from_bytes(b"PROPFIND").expect("method");
    let origin = {
        let url = url::Url::parse(&dav).expect("dav url");
        format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
            + &url.port().map(|p| format!(":{p}")).unwrap_or_default()
    };
    let mut pending = vec![dav.clone()];
    let mut files = Vec::new();
    while let Some(collection) = pending.pop() {
        let listing = http
            .request(propfind.clone(), &collection)
            .basic_auth(&user, Some(&password))
            .header("depth", "1")
            .send()
            .await
            .expect("propfind");
        assert_eq!(listing.status().as_u16(), 207, "PROPFIND {collection}");
        let xml = listing.text().await.expect("multistatus");
        for href in hrefs(&xml) {
            let url = if href.starts_with("http") {
                href.clone()
            } else {
                format!("{origin}{href}")
            };
            if url.trim_end_matches('/') == collection.trim_end_matches('/') {
                continue;
            }
            if href.ends_with('/') {
                pending.push(url);
            } else {
                files.push(url);
            }
        }
    }
    let manifest_url = files
        .iter()
        .find(|f| f.ends_with("manifest.json"))
        .unwrap_or_else(|| panic!("no manifest.json among {files:?}"))
        .clone();
    let manifest: Value = http
        .get(&manifest_url)
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .expect("manifest")
        .json()
        .await
        .expect("manifest is JSON");
    let listed = manifest["files"].as_array().expect("manifest lists files");
    assert!(!listed.is_empty());
    let dir = manifest_url.trim_end_matches("manifest.json");
    for entry in listed {
        let name = entry["name"]
            .as_str()
            .or(entry["path"].as_str())
            .expect("name");
        let bytes = http
            .get(format!("{dir}{name}"))
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .expect("file")
            .bytes()
            .await
            .expect("body");
        assert_eq!(
            entry["sha256"].as_str(),
            Some(hex::encode(Sha256::digest(&bytes)).as_str()),
            "{name} differs from the manifest"
        );
    }
    assert_eq!(
        listed.len() as u64,
        run["conversations"].as_u64().unwrap_or(0)
    );
}

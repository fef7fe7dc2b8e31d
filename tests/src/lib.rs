//! Helpers for the journeys in `tests/tests/`: the binaries they run, and the stack
//! `make up` starts, as a process, driven over HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/debug` (or `$CARGO_TARGET_DIR/debug`), where `cargo build` puts binaries.
pub fn binaries() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| custody_local::repo_root().join("target"))
        .join("debug")
}

pub use custody_local::harness::build_binaries;

/// A process is alive (a zombie, exited but not reaped, counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `custody-local up`, as `make up` runs it, with its state file read back.
pub struct UpStack {
    child: Child,
    dir: PathBuf,
    pub state: serde_json::Value,
}

impl UpStack {
    pub fn start() -> UpStack {
        build_binaries();
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "custody-up-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ready = dir.join("ready");
        let state_file = dir.join("stack.json");
        let child = Command::new(binaries().join("custody-local"))
            .arg("up")
            .arg("--ready-file")
            .arg(&ready)
            .arg("--state-file")
            .arg(&state_file)
            .env_remove("CUSTODY_EMULATOR_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("custody-local up starts");
        let mut stack = UpStack {
            child,
            dir,
            state: serde_json::Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            if let Ok(Some(status)) = stack.child.try_wait() {
                panic!("custody-local up exited ({status}) before it was ready");
            }
            assert!(
                Instant::now() < deadline,
                "custody-local up not ready in 2 min"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(&state_file).expect("state file");
        stack.state = serde_json::from_str(&text).expect("state file is JSON");
        stack
    }

    pub fn get(&self, key: &str) -> String {
        self.state
            .pointer(key)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("state has no {key}"))
            .to_owned()
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("stack.json")
    }
}

impl Drop for UpStack {
    fn drop(&mut self) {
        // SIGTERM, as `make down` sends; its children die with it.
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Journeys on the in-process local stack (`custody_local::demo::Environment`): the
/// HTTP API used as a client uses it, events delivered as AWS delivers them, and raw
/// reads of what the stack stores (tables, every object version, the audit chain).
///
/// Every helper panics with a message naming what failed: they are test code.
pub mod world {
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use custody::TenantId;
    use custody::audit::AuditLog;
    use custody::certificate::{Certificate, SignedCertificate};
    use custody::store::Item;
    use custody_local::demo::{Environment, LOCATION, TENANT};
    use reqwest::Method;
    use serde_json::{Map, Value, json};

    /// One DynamoDB attribute value, named through the store's item type (this crate
    /// does not depend on the SDK itself).
    pub type Attribute = <Item as std::ops::Index<&'static str>>::Output;

    /// Where the callback sends the browser back to (allowed by the demo's config).
    pub const RETURN_URL: &str = "http://127.0.0.1/app/connections";
    /// The company of the demo's simulated HighLevel account.
    pub const COMPANY: &str = "co_demo_0001";

    /// The demo environment's tenant.
    pub fn tenant() -> TenantId {
        TenantId::parse(TENANT).expect("the demo tenant id is valid")
    }

    /// An HTTP client that does not follow redirects (the OAuth hops are checked).
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client")
    }

    /// The HTTP API with a bearer token of the demo tenant.
    pub struct Api {
        http: reqwest::Client,
        base: String,
        token: String,
    }

    impl Api {
        /// As the tenant's admin.
        pub fn new(env: &Environment) -> Api {
            Api {
                http: http_client(),
                base: env.stack.base_url.clone(),
                token: env.admin_token(),
            }
        }

        pub fn http(&self) -> &reqwest::Client {
            &self.http
        }

        pub fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        /// Status and body (JSON, or the text as a JSON string).
        pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
            let mut request = self
                .http
                .request(method.clone(), self.url(path))
                .bearer_auth(&self.token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let text = response
                .text()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, value)
        }

        /// The body of a call that must answer `want`.
        pub async fn expect(
            &self,
            method: Method,
            path: &str,
            body: Option<&Value>,
            want: u16,
        ) -> Value {
            let (status, value) = self.call(method.clone(), path, body).await;
            assert_eq!(status, want, "{method} {path} answered {status}: {value}");
            value
        }
    }

    /// Polls `probe` every 250 ms until it gives a value; fails after `limit`.
    pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Connects HighLevel as a user does: our start (state, PKCE, binding cookie), the
    /// provider's consent, our callback. Returns the `GET /connections` listing.
    pub async fn connect_highlevel(api: &Api) -> Value {
        let header = |r: &reqwest::Response, name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("{} has no {name} header", r.url()))
        };
        let start = api
            .http()
            .get(api.url("/connect/highlevel"))
            .query(&[("return_url", RETURN_URL)])
            .bearer_auth(&api.token)
            .send()
            .await
            .expect("GET /connect/highlevel");
        assert_eq!(start.status().as_u16(), 302, "GET /connect/highlevel");
        let authorize = header(&start, "location");
        assert!(
            authorize.contains("code_challenge_method=S256") && authorize.contains("state="),
            "authorize URL without state or PKCE: {authorize}"
        );
        let cookie = header(&start, "set-cookie");
        let binding = cookie.split(';').next().unwrap_or_default().to_owned();
        let consent = api
            .http()
            .get(&authorize)
            .send()
            .await
            .expect("the provider's consent");
        assert_eq!(consent.status().as_u16(), 302, "the provider's consent");
        let callback = api
            .http()
            .get(header(&consent, "location"))
            .header("cookie", binding)
            .send()
            .await
            .expect("callback");
        assert_eq!(callback.status().as_u16(), 302, "the callback");
        let back = header(&callback, "location");
        assert!(
            back.starts_with(RETURN_URL) && back.contains("connected"),
            "the callback returned to {back}"
        );
        let listing = api.expect(Method::GET, "/connections", None, 200).await;
        assert!(
            listing.to_string().contains(LOCATION),
            "the connection is not listed: {listing}"
        );
        listing
    }

    /// Export settings with the environment's WebDAV server as the destination.
    pub fn webdav_export_settings(env: &Environment) -> Value {
        let state = env.state();
        json!({
            "schedule": {"expression": "cron(0 3 * * ? *)", "timezone": "Europe/Berlin"},
            "channels": ["SMS", "Email", "Call", "WhatsApp", "Instagram", "Facebook"],
            "date_range": {"mode": "fixed", "start": "2025-01-01T00:00:00Z", "end": "2025-07-01T00:00:00Z"},
            "destination": {
                "type": "webdav",
                "url": state["webdav"]["url"],
                "username": state["webdav"]["username"],
                "password": state["webdav"]["password"],
            },
        })
    }

    /// The newest run of the export log, if any.
    pub async fn latest_run(api: &Api) -> Option<Value> {
        let runs = api.expect(Method::GET, "/export/runs", None, 200).await;
        runs["runs"].as_array().and_then(|r| r.first()).cloned()
    }

    /// Waits until the newest run is not `before` (a run id) and has a final status
    /// (anything but `running` / `continued`); returns it.
    pub async fn wait_for_new_final_run(api: &Api, before: Option<&str>) -> Value {
        poll(
            "a new export run to end",
            Duration::from_secs(180),
            || async {
                let run = latest_run(api).await?;
                if run["run_id"].as_str() == before {
                    return None;
                }
                match run["status"].as_str() {
                    Some("running") | Some("continued") => None,
                    Some("failed") => panic!("the export run failed: {run}"),
                    _ => Some(run),
                }
            },
        )
        .await
    }

    /// Creates a CSV import (store mode, class `import-30d`, the environment's
    /// destination), uploads `csv` with the presigned PUT, and waits until it is
    /// delivered. Returns the import as `GET /imports/{id}` shows it.
    pub async fn import_csv(env: &Environment, api: &Api, csv: &str) -> Value {
        let state = env.state();
        let created = api
            .expect(
                Method::POST,
                "/imports",
                Some(&json!({
                    "format": "csv", "mode": "store", "retention_class": "import-30d",
                    "destination": {"url": state["destination"]["url"], "secret": state["destination"]["secret"]},
                    "size": csv.len(), "required_columns": ["email"],
                })),
                201,
            )
            .await;
        let id = created["import"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no import id: {created}"))
            .to_owned();
        let upload = &created["upload"];
        let mut put = api
            .http()
            .put(upload["url"].as_str().expect("a presigned upload URL"));
        for (name, value) in upload["headers"].as_object().into_iter().flatten() {
            put = put.header(name.as_str(), value.as_str().unwrap_or_default());
        }
        let uploaded = put
            .body(csv.to_owned())
            .send()
            .await
            .expect("presigned upload");
        assert!(
            uploaded.status().is_success(),
            "the presigned upload answered {}",
            uploaded.status()
        );
        let path = format!("/imports/{id}");
        poll(
            "the import to be processed and delivered",
            Duration::from_secs(90),
            || async {
                let import = api.expect(Method::GET, &path, None, 200).await;
                match import["status"].as_str() {
                    Some("delivered") => Some(import),
                    Some("delivery_failed") | Some("invalid") => {
                        panic!("the import ended {import}")
                    }
                    _ => None,
                }
            },
        )
        .await
    }

    /// Waits until a privacy request is `complete`; fails on `denied` / `error`.
    pub async fn wait_privacy_request(api: &Api, id: &str) -> Value {
        let path = format!("/privacy/requests/{id}");
        poll(
            "the privacy request to complete",
            Duration::from_secs(120),
            || async {
                let request = api.expect(Method::GET, &path, None, 200).await;
                match request["status"].as_str() {
                    Some("complete") => Some(request),
                    Some("denied") | Some("error") => panic!("the request ended {request}"),
                    _ => None,
                }
            },
        )
        .await
    }

    /// The tenant's audit log, read as the verifier reads it.
    pub fn audit_log(env: &Environment) -> AuditLog {
        AuditLog::from_config(
            &env.stack.clients,
            &env.stack.provisioned.config,
            custody::clock::system(),
        )
    }

    /// Every item of a table (a consistent, paginated scan).
    pub async fn scan(env: &Environment, table: &str) -> Vec<Item> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = env
                .stack
                .clients
                .dynamodb
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .unwrap_or_else(|e| panic!("scan {table}: {}", custody::aws::error_text(&e)));
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return items,
            }
        }
    }

    /// Every item of a table as plain JSON (strings, numbers, lists, maps; binaries
    /// as base64 strings).
    pub async fn scan_json(env: &Environment, table: &str) -> Vec<Value> {
        scan(env, table).await.iter().map(item_plain).collect()
    }

    pub fn item_plain(item: &Item) -> Value {
        Value::Object(item.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
    }

    /// An item in DynamoDB's typed JSON (`{"S": …}`), as stream records carry images.
    pub fn item_typed(item: &Item) -> Value {
        Value::Object(item.iter().map(|(k, v)| (k.clone(), typed(v))).collect())
    }

    pub fn plain(value: &Attribute) -> Value {
        if let Ok(s) = value.as_s() {
            Value::String(s.clone())
        } else if let Ok(n) = value.as_n() {
            serde_json::from_str(n).unwrap_or_else(|_| Value::String(n.clone()))
        } else if let Ok(b) = value.as_bool() {
            Value::Bool(*b)
        } else if let Ok(list) = value.as_l() {
            Value::Array(list.iter().map(plain).collect())
        } else if let Ok(map) = value.as_m() {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
        } else if let Ok(set) = value.as_ss() {
            json!(set)
        } else if let Ok(set) = value.as_ns() {
            json!(set)
        } else if let Ok(b) = value.as_b() {
            Value::String(base64_encode(b.as_ref()))
        } else if let Ok(set) = value.as_bs() {
            Value::Array(
                set.iter()
                    .map(|b| Value::String(base64_encode(b.as_ref())))
                    .collect(),
            )
        } else {
            Value::Null
        }
    }

    pub fn typed(value: &Attribute) -> Value {
        if let Ok(s) = value.as_s() {
            json!({ "S": s })
        } else if let Ok(n) = value.as_n() {
            json!({ "N": n })
        } else if let Ok(b) = value.as_bool() {
            json!({ "BOOL": b })
        } else if let Ok(list) = value.as_l() {
            json!({ "L": list.iter().map(typed).collect::<Vec<_>>() })
        } else if let Ok(map) = value.as_m() {
            let map: Map<String, Value> = map.iter().map(|(k, v)| (k.clone(), typed(v))).collect();
            json!({ "M": map })
        } else if let Ok(set) = value.as_ss() {
            json!({ "SS": set })
        } else if let Ok(set) = value.as_ns() {
            json!({ "NS": set })
        } else if let Ok(b) = value.as_b() {
            json!({ "B": base64_encode(b.as_ref()) })
        } else if let Ok(set) = value.as_bs() {
            json!({ "BS": set.iter().map(|b| base64_encode(b.as_ref())).collect::<Vec<_>>() })
        } else {
            json!({ "NULL": true })
        }
    }

    /// One stored object version or delete marker, with its bytes.
    #[derive(Debug, Clone)]
    pub struct StoredVersion {
        pub key: String,
        pub version_id: String,
        pub latest: bool,
        pub delete_marker: bool,
        pub body: Vec<u8>,
    }

    /// Every object version and delete marker under `prefix` ("" for the whole
    /// bucket), with the bytes of each version.
    pub async fn object_versions(
        env: &Environment,
        bucket: &str,
        prefix: &str,
    ) -> Vec<StoredVersion> {
        let s3 = &env.stack.clients.s3;
        let mut found = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let out = s3
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .unwrap_or_else(|e| panic!("list {bucket}: {}", custody::aws::error_text(&e)));
            for marker in out.delete_markers() {
                found.push(StoredVersion {
                    key: marker.key().unwrap_or_default().to_owned(),
                    version_id: marker.version_id().unwrap_or("null").to_owned(),
                    latest: marker.is_latest().unwrap_or(false),
                    delete_marker: true,
                    body: Vec::new(),
                });
            }
            for version in out.versions() {
                let key = version.key().unwrap_or_default().to_owned();
                let object = s3
                    .get_object()
                    .bucket(bucket)
                    .key(&key)
                    .set_version_id(version.version_id().map(str::to_owned))
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("get {bucket}/{key}: {}", custody::aws::error_text(&e))
                    });
                let body = object
                    .body
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("read {bucket}/{key}: {e}"))
                    .into_bytes()
                    .to_vec();
                found.push(StoredVersion {
                    key,
                    version_id: version.version_id().unwrap_or("null").to_owned(),
                    latest: version.is_latest().unwrap_or(false),
                    delete_marker: false,
                    body,
                });
            }
            if out.is_truncated() == Some(true) {
                key_marker = out.next_key_marker().map(str::to_owned);
                version_marker = out.next_version_id_marker().map(str::to_owned);
            } else {
                return found;
            }
        }
    }

    /// The certificate signing key, as `GET /privacy/public-key` publishes it (DER),
    /// fetched without a token: the route is public.
    pub async fn public_key_der(api: &Api) -> Vec<u8> {
        let response = api
            .http()
            .get(api.url("/privacy/public-key"))
            .send()
            .await
            .expect("GET /privacy/public-key");
        assert_eq!(response.status().as_u16(), 200, "GET /privacy/public-key");
        let key: Value = response.json().await.expect("the public key is JSON");
        base64_decode(key["der_base64"].as_str().expect("der_base64"))
    }

    /// Verifies a signed certificate offline with the public key, checks that one
    /// changed byte no longer verifies, and returns the parsed document.
    pub fn verify_certificate(signed: &SignedCertificate, der: &[u8]) -> Certificate {
        let certificate = custody::certificate::verify(signed, der)
            .unwrap_or_else(|e| panic!("the certificate does not verify: {e}"));
        let mut tampered = signed.clone();
        tampered.document = tampered.document.replacen('"', "'", 1);
        assert!(
            custody::certificate::verify(&tampered, der).is_err(),
            "a changed certificate still verifies"
        );
        certificate
    }

    /// A signed HighLevel `UNINSTALL` webhook for the demo location: (body, signature
    /// for `x-wh-signature`), signed with the key the stack trusts.
    pub fn signed_uninstall(env: &Environment) -> (String, String) {
        let body = json!({
            "type": "UNINSTALL",
            "appId": "custody-demo-app",
            "locationId": LOCATION,
            "companyId": COMPANY,
            "timestamp": rfc3339(SystemTime::now()),
            "webhookId": format!("wh-{}", unique_id()),
        })
        .to_string();
        let signature = env
            .signer
            .sign_rsa(body.as_bytes())
            .unwrap_or_else(|e| panic!("signing the webhook: {e}"));
        (body, signature)
    }

    /// The event file `events/<function>/<name>.json`.
    pub fn event_file(function: &str, name: &str) -> Value {
        let path = custody_local::repo_root()
            .join("events")
            .join(function)
            .join(format!("{name}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The S3 notification AWS sends when a lifecycle rule acted on an object
    /// (`LifecycleExpiration:Delete` or `:DeleteMarkerCreated`), shaped as
    /// `events/expiry/s3_lifecycle_expiration.json`.
    pub fn lifecycle_event(bucket: &str, key: &str, version_id: &str, event_name: &str) -> Value {
        let mut event = event_file("expiry", "s3_lifecycle_expiration");
        let record = &mut event["Records"][0];
        record["eventName"] = json!(event_name);
        record["eventTime"] = json!(rfc3339(SystemTime::now()));
        record["s3"]["bucket"]["name"] = json!(bucket);
        record["s3"]["bucket"]["arn"] = json!(format!("arn:aws:s3:::{bucket}"));
        record["s3"]["object"]["key"] = json!(key);
        record["s3"]["object"]["versionId"] = json!(version_id);
        record["s3"]["object"]["sequencer"] = json!(format!("{:018X}", unix_nanos() as u64));
        event
    }

    /// The stream record AWS delivers when DynamoDB's TTL process removed `old` (the
    /// item as it was), shaped as `events/expiry/dynamodb_ttl_removal.json`.
    pub fn ttl_removal_event(stream_arn: &str, event_id: &str, old: &Item) -> Value {
        let mut event = event_file("expiry", "dynamodb_ttl_removal");
        let record = &mut event["Records"][0];
        record["eventID"] = json!(event_id);
        record["eventSourceARN"] = json!(stream_arn);
        let image = item_typed(old);
        let dynamodb = &mut record["dynamodb"];
        dynamodb["ApproximateCreationDateTime"] = json!(unix_nanos() / 1_000_000_000);
        dynamodb["Keys"] = json!({ "pk": image["pk"], "sk": image["sk"] });
        dynamodb["SizeBytes"] = json!(image.to_string().len());
        dynamodb["SequenceNumber"] = json!(format!("{}", unix_nanos()));
        dynamodb["OldImage"] = image;
        event
    }

    /// The table's stream ARN.
    pub async fn stream_arn(env: &Environment, table: &str) -> String {
        env.stack
            .clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe {table}: {}", custody::aws::error_text(&e)))
            .table()
            .and_then(|t| t.latest_stream_arn())
            .unwrap_or_else(|| panic!("{table} has no stream"))
            .to_owned()
    }

    /// Delivers an event through the local Lambda Invoke API (`RequestResponse`), as
    /// `aws lambda invoke` would; fails if the function reports an error.
    pub async fn invoke_over_http(env: &Environment, function: &str, event: &Value) -> Value {
        let response = http_client()
            .post(format!(
                "{}/2015-03-31/functions/{function}/invocations",
                env.stack.lambda_url
            ))
            .json(event)
            .send()
            .await
            .unwrap_or_else(|e| panic!("invoke {function}: {e}"));
        let status = response.status().as_u16();
        let function_error = response.headers().get("x-amz-function-error").cloned();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "invoke {function} answered {status}: {body}");
        assert!(
            function_error.is_none(),
            "{function} failed ({function_error:?}): {body}"
        );
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    }

    /// Delivers an event directly to the function's Runtime API.
    pub async fn invoke(env: &Environment, function: &str, event: &Value) -> Value {
        env.stack
            .function(function)
            .unwrap_or_else(|| panic!("{function} is not running"))
            .invoke(event)
            .await
            .unwrap_or_else(|e| panic!("{function} failed: {e}"))
    }

    fn unix_nanos() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    }

    /// A fresh id (time, process, counter), for webhook and event ids.
    pub fn unique_id() -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        format!(
            "{:x}{:x}{:04x}",
            unix_nanos(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// RFC 3339, UTC, milliseconds.
    pub fn rfc3339(at: SystemTime) -> String {
        chrono::DateTime::<chrono::Utc>::from(at)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    pub fn base64_encode(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn base64_decode(text: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap_or_else(|e| panic!("not base64 ({e}): {text}"))
    }
}

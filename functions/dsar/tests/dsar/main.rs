//! Integration tests of the dsar function against the AWS emulator (provisioned from
//! template.yaml) and a real local HTTP server for the tenant's verification webhook.
//! One binary; each test gets its own copy of every resource.

mod access;
mod account;
mod account_export;
mod cost;
mod deadlines;
mod erasure;
mod expired;
mod faults;
mod identifiers;
mod notices;
mod rectification;
mod requests;
mod restriction;
mod retention;
mod streaming;
mod verification;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use chrono::Utc;
use custody::clock::ManualClock;
use custody::subject::Identifier;
use custody::subject_index::{Source, SubjectRef};
use custody::tenant::TenantId;
use custody_local::harness::TestStack;
use dsar::{Deps, DsarConfig};
use http::StatusCode;
use serde_json::{Value, json};

/// Loads an event file of events/dsar-api (the routes) by name.
macro_rules! event {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/dsar-api/",
            $name,
            ".json"
        ))
    };
}
pub(crate) use event;

/// Loads an event file of events/dsar (the stream and the schedule) by name.
macro_rules! worker_event {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/dsar/",
            $name,
            ".json"
        ))
    };
}
pub(crate) use worker_event;

pub struct Env {
    pub stack: TestStack,
    pub deps: Deps,
    pub clock: ManualClock,
}

pub async fn env() -> Env {
    let stack = TestStack::new().await;
    env_with(stack, None).await
}

pub async fn env_with(stack: TestStack, clients: Option<custody::aws::Clients>) -> Env {
    let clock = ManualClock::at(Utc::now());
    let app_secret = custody::subject::load_app_secret(
        &stack.clients.secrets,
        &stack.config.pseudonym_secret_id,
    )
    .await
    .unwrap();
    let dsar = DsarConfig {
        link_ttl: Duration::from_secs(300),
        egress: custody::egress::EgressPolicy::LOCAL,
        oauth_function: "custody-oauth-test".into(),
        // No wait before the purge's final sweep (tests of the wait set their own).
        purge_grace: chrono::Duration::zero(),
        notice_email_sender: None,
    };
    let clients = clients.unwrap_or_else(|| stack.clients.clone());
    let deps = Deps::new(
        stack.config.clone(),
        dsar,
        &clients,
        app_secret,
        custody::http::client(custody::egress::EgressPolicy::LOCAL).unwrap(),
        Arc::new(clock.clone()),
    );
    Env { stack, deps, clock }
}

pub fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

/// An HTTP request from an event file, with claims, body and path id adjusted.
pub fn request(
    event: &str,
    tenant: &str,
    role: &str,
    body: Option<Value>,
    id: Option<&str>,
) -> lambda_http::Request {
    let mut ev: Value = serde_json::from_str(event).unwrap();
    if let Some(claims) = ev
        .pointer_mut("/requestContext/authorizer/jwt/claims")
        .and_then(Value::as_object_mut)
    {
        claims.insert("custom:tenant_id".into(), json!(tenant));
        claims.insert("custom:role".into(), json!(role));
    }
    if let Some(body) = body {
        let text = body.to_string();
        ev["headers"]["content-length"] = json!(text.len().to_string());
        ev["headers"]["content-type"] = json!("application/json");
        ev["body"] = json!(text);
    }
    if let Some(id) = id {
        ev["pathParameters"]["id"] = json!(id);
        for pointer in ["/rawPath", "/requestContext/http/path"] {
            let path = ev
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap()
                .to_owned();
            *ev.pointer_mut(pointer).unwrap() =
                json!(path.replace("01JH0000000000000000000000", id));
        }
    }
    lambda_http::request::from_str(&ev.to_string()).unwrap()
}

pub async fn call(deps: &Deps, req: lambda_http::Request) -> (StatusCode, Value) {
    let response = dsar::handle_http(deps, req).await;
    let status = response.status();
    let body = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, body)
}

/// The stream event file with the image of request `id` of `tenant` in `status`.
pub fn stream_event(
    tenant: &str,
    id: &str,
    status: &str,
) -> aws_lambda_events::event::dynamodb::Event {
    let text = worker_event!("stream_request_pending")
        .replace("01JH0000000000000000000000", id)
        .replace("T#acme", &format!("T#{tenant}"))
        .replace("\"pending\"", &format!("\"{status}\""));
    serde_json::from_str(&text).unwrap()
}

/// A subject of the seeded world: identifiers and the name that appears in rows.
#[derive(Clone, Copy)]
pub struct Person {
    pub name: &'static str,
    pub email: &'static str,
    pub phone: &'static str,
    pub contact_id: &'static str,
}

pub const ANN: Person = Person {
    name: "Annabel Quixote",
    email: "annabel.quixote@example.com",
    phone: "+447700900101",
    contact_id: "hl-ann-0001",
};
pub const BOB: Person = Person {
    name: "Bartholomew Ruiz",
    email: "bart.ruiz@example.org",
    phone: "+447700900202",
    contact_id: "hl-bob-0002",
};
pub const CARA: Person = Person {
    name: "Carlotta Zell",
    email: "carlotta.zell@example.net",
    phone: "+447700900303",
    contact_id: "hl-cara-0003",
};

impl Person {
    pub fn subject(&self) -> Value {
        json!({ "email": self.email, "phone": self.phone, "contact_id": self.contact_id })
    }

    /// Every string that identifies the person, as it could appear anywhere.
    pub fn needles(&self) -> Vec<String> {
        vec![
            self.name.to_owned(),
            self.email.to_owned(),
            self.phone.to_owned(),
            self.phone.trim_start_matches('+').to_owned(),
            self.contact_id.to_owned(),
        ]
    }

    pub fn pseudonym(&self, deps: &Deps, kind: &str) -> String {
        let id = match kind {
            "email" => Identifier::email(self.email),
            "phone" => Identifier::phone(self.phone, None),
            _ => Identifier::contact_id(self.contact_id),
        }
        .unwrap();
        deps.app_secret
            .key_if_loaded(&acme())
            .expect("the tests load the secret")
            .pseudonym(&id)
            .to_string()
    }
}

/// Puts an import object (SSE-KMS, retention tag) and the subject refs an import
/// would write: one per (identifier of a row, object).
pub async fn put_import_object(
    deps: &Deps,
    import: &str,
    name: &str,
    body: &str,
    refs: &[(&Person, &str)],
) -> String {
    let key = format!("imports/acme/{import}/{name}");
    deps.s3
        .put_object()
        .bucket(&deps.config.imports_bucket)
        .key(&key)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(&deps.config.data_key_id)
        .tagging("retention-class=import-30d")
        .send()
        .await
        .unwrap();
    for (person, kind) in refs {
        let subject_ref = SubjectRef {
            tenant: acme(),
            pseudonym: person.pseudonym(deps, kind),
            source: Source::ImportObject,
            source_id: format!("{import}/{name}"),
            object_key: Some(key.clone()),
            count: 1,
            expires_at: Some((Utc::now() + chrono::Duration::days(30)).timestamp()),
        };
        deps.store.put(&subject_ref).await.unwrap();
    }
    key
}

pub const IMPORT_CSV: &str = "01JH1111111111111111111111";
pub const IMPORT_JSONL: &str = "01JH2222222222222222222222";
pub const IMPORT_ROWS: &str = "01JH3333333333333333333333";

/// Ann, Bob and Cara across a CSV upload, a JSON Lines upload and a rows batch;
/// Ann is named by email in the CSV, by phone in the JSONL and by contact id in the
/// batch. Returns the three object keys.
pub async fn seed_imports(deps: &Deps) -> Vec<String> {
    let csv = format!(
        "name,email,city\n{},{},Leeds\n\"{}\",{},York\n{},{},Bath\n",
        ANN.name,
        ANN.email.to_uppercase(),
        BOB.name,
        BOB.email,
        CARA.name,
        CARA.email
    );
    let jsonl = format!(
        "{}\n{}\n",
        json!({"name": ANN.name, "phone": "+44 7700 900101", "note": "prefers phone"}),
        json!({"name": BOB.name, "phone": BOB.phone, "note": "x"}),
    );
    let rows = format!(
        "{}\n{}\n",
        json!({"contact_id": ANN.contact_id, "full_name": ANN.name, "score": 7}),
        json!({"contact_id": CARA.contact_id, "full_name": CARA.name, "score": 3}),
    );
    vec![
        put_import_object(
            deps,
            IMPORT_CSV,
            "upload.csv",
            &csv,
            &[(&ANN, "email"), (&BOB, "email"), (&CARA, "email")],
        )
        .await,
        put_import_object(
            deps,
            IMPORT_JSONL,
            "upload.jsonl",
            &jsonl,
            &[(&ANN, "phone"), (&BOB, "phone")],
        )
        .await,
        put_import_object(
            deps,
            IMPORT_ROWS,
            "rows/00000001.jsonl",
            &rows,
            &[(&ANN, "contact_id"), (&CARA, "contact_id")],
        )
        .await,
    ]
}

pub async fn put_consent(deps: &Deps, person: &Person, purpose: &str, state: &str) {
    let body = json!({
        "subject": { "email": person.email },
        "purpose": purpose,
        "state": state,
        "source": "web_form",
        "policy_version": "2025-01",
    });
    let (status, out) = call(
        deps,
        request(
            event!("put_privacy_consent"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
}

/// Files a request as an admin (no subject verification) and returns its id.
pub async fn file_request(deps: &Deps, route: &str, person: &Person, regulation: &str) -> String {
    let event = match route {
        "export" => event!("post_privacy_export"),
        _ => event!("post_privacy_delete"),
    };
    let body = json!({ "subject": person.subject(), "regulation": regulation, "note": format!("asked by {}", person.name) });
    let (status, out) = call(deps, request(event, "acme", "admin", Some(body), None)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    out["id"].as_str().unwrap().to_owned()
}

/// Delivers the stream record of a pending request, as the event source would.
pub async fn deliver(deps: &Deps, id: &str) {
    let response = dsar::handle_stream(
        deps,
        stream_event("acme", id, "pending"),
        dsar::Budget::Unlimited,
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
}

/// Every item of a table as text.
pub async fn table_dump(client: &aws_sdk_dynamodb::Client, table: &str) -> String {
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    let mut dump = String::new();
    loop {
        let out = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap();
        for item in out.items.unwrap_or_default() {
            dump.push_str(&format!("{item:?}\n"));
        }
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return dump,
        }
    }
}

/// Every version of every object of a bucket: (key, version id, body).
pub async fn bucket_versions(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
) -> Vec<(String, String, String)> {
    let out = s3
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let mut all = Vec::new();
    for version in out.versions() {
        let key = version.key().unwrap().to_owned();
        let version_id = version.version_id().unwrap_or("null").to_owned();
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(&key)
            .version_id(&version_id)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        all.push((key, version_id, String::from_utf8_lossy(&body).into_owned()));
    }
    all
}

pub async fn current_object(deps: &Deps, key: &str) -> String {
    dsar::files::read_object(deps, key)
        .await
        .unwrap()
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap_or_default()
}

pub fn contains_any(haystack: &str, needles: &[String]) -> Option<String> {
    let lower = haystack.to_lowercase();
    needles
        .iter()
        .find(|n| lower.contains(&n.to_lowercase()))
        .cloned()
}

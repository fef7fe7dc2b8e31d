//! Every route for every role, through the local HTTP API with real tokens: a role
//! below the route's `x-required-role` in openapi.yaml gets 403, a role at or above
//! it never does (and never a 5xx for a request the caller got wrong). openapi.yaml
//! is the statement; the running functions must agree with it.
//!
//! The matrix that openapi.yaml states: viewers read metadata; raw data (import
//! downloads, access-bundle links) and verification need an operator; settings,
//! connections, privacy requests and deletions an admin.

use custody_local::stack::{LocalStack, StackOptions};
use reqwest::Method;
use serde_yaml::Value;

const ROLES: [&str; 3] = ["viewer", "operator", "admin"];
/// A tenant of its own, so nothing a call does touches another test's data.
const TENANT: &str = "rolematrix";
/// A well-formed id nothing has.
const ABSENT_ID: &str = "01jc0000000000000000000000";

fn rank(role: &str) -> usize {
    ROLES
        .iter()
        .position(|r| *r == role)
        .unwrap_or_else(|| panic!("openapi.yaml names an unknown role {role}"))
}

/// (method, path, required role) of every route that needs a token.
fn routes() -> Vec<(Method, String, String)> {
    let text = std::fs::read_to_string(custody_local::repo_root().join("openapi.yaml")).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for (path, operations) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        for (method, operation) in operations.as_mapping().unwrap() {
            let Some(method) = method
                .as_str()
                .and_then(|m| m.to_uppercase().parse::<Method>().ok())
                .filter(|_| operation.get("responses").is_some())
            else {
                continue;
            };
            // Public routes (`security: []`) and those with a token of another kind
            // than a login (the embedded importer's import-session token) have no
            // role: only routes under the document's login scheme are in the matrix.
            let security = operation
                .get("security")
                .unwrap_or(&doc["security"])
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            let login = security
                .iter()
                .any(|requirement| requirement.get("oidcJwt").is_some());
            if !login {
                continue;
            }
            let role = operation["x-required-role"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has a token but no x-required-role"))
                .to_owned();
            out.push((method, path.to_owned(), role));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_role_as_openapi_states() {
    custody_local::harness::build_binaries();
    let stack = LocalStack::start(StackOptions::new(custody_local::harness::unique_stage()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let routes = routes();
    assert!(routes.len() >= 25, "{} routes", routes.len());
    let mut checked = 0;
    let mut failures = Vec::new();
    // Admin last: its calls are the ones that may change something.
    for role in ROLES {
        let token = stack.token(TENANT, role);
        for (method, path, required) in &routes {
            let concrete = path
                .replace("{provider}", "highlevel")
                .replace("{id}", ABSENT_ID);
            let mut request = http
                .request(method.clone(), format!("{}{concrete}", stack.base_url))
                .bearer_auth(&token);
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                // An empty object: enough to reach the role check, never a valid
                // request (so an allowed role gets a 4xx, not an effect).
                request = request.json(&serde_json::json!({}));
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let allowed = rank(role) >= rank(required);
            let ok = if allowed {
                status != 403 && status < 500
            } else {
                status == 403 && body.contains("/problems/forbidden")
            };
            if !ok {
                failures.push(format!(
                    "{role} {method} {path} (requires {required}): {status} {body}"
                ));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, routes.len() * ROLES.len());
}

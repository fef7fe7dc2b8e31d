//! openapi.yaml is held to template.yaml: the same routes, the same security (public
//! or JWT), the path parameters each route names, and no dangling `$ref`. No
//! emulator needed. `openapi_rules` holds it to the rules the handlers enforce.

use std::collections::{BTreeMap, BTreeSet};

use custody_local::gateway::{Route, routes};
use serde_yaml::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];
const JWT_SCHEME: &str = "oidcJwt";

pub(crate) fn template_routes() -> Vec<Route> {
    let template =
        custody_local::provision::load_template(&custody_local::template_path()).unwrap();
    let routes = routes(&template);
    assert!(
        !routes.is_empty(),
        "template.yaml declares no HttpApi route"
    );
    routes
}

pub(crate) fn openapi() -> Value {
    let path = custody_local::repo_root().join("openapi.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An operation of the document, with what it needs from its path item.
pub(crate) struct Operation<'a> {
    pub(crate) path_item: &'a Value,
    pub(crate) operation: &'a Value,
}

/// `"GET /connections/{provider}"` → operation, for every operation in `paths`.
pub(crate) fn operations(doc: &Value) -> BTreeMap<String, Operation<'_>> {
    let paths = doc["paths"]
        .as_mapping()
        .expect("openapi.yaml has no paths");
    let mut ops = BTreeMap::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path keys are strings");
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                let key = format!("{} {path}", method.to_ascii_uppercase());
                ops.insert(
                    key,
                    Operation {
                        path_item: item,
                        operation,
                    },
                );
            }
        }
    }
    ops
}

#[derive(Debug, PartialEq, Eq)]
enum Security {
    Public,
    Jwt,
    /// An import-session token, which the function checks itself (the route is
    /// public to API Gateway).
    ImportSession,
}

/// The scheme of the embedded importer's routes.
const SESSION_SCHEME: &str = "importSession";

/// The operation's effective security: its own `security`, else the document's.
/// `[]` (or an empty requirement, "no auth needed") is public.
fn security(doc: &Value, operation: &Value) -> Result<Security, String> {
    let requirements = operation
        .get("security")
        .or_else(|| doc.get("security"))
        .and_then(Value::as_sequence)
        .ok_or("no security, neither on the operation nor the document")?;
    let anonymous = requirements
        .iter()
        .any(|r| r.as_mapping().is_some_and(|m| m.is_empty()));
    let jwt = requirements.iter().any(|r| r.get(JWT_SCHEME).is_some());
    let session = requirements.iter().any(|r| r.get(SESSION_SCHEME).is_some());
    match (anonymous || requirements.is_empty(), jwt, session) {
        (true, false, false) => Ok(Security::Public),
        (false, true, false) => Ok(Security::Jwt),
        (false, false, true) => Ok(Security::ImportSession),
        (false, false, false) => Err(format!("neither public nor {JWT_SCHEME}")),
        _ => Err(format!(
            "more than one of anonymous, {JWT_SCHEME} and {SESSION_SCHEME}"
        )),
    }
}

/// The value a local `$ref` (`#/components/...`) points at.
pub(crate) fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(doc);
    }
    let mut current = doc;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        current = match current {
            Value::Mapping(map) => map.get(token.as_str())?,
            Value::Sequence(items) => items.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Every `$ref` string anywhere in `value`, with where it was found.
fn refs<'a>(value: &'a Value, at: &str, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let key = key.as_str().unwrap_or("?");
                if key == "$ref"
                    && let Some(target) = child.as_str()
                {
                    found.push((at.to_owned(), target));
                }
                refs(child, &format!("{at}/{key}"), found);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// The names of the path parameters declared on the path item and the operation
/// (following `$ref`s to `components/parameters`).
fn declared_path_params(doc: &Value, op: &Operation<'_>) -> BTreeSet<String> {
    [op.path_item, op.operation]
        .into_iter()
        .filter_map(|v| v.get("parameters").and_then(Value::as_sequence))
        .flatten()
        .filter_map(|p| match p.get("$ref").and_then(Value::as_str) {
            Some(reference) => resolve(doc, reference),
            None => Some(p),
        })
        .filter(|p| p["in"].as_str() == Some("path"))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

fn path_template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect()
}

#[test]
fn openapi_documents_exactly_the_template_routes_with_their_security() {
    let doc = openapi();
    let ops = operations(&doc);
    let routes = template_routes();
    let mut problems = Vec::new();

    let declared: BTreeSet<String> = routes.iter().map(Route::key).collect();
    for route in &routes {
        let key = route.key();
        let Some(op) = ops.get(&key) else {
            problems.push(format!(
                "{key} ({}) is in template.yaml but not in openapi.yaml",
                route.function
            ));
            continue;
        };
        let got = match security(&doc, op.operation) {
            Ok(got) => got,
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                continue;
            }
        };
        // A route API Gateway leaves open is public, or checks a session token itself.
        let matches = match got {
            Security::Public | Security::ImportSession => route.public,
            Security::Jwt => !route.public,
        };
        if !matches {
            problems.push(format!(
                "{key}: openapi.yaml says {got:?}, template.yaml says {}",
                if route.public { "public" } else { "JWT" }
            ));
        }
        if got != Security::Public && op.operation["responses"].get("401").is_none() {
            problems.push(format!(
                "{key}: an authenticated route must document its 401"
            ));
        }
        if got == Security::ImportSession && op.operation["responses"].get("403").is_none() {
            problems.push(format!(
                "{key}: a session route must document its 403 (wrong origin)"
            ));
        }
        if got == Security::ImportSession && !key.contains(" /embed/") {
            problems.push(format!("{key}: import sessions serve /embed/ routes only"));
        }
    }
    for key in ops.keys() {
        if !declared.contains(key) {
            problems.push(format!(
                "{key} is in openapi.yaml but not an HttpApi event of template.yaml"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn openapi_jwt_scheme_is_a_bearer_jwt() {
    let doc = openapi();
    let scheme = &doc["components"]["securitySchemes"][JWT_SCHEME];
    assert_eq!(scheme["type"].as_str(), Some("http"));
    assert_eq!(scheme["scheme"].as_str(), Some("bearer"));
    assert_eq!(scheme["bearerFormat"].as_str(), Some("JWT"));
}

#[test]
fn openapi_path_parameters_match_each_path() {
    let doc = openapi();
    let mut problems = Vec::new();
    for (key, op) in &operations(&doc) {
        let path = key.split_once(' ').map(|(_, p)| p).unwrap_or_default();
        let want = path_template_params(path);
        let got = declared_path_params(&doc, op);
        if want != got {
            problems.push(format!(
                "{key}: path names {want:?}, parameters declare {got:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn openapi_refs_all_resolve() {
    let doc = openapi();
    let mut found = Vec::new();
    refs(&doc, "#", &mut found);
    assert!(!found.is_empty(), "no $ref at all: the walk is broken");
    let dangling: Vec<String> = found
        .iter()
        .filter(|(_, target)| resolve(&doc, target).is_none())
        .map(|(at, target)| format!("{at}: $ref {target} does not resolve"))
        .collect();
    assert!(dangling.is_empty(), "\n{}", dangling.join("\n"));

    // The resolver itself: a known target resolves, a missing one does not.
    assert!(resolve(&doc, "#/components/schemas/Problem").is_some());
    assert!(resolve(&doc, "#/components/schemas/NoSuchSchema").is_none());
    assert!(resolve(&doc, "other.yaml#/x").is_none());
}

/// Subject identifiers never travel in a URL (query strings end up in access logs,
/// browser history and proxies): no operation takes one as a path or query parameter.
#[test]
fn no_route_takes_a_subject_identifier_in_the_url() {
    let doc = openapi();
    let identifiers = ["email", "phone", "contact_id", "subject", "name"];
    for (key, op) in operations(&doc) {
        let parameters = op
            .operation
            .get("parameters")
            .into_iter()
            .chain(op.path_item.get("parameters"))
            .filter_map(Value::as_sequence)
            .flatten();
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap_or_default();
            assert!(
                !identifiers.contains(&name),
                "{key} takes the identifier {name} in the URL"
            );
        }
    }
}

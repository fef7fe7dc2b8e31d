//! openapi.yaml states every rule the server enforces on a request, for the routes of
//! every function:
//!
//! - every field a handler can name in a 400 is a property of the route's request
//!   body or one of its parameters: a static scan of the source finds every
//!   `bad_request(…)` and `with_field(…)` call, and [`field_rules`] maps each call
//!   site (file, function, first argument) to the fields it can name and the routes
//!   that reach it; an unmapped call site fails, so a new rule cannot go undocumented;
//! - every numeric limit the request schemas state (`maxLength`, `maxItems`,
//!   `maximum`, `x-max-body-bytes`, `x-max-row-bytes`) is listed in [`limits`] with the
//!   Rust constant it comes from, and equals it;
//! - every route documents, as problem+json, the 4xx its input can cause;
//! - the enums the server parses are the Rust ones.
//!
//! No emulator needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use custody::highlevel::Channel;
use custody::retention::RetentionClass;
use serde_yaml::Value;

use custody_local::gateway::Route;

use super::openapi::{Operation, openapi, operations, resolve, template_routes};

/// The functions whose routes are held: all of them.
const HELD_FUNCTIONS: [&str; 4] = ["export", "import", "dsar", "oauth"];

/// The route keys (`"PUT /export/settings"`) of the held functions, from
/// template.yaml.
fn held_routes() -> BTreeSet<String> {
    let routes = template_routes();
    let function_of = |route: &Route| {
        let name = route.function.to_ascii_lowercase();
        let name = name.strip_suffix("function").unwrap_or(&name);
        // The dsar-api function serves the dsar crate's routes (functions/dsar-api).
        if name == "dsar-api" { "dsar" } else { name }.to_owned()
    };
    for function in HELD_FUNCTIONS {
        assert!(
            routes.iter().any(|route| function_of(route) == function),
            "template.yaml routes nothing to the {function} function"
        );
    }
    routes
        .iter()
        .filter(|route| HELD_FUNCTIONS.contains(&function_of(route).as_str()))
        .map(Route::key)
        .collect()
}

// ---------------------------------------------------------------------------------
// The source: where a request rule names a field
// ---------------------------------------------------------------------------------

/// The folders whose request rules are held.
const SCANNED: [&str; 5] = [
    "functions/export/src",
    "functions/import/src",
    "functions/dsar/src",
    "functions/oauth/src",
    "shared/src",
];
/// Left out: the two files that define the constructors, whose own fields (`body`, a
/// path parameter's name) are checked per route by
/// `every_route_documents_the_4xx_its_input_can_cause`.
const NOT_SCANNED: [&str; 2] = ["shared/src/edge/api.rs", "shared/src/kernel/http.rs"];
const MARKERS: [&str; 2] = ["bad_request(", "with_field("];

/// One call that names a field: in `file` (relative to the repository), inside
/// `function`, with `arg` (its first argument, as written) as the field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    file: String,
    function: String,
    arg: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The first argument of a call whose `(` was just consumed: up to the first `,` or
/// `)` outside brackets and string literals, whitespace collapsed.
fn first_argument(after_paren: &str) -> String {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut end = after_paren.len();
    for (i, c) in after_paren.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => {
                end = i;
                break;
            }
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    after_paren[..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The name of the last `fn` declared before the end of `code`.
fn enclosing_fn(code: &str) -> String {
    code.lines()
        .rev()
        .find_map(|line| {
            let mut rest = line.trim_start();
            for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async "] {
                rest = rest.strip_prefix(prefix).unwrap_or(rest);
            }
            let name = rest.strip_prefix("fn ")?;
            let end = name
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(name.len());
            Some(name[..end].to_owned())
        })
        .unwrap_or_default()
}

/// Every call naming a field in the non-test code of the scanned folders.
fn sites() -> Vec<Site> {
    let root = custody_local::repo_root();
    let mut files = Vec::new();
    for dir in SCANNED {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(&root)
            .expect("under the repository")
            .to_string_lossy()
            .replace('\\', "/");
        if NOT_SCANNED.iter().any(|prefix| file.starts_with(prefix)) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        // Unit tests name fields too; they are not rules.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for marker in MARKERS {
            for (at, _) in code.match_indices(marker) {
                if code[..at].ends_with("fn ") {
                    continue;
                }
                found.push(Site {
                    file: file.clone(),
                    function: enclosing_fn(&code[..at]),
                    arg: first_argument(&code[at + marker.len()..]),
                });
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Call sites naming a field, each with the fields it can name and the routes whose
/// requests reach it.
struct FieldRule {
    file: &'static str,
    function: &'static str,
    arg: String,
    fields: Vec<String>,
    routes: &'static [&'static str],
}

impl FieldRule {
    fn matches(&self, site: &Site) -> bool {
        site.file == self.file && site.function == self.function && site.arg == self.arg
    }
}

/// Calls whose first argument is a string literal: the literal is the field.
fn literals(
    file: &'static str,
    function: &'static str,
    fields: &[&str],
    routes: &'static [&'static str],
) -> Vec<FieldRule> {
    fields
        .iter()
        .map(|field| FieldRule {
            file,
            function,
            arg: format!("\"{field}\""),
            fields: vec![(*field).to_owned()],
            routes,
        })
        .collect()
}

/// A call whose first argument is computed: `fields` is every value it can take.
fn computed(
    file: &'static str,
    function: &'static str,
    arg: &str,
    fields: Vec<String>,
    routes: &'static [&'static str],
) -> Vec<FieldRule> {
    vec![FieldRule {
        file,
        function,
        arg: arg.to_owned(),
        fields,
        routes,
    }]
}

const EXPORT_SETTINGS: &[&str] = &["PUT /export/settings"];
const NAMES_A_DESTINATION: &[&str] = &["PUT /export/settings", "POST /export/destination/test"];
/// The embedded importer's routes take the same bodies (but the destination).
const CREATE_IMPORT: &[&str] = &["POST /imports", "POST /embed/imports"];
const IMPORT_ROWS: &[&str] = &["POST /imports/{id}/rows", "POST /embed/imports/{id}/rows"];
/// Where an import's destination (URL and secret) is named.
const NAMES_AN_IMPORT_DESTINATION: &[&str] = &["POST /imports", "POST /import-sessions"];
const MINT_SESSION: &[&str] = &["POST /import-sessions"];
const CREATE_PRIVACY_REQUEST: &[&str] = &[
    "POST /privacy/export",
    "POST /privacy/delete",
    "POST /privacy/restrict",
    "POST /privacy/rectify",
];
const RECTIFY: &[&str] = &["POST /privacy/rectify"];
const LIFT: &[&str] = &["POST /privacy/requests/{id}/lift"];
const PRIVACY_SETTINGS: &[&str] = &["PUT /privacy/settings"];
const EXTEND: &[&str] = &["POST /privacy/requests/{id}/extend"];
const PUT_CONSENT: &[&str] = &["PUT /privacy/consent"];
const NAMES_A_SUBJECT: &[&str] = &[
    "POST /privacy/export",
    "POST /privacy/delete",
    "POST /privacy/restrict",
    "POST /privacy/rectify",
    "POST /privacy/consent/lookup",
    "PUT /privacy/consent",
];

fn field_rules() -> Vec<FieldRule> {
    const DSAR: &str = "functions/dsar/src/routes.rs";
    const EXPORT: &str = "functions/export/src/settings.rs";
    const IMPORT: &str = "functions/import/src/http.rs";

    // `identifiers.email[1]`: every place IdentifierFields::fields() names, from the
    // type itself.
    let declared = custody::imports::IdentifierFields {
        email: vec!["email".into()],
        phone: vec!["phone".into()],
        contact_id: vec!["id".into()],
    };
    let places: Vec<String> = declared
        .fields()
        .map(|(_, place, _)| format!("identifiers.{place}"))
        .collect();
    assert_eq!(places.len(), 3, "one place per identifier kind");
    // `subject.email`, …, and the country code of a national phone number.
    let subject_fields: Vec<String> = [
        custody::subject::IdentifierKind::Email,
        custody::subject::IdentifierKind::Phone,
        custody::subject::IdentifierKind::ContactId,
    ]
    .iter()
    .map(|kind| kind.as_str())
    .chain(["default_country_code"])
    .map(|at| format!("subject.{at}"))
    .collect();

    let mut rules = Vec::new();
    // dsar
    // The audit log's reader (in the export function).
    const AUDIT_LOG: &str = "functions/export/src/audit_log.rs";
    rules.extend(literals(
        AUDIT_LOG,
        "page_query",
        &["class", "limit", "before", "action", "to"],
        &["GET /audit"],
    ));
    rules.extend(computed(
        AUDIT_LOG,
        "time_param",
        "name",
        vec!["from".into(), "to".into()],
        &["GET /audit"],
    ));
    // oauth
    const OAUTH_FN: &str = "functions/oauth/src/lib.rs";
    const OAUTH: &str = "shared/src/domain/oauth.rs";
    const FLOW: &str = "shared/src/domain/oauth/flow.rs";
    const INSTALL: &str = "shared/src/domain/oauth/install.rs";
    const HL_WEBHOOK: &str = "shared/src/domain/oauth/webhook.rs";
    const CLAIM: &[&str] = &["POST /installations/{provider}/claim"];
    const HL_EVENT: &[&str] = &["POST /webhooks/highlevel"];
    rules.extend(literals(
        OAUTH_FN,
        "callback",
        &["state"],
        &["GET /oauth/{provider}/callback"],
    ));
    // An unknown provider, wherever a path names one.
    rules.extend(literals(
        OAUTH,
        "answer",
        &["provider"],
        &[
            "GET /connect/{provider}",
            "GET /oauth/{provider}/callback",
            "DELETE /connections/{provider}",
            "POST /installations/{provider}/claim",
        ],
    ));
    rules.extend(literals(
        FLOW,
        "answer",
        &["return_url"],
        &["GET /connect/{provider}"],
    ));
    rules.extend(literals(
        INSTALL,
        "answer",
        &["claim_token", "installation"],
        CLAIM,
    ));
    rules.extend(computed(
        INSTALL,
        "answer",
        "*field",
        vec!["installation".into(), "claim_token".into()],
        CLAIM,
    ));
    rules.extend(computed(
        INSTALL,
        "answer",
        "INSTALL_COOKIE",
        vec![custody::oauth::install::INSTALL_COOKIE.into()],
        CLAIM,
    ));
    rules.extend(literals(
        HL_WEBHOOK,
        "answer",
        &["timestamp", "webhookId"],
        HL_EVENT,
    ));
    rules.extend(computed(
        HL_WEBHOOK,
        "answer",
        "*field",
        ["body", "webhookId", "timestamp", "locationId", "companyId"]
            .map(str::to_owned)
            .to_vec(),
        HL_EVENT,
    ));
    rules.extend(computed(
        DSAR,
        "identifiers",
        "format!(\"{field}.{at}\")",
        subject_fields,
        NAMES_A_SUBJECT,
    ));
    rules.extend(computed(
        DSAR,
        "identifiers",
        "field",
        vec!["subject".into()],
        NAMES_A_SUBJECT,
    ));
    rules.extend(computed(
        DSAR,
        "check_text",
        "field",
        vec!["note".into()],
        CREATE_PRIVACY_REQUEST,
    ));
    rules.extend(computed(
        DSAR,
        "check_consent_text",
        "field",
        vec!["source".into(), "policy_version".into()],
        PUT_CONSENT,
    ));
    rules.extend(literals(
        DSAR,
        "create",
        &["received_at", "ground", "verify_subject", "corrections"],
        CREATE_PRIVACY_REQUEST,
    ));
    rules.extend(literals(
        DSAR,
        "parse_corrections",
        &["corrections"],
        RECTIFY,
    ));
    rules.extend(computed(
        DSAR,
        "parse_corrections",
        "format!(\"corrections.{at}\")",
        ["email", "phone", "contact_id"]
            .iter()
            .map(|kind| format!("corrections.{kind}"))
            .collect(),
        RECTIFY,
    ));
    rules.extend(computed(
        DSAR,
        "check_text",
        "field",
        vec!["reason".into()],
        LIFT,
    ));
    rules.extend(literals(DSAR, "lift", &["reason"], LIFT));
    rules.extend(literals(
        DSAR,
        "put_settings",
        &["purposes"],
        PRIVACY_SETTINGS,
    ));
    rules.extend(computed(
        DSAR,
        "put_settings",
        "format!(\"purposes[{i}]\")",
        vec!["purposes[0]".into()],
        PRIVACY_SETTINGS,
    ));
    rules.extend(literals(
        DSAR,
        "verify",
        &["code"],
        &["POST /privacy/requests/{id}/verify"],
    ));
    rules.extend(literals(DSAR, "extend", &["days", "months"], EXTEND));
    rules.extend(literals(
        DSAR,
        "put_consent",
        &["purpose", "subject"],
        PUT_CONSENT,
    ));
    rules.extend(literals(
        DSAR,
        "put_settings",
        &[
            "time_zone",
            "verification_webhook.url",
            "verification_webhook.secret",
        ],
        &["PUT /privacy/settings"],
    ));
    rules.extend(literals(
        "functions/dsar/src/notices.rs",
        "prepare_webhook",
        &["notification_webhook.url", "notification_webhook.secret"],
        PRIVACY_SETTINGS,
    ));
    rules.extend(literals(
        "functions/dsar/src/notices.rs",
        "prepare_email",
        &["notification_email"],
        PRIVACY_SETTINGS,
    ));
    rules.extend(literals(
        DSAR,
        "delete_account",
        &["confirm"],
        &["DELETE /account"],
    ));
    // export
    rules.extend(literals(
        EXPORT,
        "validate",
        &[
            "schedule.timezone",
            "channels",
            "date_range.initial_days",
            "date_range.days",
            "date_range.end",
        ],
        EXPORT_SETTINGS,
    ));
    // The destination's own rules: for the settings and for the destination test.
    rules.extend(literals(
        EXPORT,
        "validate_destination",
        &[
            "destination.url",
            "destination.username",
            "destination.password",
            "destination.bucket",
            "destination.prefix",
            "destination.role_arn",
        ],
        NAMES_A_DESTINATION,
    ));
    rules.extend(literals(
        "functions/export/src/routes.rs",
        "test_destination",
        &["destination.password", "destination.url"],
        &["POST /export/destination/test"],
    ));
    rules.extend(computed(
        EXPORT,
        "validate_expression",
        "field",
        vec!["schedule.expression".into()],
        EXPORT_SETTINGS,
    ));
    rules.extend(literals(
        "functions/export/src/routes.rs",
        "put_settings",
        &["destination.password"],
        EXPORT_SETTINGS,
    ));
    rules.extend(literals(
        "functions/export/src/routes.rs",
        "list_runs",
        &["limit"],
        &["GET /export/runs"],
    ));
    rules.extend(literals(
        "functions/export/src/customer_role.rs",
        "answer",
        &["destination.role_arn"],
        NAMES_A_DESTINATION,
    ));
    // import
    rules.extend(literals(
        IMPORT,
        "create",
        &[
            "retention_class",
            "size",
            "required_columns",
            "default_country_code",
            "destination",
        ],
        CREATE_IMPORT,
    ));
    rules.extend(computed(
        IMPORT,
        "create",
        "format!(\"required_columns[{index}]\")",
        vec!["required_columns[0]".into()],
        CREATE_IMPORT,
    ));
    rules.extend(computed(
        IMPORT,
        "create",
        "field",
        std::iter::once("identifiers".to_owned())
            .chain(places.iter().cloned())
            .collect(),
        CREATE_IMPORT,
    ));
    rules.extend(computed(
        IMPORT,
        "create",
        "format!(\"identifiers.{place}\")",
        places,
        CREATE_IMPORT,
    ));
    rules.extend(literals(
        IMPORT,
        "declared_purpose",
        &["purpose"],
        CREATE_IMPORT,
    ));
    rules.extend(literals(IMPORT, "list", &["limit"], &["GET /imports"]));
    rules.extend(literals(IMPORT, "post_rows", &["body"], IMPORT_ROWS));
    rules.extend(computed(
        IMPORT,
        "post_rows",
        "IDEMPOTENCY_KEY_HEADER",
        vec![import::http::IDEMPOTENCY_KEY_HEADER.into()],
        IMPORT_ROWS,
    ));
    // shared: the answers of error types, reached through `?`
    rules.extend(literals(
        "shared/src/domain/privacy.rs",
        "answer",
        &["reason", "months"],
        EXTEND,
    ));
    rules.extend(literals(
        "shared/src/domain/privacy.rs",
        "answer",
        &["purpose"],
        PUT_CONSENT,
    ));
    rules.extend(literals(
        "shared/src/domain/webhook.rs",
        "answer",
        &["destination.url", "destination.secret"],
        NAMES_AN_IMPORT_DESTINATION,
    ));
    rules.extend(computed(
        "shared/src/domain/import_session.rs",
        "answer",
        "*field",
        vec!["origin".into(), "lifetime_minutes".into()],
        MINT_SESSION,
    ));
    rules.extend(literals(
        "shared/src/kernel/idempotency.rs",
        "answer",
        &["idempotency-key"],
        IMPORT_ROWS,
    ));
    rules.extend(literals(
        "shared/src/kernel/store.rs",
        "answer",
        &["cursor"],
        &["GET /export/runs", "GET /imports"],
    ));
    // No request reaches it: every secret is held to its bounds before it is sealed
    // (`every_secret_is_bounded_before_it_is_sealed`).
    rules.extend(literals(
        "shared/src/kernel/seal.rs",
        "answer",
        &["secret"],
        &[],
    ));
    rules
}

// ---------------------------------------------------------------------------------
// The document: what a route's request declares
// ---------------------------------------------------------------------------------

/// `schema` with its `$ref`s followed.
fn deref<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve(doc, reference)
            .map(|target| deref(doc, target))
            .unwrap_or(schema),
        None => schema,
    }
}

/// The schemas `schema` stands for: itself and, recursively, the members of its
/// `oneOf`/`anyOf`/`allOf` (and, with `conditional`, its `then`/`else`).
fn alternatives<'a>(
    doc: &'a Value,
    schema: &'a Value,
    conditional: bool,
    out: &mut Vec<&'a Value>,
) {
    let schema = deref(doc, schema);
    out.push(schema);
    for key in ["oneOf", "anyOf", "allOf"] {
        for member in schema
            .get(key)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            alternatives(doc, member, conditional, out);
        }
    }
    if conditional {
        for key in ["then", "else"] {
            if let Some(branch) = schema.get(key) {
                alternatives(doc, branch, conditional, out);
            }
        }
    }
}

fn request_body<'a>(doc: &'a Value, op: &Operation<'a>) -> Option<&'a Value> {
    op.operation.get("requestBody").map(|body| deref(doc, body))
}

fn request_schema<'a>(doc: &'a Value, op: &Operation<'a>) -> Option<&'a Value> {
    request_body(doc, op)?
        .get("content")?
        .get("application/json")?
        .get("schema")
}

/// The parameters of the path item and the operation, `$ref`s followed.
fn parameters<'a>(doc: &'a Value, op: &Operation<'a>) -> Vec<&'a Value> {
    [op.path_item, op.operation]
        .into_iter()
        .filter_map(|v| v.get("parameters").and_then(Value::as_sequence))
        .flatten()
        .map(|p| deref(doc, p))
        .collect()
}

/// `identifiers.email[1]` → `identifiers.email`: a list's items are its property's.
fn without_indexes(field: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::new();
    for c in field.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Whether `schema` has the property path `segments` (through its alternatives).
fn has_property(doc: &Value, schema: &Value, segments: &[&str]) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return true;
    };
    let mut alts = Vec::new();
    alternatives(doc, schema, false, &mut alts);
    alts.iter().any(|alt| {
        alt.get("properties")
            .and_then(|props| props.get(*first))
            .is_some_and(|property| has_property(doc, property, rest))
    })
}

/// Whether the route's request declares `field`: `body` (the body as a whole), a
/// parameter (a header's name in any case), or a property path of the JSON body.
fn declares(doc: &Value, op: &Operation<'_>, field: &str) -> bool {
    let field = without_indexes(field);
    if field == "body" {
        return request_schema(doc, op).is_some();
    }
    let parameter = parameters(doc, op).iter().any(|p| {
        p["name"]
            .as_str()
            .is_some_and(|name| name.eq_ignore_ascii_case(&field))
    });
    parameter
        || request_schema(doc, op).is_some_and(|schema| {
            let segments: Vec<&str> = field.split('.').collect();
            has_property(doc, schema, &segments)
        })
}

#[test]
fn every_field_a_handler_names_in_a_400_is_in_the_routes_request() {
    let doc = openapi();
    let ops = operations(&doc);
    let found = sites();
    let rules = field_rules();
    // The scan itself: it finds calls, with their function and argument.
    assert!(
        found.len() >= 40,
        "the scan found only {} call sites: it is broken",
        found.len()
    );
    assert!(found.contains(&Site {
        file: "functions/export/src/settings.rs".into(),
        function: "validate_expression".into(),
        arg: "field".into(),
    }));

    let mut problems = Vec::new();
    for site in &found {
        if !rules.iter().any(|rule| rule.matches(site)) {
            problems.push(format!(
                "{} (fn {}) names the field {} in a 4xx: map it to the fields it can be and its routes in field_rules()",
                site.file, site.function, site.arg
            ));
        }
    }
    for rule in &rules {
        if !found.iter().any(|site| rule.matches(site)) {
            problems.push(format!(
                "field_rules() maps {} (fn {}) {}, which the source no longer has",
                rule.file, rule.function, rule.arg
            ));
        }
        for route in rule.routes {
            let Some(op) = ops.get(*route) else {
                problems.push(format!("field_rules() names {route}, not in openapi.yaml"));
                continue;
            };
            for field in &rule.fields {
                if !declares(&doc, op, field) {
                    problems.push(format!(
                        "{route} can answer 400 naming `{field}` ({}, fn {}), which its request in openapi.yaml does not declare",
                        rule.file, rule.function
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The checker itself: a field the document lacks is reported, an index is the
/// list's property, a header matches in any case.
#[test]
fn declares_finds_what_is_there_and_only_that() {
    let doc = openapi();
    let ops = operations(&doc);
    let create = &ops["POST /imports"];
    assert!(declares(&doc, create, "destination.url"));
    assert!(declares(&doc, create, "identifiers.email[3]"));
    assert!(declares(&doc, create, "required_columns[0]"));
    assert!(declares(&doc, create, "body"));
    assert!(!declares(&doc, create, "destination.nope"));
    assert!(!declares(&doc, create, "cursor"));
    assert!(declares(
        &doc,
        &ops["POST /imports/{id}/rows"],
        "Idempotency-Key"
    ));
    assert!(declares(&doc, &ops["GET /imports"], "cursor"));
    assert!(!declares(&doc, &ops["GET /imports"], "body"));
    // Through oneOf: the S3 alternative of the destination.
    assert!(declares(
        &doc,
        &ops["PUT /export/settings"],
        "destination.role_arn"
    ));
    assert_eq!(
        first_argument(" format!(\"{a}.{b}\", x), \"detail\")"),
        "format!(\"{a}.{b}\", x)"
    );
    assert_eq!(first_argument("\"a,b\")"), "\"a,b\"");
    assert_eq!(
        enclosing_fn("impl X {\n    pub async fn put_settings(\n        deps"),
        "put_settings"
    );
}

// ---------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------

/// Keywords stating a limit: each occurrence in a held route's request must be in
/// [`limits`].
const LIMIT_KEYWORDS: [&str; 5] = [
    "maxLength",
    "maxItems",
    "maximum",
    "x-max-body-bytes",
    "x-max-row-bytes",
];
/// Checked where [`limits`] names them.
const OTHER_KEYWORDS: [&str; 3] = ["minLength", "minimum", "default"];

/// A number the document states for a route's request: at `at` (a property path,
/// `[]` for a list's items, a parameter's name, or empty for the body), `keyword` is
/// `value`, a Rust constant.
struct Limit {
    route: &'static str,
    at: &'static str,
    keyword: &'static str,
    value: u64,
}

fn limit(route: &'static str, at: &'static str, keyword: &'static str, value: u64) -> Limit {
    Limit {
        route,
        at,
        keyword,
        value,
    }
}

fn positive(value: i64) -> u64 {
    u64::try_from(value).expect("a limit is positive")
}

fn limits() -> Vec<Limit> {
    use custody::imports::{
        MAX_COLUMN_NAME_LEN, MAX_IDENTIFIER_FIELDS, MAX_POINTER_LEN, MAX_ROW_BYTES,
        MAX_UPLOAD_BYTES,
    };
    use custody::privacy::{
        CCPA_MAX_EXTENSION_DAYS, GDPR_MAX_EXTENSION_MONTHS, MAX_CONSENT_TEXT_LEN, MAX_PURPOSE_LEN,
        MAX_TEXT_LEN,
    };
    use custody::subject::{MAX_CONTACT_ID_LEN, MAX_EMAIL_LEN};
    use custody::webhook::{MAX_BATCH_ROWS, MAX_SECRET_LEN, MIN_SECRET_LEN};
    use export::settings as export_settings;
    use import::http as import_http;

    const SETTINGS: &str = "PUT /export/settings";
    const CREATE: &str = "POST /imports";
    const ROWS: &str = "POST /imports/{id}/rows";
    const EMBED_CREATE: &str = "POST /embed/imports";
    const EMBED_ROWS: &str = "POST /embed/imports/{id}/rows";
    const MINT: &str = "POST /import-sessions";
    let dsar_body = dsar::routes::MAX_BODY as u64;

    // The destination's limits hold wherever a destination is named.
    const TEST_DESTINATION: &str = "POST /export/destination/test";
    let mut all: Vec<Limit> = [SETTINGS, TEST_DESTINATION]
        .into_iter()
        .flat_map(|route| {
            [
                limit(
                    route,
                    "",
                    "x-max-body-bytes",
                    export_settings::MAX_BODY_BYTES as u64,
                ),
                limit(
                    route,
                    "destination.username",
                    "maxLength",
                    export_settings::MAX_USERNAME_CHARS as u64,
                ),
                limit(
                    route,
                    "destination.password",
                    "maxLength",
                    export_settings::MAX_PASSWORD_BYTES as u64,
                ),
                limit(
                    route,
                    "destination.prefix",
                    "maxLength",
                    export_settings::MAX_PREFIX_BYTES as u64,
                ),
                limit(
                    route,
                    "destination.bucket",
                    "maxLength",
                    export_settings::MAX_BUCKET_LEN as u64,
                ),
                limit(
                    route,
                    "destination.bucket",
                    "minLength",
                    export_settings::MIN_BUCKET_LEN as u64,
                ),
            ]
        })
        .collect();
    all.extend([
        limit(
            SETTINGS,
            "date_range.initial_days",
            "maximum",
            u64::from(export_settings::MAX_DAYS),
        ),
        limit(
            SETTINGS,
            "date_range.days",
            "maximum",
            u64::from(export_settings::MAX_DAYS),
        ),
        limit(
            "GET /export/runs",
            "limit",
            "maximum",
            positive(export::routes::MAX_RUNS_PAGE.into()),
        ),
        limit(
            "GET /export/runs",
            "limit",
            "default",
            positive(export::routes::DEFAULT_RUNS_PAGE.into()),
        ),
        limit(
            CREATE,
            "",
            "x-max-body-bytes",
            import_http::MAX_CREATE_BODY_BYTES as u64,
        ),
        limit(CREATE, "size", "maximum", MAX_UPLOAD_BYTES),
        limit(CREATE, "purpose", "maxLength", MAX_PURPOSE_LEN as u64),
        limit(
            CREATE,
            "required_columns",
            "maxItems",
            import_http::MAX_REQUIRED_COLUMNS as u64,
        ),
        limit(
            CREATE,
            "required_columns[]",
            "maxLength",
            MAX_COLUMN_NAME_LEN as u64,
        ),
        limit(
            CREATE,
            "destination.secret",
            "minLength",
            MIN_SECRET_LEN as u64,
        ),
        limit(
            CREATE,
            "destination.secret",
            "maxLength",
            MAX_SECRET_LEN as u64,
        ),
        limit(
            "GET /imports",
            "limit",
            "maximum",
            positive(import_http::MAX_LIST_PAGE.into()),
        ),
        limit(
            ROWS,
            "",
            "x-max-body-bytes",
            import_http::MAX_ROWS_BODY_BYTES as u64,
        ),
        limit(ROWS, "", "maxItems", MAX_BATCH_ROWS as u64),
        limit(ROWS, "", "x-max-row-bytes", MAX_ROW_BYTES as u64),
        limit(
            ROWS,
            "idempotency-key",
            "maxLength",
            import_http::MAX_IDEMPOTENCY_KEY_LEN as u64,
        ),
        limit(
            "POST /privacy/requests/{id}/verify",
            "",
            "x-max-body-bytes",
            dsar_body,
        ),
        limit(
            "POST /privacy/requests/{id}/extend",
            "",
            "x-max-body-bytes",
            dsar_body,
        ),
        limit(
            "POST /privacy/requests/{id}/extend",
            "reason",
            "maxLength",
            MAX_TEXT_LEN as u64,
        ),
        limit(
            "POST /privacy/requests/{id}/extend",
            "months",
            "maximum",
            u64::from(GDPR_MAX_EXTENSION_MONTHS),
        ),
        limit(
            "POST /privacy/requests/{id}/extend",
            "months",
            "default",
            u64::from(GDPR_MAX_EXTENSION_MONTHS),
        ),
        limit(
            "POST /privacy/requests/{id}/extend",
            "days",
            "maximum",
            positive(CCPA_MAX_EXTENSION_DAYS),
        ),
        limit(
            "POST /privacy/requests/{id}/extend",
            "days",
            "default",
            positive(CCPA_MAX_EXTENSION_DAYS),
        ),
        limit(
            PUT_CONSENT[0],
            "purpose",
            "maxLength",
            MAX_PURPOSE_LEN as u64,
        ),
        limit(
            PUT_CONSENT[0],
            "source",
            "maxLength",
            MAX_CONSENT_TEXT_LEN as u64,
        ),
        limit(
            PUT_CONSENT[0],
            "policy_version",
            "maxLength",
            MAX_CONSENT_TEXT_LEN as u64,
        ),
        limit("PUT /privacy/settings", "", "x-max-body-bytes", dsar_body),
        limit(
            "PUT /privacy/settings",
            "verification_webhook.secret",
            "minLength",
            MIN_SECRET_LEN as u64,
        ),
        limit(
            "PUT /privacy/settings",
            "verification_webhook.secret",
            "maxLength",
            MAX_SECRET_LEN as u64,
        ),
        limit(
            "PUT /privacy/settings",
            "notification_webhook.secret",
            "minLength",
            MIN_SECRET_LEN as u64,
        ),
        limit(
            "PUT /privacy/settings",
            "notification_email",
            "maxLength",
            custody::notice::NotificationEmail::MAX_LEN as u64,
        ),
        limit(
            "PUT /privacy/settings",
            "notification_webhook.secret",
            "maxLength",
            MAX_SECRET_LEN as u64,
        ),
        limit("DELETE /account", "", "x-max-body-bytes", dsar_body),
        limit(
            "DELETE /account",
            "confirm",
            "maxLength",
            custody::tenant::MAX_TENANT_ID_LEN as u64,
        ),
    ]);
    for identifier_list in [
        "identifiers.email",
        "identifiers.phone",
        "identifiers.contact_id",
    ] {
        all.push(limit(
            CREATE,
            identifier_list,
            "maxItems",
            MAX_IDENTIFIER_FIELDS as u64,
        ));
    }
    for list_item in [
        "identifiers.email[]",
        "identifiers.phone[]",
        "identifiers.contact_id[]",
    ] {
        all.push(limit(
            CREATE,
            list_item,
            "maxLength",
            MAX_POINTER_LEN as u64,
        ));
    }
    all.extend([
        limit(LIFT[0], "", "x-max-body-bytes", dsar_body),
        limit(LIFT[0], "reason", "maxLength", MAX_TEXT_LEN as u64),
        limit(
            PRIVACY_SETTINGS[0],
            "purposes",
            "maxItems",
            custody::privacy::MAX_PURPOSES as u64,
        ),
        limit(
            PRIVACY_SETTINGS[0],
            "purposes[]",
            "maxLength",
            MAX_PURPOSE_LEN as u64,
        ),
    ]);
    for route in CREATE_PRIVACY_REQUEST {
        all.push(limit(route, "", "x-max-body-bytes", dsar_body));
        all.push(limit(route, "note", "maxLength", MAX_TEXT_LEN as u64));
        all.push(limit(
            route,
            "corrections.email",
            "maxLength",
            MAX_EMAIL_LEN as u64,
        ));
        all.push(limit(
            route,
            "corrections.contact_id",
            "maxLength",
            MAX_CONTACT_ID_LEN as u64,
        ));
    }
    for route in NAMES_A_SUBJECT {
        all.push(limit(
            route,
            "subject.email",
            "maxLength",
            MAX_EMAIL_LEN as u64,
        ));
        all.push(limit(
            route,
            "subject.contact_id",
            "maxLength",
            MAX_CONTACT_ID_LEN as u64,
        ));
    }
    all.push(limit(
        "POST /privacy/consent/lookup",
        "",
        "x-max-body-bytes",
        dsar_body,
    ));
    all.push(limit(PUT_CONSENT[0], "", "x-max-body-bytes", dsar_body));
    all.extend([
        limit(
            "GET /audit",
            "limit",
            "maximum",
            u64::from(custody::audit::MAX_PAGE),
        ),
        limit(
            "GET /audit",
            "action",
            "maxLength",
            export::audit_log::MAX_ACTION_LEN as u64,
        ),
    ]);
    // oauth
    use custody::oauth::{flow, install, webhook as hl_webhook};
    const CALLBACK: &str = "GET /oauth/{provider}/callback";
    const CLAIM: &str = "POST /installations/{provider}/claim";
    all.extend([
        limit(CALLBACK, "state", "maxLength", flow::MAX_STATE_LEN as u64),
        limit(CALLBACK, "code", "maxLength", flow::MAX_CODE_LEN as u64),
        limit(
            CLAIM,
            "",
            "x-max-body-bytes",
            install::MAX_CLAIM_BODY_BYTES as u64,
        ),
        limit(
            CLAIM,
            "claim_token",
            "maxLength",
            install::MAX_CLAIM_TOKEN_LEN as u64,
        ),
        limit(
            "POST /webhooks/highlevel",
            "",
            "x-max-body-bytes",
            hl_webhook::MAX_BODY_BYTES as u64,
        ),
    ]);
    // The embedded importer's routes hold the same limits (the session fixes the
    // destination, so none of its limits apply there).
    let embedded: Vec<Limit> = all
        .iter()
        .filter_map(|l| match l.route {
            CREATE if !l.at.starts_with("destination.") => {
                Some(limit(EMBED_CREATE, l.at, l.keyword, l.value))
            }
            ROWS => Some(limit(EMBED_ROWS, l.at, l.keyword, l.value)),
            _ => None,
        })
        .collect();
    all.extend(embedded);
    {
        use custody::import_session as session;
        all.extend([
            limit(
                MINT,
                "",
                "x-max-body-bytes",
                import_http::MAX_SESSION_BODY_BYTES as u64,
            ),
            limit(
                MINT,
                "destination.secret",
                "minLength",
                MIN_SECRET_LEN as u64,
            ),
            limit(
                MINT,
                "destination.secret",
                "maxLength",
                MAX_SECRET_LEN as u64,
            ),
            limit(MINT, "origin", "maxLength", session::MAX_ORIGIN_LEN as u64),
            limit(
                MINT,
                "lifetime_minutes",
                "minimum",
                positive(session::MIN_LIFETIME_MINUTES),
            ),
            limit(
                MINT,
                "lifetime_minutes",
                "maximum",
                positive(session::MAX_LIFETIME_MINUTES),
            ),
            limit(
                MINT,
                "lifetime_minutes",
                "default",
                positive(session::DEFAULT_LIFETIME_MINUTES),
            ),
        ]);
    }
    all
}

/// One number stated at a place of a route's request.
#[derive(Debug)]
struct Stated<'a> {
    at: String,
    keyword: &'static str,
    value: &'a Value,
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

/// Every limit keyword in `schema` (and its alternatives, conditional branches,
/// properties and items), with where it is.
fn stated_in<'a>(doc: &'a Value, schema: &'a Value, at: &str, out: &mut Vec<Stated<'a>>) {
    let mut alts = Vec::new();
    alternatives(doc, schema, true, &mut alts);
    for alt in alts {
        for keyword in LIMIT_KEYWORDS.into_iter().chain(OTHER_KEYWORDS) {
            if let Some(value) = alt.get(keyword) {
                out.push(Stated {
                    at: at.to_owned(),
                    keyword,
                    value,
                });
            }
        }
        if let Some(props) = alt.get("properties").and_then(Value::as_mapping) {
            for (name, property) in props {
                stated_in(doc, property, &join(at, name.as_str().unwrap_or("?")), out);
            }
        }
        if let Some(items) = alt.get("items") {
            stated_in(doc, items, &format!("{at}[]"), out);
        }
    }
}

/// Everything a route's request states: the body's size, its schema, its parameters.
fn stated<'a>(doc: &'a Value, op: &Operation<'a>) -> Vec<Stated<'a>> {
    let mut out = Vec::new();
    if let Some(body) = request_body(doc, op)
        && let Some(value) = body.get("x-max-body-bytes")
    {
        out.push(Stated {
            at: String::new(),
            keyword: "x-max-body-bytes",
            value,
        });
    }
    if let Some(schema) = request_schema(doc, op) {
        stated_in(doc, schema, "", &mut out);
    }
    for parameter in parameters(doc, op) {
        if let (Some(name), Some(schema)) = (parameter["name"].as_str(), parameter.get("schema")) {
            stated_in(doc, schema, name, &mut out);
        }
    }
    out
}

#[test]
fn every_limit_the_requests_state_is_the_rust_constant() {
    let doc = openapi();
    let ops = operations(&doc);
    let limits = limits();
    let held = held_routes();
    let mut problems = Vec::new();
    for (key, op) in ops.iter().filter(|(key, _)| held.contains(*key)) {
        for found in stated(&doc, op) {
            if !LIMIT_KEYWORDS.contains(&found.keyword) {
                continue;
            }
            let known = limits
                .iter()
                .any(|l| l.route == key && l.at == found.at && l.keyword == found.keyword);
            if !known {
                problems.push(format!(
                    "{key}: {} {:?} at `{}` comes from no Rust constant in limits()",
                    found.keyword, found.value, found.at
                ));
            }
        }
    }
    for l in &limits {
        let Some(op) = ops.get(l.route) else {
            problems.push(format!("limits() names {}, not in openapi.yaml", l.route));
            continue;
        };
        let here: Vec<Stated<'_>> = stated(&doc, op)
            .into_iter()
            .filter(|s| s.at == l.at && s.keyword == l.keyword)
            .collect();
        if here.is_empty() {
            problems.push(format!(
                "{}: openapi.yaml states no {} at `{}`; the server's limit is {}",
                l.route, l.keyword, l.at, l.value
            ));
        }
        for s in here {
            if s.value.as_u64() != Some(l.value) {
                problems.push(format!(
                    "{}: {} at `{}` is {:?} in openapi.yaml, {} in the code",
                    l.route, l.keyword, l.at, s.value, l.value
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The seal refuses a secret it cannot hold with a 400 naming `secret`, a name no
/// request has: so every secret a request carries is held to bounds inside the
/// seal's before it is sealed (`field_rules` maps that answer to no route).
#[test]
fn every_secret_is_bounded_before_it_is_sealed() {
    let sealable = custody::seal::MAX_PLAINTEXT_BYTES;
    assert!(custody::webhook::MAX_SECRET_LEN <= sealable);
    assert!(export::settings::MAX_PASSWORD_BYTES <= sealable);
}

// ---------------------------------------------------------------------------------
// Responses and enums
// ---------------------------------------------------------------------------------

const PROBLEM: &str = "#/components/schemas/Problem";

#[test]
fn every_route_documents_the_4xx_its_input_can_cause() {
    let doc = openapi();
    let ops = operations(&doc);
    let held = held_routes();
    let mut problems = Vec::new();
    for key in &held {
        let Some(op) = ops.get(key) else {
            problems.push(format!("{key} is in template.yaml but not in openapi.yaml"));
            continue;
        };
        let responses = &op.operation["responses"];
        let mut needed: BTreeSet<(&str, &str)> = BTreeSet::new();
        if let Some(body) = request_body(&doc, op) {
            needed.insert(("400", "a JSON body can be malformed"));
            needed.insert(("413", "a JSON body has a size limit"));
            // Unless the route says it reads any media type (a provider's webhook,
            // verified by its signature over the raw body).
            if body.get("x-any-media-type").and_then(Value::as_bool) != Some(true) {
                needed.insert(("415", "a JSON body has a media type"));
            }
            if body.get("x-max-body-bytes").is_none() {
                problems.push(format!(
                    "{key}: the request body states no x-max-body-bytes"
                ));
            }
        }
        let params = parameters(&doc, op);
        if params
            .iter()
            .any(|p| matches!(p["in"].as_str(), Some("query" | "header")))
        {
            needed.insert(("400", "a query or header parameter can be invalid"));
        }
        if params.iter().any(|p| p["in"].as_str() == Some("path")) {
            needed.insert(("404", "a path names a resource"));
        }
        let public = op
            .operation
            .get("security")
            .and_then(Value::as_sequence)
            .is_some_and(Vec::is_empty);
        let session = op
            .operation
            .get("security")
            .and_then(Value::as_sequence)
            .is_some_and(|r| r.iter().any(|r| r.get("importSession").is_some()));
        match op.operation["x-required-role"].as_str() {
            Some("viewer") => {}
            Some("operator" | "admin") => {
                needed.insert(("403", "a role below x-required-role is refused"));
            }
            // A session route acts as its session: no role to require.
            None if public || session => {}
            other => problems.push(format!("{key}: x-required-role is {other:?}")),
        }
        for (status, why) in needed {
            if responses.get(status).is_none() {
                problems.push(format!("{key}: documents no {status} ({why})"));
            }
        }
        for (status, response) in responses.as_mapping().into_iter().flatten() {
            let status = status.as_str().unwrap_or_default();
            if !status.starts_with('4') {
                continue;
            }
            let schema = &deref(&doc, response)["content"]["application/problem+json"]["schema"];
            if schema.get("$ref").and_then(Value::as_str) != Some(PROBLEM) {
                problems.push(format!(
                    "{key}: its {status} is not application/problem+json with the Problem schema"
                ));
            }
        }
    }
    assert!(
        held.len() >= 20,
        "only {} routes held: the filter is broken",
        held.len()
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn enum_of(doc: &Value, schema: &str) -> Vec<String> {
    let schema = resolve(doc, &format!("#/components/schemas/{schema}"))
        .unwrap_or_else(|| panic!("no schema {schema}"));
    schema["enum"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{schema:?} has no enum"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn request_enums_are_the_servers() {
    let doc = openapi();
    let channels: Vec<String> = Channel::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .expect("a channel serialises")
                .as_str()
                .expect("as a string")
                .to_owned()
        })
        .collect();
    assert_eq!(enum_of(&doc, "Channel"), channels);
    // What an import may name: its store classes, and `bypass` for bypass imports.
    let mut classes: Vec<String> = RetentionClass::import_classes()
        .iter()
        .chain([&RetentionClass::Bypass])
        .map(|c| c.name().to_owned())
        .collect();
    classes.sort();
    let mut documented = enum_of(&doc, "ImportRetentionClass");
    documented.sort();
    assert_eq!(documented, classes);
}

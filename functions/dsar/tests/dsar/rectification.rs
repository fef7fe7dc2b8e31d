//! Rectification: the subject's rows of every stored import carry the corrected
//! value afterwards and every other row is byte for byte the same; no older version
//! keeps the old value; the index points at the corrected pseudonym only; the audit
//! entry and the stored request hold no plaintext; duplicates change nothing; bad
//! input is refused naming the field. The subject's restriction and withdrawn
//! consent follow the corrected value; a denied rectification drops its values.

use custody::privacy::{ConsentRecord, ConsentState, PrivacyRequest, Status};
use custody::store::{Key, keys};
use custody::subject::Identifier;
use custody::suppression::{Reason, Suppressed, Suppression};
use http::StatusCode;
use serde_json::{Value, json};

use crate::*;

/// Ann's corrected email.
const NEW_EMAIL: &str = "annabel.quixote-lee@example.com";

fn rectify(body: Value) -> lambda_http::Request {
    request(
        event!("post_privacy_rectify"),
        "acme",
        "admin",
        Some(body),
        None,
    )
}

fn new_pseudonym(deps: &Deps) -> String {
    let id = Identifier::email(NEW_EMAIL).unwrap();
    deps.app_secret
        .key_if_loaded(&acme())
        .expect("the tests load the secret")
        .pseudonym(&id)
        .to_string()
}

/// The import refs (`REF#import_object#…`) indexed under a pseudonym: object keys.
async fn import_refs(deps: &Deps, pseudonym: &str) -> Vec<String> {
    let mut objects: Vec<String> = deps
        .store
        .subject_items(&acme(), pseudonym)
        .await
        .unwrap()
        .iter()
        // The index projects keys: `REF#import_object#<import>/<name>#<pseudonym>`.
        .filter_map(|item| {
            let sk = item.get("sk")?.as_s().ok()?;
            let rest = sk.strip_prefix("REF#import_object#")?;
            let (source, _) = rest.rsplit_once('#')?;
            Some(format!("imports/acme/{source}"))
        })
        .collect();
    objects.sort();
    objects
}

#[tokio::test]
async fn rectification_rewrites_the_subjects_rows_and_moves_the_index() {
    let Env { stack, deps, .. } = env().await;
    let tenant = acme();
    // Ann by email in a CSV (in upper case: matched as normalised) twice, and nested
    // in a JSON Lines file; the others' rows with quotes, CRLF and odd spacing.
    let csv = format!(
        "name,email,city\r\n{},{},Leeds\r\n\"{}, Jr.\",{},\"York\nNorth\"\r\nAnn again,{},Bath\r\n{},{} ,Bath",
        ANN.name,
        ANN.email.to_uppercase(),
        BOB.name,
        BOB.email,
        ANN.email,
        CARA.name,
        CARA.email,
    );
    let jsonl = format!(
        "{}\n{{ \"name\" : \"{}\", \"contact\": {{\"email\": \"{}\"}} }}\n{}\n",
        json!({"name": ANN.name, "contact": {"email": ANN.email, "phone": ANN.phone}, "z": 1, "a": 2}),
        BOB.name,
        BOB.email,
        json!({"name": CARA.name, "email": CARA.email}),
    );
    let csv_key = put_import_object(
        &deps,
        IMPORT_CSV,
        "upload.csv",
        &csv,
        &[(&ANN, "email"), (&BOB, "email"), (&CARA, "email")],
    )
    .await;
    let jsonl_key = put_import_object(
        &deps,
        IMPORT_JSONL,
        "upload.jsonl",
        &jsonl,
        &[
            (&ANN, "email"),
            (&ANN, "phone"),
            (&BOB, "email"),
            (&CARA, "email"),
        ],
    )
    .await;

    let (status, out) = call(
        &deps,
        rectify(json!({
            "subject": { "email": ANN.email },
            "corrections": { "email": format!("  {}", NEW_EMAIL.to_uppercase()) },
            "regulation": "gdpr",
            "note": "moved house",
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    assert_eq!(out["kind"], "rectify");
    assert_eq!(out["status"], "pending");
    let id = out["id"].as_str().unwrap().to_owned();
    // Filed: the corrected value is only sealed.
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert_eq!(
        contains_any(&table, &[NEW_EMAIL.to_owned()]),
        None,
        "the corrected value is stored in plaintext"
    );

    // The pending record, delivered twice, and an in_processing one: one run.
    deliver(&deps, &id).await;
    deliver(&deps, &id).await;
    let response = dsar::handle_stream(
        &deps,
        stream_event("acme", &id, "in_processing"),
        dsar::Budget::Unlimited,
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    // The CSV: Ann's two rows corrected, everything else byte for byte.
    let rewritten = current_object(&deps, &csv_key).await;
    let expected = csv
        .replace(
            &format!("{},{},Leeds", ANN.name, ANN.email.to_uppercase()),
            &format!("{},{NEW_EMAIL},Leeds", ANN.name),
        )
        .replace(
            &format!("Ann again,{},Bath", ANN.email),
            &format!("Ann again,{NEW_EMAIL},Bath"),
        );
    assert_eq!(rewritten, expected);
    // The JSON Lines: Ann's row with the nested value corrected (its other fields
    // kept), the others' lines unchanged.
    let rewritten = current_object(&deps, &jsonl_key).await;
    let lines: Vec<&str> = rewritten.split_inclusive('\n').collect();
    let original: Vec<&str> = jsonl.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 3, "{rewritten}");
    let ann: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        ann,
        json!({"name": ANN.name, "contact": {"email": NEW_EMAIL, "phone": ANN.phone}, "z": 1, "a": 2})
    );
    assert_eq!(lines[1..], original[1..]);

    // No version keeps the old value: one version per object.
    let versions = bucket_versions(&deps.s3, &deps.config.imports_bucket).await;
    assert_eq!(
        versions.len(),
        2,
        "{:?}",
        versions.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    for (key, version, body) in &versions {
        assert_eq!(
            contains_any(body, &[ANN.email.to_owned()]),
            None,
            "{key}@{version} keeps the old email"
        );
    }

    // The index: the corrected pseudonym holds both imports, the old one none; Ann's
    // phone entry stays.
    let mut both = vec![csv_key.clone(), jsonl_key.clone()];
    both.sort();
    assert_eq!(import_refs(&deps, &new_pseudonym(&deps)).await, both);
    assert!(
        import_refs(&deps, &ANN.pseudonym(&deps, "email"))
            .await
            .is_empty()
    );
    assert_eq!(
        import_refs(&deps, &ANN.pseudonym(&deps, "phone")).await,
        vec![jsonl_key.clone()]
    );
    assert_eq!(
        import_refs(&deps, &BOB.pseudonym(&deps, "email"))
            .await
            .len(),
        2
    );

    // The request: complete, counts recorded, no sealed value left.
    let stored = deps
        .store
        .get::<PrivacyRequest>(&PrivacyRequest::key_of(&tenant, &id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, Status::Complete);
    let rectification = stored.rectification.clone().unwrap();
    assert_eq!(rectification.sealed_values, None);
    assert_eq!(rectification.files_rewritten, 2);
    assert_eq!(rectification.rows_rectified, 3);
    assert_eq!(rectification.versions_deleted, 2);
    assert_eq!(rectification.index_entries_moved, 2);
    assert_eq!(rectification.corrections[0].to, new_pseudonym(&deps));
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    let request_items: String = table
        .lines()
        .filter(|line| line.contains(&format!("DSAR#{id}")))
        .collect();
    assert!(!request_items.is_empty());
    assert!(
        !request_items.contains("sealed_values"),
        "the completed request keeps its sealed values: {request_items}"
    );
    assert_eq!(
        contains_any(&table, &[NEW_EMAIL.to_owned(), ANN.email.to_owned()]),
        None,
        "the table names Ann's old or new email"
    );
    let (status, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&id),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["rectification"]["rows_rectified"], 3, "{detail}");
    assert_eq!(detail["rectification"]["corrected"], json!(["email"]));
    assert_eq!(
        detail["steps_done"],
        json!(["rectify_plan", "rectify_items", "rectify_files"])
    );
    assert!(
        detail["notices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["event_id"] == format!("{id}:completed")),
        "{detail}"
    );

    // Audited once, by pseudonym and counts; no plaintext anywhere in the log.
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    let target = format!("DSAR#{id}");
    let of = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.target == target)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("privacy_request.completed").len(), 1);
    let rectified = of("privacy_request.rectified");
    assert_eq!(rectified.len(), 1);
    let detail = serde_json::to_string(&rectified[0].details).unwrap();
    assert!(detail.contains(&new_pseudonym(&deps)), "{detail}");
    assert!(detail.contains("\"rows_rectified\":3"), "{detail}");
    let audit = table_dump(&stack.clients.dynamodb, &stack.config.audit_table).await;
    assert_eq!(
        contains_any(&audit, &[NEW_EMAIL.to_owned(), ANN.email.to_owned()]),
        None,
        "the audit log names an email"
    );
    assert!(deps.audit.verify(&tenant).await.unwrap().is_ok());

    // A later duplicate changes nothing.
    deliver(&deps, &id).await;
    assert_eq!(current_object(&deps, &csv_key).await, expected);
    assert_eq!(
        bucket_versions(&deps.s3, &deps.config.imports_bucket)
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn a_rectification_stopped_between_steps_finishes_once() {
    let Env { deps, .. } = env().await;
    let tenant = acme();
    let objects = seed_imports(&deps).await;
    let (status, out) = call(
        &deps,
        rectify(json!({
            "subject": { "phone": ANN.phone },
            "corrections": { "phone": "+44 7700 900999" },
            "regulation": "ccpa",
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    let id = out["id"].as_str().unwrap().to_owned();
    let first = dsar::process::process_request(&deps, &tenant, &id, dsar::Budget::Steps(1))
        .await
        .unwrap();
    assert_eq!(first, dsar::Progress::Stopped);
    deliver(&deps, &id).await;
    deliver(&deps, &id).await;
    // The JSON Lines row held Ann's phone in a national-looking format: now E.164.
    let jsonl = current_object(&deps, &objects[1]).await;
    let ann: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(ann["phone"], "+447700900999");
    assert!(jsonl.lines().nth(1).unwrap().contains(BOB.phone));
    // The CSV (Ann by email only) and the rows batch are untouched.
    assert!(
        current_object(&deps, &objects[0])
            .await
            .contains(&ANN.email.to_uppercase())
    );
    let versions = bucket_versions(&deps.s3, &deps.config.imports_bucket).await;
    assert_eq!(versions.len(), 3);
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    let target = format!("DSAR#{id}");
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "privacy_request.rectified" && e.target == target)
            .count(),
        1
    );
}

#[tokio::test]
async fn rectification_input_is_refused_naming_the_field() {
    let Env { deps, .. } = env().await;
    let subject = json!({ "email": ANN.email });
    let cases = [
        (
            json!({ "subject": subject, "regulation": "gdpr" }),
            "corrections",
        ),
        (
            json!({ "subject": subject, "regulation": "gdpr", "corrections": {} }),
            "corrections",
        ),
        (
            json!({ "subject": subject, "regulation": "gdpr", "corrections": { "email": "not-an-email" } }),
            "corrections.email",
        ),
        (
            json!({ "subject": subject, "regulation": "gdpr", "corrections": { "email": ANN.email.to_uppercase() } }),
            "corrections.email",
        ),
        (
            json!({ "subject": subject, "regulation": "gdpr", "corrections": { "phone": "+447700900999" } }),
            "corrections.phone",
        ),
        (
            json!({ "subject": subject, "regulation": "gdpr", "corrections": { "phone": "12" } }),
            "corrections.phone",
        ),
        (
            json!({ "subject": {}, "regulation": "gdpr", "corrections": { "email": NEW_EMAIL } }),
            "subject",
        ),
    ];
    for (body, field) in cases {
        let (status, out) = call(&deps, rectify(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {out}");
        assert_eq!(out["field"], field, "{body} → {out}");
        // The problem never echoes a value.
        let text = out.to_string();
        assert!(
            !text.contains("not-an-email") && !text.contains(ANN.email),
            "{text}"
        );
    }
    // An unknown correction field is refused too.
    let (status, _) = call(
        &deps,
        rectify(
            json!({ "subject": subject, "regulation": "gdpr", "corrections": { "name": "Ann" } }),
        ),
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    // Other kinds take no corrections.
    let (status, out) = call(
        &deps,
        request(
            event!("post_privacy_delete"),
            "acme",
            "admin",
            Some(json!({ "subject": subject, "regulation": "gdpr", "corrections": { "email": NEW_EMAIL } })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    assert_eq!(out["field"], "corrections");
    // Filing is the admin's, as for erasure.
    for role in ["viewer", "operator"] {
        let mut req = json!({ "subject": subject, "regulation": "gdpr", "corrections": { "email": NEW_EMAIL } });
        req["note"] = json!(role);
        let (status, _) = call(
            &deps,
            request(
                event!("post_privacy_rectify"),
                "acme",
                role,
                Some(req),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role}");
    }
}

#[tokio::test]
async fn an_erasure_drops_an_open_rectifications_sealed_values() {
    let Env { deps, .. } = env().await;
    let tenant = acme();
    seed_imports(&deps).await;
    let (status, out) = call(
        &deps,
        rectify(json!({
            "subject": { "email": ANN.email },
            "corrections": { "email": NEW_EMAIL },
            "regulation": "gdpr",
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    let rectify_id = out["id"].as_str().unwrap().to_owned();
    let sealed = |request: PrivacyRequest| request.rectification.unwrap().sealed_values;
    let key = PrivacyRequest::key_of(&tenant, &rectify_id);
    let before = deps.store.get::<PrivacyRequest>(&key).await.unwrap();
    assert!(sealed(before.unwrap()).is_some());
    // Erased before the rectification ran: the corrected value names Ann too.
    let erasure = file_request(&deps, "delete", &ANN, "gdpr").await;
    deliver(&deps, &erasure).await;
    let after = deps.store.get::<PrivacyRequest>(&key).await.unwrap();
    assert_eq!(sealed(after.unwrap()), None);
}

/// Ann under her corrected email, for requests naming her by it.
const ANN_CORRECTED: Person = Person {
    email: NEW_EMAIL,
    ..ANN
};

fn marker_key(scope: &str, pseudonym: &str) -> Key {
    Key::new(keys::tenant(&acme()), format!("SUPP#{scope}#{pseudonym}"))
}

async fn marker(deps: &Deps, scope: &str, pseudonym: &str) -> Option<Suppression> {
    deps.store
        .get::<Suppression>(&marker_key(scope, pseudonym))
        .await
        .unwrap()
}

async fn consent(deps: &Deps, pseudonym: &str) -> Option<ConsentRecord> {
    deps.store
        .get::<ConsentRecord>(&ConsentRecord::key_of(&acme(), pseudonym, "newsletter"))
        .await
        .unwrap()
}

/// The kinds of the items indexed under a pseudonym, sorted.
async fn indexed_kinds(deps: &Deps, pseudonym: &str) -> Vec<String> {
    let mut kinds: Vec<String> = deps
        .store
        .subject_items(&acme(), pseudonym)
        .await
        .unwrap()
        .iter()
        .filter_map(|item| item.get("kind")?.as_s().ok().cloned())
        .filter(|kind| kind != "subject_ref")
        .collect();
    kinds.sort();
    kinds
}

async fn restrict_by_email(deps: &Deps, person: &Person) -> String {
    let body = json!({ "subject": { "email": person.email }, "regulation": "gdpr", "ground": "accuracy_contested" });
    let (status, out) = call(
        deps,
        request(
            event!("post_privacy_restrict"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    out["id"].as_str().unwrap().to_owned()
}

async fn rectify_ann_email(deps: &Deps) -> String {
    let (status, out) = call(
        deps,
        rectify(json!({
            "subject": { "email": ANN.email },
            "corrections": { "email": NEW_EMAIL },
            "regulation": "gdpr",
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    out["id"].as_str().unwrap().to_owned()
}

async fn stored(deps: &Deps, id: &str) -> PrivacyRequest {
    deps.store
        .get::<PrivacyRequest>(&PrivacyRequest::key_of(&acme(), id))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_restriction_and_a_withdrawn_consent_follow_the_corrected_email() {
    let Env { stack, deps, .. } = env().await;
    let tenant = acme();
    seed_imports(&deps).await;
    let restriction = restrict_by_email(&deps, &ANN).await;
    put_consent(&deps, &ANN, "newsletter", "withdrawn").await;
    let (old, new) = (ANN.pseudonym(&deps, "email"), new_pseudonym(&deps));
    let restricted_before = marker(&deps, "restrict", &old).await.unwrap();
    let consent_before = consent(&deps, &old).await.unwrap();

    let id = rectify_ann_email(&deps).await;
    deliver(&deps, &id).await;
    deliver(&deps, &id).await;

    // The markers and the record are under the new pseudonym only, as they were.
    assert_eq!(marker(&deps, "restrict", &old).await, None);
    assert_eq!(marker(&deps, "consent:newsletter", &old).await, None);
    assert_eq!(consent(&deps, &old).await, None);
    let restricted = marker(&deps, "restrict", &new).await.unwrap();
    assert_eq!(restricted.by, format!("privacy_request:{restriction}"));
    assert_eq!(restricted.since, restricted_before.since);
    assert!(marker(&deps, "consent:newsletter", &new).await.is_some());
    let moved = consent(&deps, &new).await.unwrap();
    assert_eq!(moved.pseudonym, new);
    assert_eq!(moved.current, consent_before.current);
    assert_eq!(moved.history, consent_before.history);
    // Indexed under the new pseudonym, so an erasure by the corrected email finds
    // them; nothing of them is left under the old one.
    assert_eq!(
        indexed_kinds(&deps, &new).await,
        ["consent", "suppression", "suppression"]
    );
    assert!(indexed_kinds(&deps, &old).await.is_empty());

    // An import row with the new email is left out as restricted (the import's
    // check: the tenant's markers, the row's pseudonyms), and for the purpose.
    let list = Suppressed::load(&deps.store, &tenant, Some("newsletter"))
        .await
        .unwrap();
    assert_eq!(list.reason([new.as_str()]), Some(Reason::Restricted));
    assert_eq!(list.reason([old.as_str()]), None);

    // Counted on the request and in its audit entry; no plaintext anywhere.
    let done = stored(&deps, &id).await;
    assert_eq!(done.status, Status::Complete);
    let rectification = done.rectification.unwrap();
    assert_eq!(rectification.consent_records_moved, 1);
    assert_eq!(rectification.suppression_markers_moved, 2);
    let entries = deps.audit.entries(&tenant, None, None).await.unwrap();
    let rectified: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "privacy_request.rectified" && e.target == format!("DSAR#{id}"))
        .collect();
    assert_eq!(rectified.len(), 1);
    let detail = serde_json::to_string(&rectified[0].details).unwrap();
    assert!(detail.contains("\"consent_records_moved\":1"), "{detail}");
    assert!(
        detail.contains("\"suppression_markers_moved\":2"),
        "{detail}"
    );
    for table in [&stack.config.table, &stack.config.audit_table] {
        let dump = table_dump(&stack.clients.dynamodb, table).await;
        assert_eq!(
            contains_any(&dump, &[NEW_EMAIL.to_owned(), ANN.email.to_owned()]),
            None,
            "{table} names an email"
        );
    }

    // A later duplicate moves nothing back and duplicates nothing.
    deliver(&deps, &id).await;
    assert_eq!(
        indexed_kinds(&deps, &new).await,
        ["consent", "suppression", "suppression"]
    );
    assert!(indexed_kinds(&deps, &old).await.is_empty());
    let again = stored(&deps, &id).await.rectification.unwrap();
    assert_eq!(again.suppression_markers_moved, 2);

    // The consent is found and changed by the corrected email.
    let (status, found) = call(
        &deps,
        request(
            event!("post_privacy_consent_lookup"),
            "acme",
            "admin",
            Some(json!({ "subject": { "email": NEW_EMAIL } })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["consent"][0]["current"]["state"], "withdrawn");

    // Lifting the restriction (filed under the old email) frees the new pseudonym;
    // the withdrawal still holds for its purpose until consent is given again.
    let (status, out) = call(
        &deps,
        request(
            event!("post_privacy_request_lift"),
            "acme",
            "admin",
            Some(json!({ "reason": "the corrected data is accurate" })),
            Some(&restriction),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(marker(&deps, "restrict", &new).await, None);
    let list = Suppressed::load(&deps.store, &tenant, Some("newsletter"))
        .await
        .unwrap();
    assert_eq!(list.reason([new.as_str()]), Some(Reason::ConsentWithdrawn));
    put_consent(&deps, &ANN_CORRECTED, "newsletter", "granted").await;
    assert!(
        Suppressed::load(&deps.store, &tenant, Some("newsletter"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(consent(&deps, &new).await.unwrap().history.len(), 2);

    // An access request naming Ann by her old identifiers follows the completed
    // rectification: the bundle holds the moved record and her corrected rows.
    let access = file_request(&deps, "export", &ANN, "gdpr").await;
    let bundle = dsar::process::build_bundle(&deps, &stored(&deps, &access).await)
        .await
        .unwrap();
    let consent_shown = bundle["consent"].as_array().unwrap();
    assert_eq!(consent_shown.len(), 1, "{bundle}");
    assert_eq!(consent_shown[0]["purpose"], "newsletter");
    let rows = serde_json::to_string(&bundle["imported_records"]).unwrap();
    assert!(rows.contains(NEW_EMAIL), "{bundle}");
    assert!(!rows.contains(ANN.email), "{bundle}");

    // An erasure naming Ann by her old identifiers follows the rectification: the
    // moved record goes too.
    let erasure = file_request(&deps, "delete", &ANN, "gdpr").await;
    deliver(&deps, &erasure).await;
    assert_eq!(consent(&deps, &new).await, None);
    assert!(indexed_kinds(&deps, &new).await.is_empty());
    let erased = stored(&deps, &erasure).await;
    assert!(erased.pseudonyms.contains(&new), "{:?}", erased.pseudonyms);
    assert_eq!(erased.erased.unwrap().consent_records, 1);
}

#[tokio::test]
async fn moving_consent_merges_and_a_move_interrupted_midway_finishes_once() {
    let Env { deps, clock, .. } = env().await;
    let tenant = acme();
    seed_imports(&deps).await;
    let (old, new) = (ANN.pseudonym(&deps, "email"), new_pseudonym(&deps));
    // The corrected email already has a record of the purpose (an older grant), and
    // a restriction of its own.
    put_consent(&deps, &ANN_CORRECTED, "newsletter", "granted").await;
    restrict_by_email(&deps, &ANN_CORRECTED).await;
    clock.advance(chrono::Duration::minutes(5));
    put_consent(&deps, &ANN, "newsletter", "withdrawn").await;
    restrict_by_email(&deps, &ANN).await;

    let id = rectify_ann_email(&deps).await;
    // The plan step only, then the old restriction marker moved as the step would
    // before a crash: the new pseudonym has its own marker, so the move only deletes
    // the old one.
    let first = dsar::process::process_request(&deps, &tenant, &id, dsar::Budget::Steps(1))
        .await
        .unwrap();
    assert_eq!(first, dsar::Progress::Stopped);
    let planned = stored(&deps, &id).await.rectification.unwrap().items;
    assert_eq!(planned.len(), 3, "{planned:?}");
    deps.store
        .delete(&marker_key("restrict", &old))
        .await
        .unwrap();
    deliver(&deps, &id).await;
    deliver(&deps, &id).await;

    // One record under the new pseudonym with both changes, the newest current.
    assert_eq!(consent(&deps, &old).await, None);
    let merged = consent(&deps, &new).await.unwrap();
    let states: Vec<_> = merged.history.iter().map(|c| c.state).collect();
    assert_eq!(states, [ConsentState::Granted, ConsentState::Withdrawn]);
    assert_eq!(merged.current.state, ConsentState::Withdrawn);
    assert!(marker(&deps, "consent:newsletter", &new).await.is_some());
    // The new pseudonym's own restriction marker stays; one item per key.
    assert!(marker(&deps, "restrict", &new).await.is_some());
    assert_eq!(
        indexed_kinds(&deps, &new).await,
        ["consent", "suppression", "suppression"]
    );
    assert!(indexed_kinds(&deps, &old).await.is_empty());
    let rectification = stored(&deps, &id).await.rectification.unwrap();
    assert_eq!(rectification.consent_records_moved, 1);
    assert_eq!(rectification.suppression_markers_moved, 2);
}

#[tokio::test]
async fn a_rectification_denied_after_three_wrong_codes_drops_its_values() {
    let Env { stack, deps, .. } = env().await;
    let tenant = acme();
    let objects = seed_imports(&deps).await;
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let settings = json!({
        "verification_webhook": {
            "url": format!("{}/verify", server.uri()),
            "secret": "tenant-webhook-secret-0123456789abcdef",
        },
    });
    let (status, out) = call(
        &deps,
        request(
            event!("put_privacy_settings"),
            "acme",
            "admin",
            Some(settings),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let (status, out) = call(
        &deps,
        rectify(json!({
            "subject": { "email": ANN.email },
            "corrections": { "email": NEW_EMAIL },
            "regulation": "gdpr",
            "verify_subject": true,
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    assert_eq!(out["status"], "identity_unverified");
    let id = out["id"].as_str().unwrap().to_owned();
    assert!(
        stored(&deps, &id)
            .await
            .rectification
            .unwrap()
            .sealed_values
            .is_some()
    );

    let submit = |code: &'static str| {
        call(
            &deps,
            request(
                event!("post_privacy_request_verify"),
                "acme",
                "operator",
                Some(json!({ "code": code })),
                Some(&id),
            ),
        )
    };
    assert_eq!(
        submit("WRONG00001").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        submit("WRONG00002").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(submit("WRONG00003").await.0, StatusCode::CONFLICT);

    let denied = stored(&deps, &id).await;
    assert_eq!(denied.status, Status::Denied);
    assert_eq!(denied.rectification.unwrap().sealed_values, None);
    let table = table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    let request_items: String = table
        .lines()
        .filter(|line| line.contains(&format!("DSAR#{id}")))
        .collect();
    assert!(!request_items.is_empty());
    assert!(!request_items.contains("sealed_values"), "{request_items}");
    // Never run: the files keep the old email.
    assert_eq!(
        dsar::process::process_request(&deps, &tenant, &id, dsar::Budget::Unlimited)
            .await
            .unwrap(),
        dsar::Progress::Finished(Status::Denied)
    );
    assert!(
        current_object(&deps, &objects[0])
            .await
            .contains(&ANN.email.to_uppercase())
    );
}

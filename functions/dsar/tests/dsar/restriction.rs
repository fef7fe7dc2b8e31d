//! Restriction of processing, consent withdrawal as a suppression, declared purposes
//! and partial settings updates, and the 7-business-day initial response.

use chrono::Duration;
use custody::suppression::{Reason, Suppressed};
use dsar::deadlines::{self, Overdue};
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::*;

async fn restrict(deps: &Deps, person: &Person, ground: &str) -> (StatusCode, Value) {
    let body = json!({ "subject": person.subject(), "regulation": "gdpr", "ground": ground });
    call(
        deps,
        request(
            event!("post_privacy_restrict"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await
}

async fn lift(deps: &Deps, id: &str, reason: &str) -> (StatusCode, Value) {
    call(
        deps,
        request(
            event!("post_privacy_request_lift"),
            "acme",
            "admin",
            Some(json!({ "reason": reason })),
            Some(id),
        ),
    )
    .await
}

async fn suppressed(deps: &Deps, purpose: Option<&str>) -> Suppressed {
    Suppressed::load(&deps.store, &acme(), purpose)
        .await
        .unwrap()
}

async fn audit_actions(env: &Env) -> Vec<String> {
    let audit = env.stack.audit(TestStack::system_clock());
    assert!(audit.verify(&acme()).await.unwrap().is_ok());
    audit
        .entries(&acme(), None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

#[tokio::test]
async fn a_restriction_holds_from_filing_until_lifted_and_overlapping_ones_keep_it() {
    let env = env().await;
    let deps = &env.deps;
    let (status, out) = restrict(deps, &ANN, "accuracy_contested").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    assert_eq!(out["kind"], "restrict");
    assert_eq!(out["status"], "complete");
    assert_eq!(out["restriction"]["ground"], "accuracy_contested");
    let first = out["id"].as_str().unwrap().to_owned();
    // Every identifier is suppressed, at once, with nothing for the processor to do.
    let list = suppressed(deps, None).await;
    for kind in ["email", "phone", "contact_id"] {
        assert_eq!(
            list.reason([ANN.pseudonym(deps, kind).as_str()]),
            Some(Reason::Restricted),
            "{kind}"
        );
    }
    assert_eq!(list.reason([BOB.pseudonym(deps, "email").as_str()]), None);

    // Listed while in force (answered, so never overdue), with its restriction.
    let (status, listed) = call(
        deps,
        request(event!("get_privacy_requests"), "acme", "viewer", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let entry = listed["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == first.as_str())
        .expect("a restriction in force is listed");
    assert_eq!(entry["overdue"], false);
    assert!(entry["restriction"]["lifted_at"].is_null());

    // A second restriction of the same person (by email only) overlaps the first.
    let body =
        json!({ "subject": { "email": ANN.email }, "regulation": "gdpr", "ground": "objection" });
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
    let second = out["id"].as_str().unwrap().to_owned();

    // Lifting the first keeps the email (the second covers it), frees the rest.
    let (status, out) = lift(deps, &first, "checked: the data is accurate").await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert!(out["restriction"]["lifted_at"].is_string());
    let list = suppressed(deps, None).await;
    assert_eq!(
        list.reason([ANN.pseudonym(deps, "email").as_str()]),
        Some(Reason::Restricted)
    );
    assert_eq!(list.reason([ANN.pseudonym(deps, "phone").as_str()]), None);
    // Lifting twice, or lifting what is not a restriction, is a conflict.
    let (status, _) = lift(deps, &first, "again").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let erasure = file_request(deps, "delete", &BOB, "gdpr").await;
    let (status, _) = lift(deps, &erasure, "not one").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = lift(
        deps,
        &second,
        "objection upheld: processing has compelling grounds",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(suppressed(deps, None).await.is_empty());

    // The detail shows the history of the lifted one.
    let (status, detail) = call(
        deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&first),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["restriction"]["ground"], "accuracy_contested");
    assert!(detail["restriction"]["lift_reason"].is_string());

    let actions = audit_actions(&env).await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "privacy_request.restricted")
            .count(),
        2
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "privacy_request.restriction_lifted")
            .count(),
        2
    );
}

#[tokio::test]
async fn restriction_fields_are_checked_and_nothing_is_left_half_written() {
    let env = env().await;
    let deps = &env.deps;
    let cases = [
        (
            json!({ "subject": ANN.subject(), "regulation": "gdpr" }),
            "ground",
        ),
        (
            json!({ "subject": ANN.subject(), "regulation": "gdpr", "ground": "because" }),
            "ground",
        ),
        (
            json!({ "subject": ANN.subject(), "regulation": "gdpr", "ground": "objection", "verify_subject": true }),
            "verify_subject",
        ),
        (
            json!({ "subject": {}, "regulation": "gdpr", "ground": "objection" }),
            "subject",
        ),
    ];
    for (body, field) in cases {
        let (status, out) = call(
            deps,
            request(
                event!("post_privacy_restrict"),
                "acme",
                "admin",
                Some(body.clone()),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {out}");
        assert_eq!(out["field"], field, "{body}");
    }
    // An access request takes no ground; an operator may not restrict.
    let body = json!({ "subject": ANN.subject(), "regulation": "gdpr", "ground": "objection" });
    let (status, out) = call(
        deps,
        request(
            event!("post_privacy_export"),
            "acme",
            "admin",
            Some(body.clone()),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    assert_eq!(out["field"], "ground");
    let (status, _) = call(
        deps,
        request(
            event!("post_privacy_restrict"),
            "acme",
            "operator",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(suppressed(deps, None).await.is_empty());
    // A lift names its reason.
    let (_, out) = restrict(deps, &ANN, "legal_claims").await;
    let id = out["id"].as_str().unwrap();
    for reason in ["", "   "] {
        let (status, out) = lift(deps, id, reason).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
        assert_eq!(out["field"], "reason");
    }
    let (status, out) = lift(deps, id, &"x".repeat(1001)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    assert!(!suppressed(deps, None).await.is_empty());
}

#[tokio::test]
async fn withdrawn_consent_suppresses_its_purpose_and_declared_purposes_bind() {
    let env = env().await;
    let deps = &env.deps;
    put_consent(deps, &ANN, "marketing", "withdrawn").await;
    let ann = ANN.pseudonym(deps, "email");
    assert_eq!(
        suppressed(deps, Some("marketing"))
            .await
            .reason([ann.as_str()]),
        Some(Reason::ConsentWithdrawn)
    );
    // Another purpose, or none, is not affected.
    assert_eq!(
        suppressed(deps, Some("export"))
            .await
            .reason([ann.as_str()]),
        None
    );
    assert_eq!(suppressed(deps, None).await.reason([ann.as_str()]), None);
    put_consent(deps, &ANN, "marketing", "granted").await;
    assert!(suppressed(deps, Some("marketing")).await.is_empty());

    // Declared purposes: a partial update keeps the rest; consent follows the list.
    let settings = |body: Value| {
        request(
            event!("put_privacy_settings"),
            "acme",
            "admin",
            Some(body),
            None,
        )
    };
    let (status, out) = call(deps, settings(json!({ "time_zone": "Europe/Berlin" }))).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let (status, out) = call(
        deps,
        settings(json!({ "purposes": ["marketing", "export"] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        out["time_zone"], "Europe/Berlin",
        "a partial update keeps the zone"
    );
    assert_eq!(out["purposes"], json!(["marketing", "export"]));
    for (body, field) in [
        (json!({ "purposes": ["Marketing"] }), "purposes[0]"),
        (json!({ "purposes": ["a", "a"] }), "purposes[1]"),
        (
            json!({ "purposes": (0..33).map(|i| format!("p{i}")).collect::<Vec<_>>() }),
            "purposes",
        ),
    ] {
        let (status, out) = call(deps, settings(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {out}");
        assert_eq!(out["field"], field, "{body}");
    }
    let body = json!({
        "subject": { "email": ANN.email }, "purpose": "profiling", "state": "withdrawn",
        "source": "web_form", "policy_version": "2025-01",
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
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    assert_eq!(out["field"], "purpose");
    put_consent(deps, &ANN, "export", "withdrawn").await;
    assert!(!suppressed(deps, Some("export")).await.is_empty());
}

#[tokio::test]
async fn the_initial_response_is_due_in_seven_business_days_of_the_tenants_zone() {
    let env = env().await;
    let deps = &env.deps;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let body = json!({
        "time_zone": "America/New_York",
        "verification_webhook": { "url": format!("{}/verify", server.uri()), "secret": "tenant-webhook-secret-0123456789abcdef" },
    });
    let (status, out) = call(
        deps,
        request(
            event!("put_privacy_settings"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    // A later partial update keeps the webhook; null would remove it.
    let (status, out) = call(
        deps,
        request(
            event!("put_privacy_settings"),
            "acme",
            "admin",
            Some(json!({ "purposes": ["marketing"] })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert!(out["verification_webhook"]["url"].is_string(), "{out}");

    // Received Friday 2025-01-03 10:00 New York: seven business days end Tuesday
    // 2025-01-14 23:59:59 there (05:00 UTC on the 15th).
    let received = "2025-01-03T15:00:00Z";
    env.clock.set(
        chrono::DateTime::parse_from_rfc3339("2025-01-03T16:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let file = |subject: Value| {
        request(
            event!("post_privacy_delete"),
            "acme",
            "admin",
            Some(
                json!({ "subject": subject, "regulation": "gdpr", "verify_subject": true, "received_at": received }),
            ),
            None,
        )
    };
    let (status, waiting) = call(deps, file(json!({ "email": ANN.email }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{waiting}");
    assert_eq!(waiting["initial_response_due"], "2025-01-15T04:59:59Z");
    let waiting_id = waiting["id"].as_str().unwrap().to_owned();
    let attested = file_request(deps, "delete", &BOB, "gdpr").await;

    // Waiting for the subject's code is no substantive response; an attested request
    // is under way at once.
    let get = |id: &str| {
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(id),
        )
    };
    let (_, detail) = call(deps, get(&waiting_id)).await;
    assert!(detail["initial_response_at"].is_null(), "{detail}");
    let (_, detail) = call(deps, get(&attested)).await;
    assert!(detail["initial_response_at"].is_string(), "{detail}");

    // On the due day's last second it is on time; a second later it is overdue, and
    // the daily check counts it (the attested one is not).
    env.clock.set(
        chrono::DateTime::parse_from_rfc3339("2025-01-15T04:59:59Z")
            .unwrap()
            .to_utc(),
    );
    let request_of = |id: &str| {
        let id = id.to_owned();
        async move {
            deps.store
                .get::<custody::privacy::PrivacyRequest>(&custody::privacy::PrivacyRequest::key_of(
                    &acme(),
                    &id,
                ))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let waiting_request = request_of(&waiting_id).await;
    assert_eq!(deadlines::overdue(&waiting_request, deps.now()), None);
    env.clock.advance(Duration::seconds(1));
    assert_eq!(
        deadlines::overdue(&waiting_request, deps.now()),
        Some(Overdue::InitialResponse)
    );
    assert_eq!(
        deadlines::overdue(&request_of(&attested).await, deps.now()),
        None
    );
    let (_, listed) = call(
        deps,
        request(event!("get_privacy_requests"), "acme", "viewer", None, None),
    )
    .await;
    let entry = listed["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == waiting_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["initial_response_overdue"], true);
    assert_eq!(deadlines::check(deps).await.unwrap().requests_overdue, 1);
}

/// The markers are the subject's data too (subject-indexed): an erasure takes them
/// with everything else, as `custody::suppression` promises.
#[tokio::test]
async fn an_erasure_takes_the_subjects_suppression_markers() {
    let env = env().await;
    let deps = &env.deps;
    let (status, out) = restrict(deps, &ANN, "objection").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    put_consent(deps, &ANN, "marketing", "withdrawn").await;
    assert!(!suppressed(deps, Some("marketing")).await.is_empty());
    // Marker items by their sort key (the erasure's own plan names the keys it deletes).
    let markers = || async {
        table_dump(&env.stack.clients.dynamodb, &env.stack.config.table)
            .await
            .lines()
            .filter(|l| l.contains("\"sk\": S(\"SUPP#"))
            .count()
    };
    // Three identifiers restricted, one withdrawn.
    assert_eq!(markers().await, 4);
    let erasure = file_request(deps, "delete", &ANN, "gdpr").await;
    deliver(deps, &erasure).await;
    assert!(suppressed(deps, Some("marketing")).await.is_empty());
    assert_eq!(markers().await, 0, "a marker outlived the erasure");
}

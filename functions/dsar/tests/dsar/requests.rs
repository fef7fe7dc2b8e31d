//! Deadlines through the API, extension rules, the urgency listing, roles and tenants.

use chrono::{Duration, TimeZone, Utc};
use http::StatusCode;
use serde_json::json;

use crate::*;

#[tokio::test]
async fn deadlines_extension_listing_roles_and_tenants() {
    let Env { deps, clock, .. } = env().await;
    clock.set(Utc.with_ymd_and_hms(2025, 1, 31, 10, 0, 0).unwrap());

    // GDPR received 31 January → due the last day of February (UTC: no settings).
    let gdpr = file_request(&deps, "export", &ANN, "gdpr").await;
    let (_, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&gdpr),
        ),
    )
    .await;
    assert_eq!(detail["deadlines"]["due_at"], "2025-02-28T23:59:59Z");
    assert_eq!(detail["deadlines"]["ack_due"], "2025-02-02T10:00:00Z");
    assert_eq!(detail["acknowledged_in_time"], true);
    assert_eq!(detail["free_of_charge"], true);
    // CCPA filed the same day, but received 40 days earlier: most urgent; late ack.
    let body = json!({ "subject": BOB.subject(), "regulation": "ccpa", "received_at": "2024-12-22T09:00:00Z" });
    let (status, ccpa) = call(
        &deps,
        request(
            event!("post_privacy_delete"),
            "acme",
            "admin",
            Some(body),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ccpa}");
    assert_eq!(ccpa["due_at"], "2025-02-05T23:59:59Z");
    // A crafted receipt date near chrono's minimum is a 400 naming the field, not a
    // panic in the deadline arithmetic.
    for received_at in ["-262143-01-01T00:00:00Z", "1999-12-31T23:59:59Z"] {
        let body =
            json!({ "subject": BOB.subject(), "regulation": "gdpr", "received_at": received_at });
        let (status, problem) = call(
            &deps,
            request(
                event!("post_privacy_delete"),
                "acme",
                "admin",
                Some(body),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{received_at}: {problem}");
        assert_eq!(problem["field"], "received_at", "{problem}");
    }
    assert_eq!(ccpa["acknowledged_in_time"], false);
    let ccpa = ccpa["id"].as_str().unwrap().to_owned();
    // A second request of Ann within twelve months is not free of charge.
    let again = file_request(&deps, "export", &ANN, "gdpr").await;
    let (_, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&again),
        ),
    )
    .await;
    assert_eq!(detail["free_of_charge"], false);

    let (status, list) = call(
        &deps,
        request(event!("get_privacy_requests"), "acme", "viewer", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed[0], ccpa, "most urgent first: {list}");
    // The product's 30 days (21 January) came before CCPA's 45: ten days overdue.
    assert_eq!(list["requests"][0]["days_left"], -10);
    assert_eq!(list["requests"][0]["overdue"], true);
    // The listing carries the acknowledgement deadline as the detail does.
    let (_, detail) = call(
        &deps,
        request(
            event!("get_privacy_request"),
            "acme",
            "viewer",
            None,
            Some(&ccpa),
        ),
    )
    .await;
    assert_eq!(
        list["requests"][0]["ack_due"], detail["deadlines"]["ack_due"],
        "{list} {detail}"
    );

    // Extension: reason required; once; then refused.
    let extend = |id: &str, body: serde_json::Value, role: &str| {
        request(
            event!("post_privacy_request_extend"),
            "acme",
            role,
            Some(body),
            Some(id),
        )
    };
    let (status, p) = call(&deps, extend(&gdpr, json!({ "reason": "  " }), "admin")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "reason");
    let (status, p) = call(
        &deps,
        extend(&gdpr, json!({ "reason": "r", "months": 3 }), "admin"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    let (status, p) = call(
        &deps,
        extend(&gdpr, json!({ "reason": "r", "days": 10 }), "admin"),
    )
    .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("days")),
        "{p}"
    );
    let (status, ext) = call(
        &deps,
        extend(
            &gdpr,
            json!({ "reason": "covers many imports", "months": 2 }),
            "admin",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ext}");
    assert_eq!(ext["due_at"], "2025-04-30T23:59:59Z");
    let (status, p) = call(&deps, extend(&gdpr, json!({ "reason": "again" }), "admin")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    // CCPA: after the due date an extension is refused.
    clock.set(Utc.with_ymd_and_hms(2025, 2, 6, 0, 0, 0).unwrap());
    let (status, p) = call(&deps, extend(&ccpa, json!({ "reason": "late" }), "admin")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    clock.advance(Duration::days(-1));
    let (status, p) = call(
        &deps,
        extend(&ccpa, json!({ "reason": "r", "days": 46 }), "admin"),
    )
    .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("days")),
        "{p}"
    );
    let (status, ext) = call(
        &deps,
        extend(&ccpa, json!({ "reason": "volume", "days": 45 }), "admin"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ext}");
    assert_eq!(ext["due_at"], "2025-03-22T23:59:59Z");

    // Roles: a viewer cannot erase, extend, manage consent or delete the account.
    let (status, _) = call(
        &deps,
        request(
            event!("post_privacy_delete"),
            "acme",
            "viewer",
            Some(json!({ "subject": ANN.subject(), "regulation": "gdpr" })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &deps,
        request(
            event!("post_privacy_export"),
            "acme",
            "operator",
            Some(json!({ "subject": ANN.subject(), "regulation": "gdpr" })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&deps, extend(&again, json!({ "reason": "r" }), "viewer"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, _) = call(
        &deps,
        request(
            event!("put_privacy_consent"),
            "acme",
            "viewer",
            Some(json!({})),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &deps,
        request(
            event!("delete_account"),
            "acme",
            "viewer",
            Some(json!({ "confirm": "acme" })),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Tenants: another tenant's request id is 404 on every route, as is a malformed id.
    for (ev, body) in [
        (event!("get_privacy_request"), None),
        (event!("get_privacy_request_certificate"), None),
        (
            event!("post_privacy_request_extend"),
            Some(json!({ "reason": "r" })),
        ),
        (
            event!("post_privacy_request_verify"),
            Some(json!({ "code": "X" })),
        ),
    ] {
        let (status, _) = call(
            &deps,
            request(ev, "globex", "admin", body.clone(), Some(&gdpr)),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(
            &deps,
            request(ev, "acme", "admin", body, Some("not-a-ulid")),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, other) = call(
        &deps,
        request(
            event!("get_privacy_requests"),
            "globex",
            "admin",
            None,
            None,
        ),
    )
    .await;
    assert_eq!(other["requests"], json!([]));
    // No certificate before an erasure completes.
    let (status, _) = call(
        &deps,
        request(
            event!("get_privacy_request_certificate"),
            "acme",
            "admin",
            None,
            Some(&gdpr),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Audit: extension and refusals by pseudonym; never the reason text.
    let entries = deps.audit.entries(&acme(), None, None).await.unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "privacy_request.extended")
            .count(),
        2
    );
    assert!(
        entries
            .iter()
            .filter(|e| e.action == "privacy_request.extension_refused")
            .count()
            >= 3
    );
    assert!(!format!("{entries:?}").contains("covers many imports"));
}

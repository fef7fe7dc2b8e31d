//! `GET /retention`: the tenant's effective retention table, read by any role.

use custody::retention::{
    ABORT_INCOMPLETE_MULTIPART_DAYS, NONCURRENT_VERSION_DAYS, Period, RetentionClass,
};
use http::StatusCode;
use serde_json::Value;

use crate::*;

#[tokio::test]
async fn the_retention_table_lists_every_class_with_its_numbers_for_any_role() {
    let Env { deps, .. } = env().await;
    for role in ["viewer", "operator", "admin"] {
        let (status, table) = call(
            &deps,
            request(event!("get_retention"), "acme", role, None, None),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{role}: {table}");
        assert_eq!(table["tenant"], "acme");
        let rows = table["classes"].as_array().expect("classes");
        assert_eq!(rows.len(), RetentionClass::ALL.len(), "{table}");
        for class in RetentionClass::ALL {
            let row = rows
                .iter()
                .find(|r| r["name"] == class.name())
                .unwrap_or_else(|| panic!("{} is missing: {table}", class.name()));
            let (value, unit, at_least) = match class.period() {
                Period::Minutes(m) => (m, "minutes", false),
                Period::Days(d) => (d, "days", false),
                Period::AtLeastDays(d) => (d, "days", true),
            };
            let period = &row["period"];
            assert_eq!(period["value"].as_i64(), Some(value), "{row}");
            assert_eq!(period["unit"], unit, "{row}");
            assert_eq!(period["at_least"], at_least, "{row}");
            assert_eq!(
                period["expires_automatically"],
                class.duration().is_some(),
                "{row}"
            );
            assert_eq!(row["promise"], class.promise(), "{row}");
            assert_eq!(row["mechanism"], class.mechanism(), "{row}");
            assert!(
                row["store"].as_str().is_some_and(|s| !s.is_empty()),
                "{row}"
            );
        }
        // Audit evidence is a floor, never deleted automatically; activity expires.
        let evidence = rows
            .iter()
            .find(|r| r["name"] == RetentionClass::AuditEvidence.name())
            .expect("audit evidence");
        assert_eq!(evidence["store"], "audit-table");
        assert_eq!(evidence["period"]["at_least"], true);
        let activity = rows
            .iter()
            .find(|r| r["name"] == RetentionClass::AuditActivity.name())
            .expect("audit activity");
        assert_eq!(activity["store"], "audit-table");
        assert_eq!(activity["period"]["expires_automatically"], true);
        let import = rows
            .iter()
            .find(|r| r["name"] == RetentionClass::default_import_class().name())
            .expect("default import class");
        assert_eq!(import["store"], "imports-bucket");

        let choice: Vec<&str> = table["imports"]["classes"]
            .as_array()
            .expect("import classes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let want: Vec<&str> = RetentionClass::import_classes()
            .into_iter()
            .map(RetentionClass::name)
            .collect();
        assert_eq!(choice, want);
        assert_eq!(
            table["imports"]["default_class"],
            RetentionClass::default_import_class().name()
        );
        assert_eq!(
            table["noncurrent_version_days"].as_i64(),
            Some(i64::from(NONCURRENT_VERSION_DAYS))
        );
        assert_eq!(
            table["abort_incomplete_multipart_days"].as_i64(),
            Some(i64::from(ABORT_INCOMPLETE_MULTIPART_DAYS))
        );
    }
}

#[tokio::test]
async fn the_retention_table_needs_the_tenant_claims() {
    let Env { deps, .. } = env().await;
    let mut ev: Value = serde_json::from_str(event!("get_retention")).unwrap();
    ev["requestContext"]["authorizer"] = Value::Null;
    let response = dsar::handle_http(
        &deps,
        lambda_http::request::from_str(&ev.to_string()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(content_type, "application/problem+json");
    let lambda_http::Body::Text(body) = response.body() else {
        panic!("a problem has a text body");
    };
    let problem: Value = serde_json::from_str(body).unwrap();
    assert_eq!(problem["status"], 401, "{problem}");
    assert!(problem.get("classes").is_none());

    // A role the API does not know is no credential at all.
    let (status, problem) = call(
        &deps,
        request(event!("get_retention"), "acme", "guest", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    assert!(problem.get("classes").is_none());
}

//! Property tests for the parsers of untrusted input: whatever bytes arrive, each
//! returns a value or its typed error, never a panic, and never loops. `make test`
//! runs proptest's default number of cases per property; `make fuzz` runs many more
//! (`PROPTEST_CASES`).
//!
//! Covered here: import rows (CSV and JSON Lines), JWT claims (`api::caller_with`),
//! HighLevel webhook signatures, import-destination signatures and timestamps, time
//! zones and dates (a tenant's zone, deadline arithmetic across chrono's whole range).
//! Pagination cursors are covered beside their private decoder (`kernel::store`).

use chrono::{DateTime, Utc};
use custody::api::{ClaimNames, caller_with};
use custody::imports::{Format, RowReader, RowRules};
use custody::oauth::webhook::WebhookKeys;
use custody::privacy::{Deadlines, Regulation};
use custody::zone::TenantZone;
use proptest::prelude::*;
use serde_json::{Value, json};

const JWT_EVENT: &str = include_str!("fixtures/apigw/http_api_jwt.json");

fn rules() -> RowRules {
    RowRules {
        required: vec!["email".into()],
        default_country_code: Some("44".into()),
        identifiers: None,
    }
}

/// Bytes shaped like import files: mostly CSV/JSON punctuation, quotes, newlines, BOMs
/// and identifier-looking text, so the parsers' edge cases come up often.
fn file_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop_oneof![
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"email".to_vec()),
        Just(b"phone".to_vec()),
        Just(b"a@b.co".to_vec()),
        Just(b"+44 20 7946 0000".to_vec()),
        Just(b"{\"email\":".to_vec()),
        Just(b"}".to_vec()),
        Just(b"[".to_vec()),
        Just(b"null".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(pieces, 0..60).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn import_rows_never_panic_and_always_end(bytes in file_bytes(), jsonl in any::<bool>()) {
        let format = if jsonl { Format::Jsonl } else { Format::Csv };
        let reader = RowReader::new(std::io::Cursor::new(bytes.clone()), format, rules());
        let mut items = 0usize;
        for _ in reader {
            items += 1;
            // A row needs at least one byte; more items than bytes would be a loop.
            prop_assert!(items <= bytes.len() + 2);
        }
    }

    #[test]
    fn jwt_claims_never_panic_and_bad_ones_are_401(
        tenant in prop::option::of(".{0,80}"),
        role in prop::option::of(".{0,20}"),
        sub in prop::option::of(".{0,300}"),
        plain in any::<bool>(),
    ) {
        let mut event: Value = serde_json::from_str(JWT_EVENT).unwrap();
        let claims = event
            .pointer_mut("/requestContext/authorizer/jwt/claims")
            .and_then(Value::as_object_mut)
            .unwrap();
        for (name, value) in [("custom:tenant_id", &tenant), ("custom:role", &role), ("sub", &sub)] {
            match value {
                Some(v) => { claims.insert(name.into(), json!(v)); }
                None => { claims.remove(name); }
            }
        }
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let names = if plain { ClaimNames::PrefixedOrPlain } else { ClaimNames::Prefixed };
        match caller_with(&request, names) {
            Ok(caller) => prop_assert_eq!(Some(caller.tenant.as_str()), tenant.as_deref()),
            Err(problem) => prop_assert_eq!(problem.status.as_u16(), 401),
        }
    }

    #[test]
    fn destination_signatures_never_panic(
        timestamp in prop::option::of(".{0,30}"),
        signature in prop::option::of(".{0,200}"),
        body in prop::collection::vec(any::<u8>(), 0..200),
        now in any::<i64>(),
        tolerance in any::<i64>(),
    ) {
        let verdict = custody::webhook::verify(
            b"secret",
            timestamp.as_deref(),
            signature.as_deref(),
            &body,
            now,
            tolerance,
        );
        // Nothing random is a valid signature.
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn a_signed_destination_delivery_verifies_at_any_time(
        timestamp in -10_000_000_000i64..10_000_000_000,
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let signature = custody::webhook::signature(b"secret", timestamp, &body);
        let verdict = custody::webhook::verify(
            b"secret",
            Some(&timestamp.to_string()),
            Some(&signature),
            &body,
            timestamp,
            300,
        );
        prop_assert!(verdict.is_ok(), "{verdict:?}");
    }

    #[test]
    fn highlevel_webhook_signatures_never_panic(
        rsa in prop::option::of(".{0,400}"),
        ed in prop::option::of(".{0,200}"),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let keys = highlevel_keys();
        let verdict = keys.verify(
            |name| match name {
                "x-wh-signature" => rsa.clone(),
                "x-ghl-signature" => ed.clone(),
                _ => None,
            },
            &body,
        );
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn time_zone_names_never_panic(name in ".{0,60}") {
        if let Ok(zone) = name.parse::<TenantZone>() {
            prop_assert_eq!(zone.name(), name.as_str());
        }
    }

    #[test]
    fn deadlines_never_panic_across_all_of_time(
        seconds in DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(),
        zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/Los_Angeles", "Pacific/Kiritimati", "Pacific/Pago_Pago"]),
        ccpa in any::<bool>(),
    ) {
        let at = DateTime::from_timestamp(seconds, 0).unwrap();
        let zone: TenantZone = zone.parse().unwrap();
        let regulation = if ccpa { Regulation::Ccpa } else { Regulation::Gdpr };
        let deadlines = Deadlines::compute(regulation, at, &zone);
        let _ = zone.end_of(zone.date_of(at));
        // Within any plausible time, the deadlines lie ahead of the receipt.
        if (0..32_503_680_000).contains(&seconds) {
            prop_assert!(deadlines.respond_by() > at, "{deadlines:?}");
            prop_assert!(deadlines.ack_due > at, "{deadlines:?}");
        }
    }
}

/// HighLevel's documented public key, as template.yaml gives it to the oauth function.
fn highlevel_keys() -> WebhookKeys {
    let template =
        custody_local::provision::load_template(&custody_local::template_path()).unwrap();
    let pem = template["Resources"]["OauthFunction"]["Properties"]["Environment"]["Variables"]
        ["CUSTODY_HIGHLEVEL_WEBHOOK_RSA_KEY"]
        .as_str()
        .expect("the template carries HighLevel's webhook key")
        .to_owned();
    WebhookKeys::new(Some(&pem), None).unwrap()
}

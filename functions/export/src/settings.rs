//! Export settings: what the admin sends, how it is validated (field by field), how
//! it is stored (the WebDAV password sealed with KMS), and what is shown back (never
//! the password).

use chrono::{DateTime, Duration, Utc};
use custody::TenantId;
use custody::api::Problem;
use custody::highlevel::Channel;
use custody::seal::Sealed;
use custody::sink::webdav_base_url;
use custody::store::{Entity, Key, keys};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Largest accepted settings body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Default look-back of the first "since last run" export.
pub const DEFAULT_INITIAL_DAYS: u32 = 30;
/// Longest look-back (`date_range.days`, `date_range.initial_days`).
pub const MAX_DAYS: u32 = 3650;
/// Longest WebDAV username, in characters.
pub const MAX_USERNAME_CHARS: usize = 256;
/// Longest WebDAV password, in bytes (UTF-8).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest S3 key prefix, in bytes (UTF-8): S3 keys are limited in bytes.
pub const MAX_PREFIX_BYTES: usize = 512;
/// Shortest and longest S3 bucket name.
pub const MIN_BUCKET_LEN: usize = 3;
pub const MAX_BUCKET_LEN: usize = 63;
/// Longest IAM role path and name after `role/`.
pub const MAX_ROLE_NAME_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// `cron(…)` or `rate(…)` in EventBridge Scheduler syntax.
    pub expression: String,
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum DateRange {
    /// Everything since the end of the last completed run's window (the first run
    /// looks back `initial_days`). Consecutive windows touch, so nothing falls between.
    SinceLastRun {
        #[serde(default)]
        initial_days: Option<u32>,
    },
    /// The last `days` days, every run.
    Rolling { days: u32 },
    /// A fixed period (ending no later than the run).
    Fixed {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

impl DateRange {
    /// The window `[start, end)` of a run starting at `now`.
    pub fn window(
        &self,
        now: DateTime<Utc>,
        last_window_end: Option<DateTime<Utc>>,
    ) -> (Option<DateTime<Utc>>, DateTime<Utc>) {
        match self {
            DateRange::SinceLastRun { initial_days } => {
                let start = last_window_end.unwrap_or_else(|| {
                    now - Duration::days(i64::from(initial_days.unwrap_or(DEFAULT_INITIAL_DAYS)))
                });
                (Some(start), now)
            }
            DateRange::Rolling { days } => (Some(now - Duration::days(i64::from(*days))), now),
            DateRange::Fixed { start, end } => (Some(*start), (*end).min(now)),
        }
    }
}

/// The destination as the admin sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DestinationRequest {
    Webdav {
        url: String,
        username: String,
        /// Required when the URL or username changes; omitted, the stored one is kept.
        #[serde(default)]
        password: Option<SecretString>,
    },
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: Option<String>,
        /// The role in the customer's account to write with, assumed with the tenant id as
        /// ExternalId. Required; optional here so its absence is a 400 naming the field.
        #[serde(default)]
        role_arn: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsRequest {
    pub schedule: Schedule,
    pub channels: Vec<Channel>,
    pub date_range: DateRange,
    pub destination: DestinationRequest,
}

/// The destination as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Destination {
    Webdav {
        url: String,
        username: String,
        password: Sealed,
    },
    S3 {
        bucket: String,
        prefix: String,
        #[serde(default)]
        role_arn: Option<String>,
    },
}

/// A tenant's export settings, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSettings {
    pub tenant: TenantId,
    pub schedule: Schedule,
    pub channels: Vec<Channel>,
    pub date_range: DateRange,
    pub destination: Destination,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl ExportSettings {
    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), keys::export_settings())
    }

    /// What `GET /export/settings` shows: everything but the password.
    pub fn view(&self, schedule_active: bool) -> serde_json::Value {
        let destination = match &self.destination {
            Destination::Webdav { url, username, .. } => serde_json::json!({
                "type": "webdav",
                "url": url,
                "username": username,
                "password_set": true,
            }),
            Destination::S3 {
                bucket,
                prefix,
                role_arn,
            } => serde_json::json!({
                "type": "s3",
                "bucket": bucket,
                "prefix": prefix,
                "role_arn": role_arn,
            }),
        };
        serde_json::json!({
            "schedule": self.schedule,
            "schedule_active": schedule_active,
            "channels": self.channels,
            "date_range": self.date_range,
            "destination": destination,
            "updated_at": self.updated_at,
        })
    }
}

impl Entity for ExportSettings {
    const KIND: &'static str = "export_settings";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant)
    }
}

/// The record id used in the password's encryption context.
pub fn password_record() -> String {
    keys::export_settings()
}

/// Checks everything but the destination credentials' reuse, naming the field at fault.
pub fn validate(request: &SettingsRequest, allow_http_loopback: bool) -> Result<(), Problem> {
    validate_expression(&request.schedule.expression)?;
    if request
        .schedule
        .timezone
        .parse::<custody::zone::TenantZone>()
        .is_err()
    {
        return Err(Problem::bad_request(
            "schedule.timezone",
            "must be an IANA time zone name such as Europe/Berlin or UTC",
        ));
    }
    if request.channels.is_empty() {
        return Err(Problem::bad_request(
            "channels",
            "choose at least one channel",
        ));
    }
    let mut seen = request.channels.clone();
    seen.sort();
    seen.dedup();
    if seen.len() != request.channels.len() {
        return Err(Problem::bad_request(
            "channels",
            "a channel is listed twice",
        ));
    }
    match &request.date_range {
        DateRange::SinceLastRun { initial_days } => {
            if initial_days.is_some_and(|d| d == 0 || d > MAX_DAYS) {
                return Err(Problem::bad_request(
                    "date_range.initial_days",
                    format!("must be between 1 and {MAX_DAYS}"),
                ));
            }
        }
        DateRange::Rolling { days } => {
            if *days == 0 || *days > MAX_DAYS {
                return Err(Problem::bad_request(
                    "date_range.days",
                    format!("must be between 1 and {MAX_DAYS}"),
                ));
            }
        }
        DateRange::Fixed { start, end } => {
            if start >= end {
                return Err(Problem::bad_request(
                    "date_range.end",
                    "must be after date_range.start",
                ));
            }
        }
    }
    validate_destination(&request.destination, allow_http_loopback)
}

/// The destination's own rules, for settings and for `POST /export/destination/test`.
pub fn validate_destination(
    destination: &DestinationRequest,
    allow_http_loopback: bool,
) -> Result<(), Problem> {
    match destination {
        DestinationRequest::Webdav {
            url,
            username,
            password,
        } => {
            webdav_base_url(url, allow_http_loopback)
                .map_err(|e| Problem::bad_request("destination.url", format!("URL {e}")))?;
            // Characters, as the message (and openapi.yaml's maxLength) count them.
            if username.is_empty()
                || username.chars().count() > MAX_USERNAME_CHARS
                || username.contains(':')
                || username.chars().any(char::is_control)
            {
                return Err(Problem::bad_request(
                    "destination.username",
                    format!(
                        "must be 1-{MAX_USERNAME_CHARS} characters without ':' or control characters"
                    ),
                ));
            }
            if let Some(password) = password {
                let length = password.expose_secret().len();
                if length == 0 || length > MAX_PASSWORD_BYTES {
                    return Err(Problem::bad_request(
                        "destination.password",
                        format!("must be 1-{MAX_PASSWORD_BYTES} bytes"),
                    ));
                }
            }
        }
        DestinationRequest::S3 {
            bucket,
            prefix,
            role_arn,
        } => {
            if !valid_bucket(bucket) {
                return Err(Problem::bad_request(
                    "destination.bucket",
                    "must be a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')",
                ));
            }
            if let Some(prefix) = prefix
                && (prefix.len() > MAX_PREFIX_BYTES
                    || prefix.split('/').any(|s| s == "." || s == "..")
                    || prefix.chars().any(char::is_control))
            {
                return Err(Problem::bad_request(
                    "destination.prefix",
                    format!(
                        "must be at most {MAX_PREFIX_BYTES} bytes without '.' or '..' segments or control characters"
                    ),
                ));
            }
            // Required: custody writes a customer's bucket only through the customer's
            // role (crate::customer_role), never with its own.
            match role_arn {
                None => {
                    return Err(Problem::bad_request(
                        "destination.role_arn",
                        "is required for an S3 destination: the IAM role custody assumes (with your tenant id as ExternalId) to write your bucket",
                    ));
                }
                Some(arn) if !valid_role_arn(arn) => {
                    return Err(Problem::bad_request(
                        "destination.role_arn",
                        "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// `rate(N unit)` (at least hourly, so runs do not pile up) or a six-field `cron(…)`.
fn validate_expression(expression: &str) -> Result<(), Problem> {
    let field = "schedule.expression";
    if let Some(inner) = expression
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let mut parts = inner.split_whitespace();
        let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Problem::bad_request(
                field,
                "rate must be 'rate(<n> <unit>)'",
            ));
        };
        let value: u32 =
            value.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
                Problem::bad_request(field, "rate value must be a positive integer")
            })?;
        let unit_ok = match unit {
            "hour" | "day" => value == 1,
            "hours" | "days" => value > 1,
            "minutes" => value >= 60,
            _ => false,
        };
        if !unit_ok {
            return Err(Problem::bad_request(
                field,
                "rate unit must be hour(s) or day(s) (singular for 1), or at least 60 minutes",
            ));
        }
        return Ok(());
    }
    if let Some(inner) = expression
        .strip_prefix("cron(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let fields: Vec<&str> = inner.split_whitespace().collect();
        let [minutes, hours, day_of_month, month, day_of_week, year] = fields.as_slice() else {
            return Err(Problem::bad_request(
                field,
                "cron must have six fields: minutes hours day-of-month month day-of-week year",
            ));
        };
        // Runs at most once an hour: the minutes field names one fixed minute.
        if !minutes.bytes().all(|b| b.is_ascii_digit())
            || !minutes.parse::<u8>().is_ok_and(|m| m <= 59)
        {
            return Err(Problem::bad_request(
                field,
                "cron minutes must be a single number from 0 to 59 (exports run at most hourly)",
            ));
        }
        // What EventBridge Scheduler itself would refuse is refused here, naming the
        // field: a refusal from the service would be a 500 for the caller's mistake.
        check_cron_days(day_of_month, day_of_week)
            .and_then(|()| cron_set(hours, 0, 23, &[]).map_err(|()| "cron hours must be 0-23"))
            .and_then(|()| {
                cron_set(month, 1, 12, &CRON_MONTHS)
                    .map_err(|()| "cron month must be 1-12 or JAN-DEC")
            })
            .and_then(|()| match *year {
                "*" => Ok(()),
                years => {
                    cron_set(years, 1970, 2199, &[]).map_err(|()| "cron year must be 1970-2199")
                }
            })
            .map_err(|rule| Problem::bad_request(field, rule))?;
        return Ok(());
    }
    Err(Problem::bad_request(
        field,
        "must be 'cron(…)' or 'rate(…)'",
    ))
}

const CRON_MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const CRON_WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The day fields of a cron expression as EventBridge Scheduler reads them: exactly
/// one of them is `?`; day-of-month is a set of 1-31, `L` or `<day>W`; day-of-week a
/// set of 1-7 (`SUN`-`SAT`), `L`, `<day>L` or `<day>#<1-5>`.
fn check_cron_days(day_of_month: &str, day_of_week: &str) -> Result<(), &'static str> {
    if (day_of_month == "?") == (day_of_week == "?") {
        return Err("exactly one of cron day-of-month and day-of-week must be '?'");
    }
    let dom_ok = match day_of_month {
        "?" | "L" => true,
        d if d.len() > 1 && d.ends_with('W') => d
            .trim_end_matches('W')
            .parse::<u8>()
            .is_ok_and(|d| (1..=31).contains(&d)),
        d => cron_set(d, 1, 31, &[]).is_ok(),
    };
    if !dom_ok {
        return Err("cron day-of-month must be 1-31, L or <day>W");
    }
    let weekday = |d: &str| cron_value(d, &CRON_WEEKDAYS, 1).is_some_and(|d| (1..=7).contains(&d));
    let dow_ok = match day_of_week {
        "?" | "L" => true,
        d if d.len() > 1 && d.ends_with('L') => weekday(d.trim_end_matches('L')),
        d if d.contains('#') => d.split_once('#').is_some_and(|(day, nth)| {
            weekday(day) && nth.parse::<u8>().is_ok_and(|n| (1..=5).contains(&n))
        }),
        d => cron_set(d, 1, 7, &CRON_WEEKDAYS).is_ok(),
    };
    if !dow_ok {
        return Err("cron day-of-week must be 1-7 or SUN-SAT, L, <day>L or <day>#<1-5>");
    }
    Ok(())
}

/// A number, or a name of `names` (case-insensitive) counted from `first`.
fn cron_value(text: &str, names: &[&str], first: u32) -> Option<u32> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return u32::try_from(i).ok().map(|i| i + first);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A cron field of `*`, `a`, `a-b`, `*/s`, `a/s`, `a-b/s` and lists of those, every
/// value within `min..=max`.
fn cron_set(field: &str, min: u32, max: u32, names: &[&str]) -> Result<(), ()> {
    for part in field.split(',') {
        let range = match part.split_once('/') {
            Some((range, step)) => {
                cron_value(step, &[], 0).filter(|s| *s > 0).ok_or(())?;
                range
            }
            None => part,
        };
        if range == "*" {
            continue;
        }
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (
                cron_value(a, names, min).ok_or(())?,
                cron_value(b, names, min).ok_or(())?,
            ),
            None => {
                let a = cron_value(range, names, min).ok_or(())?;
                (a, a)
            }
        };
        if lo < min || hi > max || lo > hi {
            return Err(());
        }
    }
    Ok(())
}

fn valid_bucket(bucket: &str) -> bool {
    let bytes = bucket.as_bytes();
    (MIN_BUCKET_LEN..=MAX_BUCKET_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !bucket.contains("..")
}

fn valid_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                    && name.len() <= MAX_ROLE_NAME_LEN
                    // IAM's path and name characters (openapi.yaml states the same).
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+=,.@_/-".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> SettingsRequest {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "schedule": {"expression": "cron(0 3 * * ? *)", "timezone": "Europe/Berlin"},
            "channels": ["SMS", "Email"],
            "date_range": {"mode": "since_last_run"},
            "destination": {"type": "webdav", "url": "https://dav.example.com/x",
                            "username": "u", "password": "p"}
        })
    }

    fn field_of(json: serde_json::Value, loopback: bool) -> Option<String> {
        validate(&request(json), loopback)
            .err()
            .and_then(|p| p.field)
    }

    #[test]
    fn accepts_a_good_request() {
        assert!(validate(&request(base()), false).is_ok());
    }

    #[test]
    fn names_each_bad_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "/schedule/expression",
                "cron(* * * * ? *)".into(),
                "schedule.expression",
            ),
            (
                "/schedule/expression",
                "rate(5 minutes)".into(),
                "schedule.expression",
            ),
            (
                "/schedule/expression",
                "every day".into(),
                "schedule.expression",
            ),
            (
                "/schedule/timezone",
                "Mars/Olympus".into(),
                "schedule.timezone",
            ),
            ("/channels", serde_json::json!([]), "channels"),
            ("/channels", serde_json::json!(["SMS", "SMS"]), "channels"),
            (
                "/date_range",
                serde_json::json!({"mode": "rolling", "days": 0}),
                "date_range.days",
            ),
            (
                "/date_range",
                serde_json::json!({"mode": "fixed", "start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}),
                "date_range.end",
            ),
            (
                "/destination/url",
                "http://dav.example.com/".into(),
                "destination.url",
            ),
            (
                "/destination/url",
                "http://127.0.0.1:9/".into(),
                "destination.url",
            ),
            (
                "/destination/username",
                "a:b".into(),
                "destination.username",
            ),
            ("/destination/password", "".into(), "destination.password"),
        ];
        for (pointer, value, field) in cases {
            let mut json = base();
            *json.pointer_mut(pointer).unwrap() = value;
            assert_eq!(field_of(json, false).as_deref(), Some(field), "{pointer}");
        }
        let s3 = |bucket: &str, role: &str| {
            let mut json = base();
            json["destination"] =
                serde_json::json!({"type": "s3", "bucket": bucket, "role_arn": role});
            json
        };
        assert_eq!(
            field_of(s3("Bad_Bucket", "arn:aws:iam::123456789012:role/x"), false).as_deref(),
            Some("destination.bucket")
        );
        assert_eq!(
            field_of(s3("good-bucket", "arn:aws:s3:::x"), false).as_deref(),
            Some("destination.role_arn")
        );
        assert!(
            validate(
                &request(s3("good-bucket", "arn:aws:iam::123456789012:role/w")),
                false
            )
            .is_ok()
        );
        // Without a role the function would have to write with its own: refused.
        let mut no_role = s3("good-bucket", "x");
        no_role["destination"]
            .as_object_mut()
            .unwrap()
            .remove("role_arn");
        assert_eq!(
            field_of(no_role, false).as_deref(),
            Some("destination.role_arn")
        );
    }

    /// What EventBridge Scheduler refuses is a 400 naming the field, never a 500 from
    /// the service's ValidationException.
    #[test]
    fn cron_expressions_the_service_refuses_are_refused_here() {
        for bad in [
            "cron(0 3 * * * *)",
            "cron(0 3 ? * ? *)",
            "cron(60 3 * * ? *)",
            "cron(0 24 * * ? *)",
            "cron(0 3 ? * 8 *)",
            "cron(0 3 32 * ? *)",
            "cron(0 3 * 13 ? *)",
            "cron(0 3 * FOO ? *)",
            "cron(0 3 ? * MON#6 *)",
            "cron(0 3 0W * ? *)",
            "cron(0 3 * * ? 1969)",
            "cron(0 3-1 * * ? *)",
            "cron(0 */0 * * ? *)",
            "cron(0 3 * *)",
        ] {
            let mut json = base();
            json["schedule"]["expression"] = bad.into();
            assert_eq!(
                field_of(json, false).as_deref(),
                Some("schedule.expression"),
                "{bad}"
            );
        }
        for good in [
            "cron(0 3 * * ? *)",
            "cron(15 0/6 ? * MON-FRI *)",
            "cron(0 12 L * ? *)",
            "cron(0 12 15W JAN,JUL ? 2030-2040)",
            "cron(0 12 ? * 6L *)",
            "cron(0 12 ? * TUE#2 *)",
            "cron(59 23 1,15 * ? *)",
            "rate(1 hour)",
            "rate(2 days)",
            "rate(90 minutes)",
        ] {
            let mut json = base();
            json["schedule"]["expression"] = good.into();
            assert!(validate(&request(json), false).is_ok(), "{good}");
        }
    }

    /// The username limit counts characters, as its message and openapi.yaml's
    /// maxLength do; the password's counts bytes, as its message says.
    #[test]
    fn username_counts_characters_and_password_bytes() {
        let mut json = base();
        json["destination"]["username"] = "é".repeat(MAX_USERNAME_CHARS).into();
        assert!(validate(&request(json.clone()), false).is_ok());
        json["destination"]["username"] = "é".repeat(MAX_USERNAME_CHARS + 1).into();
        assert_eq!(
            field_of(json, false).as_deref(),
            Some("destination.username")
        );
        let mut json = base();
        json["destination"]["password"] = "é".repeat(MAX_PASSWORD_BYTES / 2 + 1).into();
        assert_eq!(
            field_of(json, false).as_deref(),
            Some("destination.password")
        );
    }

    #[test]
    fn loopback_http_only_when_allowed() {
        let mut json = base();
        json["destination"]["url"] = "http://127.0.0.1:8080/dav".into();
        assert!(validate(&request(json.clone()), true).is_ok());
        assert_eq!(field_of(json, false).as_deref(), Some("destination.url"));
    }

    #[test]
    fn internal_destinations_are_refused_naming_the_url() {
        for internal in [
            "https://169.254.169.254/dav",
            "https://10.0.0.1/dav",
            "https://[::ffff:127.0.0.1]/dav",
            "https://[fd00::1]/dav",
            "https://100.64.0.1/dav",
        ] {
            let mut json = base();
            json["destination"]["url"] = internal.into();
            // Even with the local stack's loopback allowance.
            assert_eq!(
                field_of(json, true).as_deref(),
                Some("destination.url"),
                "{internal}"
            );
        }
    }

    #[test]
    fn windows() {
        let now = DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let last = now - Duration::hours(5);
        let since = DateRange::SinceLastRun { initial_days: None };
        assert_eq!(since.window(now, Some(last)), (Some(last), now));
        assert_eq!(since.window(now, None).0, Some(now - Duration::days(30)));
        let fixed = DateRange::Fixed {
            start: now - Duration::days(400),
            end: now + Duration::days(1),
        };
        assert_eq!(fixed.window(now, None).1, now);
    }
}

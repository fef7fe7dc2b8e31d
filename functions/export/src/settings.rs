//! Export settings: what the admin sends, how it is validated (field by field), how
//! it is stored (the WebDAV password sealed with KMS), and what is shown back (never
//! the password).

use chrono::{DateTime, Datelike as _, Duration, NaiveDate, Utc, Weekday};
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
    /// Also leave out contacts who withdrew consent for `export` (restricted contacts
    /// are always left out).
    #[serde(default)]
    pub exclude_withdrawn_consent: bool,
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
    /// Leave out contacts who withdrew consent for `custody::suppression::EXPORT_PURPOSE`
    /// (settings stored before it existed read as `false`). Contacts under a
    /// restriction are left out either way.
    #[serde(default)]
    pub exclude_withdrawn_consent: bool,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl ExportSettings {
    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), keys::export_settings())
    }

    /// What `GET /export/settings` shows: everything but the password, and when the
    /// schedule next runs after `now` (active `cron(…)` schedules only).
    pub fn view(&self, schedule_active: bool, now: DateTime<Utc>) -> serde_json::Value {
        let next_run_at = self
            .schedule
            .timezone
            .parse::<custody::zone::TenantZone>()
            .ok()
            .filter(|_| schedule_active)
            .and_then(|zone| next_run(&self.schedule.expression, &zone, now));
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
            "next_run_at": next_run_at,
            "channels": self.channels,
            "date_range": self.date_range,
            "destination": destination,
            "exclude_withdrawn_consent": self.exclude_withdrawn_consent,
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
    cron_values(field, min, max, names).map(|_| ())
}

/// The values a [`cron_set`] field names, ascending, each once.
fn cron_values(field: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>, ()> {
    let mut values = std::collections::BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                Some(cron_value(step, &[], 0).filter(|s| *s > 0).ok_or(())?),
            ),
            None => (part, None),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            range => match range.split_once('-') {
                Some((a, b)) => (
                    cron_value(a, names, min).ok_or(())?,
                    cron_value(b, names, min).ok_or(())?,
                ),
                // `a/s` runs from a to the end of the range.
                None => {
                    let a = cron_value(range, names, min).ok_or(())?;
                    (a, if step.is_some() { max } else { a })
                }
            },
        };
        if lo < min || hi > max || lo > hi {
            return Err(());
        }
        let step = usize::try_from(step.unwrap_or(1)).map_err(|_| ())?;
        values.extend((lo..=hi).step_by(step));
    }
    Ok(values.into_iter().collect())
}

/// How far ahead [`next_run`] looks: a year field may name a year this far off.
const NEXT_RUN_HORIZON_DAYS: u32 = 8 * 366;

/// When a schedule next runs after `after`, read as EventBridge Scheduler reads it
/// in `zone` (a local time the clocks skip runs as far past the transition as it was
/// past the gap's start: `TenantZone::instant_at`). `None` for `rate(…)` (it runs
/// relative to the schedule's creation, which is not kept) and for a cron with no run
/// within [`NEXT_RUN_HORIZON_DAYS`].
pub fn next_run(
    expression: &str,
    zone: &custody::zone::TenantZone,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let inner = expression.strip_prefix("cron(")?.strip_suffix(')')?;
    let fields: Vec<&str> = inner.split_whitespace().collect();
    let [minute, hours, dom, month, dow, year] = fields.as_slice() else {
        return None;
    };
    let minute: u32 = minute.parse().ok().filter(|m| *m <= 59)?;
    let hours = cron_values(hours, 0, 23, &[]).ok()?;
    let months = cron_values(month, 1, 12, &CRON_MONTHS).ok()?;
    let years = match *year {
        "*" => None,
        years => Some(cron_values(years, 1970, 2199, &[]).ok()?),
    };
    let day = DayRule::parse(dom, dow)?;
    let mut date = zone.date_of(after);
    for _ in 0..NEXT_RUN_HORIZON_DAYS {
        let year_ok = years.as_ref().is_none_or(|years| {
            u32::try_from(date.year()).is_ok_and(|y| years.binary_search(&y).is_ok())
        });
        if year_ok && months.binary_search(&date.month()).is_ok() && day.matches(date) {
            for hour in &hours {
                let at = zone.instant_at(date, *hour, minute);
                if at > after {
                    return Some(at);
                }
            }
        }
        date = date.succ_opt()?;
    }
    None
}

/// Which days of a month a cron's day fields pick (exactly one of them is `?`).
enum DayRule {
    Days(Vec<u32>),
    LastDay,
    NearestWeekday(u32),
    /// Weekdays 1 (SUN) to 7 (SAT).
    Weekdays(Vec<u32>),
    LastWeekday(u32),
    NthWeekday(u32, u32),
}

impl DayRule {
    fn parse(dom: &str, dow: &str) -> Option<Self> {
        let weekday = |d: &str| cron_value(d, &CRON_WEEKDAYS, 1).filter(|d| (1..=7).contains(d));
        Some(match (dom, dow) {
            ("?", "?") => return None,
            ("?", "L") => DayRule::Weekdays(vec![7]),
            ("?", d) if d.len() > 1 && d.ends_with('L') => {
                DayRule::LastWeekday(weekday(d.trim_end_matches('L'))?)
            }
            ("?", d) if d.contains('#') => {
                let (day, nth) = d.split_once('#')?;
                DayRule::NthWeekday(
                    weekday(day)?,
                    nth.parse().ok().filter(|n| (1..=5).contains(n))?,
                )
            }
            ("?", d) => DayRule::Weekdays(cron_values(d, 1, 7, &CRON_WEEKDAYS).ok()?),
            ("L", "?") => DayRule::LastDay,
            (d, "?") if d.len() > 1 && d.ends_with('W') => DayRule::NearestWeekday(
                d.trim_end_matches('W')
                    .parse()
                    .ok()
                    .filter(|d| (1..=31).contains(d))?,
            ),
            (d, "?") => DayRule::Days(cron_values(d, 1, 31, &[]).ok()?),
            _ => return None,
        })
    }

    fn matches(&self, date: NaiveDate) -> bool {
        let last = last_day_of_month(date);
        let weekday = date.weekday().num_days_from_sunday() + 1;
        match self {
            DayRule::Days(days) => days.binary_search(&date.day()).is_ok(),
            DayRule::LastDay => date.day() == last,
            DayRule::NearestWeekday(target) => {
                // The weekday nearest the day, within the month (Quartz's `W`).
                let target = (*target).min(last);
                let Some(on) = date.with_day(target) else {
                    return false;
                };
                let nearest = match on.weekday() {
                    Weekday::Sat if target == 1 => target + 2,
                    Weekday::Sat => target - 1,
                    Weekday::Sun if target == last => target - 2,
                    Weekday::Sun => target + 1,
                    _ => target,
                };
                date.day() == nearest
            }
            DayRule::Weekdays(days) => days.binary_search(&weekday).is_ok(),
            DayRule::LastWeekday(day) => weekday == *day && date.day() + 7 > last,
            DayRule::NthWeekday(day, nth) => weekday == *day && (date.day() - 1) / 7 + 1 == *nth,
        }
    }
}

fn last_day_of_month(date: NaiveDate) -> u32 {
    let (year, month) = match date.month() {
        12 => (date.year() + 1, 1),
        m => (date.year(), m + 1),
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|first| first.pred_opt())
        .map_or(28, |last| last.day())
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
        // Leaving out contacts who withdrew consent is asked for, never assumed.
        assert!(!request(base()).exclude_withdrawn_consent);
        let mut json = base();
        json["exclude_withdrawn_consent"] = true.into();
        assert!(request(json).exclude_withdrawn_consent);
    }

    /// Settings stored before `exclude_withdrawn_consent` existed read as `false`.
    #[test]
    fn settings_stored_without_the_consent_flag_read_as_off() {
        let stored: ExportSettings = serde_json::from_value(serde_json::json!({
            "tenant": "acme",
            "schedule": {"expression": "rate(1 day)", "timezone": "UTC"},
            "channels": ["SMS"],
            "date_range": {"mode": "since_last_run"},
            "destination": {"type": "s3", "bucket": "bucket", "prefix": ""},
            "updated_at": "2025-01-01T00:00:00Z",
            "updated_by": "user:admin",
        }))
        .unwrap();
        assert!(!stored.exclude_withdrawn_consent);
        assert_eq!(
            stored.view(true, Utc::now())["exclude_withdrawn_consent"],
            false
        );
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

    fn zone(name: &str) -> custody::zone::TenantZone {
        name.parse().unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    /// Next runs read as EventBridge Scheduler reads the expression, in the zone.
    #[test]
    fn next_runs_follow_the_expression_in_its_zone() {
        let berlin = zone("Europe/Berlin");
        let next = |expression: &str, after: &str| {
            next_run(expression, &berlin, at(after)).map(|t| t.to_rfc3339())
        };
        // Daily 03:00 Berlin (CET, +01:00 in January).
        assert_eq!(
            next("cron(0 3 * * ? *)", "2026-01-10T01:00:00Z").as_deref(),
            Some("2026-01-10T02:00:00+00:00")
        );
        // Just past today's run: tomorrow's.
        assert_eq!(
            next("cron(0 3 * * ? *)", "2026-01-10T02:00:00Z").as_deref(),
            Some("2026-01-11T02:00:00+00:00")
        );
        // Summer time (+02:00).
        assert_eq!(
            next("cron(30 3 * * ? *)", "2026-07-01T00:00:00Z").as_deref(),
            Some("2026-07-01T01:30:00+00:00")
        );
        // The spring-forward gap (02:00-03:00 on 2026-03-29 does not exist).
        assert_eq!(
            next("cron(30 2 * * ? *)", "2026-03-29T00:00:00Z").as_deref(),
            Some("2026-03-29T01:30:00+00:00")
        );
        // Weekdays by name and number: Monday 2026-01-12 is the next MON.
        for dow in ["MON", "2", "MON-MON"] {
            assert_eq!(
                next(&format!("cron(0 9 ? * {dow} *)"), "2026-01-10T00:00:00Z").as_deref(),
                Some("2026-01-12T08:00:00+00:00"),
                "{dow}"
            );
        }
        // Last day of the month, nearest weekday, last Friday, second Tuesday.
        assert_eq!(
            next("cron(0 0 L * ? *)", "2026-02-01T00:00:00Z").as_deref(),
            Some("2026-02-27T23:00:00+00:00")
        );
        // 2026-02-01 is a Sunday: 1W is Monday the 2nd.
        assert_eq!(
            next("cron(0 12 1W * ? *)", "2026-01-31T12:00:00Z").as_deref(),
            Some("2026-02-02T11:00:00+00:00")
        );
        assert_eq!(
            next("cron(0 12 ? * 6L *)", "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-01-30T11:00:00+00:00")
        );
        assert_eq!(
            next("cron(0 12 ? * 3#2 *)", "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-01-13T11:00:00+00:00")
        );
        // Hours stepped, months and years restricted.
        assert_eq!(
            next("cron(15 */6 ? * * *)", "2026-01-10T06:00:00Z").as_deref(),
            Some("2026-01-10T11:15:00+00:00")
        );
        assert_eq!(
            next("cron(0 3 1 JUN ? 2027)", "2026-01-10T00:00:00Z").as_deref(),
            Some("2027-06-01T01:00:00+00:00")
        );
        // Never again, and rates: no time to show.
        assert_eq!(next("cron(0 3 1 JUN ? 1999)", "2026-01-10T00:00:00Z"), None);
        assert_eq!(next("rate(1 day)", "2026-01-10T00:00:00Z"), None);
    }

    #[test]
    fn every_expression_validation_accepts_has_a_next_run_or_a_reason_not_to() {
        for expression in [
            "cron(0 3 * * ? *)",
            "cron(0 0,12 ? * MON-FRI *)",
            "cron(5 1 15W * ? *)",
            "cron(5 1 ? * 2#5 *)",
            "cron(5 1 ? * L *)",
            "cron(5 1 29 2 ? *)",
        ] {
            validate_expression(expression).unwrap();
            assert!(
                next_run(expression, &zone("UTC"), at("2026-01-01T00:00:00Z")).is_some(),
                "{expression}"
            );
        }
    }
}

//! EventBridge Scheduler expressions, evaluated as the service evaluates them:
//! `at(yyyy-mm-ddThh:mm:ss)`, `rate(N unit)` and six-field `cron(…)`, in the
//! schedule's time zone (`ScheduleExpressionTimezone`).
//!
//! Cron follows the Scheduler reference: minutes, hours, day-of-month, month,
//! day-of-week (1-7 = SUN-SAT, or names), year; `*`, `,`, `-`, `/`; `?` in one of the
//! two day fields; `L` and `W` in day-of-month; `L` and `#` in day-of-week.
//! Daylight saving as the service documents it: a cron time that does not exist (the
//! spring-forward gap) is skipped; one that occurs twice (fall back) runs once, at the
//! first occurrence.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule expression {expression:?}: {reason}")]
pub struct ExpressionError {
    pub expression: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expression {
    At(DateTime),
    Rate(Duration),
    Cron(Box<Cron>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    minutes: BTreeSet<i8>,
    hours: BTreeSet<i8>,
    day_of_month: DayOfMonth,
    months: BTreeSet<i8>,
    day_of_week: DayOfWeek,
    /// `None` is `*`.
    years: Option<BTreeSet<i16>>,
}

#[derive(Debug, Clone, PartialEq)]
enum DayOfMonth {
    Any,
    Days(BTreeSet<i8>),
    Last,
    /// The weekday nearest to this day, within the month.
    NearestWeekday(i8),
}

#[derive(Debug, Clone, PartialEq)]
enum DayOfWeek {
    Any,
    /// 1 = Sunday … 7 = Saturday.
    Days(BTreeSet<i8>),
    /// The last such weekday of the month (`6L`).
    Last(i8),
    /// The nth such weekday of the month (`2#3`: third Monday).
    Nth(i8, i8),
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Expression {
    pub fn parse(expression: &str) -> Result<Expression, ExpressionError> {
        let err = |reason: &str| ExpressionError {
            expression: expression.to_owned(),
            reason: reason.to_owned(),
        };
        let text = expression.trim();
        if let Some(inner) = text.strip_prefix("at(").and_then(|t| t.strip_suffix(')')) {
            // Exactly yyyy-mm-ddThh:mm:ss: no zone, no fraction, no other separator.
            let shape = inner.len() == 19
                && inner.char_indices().all(|(i, c)| match i {
                    4 | 7 => c == '-',
                    10 => c == 'T',
                    13 | 16 => c == ':',
                    _ => c.is_ascii_digit(),
                });
            if !shape {
                return Err(err("at() takes yyyy-mm-ddThh:mm:ss"));
            }
            return inner
                .parse::<DateTime>()
                .map(Expression::At)
                .map_err(|_| err("at() takes yyyy-mm-ddThh:mm:ss"));
        }
        if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            let mut parts = inner.split_whitespace();
            let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("rate() takes a value and a unit"));
            };
            let value: u64 = value
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| err("rate() value must be a positive integer"))?;
            let seconds = match unit {
                "minute" | "minutes" => 60,
                "hour" | "hours" => 3600,
                "day" | "days" => 86_400,
                _ => return Err(err("rate() unit must be minute(s), hour(s) or day(s)")),
            };
            // The service insists on the singular for 1 and the plural otherwise.
            if (value == 1) == unit.ends_with('s') {
                return Err(err(
                    "rate() unit must be singular for 1 and plural otherwise",
                ));
            }
            return Ok(Expression::Rate(Duration::from_secs(value * seconds)));
        }
        if let Some(inner) = text.strip_prefix("cron(").and_then(|t| t.strip_suffix(')')) {
            return Cron::parse(inner)
                .map(|c| Expression::Cron(Box::new(c)))
                .map_err(|reason| err(&reason));
        }
        Err(err("must be at(…), rate(…) or cron(…)"))
    }

    /// The first time strictly after `after` at which the schedule fires, or `None`
    /// if it never fires again. `anchor` is a rate schedule's first occurrence (its
    /// start date, or when it was created: the service starts it at once).
    pub fn next_after(
        &self,
        after: Timestamp,
        anchor: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        match self {
            Expression::At(at) => {
                let when = tz.to_ambiguous_zoned(*at).compatible().ok()?.timestamp();
                (when > after).then_some(when)
            }
            Expression::Rate(period) => {
                let period = i64::try_from(period.as_secs()).ok()?.max(1);
                let since = after.as_second() - anchor.as_second();
                // The anchor itself is the first occurrence.
                let periods = if since < 0 { 0 } else { since / period + 1 };
                Timestamp::from_second(anchor.as_second() + periods * period).ok()
            }
            Expression::Cron(cron) => cron.next_after(after, tz),
        }
    }
}

fn number(text: &str, names: &[&str], first: i64) -> Result<i64, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as i64 + first);
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// `*`, `a`, `a-b`, `*/s`, `a/s`, `a-b/s`, and lists of those.
fn set(
    field: &str,
    min: i64,
    max: i64,
    names: &[&str],
    first: i64,
) -> Result<BTreeSet<i64>, String> {
    let mut out = BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<i64>().ok().filter(|s| *s > 0).ok_or("bad step")?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, names, first)?, number(b, names, first)?)
        } else {
            let a = number(range, names, first)?;
            (a, if part.contains('/') { max } else { a })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is outside {min}-{max}"));
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    Ok(out)
}

fn narrow<T: TryFrom<i64> + Ord>(values: BTreeSet<i64>) -> BTreeSet<T> {
    values
        .into_iter()
        .filter_map(|v| T::try_from(v).ok())
        .collect()
}

impl Cron {
    fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minutes, hours, dom, month, dow, year] = fields.as_slice() else {
            return Err(
                "cron needs six fields: minutes hours day-of-month month day-of-week year".into(),
            );
        };
        if (*dom == "?") == (*dow == "?") {
            return Err("exactly one of day-of-month and day-of-week must be '?'".into());
        }
        let day_of_month = match *dom {
            "?" => DayOfMonth::Any,
            "L" => DayOfMonth::Last,
            d if d.ends_with('W') => DayOfMonth::NearestWeekday(
                d.trim_end_matches('W')
                    .parse()
                    .ok()
                    .filter(|d| (1..=31).contains(d))
                    .ok_or("bad W day")?,
            ),
            d => DayOfMonth::Days(narrow(set(d, 1, 31, &[], 1)?)),
        };
        let day_of_week = match *dow {
            "?" => DayOfWeek::Any,
            d if d.ends_with('L') && d.len() > 1 => {
                DayOfWeek::Last(number(d.trim_end_matches('L'), &WEEKDAYS, 1)? as i8)
            }
            d if d.contains('#') => {
                let (day, nth) = d.split_once('#').ok_or("bad #")?;
                let nth: i8 = nth
                    .parse()
                    .ok()
                    .filter(|n| (1..=5).contains(n))
                    .ok_or("bad #n")?;
                DayOfWeek::Nth(number(day, &WEEKDAYS, 1)? as i8, nth)
            }
            "L" => DayOfWeek::Days(BTreeSet::from([7])),
            d => DayOfWeek::Days(narrow(set(d, 1, 7, &WEEKDAYS, 1)?)),
        };
        if let DayOfWeek::Last(d) | DayOfWeek::Nth(d, _) = day_of_week
            && !(1..=7).contains(&d)
        {
            return Err("day-of-week is outside 1-7".into());
        }
        Ok(Cron {
            minutes: narrow(set(minutes, 0, 59, &[], 0)?),
            hours: narrow(set(hours, 0, 23, &[], 0)?),
            day_of_month,
            months: narrow(set(month, 1, 12, &MONTHS, 1)?),
            day_of_week,
            years: if *year == "*" {
                None
            } else {
                Some(narrow(set(year, 1970, 2199, &[], 1970)?))
            },
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if !self.months.contains(&date.month()) {
            return false;
        }
        if let Some(years) = &self.years
            && !years.contains(&date.year())
        {
            return false;
        }
        let last = date.days_in_month();
        let weekday = date.weekday().to_sunday_one_offset();
        let dom = match &self.day_of_month {
            DayOfMonth::Any => true,
            DayOfMonth::Days(days) => days.contains(&date.day()),
            DayOfMonth::Last => date.day() == last,
            DayOfMonth::NearestWeekday(day) => {
                let target = (*day).min(last);
                let Ok(target_date) = Date::new(date.year(), date.month(), target) else {
                    return false;
                };
                let nearest = match target_date.weekday().to_sunday_one_offset() {
                    // Saturday: Friday, unless that leaves the month (then Monday).
                    7 if target > 1 => target - 1,
                    7 => target + 2,
                    // Sunday: Monday, unless that leaves the month (then Friday).
                    1 if target < last => target + 1,
                    1 => target - 2,
                    _ => target,
                };
                date.day() == nearest
            }
        };
        let dow = match &self.day_of_week {
            DayOfWeek::Any => true,
            DayOfWeek::Days(days) => days.contains(&weekday),
            DayOfWeek::Last(day) => *day == weekday && date.day() + 7 > last,
            DayOfWeek::Nth(day, nth) => *day == weekday && (date.day() - 1) / 7 + 1 == *nth,
        };
        dom && dow
    }

    fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone());
        let mut date = start.date();
        // Far enough for any yearly schedule, bounded so a year list in the past ends.
        for _ in 0..(366 * 8) {
            if self.day_matches(date) {
                for hour in &self.hours {
                    for minute in &self.minutes {
                        let Ok(time) = Time::new(*hour, *minute, 0, 0) else {
                            continue;
                        };
                        let ambiguous = tz.to_ambiguous_zoned(date.to_datetime(time));
                        if matches!(ambiguous.offset(), jiff::tz::AmbiguousOffset::Gap { .. }) {
                            continue;
                        }
                        let Ok(when) = ambiguous.compatible() else {
                            continue;
                        };
                        if when.timestamp() > after {
                            return Some(when.timestamp());
                        }
                    }
                }
            }
            date = date.checked_add(1.day()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next(expr: &str, after: &str, tz: &str) -> Option<String> {
        let tz = TimeZone::get(tz).unwrap();
        Expression::parse(expr)
            .unwrap()
            .next_after(ts(after), ts(after), &tz)
            .map(|t| t.to_string())
    }

    #[test]
    fn at_fires_once_in_its_time_zone() {
        assert_eq!(
            next(
                "at(2026-12-03T16:30:00)",
                "2026-12-03T15:00:00Z",
                "Europe/Berlin"
            )
            .as_deref(),
            Some("2026-12-03T15:30:00Z")
        );
        assert_eq!(
            next("at(2026-12-03T16:30:00)", "2026-12-03T16:31:00Z", "UTC"),
            None
        );
    }

    #[test]
    fn rate_counts_from_its_anchor() {
        let e = Expression::parse("rate(5 minutes)").unwrap();
        let anchor = ts("2026-12-03T10:00:00Z");
        assert_eq!(
            e.next_after(anchor, anchor, &TimeZone::UTC),
            Some(ts("2026-12-03T10:05:00Z"))
        );
        assert_eq!(
            e.next_after(ts("2026-12-03T10:07:00Z"), anchor, &TimeZone::UTC),
            Some(ts("2026-12-03T10:10:00Z"))
        );
        let before = ts("2026-12-03T09:59:59Z");
        assert_eq!(e.next_after(before, anchor, &TimeZone::UTC), Some(anchor));
        assert!(Expression::parse("rate(1 minutes)").is_err());
        assert!(Expression::parse("rate(2 hour)").is_err());
        assert!(Expression::parse("rate(0 days)").is_err());
    }

    #[test]
    fn cron_in_a_time_zone() {
        // 03:00 Berlin is 02:00 UTC in winter, 01:00 UTC in summer.
        assert_eq!(
            next("cron(0 3 * * ? *)", "2026-12-03T12:00:00Z", "Europe/Berlin").as_deref(),
            Some("2026-12-04T02:00:00Z")
        );
        assert_eq!(
            next("cron(0 3 * * ? *)", "2026-07-01T12:00:00Z", "Europe/Berlin").as_deref(),
            Some("2026-07-02T01:00:00Z")
        );
    }

    #[test]
    fn cron_across_a_daylight_saving_gap() {
        // 02:30 does not exist in Berlin on 2026-03-29: that day is skipped.
        assert_eq!(
            next(
                "cron(30 2 * * ? *)",
                "2026-03-28T12:00:00Z",
                "Europe/Berlin"
            )
            .as_deref(),
            Some("2026-03-30T00:30:00Z")
        );
        // 02:30 happens twice on 2026-10-25: it runs once, at the first (CEST).
        assert_eq!(
            next(
                "cron(30 2 * * ? *)",
                "2026-10-24T12:00:00Z",
                "Europe/Berlin"
            )
            .as_deref(),
            Some("2026-10-25T00:30:00Z")
        );
        assert_eq!(
            next(
                "cron(30 2 * * ? *)",
                "2026-10-25T00:30:00Z",
                "Europe/Berlin"
            )
            .as_deref(),
            Some("2026-10-26T01:30:00Z")
        );
    }

    #[test]
    fn cron_day_fields() {
        // Weekdays at 09:15 UTC: Friday 2026-12-04, then Monday 2026-12-07.
        assert_eq!(
            next("cron(15 9 ? * MON-FRI *)", "2026-12-04T10:00:00Z", "UTC").as_deref(),
            Some("2026-12-07T09:15:00Z")
        );
        // The last day of February 2027.
        assert_eq!(
            next("cron(0 0 L * ? *)", "2027-02-01T00:00:00Z", "UTC").as_deref(),
            Some("2027-02-28T00:00:00Z")
        );
        // The last Friday of December 2026 (the 25th).
        assert_eq!(
            next("cron(0 12 ? * 6L *)", "2026-12-01T00:00:00Z", "UTC").as_deref(),
            Some("2026-12-25T12:00:00Z")
        );
        // The second Tuesday of January 2027 (the 12th).
        assert_eq!(
            next("cron(0 8 ? JAN 3#2 2027)", "2026-12-01T00:00:00Z", "UTC").as_deref(),
            Some("2027-01-12T08:00:00Z")
        );
        // The weekday nearest the 1st of August 2026 (a Saturday): Monday the 3rd.
        assert_eq!(
            next("cron(0 6 1W * ? *)", "2026-07-15T00:00:00Z", "UTC").as_deref(),
            Some("2026-08-03T06:00:00Z")
        );
        // Every 20 minutes from :05.
        assert_eq!(
            next("cron(5/20 * * * ? *)", "2026-12-03T10:26:00Z", "UTC").as_deref(),
            Some("2026-12-03T10:45:00Z")
        );
        // A year that has passed never fires.
        assert_eq!(
            next("cron(0 0 1 1 ? 2020)", "2026-01-01T00:00:00Z", "UTC"),
            None
        );
    }

    #[test]
    fn refuses_what_the_service_refuses() {
        for bad in [
            "cron(0 3 * * * *)",
            "cron(0 3 ? * ? *)",
            "cron(0 3 * *)",
            "cron(60 3 * * ? *)",
            "cron(0 24 * * ? *)",
            "cron(0 3 ? * 8 *)",
            "at(2026-12-03 16:30)",
            "every day",
        ] {
            assert!(Expression::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}

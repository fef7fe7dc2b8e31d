//! Time zones by IANA name, for deadlines counted in calendar days of the tenant's
//! zone and for export schedules.
//!
//! The zone data is the tz database bundled into the binary by `jiff`
//! (`tzdb-bundle-always`): the same answer on every host, no zoneinfo files needed
//! in the Lambda image, and about 0.3 MB of compact TZif data instead of the
//! 1.9 MB of relocated tables `chrono-tz` linked into every function that converted
//! times (docs/PERFORMANCE.md, size). The rest of the crate speaks `chrono`; this
//! module is the one place where instants cross into and out of `jiff`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDate, TimeZone as _, Utc};
use jiff::tz::{AmbiguousOffset, TimeZone};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone (expected an IANA name such as Europe/Berlin or UTC)")]
pub struct UnknownTimeZone;

/// A time zone by its exact IANA name (`Europe/Berlin`, `UTC`); UTC by default.
#[derive(Clone)]
pub struct TenantZone {
    name: String,
    zone: TimeZone,
}

impl Default for TenantZone {
    fn default() -> Self {
        Self {
            name: "UTC".to_owned(),
            zone: TimeZone::UTC,
        }
    }
}

impl FromStr for TenantZone {
    type Err = UnknownTimeZone;

    /// Only the exact name: the lookup itself ignores case, but the name is stored
    /// and handed to EventBridge Scheduler, which does not.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let zone = TimeZone::get(name).map_err(|_| UnknownTimeZone)?;
        if zone.iana_name() != Some(name) {
            return Err(UnknownTimeZone);
        }
        Ok(Self {
            name: name.to_owned(),
            zone,
        })
    }
}

impl PartialEq for TenantZone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TenantZone {}

impl fmt::Debug for TenantZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantZone").field(&self.name).finish()
    }
}

impl TenantZone {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The calendar date of `at` in this zone.
    pub fn date_of(&self, at: DateTime<Utc>) -> NaiveDate {
        let local = self.zone.to_datetime(timestamp(at));
        NaiveDate::from_ymd_opt(
            i32::from(local.year()),
            u32::from(local.month().unsigned_abs()),
            u32::from(local.day().unsigned_abs()),
        )
        // jiff's civil dates are all valid chrono dates; UTC's date if not.
        .unwrap_or_else(|| at.date_naive())
    }

    /// The last second of `date` in this zone, as UTC: the first instant of the
    /// next local day minus one second.
    pub fn end_of(&self, date: NaiveDate) -> DateTime<Utc> {
        let next = date.succ_opt().unwrap_or(date);
        let start = self.start_of(next);
        start
            .checked_sub_signed(Duration::seconds(1))
            .unwrap_or(start)
    }

    /// The first instant of local `date`. A few zones shift their clocks at midnight:
    /// in a gap the day begins at the transition, in a fold at the first midnight.
    fn start_of(&self, date: NaiveDate) -> DateTime<Utc> {
        self.instant_at(date, 0, 0)
    }

    /// The instant the local clock shows `hour:minute` on `date`. A time the clocks
    /// skip (a gap) is read with the offset before the gap, so it lands as far past
    /// the transition as it was past the gap's start (at the gap's start: the
    /// transition itself); a time shown twice (a fold) is the first.
    pub fn instant_at(&self, date: NaiveDate, hour: u32, minute: u32) -> DateTime<Utc> {
        let utc_naive = || {
            let time = chrono::NaiveTime::from_hms_opt(hour, minute, 0).unwrap_or_default();
            Utc.from_utc_datetime(&date.and_time(time))
        };
        let Some(civil) = civil_at(date, hour, minute) else {
            return utc_naive();
        };
        let ambiguous = self.zone.to_ambiguous_timestamp(civil);
        let first = match ambiguous.offset() {
            // The local time does not exist; `later` reads it with the offset before
            // the gap (for the gap's start: the transition instant itself).
            AmbiguousOffset::Gap { .. } => ambiguous.later(),
            AmbiguousOffset::Fold { .. } | AmbiguousOffset::Unambiguous { .. } => {
                ambiguous.earlier()
            }
        };
        first
            .ok()
            .and_then(|ts| DateTime::from_timestamp(ts.as_second(), 0))
            .unwrap_or_else(utc_naive)
    }
}

fn timestamp(at: DateTime<Utc>) -> jiff::Timestamp {
    let nanos = i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0);
    jiff::Timestamp::new(at.timestamp(), nanos)
        .or_else(|_| jiff::Timestamp::new(at.timestamp(), 0))
        // Outside jiff's range (years beyond ±9999): the nearest end of it.
        .unwrap_or(if at.timestamp() < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        })
}

fn civil_at(date: NaiveDate, hour: u32, minute: u32) -> Option<jiff::civil::DateTime> {
    use chrono::Datelike as _;
    let year = i16::try_from(date.year()).ok()?;
    let month = i8::try_from(date.month()).ok()?;
    let day = i8::try_from(date.day()).ok()?;
    let hour = i8::try_from(hour).ok()?;
    let minute = i8::try_from(minute).ok()?;
    jiff::civil::DateTime::new(year, month, day, hour, minute, 0, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn only_exact_iana_names() {
        for name in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Pacific/Auckland",
        ] {
            assert_eq!(name.parse::<TenantZone>().unwrap().name(), name);
        }
        for bad in [
            "",
            "utc",
            "europe/berlin",
            "Mars/Olympus",
            "../etc/passwd",
            "+02:00",
        ] {
            assert_eq!(bad.parse::<TenantZone>(), Err(UnknownTimeZone), "{bad:?}");
        }
        assert_eq!(TenantZone::default().name(), "UTC");
    }

    #[test]
    fn dates_are_local() {
        let new_york: TenantZone = "America/New_York".parse().unwrap();
        assert_eq!(
            new_york.date_of(utc("2025-02-01T04:30:00Z")),
            day("2025-01-31")
        );
        assert_eq!(
            TenantZone::default().date_of(utc("2025-02-01T04:30:00Z")),
            day("2025-02-01")
        );
        let auckland: TenantZone = "Pacific/Auckland".parse().unwrap();
        assert_eq!(
            auckland.date_of(utc("2025-01-31T11:00:00Z")),
            day("2025-02-01")
        );
    }

    #[test]
    fn a_day_ends_at_its_last_local_second_across_dst() {
        let berlin: TenantZone = "Europe/Berlin".parse().unwrap();
        // Winter (UTC+1), summer (UTC+2), and the two change days.
        assert_eq!(
            berlin.end_of(day("2025-01-15")),
            utc("2025-01-15T22:59:59Z")
        );
        assert_eq!(
            berlin.end_of(day("2025-07-15")),
            utc("2025-07-15T21:59:59Z")
        );
        assert_eq!(
            berlin.end_of(day("2025-03-30")),
            utc("2025-03-30T21:59:59Z")
        );
        assert_eq!(
            berlin.end_of(day("2025-10-25")),
            utc("2025-10-25T21:59:59Z")
        );
    }

    #[test]
    fn midnight_gaps_and_folds_begin_the_day_at_its_first_instant() {
        // Santiago springs forward at local midnight (00:00 -04 → 01:00 -03) on
        // 8 September 2024: that day begins at 04:00 UTC, so 7 September ends just before.
        let santiago: TenantZone = "America/Santiago".parse().unwrap();
        assert_eq!(
            santiago.end_of(day("2024-09-07")),
            utc("2024-09-08T03:59:59Z")
        );
        // It falls back at midnight (00:00 -03 → 23:00 -04) on 7 April 2024: the last
        // hour of 6 April comes twice, and the day ends after the second one.
        assert_eq!(
            santiago.end_of(day("2024-04-06")),
            utc("2024-04-07T03:59:59Z")
        );
        // Havana falls back from 01:00 to 00:00 (-04 → -05) on 3 November 2024, so
        // its midnight comes twice: the day begins at the first one, 04:00 UTC.
        let havana: TenantZone = "America/Havana".parse().unwrap();
        assert_eq!(
            havana.end_of(day("2024-11-02")),
            utc("2024-11-03T03:59:59Z")
        );
        assert_eq!(
            havana.end_of(day("2024-11-03")),
            utc("2024-11-04T04:59:59Z")
        );
    }
}

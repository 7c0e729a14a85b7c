//! Maintenance windows: a five-field cron expression, a duration and a fixed UTC offset.
//!
//! A window opens at every minute its expression matches (in its time zone's local time) and
//! stays open for its duration. The evaluation is pure calendar arithmetic on [`Timestamp`]s:
//! no clock, no time zone database. Time zones are fixed offsets from UTC (`UTC`, `Z`,
//! `+05:30`, `-08:00`); named zones with daylight saving would need a bundled database, and a
//! fixed offset keeps a window's meaning independent of the build.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The longest window, in minutes (just under a day, as AWS IoT Jobs allows).
pub const MAX_WINDOW_MINUTES: u32 = 1430;
/// The longest expression, in characters.
pub const MAX_EXPRESSION_LEN: usize = 256;
/// How far ahead the next opening is searched, in days (a little over eight years, so every
/// valid day-of-month and month combination, 29 February included, is found).
const SEARCH_DAYS: i64 = 366 * 9;

const MINUTE_MS: i64 = 60_000;
const DAY_MINUTES: i64 = 1440;

/// Why an expression or time zone is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields separated by spaces.
    #[error("needs 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    /// A field that does not parse or names a value out of its range.
    #[error("field {field} ({name}) is invalid: {detail}")]
    Field {
        /// 1-based position.
        field: usize,
        /// Its name.
        name: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Longer than [`MAX_EXPRESSION_LEN`].
    #[error("is longer than {MAX_EXPRESSION_LEN} characters")]
    TooLong,
    /// A time zone that is not `UTC`, `Z` or `±HH:MM` within ±14:00.
    #[error("time zone must be UTC or an offset like +02:00 (-14:00 to +14:00)")]
    TimeZone,
    /// The expression never matches (e.g. 31 February).
    #[error("never matches a real date")]
    Never,
}

/// A parsed cron expression: `minute hour day-of-month month day-of-week`, each field `*`, a
/// number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of those.
/// Day of week is 0 to 7 (0 and 7 are Sunday). As in classic cron, when both day fields are
/// restricted a day matches if either matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CronExpr {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

fn parse_field(index: usize, text: &str) -> Result<(u64, bool), CronError> {
    let (name, lo, hi) = FIELDS[index];
    let err = |detail: String| CronError::Field {
        field: index + 1,
        name,
        detail,
    };
    let number = |s: &str| -> Result<u32, CronError> {
        let n: u32 = s
            .parse()
            .map_err(|_| err(format!("{s:?} is not a number")))?;
        if n < lo || n > hi {
            return Err(err(format!("{n} is outside {lo} to {hi}")));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| err(format!("step {s:?} is not a number")))?;
                if step == 0 || step > hi {
                    return Err(err(format!("step {step} is outside 1 to {hi}")));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(err(format!("range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let a = number(range)?;
            // `a/n` means from a to the end, stepping n.
            (a, if step > 1 { hi } else { a })
        };
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*"))
}

impl CronExpr {
    /// Parses an expression.
    pub fn parse(text: &str) -> Result<Self, CronError> {
        if text.len() > MAX_EXPRESSION_LEN {
            return Err(CronError::TooLong);
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError::FieldCount(fields.len()));
        }
        let mut parsed = [(0u64, false); 5];
        for (i, f) in fields.iter().enumerate() {
            parsed[i] = parse_field(i, f)?;
        }
        let mut weekdays = parsed[4].0;
        // 7 is another name for Sunday.
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let expr = Self {
            text: fields.join(" "),
            minutes: parsed[0].0,
            hours: parsed[1].0,
            days: parsed[2].0,
            months: parsed[3].0,
            weekdays,
            days_any: parsed[2].1,
            weekdays_any: parsed[4].1,
        };
        // A day-of-month every chosen month lacks (31 in April only) never matches; the
        // weekday alternative aside, such an expression is refused rather than never firing.
        if expr.next_match(0, SEARCH_DAYS * DAY_MINUTES).is_none() {
            return Err(CronError::Never);
        }
        Ok(expr)
    }

    /// The expression as written (fields separated by single spaces).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, days_since_epoch: i64) -> bool {
        let (_, month, day) = civil_from_days(days_since_epoch);
        if self.months & (1 << month) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let weekday = (days_since_epoch + 4).rem_euclid(7);
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    fn time_matches(&self, minute_of_day: i64) -> bool {
        let (h, m) = (minute_of_day / 60, minute_of_day % 60);
        self.hours & (1 << h) != 0 && self.minutes & (1 << m) != 0
    }

    /// Whether the local minute (minutes since the epoch, local time) matches.
    pub fn matches_minute(&self, local_minute: i64) -> bool {
        self.day_matches(local_minute.div_euclid(DAY_MINUTES))
            && self.time_matches(local_minute.rem_euclid(DAY_MINUTES))
    }

    /// The first local minute at or after `from` that matches, searching `span` minutes.
    fn next_match(&self, from: i64, span: i64) -> Option<i64> {
        let end = from + span;
        let mut day = from.div_euclid(DAY_MINUTES);
        let mut first = from.rem_euclid(DAY_MINUTES);
        while day * DAY_MINUTES < end {
            if self.day_matches(day) {
                for m in first..DAY_MINUTES {
                    if self.time_matches(m) {
                        let at = day * DAY_MINUTES + m;
                        return (at < end).then_some(at);
                    }
                }
            }
            day += 1;
            first = 0;
        }
        None
    }
}

impl TryFrom<String> for CronExpr {
    type Error = CronError;
    fn try_from(s: String) -> Result<Self, CronError> {
        Self::parse(&s)
    }
}

impl From<CronExpr> for String {
    fn from(c: CronExpr) -> String {
        c.text
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A fixed offset from UTC, in minutes; written `UTC` or `±HH:MM`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UtcOffset(i32);

impl UtcOffset {
    /// UTC itself.
    pub const UTC: UtcOffset = UtcOffset(0);

    /// Parses `UTC`, `Z` or `±HH:MM` (at most 14 hours either way).
    pub fn parse(s: &str) -> Result<Self, CronError> {
        if s == "UTC" || s == "Z" {
            return Ok(Self::UTC);
        }
        let b = s.as_bytes();
        if b.len() != 6 || b[3] != b':' || !matches!(b[0], b'+' | b'-') {
            return Err(CronError::TimeZone);
        }
        let digits = |r: std::ops::Range<usize>| -> Result<i32, CronError> {
            let t = &s[r];
            if !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(CronError::TimeZone);
            }
            t.parse().map_err(|_| CronError::TimeZone)
        };
        let (h, m) = (digits(1..3)?, digits(4..6)?);
        let total = h * 60 + m;
        if m >= 60 || total > 14 * 60 {
            return Err(CronError::TimeZone);
        }
        Ok(Self(if b[0] == b'-' { -total } else { total }))
    }

    /// Minutes east of UTC.
    pub const fn minutes(self) -> i32 {
        self.0
    }
}

impl TryFrom<String> for UtcOffset {
    type Error = CronError;
    fn try_from(s: String) -> Result<Self, CronError> {
        Self::parse(&s)
    }
}

impl From<UtcOffset> for String {
    fn from(o: UtcOffset) -> String {
        o.to_string()
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("UTC");
        }
        let sign = if self.0 < 0 { '-' } else { '+' };
        let a = self.0.abs();
        write!(f, "{sign}{:02}:{:02}", a / 60, a % 60)
    }
}

/// A recurring window: opens when `start` matches, stays open `duration_minutes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When it opens, in `time_zone`'s local time.
    pub start: CronExpr,
    /// How long it stays open, 1 to [`MAX_WINDOW_MINUTES`].
    pub duration_minutes: u32,
    /// The offset `start` is read in.
    #[serde(default)]
    pub time_zone: UtcOffset,
}

/// Whether maintenance windows allow queueing at a time, and when they next open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Inside a window (or there are none).
    pub open: bool,
    /// The next opening after `now` (`None` when open now, none are configured, or none is
    /// found within the search horizon).
    pub next_open: Option<Timestamp>,
}

impl MaintenanceWindow {
    fn local_minute(&self, t: Timestamp) -> i64 {
        let ms = i64::try_from(t.as_millis()).unwrap_or(i64::MAX);
        ms.div_euclid(MINUTE_MS) + i64::from(self.time_zone.minutes())
    }

    /// Whether `now` is inside an opening of this window: an opening minute lies less than
    /// the duration before it.
    pub fn is_open(&self, now: Timestamp) -> bool {
        let m0 = self.local_minute(now);
        (0..i64::from(self.duration_minutes)).any(|k| self.start.matches_minute(m0 - k))
    }

    /// The first opening strictly after `now`'s minute.
    pub fn next_opening(&self, now: Timestamp) -> Option<Timestamp> {
        let m = self
            .start
            .next_match(self.local_minute(now) + 1, SEARCH_DAYS * DAY_MINUTES)?;
        let utc_minute = m - i64::from(self.time_zone.minutes());
        let ms = u64::try_from(utc_minute.checked_mul(MINUTE_MS)?).ok()?;
        Some(Timestamp::from_millis(ms))
    }
}

/// Where `now` stands against `windows`: open when there are none or any is open; else the
/// earliest next opening.
pub fn window_state(windows: &[MaintenanceWindow], now: Timestamp) -> WindowState {
    if windows.is_empty() || windows.iter().any(|w| w.is_open(now)) {
        return WindowState {
            open: true,
            next_open: None,
        };
    }
    WindowState {
        open: false,
        next_open: windows.iter().filter_map(|w| w.next_opening(now)).min(),
    }
}

/// Year, month (1 to 12) and day (1 to 31) of a day count since 1970-01-01 (the proleptic
/// Gregorian calendar; the civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    // Both are small positive numbers by construction.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (m, d) = (m as u32, d as u32);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> Timestamp {
        // Days from civil, the inverse of `civil_from_days`, for test fixtures.
        let y2 = if mo <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let mp = i64::from(if mo > 2 { mo - 3 } else { mo + 9 });
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let ms = ((days * DAY_MINUTES) + h * 60 + mi) * MINUTE_MS;
        Timestamp::from_millis(u64::try_from(ms).unwrap())
    }

    fn window(expr: &str, minutes: u32, tz: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            start: CronExpr::parse(expr).unwrap(),
            duration_minutes: minutes,
            time_zone: UtcOffset::parse(tz).unwrap(),
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [0, 59, 365, 11_016, 19_782, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(
                at(y, m, d, 0, 0).as_millis(),
                u64::try_from(days * DAY_MINUTES * MINUTE_MS).unwrap_or(0)
            );
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn fields_accept_lists_ranges_and_steps() {
        let c = CronExpr::parse("*/15 9-17 * * 1-5").unwrap();
        assert_eq!(c.minutes, (1 << 0) | (1 << 15) | (1 << 30) | (1 << 45));
        assert_eq!(c.hours.count_ones(), 9);
        assert_eq!(c.weekdays, 0b11_1110);
        let c = CronExpr::parse("5,10-12,50/5 0 1 1,7 7").unwrap();
        assert_eq!(
            c.minutes,
            (1 << 5) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 50) | (1 << 55)
        );
        assert_eq!(c.weekdays, 1, "7 is Sunday");
        assert_eq!(c.as_str(), "5,10-12,50/5 0 1 1,7 7");
    }

    #[test]
    fn bad_expressions_name_the_field() {
        assert_eq!(CronExpr::parse("* * * *"), Err(CronError::FieldCount(4)));
        for (bad, field) in [
            ("60 * * * *", 1),
            ("* 24 * * *", 2),
            ("* * 0 * *", 3),
            ("* * * 13 *", 4),
            ("* * * * 8", 5),
            ("*/0 * * * *", 1),
            ("5-1 * * * *", 1),
            ("a * * * *", 1),
            ("* * * * -1", 5),
        ] {
            match CronExpr::parse(bad) {
                Err(CronError::Field { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(CronExpr::parse("0 0 31 2 *"), Err(CronError::Never));
        assert!(CronExpr::parse("0 0 29 2 *").is_ok(), "leap days exist");
        assert_eq!(CronExpr::parse(&"1,".repeat(200)), Err(CronError::TooLong));
    }

    #[test]
    fn offsets_parse_and_print() {
        assert_eq!(UtcOffset::parse("+05:30").unwrap().minutes(), 330);
        assert_eq!(UtcOffset::parse("-08:00").unwrap().minutes(), -480);
        assert_eq!(UtcOffset::parse("Z"), Ok(UtcOffset::UTC));
        assert_eq!(UtcOffset::parse("-08:00").unwrap().to_string(), "-08:00");
        for bad in [
            "+15:00",
            "+05:60",
            "0530",
            "Europe/Paris",
            "+5:30",
            "+0a:00",
        ] {
            assert_eq!(UtcOffset::parse(bad), Err(CronError::TimeZone), "{bad}");
        }
    }

    #[test]
    fn a_window_is_open_for_its_duration_after_each_match() {
        // Given a daily window at 02:00 for 60 minutes in UTC,
        let w = window("0 2 * * *", 60, "UTC");
        // then it is closed before, open from 02:00 to 02:59:59, closed at 03:00.
        assert!(!w.is_open(at(2026, 12, 4, 1, 59)));
        assert!(w.is_open(at(2026, 12, 4, 2, 0)));
        assert!(w.is_open(at(2026, 12, 4, 2, 59)));
        assert!(!w.is_open(at(2026, 12, 4, 3, 0)));
        // and the next opening after 03:00 is tomorrow at 02:00.
        assert_eq!(
            w.next_opening(at(2026, 12, 4, 3, 0)),
            Some(at(2026, 12, 5, 2, 0))
        );
    }

    #[test]
    fn windows_are_read_in_their_offset() {
        // Given 02:00 at +02:00, which is 00:00 UTC,
        let w = window("0 2 * * *", 30, "+02:00");
        assert!(w.is_open(at(2026, 12, 4, 0, 10)));
        assert!(!w.is_open(at(2026, 12, 4, 2, 10)));
        assert_eq!(
            w.next_opening(at(2026, 12, 4, 1, 0)),
            Some(at(2026, 12, 5, 0, 0))
        );
    }

    #[test]
    fn a_window_spanning_midnight_stays_open_into_the_next_day() {
        let w = window("30 23 * * 5", 120, "UTC"); // Fridays 23:30 for two hours
                                                   // 2026-12-04 is a Friday.
        assert!(w.is_open(at(2026, 12, 5, 1, 29)));
        assert!(!w.is_open(at(2026, 12, 5, 1, 30)));
        assert_eq!(
            w.next_opening(at(2026, 12, 5, 1, 30)),
            Some(at(2026, 12, 11, 23, 30))
        );
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        // The 1st of the month or any Monday.
        let w = window("0 12 1 * 1", 1, "UTC");
        // 2026-12-07 is a Monday; 2026-12-01 is a Tuesday.
        assert!(w.is_open(at(2026, 12, 7, 12, 0)));
        assert!(w.is_open(at(2026, 12, 1, 12, 0)));
        assert!(!w.is_open(at(2026, 12, 2, 12, 0)));
    }

    #[test]
    fn no_windows_means_always_open_and_several_take_the_earliest() {
        let now = at(2026, 12, 4, 10, 0);
        assert!(window_state(&[], now).open);
        let ws = [
            window("0 22 * * *", 60, "UTC"),
            window("0 14 * * *", 60, "UTC"),
        ];
        let s = window_state(&ws, now);
        assert!(!s.open);
        assert_eq!(s.next_open, Some(at(2026, 12, 4, 14, 0)));
        assert!(window_state(&ws, at(2026, 12, 4, 14, 30)).open);
    }

    #[test]
    fn leap_day_windows_are_found_years_ahead() {
        let w = window("0 0 29 2 *", 10, "UTC");
        assert_eq!(
            w.next_opening(at(2097, 3, 1, 0, 0)),
            Some(at(2104, 2, 29, 0, 0)),
            "2100 is not a leap year"
        );
    }
}

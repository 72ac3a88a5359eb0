//! RFC 3339 timestamps for conditions (`timestamp("2026-01-01T00:00:00Z")`),
//! parsed and printed here so the crate needs no date library.
//!
//! The range is CEL's, years 0001 to 9999; offsets (`+01:00`) and fractions of
//! a second down to nanoseconds are accepted, leap seconds are not.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An instant, as seconds and nanoseconds since the Unix epoch (seconds may be
/// negative). Ordered in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
}

const NANOS: u32 = 1_000_000_000;

impl Timestamp {
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(before) => {
                let d = before.duration();
                let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => Self { secs, nanos: 0 },
                    n => Self {
                        secs: secs - 1,
                        nanos: NANOS - n,
                    },
                }
            }
        }
    }

    /// `None` if the platform's `SystemTime` cannot represent it.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let nanos = Duration::from_nanos(u64::from(self.nanos));
        if self.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(self.secs.unsigned_abs()) + nanos)
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(self.secs.unsigned_abs()))?
                .checked_add(nanos)
        }
    }

    /// Parses an RFC 3339 timestamp; the error says what is wrong.
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        let digits = |from: usize, len: usize| -> Result<i64, String> {
            let part = b
                .get(from..from + len)
                .filter(|p| p.iter().all(u8::is_ascii_digit))
                .ok_or_else(|| format!("expected {len} digits at offset {from}"))?;
            Ok(part
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
        };
        let expect = |at: usize, what: &[u8]| -> Result<(), String> {
            match b.get(at) {
                Some(c) if what.contains(c) => Ok(()),
                _ => Err(format!("expected `{}` at offset {at}", char::from(what[0]))),
            }
        };
        let shape = "expected RFC 3339, e.g. `2026-01-31T12:00:00Z`";
        if b.len() < 20 {
            return Err(shape.to_owned());
        }
        let year = digits(0, 4)?;
        expect(4, b"-")?;
        let month = digits(5, 2)?;
        expect(7, b"-")?;
        let day = digits(8, 2)?;
        expect(10, b"Tt")?;
        let hour = digits(11, 2)?;
        expect(13, b":")?;
        let minute = digits(14, 2)?;
        expect(16, b":")?;
        let second = digits(17, 2)?;
        let mut at = 19;
        let mut nanos = 0u32;
        if b.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            let frac = &b[start..at];
            if frac.is_empty() || frac.len() > 9 {
                return Err("fraction of a second must have 1 to 9 digits".to_owned());
            }
            let value = frac
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
            nanos = value * 10u32.pow(9 - frac.len() as u32);
        }
        let offset_secs = match b.get(at) {
            Some(b'Z' | b'z') if at + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
                let oh = digits(at + 1, 2)?;
                expect(at + 3, b":")?;
                let om = digits(at + 4, 2)?;
                if oh > 23 || om > 59 {
                    return Err(format!("offset `{}` is out of range", &s[at..]));
                }
                let off = oh * 3600 + om * 60;
                if *sign == b'+' { off } else { -off }
            }
            _ => {
                return Err(format!(
                    "expected `Z` or an offset like `+01:00` at offset {at}"
                ));
            }
        };
        if !(1..=9999).contains(&year) {
            return Err(format!("year {year} is outside 0001 to 9999"));
        }
        if !(1..=12).contains(&month) {
            return Err(format!("month {month:02} is outside 01 to 12"));
        }
        let month = month as u32;
        if day < 1 || day > i64::from(days_in_month(year, month)) {
            return Err(format!(
                "day {day:02} does not exist in {year:04}-{month:02}"
            ));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(format!(
                "time {hour:02}:{minute:02}:{second:02} is out of range"
            ));
        }
        let days = days_from_civil(year, month, day as u32);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
        Ok(Self { secs, nanos })
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, with a fraction only when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )?;
        if self.nanos != 0 {
            let frac = format!("{:09}", self.nanos);
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(
            ts("1970-01-01T00:00:00Z").to_system_time(),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            ts("2026-03-01T12:34:56Z").to_system_time(),
            Some(UNIX_EPOCH + Duration::from_secs(1_772_368_496))
        );
        assert_eq!(ts("2026-03-01T13:34:56+01:00"), ts("2026-03-01T12:34:56Z"));
        assert_eq!(
            ts("2026-03-01T12:34:56.5Z").to_string(),
            "2026-03-01T12:34:56.5Z"
        );
        assert_eq!(
            ts("2024-02-29T00:00:00Z").to_string(),
            "2024-02-29T00:00:00Z"
        );
        assert_eq!(
            ts("0001-01-01T00:00:00Z").to_string(),
            "0001-01-01T00:00:00Z"
        );
        assert_eq!(
            ts("9999-12-31T23:59:59.999999999Z").to_string(),
            "9999-12-31T23:59:59.999999999Z"
        );
        let before = ts("1969-12-31T23:59:59.25Z");
        assert_eq!(
            Timestamp::from_system_time(before.to_system_time().expect("in range")),
            before
        );
        assert!(before < ts("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn refuses_bad_timestamps() {
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:60Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+0100",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00.Z",
            "0000-01-01T00:00:00Z",
            "2026-01-01T00:00:00Zjunk",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}

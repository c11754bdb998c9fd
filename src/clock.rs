//! The one place that reads time. The engine takes `now_ms` as an argument; the server asks a `Clock`,
//! which tests replace with one they move by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A time in Unix milliseconds as RFC 3339 with milliseconds, UTC: how times appear in every API body
/// and tool output. RFC 3339 has four-digit years: later times print as the last millisecond of 9999.
pub fn rfc3339(ms: u64) -> String {
    let ms = ms.min(LAST_MS);
    let secs = ms / 1000;
    let (year, month, day) = civil_date(secs / 86_400);
    // By hand, not through the formatter: every reservation the API returns carries one or two of these.
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    let of_day = secs % 86_400;
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 3, ms % 1000);
    String::from_utf8(text.to_vec()).expect("ASCII")
}

/// 9999-12-31T23:59:59.999Z.
const LAST_MS: u64 = 253_402_300_799_999;

/// Year, month and day of a count of days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let (era, day_of_era) = (z / 146_097, z % 146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// An RFC 3339 date-time (section 5.6: `T` or `t`, `Z`, `z` or a numeric offset, any number of
/// fraction digits, a leap second read as :59) as Unix milliseconds; a time before 1970 is 0. This is
/// what JSON Schema's `date-time` format admits, so a time valid by the API description is taken.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |at: usize, width: usize| -> Option<i64> {
        let digits = b.get(at..at + width)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let punct = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(punct(4, b'-') && punct(7, b'-') && matches!(b.get(10), Some(b'T' | b't'))) {
        return None;
    }
    if !(punct(13, b':') && punct(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if punct(at, b'.') {
        let digits = b[at + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        millis = b[at + 1..at + 1 + digits.min(3)].iter().fold(0, |n, d| n * 10 + i64::from(d - b'0'));
        millis *= 10i64.pow(3 - digits.min(3) as u32);
        at += 1 + digits;
    }
    let offset_minutes = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Some(u64::try_from(seconds * 1000 + millis).unwrap_or(0))
}

/// Days since 1970-01-01 of a date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A clock that moves only when told (tests).
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reference(ms: u64) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }

    #[test]
    fn rfc3339_matches_the_reference_formatter() {
        let day = 86_400_000u64;
        let edges = [
            0,
            1,
            day - 1,
            951_782_400_000,     // 2000-02-29
            951_868_800_000,     // 2000-03-01
            4_107_542_400_000,   // 2100-03-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
        ];
        // Plus a spread of times (a fixed linear congruential sequence) up to the year 9999.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let spread = (0..20_000).map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            x % 253_402_300_800_000
        });
        for ms in edges.into_iter().chain(spread) {
            assert_eq!(rfc3339(ms), reference(ms), "{ms} ms");
        }
        assert_eq!(rfc3339(LAST_MS + 1), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_parses_what_it_formats_and_every_offset() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let ms = x % 253_402_300_800_000;
            assert_eq!(parse_rfc3339_ms(&rfc3339(ms)), Some(ms), "{ms} ms");
        }
        let noon = 1_780_000_000_000 / 86_400_000 * 86_400_000 + 12 * 3_600_000;
        let day = rfc3339(noon)[..10].to_string();
        for same in ["T12:00:00Z", "t12:00:00z", "T14:30:00+02:30", "T02:00:00-10:00", "T12:00:00.0000Z"] {
            assert_eq!(parse_rfc3339_ms(&format!("{day}{same}")), Some(noon), "{same}");
        }
        assert_eq!(parse_rfc3339_ms("2030-06-30T23:59:60Z"), parse_rfc3339_ms("2030-06-30T23:59:59Z"));
        assert_eq!(parse_rfc3339_ms("2030-06-30T23:59:59.98765Z").map(|ms| ms % 1000), Some(987));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), Some(0), "before 1970: open already");
        assert_eq!(parse_rfc3339_ms("0000-01-01T00:00:00+23:59"), Some(0));
        assert_eq!(parse_rfc3339_ms("9999-12-31T23:59:59.999-23:59").map(|ms| ms > LAST_MS), Some(true));
        assert_eq!(parse_rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "",
            "2030-06-30",
            "2030-06-30 12:00:00Z",
            "2030-06-30T12:00:00",
            "2030-06-31T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2030-13-01T12:00:00Z",
            "2030-06-30T24:00:00Z",
            "2030-06-30T12:60:00Z",
            "2030-06-30T12:00:61Z",
            "2030-06-30T12:00:00.Z",
            "2030-06-30T12:00:00+2:00",
            "2030-06-30T12:00:00+24:00",
            "2030-06-30T12:00:00Zjunk",
            "+2030-06-30T12:00:00Z",
            "２030-06-30T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}

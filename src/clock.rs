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
}

//! The waiting room's side that faces shoppers: signed tickets and admission tokens, and when to poll.
//! The queue itself (who joined, in what order, who is admitted) is engine state, logged like every
//! mutation (`engine::queue`); this module holds nothing that a restart could lose.

mod token;

pub use token::{Claims, Kind, Signer, TokenError, KEY_FILE};

/// Polling hints: a waiting shopper is told to come back after about the time until they are expected
/// to be admitted, never sooner than `POLL_MIN_MS` and never later than `POLL_MAX_MS` (the latest a
/// shopper learns that the sale sold out).
pub const POLL_MIN_MS: u64 = 1_000;
pub const POLL_MAX_MS: u64 = 15_000;

/// How long a ticket stays valid after the later of joining and the room's opening.
pub const TICKET_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Milliseconds from `now_ms` until a shopper with `ahead` others before them is expected to be
/// admitted, at `rate` admissions per second, in a room opening at `opens_at_ms`.
pub fn eta_in_ms(ahead: u64, rate: u32, now_ms: u64, opens_at_ms: u64) -> u64 {
    opens_at_ms.saturating_sub(now_ms) + ahead.saturating_mul(1000).div_ceil(u64::from(rate.max(1)))
}

/// The interval for a shopper expected in `eta_in_ms`, before jitter.
pub fn poll_interval_ms(eta_in_ms: u64) -> u64 {
    eta_in_ms.clamp(POLL_MIN_MS, POLL_MAX_MS)
}

/// The hint itself: the interval shortened by up to half, by a draw from `user` and `now_ms`, so that
/// shoppers who arrived together (everyone, at opening) do not come back together.
pub fn poll_after_ms(eta_in_ms: u64, user: &str, now_ms: u64) -> u64 {
    let interval = poll_interval_ms(eta_in_ms);
    let draw = xxhash_rust::xxh3::xxh3_64_with_seed(user.as_bytes(), now_ms);
    interval - draw % (interval / 2).max(1)
}

/// Before a lottery's draw nobody knows their place. For the hint, a shopper is given a stand-in place
/// spread uniformly over the entrants by a hash of their id, so their polls after opening spread as a
/// real queue's do instead of all arriving at the opening.
pub fn stand_in_place(user: &str, entrants: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user.as_bytes()) % entrants.max(1)
}

/// The most polls per second `waiting` shoppers make, on average, when every one follows its hint, at
/// `rate` admissions per second once the room is open: the first `rate·MIN` shoppers poll every `MIN`,
/// the shopper `a` places from the front every `a / rate` up to `MAX`, and everyone behind every `MAX`.
/// Summed: `rate·(1 + ln(MAX/MIN)) + (waiting − rate·MAX)/MAX`, bounded by the admission rate and
/// growing with the queue only as `waiting / MAX`; the jitter (an interval shortened by a uniform
/// share of up to half) multiplies it by the mean of 1/(1 − u/2), which is 2·ln 2.
pub fn worst_case_polls_per_s(waiting: u64, rate: u32) -> f64 {
    2.0 * std::f64::consts::LN_2 * unjittered_polls_per_s(waiting, rate)
}

fn unjittered_polls_per_s(waiting: u64, rate: u32) -> f64 {
    let (rate, n) = (f64::from(rate.max(1)), waiting as f64);
    let (min_s, max_s) = (POLL_MIN_MS as f64 / 1000.0, POLL_MAX_MS as f64 / 1000.0);
    let front = n.min(rate * min_s); // poll every MIN
    let middle_end = n.min(rate * max_s);
    // The sum of rate/a over the middle places, bounded above by its integral plus the first term.
    let middle =
        if middle_end > rate * min_s { rate * (middle_end / (rate * min_s)).ln() + 1.0 / min_s } else { 0.0 };
    let back = (n - rate * max_s).max(0.0) / max_s;
    front / min_s + middle + back
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed form bounds the sum of every waiting shopper's polls, closely.
    #[test]
    fn worst_case_poll_rate_is_the_sum_of_the_hints() {
        for (waiting, rate) in [(100_000u64, 2_000u32), (5_000, 500), (1_000_000, 10_000), (10, 1)] {
            let summed: f64 = (0..waiting)
                .map(|ahead| 1000.0 / poll_interval_ms(eta_in_ms(ahead, rate, 0, 0)) as f64)
                .sum();
            let closed = unjittered_polls_per_s(waiting, rate);
            assert!(summed <= closed, "{waiting} at {rate}/s: {summed} vs {closed}");
            assert!(rate < 100 || closed / summed < 1.01, "{waiting} at {rate}/s: {summed} vs {closed}");
        }
    }

    #[test]
    fn hints_grow_with_the_distance_to_the_front() {
        let hint = |ahead| poll_interval_ms(eta_in_ms(ahead, 1_000, 0, 0));
        assert_eq!(hint(0), POLL_MIN_MS);
        assert_eq!(hint(5_000), 5_000);
        assert_eq!(hint(1_000_000), POLL_MAX_MS);
        assert_eq!(poll_interval_ms(eta_in_ms(0, 1_000, 0, 60_000)), POLL_MAX_MS, "far from opening");
    }

    /// Jittered hints stay within half the interval and average out to the factor the bound uses.
    #[test]
    fn jitter_spreads_hints_over_the_second_half_of_the_interval() {
        let hints: Vec<u64> = (0..100_000).map(|u| poll_after_ms(15_000, &format!("u{u}"), 7)).collect();
        assert!(hints.iter().all(|h| (7_500..=15_000).contains(h)));
        let mean_rate: f64 = hints.iter().map(|h| 15_000.0 / *h as f64).sum::<f64>() / hints.len() as f64;
        assert!((mean_rate - 2.0 * std::f64::consts::LN_2).abs() < 0.01, "{mean_rate}");
    }
}

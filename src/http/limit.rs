//! A bounded rate of waiting-room joins per client address: a bot cannot mint user ids faster than a
//! household behind one address would join. Joins are already bounded per user id (the engine); this is
//! the cheap bound on how many user ids one address brings.
//!
//! Each address has a GCRA bucket (one `u64`: the time its bucket is next empty): `rate` joins a second
//! on average, `burst` at once. Loopback is never limited (no shopper comes from it; the drill and a
//! local proxy do). Behind a proxy named in `forwarded_by`, the address is the last hop the proxy saw
//! (`X-Forwarded-For`'s last entry). IPv6 addresses are limited by their /64, which one subscriber holds.

use hyper::HeaderMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct JoinLimit {
    /// Joins a second per address on average; 0 turns the limit off.
    pub per_s: u32,
    /// Joins one address may make at once.
    pub burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub forwarded_by: Vec<IpAddr>,
}

impl Default for JoinLimit {
    fn default() -> Self {
        // Generous: a carrier-grade NAT puts many shoppers behind one address.
        Self { per_s: 20, burst: 100, forwarded_by: Vec::new() }
    }
}

const SHARDS: usize = 16;
/// Addresses tracked per shard at most. Past it, a sweep drops the buckets that have refilled; an
/// address that still finds no room is let through untracked (counted), so that the table's bound
/// never refuses a shopper the limit would not have.
const SHARD_ADDRESSES_MAX: usize = 1 << 16;

pub struct JoinLimiter {
    config: JoinLimit,
    /// Microseconds between joins, and the burst's tolerance in microseconds.
    interval_us: u64,
    tolerance_us: u64,
    started: Instant,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// By address: when its bucket is next empty, in µs since `started`.
    buckets: HashMap<u128, u64, foldhash::fast::RandomState>,
    /// When the full table was last swept: at most one sweep per `SWEEP_EVERY_US`, so that a flood
    /// of new addresses cannot make every join pay for one.
    swept_at_us: Option<u64>,
}

const SWEEP_EVERY_US: u64 = 100_000;

/// Why a join was refused: how long until the address may join again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_s: u64,
}

/// What the limiter did with a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Not limited: loopback, the limit off, or the table full.
    Untracked,
    Refused(Limited),
}

impl JoinLimiter {
    pub fn new(config: JoinLimit) -> Self {
        let interval_us = 1_000_000 / u64::from(config.per_s.max(1));
        let tolerance_us = interval_us * u64::from(config.burst.max(1) - 1);
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self { config, interval_us, tolerance_us, started: Instant::now(), shards }
    }

    /// The address a request comes from: the peer, or for a trusted proxy the last hop it forwarded.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.config.forwarded_by.contains(&peer) {
            return peer;
        }
        let last = headers.get_all("x-forwarded-for").iter().next_back().and_then(|v| v.to_str().ok());
        last.and_then(|v| v.rsplit(',').next()).and_then(|hop| hop.trim().parse().ok()).unwrap_or(peer)
    }

    pub fn check(&self, client: IpAddr) -> Verdict {
        self.check_at(client, self.started.elapsed().as_micros() as u64)
    }

    fn check_at(&self, client: IpAddr, now_us: u64) -> Verdict {
        let client = client.to_canonical();
        if self.config.per_s == 0 || client.is_loopback() {
            return Verdict::Untracked;
        }
        let key = match client {
            IpAddr::V4(a) => u128::from(a.to_bits()),
            // Tagged apart from IPv4, limited by its /64.
            IpAddr::V6(a) => (a.to_bits() & !u128::from(u64::MAX)) | 1,
        };
        let shard = &self.shards[(key as usize ^ (key >> 64) as usize) % SHARDS];
        let mut shard = shard.lock();
        if shard.buckets.len() >= SHARD_ADDRESSES_MAX && !shard.buckets.contains_key(&key) {
            if shard.swept_at_us.is_some_and(|at| now_us < at + SWEEP_EVERY_US) {
                return Verdict::Untracked;
            }
            shard.swept_at_us = Some(now_us);
            shard.buckets.retain(|_, empty_at| *empty_at > now_us);
            if shard.buckets.len() >= SHARD_ADDRESSES_MAX {
                return Verdict::Untracked;
            }
        }
        let empty_at = shard.buckets.entry(key).or_insert(0);
        let start = (*empty_at).max(now_us);
        if start - now_us > self.tolerance_us {
            let wait_us = start - now_us - self.tolerance_us;
            return Verdict::Refused(Limited { retry_after_s: wait_us.div_ceil(1_000_000).max(1) });
        }
        *empty_at = start + self.interval_us;
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_s: u32, burst: u32) -> JoinLimiter {
        JoinLimiter::new(JoinLimit { per_s, burst, forwarded_by: vec!["10.0.0.1".parse().expect("ip")] })
    }

    #[test]
    fn an_address_gets_its_burst_then_its_rate() {
        let l = limiter(2, 5);
        let a: IpAddr = "203.0.113.7".parse().expect("ip");
        for _ in 0..5 {
            assert_eq!(l.check_at(a, 0), Verdict::Allowed);
        }
        assert_eq!(l.check_at(a, 0), Verdict::Refused(Limited { retry_after_s: 1 }));
        // Another address is not held back by it.
        assert_eq!(l.check_at("203.0.113.8".parse().expect("ip"), 0), Verdict::Allowed);
        // Half a second later, one more (2 a second).
        assert_eq!(l.check_at(a, 500_000), Verdict::Allowed);
        assert!(matches!(l.check_at(a, 500_000), Verdict::Refused(_)));
        // After the burst's time, the whole burst again.
        for _ in 0..5 {
            assert_eq!(l.check_at(a, 10_000_000), Verdict::Allowed);
        }
    }

    #[test]
    fn loopback_and_a_zero_rate_are_not_limited_and_ipv6_counts_by_its_64() {
        let l = limiter(1, 1);
        for _ in 0..10 {
            assert_eq!(l.check_at("127.0.0.1".parse().expect("ip"), 0), Verdict::Untracked);
            assert_eq!(l.check_at("::1".parse().expect("ip"), 0), Verdict::Untracked);
        }
        assert_eq!(l.check_at("2001:db8:1:2::1".parse().expect("ip"), 0), Verdict::Allowed);
        assert!(matches!(l.check_at("2001:db8:1:2::ffff".parse().expect("ip"), 0), Verdict::Refused(_)));
        assert_eq!(l.check_at("2001:db8:1:3::1".parse().expect("ip"), 0), Verdict::Allowed);
        // An IPv4-mapped address is its IPv4 address.
        assert_eq!(l.check_at("198.51.100.1".parse().expect("ip"), 0), Verdict::Allowed);
        assert!(matches!(l.check_at("::ffff:198.51.100.1".parse().expect("ip"), 0), Verdict::Refused(_)));
        let off = limiter(0, 1);
        assert_eq!(off.check_at("198.51.100.1".parse().expect("ip"), 0), Verdict::Untracked);
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let l = limiter(1, 1);
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "1.1.1.1, 198.51.100.9".parse().expect("value"));
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(l.client(proxy, &headers), "198.51.100.9".parse::<IpAddr>().expect("ip"));
        assert_eq!(l.client(other, &headers), other, "anyone else's header is ignored");
        headers.insert("x-forwarded-for", "not an address".parse().expect("value"));
        assert_eq!(l.client(proxy, &headers), proxy);
    }

    #[test]
    fn a_full_table_drops_refilled_buckets_and_never_refuses_for_its_bound() {
        let l = limiter(1000, 1);
        let mut refused = 0;
        for i in 0..(SHARD_ADDRESSES_MAX as u32 * SHARDS as u32 * 2) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from_bits(0x0b00_0000 + i));
            refused +=
                usize::from(matches!(l.check_at(a, u64::from(i / 1000) * 1_000_000), Verdict::Refused(_)));
        }
        assert_eq!(refused, 0);
        assert!(l.shards.iter().all(|s| s.lock().buckets.len() <= SHARD_ADDRESSES_MAX));
    }
}

//! A bounded rate of waiting-room joins per client address: a bot cannot mint user ids faster than a
//! household behind one address would join. Joins are already bounded per user id (the engine); this is
//! the cheap bound on how many user ids one address brings.
//!
//! Each address has a GCRA bucket (one `u64`: the time its bucket is next empty): `rate` joins a second
//! on average, `burst` at once. Loopback is never limited (no shopper comes from it; the drill and a
//! local proxy do). Behind proxies named in `forwarded_by`, the address is the first hop, read from the
//! right of `X-Forwarded-For`, that is not one of them (see `client`). IPv6 addresses are limited by
//! their /64, which one subscriber holds. Only a join that adds a shopper counts (see `refund`).

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

/// Whom a join counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Address(IpAddr),
    /// A trusted proxy forwarded a hop that is not an address: every such join shares one bucket, so
    /// that a forged `X-Forwarded-For` entry buys nothing.
    Unreadable,
}

/// The bucket of `Client::Unreadable`: no address's key (IPv4 keys are IPv4-mapped, IPv6 keys end in 1).
const UNREADABLE_KEY: u128 = u128::MAX;

impl JoinLimiter {
    pub fn new(mut config: JoinLimit) -> Self {
        // A dual-stack listener sees an IPv4 proxy as ::ffff:a.b.c.d: compare canonical forms.
        config.forwarded_by = config.forwarded_by.iter().map(IpAddr::to_canonical).collect();
        let interval_us = (1_000_000 / u64::from(config.per_s.max(1))).max(1);
        let tolerance_us = interval_us * u64::from(config.burst.max(1) - 1);
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self { config, interval_us, tolerance_us, started: Instant::now(), shards }
    }

    fn trusted(&self, a: IpAddr) -> bool {
        self.config.forwarded_by.contains(&a)
    }

    /// Whom a request counts against: its peer, or for a trusted proxy the hop it forwarded. Entries
    /// of `X-Forwarded-For` are read right to left (every field, in order): each trusted proxy
    /// appended the address it saw, so the first entry that is not a trusted proxy is the client.
    /// Entries further left are the client's own words and never read.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        let peer = peer.to_canonical();
        if !self.trusted(peer) {
            return Client::Address(peer);
        }
        for field in headers.get_all("x-forwarded-for").iter().rev() {
            for hop in field.as_bytes().rsplit(|b| *b == b',') {
                let hop = hop.trim_ascii();
                if hop.is_empty() {
                    continue;
                }
                match std::str::from_utf8(hop).ok().and_then(parse_hop) {
                    Some(a) if self.trusted(a) => continue,
                    Some(a) => return Client::Address(a),
                    None => return Client::Unreadable,
                }
            }
        }
        // No hop but trusted proxies: the proxy's own request.
        Client::Address(peer)
    }

    /// Counts a join against `client`, or refuses it.
    pub fn check(&self, client: Client) -> Verdict {
        self.check_at(client, self.now_us())
    }

    /// Gives back a join `check` counted that turned out to record no one (a repeat, a sold-out sale, a
    /// refusal): the limit is on shoppers added, not on requests.
    pub fn refund(&self, client: Client) {
        let Some(key) = self.key(client) else { return };
        if let Some(empty_at) = self.shard(key).lock().buckets.get_mut(&key) {
            *empty_at = empty_at.saturating_sub(self.interval_us);
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// The bucket's key, or `None` for a client that is not limited.
    fn key(&self, client: Client) -> Option<u128> {
        if self.config.per_s == 0 {
            return None;
        }
        match client {
            Client::Unreadable => Some(UNREADABLE_KEY),
            Client::Address(a) if a.to_canonical().is_loopback() => None,
            Client::Address(a) => Some(match a.to_canonical() {
                IpAddr::V4(a) => a.to_ipv6_mapped().to_bits(),
                // Limited by its /64, which one subscriber holds.
                IpAddr::V6(a) => (a.to_bits() & !u128::from(u64::MAX)) | 1,
            }),
        }
    }

    fn shard(&self, key: u128) -> &Mutex<Shard> {
        &self.shards[(key as usize ^ (key >> 64) as usize) % SHARDS]
    }

    fn check_at(&self, client: Client, now_us: u64) -> Verdict {
        let Some(key) = self.key(client) else { return Verdict::Untracked };
        let mut shard = self.shard(key).lock();
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

/// An `X-Forwarded-For` hop: an address, or an address with a port (`198.51.100.7:4711`, `[2001:db8::1]:80`)
/// or in brackets, as some proxies write them.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let bare = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(hop);
    let parsed = bare.parse().ok().or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
    parsed.map(|a: IpAddr| a.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_s: u32, burst: u32) -> JoinLimiter {
        let forwarded_by = vec!["10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip")];
        JoinLimiter::new(JoinLimit { per_s, burst, forwarded_by })
    }

    fn at(a: &str) -> Client {
        Client::Address(a.parse().expect("ip"))
    }

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_a_refund_gives_one_back() {
        let l = limiter(2, 5);
        let a = at("203.0.113.7");
        for _ in 0..5 {
            assert_eq!(l.check_at(a, 0), Verdict::Allowed);
        }
        assert_eq!(l.check_at(a, 0), Verdict::Refused(Limited { retry_after_s: 1 }));
        // Another address is not held back by it.
        assert_eq!(l.check_at(at("203.0.113.8"), 0), Verdict::Allowed);
        // Half a second later, one more (2 a second).
        assert_eq!(l.check_at(a, 500_000), Verdict::Allowed);
        assert!(matches!(l.check_at(a, 500_000), Verdict::Refused(_)));
        // A join that recorded no one is given back.
        l.refund(a);
        assert_eq!(l.check_at(a, 500_000), Verdict::Allowed);
        // After the burst's time, the whole burst again.
        for _ in 0..5 {
            assert_eq!(l.check_at(a, 10_000_000), Verdict::Allowed);
        }
    }

    #[test]
    fn loopback_and_a_zero_rate_are_not_limited_and_ipv6_counts_by_its_64() {
        let l = limiter(1, 1);
        for _ in 0..10 {
            assert_eq!(l.check_at(at("127.0.0.1"), 0), Verdict::Untracked);
            assert_eq!(l.check_at(at("::1"), 0), Verdict::Untracked);
            assert_eq!(l.check_at(at("::ffff:127.0.0.1"), 0), Verdict::Untracked);
        }
        assert_eq!(l.check_at(at("2001:db8:1:2::1"), 0), Verdict::Allowed);
        assert!(matches!(l.check_at(at("2001:db8:1:2::ffff"), 0), Verdict::Refused(_)));
        assert_eq!(l.check_at(at("2001:db8:1:3::1"), 0), Verdict::Allowed);
        // An IPv4-mapped address is its IPv4 address; ::/64 is not 0.0.0.1.
        assert_eq!(l.check_at(at("198.51.100.1"), 0), Verdict::Allowed);
        assert!(matches!(l.check_at(at("::ffff:198.51.100.1"), 0), Verdict::Refused(_)));
        assert_eq!(l.check_at(at("0.0.0.1"), 0), Verdict::Allowed);
        assert_eq!(l.check_at(at("::2"), 0), Verdict::Allowed);
        let off = limiter(0, 1);
        assert_eq!(off.check_at(at("198.51.100.1"), 0), Verdict::Untracked);
        // A rate past a million a second is a microsecond apart, not no limit.
        let fast = limiter(u32::MAX, 1);
        assert_eq!(fast.check_at(at("198.51.100.1"), 0), Verdict::Allowed);
        assert!(matches!(fast.check_at(at("198.51.100.1"), 0), Verdict::Refused(_)));
    }

    fn forwarded(l: &JoinLimiter, peer: &str, fields: &[&[u8]]) -> Client {
        let mut headers = HeaderMap::new();
        for f in fields {
            headers.append("x-forwarded-for", hyper::header::HeaderValue::from_bytes(f).expect("value"));
        }
        l.client(peer.parse().expect("ip"), &headers)
    }

    #[test]
    fn only_trusted_proxies_name_the_client_reading_from_the_right() {
        let l = limiter(1, 1);
        let client = at("198.51.100.9");
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"1.1.1.1, 198.51.100.9"]), client);
        assert_eq!(forwarded(&l, "10.0.0.3", &[b"1.1.1.1, 198.51.100.9"]), at("10.0.0.3"), "untrusted");
        // A dual-stack listener sees the IPv4 proxy as IPv4-mapped.
        assert_eq!(forwarded(&l, "::ffff:10.0.0.1", &[b"198.51.100.9"]), client);
        // A chain of trusted proxies (CDN edge, then balancer): the first hop not trusted.
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"6.6.6.6, 198.51.100.9, 10.0.0.2"]), client);
        assert_eq!(
            forwarded(&l, "10.0.0.1", &[b"6.6.6.6", b"198.51.100.9, 10.0.0.2"]),
            client,
            "fields in order"
        );
        // Ports and brackets as some proxies write them.
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"198.51.100.9:4711"]), client);
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"[2001:db8::1]:80"]), at("2001:db8::1"));
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"[2001:db8::1]"]), at("2001:db8::1"));
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"198.51.100.9,"]), client, "an empty entry is no hop");
        // What the client wrote left of the proxies' entries is never read, bytes or not.
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"\xff, 198.51.100.9"]), client);
        // A hop that is not an address shares one bucket with every other such hop.
        for garbage in [&b"unknown"[..], b"198.51.100.9%eth0", b"\xff", b"[198.51.100.9]x"] {
            assert_eq!(forwarded(&l, "10.0.0.1", &[garbage]), Client::Unreadable, "{garbage:?}");
        }
        assert_eq!(l.check_at(Client::Unreadable, 0), Verdict::Allowed);
        assert!(matches!(l.check_at(Client::Unreadable, 0), Verdict::Refused(_)));
        // The proxy's own request, or one whose every hop is trusted: the proxy.
        assert_eq!(forwarded(&l, "10.0.0.1", &[]), at("10.0.0.1"));
        assert_eq!(forwarded(&l, "10.0.0.1", &[b"10.0.0.2"]), at("10.0.0.1"));
    }

    #[test]
    fn a_full_table_drops_refilled_buckets_and_never_refuses_for_its_bound() {
        let l = limiter(1000, 1);
        let mut refused = 0;
        for i in 0..(SHARD_ADDRESSES_MAX as u32 * SHARDS as u32 * 2) {
            let a = Client::Address(IpAddr::V4(std::net::Ipv4Addr::from_bits(0x0b00_0000 + i)));
            refused +=
                usize::from(matches!(l.check_at(a, u64::from(i / 1000) * 1_000_000), Verdict::Refused(_)));
        }
        assert_eq!(refused, 0);
        assert!(l.shards.iter().all(|s| s.lock().buckets.len() <= SHARD_ADDRESSES_MAX));
    }
}

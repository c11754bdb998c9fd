//! What a drill does: shoppers, the sale they come for, how they arrive and what they do once admitted.
//! From a TOML file (keys as below), overridden by flags of the same names.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Everyone arrives within `arrival_secs` before the opening.
    Opening,
    /// Arrivals grow linearly from none to a peak over `arrival_secs`, starting at the opening.
    Ramp,
    /// `arrival_rate` shoppers a second from the opening until all arrived.
    Steady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// In order of arrival.
    Fifo,
    /// Everyone who joined before the opening in a random order drawn then; later arrivals behind
    /// them, in order of arrival.
    Lottery,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub users: u64,
    /// Units of the sale's one SKU.
    pub units: u64,
    pub sku: String,
    pub sale: String,
    pub arrival: Arrival,
    pub arrival_secs: f64,
    pub arrival_rate: f64,
    /// When the sale opens, counted from the drill's start (after its setup).
    pub opens_in_ms: u64,
    pub admission_rate: u32,
    pub max_active: u32,
    pub session_ms: u64,
    pub order: Order,
    pub per_user_limit: u32,
    /// Units each shopper reserves.
    pub qty: u32,
    /// Pause before each step once admitted (reserve, then commit or release).
    pub think_ms: u64,
    /// What shoppers holding units do: commit with this probability, release with `release`, and
    /// otherwise walk away and let the hold expire after `hold_ttl_ms`.
    pub commit: f64,
    pub release: f64,
    pub hold_ttl_ms: u64,
    /// Attempts after an `insufficient_stock` refusal, `retry_ms` apart.
    pub retries: u32,
    pub retry_ms: u64,
    /// Shares of shoppers who test the server's rules: `greedy` ones try to reserve again past the
    /// per-user limit (the server must refuse: 429); `key_retry` ones send their successful reserve
    /// again with the same `Idempotency-Key` (the server must answer the same reservation); buyers
    /// among `late_commit` think until about their hold's deadline before committing (200 or 410,
    /// and the reservation read back must agree with the answer).
    pub greedy: f64,
    pub key_retry: f64,
    pub late_commit: f64,
    /// No reply within this is a failed request (and the connection is dropped).
    pub request_timeout_ms: u64,
    /// Keep-alive connections the waiting crowd shares (joins and polls).
    pub connections: usize,
    /// Keep-alive connections admitted shoppers share (reserve, commit, release): apart from the
    /// crowd's, as each shopper's own connection is in production.
    pub buyer_connections: usize,
    /// When above 0, the verification fails if admitted shoppers' calls (reserve, commit, release)
    /// took longer than this at the 99th percentile: that the crowd never delays the buyers.
    pub buyer_p99_max_ms: u64,
    /// The drill stops here whatever happens (seconds; 0: users ÷ admission rate + 120).
    pub deadline_secs: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            users: 100_000,
            units: 1_000,
            sku: "drill-sku".into(),
            sale: "drill".into(),
            arrival: Arrival::Opening,
            arrival_secs: 1.0,
            arrival_rate: 5_000.0,
            opens_in_ms: 3_000,
            admission_rate: 2_000,
            max_active: 2_000,
            session_ms: 60_000,
            order: Order::Fifo,
            per_user_limit: 1,
            qty: 1,
            think_ms: 200,
            commit: 0.9,
            release: 0.05,
            hold_ttl_ms: 5_000,
            retries: 3,
            retry_ms: 500,
            greedy: 0.05,
            key_retry: 0.05,
            late_commit: 0.02,
            request_timeout_ms: 10_000,
            connections: 256,
            buyer_connections: 64,
            buyer_p99_max_ms: 0,
            deadline_secs: 0,
        }
    }
}

impl Scenario {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=10_000_000).contains(&self.users), "users: 1 to 10,000,000");
        anyhow::ensure!((1..=16_384).contains(&self.connections), "connections: 1 to 16,384 (open files)");
        anyhow::ensure!(
            (1..=2_048).contains(&self.buyer_connections),
            "buyer_connections: 1 to 2,048 (open files)"
        );
        anyhow::ensure!(self.admission_rate >= 1, "admission_rate: at least 1");
        anyhow::ensure!(self.qty >= 1 && self.qty <= self.per_user_limit, "qty: 1 to per_user_limit");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.commit)
                && (0.0..=1.0).contains(&self.release)
                && self.commit + self.release <= 1.0,
            "commit and release are probabilities adding up to at most 1"
        );
        anyhow::ensure!(
            [self.greedy, self.key_retry, self.late_commit].iter().all(|p| (0.0..=1.0).contains(p)),
            "greedy, key_retry and late_commit are probabilities"
        );
        anyhow::ensure!(self.request_timeout_ms >= 1, "request_timeout_ms: at least 1");
        anyhow::ensure!(
            self.arrival_secs >= 0.0 && self.arrival_rate > 0.0,
            "arrival_secs ≥ 0, arrival_rate > 0"
        );
        Ok(())
    }

    /// The drill's hard stop.
    pub fn deadline(&self) -> std::time::Duration {
        let secs = match self.deadline_secs {
            0 => self.users / u64::from(self.admission_rate) + 120,
            n => n,
        };
        std::time::Duration::from_secs(secs)
    }

    /// When shopper `i` (of `users`) arrives, in seconds from the opening (negative: before it).
    pub fn arrival_at(&self, i: u64) -> f64 {
        let f = (i as f64 + 0.5) / self.users as f64;
        match self.arrival {
            Arrival::Opening => -self.arrival_secs * (1.0 - f),
            // Linear growth of the rate: the i-th arrival is at T·sqrt(i/n).
            Arrival::Ramp => self.arrival_secs * f.sqrt(),
            Arrival::Steady => i as f64 / self.arrival_rate,
        }
    }

    /// A shopper's own uniform draw in [0, 1) for `what`: the same drill makes the same choices.
    pub fn draw(&self, user: u64, what: u64) -> f64 {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&user.to_le_bytes(), what);
        (h >> 11) as f64 / (1u64 << 53) as f64
    }
}

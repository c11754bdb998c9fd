//! Per-user counters: units each buyer holds or has bought in each sale, against the sale's limit.
//! Reserving adds, releasing and expiring give back, committing keeps (the units were bought).

use super::ids::{SaleId, UserId};
use crate::sync::{Mutex, MutexGuard};
use std::collections::HashMap;

type Hasher = foldhash::fast::RandomState;

/// sale → user → units held or bought.
#[derive(Default)]
pub(crate) struct CounterShard(HashMap<SaleId, HashMap<UserId, u64, Hasher>, Hasher>);

pub(crate) struct Counters {
    shards: Box<[Mutex<CounterShard>]>,
}

const COUNTER_SHARDS: usize = 64;

impl Counters {
    pub(crate) fn new() -> Self {
        Self { shards: (0..COUNTER_SHARDS).map(|_| Mutex::new(CounterShard::default())).collect() }
    }

    /// The lock over `user`'s counters (all sales). Taken after any shard lock, never before.
    pub(crate) fn lock(&self, user: &UserId) -> MutexGuard<'_, CounterShard> {
        self.shards[self.index(user)].lock()
    }

    /// Which shard holds `user`'s counters.
    pub(crate) fn index(&self, user: &UserId) -> usize {
        let hash = xxhash_rust::xxh3::xxh3_64(user.as_str().as_bytes());
        (hash % COUNTER_SHARDS as u64) as usize
    }

    pub(crate) fn all(&self) -> Vec<(SaleId, UserId, u64)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (sale, users) in &shard.0 {
                all.extend(users.iter().map(|(user, n)| (sale.clone(), user.clone(), *n)));
            }
        }
        all
    }
}

impl CounterShard {
    pub(crate) fn held(&self, sale: &SaleId, user: &UserId) -> u64 {
        self.0.get(sale).and_then(|users| users.get(user)).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, sale: &SaleId, user: &UserId, units: u64) {
        let users = self.0.entry(sale.clone()).or_default();
        *users.entry(user.clone()).or_default() += units;
    }

    /// Gives units back; a counter that reaches zero is removed so that the table holds only buyers
    /// with something held or bought.
    pub(crate) fn give_back(&mut self, sale: &SaleId, user: &UserId, units: u64) {
        let users = self.0.get_mut(sale).expect("a holder's sale has a counter");
        let held = users.get_mut(user).expect("a holder has a counter");
        *held = held.checked_sub(units).expect("a user never gives back more than they hold");
        if *held == 0 {
            users.remove(user);
            if users.is_empty() {
                self.0.remove(sale);
            }
        }
    }
}

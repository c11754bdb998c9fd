//! Idempotency keys: the outcome of each successful keyed reserve or stock adjustment, remembered for
//! a window. Both share one key space: a key used for one kind of request and then for the other is a
//! conflict, as a key used with another body is.
//!
//! Only successful reserves are remembered. A refused reserve changed nothing, so a retry of it is simply
//! decided again; and keeping refusals would put a write on the sold-out path, which must stay free.
//! Keys past the window are treated as absent at once and removed lazily, so the remembered set at any
//! time `now` is a function of the records and `now` alone — replay reproduces it exactly.

use super::ids::{IdempotencyKey, ReservationId};
use super::types::{ReserveError, ReserveRequest, Reserved, Stock};
use crate::sync::RwLock;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub(crate) fingerprint: u128,
    pub(crate) id: ReservationId,
    pub(crate) expires_at_ms: u64,
    pub(crate) created_at_ms: u64,
}

/// A keyed stock adjustment's outcome: the stock it left, which its repeats answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RememberedAdjust {
    pub(crate) fingerprint: u128,
    pub(crate) stock: Stock,
    pub(crate) created_at_ms: u64,
}

/// The same key for another request, or for another kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conflict;

#[derive(Default)]
pub(crate) struct KeyShard {
    entries: HashMap<IdempotencyKey, Remembered, foldhash::fast::RandomState>,
    /// Apart from `entries` so that a reserve's entry stays small; adjustments are rare.
    adjusts: HashMap<IdempotencyKey, RememberedAdjust, foldhash::fast::RandomState>,
    /// Keys in the order they were remembered, to drop them when the window passes.
    by_age: VecDeque<(u64, IdempotencyKey)>,
}

pub(crate) struct KeyTable {
    shards: Box<[RwLock<KeyShard>]>,
    window_ms: u64,
    per_shard_max: usize,
}

const KEY_SHARDS_MAX: usize = 64;

impl KeyTable {
    pub(crate) fn new(window_ms: u64, keys_max: usize) -> Self {
        let count = keys_max.clamp(1, KEY_SHARDS_MAX);
        let shards = (0..count).map(|_| RwLock::new(KeyShard::default())).collect();
        Self { shards, window_ms, per_shard_max: keys_max.div_ceil(count) }
    }

    pub(crate) fn shard(&self, key: &IdempotencyKey) -> &RwLock<KeyShard> {
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes());
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// The remembered outcome for `key`, under a shared lock: the sold-out path's check.
    pub(crate) fn peek(
        &self,
        key: &IdempotencyKey,
        fingerprint: impl FnOnce() -> u128,
        now_ms: u64,
    ) -> Result<Option<Reserved>, ReserveError> {
        self.shard(key).read().lookup(key, fingerprint, now_ms, self.window_ms)
    }

    pub(crate) fn window_ms(&self) -> u64 {
        self.window_ms
    }

    pub(crate) fn per_shard_max(&self) -> usize {
        self.per_shard_max
    }

    /// Every remembered adjustment's key still within the window at `now_ms`.
    pub(crate) fn live_adjusts(&self, now_ms: u64) -> Vec<(IdempotencyKey, RememberedAdjust)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            let live = shard.adjusts.iter().filter(|(_, r)| r.created_at_ms + self.window_ms > now_ms);
            all.extend(live.map(|(k, r)| (k.clone(), *r)));
        }
        all
    }

    /// Every remembered key still within the window at `now_ms`.
    pub(crate) fn live_entries(&self, now_ms: u64) -> Vec<(IdempotencyKey, Remembered)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            let live = shard.entries.iter().filter(|(_, r)| r.created_at_ms + self.window_ms > now_ms);
            all.extend(live.map(|(k, r)| (k.clone(), *r)));
        }
        all
    }
}

impl super::Engine {
    /// The reservation an earlier success of this keyed request made, if its key is still remembered
    /// (`replayed`); `IdempotencyConflict` when the key names another request. Changes nothing. The
    /// server asks this before checking a gated sale's admission: a retry of a success must get its
    /// reservation back even after the admission ended (the units are held for it all the same).
    pub fn remembered(&self, req: &ReserveRequest, now_ms: u64) -> Result<Option<Reserved>, ReserveError> {
        match &req.idempotency_key {
            Some(key) => self.keys.peek(key, || req.fingerprint(), now_ms),
            None => Ok(None),
        }
    }
}

impl KeyShard {
    /// `fingerprint` is computed only when the key is found: most keys on the sold-out path are new.
    pub(crate) fn lookup(
        &self,
        key: &IdempotencyKey,
        fingerprint: impl FnOnce() -> u128,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Option<Reserved>, ReserveError> {
        if self.adjusts.get(key).is_some_and(|r| r.created_at_ms.saturating_add(window_ms) > now_ms) {
            return Err(ReserveError::IdempotencyConflict);
        }
        match self.entries.get(key) {
            Some(r) if r.created_at_ms.saturating_add(window_ms) > now_ms => {
                if r.fingerprint != fingerprint() {
                    return Err(ReserveError::IdempotencyConflict);
                }
                Ok(Some(Reserved { id: r.id, expires_at_ms: r.expires_at_ms, replayed: true }))
            }
            _ => Ok(None),
        }
    }

    /// The stock a remembered adjustment with this key left, if its fingerprint is `fingerprint`.
    pub(crate) fn lookup_adjust(
        &self,
        key: &IdempotencyKey,
        fingerprint: u128,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Option<Stock>, Conflict> {
        let live = |created_at_ms: u64| created_at_ms.saturating_add(window_ms) > now_ms;
        if self.entries.get(key).is_some_and(|r| live(r.created_at_ms)) {
            return Err(Conflict);
        }
        match self.adjusts.get(key) {
            Some(r) if live(r.created_at_ms) && r.fingerprint != fingerprint => Err(Conflict),
            Some(r) if live(r.created_at_ms) => Ok(Some(r.stock)),
            _ => Ok(None),
        }
    }

    /// Drops keys past the window, then says whether one more fits.
    pub(crate) fn has_room(&mut self, now_ms: u64, window_ms: u64, max: usize) -> bool {
        while let Some((created_at, _)) = self.by_age.front() {
            if created_at.saturating_add(window_ms) > now_ms {
                break;
            }
            let (_, key) = self.by_age.pop_front().expect("front exists");
            // The key may have been used again since: drop it only if its current entry is old too.
            if self.entries.get(&key).is_some_and(|r| r.created_at_ms.saturating_add(window_ms) <= now_ms) {
                self.entries.remove(&key);
            }
            if self.adjusts.get(&key).is_some_and(|r| r.created_at_ms.saturating_add(window_ms) <= now_ms) {
                self.adjusts.remove(&key);
            }
        }
        self.entries.len() + self.adjusts.len() < max
    }

    pub(crate) fn remember_adjust(&mut self, key: &IdempotencyKey, entry: RememberedAdjust) {
        self.adjusts.insert(key.clone(), entry);
        self.by_age.push_back((entry.created_at_ms, key.clone()));
    }

    pub(crate) fn remember(&mut self, key: &IdempotencyKey, entry: Remembered) {
        self.entries.insert(key.clone(), entry);
        self.by_age.push_back((entry.created_at_ms, key.clone()));
    }
}

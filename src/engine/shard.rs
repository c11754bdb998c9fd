//! A shard: one lock over the counters of its SKUs and over the reservations stored in it.
//!
//! Locking rules (the whole engine's): locks are taken in the order idempotency shard → SKU shards in
//! ascending index → per-user counter shard, and never the other way, so no two operations can deadlock.
//! A reservation is stored in the lowest-indexed shard among its SKUs (its id names that shard), so an
//! operation on it locks its own shard first and the others after it, in order.

use super::ids::{ReservationId, SaleId, UserId};
use super::types::ReservationState;
use crate::sync::{Mutex, MutexGuard};
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::collections::{BinaryHeap, VecDeque};

/// One reserved line: `qty` units of the SKU at `cell` in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) cell: u32,
    pub(crate) qty: u32,
}

pub(crate) type Lines = SmallVec<[Line; 1]>;

/// The sale and buyer whose per-user counter a reservation's units count against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) sale: SaleId,
    pub(crate) user: UserId,
}

#[derive(Debug)]
pub(crate) struct Reservation {
    pub(crate) lines: Lines,
    pub(crate) created_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    /// When it left `Active`; 0 while active.
    pub(crate) ended_at_ms: u64,
    pub(crate) state: ReservationState,
    /// Boxed: most reservations in a plain checkout have none, and it keeps the common case small.
    pub(crate) holder: Option<Box<Holder>>,
    /// The id's tag: the ring finds a reservation by sequence, and an id with another tag is not it.
    pub(crate) tag: u64,
}

impl Reservation {
    pub(crate) fn units(&self) -> u64 {
        self.lines.iter().map(|l| u64::from(l.qty)).sum()
    }
}

/// A shard's reservations, by id. The shard issues ids in sequence and forgets them in roughly the
/// order it issued them, so they live in a ring indexed by `seq - base`: no hashing, and no stored key
/// or hash per entry. Ids issued by another shard (the shard count changed since) go to `foreign`, and
/// so do own ids so far ahead of the ring that it would have to grow by more than `RING_LEAP_MAX`
/// empty slots to hold them (a snapshot whose ids lie far apart must not allocate their whole span).
pub(crate) struct Reservations {
    /// The shard whose ids live in the ring.
    shard: u16,
    /// The sequence number of `ring[0]`.
    base: u64,
    ring: VecDeque<Option<Reservation>>,
    foreign: HashMap<ReservationId, Reservation, foldhash::fast::RandomState>,
}

/// The most empty slots one insert may add to a ring (beyond that, the id goes to `foreign`).
const RING_LEAP_MAX: usize = 1 << 20;

impl Reservations {
    fn new(shard: u16) -> Self {
        Self { shard, base: 1, ring: VecDeque::new(), foreign: HashMap::default() }
    }

    fn slot(&self, id: ReservationId) -> Option<usize> {
        if id.shard() != self.shard {
            return None;
        }
        id.seq().checked_sub(self.base).map(|i| i as usize)
    }

    pub(crate) fn get(&self, id: &ReservationId) -> Option<&Reservation> {
        match self.slot(*id).and_then(|i| self.ring.get(i)) {
            Some(Some(r)) if r.tag == id.tag() => Some(r),
            Some(Some(_)) => None,
            // Another shard's id, or an own id not in the ring (far ahead of it, or left behind).
            _ if self.foreign.is_empty() => None,
            _ => self.foreign.get(id),
        }
    }

    pub(crate) fn get_mut(&mut self, id: &ReservationId) -> Option<&mut Reservation> {
        match self.slot(*id) {
            Some(i) if self.ring.get(i).is_some_and(Option::is_some) => {
                self.ring[i].as_mut().filter(|r| r.tag == id.tag())
            }
            _ => self.foreign.get_mut(id),
        }
    }

    pub(crate) fn contains_key(&self, id: &ReservationId) -> bool {
        self.get(id).is_some()
    }

    /// Inserts a new reservation. An own id must not lie below the ring (already forgotten); the live
    /// path issues the next sequence number and replay checks it is the next one.
    pub(crate) fn insert(&mut self, id: ReservationId, r: Reservation) -> Option<Reservation> {
        debug_assert_eq!(r.tag, id.tag(), "a reservation carries its id's tag");
        if id.shard() != self.shard {
            return self.foreign.insert(id, r);
        }
        if self.ring.is_empty() {
            // Restoring or replaying a long-lived shard: start the ring at its first id, not at 1.
            self.base = id.seq();
        }
        let i = match self.slot(id) {
            Some(i) if i < self.ring.len() + RING_LEAP_MAX => i,
            // Below the ring (its neighbours were forgotten first) or far ahead of it.
            _ => return self.foreign.insert(id, r),
        };
        if i >= self.ring.len() {
            self.ring.resize_with(i + 1, || None);
        }
        self.ring[i].replace(r)
    }

    /// Forgets a reservation, and drops the leading empty slots so the ring does not grow forever.
    pub(crate) fn remove(&mut self, id: &ReservationId) {
        match self.slot(*id) {
            Some(i)
                if self
                    .ring
                    .get(i)
                    .as_ref()
                    .is_some_and(|r| r.as_ref().is_some_and(|r| r.tag == id.tag())) =>
            {
                self.ring[i] = None
            }
            _ => drop(self.foreign.remove(id)),
        }
        while matches!(self.ring.front(), Some(None)) {
            self.ring.pop_front();
            self.base += 1;
        }
    }

    /// Whether an own id's sequence number lies below the ring: it was issued and forgotten.
    pub(crate) fn is_forgotten_seq(&self, id: ReservationId) -> bool {
        id.shard() == self.shard && id.seq() < self.base && !self.foreign.contains_key(&id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ReservationId, &Reservation)> {
        let own = self.ring.iter().enumerate().filter_map(|(i, r)| {
            r.as_ref().map(|r| (ReservationId::new(self.shard, self.base + i as u64, r.tag), r))
        });
        own.chain(self.foreign.iter().map(|(id, r)| (*id, r)))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Reservation> {
        self.iter().map(|(_, r)| r)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.foreign.is_empty()
    }
}

pub(crate) struct Shard {
    /// Active reservations, and ended ones until `ended_retention_ms` passes.
    pub(crate) reservations: Reservations,
    /// Deadlines of active reservations, earliest first. An extend pushes a new entry and leaves the
    /// old one, which is skipped when it comes up (its deadline no longer matches), so expiring costs
    /// in proportion to what is due, never to what is live.
    pub(crate) deadlines: BinaryHeap<Reverse<(u64, ReservationId)>>,
    /// Ended reservations in the order they ended, to forget them once retention passes.
    pub(crate) ended: VecDeque<(u64, ReservationId)>,
    /// The sequence number of the next reservation id this shard issues.
    pub(crate) next_seq: u64,
    pub(crate) active: usize,
}

impl Shard {
    pub(crate) fn new(index: u16) -> Self {
        Self {
            reservations: Reservations::new(index),
            deadlines: BinaryHeap::new(),
            ended: VecDeque::new(),
            next_seq: 1,
            active: 0,
        }
    }

    /// Pops up to `max` deadlines that are due at `now_ms` and still current.
    pub(crate) fn pop_due(&mut self, now_ms: u64, max: usize) -> SmallVec<[(u64, ReservationId); 32]> {
        let mut due = SmallVec::new();
        while due.len() < max {
            match self.deadlines.peek() {
                Some(Reverse((deadline, _))) if *deadline <= now_ms => {}
                _ => break,
            }
            let Reverse((deadline, id)) = self.deadlines.pop().expect("peeked");
            let current = self
                .reservations
                .get(&id)
                .is_some_and(|r| r.state == ReservationState::Active && r.expires_at_ms == deadline);
            if current {
                due.push((deadline, id));
            }
        }
        due
    }

    /// Forgets ended reservations whose retention has passed.
    pub(crate) fn forget_ended(&mut self, now_ms: u64, retention_ms: u64) {
        while let Some(&(ended_at, id)) = self.ended.front() {
            if ended_at.saturating_add(retention_ms) > now_ms {
                break;
            }
            self.ended.pop_front();
            let gone = self.reservations.get(&id).is_some_and(|r| {
                r.state != ReservationState::Active && r.ended_at_ms.saturating_add(retention_ms) <= now_ms
            });
            if gone {
                self.reservations.remove(&id);
            }
        }
    }
}

/// Shard indices to lock, ascending and without repeats.
pub(crate) type ShardSet = SmallVec<[u16; 4]>;

pub(crate) fn shard_set(shards: impl IntoIterator<Item = u16>) -> ShardSet {
    let mut set: ShardSet = shards.into_iter().collect();
    if set.len() > 1 {
        set.sort_unstable();
        set.dedup();
    }
    set
}

/// The locks of a set of shards, held together.
pub(crate) struct Locked<'e> {
    guards: SmallVec<[(u16, MutexGuard<'e, Shard>); 4]>,
}

impl<'e> Locked<'e> {
    /// Locks `set` (ascending) after the locks already in `self`, which must all be lower.
    pub(crate) fn lock_more(
        &mut self,
        shards: &'e [crossbeam_utils::CachePadded<Mutex<Shard>>],
        set: &[u16],
    ) {
        for &index in set {
            if self.holds(index) {
                continue;
            }
            let last = self.guards.last().map(|(i, _)| *i);
            assert!(last.is_none_or(|last| last < index), "lock order violated");
            self.guards.push((index, shards[usize::from(index)].lock()));
        }
    }

    pub(crate) fn new() -> Self {
        Self { guards: SmallVec::new() }
    }

    pub(crate) fn holds(&self, index: u16) -> bool {
        self.guards.iter().any(|(i, _)| *i == index)
    }

    pub(crate) fn shard(&mut self, index: u16) -> &mut Shard {
        let (_, guard) =
            self.guards.iter_mut().find(|(i, _)| *i == index).expect("the caller locked this shard");
        guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(created_at_ms: u64) -> Reservation {
        Reservation {
            tag: 7,
            lines: Lines::new(),
            created_at_ms,
            expires_at_ms: created_at_ms + 1,
            ended_at_ms: 0,
            state: ReservationState::Active,
            holder: None,
        }
    }

    /// Ids far apart (a restored snapshot, or a crafted one) do not make the ring as wide as their span.
    #[test]
    fn ids_far_apart_do_not_allocate_their_span() {
        let mut r = Reservations::new(0);
        let near = ReservationId::new(0, 5, 7);
        let far = ReservationId::new(0, 1 << 40, 7);
        assert!(r.insert(near, reservation(1)).is_none());
        assert!(r.insert(far, reservation(2)).is_none());
        assert!(r.ring.len() < 16, "ring of {} slots", r.ring.len());
        assert_eq!(r.get(&far).map(|x| x.created_at_ms), Some(2));
        assert_eq!(r.get(&near).map(|x| x.created_at_ms), Some(1));
        // The same sequence with another tag is not the reservation, in the ring or outside it.
        for other in [ReservationId::new(0, 5, 8), ReservationId::new(0, 1 << 40, 0)] {
            assert!(r.get(&other).is_none() && r.get_mut(&other).is_none(), "{other}");
            r.remove(&other);
        }
        assert_eq!(r.iter().count(), 2, "removing with a wrong tag removes nothing");
        r.get_mut(&far).expect("found").created_at_ms = 3;
        assert_eq!(r.iter().count(), 2);
        r.remove(&near);
        assert!(!r.is_forgotten_seq(far) && r.get(&far).is_some(), "the far one outlives the ring");
        r.remove(&far);
        assert!(r.is_empty());
        // The ring still grows densely for ids issued in sequence.
        for seq in 10..2_000 {
            r.insert(ReservationId::new(0, seq, 7), reservation(seq));
        }
        assert!(r.foreign.is_empty() && r.ring.len() == 1_990);
    }
}

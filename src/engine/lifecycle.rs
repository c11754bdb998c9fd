//! What happens to a reservation after it is made: commit, release, extend, expire.
//!
//! A reservation past its deadline is expired by whichever call meets it first — the expiry tick, or a
//! commit, release or extend that arrives late — so no call can act on a hold that has run out.
//!
//! On time is judged when a request arrived, not when it is decided: a commit that arrived before the
//! deadline and waited in the server commits. The tick leaves a hold `commit_grace_ms` past its
//! deadline, and a late decision is judged at its arrival but never earlier than that grace before
//! now, so the two can never disagree: whichever the log holds first is what happened.

use super::shard::{Line, Locked};
use super::{Engine, Record, RecordSink, ReservationError, ReservationId, ReservationState};
use smallvec::SmallVec;
use std::cmp::Reverse;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Commit,
    Release,
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    /// This call made the transition.
    Now,
    /// It was already in the asked-for state (an idempotent repeat).
    Already,
    /// Asked to expire, but it is not due (it was extended meanwhile).
    NotDue,
}

/// What a commit, release or extend judged past the deadline does to a hold still inside the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Late {
    /// Refuses (`Expired`) and leaves the hold to the tick: a request that arrived before the
    /// deadline (a first commit whose body is still arriving) may yet be decided within the grace.
    LeaveToTick,
    /// Ends it now (the orders' saga: an order and its hold end together, in one record).
    EndNow,
}

/// How many due reservations one pass over a shard takes before it lets go of the shard's lock.
const EXPIRE_BATCH: usize = 32;

impl Engine {
    /// Sells the units. Idempotent: committing a committed reservation succeeds again.
    pub fn commit(
        &self,
        id: ReservationId,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(), ReservationError> {
        self.commit_with(id, now_ms, Late::LeaveToTick, sink)
    }

    /// Returns the units. Idempotent: releasing a released reservation succeeds again.
    pub fn release(
        &self,
        id: ReservationId,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(), ReservationError> {
        self.release_with(id, now_ms, Late::LeaveToTick, sink)
    }

    /// Moves the deadline to `now + ttl_ms`, never past `created_at + hold_ms_max` and never earlier
    /// than it already is. Returns the deadline now in force.
    pub fn extend(
        &self,
        id: ReservationId,
        ttl_ms: u64,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<u64, ReservationError> {
        self.extend_with(id, ttl_ms, now_ms, Late::LeaveToTick, sink)
    }

    /// [`Engine::commit`], saying what a hold found past its deadline becomes (the orders' saga
    /// ends it at once, with its order).
    pub(crate) fn commit_with(
        &self,
        id: ReservationId,
        now_ms: u64,
        late: Late,
        sink: &mut impl RecordSink,
    ) -> Result<(), ReservationError> {
        self.finish(id, now_ms, Ending::Commit, late, sink).map(|_| ())
    }

    /// [`Engine::release`], as [`Engine::commit_with`].
    pub(crate) fn release_with(
        &self,
        id: ReservationId,
        now_ms: u64,
        late: Late,
        sink: &mut impl RecordSink,
    ) -> Result<(), ReservationError> {
        self.finish(id, now_ms, Ending::Release, late, sink).map(|_| ())
    }

    /// [`Engine::extend`], as [`Engine::commit_with`].
    pub(crate) fn extend_with(
        &self,
        id: ReservationId,
        ttl_ms: u64,
        now_ms: u64,
        late: Late,
        sink: &mut impl RecordSink,
    ) -> Result<u64, ReservationError> {
        self.check_ttl(ttl_ms).map_err(ReservationError::Invalid)?;
        let mut locked = self.lock_live(id, now_ms)?;
        let r = locked.shard(self.store_of(id)).reservations.get(&id).expect("locked it");
        if now_ms >= r.expires_at_ms {
            if self.in_grace(r.expires_at_ms, now_ms, late) {
                return Err(ReservationError::Expired);
            }
            self.log_and_end(&mut locked, id, ReservationState::Expired, now_ms, sink)?;
            return Err(ReservationError::Expired);
        }
        let cap = r.created_at_ms.saturating_add(self.config.hold_ms_max);
        let expires_at_ms = now_ms.saturating_add(ttl_ms).min(cap).max(r.expires_at_ms);
        if expires_at_ms == r.expires_at_ms {
            return Ok(expires_at_ms);
        }
        let record = Record::Extended { id, expires_at_ms, at_ms: now_ms };
        sink.append(&record).map_err(|_| ReservationError::LogRefused)?;
        self.apply_extended(&mut locked, id, expires_at_ms);
        Ok(expires_at_ms)
    }

    /// The time a call that arrived at `arrived_ms` and is decided at `now_ms` is judged at: its
    /// arrival, but never more than `commit_grace_ms` before now (a request that waited longer, or
    /// whose body trickled in, is judged then). The expiry tick sweeps only holds whose deadline is
    /// that grace behind it, so a hold judged on time here has not been swept.
    pub fn judged_at(&self, arrived_ms: u64, now_ms: u64) -> u64 {
        arrived_ms.clamp(now_ms.saturating_sub(self.config.commit_grace_ms), now_ms)
    }

    /// Expires every active reservation whose deadline is at least `commit_grace_ms` before `now_ms`
    /// (its record says the time it was due by, `now_ms` less the grace), returning their ids, and
    /// forgets ended reservations past retention. Costs in proportion to what is due.
    pub fn expire_due(&self, now_ms: u64, sink: &mut impl RecordSink) -> Vec<ReservationId> {
        let mut expired = Vec::new();
        let due_ms = now_ms.saturating_sub(self.config.commit_grace_ms);
        for shard in self.shards.iter() {
            loop {
                let due = {
                    let mut shard = shard.lock();
                    shard.forget_ended(now_ms, self.config.ended_retention_ms);
                    shard.pop_due(due_ms, EXPIRE_BATCH)
                };
                if due.is_empty() {
                    break;
                }
                for (i, &(_, id)) in due.iter().enumerate() {
                    // Logged at the real time (at or after the deadline, as replay checks), so the
                    // log's times stay in order with the other records.
                    match self.finish(id, now_ms, Ending::Expire, Late::EndNow, sink) {
                        Ok(Finished::Now) => expired.push(id),
                        Err(ReservationError::LogRefused) => {
                            // Not expired: put the deadlines back for the next tick.
                            let mut shard = shard.lock();
                            shard.deadlines.extend(due[i..].iter().map(|&d| Reverse(d)));
                            return expired;
                        }
                        // Committed, released or extended since it was popped.
                        _ => {}
                    }
                }
            }
        }
        expired
    }

    /// Locks a reservation that can still be read at `now_ms`.
    fn lock_live(&self, id: ReservationId, now_ms: u64) -> Result<Locked<'_>, ReservationError> {
        let mut locked = self.lock_reservation(id).ok_or(ReservationError::NotFound)?;
        let r = locked.shard(self.store_of(id)).reservations.get(&id).expect("locked it");
        if self.forgotten(r, now_ms) {
            return Err(ReservationError::NotFound);
        }
        match r.state {
            ReservationState::Active => Ok(locked),
            ReservationState::Committed => Err(ReservationError::Committed),
            ReservationState::Released => Err(ReservationError::Released),
            ReservationState::Expired => Err(ReservationError::Expired),
        }
    }

    /// Whether a call judged at `judged_ms`, past `expires_at_ms`, leaves the hold to the tick: it is
    /// still inside the grace, in which an earlier request may yet commit it.
    fn in_grace(&self, expires_at_ms: u64, judged_ms: u64, late: Late) -> bool {
        late == Late::LeaveToTick && judged_ms < expires_at_ms.saturating_add(self.config.commit_grace_ms)
    }

    fn finish(
        &self,
        id: ReservationId,
        now_ms: u64,
        ending: Ending,
        late: Late,
        sink: &mut impl RecordSink,
    ) -> Result<Finished, ReservationError> {
        let mut locked = match self.lock_live(id, now_ms) {
            Ok(locked) => locked,
            Err(ReservationError::Committed) if ending == Ending::Commit => return Ok(Finished::Already),
            Err(ReservationError::Released) if ending == Ending::Release => return Ok(Finished::Already),
            Err(e) => return Err(e),
        };
        let r = locked.shard(self.store_of(id)).reservations.get(&id).expect("locked it");
        let due = now_ms >= r.expires_at_ms;
        if due && ending != Ending::Expire && self.in_grace(r.expires_at_ms, now_ms, late) {
            return Err(ReservationError::Expired);
        }
        let to = match (ending, due) {
            (Ending::Expire, false) => return Ok(Finished::NotDue),
            (_, true) => ReservationState::Expired,
            (Ending::Commit, false) => ReservationState::Committed,
            (Ending::Release, false) => ReservationState::Released,
        };
        self.log_and_end(&mut locked, id, to, now_ms, sink)?;
        if due && ending != Ending::Expire {
            return Err(ReservationError::Expired);
        }
        Ok(Finished::Now)
    }

    fn log_and_end(
        &self,
        locked: &mut Locked<'_>,
        id: ReservationId,
        to: ReservationState,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(), ReservationError> {
        let record = match to {
            ReservationState::Committed => Record::Committed { id, at_ms: now_ms },
            ReservationState::Released => Record::Released { id, at_ms: now_ms },
            ReservationState::Expired => Record::Expired { id, at_ms: now_ms },
            ReservationState::Active => unreachable!("an ending is never Active"),
        };
        sink.append(&record).map_err(|_| ReservationError::LogRefused)?;
        self.apply_end(locked, id, to, now_ms);
        Ok(())
    }

    /// Ends an active reservation. The caller holds its store shard and all its SKUs' shards.
    pub(super) fn apply_end(
        &self,
        locked: &mut Locked<'_>,
        id: ReservationId,
        to: ReservationState,
        at_ms: u64,
    ) {
        self.apply_end_with(locked, id, to, at_ms, None)
    }

    /// [`Engine::apply_end`], giving units back through `held` (a counter shard the caller holds,
    /// with its index) when the holder's counters are in it: locking it again would deadlock.
    pub(super) fn apply_end_with(
        &self,
        locked: &mut Locked<'_>,
        id: ReservationId,
        to: ReservationState,
        at_ms: u64,
        held: Option<(usize, &mut super::holders::CounterShard)>,
    ) {
        let shard = locked.shard(self.store_of(id));
        let r = shard.reservations.get_mut(&id).expect("the caller found it");
        assert_eq!(r.state, ReservationState::Active, "{id} ended twice");
        r.state = to;
        r.ended_at_ms = at_ms;
        let lines: SmallVec<[Line; 4]> = r.lines.iter().copied().collect();
        if to != ReservationState::Committed {
            if let Some(h) = &r.holder {
                match held {
                    Some((index, shard)) if index == self.counters.index(&h.user) => {
                        shard.give_back(&h.sale, &h.user, r.units())
                    }
                    _ => self.counters.lock(&h.user).give_back(&h.sale, &h.user, r.units()),
                }
            }
        }
        shard.active -= 1;
        shard.ended.push_back((at_ms, id));
        for line in lines {
            let cell = self.catalog.cell(line.cell);
            debug_assert!(locked.holds(cell.shard));
            let mut stock = cell.load();
            let qty = u64::from(line.qty);
            stock.reserved = stock.reserved.checked_sub(qty).expect("a reservation's units are reserved");
            match to {
                ReservationState::Committed => stock.sold += qty,
                _ => stock.available += qty,
            }
            cell.store(stock);
        }
    }

    pub(super) fn apply_extended(&self, locked: &mut Locked<'_>, id: ReservationId, expires_at_ms: u64) {
        let shard = locked.shard(self.store_of(id));
        let r = shard.reservations.get_mut(&id).expect("the caller found it");
        r.expires_at_ms = expires_at_ms;
        shard.deadlines.push(Reverse((expires_at_ms, id)));
    }
}

//! Waiting rooms: the queue of a gated sale, its opening (for a lottery, the draw) and its admissions.
//!
//! Like every engine mutation, a join, an opening and an admission are decided under the room's lock,
//! handed to the sink as a record and applied only if the sink took it; `apply` replays the same
//! records through the same code. Positions and admissions are therefore in the log. What paces
//! admission (a token bucket) is not: it only decides when the next admission record is written.
//!
//! Admission is tied to stock. Each tick admits at most: what the rate allows, what leaves at most
//! `max_active` shoppers shopping (admitted, session running, below the sale's limit), and what leaves
//! no more shoppers who have not reserved yet than there are units available. When every SKU of the
//! sale has nothing available and nothing reserved, the sale is sold out: nobody more can buy, and
//! waiting shoppers are told so. Units that come back (an expiry, a release, a restock) reopen it.
//!
//! Lock order: a room's lock is taken before shard and counter locks (to read stock and counters), never
//! after them.

use super::ids::{SaleId, SkuId, UserId};
use super::{Engine, Record, RecordSink, RequestError};
use crate::limits::{PER_USER_UNITS_MAX, ROOM_JOINERS_MAX, ROOM_SKUS_MAX};
use crate::sync::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

type Hasher = foldhash::fast::RandomState;

/// The order in which the queue admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueOrder {
    /// In order of arrival.
    Fifo,
    /// Everyone who joined before `opens_at` in a random order drawn at opening, then later arrivals
    /// in order of arrival.
    Lottery,
}

impl QueueOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fifo => "fifo",
            Self::Lottery => "lottery",
        }
    }
}

/// A sale's waiting room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    pub skus: Vec<SkuId>,
    pub opens_at_ms: u64,
    /// Shoppers admitted per second, at most.
    pub admit_per_s: u32,
    /// Shoppers shopping at once, at most.
    pub max_active: u32,
    /// How long an admission lasts.
    pub session_ms: u64,
    pub order: QueueOrder,
    /// Seeds the lottery's draw. Chosen when the room is first configured and kept by later changes, so
    /// the draw is the same whenever the log is replayed.
    pub seed: u64,
}

/// Bounds of a room's settings.
pub const ADMIT_PER_S_MAX: u32 = 1_000_000;
pub const SESSION_MS_MIN: u64 = 1_000;
pub const SESSION_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// Why a join or a room change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// No such sale, or it has no waiting room.
    NoRoom,
    /// The queue holds `ROOM_JOINERS_MAX` shoppers.
    Full,
    /// Only a room without joiners may change its order; only a room that has not opened, its opening.
    Locked {
        what: &'static str,
    },
    /// A sale with a waiting room is changed only together with its room.
    RoomRequired,
    /// The room names a SKU that does not exist (`skus[index]`).
    UnknownSku {
        index: usize,
    },
    /// `skus[index]` belongs to another sale (a SKU is in one sale at a time).
    SkuInOtherSale {
        index: usize,
    },
    Invalid(RequestError),
    LogRefused,
}

/// A shopper's place, as of a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// `ahead`: shoppers still to be admitted first; `None` before a lottery's draw.
    Waiting {
        ahead: Option<u64>,
    },
    Admitted {
        at_ms: u64,
        session_ends_ms: u64,
    },
    /// Nobody waiting can buy anything any more.
    SoldOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueView {
    /// Order of arrival (0: first to join).
    pub arrival: u32,
    pub joined_at_ms: u64,
    pub state: QueueState,
}

/// The outcome of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// In the queue (`again`: the shopper had joined before; nothing was written).
    Queued { view: QueueView, again: bool },
    /// Not queued: the sale is sold out.
    SoldOut,
}

/// A room's figures, as of its last tick (`active`, `pending`) or now (the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    pub config: RoomConfig,
    pub per_user_max: u32,
    pub opened_at_ms: Option<u64>,
    pub joined: u64,
    pub admitted: u64,
    pub waiting: u64,
    pub active: u64,
    pub pending: u64,
    pub sold_out: bool,
}

/// What one tick did in one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomTick {
    pub sale: SaleId,
    pub opened: bool,
    pub admitted: u32,
    /// The sale turned sold out at this tick (it was not at the last).
    pub sold_out_now: bool,
    pub waiting: u64,
    /// How long each shopper admitted at this tick waited, counted from when they joined or, if they
    /// joined before opening, from the opening.
    pub waits_ms: Vec<u64>,
}

/// A room's state as plain values: what a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    pub sale: SaleId,
    pub config: RoomConfig,
    /// Every shopper who joined, in order of arrival, with the time they joined.
    pub joiners: Vec<(UserId, u64)>,
    pub opened_at_ms: Option<u64>,
    /// Arrival indices in admission order (after a lottery's draw, or any time for fifo).
    pub order: Vec<u32>,
    /// Arrivals who have reserved in the sale (derived from the reservations' records).
    pub reserved: Vec<u32>,
    /// A lottery before its draw: arrivals before `opens_at` (drawn), and after it (queued behind).
    pub entrants: Vec<u32>,
    pub late: Vec<u32>,
    /// Admissions: the end (in `order`) of each batch and its time, ascending.
    pub batches: Vec<(u32, u64)>,
}

const UNRANKED: u32 = u32::MAX;

pub(super) struct Room {
    config: RoomConfig,
    joiners: Vec<(UserId, u64)>,
    by_user: HashMap<UserId, u32, Hasher>,
    opened_at_ms: Option<u64>,
    order: Vec<u32>,
    /// Index in `order` of each arrival; `UNRANKED` while a lottery has not drawn it.
    rank: Vec<u32>,
    /// Whether each arrival has reserved in the sale: an admitted shopper who has is no longer waiting
    /// to reserve, even once the hold ended (an abandoned hold's units go to the next in line).
    reserved: Vec<bool>,
    entrants: Vec<u32>,
    late: Vec<u32>,
    batches: Vec<(u32, u64)>,
    /// Not logged: the pace of admission, and the figures of the last tick.
    tokens: f64,
    last_tick_ms: Option<u64>,
    active: u64,
    pending: u64,
    sold_out: bool,
}

impl Room {
    fn new(config: RoomConfig) -> Self {
        Room {
            config,
            joiners: Vec::new(),
            by_user: HashMap::default(),
            opened_at_ms: None,
            order: Vec::new(),
            rank: Vec::new(),
            reserved: Vec::new(),
            entrants: Vec::new(),
            late: Vec::new(),
            batches: Vec::new(),
            tokens: 0.0,
            last_tick_ms: None,
            active: 0,
            pending: 0,
            sold_out: false,
        }
    }

    fn admitted(&self) -> u32 {
        self.batches.last().map_or(0, |b| b.0)
    }

    fn waiting(&self) -> u64 {
        (self.joiners.len() - self.admitted() as usize) as u64
    }

    /// `has_reserved`: whether the user already holds or has bought units of the sale, read from the
    /// counters as of the join's place in the log, live and in replay alike.
    fn apply_join(&mut self, user: &UserId, at_ms: u64, has_reserved: bool) {
        let arrival = self.joiners.len() as u32;
        self.joiners.push((user.clone(), at_ms));
        self.by_user.insert(user.clone(), arrival);
        self.rank.push(UNRANKED);
        self.reserved.push(has_reserved);
        if self.config.order == QueueOrder::Fifo || self.opened_at_ms.is_some() {
            self.rank[arrival as usize] = self.order.len() as u32;
            self.order.push(arrival);
        } else if at_ms < self.config.opens_at_ms {
            self.entrants.push(arrival);
        } else {
            self.late.push(arrival);
        }
    }

    /// Opens the room; a lottery draws its entrants: ordered by a keyed hash of the user id, which is
    /// a uniformly random order that the seed reproduces on every replay.
    fn apply_open(&mut self, at_ms: u64) {
        self.opened_at_ms = Some(at_ms);
        let seed = self.config.seed;
        let mut drawn = std::mem::take(&mut self.entrants);
        drawn.sort_by_cached_key(|&a| {
            (xxhash_rust::xxh3::xxh3_64_with_seed(self.joiners[a as usize].0.as_str().as_bytes(), seed), a)
        });
        drawn.append(&mut self.late);
        for a in drawn {
            self.rank[a as usize] = self.order.len() as u32;
            self.order.push(a);
        }
    }

    fn apply_admit(&mut self, count: u32, at_ms: u64) {
        let end = self.admitted() + count;
        self.batches.push((end, at_ms));
    }

    /// When the shopper at `rank` in the order was admitted.
    fn admitted_at(&self, rank: u32) -> Option<u64> {
        let batch = self.batches.partition_point(|b| b.0 <= rank);
        self.batches.get(batch).map(|b| b.1)
    }

    /// The first rank whose session is still running at `now_ms` (sessions end in rank order).
    fn live_from(&self, now_ms: u64) -> u32 {
        let ended = self.batches.partition_point(|b| b.1.saturating_add(self.config.session_ms) <= now_ms);
        if ended == 0 {
            0
        } else {
            self.batches[ended - 1].0
        }
    }

    fn view(&self, arrival: u32, sold_out: bool) -> QueueView {
        let (_, joined_at_ms) = self.joiners[arrival as usize];
        let rank = self.rank[arrival as usize];
        let state = if rank == UNRANKED {
            if sold_out {
                QueueState::SoldOut
            } else {
                QueueState::Waiting { ahead: None }
            }
        } else if let Some(at_ms) = self.admitted_at(rank) {
            QueueState::Admitted { at_ms, session_ends_ms: at_ms.saturating_add(self.config.session_ms) }
        } else if sold_out {
            QueueState::SoldOut
        } else {
            QueueState::Waiting { ahead: Some(u64::from(rank - self.admitted())) }
        };
        QueueView { arrival, joined_at_ms, state }
    }

    fn state(&self, sale: &SaleId) -> RoomState {
        RoomState {
            sale: sale.clone(),
            config: self.config.clone(),
            joiners: self.joiners.clone(),
            opened_at_ms: self.opened_at_ms,
            order: self.order.clone(),
            reserved: (0..self.joiners.len() as u32).filter(|&a| self.reserved[a as usize]).collect(),
            entrants: self.entrants.clone(),
            late: self.late.clone(),
            batches: self.batches.clone(),
        }
    }

    fn from_state(s: &RoomState) -> Result<Room, String> {
        let sale = &s.sale;
        check_config(&s.config).map_err(|e| format!("room {sale}: {e:?}"))?;
        let n = s.joiners.len();
        let mut room = Room::new(s.config.clone());
        room.rank = vec![UNRANKED; n];
        room.reserved = vec![false; n];
        for &a in &s.reserved {
            *room.reserved.get_mut(a as usize).ok_or(format!("room {sale}: arrival {a} is unknown"))? = true;
        }
        for (arrival, (user, at_ms)) in s.joiners.iter().enumerate() {
            if room.by_user.insert(user.clone(), arrival as u32).is_some() {
                return Err(format!("room {sale}: {user} joined twice"));
            }
            room.joiners.push((user.clone(), *at_ms));
        }
        let mut seen = vec![false; n];
        for &a in s.order.iter().chain(&s.entrants).chain(&s.late) {
            if (a as usize) >= n || std::mem::replace(&mut seen[a as usize], true) {
                return Err(format!("room {sale}: arrival {a} is unknown or placed twice"));
            }
        }
        let placed = s.order.len() + s.entrants.len() + s.late.len();
        let drawn = s.opened_at_ms.is_some() || s.config.order == QueueOrder::Fifo;
        if placed != n || (drawn && !(s.entrants.is_empty() && s.late.is_empty())) {
            return Err(format!("room {sale}: {placed} of {n} arrivals placed"));
        }
        let ascending = s.batches.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        let admitted = s.batches.last().map_or(0, |b| b.0) as usize;
        if !ascending || admitted > s.order.len() || (!s.batches.is_empty() && s.opened_at_ms.is_none()) {
            return Err(format!("room {sale}: admissions do not fit the queue"));
        }
        for (rank, &a) in s.order.iter().enumerate() {
            room.rank[a as usize] = rank as u32;
        }
        room.opened_at_ms = s.opened_at_ms;
        room.order = s.order.clone();
        room.entrants = s.entrants.clone();
        room.late = s.late.clone();
        room.batches = s.batches.clone();
        Ok(room)
    }
}

fn check_config(c: &RoomConfig) -> Result<(), RequestError> {
    let bad = RequestError::RoomOutOfRange;
    let skus_ok = !c.skus.is_empty()
        && c.skus.len() <= ROOM_SKUS_MAX
        && c.skus.iter().enumerate().all(|(i, s)| !c.skus[..i].contains(s));
    if !skus_ok
        || !(1..=ADMIT_PER_S_MAX).contains(&c.admit_per_s)
        || !(1..=ROOM_JOINERS_MAX).contains(&c.max_active)
        || !(SESSION_MS_MIN..=SESSION_MS_MAX).contains(&c.session_ms)
    {
        return Err(bad);
    }
    Ok(())
}

impl Engine {
    fn room(&self, sale: &str) -> Option<Arc<Mutex<Room>>> {
        self.rooms.read().get(sale).cloned()
    }

    /// Whether reserving in `sale` needs an admission.
    pub fn is_gated(&self, sale: &str) -> bool {
        self.rooms.read().contains_key(sale)
    }

    /// Sets a sale's per-user limit and its waiting room. A room keeps its seed and its queue; its
    /// order may change only while nobody has joined, its opening only until it opened.
    pub fn configure_sale(
        &self,
        sale: &SaleId,
        per_user_max: u32,
        room: &RoomConfig,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<RoomConfig, QueueError> {
        if per_user_max == 0 || per_user_max > PER_USER_UNITS_MAX {
            return Err(QueueError::Invalid(RequestError::PerUserLimitOutOfRange));
        }
        check_config(room).map_err(QueueError::Invalid)?;
        if let Some(index) = room.skus.iter().position(|sku| self.catalog.find(sku.as_str()).is_none()) {
            return Err(QueueError::UnknownSku { index });
        }
        // The sale book's lock orders every change to a sale; the rooms' write lock, changes to rooms.
        let mut book = self.sale_book.lock();
        self.check_skus_free(sale, &room.skus)?;
        let mut rooms = self.rooms.write();
        let mut config = room.clone();
        if let Some(existing) = rooms.get(sale) {
            let existing = existing.lock();
            config.seed = existing.config.seed;
            if config.order != existing.config.order && !existing.joiners.is_empty() {
                return Err(QueueError::Locked { what: "order" });
            }
            if config.opens_at_ms != existing.config.opens_at_ms && existing.opened_at_ms.is_some() {
                return Err(QueueError::Locked { what: "opens_at" });
            }
        }
        let record = Record::SaleConfigured {
            sale: sale.clone(),
            per_user_max,
            room: Box::new(config.clone()),
            at_ms: now_ms,
        };
        sink.append(&record).map_err(|_| QueueError::LogRefused)?;
        self.apply_configured(&mut rooms, sale, per_user_max, &config);
        self.cover(&mut book, sale, &config.skus);
        Ok(config)
    }

    fn apply_configured(
        &self,
        rooms: &mut HashMap<SaleId, Arc<Mutex<Room>>, Hasher>,
        sale: &SaleId,
        per_user_max: u32,
        config: &RoomConfig,
    ) {
        self.sales.insert(sale.clone(), per_user_max);
        match rooms.get(sale) {
            Some(room) => room.lock().config = config.clone(),
            None => {
                rooms.insert(sale.clone(), Arc::new(Mutex::new(Room::new(config.clone()))));
            }
        }
    }

    /// Whether `sale`'s SKUs have nothing available and nothing reserved that could come back.
    fn sold_out(&self, config: &RoomConfig) -> bool {
        config
            .skus
            .iter()
            .all(|sku| self.stock(sku.as_str()).is_none_or(|s| s.available == 0 && s.reserved == 0))
    }

    fn available(&self, config: &RoomConfig) -> u64 {
        config.skus.iter().filter_map(|sku| self.stock(sku.as_str())).map(|s| s.available).sum()
    }

    /// Puts `user` in `sale`'s queue, once: joining again returns the place taken the first time.
    pub fn join_queue(
        &self,
        sale: &SaleId,
        user: &UserId,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Joined, QueueError> {
        let room = self.room(sale.as_str()).ok_or(QueueError::NoRoom)?;
        let mut room = room.lock();
        let sold_out = self.sold_out(&room.config);
        if let Some(&arrival) = room.by_user.get(user) {
            return Ok(Joined::Queued { view: room.view(arrival, sold_out), again: true });
        }
        if sold_out {
            return Ok(Joined::SoldOut);
        }
        if room.joiners.len() >= ROOM_JOINERS_MAX as usize {
            return Err(QueueError::Full);
        }
        // The queue's order is the order of joining, here under the room's lock. A request that read
        // the clock before another but joins after it is stamped no earlier than the one ahead, so
        // no shopper's `joined_at` contradicts their place.
        let at_ms = room.joiners.last().map_or(now_ms, |&(_, ahead)| ahead.max(now_ms));
        // Read before the record is appended: a reserve the counters already show was logged before
        // this join, so replay sees it too; one logged after sets the flag itself once it is applied.
        let has_reserved = self.held(sale, user) > 0;
        let record = Record::QueueJoined { sale: sale.clone(), user: user.clone(), at_ms };
        sink.append(&record).map_err(|_| QueueError::LogRefused)?;
        room.apply_join(user, at_ms, has_reserved);
        let arrival = room.joiners.len() as u32 - 1;
        Ok(Joined::Queued { view: room.view(arrival, false), again: false })
    }

    /// Where `user` stands in `sale`'s queue at `now_ms`; `None` if they have not joined.
    pub fn queue_view(&self, sale: &str, user: &str) -> Option<QueueView> {
        let room = self.room(sale)?;
        let room = room.lock();
        let arrival = *room.by_user.get(user)?;
        let sold_out = self.sold_out(&room.config);
        Some(room.view(arrival, sold_out))
    }

    pub fn room_view(&self, sale: &str) -> Option<RoomView> {
        let room = self.room(sale)?;
        let room = room.lock();
        Some(RoomView {
            config: room.config.clone(),
            per_user_max: self.sale_limit(sale).unwrap_or(0),
            opened_at_ms: room.opened_at_ms,
            joined: room.joiners.len() as u64,
            admitted: u64::from(room.admitted()),
            waiting: room.waiting(),
            active: room.active,
            pending: room.pending,
            sold_out: self.sold_out(&room.config),
        })
    }

    /// Opens the rooms whose time has come and admits the next shoppers of each open room, as the
    /// module's rules allow. Called on a short period; what it writes is logged like any mutation. A
    /// log refusal stops the tick (the caller learns of the log's failure from the log).
    pub fn admit_due(&self, now_ms: u64, sink: &mut impl RecordSink) -> Vec<RoomTick> {
        let rooms: Vec<_> = self.rooms.read().iter().map(|(s, r)| (s.clone(), r.clone())).collect();
        let mut ticks = Vec::with_capacity(rooms.len());
        for (sale, room) in rooms {
            let mut room = room.lock();
            let mut tick = RoomTick {
                sale,
                opened: false,
                admitted: 0,
                sold_out_now: false,
                waiting: 0,
                waits_ms: vec![],
            };
            if room.opened_at_ms.is_none() && now_ms >= room.config.opens_at_ms {
                let record = Record::QueueOpened { sale: tick.sale.clone(), at_ms: now_ms };
                if sink.append(&record).is_err() {
                    break;
                }
                room.apply_open(now_ms);
                tick.opened = true;
            }
            if room.opened_at_ms.is_some() {
                let count = self.admissions(&tick.sale, &mut room, now_ms);
                if count > 0 {
                    let record = Record::QueueAdmitted { sale: tick.sale.clone(), count, at_ms: now_ms };
                    if sink.append(&record).is_err() {
                        break;
                    }
                    let (from, opened_at) = (room.admitted(), room.opened_at_ms.unwrap_or(now_ms));
                    room.apply_admit(count, now_ms);
                    tick.admitted = count;
                    tick.waits_ms = (from..room.admitted())
                        .map(|rank| {
                            now_ms.saturating_sub(
                                room.joiners[room.order[rank as usize] as usize].1.max(opened_at),
                            )
                        })
                        .collect();
                }
            }
            let sold_out = self.sold_out(&room.config);
            tick.sold_out_now = sold_out && !room.sold_out;
            room.sold_out = sold_out;
            tick.waiting = room.waiting();
            ticks.push(tick);
        }
        ticks
    }

    /// How many to admit now, and the room's figures updated as a side effect.
    fn admissions(&self, sale: &SaleId, room: &mut Room, now_ms: u64) -> u32 {
        let rate = f64::from(room.config.admit_per_s);
        let elapsed = room.last_tick_ms.map_or(0, |last| now_ms.saturating_sub(last));
        room.last_tick_ms = Some(now_ms);
        // At most one second's worth accumulates, so a quiet spell does not become a burst.
        room.tokens = (room.tokens + rate * elapsed as f64 / 1000.0).min(rate.max(1.0));
        let limit = u64::from(self.sale_limit(sale.as_str()).unwrap_or(1));
        let (mut active, mut pending) = (0u64, 0u64);
        for rank in room.live_from(now_ms)..room.admitted() {
            let arrival = room.order[rank as usize] as usize;
            let user = &room.joiners[arrival].0;
            let held = self.counters.lock(user).held(sale, user);
            active += u64::from(held < limit);
            pending += u64::from(held == 0 && !room.reserved[arrival]);
        }
        room.active = active;
        room.pending = pending;
        let room_for = u64::from(room.config.max_active).saturating_sub(active);
        let units_for = self.available(&room.config).saturating_sub(pending);
        let count =
            (room.tokens as u64).min(room_for).min(units_for).min(room.waiting()).min(u64::from(u32::MAX));
        room.tokens -= count as f64;
        count as u32
    }

    /// Notes that `user` reserved in `sale` (live and in replay, after the reservation's locks are
    /// released: the room's lock comes before them).
    pub(super) fn note_reserved(&self, sale: &SaleId, user: &UserId) {
        if let Some(room) = self.room(sale.as_str()) {
            let mut room = room.lock();
            if let Some(&arrival) = room.by_user.get(user) {
                room.reserved[arrival as usize] = true;
            }
        }
    }

    pub(super) fn replay_queue(&self, record: &Record) -> Result<(), String> {
        match record {
            Record::SaleConfigured { sale, per_user_max, room, .. } => {
                check_config(room).map_err(|e| format!("room of {sale}: {e:?}"))?;
                let mut book = self.sale_book.lock();
                self.check_skus_free(sale, &room.skus)
                    .map_err(|_| format!("{sale} covers a SKU of another sale"))?;
                let mut rooms = self.rooms.write();
                self.apply_configured(&mut rooms, sale, *per_user_max, room);
                self.cover(&mut book, sale, &room.skus);
            }
            Record::QueueJoined { sale, user, at_ms } => {
                let room =
                    self.room(sale.as_str()).ok_or(format!("{user} joined {sale}, which has no room"))?;
                let mut room = room.lock();
                if room.by_user.contains_key(user) {
                    return Err(format!("{user} joined {sale} twice"));
                }
                room.apply_join(user, *at_ms, self.held(sale, user) > 0);
            }
            Record::QueueOpened { sale, at_ms } => {
                let room = self.room(sale.as_str()).ok_or(format!("{sale} opened without a room"))?;
                let mut room = room.lock();
                if room.opened_at_ms.is_some() {
                    return Err(format!("{sale} opened twice"));
                }
                room.apply_open(*at_ms);
            }
            Record::QueueAdmitted { sale, count, at_ms } => {
                let room = self.room(sale.as_str()).ok_or(format!("admission to {sale} without a room"))?;
                let mut room = room.lock();
                let placed = room.order.len() as u64 - u64::from(room.admitted());
                if room.opened_at_ms.is_none() || u64::from(*count) > placed || *count == 0 {
                    return Err(format!("{count} admitted to {sale} with {placed} placed and waiting"));
                }
                room.apply_admit(*count, *at_ms);
            }
            _ => unreachable!("only queue records come here"),
        }
        Ok(())
    }

    pub(super) fn export_rooms(&self) -> Vec<RoomState> {
        let mut rooms: Vec<_> =
            self.rooms.read().iter().map(|(sale, room)| room.lock().state(sale)).collect();
        rooms.sort_by(|a, b| a.sale.cmp(&b.sale));
        rooms
    }

    pub(super) fn restore_rooms(&self, states: &[RoomState]) -> Result<(), String> {
        let mut rooms = self.rooms.write();
        for s in states {
            let room = Room::from_state(s)?;
            if rooms.insert(s.sale.clone(), Arc::new(Mutex::new(room))).is_some() {
                return Err(format!("room {} appears twice", s.sale));
            }
            if self.sale_limit(s.sale.as_str()).is_none() {
                return Err(format!("room {} has no per-user limit", s.sale));
            }
        }
        Ok(())
    }
}

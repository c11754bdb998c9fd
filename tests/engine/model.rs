//! Property test: random operation sequences on a moving clock, run against the engine and against a
//! naive model built from ordered maps, compared after every step. Then the engine's records are
//! replayed into a fresh engine, which must export exactly the same state.

use holdfast::engine::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const SKUS: [&str; 5] = ["a", "b", "c", "d", "e"];
const SALES: [&str; 2] = ["noon", "dusk"];
const USERS: [&str; 3] = ["u1", "u2", "u3"];

fn config(shards: usize) -> EngineConfig {
    EngineConfig {
        shards,
        ttl_ms_min: 1_000,
        ttl_ms_max: 20_000,
        hold_ms_max: 40_000,
        idempotency_window_ms: 60_000,
        idempotency_keys_max: 1 << 20,
        ended_retention_ms: 50_000,
        active_per_shard_max: 1 << 20,
        // Within the TTL range, as the configuration check requires.
        pending_extension_ms: 20_000,
        ..EngineConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    SetStock {
        sku: usize,
        on_hand: u64,
    },
    Adjust {
        sku: usize,
        delta: i64,
    },
    SetSale {
        sale: usize,
        limit: u32,
        skus: Vec<usize>,
    },
    Reserve {
        items: Vec<(usize, u32)>,
        ttl_ms: u64,
        user: Option<usize>,
        sale: Option<usize>,
        key: Option<u8>,
    },
    Commit {
        pick: usize,
    },
    Release {
        pick: usize,
    },
    Extend {
        pick: usize,
        ttl_ms: u64,
    },
    Expire,
    Advance {
        ms: u64,
    },
}

fn ttl() -> impl Strategy<Value = u64> {
    // Mostly whole seconds, so that the clock often lands exactly on a deadline.
    prop_oneof![6 => (1u64..=20).prop_map(|s| s * 1_000), 2 => 1_000u64..=20_000, 1 => Just(0u64), 1 => Just(20_001u64)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..SKUS.len(), 0u64..12).prop_map(|(sku, on_hand)| Op::SetStock { sku, on_hand }),
        1 => (0..SKUS.len(), -6i64..=6).prop_map(|(sku, delta)| Op::Adjust { sku, delta }),
        1 => (0..SALES.len(), 1u32..5, prop::collection::vec(0..SKUS.len(), 0..3))
            .prop_map(|(sale, limit, skus)| Op::SetSale { sale, limit, skus }),
        8 => (
            prop::collection::vec((0..SKUS.len(), 0u32..4), 0..4),
            ttl(),
            prop::option::weighted(0.8, 0..USERS.len()),
            prop::option::weighted(0.4, 0..SALES.len()),
            prop::option::weighted(0.5, 0u8..6),
        )
            .prop_map(|(items, ttl_ms, user, sale, key)| Op::Reserve { items, ttl_ms, user, sale, key }),
        3 => any::<usize>().prop_map(|pick| Op::Commit { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (any::<usize>(), ttl()).prop_map(|(pick, ttl_ms)| Op::Extend { pick, ttl_ms }),
        2 => Just(Op::Expire),
        3 => prop_oneof![3 => (0u64..15).prop_map(|s| s * 1_000), 1 => 0u64..15_000].prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct MStock {
    on_hand: u64,
    available: u64,
    reserved: u64,
    sold: u64,
}

#[derive(Debug, Clone)]
struct MRes {
    items: Vec<(String, u32)>,
    created: u64,
    expires: u64,
    ended: u64,
    state: ReservationState,
    holder: Option<(String, String)>,
}

/// The reference: everything in ordered maps, every rule written out plainly.
#[derive(Default)]
struct Model {
    skus: BTreeMap<String, MStock>,
    sales: BTreeMap<String, u32>,
    /// SKU → the sale covering it (a SKU is in one sale at a time).
    sku_sale: BTreeMap<String, String>,
    res: BTreeMap<ReservationId, MRes>,
    /// key → (request without key, reservation, expires, created)
    keys: BTreeMap<String, (ReserveRequest, ReservationId, u64, u64)>,
    counters: BTreeMap<(String, String), u64>,
}

impl Model {
    /// The sale a reserve counts against: the named one, which must cover every SKU, or the one
    /// covering them all; SKUs of a reserve are in one sale or in none.
    fn sale_of(&self, req: &ReserveRequest) -> Result<Option<String>, ReserveError> {
        if let Some(named) = &req.sale {
            if !self.sales.contains_key(named.as_str()) {
                return Err(ReserveError::UnknownSale);
            }
        }
        let covering = |i: usize| self.sku_sale.get(req.items[i].sku.as_str()).cloned();
        let expected = match &req.sale {
            Some(named) => Some(named.to_string()),
            None => covering(0),
        };
        match (0..req.items.len()).find(|&i| covering(i) != expected) {
            Some(item) => Err(ReserveError::SaleMismatch { item }),
            None => Ok(expected),
        }
    }

    fn set_sale(&mut self, sale: &str, limit: u32, skus: &[String]) -> Result<(), QueueError> {
        if let Some(index) = skus.iter().position(|s| !self.skus.contains_key(s)) {
            return Err(QueueError::UnknownSku { index });
        }
        if let Some(index) = skus.iter().position(|s| self.sku_sale.get(s).is_some_and(|o| o != sale)) {
            return Err(QueueError::SkuInOtherSale { index });
        }
        self.sku_sale.retain(|_, owner| owner != sale);
        for s in skus {
            self.sku_sale.insert(s.clone(), sale.to_string());
        }
        self.sales.insert(sale.to_string(), limit);
        Ok(())
    }

    fn end(&mut self, id: ReservationId, to: ReservationState, now: u64) {
        let r = self.res.get_mut(&id).expect("known");
        assert_eq!(r.state, ReservationState::Active);
        r.state = to;
        r.ended = now;
        for (sku, qty) in &r.items {
            let s = self.skus.get_mut(sku).expect("sku");
            s.reserved -= u64::from(*qty);
            if to == ReservationState::Committed {
                s.sold += u64::from(*qty);
            } else {
                s.available += u64::from(*qty);
            }
        }
        if to != ReservationState::Committed {
            if let Some(h) = r.holder.clone() {
                let units: u64 = r.items.iter().map(|(_, q)| u64::from(*q)).sum();
                let c = self.counters.get_mut(&h).expect("counter");
                *c -= units;
                if *c == 0 {
                    self.counters.remove(&h);
                }
            }
        }
    }

    /// The reservation as `lock_live` sees it: Err for gone or ended.
    fn live(&self, id: ReservationId, now: u64, cfg: &EngineConfig) -> Result<&MRes, ReservationError> {
        let r = self.res.get(&id).ok_or(ReservationError::NotFound)?;
        if r.state != ReservationState::Active && r.ended + cfg.ended_retention_ms <= now {
            return Err(ReservationError::NotFound);
        }
        match r.state {
            ReservationState::Active => Ok(r),
            ReservationState::Committed => Err(ReservationError::Committed),
            ReservationState::Released => Err(ReservationError::Released),
            ReservationState::Expired => Err(ReservationError::Expired),
        }
    }

    fn reserve(
        &self,
        req: &ReserveRequest,
        now: u64,
        cfg: &EngineConfig,
    ) -> Result<Option<Reserved>, ReserveError> {
        // Validation, in the engine's order.
        let invalid = |e| Err(ReserveError::Invalid(e));
        if req.items.is_empty() {
            return invalid(RequestError::NoItems);
        }
        for (i, item) in req.items.iter().enumerate() {
            if item.qty == 0 {
                return invalid(RequestError::ZeroQuantity { item: i });
            }
            if req.items[..i].iter().any(|e| e.sku == item.sku) {
                return invalid(RequestError::DuplicateSku { item: i });
            }
        }
        if !(cfg.ttl_ms_min..=cfg.ttl_ms_max).contains(&req.ttl_ms) {
            return invalid(RequestError::TtlOutOfRange { min: cfg.ttl_ms_min, max: cfg.ttl_ms_max });
        }
        if req.sale.is_some() && req.user.is_none() {
            return invalid(RequestError::SaleWithoutUser);
        }
        if let Some(i) = req.items.iter().position(|it| !self.skus.contains_key(it.sku.as_str())) {
            return Err(ReserveError::UnknownSku { item: i });
        }
        if let Some(key) = &req.idempotency_key {
            if let Some((orig, id, expires, created)) = self.keys.get(key.as_str()) {
                if created + cfg.idempotency_window_ms > now {
                    let mut unkeyed = req.clone();
                    unkeyed.idempotency_key = None;
                    if *orig != unkeyed {
                        return Err(ReserveError::IdempotencyConflict);
                    }
                    return Ok(Some(Reserved { id: *id, expires_at_ms: *expires, replayed: true }));
                }
            }
        }
        for (i, item) in req.items.iter().enumerate() {
            let available = self.skus[item.sku.as_str()].available;
            if available < u64::from(item.qty) {
                return Err(ReserveError::InsufficientStock { item: i, available });
            }
        }
        if let Some(sale) = self.sale_of(req)? {
            let limit = self.sales[&sale];
            let user =
                req.user.as_ref().ok_or(ReserveError::Invalid(RequestError::SaleWithoutUser))?.to_string();
            let held = self.counters.get(&(sale.to_string(), user)).copied().unwrap_or(0);
            let units: u64 = req.items.iter().map(|i| u64::from(i.qty)).sum();
            if held + units > u64::from(limit) {
                return Err(ReserveError::LimitExceeded { limit, held });
            }
        }
        Ok(None)
    }

    fn apply_reserve(&mut self, req: &ReserveRequest, got: Reserved, now: u64) {
        for item in &req.items {
            let s = self.skus.get_mut(item.sku.as_str()).expect("sku");
            s.available -= u64::from(item.qty);
            s.reserved += u64::from(item.qty);
        }
        let sale = self.sale_of(req).expect("decided");
        let holder = sale.map(|s| (s, req.user.as_ref().expect("user").to_string()));
        if let Some(h) = &holder {
            *self.counters.entry(h.clone()).or_default() +=
                req.items.iter().map(|i| u64::from(i.qty)).sum::<u64>();
        }
        if let Some(key) = &req.idempotency_key {
            let mut unkeyed = req.clone();
            unkeyed.idempotency_key = None;
            self.keys.insert(key.to_string(), (unkeyed, got.id, got.expires_at_ms, now));
        }
        let items = req.items.iter().map(|i| (i.sku.to_string(), i.qty)).collect();
        let r = MRes {
            items,
            created: now,
            expires: got.expires_at_ms,
            ended: 0,
            state: ReservationState::Active,
            holder,
        };
        assert!(self.res.insert(got.id, r).is_none(), "engine issued {} twice", got.id);
    }
}

fn check_same(engine: &Engine, model: &Model, now: u64) -> Result<(), TestCaseError> {
    for (name, m) in &model.skus {
        let s = engine.stock(name).expect("the model's SKU exists in the engine");
        let m = Stock { on_hand: m.on_hand, available: m.available, reserved: m.reserved, sold: m.sold };
        prop_assert_eq!(s, m, "stock of {}", name);
    }
    let state = engine.export(now);
    prop_assert_eq!(state.skus.len(), model.skus.len());
    let counters: Vec<(String, String, u64)> =
        model.counters.iter().map(|((s, u), n)| (s.clone(), u.clone(), *n)).collect();
    let engine_counters: Vec<(String, String, u64)> =
        state.counters.iter().map(|(s, u, n)| (s.to_string(), u.to_string(), *n)).collect();
    prop_assert_eq!(engine_counters, counters);
    for (limit_sale, limit) in &model.sales {
        prop_assert_eq!(engine.sale_limit(limit_sale), Some(*limit));
    }
    prop_assert_eq!(
        state.reservations.len(),
        model
            .res
            .values()
            .filter(|r| {
                r.state == ReservationState::Active || r.ended + config(1).ended_retention_ms > now
            })
            .count()
    );
    for view in &state.reservations {
        let m = &model.res[&view.id];
        prop_assert_eq!(view.state, m.state);
        prop_assert_eq!(view.expires_at_ms, m.expires);
    }
    engine.check_consistency().map_err(TestCaseError::fail)?;
    Ok(())
}

fn name_of<T>(list: &[&str], i: usize, make: fn(&str) -> Result<T, NameError>) -> T {
    make(list[i]).expect("valid name")
}

fn run(ops: &[Op], shards: usize) -> Result<(), TestCaseError> {
    let cfg = config(shards);
    let engine = Engine::new(cfg.clone()).expect("config");
    let mut model = Model::default();
    let mut log: Vec<Record> = Vec::new();
    let mut now: u64 = 1_000_000;
    let mut ids: Vec<ReservationId> = Vec::new();
    let pick = |ids: &Vec<ReservationId>, p: usize| -> ReservationId {
        // One pick in eight names a reservation that does not exist.
        if ids.is_empty() || p.is_multiple_of(8) {
            ReservationId::parse("rsv_03ff000000abcdef").expect("valid")
        } else {
            ids[p % ids.len()]
        }
    };
    for op in ops {
        match op {
            Op::SetStock { sku, on_hand } => {
                let s = name_of(&SKUS, *sku, SkuId::new);
                let got = engine.set_stock(&s, *on_hand, now, &mut log);
                let m = model.skus.get(SKUS[*sku]).copied();
                let held = m.map_or(0, |m| m.reserved + m.sold);
                if *on_hand < held {
                    prop_assert_eq!(got, Err(StockError::BelowHeld { held }));
                } else {
                    let e = model.skus.entry(SKUS[*sku].to_string()).or_default();
                    e.on_hand = *on_hand;
                    e.available = on_hand - e.reserved - e.sold;
                    prop_assert!(got.is_ok());
                }
            }
            Op::Adjust { sku, delta } => {
                let s = name_of(&SKUS, *sku, SkuId::new);
                let got = engine.adjust_stock(&s, *delta, &Reason::default(), now, &mut log);
                match model.skus.get_mut(SKUS[*sku]) {
                    None => prop_assert_eq!(got, Err(StockError::UnknownSku)),
                    Some(_) if *delta == 0 => {
                        prop_assert_eq!(got, Err(StockError::Invalid(RequestError::StockOutOfRange)))
                    }
                    Some(m) => {
                        let held = m.reserved + m.sold;
                        let new = m.on_hand as i64 + delta;
                        if new < held as i64 {
                            prop_assert_eq!(got, Err(StockError::BelowHeld { held }));
                        } else {
                            m.on_hand = new as u64;
                            m.available = m.on_hand - held;
                            prop_assert!(got.is_ok());
                        }
                    }
                }
            }
            Op::SetSale { sale, limit, skus } => {
                let s = name_of(&SALES, *sale, SaleId::new);
                let mut names: Vec<String> = skus.iter().map(|&i| SKUS[i].to_string()).collect();
                names.sort();
                names.dedup();
                let ids: Vec<SkuId> = names.iter().map(|n| SkuId::new(n).expect("valid")).collect();
                let got = engine.set_sale(&s, *limit, &ids, now, &mut log);
                prop_assert_eq!(got, model.set_sale(SALES[*sale], *limit, &names));
            }
            Op::Reserve { items, ttl_ms, user, sale, key } => {
                let req = ReserveRequest {
                    items: items
                        .iter()
                        .map(|(s, qty)| Item { sku: name_of(&SKUS, *s, SkuId::new), qty: *qty })
                        .collect(),
                    ttl_ms: *ttl_ms,
                    user: user.map(|u| name_of(&USERS, u, UserId::new)),
                    sale: sale.map(|s| name_of(&SALES, s, SaleId::new)),
                    idempotency_key: key.map(|k| IdempotencyKey::new(&format!("key-{k}")).expect("valid")),
                };
                let expected = model.reserve(&req, now, &cfg);
                let got = engine.reserve(&req, now, &mut log);
                match (expected, got) {
                    (Ok(None), Ok(r)) => {
                        prop_assert!(!r.replayed);
                        prop_assert_eq!(r.expires_at_ms, now + ttl_ms);
                        model.apply_reserve(&req, r, now);
                        ids.push(r.id);
                    }
                    (Ok(Some(m)), Ok(r)) => prop_assert_eq!(m, r),
                    (Err(m), Err(e)) => prop_assert_eq!(m, e),
                    (m, e) => prop_assert!(false, "model {:?} but engine {:?} for {:?}", m, e, req),
                }
            }
            Op::Commit { pick: p } | Op::Release { pick: p } => {
                let id = pick(&ids, *p);
                let commit = matches!(op, Op::Commit { .. });
                let got =
                    if commit { engine.commit(id, now, &mut log) } else { engine.release(id, now, &mut log) };
                let expected = match model.live(id, now, &cfg) {
                    Err(ReservationError::Committed) if commit => Ok(()),
                    Err(ReservationError::Released) if !commit => Ok(()),
                    Err(e) => Err(e),
                    Ok(r) if now >= r.expires => {
                        model.end(id, ReservationState::Expired, now);
                        Err(ReservationError::Expired)
                    }
                    Ok(_) => {
                        let to =
                            if commit { ReservationState::Committed } else { ReservationState::Released };
                        model.end(id, to, now);
                        Ok(())
                    }
                };
                prop_assert_eq!(got, expected);
            }
            Op::Extend { pick: p, ttl_ms } => {
                let id = pick(&ids, *p);
                let got = engine.extend(id, *ttl_ms, now, &mut log);
                let expected = if !(cfg.ttl_ms_min..=cfg.ttl_ms_max).contains(ttl_ms) {
                    Err(ReservationError::Invalid(RequestError::TtlOutOfRange {
                        min: cfg.ttl_ms_min,
                        max: cfg.ttl_ms_max,
                    }))
                } else {
                    match model.live(id, now, &cfg).map(|r| (r.expires, r.created)) {
                        Err(e) => Err(e),
                        Ok((expires, _)) if now >= expires => {
                            model.end(id, ReservationState::Expired, now);
                            Err(ReservationError::Expired)
                        }
                        Ok((expires, created)) => {
                            let new = (now + ttl_ms).min(created + cfg.hold_ms_max).max(expires);
                            model.res.get_mut(&id).expect("live").expires = new;
                            Ok(new)
                        }
                    }
                };
                prop_assert_eq!(got, expected);
            }
            Op::Expire => {
                let mut got = engine.expire_due(now, &mut log);
                got.sort();
                let due: Vec<ReservationId> = model
                    .res
                    .iter()
                    .filter(|(_, r)| r.state == ReservationState::Active && r.expires <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in &due {
                    model.end(*id, ReservationState::Expired, now);
                }
                prop_assert_eq!(got, due);
            }
            Op::Advance { ms } => now += ms,
        }
        check_same(&engine, &model, now)?;
    }
    // Replay: the records, in the sink's order, rebuild the same engine — and with another shard count.
    for replay_shards in [shards, 1 + shards % 3] {
        let replayed = Engine::new(config(replay_shards)).expect("config");
        for (i, record) in log.iter().enumerate() {
            replayed.apply(record).map_err(|e| TestCaseError::fail(format!("record {i} {record:?}: {e}")))?;
        }
        let (mut a, mut b) = (engine.export(now), replayed.export(now));
        if replay_shards != shards {
            a.next_seqs.clear();
            b.next_seqs.clear();
        }
        prop_assert_eq!(a, b);
    }
    // Restore: the exported state, rebuilt, exports the same (with the same or another shard count).
    let state = engine.export(now);
    for restore_shards in [shards, 1 + shards % 3] {
        let restored = Engine::restore(config(restore_shards), &state)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut again = restored.export(now);
        let mut expected = state.clone();
        if restore_shards != shards {
            again.next_seqs.clear();
            expected.next_seqs.clear();
        }
        prop_assert_eq!(again, expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model_and_replays_exactly(ops in prop::collection::vec(op(), 1..160), shards in 1usize..5) {
        run(&ops, shards)?;
    }
}

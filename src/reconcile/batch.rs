//! One batch of log records as one Postgres transaction: reservations, items and state-history events
//! copied in (binary COPY), the changes to existing rows as set-based UPDATEs over arrays, SKU deltas
//! computed in SQL from the items table, and the checkpoint moved from its old value. Stock and sale
//! records set absolute values and are applied one by one between the changes around them.

use super::mirror::ADJUSTMENT_PREFIX;
use crate::engine::{Record, ReservationState};
use crate::orders::{OrderRecord, OrderState, OrderStep};
use holdfast_wal::Lsn;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

pub(crate) fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A reservation's final state, end time, expiry and LSN within a batch (`None`: unchanged).
type Update = (Option<&'static str>, Option<SystemTime>, Option<SystemTime>, i64);

/// Reservation changes and per-SKU deltas accumulated between two stock records.
#[derive(Default)]
struct Changes {
    new_ids: Vec<String>,
    new_created: Vec<SystemTime>,
    new_expires: Vec<SystemTime>,
    new_user: Vec<Option<String>>,
    new_sale: Vec<Option<String>>,
    new_key: Vec<Option<String>>,
    new_lsn: Vec<i64>,
    item_ids: Vec<String>,
    item_skus: Vec<String>,
    item_qty: Vec<i32>,
    ev_lsn: Vec<i64>,
    ev_ids: Vec<String>,
    ev_kind: Vec<&'static str>,
    /// The event's place among its record's reservation records (a cart's step has several).
    ev_seq: Vec<i16>,
    ev_at: Vec<SystemTime>,
    ev_expires: Vec<Option<SystemTime>>,
    /// The final change of each reservation changed after it was made.
    updates: HashMap<String, Update>,
    /// Units reserved per SKU by the reserves here.
    reserved: HashMap<String, i64>,
    end_ids: Vec<String>,
    end_kinds: Vec<&'static str>,
    last_lsn: i64,
    orders: OrderChanges,
}

/// An order's row as its `Placed` step makes it (and later steps in the same batch change it).
struct NewOrder {
    id: String,
    user: String,
    sale: Option<String>,
    items: String,
    amount: i64,
    currency: String,
    key: String,
    created_at: SystemTime,
    created_lsn: i64,
    change: OrderChange,
}

/// What the steps of one batch changed in an order's row; `None`: unchanged.
#[derive(Default)]
struct OrderChange {
    state: Option<&'static str>,
    /// Meaningful only with `state`: the cause goes with the state (set while cancelled).
    cause: Option<&'static str>,
    reservation: Option<String>,
    provider_ref: Option<String>,
    pay_by: Option<SystemTime>,
    paid_amount: Option<i64>,
    paid_currency: Option<String>,
    commit_owed: Option<bool>,
    ended: Option<SystemTime>,
    /// `ended` applies only where the row has no end yet (a `Paid` that commits a rebooking's hold
    /// leaves the end the rebooking set).
    ended_if_unset: bool,
    at: Option<SystemTime>,
    lsn: i64,
}

impl OrderChange {
    /// Folds one step (at `lsn`, `at`) into the change.
    fn step(&mut self, o: &OrderRecord, lsn: i64) {
        let at = time(o.at_ms);
        (self.at, self.lsn) = (Some(at), lsn);
        let (state, cause) = step_state(&o.step);
        if let Some(state) = state {
            (self.state, self.cause) = (Some(state), cause);
        }
        match &o.step {
            // Recorded in the order's history rows; the row's state does not change.
            OrderStep::Placed(_) | OrderStep::SurplusPayment { .. } => {}
            OrderStep::PaymentAttached { provider_ref } => self.provider_ref = Some(provider_ref.clone()),
            OrderStep::Pending => {
                if let Some(Record::Extended { expires_at_ms, .. }) = &o.reservation {
                    self.pay_by = Some(time(*expires_at_ms));
                }
            }
            OrderStep::Paid => {
                self.commit_owed = Some(false);
                if self.ended.is_none() {
                    (self.ended, self.ended_if_unset) = (Some(at), true);
                }
            }
            OrderStep::Rebooked => {
                if let Some(Record::Reserved(r)) = &o.reservation {
                    self.reservation = Some(r.id.to_string());
                }
                self.commit_owed = Some(true);
                (self.ended, self.ended_if_unset) = (Some(at), false);
            }
            OrderStep::PaymentMismatch { amount, currency } => {
                self.paid_amount = Some(signed(*amount));
                self.paid_currency = Some(currency.clone());
                (self.ended, self.ended_if_unset) = (Some(at), false);
            }
            OrderStep::Cancelled(_) | OrderStep::RefundDue => {
                (self.ended, self.ended_if_unset) = (Some(at), false);
            }
        }
    }
}

/// The state (and cause) an order has after `step`; `None`: the step leaves the state as it was.
fn step_state(step: &OrderStep) -> (Option<&'static str>, Option<&'static str>) {
    let state = match step {
        OrderStep::Placed(_) => OrderState::AwaitingPayment,
        OrderStep::PaymentAttached { .. } | OrderStep::SurplusPayment { .. } => return (None, None),
        OrderStep::Pending => OrderState::PaymentPending,
        OrderStep::Paid | OrderStep::Rebooked => OrderState::Paid,
        OrderStep::Cancelled(c) => return (Some("cancelled"), Some(c.as_str())),
        OrderStep::RefundDue => OrderState::RefundDue,
        OrderStep::PaymentMismatch { .. } => OrderState::PaymentMismatch,
    };
    (Some(state.as_str()), None)
}

/// An order's lines as the `items` column holds them.
pub(super) fn items_json(lines: &[crate::orders::OrderLine]) -> String {
    let lines: Vec<_> = (lines.iter())
        .map(|l| json!({"sku": l.sku.as_str(), "qty": l.qty, "unit_price": l.unit_price}))
        .collect();
    serde_json::Value::Array(lines).to_string()
}

/// Order steps accumulated with the reservation changes: new rows, changes to existing rows (the final
/// one of each order), and one history row per step.
#[derive(Default)]
struct OrderChanges {
    new: Vec<NewOrder>,
    /// Index into `new` of each order placed in this batch.
    placed_here: HashMap<String, usize>,
    updates: HashMap<String, OrderChange>,
    ev_lsn: Vec<i64>,
    ev_ids: Vec<String>,
    ev_step: Vec<&'static str>,
    ev_state: Vec<Option<&'static str>>,
    ev_cause: Vec<Option<&'static str>>,
    ev_event: Vec<Option<String>>,
    ev_reservation: Vec<Option<String>>,
    ev_at: Vec<SystemTime>,
}

impl OrderChanges {
    fn is_empty(&self) -> bool {
        self.ev_lsn.is_empty()
    }

    fn add(&mut self, lsn: i64, o: &OrderRecord) {
        let id = o.order.to_string();
        let (state, cause) = step_state(&o.step);
        let reservation = match &o.reservation {
            Some(Record::Reserved(r)) => Some(r.id.to_string()),
            Some(Record::Extended { id, .. })
            | Some(Record::Committed { id, .. })
            | Some(Record::Released { id, .. })
            | Some(Record::Expired { id, .. }) => Some(id.to_string()),
            _ => None,
        };
        self.ev_lsn.push(lsn);
        self.ev_ids.push(id.clone());
        self.ev_step.push(crate::durable::codec::step_name(&o.step));
        self.ev_state.push(state);
        self.ev_cause.push(cause);
        self.ev_event.push(o.event.clone());
        self.ev_reservation.push(reservation);
        self.ev_at.push(time(o.at_ms));
        if let OrderStep::Placed(p) = &o.step {
            let (reservation, pay_by) = match &o.reservation {
                Some(Record::Reserved(r)) => (r.id.to_string(), r.expires_at_ms),
                _ => (o.order.0.to_string(), o.at_ms),
            };
            let mut change = OrderChange::default();
            change.step(o, lsn);
            change.reservation = Some(reservation);
            change.pay_by = Some(time(pay_by));
            self.placed_here.insert(id.clone(), self.new.len());
            self.new.push(NewOrder {
                id,
                user: p.user.as_str().to_owned(),
                sale: p.sale.as_ref().map(|s| s.as_str().to_owned()),
                items: items_json(&p.lines),
                amount: signed(p.amount),
                currency: p.currency.clone(),
                key: p.key.as_str().to_owned(),
                created_at: time(o.at_ms),
                created_lsn: lsn,
                change,
            });
            return;
        }
        match self.placed_here.get(&id) {
            Some(&i) => self.new[i].change.step(o, lsn),
            None => self.updates.entry(id).or_default().step(o, lsn),
        }
    }

    async fn apply(self, tx: &Transaction<'_>, generation: i32, last_lsn: i64) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if !self.new.is_empty() {
            let mut c = OrderColumns::default();
            for n in &self.new {
                c.push(&n.id, &n.change);
                c.user.push(n.user.as_str());
                c.sale.push(n.sale.as_deref());
                c.items.push(n.items.as_str());
                c.amount.push(n.amount);
                c.currency.push(n.currency.as_str());
                c.key.push(n.key.as_str());
                c.created_at.push(n.created_at);
                c.created_lsn.push(n.created_lsn);
            }
            tx.execute(
                "INSERT INTO holdfast_orders (id, state, cause, reservation_id, provider_ref, pay_by, paid_amount,
                     paid_currency, commit_owed, ended_at, updated_at, updated_lsn, user_id, sale, items, amount,
                     currency, idempotency_key, created_at, created_lsn)
                 SELECT id, state, cause, res, pref, pay_by, pamount, pcur, COALESCE(owed, false), ended, at, lsn,
                     usr, sale, items::jsonb, amount, cur, key, created, clsn
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::int8[], $8::text[], $9::bool[], $10::timestamptz[], $11::timestamptz[], $12::int8[],
                     $13::text[], $14::text[], $15::text[], $16::int8[], $17::text[], $18::text[],
                     $19::timestamptz[], $20::int8[])
                     AS t(id, state, cause, res, pref, pay_by, pamount, pcur, owed, ended, at, lsn, usr, sale,
                          items, amount, cur, key, created, clsn)",
                &[
                    &c.ids,
                    &c.states,
                    &c.causes,
                    &c.reservations,
                    &c.provider_refs,
                    &c.pay_by,
                    &c.paid_amounts,
                    &c.paid_currencies,
                    &c.owed,
                    &c.ended,
                    &c.at,
                    &c.lsns,
                    &c.user,
                    &c.sale,
                    &c.items,
                    &c.amount,
                    &c.currency,
                    &c.key,
                    &c.created_at,
                    &c.created_lsn,
                ],
            )
            .await?;
        }
        if !self.updates.is_empty() {
            let mut c = OrderColumns::default();
            for (id, change) in &self.updates {
                c.push(id, change);
            }
            let n = tx
                .execute(
                    "UPDATE holdfast_orders o
                     SET state = COALESCE(t.state, o.state),
                         cause = CASE WHEN t.state IS NULL THEN o.cause ELSE t.cause END,
                         reservation_id = COALESCE(t.res, o.reservation_id),
                         provider_ref = COALESCE(t.pref, o.provider_ref),
                         pay_by = COALESCE(t.pay_by, o.pay_by),
                         paid_amount = COALESCE(t.pamount, o.paid_amount),
                         paid_currency = COALESCE(t.pcur, o.paid_currency),
                         commit_owed = COALESCE(t.owed, o.commit_owed),
                         ended_at = CASE WHEN t.ended IS NULL THEN o.ended_at
                                         WHEN t.keep THEN COALESCE(o.ended_at, t.ended) ELSE t.ended END,
                         updated_at = t.at, updated_lsn = t.lsn
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                         $7::int8[], $8::text[], $9::bool[], $10::timestamptz[], $11::bool[], $12::timestamptz[],
                         $13::int8[])
                         AS t(id, state, cause, res, pref, pay_by, pamount, pcur, owed, ended, keep, at, lsn)
                     WHERE o.id = t.id",
                    &[
                        &c.ids,
                        &c.states,
                        &c.causes,
                        &c.reservations,
                        &c.provider_refs,
                        &c.pay_by,
                        &c.paid_amounts,
                        &c.paid_currencies,
                        &c.owed,
                        &c.ended,
                        &c.keep,
                        &c.at,
                        &c.lsns,
                    ],
                )
                .await?;
            if n != c.ids.len() as u64 {
                anyhow::bail!(
                    "{} of {} orders changed by records up to LSN {last_lsn} are not in Postgres: it has drifted from the log (run holdfast reconcile)",
                    c.ids.len() as u64 - n,
                    c.ids.len(),
                );
            }
        }
        tx.execute(
            "INSERT INTO holdfast_order_events (generation, lsn, order_id, step, state, cause, event_id,
                 reservation_id, at)
             SELECT $1, * FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                 $8::text[], $9::timestamptz[])",
            &[
                &generation,
                &self.ev_lsn,
                &self.ev_ids,
                &self.ev_step,
                &self.ev_state,
                &self.ev_cause,
                &self.ev_event,
                &self.ev_reservation,
                &self.ev_at,
            ],
        )
        .await?;
        Ok(())
    }
}

/// The columns of order rows, as arrays for `unnest`.
#[derive(Default)]
struct OrderColumns<'a> {
    ids: Vec<&'a str>,
    states: Vec<Option<&'static str>>,
    causes: Vec<Option<&'static str>>,
    reservations: Vec<Option<&'a str>>,
    provider_refs: Vec<Option<&'a str>>,
    pay_by: Vec<Option<SystemTime>>,
    paid_amounts: Vec<Option<i64>>,
    paid_currencies: Vec<Option<&'a str>>,
    owed: Vec<Option<bool>>,
    ended: Vec<Option<SystemTime>>,
    keep: Vec<bool>,
    at: Vec<Option<SystemTime>>,
    lsns: Vec<i64>,
    user: Vec<&'a str>,
    sale: Vec<Option<&'a str>>,
    items: Vec<&'a str>,
    amount: Vec<i64>,
    currency: Vec<&'a str>,
    key: Vec<&'a str>,
    created_at: Vec<SystemTime>,
    created_lsn: Vec<i64>,
}

impl<'a> OrderColumns<'a> {
    fn push(&mut self, id: &'a str, c: &'a OrderChange) {
        self.ids.push(id);
        self.states.push(c.state);
        self.causes.push(c.cause);
        self.reservations.push(c.reservation.as_deref());
        self.provider_refs.push(c.provider_ref.as_deref());
        self.pay_by.push(c.pay_by);
        self.paid_amounts.push(c.paid_amount);
        self.paid_currencies.push(c.paid_currency.as_deref());
        self.owed.push(c.commit_owed);
        self.ended.push(c.ended);
        self.keep.push(c.ended_if_unset);
        self.at.push(c.at);
        self.lsns.push(c.lsn);
    }
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.ev_lsn.is_empty() && self.orders.is_empty()
    }

    fn add(&mut self, lsn: Lsn, record: &Record) {
        let l = signed(lsn);
        self.last_lsn = l;
        let event = |s: &mut Self, id: String, kind: &'static str, at: u64, expires: Option<u64>| {
            let seq = s.ev_lsn.iter().rev().take_while(|x| **x == l).count();
            s.ev_seq.push(i16::try_from(seq).expect("a record carries a few reservation records"));
            s.ev_lsn.push(l);
            s.ev_ids.push(id);
            s.ev_kind.push(kind);
            s.ev_at.push(time(at));
            s.ev_expires.push(expires.map(time));
        };
        match record {
            Record::Reserved(r) => {
                let id = r.id.to_string();
                self.new_ids.push(id.clone());
                self.new_created.push(time(r.created_at_ms));
                self.new_expires.push(time(r.expires_at_ms));
                self.new_user.push(r.user.as_ref().map(|u| u.as_str().to_owned()));
                self.new_sale.push(r.sale.as_ref().map(|s| s.as_str().to_owned()));
                self.new_key.push(r.idempotency.as_ref().map(|(k, _)| k.as_str().to_owned()));
                self.new_lsn.push(l);
                for item in &r.items {
                    self.item_ids.push(id.clone());
                    self.item_skus.push(item.sku.as_str().to_owned());
                    self.item_qty.push(item.qty as i32);
                    *self.reserved.entry(item.sku.as_str().to_owned()).or_default() += i64::from(item.qty);
                }
                event(self, id, "reserved", r.created_at_ms, Some(r.expires_at_ms));
            }
            Record::Extended { id, expires_at_ms, at_ms } => {
                let id = id.to_string();
                let u = self.updates.entry(id.clone()).or_insert((None, None, None, l));
                u.2 = Some(time(*expires_at_ms));
                u.3 = l;
                event(self, id, "extended", *at_ms, Some(*expires_at_ms));
            }
            Record::Committed { id, at_ms }
            | Record::Released { id, at_ms }
            | Record::Expired { id, at_ms } => {
                let kind = match record {
                    Record::Committed { .. } => ReservationState::Committed,
                    Record::Released { .. } => ReservationState::Released,
                    _ => ReservationState::Expired,
                }
                .as_str();
                let id = id.to_string();
                let u = self.updates.entry(id.clone()).or_insert((None, None, None, l));
                (u.0, u.1, u.3) = (Some(kind), Some(time(*at_ms)), l);
                self.end_ids.push(id.clone());
                self.end_kinds.push(kind);
                event(self, id, kind, *at_ms, None);
            }
            // An order's step: its reservation's record is mirrored like any other, and the order's
            // row and history with it.
            Record::Order(o) => {
                if let Some(inner) = &o.reservation {
                    self.add(lsn, inner);
                }
                self.orders.add(l, o);
            }
            // Carts are not mirrored; a checkout's order is, as any order.
            Record::Cart(c) => {
                for inner in &c.inner {
                    self.add(lsn, inner);
                }
            }
            Record::StockSet { .. }
            | Record::StockAdjusted { .. }
            | Record::SaleSet { .. }
            | Record::SaleConfigured { .. }
            | Record::QueueJoined { .. }
            | Record::QueueOpened { .. }
            | Record::QueueAdmitted { .. }
            | Record::CartHold { .. } => {
                unreachable!("stock and sale records are applied one by one, queue records not at all")
            }
        }
    }

    /// The statements, in an order where each sees what it needs: reservations and items first, then
    /// the changes to them, then the SKU counters (ends find their units in the items table).
    async fn apply(self, tx: &Transaction<'_>, generation: i32) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        // New rows go in with binary COPY: the cheapest way into Postgres for many rows.
        let copy = |sql: &'static str, types: &'static [Type]| async move {
            let sink = tx.copy_in(sql).await?;
            Ok::<_, tokio_postgres::Error>(Box::pin(BinaryCopyInWriter::new(sink, types)))
        };
        let mut w = copy(
            "COPY holdfast_reservations (id, state, created_at, expires_at, user_id, sale, idempotency_key,
                 created_lsn, updated_lsn) FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::INT8,
            ],
        )
        .await?;
        for i in 0..self.new_ids.len() {
            let row: [&(dyn ToSql + Sync); 9] = [
                &self.new_ids[i],
                &"active",
                &self.new_created[i],
                &self.new_expires[i],
                &self.new_user[i],
                &self.new_sale[i],
                &self.new_key[i],
                &self.new_lsn[i],
                &self.new_lsn[i],
            ];
            w.as_mut().write(&row).await?;
        }
        w.as_mut().finish().await?;
        let mut w = copy(
            "COPY holdfast_reservation_items (reservation_id, sku, qty) FROM STDIN BINARY",
            &[Type::TEXT, Type::TEXT, Type::INT4],
        )
        .await?;
        for i in 0..self.item_ids.len() {
            w.as_mut().write(&[&self.item_ids[i], &self.item_skus[i], &self.item_qty[i]]).await?;
        }
        w.as_mut().finish().await?;
        let mut w = copy(
            "COPY holdfast_reservation_events (generation, lsn, seq, reservation_id, kind, at, expires_at) FROM STDIN BINARY",
            &[Type::INT4, Type::INT8, Type::INT2, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
        )
        .await?;
        for i in 0..self.ev_lsn.len() {
            let row: [&(dyn ToSql + Sync); 7] = [
                &generation,
                &self.ev_lsn[i],
                &self.ev_seq[i],
                &self.ev_ids[i],
                &self.ev_kind[i],
                &self.ev_at[i],
                &self.ev_expires[i],
            ];
            w.as_mut().write(&row).await?;
        }
        w.as_mut().finish().await?;
        if !self.updates.is_empty() {
            let (mut ids, mut states, mut ended, mut expires, mut lsns) =
                (vec![], vec![], vec![], vec![], vec![]);
            for (id, (state, end, exp, lsn)) in &self.updates {
                ids.push(id.as_str());
                states.push(*state);
                ended.push(*end);
                expires.push(*exp);
                lsns.push(*lsn);
            }
            let n = tx
                .execute(
                    "UPDATE holdfast_reservations r
                     SET state = COALESCE(t.state, r.state), ended_at = COALESCE(t.ended, r.ended_at),
                         expires_at = COALESCE(t.exp, r.expires_at), updated_lsn = t.lsn
                     FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::int8[])
                         AS t(id, state, ended, exp, lsn)
                     WHERE r.id = t.id AND r.state = 'active'",
                    &[&ids, &states, &ended, &expires, &lsns],
                )
                .await?;
            if n != ids.len() as u64 {
                anyhow::bail!(
                    "{} of {} reservations changed by records up to LSN {} are not active in Postgres: it has drifted \
                     from the log (run holdfast reconcile)",
                    ids.len() as u64 - n,
                    ids.len(),
                    self.last_lsn
                );
            }
        }
        let (skus, deltas): (Vec<String>, Vec<i64>) = self.reserved.into_iter().unzip();
        tx.execute(
            "UPDATE holdfast_skus s
             SET available = s.available + d.da, reserved = s.reserved + d.dr, sold = s.sold + d.ds, updated_lsn = $5
             FROM (SELECT sku, sum(da) AS da, sum(dr) AS dr, sum(ds) AS ds FROM (
                     SELECT r.sku, -r.q AS da, r.q AS dr, 0::int8 AS ds FROM unnest($1::text[], $2::int8[]) AS r(sku, q)
                     UNION ALL
                     SELECT i.sku,
                            CASE WHEN e.kind = 'committed' THEN 0 ELSE i.qty::int8 END,
                            -i.qty::int8,
                            CASE WHEN e.kind = 'committed' THEN i.qty::int8 ELSE 0 END
                     FROM unnest($3::text[], $4::text[]) AS e(id, kind)
                     JOIN holdfast_reservation_items i ON i.reservation_id = e.id
                  ) x GROUP BY sku) d
             WHERE s.sku = d.sku",
            &[&skus, &deltas, &self.end_ids, &self.end_kinds, &self.last_lsn],
        )
        .await?;
        self.orders.apply(tx, generation, self.last_lsn).await?;
        Ok(())
    }
}

/// A stock or sale record, applied on its own (it sets absolute values, or must see the deltas before it).
async fn apply_stock(tx: &Transaction<'_>, generation: i32, lsn: Lsn, record: &Record) -> anyhow::Result<()> {
    let l = signed(lsn);
    match record {
        Record::StockSet { sku, on_hand, .. } => {
            tx.execute(
                "INSERT INTO holdfast_skus (sku, on_hand, available, reserved, sold, updated_lsn)
                 VALUES ($1, $2, $2, 0, 0, $3)
                 ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand,
                     available = EXCLUDED.on_hand - holdfast_skus.reserved - holdfast_skus.sold,
                     updated_lsn = EXCLUDED.updated_lsn",
                &[&sku.as_str(), &signed(*on_hand), &l],
            )
            .await?;
        }
        Record::StockAdjusted { sku, delta, reason, .. } => {
            tx.execute(
                "UPDATE holdfast_skus SET on_hand = on_hand + $2, available = available + $2, updated_lsn = $3 WHERE sku = $1",
                &[&sku.as_str(), delta, &l],
            )
            .await?;
            if let Some(id) = adjustment_id(reason.as_str()) {
                tx.execute(
                    "UPDATE holdfast_stock_adjustments SET applied_lsn = $2, applied_generation = $3, applied_at = now()
                     WHERE id = $1 AND applied_lsn IS NULL",
                    &[&id, &l, &generation],
                )
                .await?;
            }
        }
        Record::SaleSet { sale, per_user_max, .. } | Record::SaleConfigured { sale, per_user_max, .. } => {
            tx.execute(
                "INSERT INTO holdfast_sales (sale, per_user_limit, updated_lsn) VALUES ($1, $2, $3)
                 ON CONFLICT (sale) DO UPDATE SET per_user_limit = EXCLUDED.per_user_limit, updated_lsn = EXCLUDED.updated_lsn",
                &[&sale.as_str(), &(*per_user_max as i32), &l],
            )
            .await?;
        }
        _ => unreachable!("only stock and sale records"),
    }
    Ok(())
}

/// The id of the `holdfast_stock_adjustments` row an adjustment's reason names.
pub fn adjustment_id(reason: &str) -> Option<i64> {
    let rest = reason.strip_prefix(ADJUSTMENT_PREFIX)?;
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

/// Applies `batch` (records `applied + 1 ..`, refused otherwise) in one transaction that also moves the
/// checkpoint from `applied`; a checkpoint that moved meanwhile (another mirror) aborts it. `digest` is
/// the last record's (`mirror::digest`), kept with the checkpoint so that the mirror can tell this
/// history from another; `None` leaves it unknown.
pub async fn apply_batch(
    client: &mut Client,
    applied: Lsn,
    batch: &[(Lsn, Record)],
    digest: Option<u64>,
) -> anyhow::Result<()> {
    let Some((last, _)) = batch.last() else { return Ok(()) };
    // The records must follow the checkpoint: then moving it from `applied` below applies each once.
    if batch[0].0 != applied + 1 {
        anyhow::bail!("a batch from LSN {} cannot follow the checkpoint at LSN {applied}", batch[0].0);
    }
    let tx = client.transaction().await?;
    let generation: i32 =
        tx.query_one("SELECT generation FROM holdfast_mirror WHERE id = 1", &[]).await?.get(0);
    let mut changes = Changes::default();
    for (lsn, record) in batch {
        match record {
            Record::StockSet { .. }
            | Record::StockAdjusted { .. }
            | Record::SaleSet { .. }
            | Record::SaleConfigured { .. } => {
                std::mem::take(&mut changes).apply(&tx, generation).await?;
                apply_stock(&tx, generation, *lsn, record).await?;
            }
            // Waiting rooms are not mirrored: positions matter only while a sale runs, and the log
            // holds them. (Their sale's limit is, through `SaleConfigured`.)
            Record::QueueJoined { .. } | Record::QueueOpened { .. } | Record::QueueAdmitted { .. } => {}
            // A sale's cart hold is not mirrored (carts are not); the holds themselves are
            // reservations, mirrored through the cart steps that make them.
            Record::CartHold { .. } => {}
            _ => changes.add(*lsn, record),
        }
    }
    changes.apply(&tx, generation).await?;
    let moved = tx
        .execute(
            "UPDATE holdfast_mirror SET applied_lsn = $1, applied_digest = $3, applied_at = now()
             WHERE id = 1 AND applied_lsn = $2",
            &[&signed(*last), &signed(applied), &digest.map(|d| d as i64)],
        )
        .await?;
    if moved != 1 {
        anyhow::bail!("the mirror checkpoint moved from LSN {applied} meanwhile: is another holdfast mirroring to this database?");
    }
    tx.commit().await?;
    Ok(())
}

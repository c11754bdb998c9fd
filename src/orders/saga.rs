//! The checkout saga: each order operation decided under the book's lock and the engine's rules.
//!
//! An operation takes the book's lock first, then calls the engine (which takes its own locks), so
//! orders are serialised among themselves and never hold a lock the plain reserve path needs. The
//! engine hands its reservation record to a wrapping sink, which logs it inside the order's record:
//! the order's transition and the reservation's are one record, and neither can happen alone.

use super::book::{Book, Cause, Order, OrderId, OrderLine, OrderRecord, OrderState, OrderStep, Placed};
use crate::engine::{
    Engine, IdempotencyKey, Item, Late, Record, RecordSink, ReservationError, ReserveError, ReserveRequest,
    Reserved, SaleId, SinkRefused, UserId,
};
use crate::limits::{ITEMS_PER_RESERVATION_MAX, QTY_PER_ITEM_MAX};

/// What a checkout service asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    pub user: UserId,
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub sale: Option<SaleId>,
    pub pay_within_ms: u64,
    pub key: IdempotencyKey,
}

/// The most an order may cost, in minor units: every amount stays exact in a JSON number.
pub const AMOUNT_MAX: u64 = (1 << 53) - 1;
/// The most one unit may cost, in minor units: an order of the most lines of the most units at this
/// price stays within `AMOUNT_MAX`, so an order's amount is bounded by its lines' own bounds (which an
/// API description can state) rather than by their sum (which it cannot).
pub const UNIT_PRICE_MAX: u64 = AMOUNT_MAX / (ITEMS_PER_RESERVATION_MAX as u64 * QTY_PER_ITEM_MAX as u64);

impl OrderRequest {
    /// The sum of its lines, if it stays within `AMOUNT_MAX`.
    pub fn amount(&self) -> Option<u64> {
        self.lines
            .iter()
            .try_fold(0u64, |sum, l| sum.checked_add(u64::from(l.qty).checked_mul(l.unit_price)?))
            .filter(|a| *a <= AMOUNT_MAX)
    }

    /// A digest of everything but the key: the same key with another digest is another request.
    pub fn fingerprint(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let field = |h: &mut xxhash_rust::xxh3::Xxh3, bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(&mut h, b"order");
        field(&mut h, self.user.as_str().as_bytes());
        h.update(&(self.lines.len() as u64).to_le_bytes());
        for l in &self.lines {
            field(&mut h, l.sku.as_str().as_bytes());
            h.update(&l.qty.to_le_bytes());
            h.update(&l.unit_price.to_le_bytes());
        }
        field(&mut h, self.currency.as_bytes());
        field(&mut h, self.sale.as_ref().map_or(&[][..], |s| s.as_str().as_bytes()));
        h.update(&self.pay_within_ms.to_le_bytes());
        h.digest128()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// The reservation was refused, as a plain reserve would be.
    Reserve(ReserveError),
    NotFound,
    /// The same key with another request.
    IdempotencyConflict,
    /// Cancel of a paid order.
    Paid,
    /// The order ended (its state) and cannot take this.
    Ended(OrderState),
    /// A payment reference other than the one attached.
    OtherPaymentRef,
    /// The amount overflows `AMOUNT_MAX`.
    AmountTooLarge,
    /// Too many orders are remembered; try again once old ones are forgotten.
    BookFull,
    /// Too many payment events are remembered (the provider retries later).
    EventsFull,
    LogRefused,
}

/// What the payment provider says of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Succeeded,
    Failed,
    /// Processing, or waiting for the customer's action.
    Pending,
    Canceled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment<'a> {
    pub status: PaymentStatus,
    /// The provider's payment object (e.g. a PaymentIntent id).
    pub provider_ref: &'a str,
    pub amount: u64,
    pub currency: &'a str,
}

/// What a payment event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The order moved: its new state.
    Moved(OrderState),
    /// The same event was applied before: nothing happened.
    Duplicate,
    /// The event changes nothing now (a stale or repeated outcome, or another payment object's
    /// failure or progress).
    Ignored,
    /// A success through another payment object than the order's: recorded for a refund.
    Surplus,
}

/// What the reservation record inside a step is allowed to be, given what the operation meant.
#[derive(Debug, Clone)]
enum Intent {
    Pay,
    Cancel(Cause),
    Pending,
    Rebook,
    /// The commit a rebooking owes.
    Owed,
    Mismatch {
        amount: u64,
        currency: String,
    },
}

impl Intent {
    fn step(&self, reservation: &Record) -> OrderStep {
        match (self, reservation) {
            (Intent::Mismatch { amount, currency }, _) => {
                OrderStep::PaymentMismatch { amount: *amount, currency: currency.clone() }
            }
            // A rebooked hold that lapsed before its commit (a crash between the two records and a
            // longer outage): the units went back, the money is owed back.
            (Intent::Owed, Record::Expired { .. }) => OrderStep::RefundDue,
            (Intent::Owed, _) => OrderStep::Paid,
            // Whatever was asked, a hold found past its deadline expires: the order with it.
            (_, Record::Expired { .. }) => OrderStep::Cancelled(Cause::Expired),
            (Intent::Pay, _) => OrderStep::Paid,
            (Intent::Cancel(c), _) => OrderStep::Cancelled(*c),
            (Intent::Pending, _) => OrderStep::Pending,
            (Intent::Rebook, _) => OrderStep::Rebooked,
        }
    }
}

/// Logs the engine's reservation record inside the order's record.
struct OrderSink<'a, S: RecordSink> {
    sink: &'a mut S,
    order: OrderId,
    intent: Intent,
    event: Option<&'a str>,
    made: Option<OrderRecord>,
}

impl<S: RecordSink> RecordSink for OrderSink<'_, S> {
    fn append(&mut self, record: &Record) -> Result<(), SinkRefused> {
        let made = OrderRecord {
            order: self.order,
            step: self.intent.step(record),
            reservation: Some(record.clone()),
            event: self.event.map(str::to_owned),
            at_ms: record.at_ms(),
        };
        self.sink.append(&Record::Order(Box::new(made.clone())))?;
        self.made = Some(made);
        Ok(())
    }
}

impl Engine {
    /// The book, locked, with what aged out by `now_ms` forgotten first. Snapshots leave out the
    /// orders and event ids `Book::forget` would drop by their time (`Engine::export`); acting on one
    /// between its age and the next tick would log a record that a snapshot taken meanwhile cannot
    /// replay (its order is missing), or answer a duplicate the restored server would not.
    fn book_at(&self, now_ms: u64) -> parking_lot::MutexGuard<'_, Book> {
        let mut book = self.orders().lock();
        let c = self.config();
        book.forget(now_ms, c.payment_event_retention_ms, c.order_retention_ms());
        book
    }

    /// The order placed with `key`, as `place_order` at `now_ms` would find it.
    pub fn order_by_key(&self, key: &IdempotencyKey, now_ms: u64) -> Option<Order> {
        self.book_at(now_ms).by_key(key).cloned()
    }

    /// Places an order: reserves its lines (refused as a reserve would be) with its payment window as
    /// the TTL. A repeat of the key with the same request returns that order (`true`: a repeat).
    pub fn place_order(
        &self,
        req: &OrderRequest,
        expected_sale: Option<Option<&SaleId>>,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(Order, bool), OrderError> {
        self.place_order_as(req, req.fingerprint(), expected_sale, &[], now_ms, sink)
    }

    /// `place_order` with the digest a repeat is compared by (a cart's checkout names the cart, not
    /// its lines: see `carts::checkout_fingerprint`), taking the units of the holds `releasing` (a
    /// cart's) into the order's reservation in the same decision (`Engine::rehold`).
    pub(crate) fn place_order_as(
        &self,
        req: &OrderRequest,
        fingerprint: u128,
        expected_sale: Option<Option<&SaleId>>,
        releasing: &[crate::engine::ReservationId],
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(Order, bool), OrderError> {
        let mut book = self.book_at(now_ms);
        if let Some(order) = book.by_key(&req.key) {
            if order.placed.fingerprint != fingerprint {
                return Err(OrderError::IdempotencyConflict);
            }
            return Ok((order.clone(), true));
        }
        let amount = req.amount().ok_or(OrderError::AmountTooLarge)?;
        if book.len() >= self.config().orders_max {
            return Err(OrderError::BookFull);
        }
        let reserve = ReserveRequest {
            items: req.lines.iter().map(|l| Item { sku: l.sku.clone(), qty: l.qty }).collect(),
            ttl_ms: req.pay_within_ms,
            user: Some(req.user.clone()),
            sale: req.sale.clone(),
            idempotency_key: None,
        };
        let placed = Placed {
            user: req.user.clone(),
            lines: req.lines.clone(),
            // Lower-case, as providers write it (and as the log's decoder insists).
            currency: req.currency.to_ascii_lowercase(),
            amount,
            sale: None,
            key: req.key.clone(),
            fingerprint,
        };
        // The order's id is its reservation's, known only under the engine's locks: the sink fills it.
        let mut wrap = PlaceSink { sink, placed: Some(placed), made: None };
        let result = if releasing.is_empty() {
            self.reserve_in(&reserve, expected_sale, now_ms, &mut wrap)
        } else {
            let new = crate::engine::NewHold {
                items: &reserve.items,
                user: &req.user,
                sale: req.sale.as_ref(),
                expires_at_ms: now_ms.saturating_add(req.pay_within_ms),
            };
            self.rehold(releasing, Some(&new), expected_sale, now_ms, &mut wrap).map(|id| Reserved {
                id: id.expect("a rehold with a reservation issues one"),
                expires_at_ms: new.expires_at_ms,
                replayed: false,
            })
        };
        let made = wrap.made.take();
        result.map_err(|e| match e {
            ReserveError::LogRefused => OrderError::LogRefused,
            e => OrderError::Reserve(e),
        })?;
        let made = made.expect("a reserve that succeeded logged its record");
        let id = made.order;
        apply_live(&mut book, &made);
        Ok((book.get(id).expect("just placed").clone(), false))
    }

    /// Attaches the provider's payment reference; the same one again is a repeat.
    pub fn attach_payment(
        &self,
        id: OrderId,
        provider_ref: &str,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Order, OrderError> {
        let mut book = self.book_at(now_ms);
        let order = book.get(id).ok_or(OrderError::NotFound)?;
        match &order.provider_ref {
            Some(r) if r == provider_ref => return Ok(order.clone()),
            Some(_) => return Err(OrderError::OtherPaymentRef),
            None if !order.state.is_open() => return Err(OrderError::Ended(order.state)),
            None => {}
        }
        let step = OrderStep::PaymentAttached { provider_ref: provider_ref.to_owned() };
        log_step(&mut book, sink, id, step, None, now_ms)?;
        Ok(book.get(id).expect("found above").clone())
    }

    /// Releases the units and cancels the order; a repeat is answered with the cancelled order.
    pub fn cancel_order(
        &self,
        id: OrderId,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Order, OrderError> {
        let mut book = self.book_at(now_ms);
        let order = book.get(id).ok_or(OrderError::NotFound)?;
        match order.state {
            OrderState::Cancelled(_) => return Ok(order.clone()),
            OrderState::Paid => return Err(OrderError::Paid),
            s if !s.is_open() => return Err(OrderError::Ended(s)),
            _ => {}
        }
        self.end_hold(&mut book, sink, id, Intent::Cancel(Cause::Cancelled), None, now_ms)?;
        Ok(book.get(id).expect("found above").clone())
    }

    /// Acts on what the provider says of an order's payment: from a webhook (`event` its id,
    /// remembered so that it never has a second effect) or from the status fallback (`None`).
    pub fn payment_outcome(
        &self,
        id: OrderId,
        payment: &Payment<'_>,
        event: Option<&str>,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Effect, OrderError> {
        let mut book = self.book_at(now_ms);
        if event.is_some_and(|e| book.seen_event(e)) {
            return Ok(Effect::Duplicate);
        }
        let order = book.get(id).ok_or(OrderError::NotFound)?;
        let succeeded = payment.status == PaymentStatus::Succeeded;
        if order.provider_ref.as_deref().is_some_and(|r| r != payment.provider_ref) {
            if !succeeded || event.is_none() {
                return Ok(Effect::Ignored);
            }
            if book.events_remembered() >= self.config().payment_events_max {
                return Err(OrderError::EventsFull);
            }
            // Money taken through a payment the order does not own: never dropped silently.
            let step = OrderStep::SurplusPayment {
                provider_ref: payment.provider_ref.to_owned(),
                amount: payment.amount,
                currency: payment.currency.to_ascii_lowercase(),
            };
            log_step(&mut book, sink, id, step, event, now_ms)?;
            return Ok(Effect::Surplus);
        }
        let state = order.state;
        let matches = payment.amount == order.placed.amount
            && payment.currency.eq_ignore_ascii_case(&order.placed.currency);
        let acts = match payment.status {
            PaymentStatus::Succeeded => state.is_open() || matches!(state, OrderState::Cancelled(_)),
            _ => state.is_open(),
        };
        if !acts {
            return Ok(Effect::Ignored);
        }
        if event.is_some() && book.events_remembered() >= self.config().payment_events_max {
            return Err(OrderError::EventsFull);
        }
        // A success names the payment that paid: attached first, so that any other success is
        // told apart from it (a surplus) and not ignored as a repeat.
        if succeeded && book.get(id).is_some_and(|o| o.provider_ref.is_none()) {
            let step = OrderStep::PaymentAttached { provider_ref: payment.provider_ref.to_owned() };
            log_step(&mut book, sink, id, step, None, now_ms)?;
        }
        if payment.status == PaymentStatus::Succeeded && !matches {
            let intent =
                Intent::Mismatch { amount: payment.amount, currency: payment.currency.to_ascii_lowercase() };
            if state.is_open() {
                self.end_hold(&mut book, sink, id, intent, event, now_ms)?;
            } else {
                let Intent::Mismatch { amount, currency } = intent else { unreachable!() };
                log_step(
                    &mut book,
                    sink,
                    id,
                    OrderStep::PaymentMismatch { amount, currency },
                    event,
                    now_ms,
                )?;
            }
            return Ok(Effect::Moved(OrderState::PaymentMismatch));
        }
        match payment.status {
            PaymentStatus::Succeeded => self.settle_paid(&mut book, sink, id, event, now_ms)?,
            PaymentStatus::Failed | PaymentStatus::Canceled => {
                self.end_hold(&mut book, sink, id, Intent::Cancel(Cause::PaymentFailed), event, now_ms)?
            }
            PaymentStatus::Pending => self.extend_pending(&mut book, sink, id, event, now_ms)?,
        }
        Ok(Effect::Moved(book.get(id).expect("found above").state))
    }

    /// The saga's timers: forgets what has aged out (`book_at`), commits owed by rebookings, and
    /// cancels open orders past `pay_by` (at most `max` of each per call). Returns, for each order it
    /// cancelled, how late after its `pay_by` that was (ms).
    pub fn orders_tick(
        &self,
        now_ms: u64,
        max: usize,
        sink: &mut impl RecordSink,
    ) -> Result<Vec<u64>, OrderError> {
        let mut book = self.book_at(now_ms);
        for id in book.owed(max) {
            self.commit_owed(&mut book, sink, id, now_ms)?;
        }
        let mut late = Vec::new();
        for id in book.due(now_ms, max) {
            let pay_by = book.get(id).expect("due orders are known").pay_by_ms;
            self.end_hold(&mut book, sink, id, Intent::Cancel(Cause::Expired), None, now_ms)?;
            late.push(now_ms.saturating_sub(pay_by));
        }
        Ok(late)
    }

    /// Commits an open order's hold; a hold past its deadline expires instead, and the payment is then
    /// a success after cancellation.
    fn settle_paid(
        &self,
        book: &mut Book,
        sink: &mut impl RecordSink,
        id: OrderId,
        event: Option<&str>,
        now_ms: u64,
    ) -> Result<(), OrderError> {
        let order = book.get(id).expect("the caller found it");
        if order.state.is_open() {
            let reservation = order.reservation;
            let mut wrap = OrderSink { sink: &mut *sink, order: id, intent: Intent::Pay, event, made: None };
            let result = self.commit_with(reservation, now_ms, Late::EndNow, &mut wrap);
            let made = wrap.made.take();
            if let Some(made) = &made {
                apply_live(book, made);
            }
            match result {
                Ok(()) if made.is_some() => return Ok(()),
                // Committed already, outside the saga (the durable API refuses that; the engine's
                // own does not): the units are sold, so the order is paid.
                Ok(()) => return log_step(book, sink, id, OrderStep::Paid, event, now_ms),
                Err(ReservationError::LogRefused) => return Err(OrderError::LogRefused),
                // Expired now (logged above) or before (by the engine's tick): cancelled first.
                Err(_) if made.is_none() => {
                    log_step(book, sink, id, OrderStep::Cancelled(Cause::Expired), None, now_ms)?
                }
                Err(_) => {}
            }
        }
        self.rebook(book, sink, id, event, now_ms)
    }

    /// A success after cancellation: reserve the order's lines again and commit them, else owe a
    /// refund. The event is remembered with the rebooking (or the refund), its first effect.
    fn rebook(
        &self,
        book: &mut Book,
        sink: &mut impl RecordSink,
        id: OrderId,
        event: Option<&str>,
        now_ms: u64,
    ) -> Result<(), OrderError> {
        let order = book.get(id).expect("the caller found it");
        let reserve = ReserveRequest {
            items: order.placed.lines.iter().map(|l| Item { sku: l.sku.clone(), qty: l.qty }).collect(),
            // Committed at once; the long TTL only covers a crash before the commit (the tick owes it).
            ttl_ms: self.config().ttl_ms_max,
            user: Some(order.placed.user.clone()),
            sale: None,
            idempotency_key: None,
        };
        let mut wrap = OrderSink { sink: &mut *sink, order: id, intent: Intent::Rebook, event, made: None };
        let result = self.reserve(&reserve, now_ms, &mut wrap);
        if let Some(made) = wrap.made.take() {
            apply_live(book, &made);
        }
        match result {
            Ok(_) => self.commit_owed(book, sink, id, now_ms),
            Err(ReserveError::LogRefused) => Err(OrderError::LogRefused),
            Err(_) => log_step(book, sink, id, OrderStep::RefundDue, event, now_ms),
        }
    }

    fn commit_owed(
        &self,
        book: &mut Book,
        sink: &mut impl RecordSink,
        id: OrderId,
        now_ms: u64,
    ) -> Result<(), OrderError> {
        let reservation = book.get(id).expect("the caller found it").reservation;
        let mut wrap =
            OrderSink { sink: &mut *sink, order: id, intent: Intent::Owed, event: None, made: None };
        let result = self.commit_with(reservation, now_ms, Late::EndNow, &mut wrap);
        if let Some(made) = wrap.made.take() {
            if made.step == OrderStep::RefundDue {
                tracing::error!(order = %id, "a rebooked hold lapsed before its commit: a refund is owed");
            }
            apply_live(book, &made);
            return Ok(());
        }
        match result {
            Err(ReservationError::LogRefused) => Err(OrderError::LogRefused),
            // Committed before (`Paid` then stands for it) or ended without a record of this
            // call's: settle the order either way, so that it never stays owed.
            Ok(()) => log_step(book, sink, id, OrderStep::Paid, None, now_ms),
            Err(_) => log_step(book, sink, id, OrderStep::RefundDue, None, now_ms),
        }
    }

    /// Ends an open order's hold with `intent` (cancel or mismatch). A hold that already ended
    /// (expired by the engine's tick) is logged as the order's step alone.
    fn end_hold(
        &self,
        book: &mut Book,
        sink: &mut impl RecordSink,
        id: OrderId,
        intent: Intent,
        event: Option<&str>,
        now_ms: u64,
    ) -> Result<(), OrderError> {
        let reservation = book.get(id).expect("the caller found it").reservation;
        let mut wrap = OrderSink { sink: &mut *sink, order: id, intent: intent.clone(), event, made: None };
        let result = self.release_with(reservation, now_ms, Late::EndNow, &mut wrap);
        if let Some(made) = wrap.made.take() {
            apply_live(book, &made);
            return Ok(());
        }
        match result {
            Err(ReservationError::LogRefused) => Err(OrderError::LogRefused),
            // Released before (an earlier run), expired or forgotten: the order's step alone.
            _ => {
                let step = match intent {
                    Intent::Mismatch { amount, currency } => OrderStep::PaymentMismatch { amount, currency },
                    Intent::Cancel(c) if result == Err(ReservationError::Expired) => {
                        let _ = c;
                        OrderStep::Cancelled(Cause::Expired)
                    }
                    Intent::Cancel(c) => OrderStep::Cancelled(c),
                    _ => unreachable!("end_hold cancels or mismatches"),
                };
                log_step(book, sink, id, step, event, now_ms)
            }
        }
    }

    /// `payment_pending`: the hold extended by the configured step, within the engine's hold bound.
    fn extend_pending(
        &self,
        book: &mut Book,
        sink: &mut impl RecordSink,
        id: OrderId,
        event: Option<&str>,
        now_ms: u64,
    ) -> Result<(), OrderError> {
        let order = book.get(id).expect("the caller found it");
        let (reservation, state) = (order.reservation, order.state);
        let c = self.config();
        let step_ms = c.pending_extension_ms.clamp(c.ttl_ms_min, c.ttl_ms_max);
        let mut wrap = OrderSink { sink: &mut *sink, order: id, intent: Intent::Pending, event, made: None };
        let result = self.extend_with(reservation, step_ms, now_ms, Late::EndNow, &mut wrap);
        if let Some(made) = wrap.made.take() {
            apply_live(book, &made);
            return Ok(());
        }
        match result {
            Err(ReservationError::LogRefused) => Err(OrderError::LogRefused),
            // At its bound already (or not moved since the last one): the state still moves, the
            // deadline does not, and the event is remembered, so that a redelivery later, when it
            // could move the deadline, has no effect of its own.
            Ok(_) if state == OrderState::AwaitingPayment || event.is_some() => {
                log_step(book, sink, id, OrderStep::Pending, event, now_ms)
            }
            Ok(_) => Ok(()),
            Err(_) => log_step(book, sink, id, OrderStep::Cancelled(Cause::Expired), None, now_ms),
        }
    }
}

/// Places: fills in the order id (the reservation's) when the engine hands its `Reserved` record.
struct PlaceSink<'a, S: RecordSink> {
    sink: &'a mut S,
    placed: Option<Placed>,
    made: Option<OrderRecord>,
}

impl<S: RecordSink> RecordSink for PlaceSink<'_, S> {
    /// A placement that takes over holds: their ends, then the order's record carrying `Reserved`,
    /// handed on together (see `Engine::rehold`).
    fn append_all(&mut self, records: &[Record]) -> Result<(), SinkRefused> {
        let Some((reserved, ends)) = records.split_last() else { return Ok(()) };
        let order = self.placed_record(reserved);
        let mut all = ends.to_vec();
        all.push(Record::Order(Box::new(order.clone())));
        self.sink.append_all(&all)?;
        self.made = Some(order);
        Ok(())
    }

    fn append(&mut self, record: &Record) -> Result<(), SinkRefused> {
        let made = self.placed_record(record);
        self.sink.append(&Record::Order(Box::new(made.clone())))?;
        self.made = Some(made);
        Ok(())
    }
}

impl<S: RecordSink> PlaceSink<'_, S> {
    /// The order's `Placed`, carrying the reservation's `Reserved` record.
    fn placed_record(&self, record: &Record) -> OrderRecord {
        let Record::Reserved(reserved) = record else { unreachable!("a placement reserves last") };
        let mut placed = self.placed.clone().expect("one record per reserve");
        placed.sale = reserved.sale.clone();
        OrderRecord {
            order: OrderId(reserved.id),
            step: OrderStep::Placed(Box::new(placed)),
            reservation: Some(record.clone()),
            event: None,
            at_ms: record.at_ms(),
        }
    }
}

/// Logs a step that touches no reservation, and applies it.
fn log_step(
    book: &mut Book,
    sink: &mut impl RecordSink,
    order: OrderId,
    step: OrderStep,
    event: Option<&str>,
    at_ms: u64,
) -> Result<(), OrderError> {
    let made = OrderRecord { order, step, reservation: None, event: event.map(str::to_owned), at_ms };
    sink.append(&Record::Order(Box::new(made.clone()))).map_err(|_| OrderError::LogRefused)?;
    apply_live(book, &made);
    Ok(())
}

/// Applies a step decided under the book's lock. It was checked against the same book, so it fits;
/// one that does not is a bug, reported without taking the server down (the log holds the truth).
fn apply_live(book: &mut Book, made: &OrderRecord) {
    if let Err(e) = book.apply(made) {
        debug_assert!(false, "a decided order step does not fit: {e}");
        tracing::error!(order = %made.order, error = %e, "a decided order step does not fit the book");
    }
}

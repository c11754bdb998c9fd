//! Prometheus metrics (`GET /metrics`, OpenMetrics text). Counters and histograms are updated where
//! things happen; gauges of state (live reservations, LSNs, snapshot age) are read when scraped.

use crate::durable::Durable;
use crate::reconcile::drift::DriftReport;
use crate::reconcile::mirror::MirrorStatus;
use holdfast_wal::FlushObserver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `unauthenticated`, `forbidden`, or `rate_limited` (waiting-room joins per address).
    pub reason: &'static str,
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SaleLabels {
    pub sale: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// `op` is the mutation (reserve, commit, …); `outcome` is `ok`, `replayed` or the error's `code`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

/// A family counted on every request. The family's own lookup takes its lock and SipHashes the labels;
/// here each label set's metric (a shared handle) is found once in the family and kept in a lock-free
/// map, so later requests only hash with foldhash and touch the metric's own atomics.
pub struct Hot<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    handles: papaya::HashMap<L, M, foldhash::fast::RandomState>,
}

impl<L, M, C> Hot<L, M, C>
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    fn new(family: Family<L, M, C>) -> Self {
        Self { family, handles: papaya::HashMap::builder().hasher(Default::default()).build() }
    }

    /// Runs `update` on the metric of `labels`, created on first use.
    pub fn with(&self, labels: &L, update: impl FnOnce(&M)) {
        let handles = self.handles.pin();
        match handles.get(labels) {
            Some(metric) => update(metric),
            None => update(handles.get_or_insert(labels.clone(), self.family.get_or_create_owned(labels))),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 25 µs .. about 0.8 s.
    Histogram::new(exponential_buckets(25e-6, 2.0, 16))
}

/// Log flushes, told by the log's flusher thread.
pub struct WalMetrics {
    sync_seconds: Histogram,
    batch_records: Histogram,
    batch_bytes: Counter,
}

impl FlushObserver for WalMetrics {
    fn flushed(&self, records: u64, bytes: u64, took: Duration, synced: bool) {
        if synced {
            self.sync_seconds.observe(took.as_secs_f64());
        }
        self.batch_records.observe(records as f64);
        self.batch_bytes.inc_by(bytes);
    }
}

pub struct Metrics {
    registry: Registry,
    /// The process's own figures, under their customary unprefixed names.
    process: Registry,
    pub requests: Hot<RequestLabels, Counter>,
    pub latency: Hot<RouteLabels, Histogram>,
    pub outcomes: Hot<OutcomeLabels, Counter>,
    pub expired: Counter,
    webhooks: Family<WebhookLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    /// Orders cancelled at `pay_by`, and how long after it.
    pub orders_expired: Counter,
    pub order_cancel_lag_seconds: Histogram,
    /// Orders the payment status fallback moved, and questions it got no answer to.
    pub orders_settled_by_status: Counter,
    pub status_checks_failed: Counter,
    open_orders: Gauge,
    /// Carts and their lines, read when scraped; merges and idle expiries counted.
    carts: Gauge,
    cart_items: Gauge,
    cart_held_lines: Gauge,
    pub cart_merges: Counter,
    pub carts_expired: Counter,
    room_waiting: Family<SaleLabels, Gauge>,
    room_admitted: Family<SaleLabels, Counter>,
    room_sold_out: Family<SaleLabels, Counter>,
    room_wait_seconds: Histogram,
    pub connections: Gauge,
    pub connections_refused: Counter,
    /// Idle connections closed to make room for a new one at the connection cap.
    pub connections_evicted: Counter,
    /// By [`Class`](super::Class): requests refused with 503 `overloaded`, and the time from a
    /// request's head being read to its handling (its body, then a free place).
    pub shed: [Counter; 2],
    pub queued: [Histogram; 2],
    /// How late the server's scheduling runs (`http::watch_lag`); the crowd is shed above its bound.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub wal: Arc<WalMetrics>,
    live_reservations: Gauge,
    appended_lsn: Gauge,
    acked_lsn: Gauge,
    snapshot_lsn: Gauge,
    snapshot_age_seconds: Gauge<f64, AtomicU64>,
    /// When the server started (Unix ms): the snapshot age counts from it until the first snapshot.
    started_ms: u64,
    ready: Gauge,
    /// The Postgres mirror's state, when there is one.
    pub mirror: OnceLock<Arc<MirrorStatus>>,
    mirror_gauges: MirrorGauges,
}

/// The mirror's figures, copied from its status when scraped.
#[derive(Default)]
struct MirrorGauges {
    applied_lsn: Gauge,
    lag_records: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    records: Gauge,
    batches: Gauge,
    errors: Gauge,
    connected: Gauge,
    retention_released: Gauge,
    resyncs: Gauge,
    adjustments_applied: Gauge,
    adjustments_refused: Gauge,
    drift_skus: Gauge,
    drift_reservations: Gauge,
    drift_orders: Gauge,
    drift_sales: Gauge,
    drift_history: Gauge,
    drift_events: Gauge,
    drift_adjustments: Gauge,
    drift_checks: Counter,
    diverged: Gauge,
}

impl Metrics {
    /// Counts a request refused for want of a key (`unauthenticated`), of a role (`forbidden`), or
    /// because its address joined too often (`rate_limited`).
    pub fn refused(&self, reason: &'static str, route: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason, route }).inc();
    }

    /// Counts a payment webhook's outcome.
    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks.get_or_create(&WebhookLabels { outcome }).inc();
    }

    /// Counts what an admission tick did in each waiting room.
    pub fn rooms(&self, ticks: &[crate::engine::RoomTick]) {
        for tick in ticks {
            let sale = SaleLabels { sale: tick.sale.as_str().to_owned() };
            self.room_waiting.get_or_create(&sale).set(tick.waiting as i64);
            if tick.admitted > 0 {
                self.room_admitted.get_or_create(&sale).inc_by(u64::from(tick.admitted));
            }
            if tick.sold_out_now {
                self.room_sold_out.get_or_create(&sale).inc();
                tracing::info!(sale = %tick.sale, waiting = tick.waiting, "sold out: telling every waiting shopper");
            }
            for wait in &tick.waits_ms {
                self.room_wait_seconds.observe(*wait as f64 / 1000.0);
            }
        }
    }

    pub fn new(now_ms: u64) -> Self {
        let wal = Arc::new(WalMetrics {
            sync_seconds: latency_histogram(),
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batch_bytes: Counter::default(),
        });
        let mut m = Self {
            registry: Registry::with_prefix("holdfast"),
            process: {
                let mut r = Registry::default();
                r.register_collector(Box::new(super::process::ProcessCollector));
                r
            },
            requests: Hot::new(Family::default()),
            latency: Hot::new(Family::new_with_constructor(latency_histogram as fn() -> Histogram)),
            outcomes: Hot::new(Family::default()),
            expired: Counter::default(),
            webhooks: Family::default(),
            refused: Family::default(),
            orders_expired: Counter::default(),
            // 1 ms .. about 65 s.
            order_cancel_lag_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            orders_settled_by_status: Counter::default(),
            status_checks_failed: Counter::default(),
            open_orders: Gauge::default(),
            carts: Gauge::default(),
            cart_items: Gauge::default(),
            cart_held_lines: Gauge::default(),
            cart_merges: Counter::default(),
            carts_expired: Counter::default(),
            room_waiting: Family::default(),
            room_admitted: Family::default(),
            room_sold_out: Family::default(),
            // 0.1 s .. about 55 min.
            room_wait_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            connections_evicted: Counter::default(),
            shed: Default::default(),
            queued: [latency_histogram(), latency_histogram()],
            lag_seconds: Gauge::default(),
            wal,
            live_reservations: Gauge::default(),
            appended_lsn: Gauge::default(),
            acked_lsn: Gauge::default(),
            snapshot_lsn: Gauge::default(),
            snapshot_age_seconds: Gauge::default(),
            started_ms: now_ms,
            ready: Gauge::default(),
            mirror: OnceLock::new(),
            mirror_gauges: MirrorGauges::default(),
        };
        let r = &mut m.registry;
        r.register("http_requests", "HTTP requests by route and status", m.requests.family.clone());
        r.register(
            "requests_refused",
            "Requests refused by who sent them: no usable key (unauthenticated), a role that may not (forbidden), or an address that joined too often (rate_limited), by route",
            m.refused.clone(),
        );
        r.register("http_request_duration_seconds", "Time to answer, by route", m.latency.family.clone());
        r.register(
            "operations",
            "Mutations by operation and outcome (ok, replayed, or the error code)",
            m.outcomes.family.clone(),
        );
        r.register("reservations_expired", "Reservations expired by the server", m.expired.clone());
        r.register(
            "payment_webhooks",
            "Payment webhooks by outcome (applied, duplicate, stale, refund_due, payment_mismatch, \
             unknown_order, unhandled_type, refused, malformed)",
            m.webhooks.clone(),
        );
        r.register("orders_expired", "Orders cancelled because pay_by passed", m.orders_expired.clone());
        r.register(
            "order_cancel_lag_seconds",
            "Time from an order's pay_by to its cancellation",
            m.order_cancel_lag_seconds.clone(),
        );
        r.register(
            "orders_settled_by_status_check",
            "Orders the payment status fallback moved (the webhook had not come)",
            m.orders_settled_by_status.clone(),
        );
        r.register(
            "payment_status_checks_failed",
            "Payment status questions that got no answer after their retries",
            m.status_checks_failed.clone(),
        );
        r.register("orders_open", "Orders awaiting a payment's outcome", m.open_orders.clone());
        r.register("carts", "Carts held", m.carts.clone());
        r.register("cart_items", "Lines in all carts", m.cart_items.clone());
        r.register(
            "cart_held_lines",
            "Cart lines with a soft hold (one that lapsed counts until its line is edited or removed)",
            m.cart_held_lines.clone(),
        );
        r.register(
            "cart_merges",
            "Guest carts merged into another (repeats not counted)",
            m.cart_merges.clone(),
        );
        r.register("carts_expired", "Carts removed after their idle time", m.carts_expired.clone());
        r.register("waitroom_waiting", "Shoppers waiting in each sale's queue", m.room_waiting.clone());
        r.register("waitroom_admitted", "Shoppers admitted, by sale", m.room_admitted.clone());
        r.register(
            "waitroom_sold_out_announcements",
            "Times a sale turned sold out and its waiting shoppers were told so",
            m.room_sold_out.clone(),
        );
        r.register(
            "waitroom_wait_seconds",
            "Time from joining (or the opening, for who joined before) to admission",
            m.room_wait_seconds.clone(),
        );
        r.register("connections_open", "Open client connections", m.connections.clone());
        r.register(
            "connections_refused",
            "Connections closed at once: connections_max reached and none idle",
            m.connections_refused.clone(),
        );
        r.register(
            "connections_evicted",
            "Idle connections closed to make room for a new one at connections_max",
            m.connections_evicted.clone(),
        );
        let shed: Family<ClassLabels, Counter> = Family::default();
        let queued: Family<ClassLabels, Histogram> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        for class in super::Class::ALL {
            let labels = ClassLabels { class: class.label() };
            m.shed[class as usize] = shed.get_or_create(&labels).clone();
            m.queued[class as usize] = queued.get_or_create(&labels).clone();
        }
        r.register(
            "requests_shed",
            "Requests refused with 503 overloaded, by class: in_flight_max reached; for the crowd \
             (waiting-room joins, and polls of shoppers still waiting) also crowd_in_flight_max reached \
             or the scheduling lag above crowd_shed_lag",
            shed,
        );
        r.register(
            "scheduling_lag_seconds",
            "How late the server runs a ready task now: how long an arrived request waits for a thread",
            m.lag_seconds.clone(),
        );
        r.register(
            "request_queue_seconds",
            "Time from a request's head being read to its handling (its body, then a free place), by class",
            queued,
        );
        r.register("live_reservations", "Active reservations", m.live_reservations.clone());
        r.register(
            "wal_sync_seconds",
            "Time to write and sync one batch of the log",
            m.wal.sync_seconds.clone(),
        );
        r.register("wal_batch_records", "Records per log batch (group commit)", m.wal.batch_records.clone());
        r.register("wal_written_bytes", "Bytes written to the log", m.wal.batch_bytes.clone());
        r.register("wal_appended_lsn", "Highest LSN appended", m.appended_lsn.clone());
        r.register("wal_acked_lsn", "Highest LSN on stable storage", m.acked_lsn.clone());
        r.register("snapshot_lsn", "LSN the newest snapshot covers", m.snapshot_lsn.clone());
        r.register(
            "snapshot_age_seconds",
            "Time since the last snapshot (or the server's start)",
            m.snapshot_age_seconds.clone(),
        );
        r.register("ready", "1 once recovery finished and while the server accepts work", m.ready.clone());
        let g = &m.mirror_gauges;
        r.register("mirror_applied_lsn", "Last LSN applied to Postgres", g.applied_lsn.clone());
        r.register(
            "mirror_lag_records",
            "Records acknowledged but not yet in Postgres",
            g.lag_records.clone(),
        );
        r.register(
            "mirror_lag_seconds",
            "Age of the oldest record not yet in Postgres",
            g.lag_seconds.clone(),
        );
        r.register("mirror_records_applied", "Records applied to Postgres since start", g.records.clone());
        r.register("mirror_batches", "Transactions the mirror committed since start", g.batches.clone());
        r.register(
            "mirror_errors",
            "Mirror sessions interrupted (Postgres unreachable, errors)",
            g.errors.clone(),
        );
        r.register("mirror_connected", "1 while the mirror holds a working connection", g.connected.clone());
        r.register(
            "mirror_retention_released",
            "1 when the log outgrew its budget and stopped waiting for the mirror",
            g.retention_released.clone(),
        );
        r.register("mirror_resyncs", "Times the mirror rewrote Postgres from a snapshot", g.resyncs.clone());
        r.register(
            "stock_adjustments_applied",
            "Adjustments from holdfast_stock_adjustments applied",
            g.adjustments_applied.clone(),
        );
        r.register(
            "stock_adjustments_refused",
            "Adjustments from holdfast_stock_adjustments refused",
            g.adjustments_refused.clone(),
        );
        r.register(
            "drift_skus",
            "SKUs on which Postgres and the engine disagreed at the last check",
            g.drift_skus.clone(),
        );
        r.register(
            "drift_reservations",
            "Reservations on which they disagreed at the last check",
            g.drift_reservations.clone(),
        );
        r.register(
            "drift_orders",
            "Orders on which Postgres and the engine disagreed at the last check",
            g.drift_orders.clone(),
        );
        r.register(
            "drift_sales",
            "Sales whose per-user limit differed at the last check",
            g.drift_sales.clone(),
        );
        r.register(
            "drift_history",
            "1 when Postgres applied another record at its checkpoint than this log holds (another history)",
            g.drift_history.clone(),
        );
        r.register(
            "drift_events",
            "Log records whose history rows in Postgres differed at the last check",
            g.drift_events.clone(),
        );
        r.register(
            "drift_adjustments",
            "holdfast_stock_adjustments rows that disagreed with the log at the last check",
            g.drift_adjustments.clone(),
        );
        r.register("drift_checks", "Drift checks run", g.drift_checks.clone());
        r.register(
            "mirror_diverged",
            "1 while the mirror refuses to follow this log: Postgres holds another or a longer history",
            g.diverged.clone(),
        );
        m
    }

    pub fn record_drift(&self, report: &DriftReport) {
        let g = &self.mirror_gauges;
        g.drift_skus.set(report.skus.len() as i64);
        g.drift_reservations.set(report.reservations.len() as i64);
        g.drift_orders.set(report.orders.len() as i64);
        g.drift_sales.set(report.sales.len() as i64);
        g.drift_history.set(i64::from(report.log.history.is_some()));
        g.drift_events.set(report.log.events_differing as i64);
        g.drift_adjustments.set(report.log.adjustments.len() as i64);
        g.drift_checks.inc();
    }

    /// The text a scrape gets, with the state gauges read now.
    pub fn render(&self, durable: Option<&Durable>, ready: bool, now_ms: u64) -> String {
        let mut snapshot_at_ms = 0;
        if let Some(d) = durable {
            let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
            gauge(&self.live_reservations, d.engine().active_reservations() as u64);
            gauge(&self.open_orders, d.engine().orders().lock().open_count() as u64);
            let (carts, items, held) = {
                let carts = d.engine().carts().lock();
                (carts.len(), carts.items(), carts.held_lines())
            };
            gauge(&self.carts, carts as u64);
            gauge(&self.cart_items, items as u64);
            gauge(&self.cart_held_lines, held as u64);
            gauge(&self.appended_lsn, d.wal().appended_lsn());
            gauge(&self.acked_lsn, d.wal().acked_lsn());
            let (lsn, at_ms) = d.last_snapshot();
            gauge(&self.snapshot_lsn, lsn);
            snapshot_at_ms = at_ms;
        }
        if let Some(status) = self.mirror.get() {
            let g = &self.mirror_gauges;
            let set = |gauge: &Gauge, v: &AtomicU64| {
                gauge.set(i64::try_from(v.load(Ordering::Relaxed)).unwrap_or(i64::MAX))
            };
            set(&g.applied_lsn, &status.applied_lsn);
            set(&g.lag_records, &status.lag_records);
            g.lag_seconds.set(status.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
            set(&g.records, &status.records_applied);
            set(&g.batches, &status.batches);
            set(&g.errors, &status.errors);
            set(&g.resyncs, &status.resyncs);
            set(&g.adjustments_applied, &status.adjustments_applied);
            set(&g.adjustments_refused, &status.adjustments_refused);
            g.connected.set(i64::from(status.connected.load(Ordering::Relaxed)));
            g.retention_released.set(i64::from(status.retention_released.load(Ordering::Relaxed)));
            g.diverged.set(i64::from(status.diverged.load(Ordering::Relaxed)));
        }
        let since = now_ms.saturating_sub(if snapshot_at_ms > 0 { snapshot_at_ms } else { self.started_ms });
        self.snapshot_age_seconds.set(since as f64 / 1000.0);
        self.ready.set(i64::from(ready));
        let mut text = String::with_capacity(16 * 1024);
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        encode_registry(&mut text, &self.registry)
            .and_then(|()| encode_registry(&mut text, &self.process))
            .and_then(|()| encode_eof(&mut text))
            .expect("writing to a String does not fail");
        text
    }
}

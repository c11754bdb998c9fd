//! The HTTP API checkout services call: accept loop, connection limits and timeouts, graceful drain.
//!
//! Owns everything between a socket and one call into [`Durable`]; knows nothing of how the engine or
//! the log work inside. A mutation's response is sent only after the log sync that covers it. Bounds:
//! open connections (`connections_max`: at the cap, the connection idle the longest is closed to make
//! room, and a new one is closed at once only when none is idle), requests in progress
//! (`in_flight_max`, counted once the body has arrived; beyond it `503 overloaded`), header and body
//! bytes, and the time a client may take to send headers, to send its body (with a minimum rate), or
//! to send nothing at all.

pub mod auth;
mod body;
mod carts;
mod conn;
mod dto;
mod error;
pub mod limit;
pub mod metrics;
pub mod openapi;
mod orders;
mod process;
mod routes;
mod sales;

pub use routes::{Route, ROUTES};

use crate::clock::Clock;
use crate::durable::Durable;
use conn::Activity;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use metrics::Metrics;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The server's bounds. Defaults are safe for production; `holdfast serve --help` documents each.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Open connections. At the cap the connection idle the longest is closed to make room for a new
    /// one; when none is idle, the new one is closed as soon as it is accepted.
    pub connections_max: usize,
    /// Requests being handled at once; beyond it requests get `503 overloaded` with `Retry-After`.
    pub in_flight_max: usize,
    /// Of those, the crowd's (waiting-room joins and polls); beyond it the crowd is shed, so that
    /// it never takes the places of shoppers who are buying.
    pub crowd_in_flight_max: usize,
    /// How late the server's own scheduling may run (how long a request that has arrived waits for
    /// a thread) before the crowd is shed: past it, the server is behind, and buyers come first.
    /// Zero: never by lag.
    pub crowd_shed_lag: Duration,
    /// Request body bytes, by `Content-Length` or as chunks arrive (413 beyond it).
    pub body_bytes_max: usize,
    /// Request line and headers, in bytes (431 beyond it), and how many header fields.
    pub header_bytes_max: usize,
    pub headers_max: usize,
    /// Time to receive a request's headers, counted from the connection's start or its first byte.
    pub header_read_timeout: Duration,
    /// Time to receive a request's body once its headers arrived (408 beyond it).
    pub body_read_timeout: Duration,
    /// After a grace second, a body must arrive at least this fast on average (408 otherwise).
    pub body_bytes_per_s_min: u64,
    /// A connection that neither sends nor receives a byte for this long is closed.
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in progress before closing their connections.
    pub drain_timeout: Duration,
    /// How payment webhooks are verified.
    pub webhooks: WebhookConfig,
    /// The API keys, by role (`auth.rs`); none: protected mode, every route open on loopback.
    pub keys: auth::Keys,
    /// Waiting-room joins per client address (`limit.rs`).
    pub join_limit: limit::JoinLimit,
}

/// The secrets payment webhooks are signed with (several during a rotation) and the clock skew
/// allowed between the provider's signature time and ours.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub secrets: crate::orders::webhook::Secrets,
    pub tolerance_s: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self { secrets: Default::default(), tolerance_s: crate::orders::webhook::TOLERANCE_S }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connections_max: 16_384,
            in_flight_max: 8_192,
            crowd_in_flight_max: 512,
            crowd_shed_lag: Duration::from_millis(10),
            body_bytes_max: 64 * 1024,
            header_bytes_max: 16 * 1024,
            headers_max: 64,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            body_bytes_per_s_min: 4096,
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            webhooks: WebhookConfig::default(),
            keys: auth::Keys::default(),
            join_limit: limit::JoinLimit::default(),
        }
    }
}

/// What every request handler shares.
pub struct App {
    pub config: HttpConfig,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// Set once recovery finished; until then `/readyz` says 503 and the API refuses with `unavailable`.
    durable: OnceLock<Arc<Durable>>,
    /// Signs waiting-room tickets and admissions with the data directory's key; set with `durable`.
    signer: OnceLock<crate::waitroom::Signer>,
    pub(crate) joins: limit::JoinLimiter,
    /// `/openapi.json` with this server's limits, made once the engine is ready.
    openapi: OnceLock<bytes::Bytes>,
    in_flight: AtomicUsize,
    crowd_in_flight: AtomicUsize,
    /// How late the scheduler runs now, in µs (see [`watch_lag`]).
    lag_us: AtomicU64,
    /// Set when shutdown begins (signal, or a fatal log error); `/readyz` turns 503 at once.
    stopping: AtomicBool,
}

impl App {
    pub fn new(config: HttpConfig, clock: Arc<dyn Clock>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            joins: limit::JoinLimiter::new(config.join_limit.clone()),
            openapi: OnceLock::new(),
            config,
            clock,
            metrics,
            durable: OnceLock::new(),
            signer: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            crowd_in_flight: AtomicUsize::new(0),
            lag_us: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        })
    }

    /// Marks recovery done: the API starts answering.
    pub fn set_ready(&self, durable: Arc<Durable>, signer: crate::waitroom::Signer) {
        // The signer first: a request that sees the engine ready also finds the signer.
        if self.signer.set(signer).is_err() || self.durable.set(durable).is_err() {
            panic!("the server is made ready once");
        }
    }

    pub fn signer(&self) -> Option<&crate::waitroom::Signer> {
        self.signer.get()
    }

    pub fn durable(&self) -> Option<&Arc<Durable>> {
        self.durable.get()
    }

    /// The API description this server answers with: with its engine's limits once recovered, the
    /// defaults before.
    fn openapi(&self) -> bytes::Bytes {
        match self.durable() {
            Some(d) => self.openapi.get_or_init(|| openapi::for_engine(d.engine().config()).into()).clone(),
            None => bytes::Bytes::from_static(openapi::DOCUMENT.as_bytes()),
        }
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.durable.get().is_some_and(|d| d.wal().poisoned().is_none())
            && !self.stopping.load(Ordering::Relaxed)
    }

    /// Counts a request in, or refuses it when `in_flight_max` are already in progress, or, for the
    /// crowd, `crowd_in_flight_max` of the crowd's.
    fn enter(&self, class: Class) -> Option<InFlight<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let crowd_before = match class {
            Class::Crowd => self.crowd_in_flight.fetch_add(1, Ordering::Relaxed),
            Class::Buyer => 0,
        };
        let guard = InFlight(self, class);
        let room = before < self.config.in_flight_max
            && (class == Class::Buyer || (crowd_before < self.config.crowd_in_flight_max && !self.behind()));
        room.then_some(guard)
    }

    /// How late the server's scheduling runs now: how long a ready request waits for a thread.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    /// Whether the scheduling lag says the server is behind (never, with `crowd_shed_lag` 0: off).
    fn behind(&self) -> bool {
        let bound = self.config.crowd_shed_lag;
        !bound.is_zero() && self.lag() > bound
    }
}

/// The status fallback counts into the server's metrics.
impl crate::orders::fallback::Counter for App {
    fn settled(&self, terminal: bool) {
        // Settled means ended: a `processing` answer that only extended the hold is not counted.
        if terminal {
            self.metrics.orders_settled_by_status.inc();
        }
    }
    fn failed(&self) {
        self.metrics.status_checks_failed.inc();
    }
}

/// What a request is for, which decides who gives way when the server is behind. The crowd —
/// waiting-room joins and polls, a hundred thousand people at once — is bounded apart and shed fast
/// (503 `overloaded` with `Retry-After`: a join loses no place it had, a poll keeps its ticket), so it
/// can never take the places of buyers: reserves, commits, orders and everything a checkout service
/// or an operator calls. The profile this comes from is in ARCHITECTURE.md ("Under a storm").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Buyer = 0,
    Crowd = 1,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::Buyer, Class::Crowd];

    pub fn label(self) -> &'static str {
        match self {
            Class::Buyer => "buyer",
            Class::Crowd => "crowd",
        }
    }
}

/// One request in progress; counted out when dropped.
struct InFlight<'a>(&'a App, Class);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.1 == Class::Crowd {
            self.0.crowd_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A new connection's slot: free at once, or being freed by an idle connection closing for it.
enum Slot {
    Ready(OwnedSemaphorePermit),
    Freeing(Arc<Semaphore>),
}

impl Slot {
    /// The slot, once free; `None` if the evicted connection did not close in time (a request began
    /// on it just as it was picked).
    async fn take(self) -> Option<OwnedSemaphorePermit> {
        match self {
            Slot::Ready(slot) => Some(slot),
            Slot::Freeing(slots) => {
                let freed = tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned()).await;
                freed.ok()?.ok()
            }
        }
    }
}

/// How long a new connection waits for the idle one closed for it to let its slot go (a wake-up and
/// a close: microseconds, unless a request began on it just as it was picked).
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// How often the scheduler's lateness is sampled.
const LAG_SAMPLE: Duration = Duration::from_millis(5);

/// Measures how late the runtime runs a task that is ready: a timer of [`LAG_SAMPLE`] wakes this task,
/// which then waits in the same queues as every request that has arrived; how much later than asked it
/// runs is that wait. The figure rises at once and falls over a few samples, so one quiet sample in a
/// storm does not let the crowd back in. It is the server's one honest view of the queue before a
/// request is parsed, where priority by class cannot reach.
async fn watch_lag(app: Arc<App>) {
    loop {
        let asked = std::time::Instant::now();
        tokio::time::sleep(LAG_SAMPLE).await;
        // The timer's own granularity (1 ms) is not lateness.
        let late = asked.elapsed().saturating_sub(LAG_SAMPLE + Duration::from_millis(1));
        let late = late.as_micros() as u64;
        let before = app.lag_us.load(Ordering::Relaxed);
        let now = if late >= before { late } else { (before * 3 + late) / 4 };
        app.lag_us.store(now, Ordering::Relaxed);
        app.metrics.lag_seconds.set(now as f64 / 1e6);
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets requests in progress finish
/// (up to `drain_timeout`) and returns. Syncing the log is the caller's last step.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    // No timer for hyper: its header timer would cost a boxed sleep and a timer-wheel entry per
    // request; the connection's watchdog (`conn::Activity`) times heads and idleness instead.
    builder
        .max_headers(app.config.headers_max)
        .max_buf_size(app.config.header_bytes_max.max(8192))
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(app.config.connections_max));
    let registry = Arc::new(conn::Registry::default());
    let lag = tokio::spawn(watch_lag(app.clone()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for connections to close rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Slot::Ready(slot),
            // At the cap: an idle connection makes room, its slot handed over as it closes.
            Err(_) if registry.evict_oldest_idle() => {
                app.metrics.connections_evicted.inc();
                Slot::Freeing(slots.clone())
            }
            Err(_) => {
                app.metrics.connections_refused.inc();
                continue; // dropping the stream closes it
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let registered = registry.add(&activity);
        let io = TokioIo::new(conn::Tracked::new(stream, activity.clone()));
        let service = {
            let app = app.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |req| {
                let app = app.clone();
                let busy = activity.busy();
                async move {
                    let response = routes::handle(app, req, peer.ip()).await;
                    drop(busy);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let connection = graceful.watch(builder.serve_connection(io, service));
        let app = app.clone();
        tokio::spawn(async move {
            let Some(slot) = slot.take().await else {
                app.metrics.connections_refused.inc();
                return;
            };
            app.metrics.connections.inc();
            let timeouts =
                conn::Timeouts { head: app.config.header_read_timeout, idle: app.config.idle_timeout };
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = activity.expired(timeouts) => tracing::debug!("closed a silent or idle connection"),
            }
            app.metrics.connections.dec();
            drop((registered, slot));
        });
    }
    drop(listener);
    lag.abort();
    app.set_stopping();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(app.config.drain_timeout) => {
            tracing::warn!(timeout = ?app.config.drain_timeout, "drain timed out; closing the rest");
        }
    }
}

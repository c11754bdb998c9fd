//! `holdfast serve`: recover, then serve HTTP with the expiry and snapshot tickers beside it, and shut
//! down in order: stop accepting, drain requests, stop the tickers, sync the log.
//!
//! The listener answers `/healthz` and `/readyz` while recovery runs; the API answers once it is done.
//! A log failure (a failed sync poisons the log) is fatal: the server stops and exits non-zero, and the
//! next start recovers from what is on disk (fail-stop).

use crate::clock::Clock;
use crate::durable::{Durable, SnapshotPolicy};
use crate::engine::EngineConfig;
use crate::http::{self, metrics::Metrics, App, HttpConfig};
use crate::reconcile::mirror::{Mirror, MirrorOptions, MirrorStatus};
use anyhow::Context as _;
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{Observer, WalOptions};
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The snapshot thread's nice value: below requests, above idle.
const SNAPSHOT_NICE: i32 = 10;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub engine: EngineConfig,
    pub wal: WalOptions,
    pub snapshot: SnapshotPolicy,
    /// How often expired reservations are returned; they return within one tick of `expires_at`.
    pub expiry_tick: Duration,
    /// Mirror the log into this Postgres database (and warm-start from it when the data directory is
    /// empty).
    pub database: Option<DatabaseOptions>,
    /// Ask the payment provider about orders whose webhook has not come (`orders::fallback`).
    pub fallback: Option<crate::orders::fallback::FallbackOptions>,
}

#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    pub url: String,
    pub mirror: MirrorOptions,
    /// How often the server compares Postgres with the engine (drift check).
    pub reconcile_every: Duration,
}

/// Serves on `listener` until `shutdown` completes or the log fails. Returns an error for a failed
/// recovery or a failed log, after the server stopped.
pub async fn run(
    options: ServeOptions,
    clock: Arc<dyn Clock>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new(clock.now_ms());
    let mut wal_options = options.wal.clone();
    wal_options.observer = Some(Observer(metrics.wal.clone()));
    let app = App::new(options.http.clone(), clock.clone(), metrics);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http::serve(app.clone(), listener, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    let opened = tokio::task::spawn_blocking({
        let (dir, engine, database) =
            (options.data_dir.clone(), options.engine.clone(), options.database.clone());
        move || open(dir, engine, wal_options, database.as_ref())
    })
    .await
    .context("recovery panicked")?;
    let (durable, signer, lock) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(e);
        }
    };
    app.set_ready(durable.clone(), signer);
    tracing::info!("ready");

    let fatal = Arc::new(Fatal::default());
    let tickers = Tickers::start(&durable, &app, &options, &fatal);
    let fallback = options.fallback.clone().map(|f| {
        let rx = stop_tx.subscribe();
        let counter: Arc<dyn crate::orders::fallback::Counter> = app.clone();
        tokio::spawn(crate::orders::fallback::run(durable.clone(), clock.clone(), f, counter, rx))
    });
    let postgres = match &options.database {
        Some(db) => Some(Postgres::start(&durable, &app, db)?),
        None => None,
    };
    tokio::select! {
        () = shutdown => tracing::info!("shutting down: draining requests"),
        () = fatal.notified() => tracing::error!("shutting down: the log failed"),
    }
    app.set_stopping();
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(fallback) = fallback {
        let _ = fallback.await;
    }
    tickers.stop();
    if let Some(postgres) = postgres {
        postgres.stop();
    }
    let result = tokio::task::spawn_blocking(move || durable.wal().wait(durable.wal().appended_lsn()))
        .await
        .context("the final sync panicked")?;
    drop(lock);
    if let Some(cause) = fatal.cause() {
        anyhow::bail!("the write-ahead log failed: {cause}");
    }
    result.context("the final sync of the log failed")?;
    tracing::info!("stopped; the log is synced");
    Ok(())
}

/// Locks the data directory (one server per directory), then loads the newest snapshot and replays
/// the log after it.
fn open(
    dir: PathBuf,
    engine: EngineConfig,
    wal: WalOptions,
    database: Option<&DatabaseOptions>,
) -> anyhow::Result<(Arc<Durable>, crate::waitroom::Signer, File)> {
    crate::files::private_dir(&dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let lock = crate::files::lock_data_dir(&dir)?;
    crate::durable::settings::save(&dir, &engine)
        .with_context(|| format!("recording the engine settings in {}", dir.display()))?;
    let started = Instant::now();
    let storage =
        FsStorage::new(dir.join("wal")).with_context(|| format!("opening {}/wal", dir.display()))?;
    if let Some(db) = database {
        if crate::reconcile::warm::is_empty(&storage)? {
            warm_start(db, &storage, &engine)?;
        }
    }
    let (durable, opened) = Durable::open(Arc::new(storage), engine, wal).map_err(|e| {
        anyhow::anyhow!(
            "recovery of {} failed: {e}\n(inspect the log with: holdfast wal verify {})",
            dir.display(),
            dir.display()
        )
    })?;
    let d = &durable;
    if let Some(torn) = &opened.recovery.torn {
        tracing::warn!(?torn, "cut a torn record at the log's tail (a crash during a write)");
    }
    for (name, why) in &opened.skipped_snapshots {
        tracing::warn!(snapshot = %name, why = %why, "skipped a damaged snapshot; used an older one");
    }
    tracing::info!(
        data_dir = %dir.display(),
        snapshot_lsn = opened.snapshot.as_ref().map_or(0, |s| s.lsn),
        replayed = opened.replayed,
        next_lsn = opened.recovery.next_lsn,
        active_reservations = d.engine().active_reservations(),
        millis = started.elapsed().as_millis() as u64,
        "recovered"
    );
    let signer = crate::waitroom::Signer::load_or_create(&dir)
        .with_context(|| format!("the waiting room's key in {}", dir.display()))?;
    Ok((Arc::new(durable), signer, lock))
}

/// An empty data directory and a database: load the database's state first. Waits (retrying) for
/// Postgres, since starting empty would sell stock the database says is gone.
fn warm_start(db: &DatabaseOptions, storage: &FsStorage, engine: &EngineConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pool = crate::reconcile::pool(&db.url)?;
    let mut wait = Duration::from_millis(200);
    loop {
        let attempt = rt.block_on(async {
            let mut client = pool.get().await?;
            crate::reconcile::migrate(&mut client).await?;
            crate::reconcile::warm::warm_start(&mut client, storage, engine).await
        });
        match attempt {
            Ok(warmed) => {
                tracing::info!(
                    skus = warmed.skus,
                    active_reservations = warmed.active_reservations,
                    "warm-started from Postgres (the data directory was empty)"
                );
                return Ok(());
            }
            Err(e) if e.downcast_ref::<deadpool_postgres::PoolError>().is_some() => {
                tracing::warn!(error = %e, retry_in = ?wait, "warm-start: Postgres unreachable; not ready until it is");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.context("warm-start from Postgres")),
        }
    }
}

/// The mirror and the periodic drift check.
struct Postgres {
    mirror: Mirror,
    drift: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Postgres {
    fn start(durable: &Arc<Durable>, app: &Arc<App>, db: &DatabaseOptions) -> anyhow::Result<Self> {
        let pool = crate::reconcile::pool(&db.url)?;
        let status = Arc::new(MirrorStatus::default());
        let _ = app.metrics.mirror.set(status.clone());
        let mirror = Mirror::start(durable.clone(), pool.clone(), db.mirror.clone(), status)?;
        let stop = Arc::new(AtomicBool::new(false));
        let drift = {
            let (d, app, stop, every) = (durable.clone(), app.clone(), stop.clone(), db.reconcile_every);
            std::thread::Builder::new()
                .name("drift".into())
                .spawn(move || drift_checks(&d, &app, &pool, every, &stop))?
        };
        Ok(Self { mirror, drift, stop })
    }

    /// Stops both threads; neither may hold up shutdown on a query Postgres does not answer.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.mirror.stop();
        let until = Instant::now() + Duration::from_secs(3);
        while !self.drift.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.drift.is_finished() {
            let _ = self.drift.join();
        }
    }
}

fn drift_checks(d: &Durable, app: &App, pool: &deadpool_postgres::Pool, every: Duration, stop: &AtomicBool) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + every;
        let storage = d.wal().storage().clone();
        let checked = rt.block_on(async {
            let mut client = pool.get().await?;
            crate::reconcile::drift::check(&mut client, &*storage, d.config()).await
        });
        match checked {
            Ok(report) => {
                crate::reconcile::drift::log_report(&report);
                app.metrics.record_drift(&report);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "drift check could not run"),
        }
    }
}

/// Ends the orders past `pay_by` (as many passes as it takes) and counts how late each was.
fn expire_orders(d: &Durable, app: &App) {
    loop {
        match d.orders_tick(app.clock.now_ms()) {
            Ok(logged) => {
                for late_ms in &logged.value {
                    app.metrics.orders_expired.inc();
                    app.metrics.order_cancel_lag_seconds.observe(*late_ms as f64 / 1000.0);
                }
                if logged.value.len() < crate::durable::ORDERS_PER_TICK {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "order expiry could not be logged; retrying next tick");
                return;
            }
        }
    }
}

/// Removes carts idle past `--cart-idle` (as many passes as it takes).
fn expire_carts(d: &Durable, app: &App) {
    loop {
        match d.carts_tick(app.clock.now_ms()) {
            Ok(logged) => {
                app.metrics.carts_expired.inc_by(logged.value as u64);
                if logged.value < crate::durable::CARTS_PER_TICK {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = ?e, "cart expiry could not be logged; retrying next tick");
                return;
            }
        }
    }
}

/// A fatal error seen by a ticker, and the wake-up of the task waiting for one.
#[derive(Default)]
struct Fatal {
    cause: parking_lot::Mutex<Option<String>>,
    notify: Notify,
}

impl Fatal {
    fn raise(&self, cause: String) {
        self.cause.lock().get_or_insert(cause);
        self.notify.notify_one();
    }
    fn cause(&self) -> Option<String> {
        self.cause.lock().clone()
    }
    async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// The expiry and snapshot threads. They run on threads of their own: expiring a large batch or
/// writing a snapshot must not take a request worker.
struct Tickers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Tickers {
    fn start(durable: &Arc<Durable>, app: &Arc<App>, options: &ServeOptions, fatal: &Arc<Fatal>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let expiry = {
            let (d, app, stop, fatal, tick) =
                (durable.clone(), app.clone(), stop.clone(), fatal.clone(), options.expiry_tick);
            std::thread::Builder::new().name("expiry".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Orders first: an order's hold is expired as the order's step, with the order.
                    expire_orders(&d, &app);
                    expire_carts(&d, &app);
                    match d.expire_due(app.clock.now_ms()) {
                        Ok(expired) => {
                            app.metrics.expired.inc_by(expired.value.len() as u64);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "expiry could not be logged; retrying next tick")
                        }
                    }
                    // Admission after expiry: units that just came back admit the next in line.
                    match d.admit_due(app.clock.now_ms()) {
                        Ok(ticks) => app.metrics.rooms(&ticks.value),
                        Err(e) => {
                            tracing::error!(error = %e, "admission could not be logged; retrying next tick")
                        }
                    }
                    if let Some(cause) = d.wal().poisoned() {
                        fatal.raise(cause);
                        return;
                    }
                    std::thread::sleep(tick);
                }
            })
        };
        let snapshots = {
            let (d, app, stop, policy) =
                (durable.clone(), app.clone(), stop.clone(), options.snapshot.clone());
            std::thread::Builder::new().name("snapshot".into()).spawn(move || {
                // A snapshot replays up to a million records: background work that must not take a
                // core from requests waiting on it. On Linux a nice value belongs to the thread.
                if let Err(e) = rustix::process::setpriority_process(None, SNAPSHOT_NICE) {
                    tracing::debug!(error = %e, "could not lower the snapshot thread's priority");
                }
                while !stop.load(Ordering::Relaxed) {
                    let now_ms = app.clock.now_ms();
                    match d.snapshot_if_due(now_ms, &policy) {
                        Ok(Some(file)) => {
                            tracing::info!(snapshot = %file.name, lsn = file.lsn, "snapshot written");
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "snapshot failed; retrying later"),
                    }
                    // Short sleeps, so that stopping does not wait a whole period.
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        };
        let threads = [expiry, snapshots].into_iter().map(|t| t.expect("spawning a ticker thread")).collect();
        Self { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

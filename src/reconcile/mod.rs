//! Postgres: the schema's migrations, the mirror of the log, drift checks, warm-start, and restocks
//! written by other systems. The only SQL in `src/`.
//!
//! Postgres is never on the path of a request: the mirror follows the log on a thread of its own and
//! keeps its checkpoint (`holdfast_mirror.applied_lsn`) in the transaction that applies the records, so
//! a crash of either side neither skips nor repeats one. See `ops/runbooks/postgres.md`.

mod batch;
pub mod drift;
mod drift_log;
mod history;
pub mod mirror;
mod resync;
pub mod warm;

pub use batch::apply_batch;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;

/// The schema, in order; each applied once and recorded in `holdfast_schema_migrations`.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "mirror", include_str!("../../ops/migrations/0001_mirror.sql")),
    (2, "adjustment_taken", include_str!("../../ops/migrations/0002_adjustment_taken.sql")),
    (3, "orders", include_str!("../../ops/migrations/0003_orders.sql")),
    (4, "history", include_str!("../../ops/migrations/0004_history.sql")),
    (5, "cart_holds", include_str!("../../ops/migrations/0005_cart_holds.sql")),
];

/// A small pool: the mirror holds one connection, the drift check and restock poller borrow another.
pub fn pool(url: &str) -> anyhow::Result<Pool> {
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|e| anyhow::anyhow!("database URL: {e}"))?;
    config.connect_timeout(Duration::from_secs(3));
    // A query stuck behind a lock fails instead of stalling the mirror (and shutdown) indefinitely;
    // the URL's own options are kept.
    let bounded = "-c statement_timeout=60000 -c lock_timeout=10000";
    let options = match config.get_options() {
        Some(own) => format!("{own} {bounded}"),
        None => bounded.to_owned(),
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("holdfast");
    }
    let manager =
        Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(4)
        .wait_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

/// Applies the migrations the database lacks, in order, each in its own transaction under an advisory
/// lock (two servers starting together do not both apply one). Returns the versions applied.
pub async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<Vec<i32>> {
    let mut applied_now = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(727100001)", &[]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS holdfast_schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let newest: Option<i32> =
            tx.query_one("SELECT max(version) FROM holdfast_schema_migrations", &[]).await?.get(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if newest.is_some_and(|n| n > known) {
            anyhow::bail!(
                "the database schema is at version {newest:?}, newer than this holdfast knows ({known})"
            );
        }
        let done =
            tx.query_opt("SELECT 1 FROM holdfast_schema_migrations WHERE version = $1", &[version]).await?;
        if done.is_none() {
            tx.batch_execute(sql).await.map_err(|e| anyhow::anyhow!("migration {version} ({name}): {e}"))?;
            tx.execute(
                "INSERT INTO holdfast_schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            applied_now.push(*version);
        }
        tx.commit().await?;
    }
    Ok(applied_now)
}

/// `holdfast db migrate --database-url URL`.
pub fn migrate_command(url: &str) -> anyhow::Result<Vec<i32>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let pool = pool(url)?;
        let mut client = pool.get().await?;
        migrate(&mut client).await
    })
}

/// `holdfast db new-generation --database-url URL`: Postgres follows whichever data directory mirrors
/// to it next, from its first record or its newest snapshot. The current-state tables are emptied (the
/// old history's ids and counters would collide with the new one's); the history rows stay, under the
/// old generation. For the operator who decided, after a restore, that the data directory is right.
/// Returns the new generation, the LSN the old one had reached, and how many restock rows earlier
/// generations took.
pub fn new_generation_command(url: &str) -> anyhow::Result<(i32, i64, i64)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let pool = pool(url)?;
        let mut client = pool.get().await?;
        migrate(&mut client).await?;
        let tx = client.transaction().await?;
        let old: i64 =
            tx.query_one("SELECT applied_lsn FROM holdfast_mirror WHERE id = 1 FOR UPDATE", &[]).await?.get(0);
        let generation: i32 = tx
            .query_one(
                "UPDATE holdfast_mirror SET generation = generation + 1, applied_lsn = 0, applied_digest = NULL,
                     applied_at = now()
                 WHERE id = 1 RETURNING generation",
                &[],
            )
            .await?
            .get(0);
        tx.batch_execute(
            "DELETE FROM holdfast_reservation_items; DELETE FROM holdfast_reservations; DELETE FROM holdfast_skus;
             DELETE FROM holdfast_sales; DELETE FROM holdfast_orders;",
        )
        .await?;
        let earlier: i64 = tx
            .query_one(
                "SELECT count(*) FROM holdfast_stock_adjustments WHERE applied_lsn IS NOT NULL OR taken_lsn IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok((generation, old, earlier))
    })
}

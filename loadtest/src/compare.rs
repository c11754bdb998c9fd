//! `holdfast-drill compare`: the same workloads, with the same load generator, connection count and
//! duration, against holdfast and the designs it replaces: Redis with the classic Lua reserve (without
//! persistence, and with `appendfsync always`), the two-layer design (the Lua reserve, then the
//! reservation row into Postgres, acknowledged after both), and Postgres alone (a conditional UPDATE of
//! one hot row). Closed loop: each connection sends its next request when the last is answered.

use crate::cpu;
use crate::servers::{self, Server};
use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Seconds each system runs each workload (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections, the same for every system.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Only these systems (holdfast, redis, redis-aof, two-layer, postgres).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Only these workloads (hot, spread, reserve-commit, sold-out).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Where the results go: DIR/compare.json, DIR/compare.md and DIR/compare.html.
    #[arg(long, default_value = "compare-report")]
    out: std::path::PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Holdfast,
    Redis,
    RedisAof,
    TwoLayer,
    Postgres,
}

const SYSTEMS: [(System, &str, &str); 5] = [
    (
        System::Holdfast,
        "holdfast",
        "holdfast over HTTP, durable (fsync before every acknowledgement, group commit)",
    ),
    (
        System::Redis,
        "redis",
        "Redis, atomic Lua reserve (idempotency key checked, GET, compare, DECRBY, the hold recorded with its user and TTL, the key remembered), no persistence",
    ),
    (System::RedisAof, "redis-aof", "the same, appendonly yes, appendfsync always"),
    (
        System::TwoLayer,
        "two-layer",
        "the Lua reserve, then INSERT … ON CONFLICT DO NOTHING into Postgres (synchronous commit)",
    ),
    (
        System::Postgres,
        "postgres",
        "Postgres alone: UPDATE … WHERE available >= qty on the row, synchronous commit, prepared once per connection",
    ),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Hot,
    Spread,
    ReserveCommit,
    SoldOut,
}

const WORKLOADS: [(Workload, &str, &str); 4] = [
    (Workload::Hot, "hot", "reserve 1 unit of one hot SKU"),
    (Workload::Spread, "spread", "reserve 1 unit of one of 10,000 SKUs"),
    (
        Workload::ReserveCommit,
        "reserve-commit",
        "reserve 1 unit of the hot SKU, then commit it (one op = both)",
    ),
    (
        Workload::SoldOut,
        "sold-out",
        "1,000 units and far more than ten times the demand: almost every answer is a refusal",
    ),
];

/// Runs started so far, for ids unique across runs.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

const SPREAD_SKUS: u64 = 10_000;
const PLENTY: u64 = 1 << 39;
const SCARCE: u64 = 1_000;

/// How long every system's holds last: longer than any run, so that no system spends a run expiring
/// holds (holdfast logs each expiry; Redis would only drop the key) and refusals stay refusals.
const HOLD_TTL_MS: u64 = 600_000;
/// How long an idempotency key is remembered: holdfast's default window.
const KEY_TTL_MS: u64 = 86_400_000;

/// The seed designs' reserve: what holdfast does per reserve, in one atomic script. KEYS: the SKU's
/// available and reserved counters, the hold, the idempotency key. ARGV: qty, the hold's TTL, the
/// user, the key's TTL. A key seen before answers its first outcome (2); otherwise 1 reserved, 0 not.
const RESERVE_LUA: &str = "if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end \
    local a = tonumber(redis.call('GET', KEYS[1]) or '0') \
    if a < tonumber(ARGV[1]) then return 0 end \
    redis.call('DECRBY', KEYS[1], ARGV[1]) redis.call('INCRBY', KEYS[2], ARGV[1]) \
    redis.call('HSET', KEYS[3], 'sku', KEYS[1], 'qty', ARGV[1], 'user', ARGV[3], 'state', 'active') \
    redis.call('PEXPIRE', KEYS[3], ARGV[2]) \
    redis.call('SET', KEYS[4], KEYS[3], 'PX', ARGV[4]) return 1";
/// Commit: the counters moved and the hold marked. KEYS: reserved, sold, the hold. ARGV: qty.
const COMMIT_LUA: &str = "redis.call('DECRBY', KEYS[1], ARGV[1]) redis.call('INCRBY', KEYS[2], ARGV[1]) \
    redis.call('HSET', KEYS[3], 'state', 'committed') return 1";

// Made once: a script's SHA-1, which EVALSHA sends, is computed when it is made.
static RESERVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESERVE_LUA));
static COMMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COMMIT_LUA));

fn sku(workload: Workload, n: u64) -> String {
    match workload {
        Workload::Spread => format!("spread-{}", n % SPREAD_SKUS),
        Workload::SoldOut => "scarce".into(),
        Workload::Hot | Workload::ReserveCommit => "hot".into(),
    }
}

/// Where each system listens.
struct Servers {
    holdfast: Option<Server>,
    redis: Option<Server>,
    redis_aof: Option<Server>,
    postgres: Option<Server>,
}

impl Servers {
    /// The processes that serve `system`.
    fn pids(&self, system: System) -> Vec<u32> {
        let servers = match system {
            System::Holdfast => vec![&self.holdfast],
            System::Redis => vec![&self.redis],
            System::RedisAof => vec![&self.redis_aof],
            System::TwoLayer => vec![&self.redis, &self.postgres],
            System::Postgres => vec![&self.postgres],
        };
        servers.into_iter().filter_map(|s| s.as_ref()?.pid()).collect()
    }
}

fn pg_url(addr: SocketAddr) -> String {
    format!("host={} port={} user=postgres dbname=postgres", addr.ip(), addr.port())
}

/// One connection of one system, ready to send.
enum Conn {
    Http(HttpConn),
    Redis(redis::aio::MultiplexedConnection),
    TwoLayer(redis::aio::MultiplexedConnection, Pg),
    Postgres(Pg),
}

/// A Postgres connection and its statements, prepared once (on first use: the tables are made after
/// the first connection opens), as a production client would, not parsed and planned per call.
struct Pg {
    client: tokio_postgres::Client,
    statements: Option<[tokio_postgres::Statement; 2]>,
}

impl Pg {
    /// The reserve and commit statements of `system`, prepared on first use.
    async fn statements(&mut self, system: System) -> anyhow::Result<[tokio_postgres::Statement; 2]> {
        if self.statements.is_none() {
            let (reserve, commit) = match system {
                System::TwoLayer => (
                    "INSERT INTO reservations (id, sku, qty, state) VALUES ($1, $2, 1, 'active') ON CONFLICT DO NOTHING",
                    "UPDATE reservations SET state = 'committed' WHERE id = $1",
                ),
                _ => (
                    "UPDATE stock SET available = available - 1, reserved = reserved + 1 WHERE sku = $1 AND available >= 1",
                    "UPDATE stock SET reserved = reserved - 1, sold = sold + 1 WHERE sku = $1",
                ),
            };
            self.statements = Some([self.client.prepare(reserve).await?, self.client.prepare(commit).await?]);
        }
        Ok(self.statements.clone().expect("prepared above"))
    }
}

/// An HTTP/1.1 connection driven by the task that sends on it. hyper's usual pattern spawns the
/// connection as a task of its own, which costs the load generator two task wake-ups per request (to
/// the connection and back) that a Redis or Postgres exchange here does not pay in the same way.
pub(crate) struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
    connection: Pin<Box<http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>>>,
}

impl HttpConn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(HttpConn { sender, connection: Box::pin(connection) })
    }

    /// One request and its whole response: the status and the `Location` header (empty if none).
    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: String,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let headers: &[(&str, &str)] = match &idempotency_key {
            Some(key) => &[("idempotency-key", key)],
            None => &[],
        };
        let (status, location, _) = self.request(method, path, body, headers).await?;
        Ok((status, location))
    }

    /// One request with `headers`, and its whole response: the status, the `Location` header (empty
    /// if none) and the body.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String, Bytes)> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "holdfast")
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let method = hyper::Method::from_bytes(method.as_bytes())?;
        if let Some(key) = crate::client::authorization(&method, path) {
            request = request.header("authorization", key);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let HttpConn { sender, connection } = self;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let location = response.headers().get("location").and_then(|v| v.to_str().ok());
            let location = location.unwrap_or_default().to_owned();
            let body = response.into_body().collect().await?.to_bytes();
            crate::client::stop_if_refused(status, &body, method.as_str(), path);
            anyhow::Ok((status, location, body))
        };
        tokio::select! {
            answered = exchange => answered,
            closed = connection.as_mut() => match closed {
                Ok(()) => anyhow::bail!("the server closed the connection"),
                Err(e) => Err(e.into()),
            },
        }
    }
}

async fn redis_conn(addr: SocketAddr) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn pg_conn(addr: SocketAddr) -> anyhow::Result<Pg> {
    let (client, connection) = tokio_postgres::connect(&pg_url(addr), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(Pg { client, statements: None })
}

impl Conn {
    async fn open(system: System, s: &Servers) -> anyhow::Result<Conn> {
        let addr = |server: &Option<Server>| server.as_ref().map(|s| s.addr).context("server not started");
        Ok(match system {
            System::Holdfast => Conn::Http(HttpConn::open(addr(&s.holdfast)?).await?),
            System::Redis => Conn::Redis(redis_conn(addr(&s.redis)?).await?),
            System::RedisAof => Conn::Redis(redis_conn(addr(&s.redis_aof)?).await?),
            System::TwoLayer => {
                Conn::TwoLayer(redis_conn(addr(&s.redis)?).await?, pg_conn(addr(&s.postgres)?).await?)
            }
            System::Postgres => Conn::Postgres(pg_conn(addr(&s.postgres)?).await?),
        })
    }

    /// One operation; `id` is unique in the run. Ok(true): reserved (and committed); Ok(false): refused.
    async fn op(&mut self, workload: Workload, id: u64) -> anyhow::Result<bool> {
        let sku = sku(workload, id);
        let commit = workload == Workload::ReserveCommit;
        match self {
            Conn::Http(c) => {
                let body = format!(
                    r#"{{"items":[{{"sku":"{sku}","qty":1}}],"ttl_ms":{HOLD_TTL_MS},"user_id":"u{}"}}"#,
                    id % 1000
                );
                let key = format!("k{id}");
                let (status, location) = c.exchange("POST", "/v1/reservations", body, Some(&key)).await?;
                match status {
                    201 if commit => {
                        let (status, _) =
                            c.exchange("POST", &format!("{location}/commit"), String::new(), None).await?;
                        anyhow::ensure!(status == 200, "commit answered {status}");
                        Ok(true)
                    }
                    201 => Ok(true),
                    409 => Ok(false),
                    other => anyhow::bail!("reserve answered {other}"),
                }
            }
            Conn::Redis(r) => {
                let reserved = redis_reserve(r, &sku, id).await?;
                if reserved && commit {
                    redis_commit(r, &sku, id).await?;
                }
                Ok(reserved)
            }
            Conn::TwoLayer(r, pg) => {
                if !redis_reserve(r, &sku, id).await? {
                    return Ok(false);
                }
                let [insert, committed] = pg.statements(System::TwoLayer).await?;
                pg.client.execute(&insert, &[&(id as i64), &sku]).await?;
                if commit {
                    redis_commit(r, &sku, id).await?;
                    pg.client.execute(&committed, &[&(id as i64)]).await?;
                }
                Ok(true)
            }
            Conn::Postgres(pg) => {
                let [reserve, committed] = pg.statements(System::Postgres).await?;
                let reserved = pg.client.execute(&reserve, &[&sku]).await? == 1;
                if reserved && commit {
                    pg.client.execute(&committed, &[&sku]).await?;
                }
                Ok(reserved)
            }
        }
    }
}

/// The Lua reserve of hold `id` (with idempotency key `k<id>`, as holdfast is sent).
async fn redis_reserve(
    r: &mut redis::aio::MultiplexedConnection,
    sku: &str,
    id: u64,
) -> anyhow::Result<bool> {
    let reserved: i64 = RESERVE_SCRIPT
        .key(sku)
        .key(format!("{sku}:reserved"))
        .key(format!("hold:{id}"))
        .key(format!("key:k{id}"))
        .arg(1)
        .arg(HOLD_TTL_MS)
        .arg(format!("u{}", id % 1000))
        .arg(KEY_TTL_MS)
        .invoke_async(r)
        .await?;
    Ok(reserved == 1)
}

async fn redis_commit(r: &mut redis::aio::MultiplexedConnection, sku: &str, id: u64) -> anyhow::Result<()> {
    COMMIT_SCRIPT
        .key(format!("{sku}:reserved"))
        .key(format!("{sku}:sold"))
        .key(format!("hold:{id}"))
        .arg(1)
        .invoke_async::<i64>(r)
        .await?;
    Ok(())
}

/// Puts the workload's stock into the system: plenty of the hot and the spread SKUs, 1,000 scarce.
async fn prepare(system: System, workload: Workload, s: &Servers) -> anyhow::Result<()> {
    let stock: Vec<(String, u64)> = match workload {
        Workload::Hot | Workload::ReserveCommit => vec![("hot".into(), PLENTY)],
        Workload::Spread => (0..SPREAD_SKUS).map(|n| (format!("spread-{n}"), PLENTY)).collect(),
        Workload::SoldOut => vec![("scarce".into(), SCARCE)],
    };
    let mut conn = Conn::open(system, s).await?;
    match &mut conn {
        Conn::Http(c) => {
            for (sku, n) in &stock {
                let (status, _) = c
                    .exchange("PUT", &format!("/v1/skus/{sku}"), format!(r#"{{"on_hand":{n}}}"#), None)
                    .await?;
                anyhow::ensure!(status == 200, "PUT /v1/skus/{sku} answered {status}");
            }
        }
        Conn::Redis(r) | Conn::TwoLayer(r, _) => {
            for chunk in stock.chunks(1000) {
                let mut pipe = redis::pipe();
                for (sku, n) in chunk {
                    pipe.set(sku, *n)
                        .ignore()
                        .set(format!("{sku}:reserved"), 0)
                        .ignore()
                        .set(format!("{sku}:sold"), 0)
                        .ignore();
                }
                pipe.query_async::<()>(r).await?;
            }
            if let Conn::TwoLayer(_, pg) = &conn {
                pg.client.batch_execute(
                    "DROP TABLE IF EXISTS reservations;
                     CREATE TABLE reservations (id bigint PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, state text NOT NULL)",
                )
                .await?;
            }
        }
        Conn::Postgres(pg) => {
            pg.client
                .batch_execute(
                    "DROP TABLE IF EXISTS stock;
                 CREATE TABLE stock (sku text PRIMARY KEY, available bigint NOT NULL CHECK (available >= 0),
                                     reserved bigint NOT NULL, sold bigint NOT NULL)",
                )
                .await?;
            let skus: Vec<&str> = stock.iter().map(|(s, _)| s.as_str()).collect();
            let counts: Vec<i64> = stock.iter().map(|(_, n)| *n as i64).collect();
            pg.client
                .execute(
                    "INSERT INTO stock SELECT s, n, 0, 0 FROM unnest($1::text[], $2::bigint[]) AS t(s, n)",
                    &[&skus, &counts],
                )
                .await?;
        }
    }
    Ok(())
}

/// What a run's workers counted: latencies, operations, reservations, errors and the first error.
struct Tally {
    latency: Histogram<u64>,
    ops: u64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        let latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Tally { latency, ops: 0, ok: 0, errors: 0, first_error: None }
    }

    fn add(&mut self, other: Tally) {
        self.latency.add(&other.latency).expect("same bounds");
        (self.ops, self.ok, self.errors) =
            (self.ops + other.ops, self.ok + other.ok, self.errors + other.errors);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// What one run measured.
struct Figures {
    counted: Tally,
    seconds: f64,
    /// CPU seconds over the measured window: the system's server processes, this load generator.
    server_cpu: f64,
    client_cpu: f64,
    /// The share of the machine's CPU time the hypervisor took over the measured window.
    stolen: f64,
}

impl Figures {
    fn per_s(&self) -> f64 {
        self.counted.ops as f64 / self.seconds
    }

    /// Microseconds of CPU per operation.
    fn per_op(&self, cpu_seconds: f64) -> f64 {
        (cpu_seconds * 1e6 / self.counted.ops.max(1) as f64 * 10.0).round() / 10.0
    }

    fn json(&self) -> Value {
        let c = &self.counted;
        json!({
            "ops_per_s": self.per_s().round() as u64, "reserved": c.ok, "errors": c.errors,
            "p50_ms": ms(&c.latency, 0.5), "p99_ms": ms(&c.latency, 0.99), "p99_9_ms": ms(&c.latency, 0.999),
            "server_cpu_us_per_op": self.per_op(self.server_cpu), "client_cpu_us_per_op": self.per_op(self.client_cpu),
            "stolen_percent": (self.stolen * 1000.0).round() / 10.0,
        })
    }

    fn line(&self) -> String {
        let c = &self.counted;
        format!(
            "{:>9.0} ops/s  p50 {} ms  p99 {} ms  p99.9 {} ms  CPU/op server {} µs, client {} µs, {:.1}% stolen  ({} reserved, {} errors)",
            self.per_s(), ms(&c.latency, 0.5), ms(&c.latency, 0.99), ms(&c.latency, 0.999),
            self.per_op(self.server_cpu), self.per_op(self.client_cpu), self.stolen * 100.0, c.ok, c.errors
        )
    }
}

/// CPU readings at one moment: the servers', this process's, the machine's.
struct Readings {
    server: f64,
    client: f64,
    machine: (u64, u64),
}

fn readings(pids: &[u32]) -> Readings {
    Readings {
        server: pids.iter().filter_map(|&p| cpu::process_tree_seconds(p)).sum(),
        client: cpu::own_seconds(),
        machine: cpu::machine_ticks(),
    }
}

/// `connections` workers for one second of warm-up and `seconds`: each in a closed loop, or, with
/// `rate`, open: a pacer thread issues `rate` operations a second on schedule and a free worker sends
/// each one, its latency counted from its scheduled time (so a stalled server is not hidden by the
/// load generator waiting for it). The pacer sleeps with the OS timer (tens of microseconds of slack),
/// not tokio's, whose millisecond ticks would add up to a millisecond to every measured latency.
async fn run(
    system: System,
    workload: Workload,
    s: &Servers,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
) -> anyhow::Result<Figures> {
    let pids = s.pids(system);
    // Ids (and the idempotency keys made from them) are unique across every run of the command: a key
    // seen in an earlier run would be answered from memory, not reserved.
    let run_no = RUNS.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(1);
    let end = measure_from + Duration::from_secs(seconds);
    let schedule = rate.map(|r| pacer(start, end, r));
    let mut workers = Vec::new();
    for w in 0..connections {
        let mut conn = Conn::open(system, s).await?;
        let (stop, schedule) = (stop.clone(), schedule.clone());
        workers.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let mut seq = 0u64;
            loop {
                let intended = match &schedule {
                    // Paced: every scheduled operation is sent, even those due after the end.
                    Some(schedule) => match schedule.recv().await {
                        Ok(at) => at,
                        Err(_) => break,
                    },
                    None if stop.load(Ordering::Relaxed) => break,
                    None => Instant::now(),
                };
                seq += 1;
                let result = conn.op(workload, (run_no << 44) | ((w as u64) << 28) | seq).await;
                let done = Instant::now();
                if intended < measure_from || intended >= end {
                    continue;
                }
                match result {
                    Ok(reserved) => {
                        t.ops += 1;
                        t.ok += u64::from(reserved);
                        t.latency.saturating_record(done.duration_since(intended).as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        t.errors += 1;
                        t.first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            t
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let before = readings(&pids);
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = measure_from.elapsed().as_secs_f64();
    let after = readings(&pids);
    let mut f = Figures {
        counted: Tally::new(),
        seconds: elapsed,
        server_cpu: after.server - before.server,
        client_cpu: after.client - before.client,
        stolen: cpu::stolen_share(before.machine, after.machine),
    };
    for worker in workers {
        f.counted.add(worker.await?);
    }
    Ok(f)
}

/// Issues the scheduled times of `rate` operations a second from `start` to `end` on a thread of its
/// own, each when it falls due; the channel closes after the last.
fn pacer(start: Instant, end: Instant, rate: f64) -> async_channel::Receiver<Instant> {
    let (tx, rx) = async_channel::unbounded();
    let interval = Duration::from_secs_f64(1.0 / rate);
    std::thread::spawn(move || {
        let mut next = start;
        while next < end {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            let now = Instant::now();
            while next <= now && next < end {
                if tx.send_blocking(next).is_err() {
                    return;
                }
                next += interval;
            }
        }
    });
    rx
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0
}

fn pick<T: Copy>(
    table: &[(T, &'static str, &'static str)],
    only: &[String],
    what: &str,
) -> anyhow::Result<Vec<(T, &'static str)>> {
    for name in only {
        anyhow::ensure!(table.iter().any(|(_, n, _)| n == name), "unknown {what} {name:?}");
    }
    Ok(table
        .iter()
        .filter(|(_, n, _)| only.is_empty() || only.iter().any(|o| o == n))
        .map(|(t, n, _)| (*t, *n))
        .collect())
}

pub fn compare(args: &CompareArgs) -> anyhow::Result<bool> {
    let systems = pick(&SYSTEMS, &args.systems, "system")?;
    let workloads = pick(&WORKLOADS, &args.workloads, "workload")?;
    anyhow::ensure!((1..=4096).contains(&args.connections), "--connections: 1 to 4096");
    anyhow::ensure!((1..=600).contains(&args.seconds), "--seconds: 1 to 600");
    let scratch = tempdir()?;
    let wants = |s: System| systems.iter().any(|(x, _)| *x == s);
    eprintln!("starting the servers (scratch {})", scratch.display());
    let servers = Servers {
        holdfast: wants(System::Holdfast).then(|| servers::holdfast(&scratch)).transpose()?,
        redis: (wants(System::Redis) || wants(System::TwoLayer))
            .then(|| servers::redis(&scratch, false))
            .transpose()?,
        redis_aof: wants(System::RedisAof).then(|| servers::redis(&scratch, true)).transpose()?,
        postgres: (wants(System::Postgres) || wants(System::TwoLayer))
            .then(|| servers::postgres(&scratch))
            .transpose()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut clean = true;
    // Prepares `system` for `workload`, runs it (paced at `rate` if given), prints and returns the row.
    let mut measure = |system: System, sname: &str, workload: Workload, label: &str, rate: Option<f64>| {
        rt.block_on(prepare(system, workload, &servers))
            .with_context(|| format!("preparing {sname} for {label}"))?;
        let f = rt.block_on(run(system, workload, &servers, args.connections, args.seconds, rate))?;
        eprintln!("{label:>15} {sname:>10}: {}", f.line());
        if f.counted.errors > 0 {
            clean = false;
            eprintln!("  first error: {}", f.counted.first_error.as_deref().unwrap_or(""));
        }
        let mut row = f.json();
        row["system"] = json!(sname);
        anyhow::Ok(row)
    };
    let mut results = Vec::new();
    for (workload, wname) in &workloads {
        for (system, sname) in &systems {
            let mut row = measure(*system, sname, *workload, wname, None)?;
            row["workload"] = json!(wname);
            results.push(row);
        }
    }
    // Latency at half of holdfast's hot-SKU maximum, paced (open loop): holdfast, and as the control
    // every other system that sustained that rate, so the machine's own stalls show beside holdfast's.
    let max_of = |system: &str| {
        results
            .iter()
            .find(|r| r["workload"] == "hot" && r["system"] == system)
            .and_then(|r| r["ops_per_s"].as_f64())
    };
    let mut paced = Vec::new();
    if let Some(rate) = max_of("holdfast").map(|max| max / 2.0) {
        let label = format!("paced {rate:.0}/s");
        for (system, sname) in &systems {
            if max_of(sname).is_none_or(|max| max < rate * 1.1) {
                eprintln!("{label:>15} {sname:>10}: its maximum is below {rate:.0}/s; not paced");
                continue;
            }
            let mut row = measure(*system, sname, Workload::Hot, &label, Some(rate))?;
            row["rate"] = json!(rate.round() as u64);
            paced.push(row);
        }
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&scratch);
    let report = json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": servers::machine(),
        "connections": args.connections,
        "seconds": args.seconds,
        "systems": SYSTEMS.iter().map(|(_, n, d)| json!({"name": n, "what": d})).collect::<Vec<_>>(),
        "workloads": WORKLOADS.iter().map(|(_, n, d)| json!({"name": n, "what": d})).collect::<Vec<_>>(),
        "results": results,
        "paced_at_half_holdfast_max": paced,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("compare.json"), serde_json::to_string_pretty(&report)?)?;
    let table = markdown(&report);
    std::fs::write(args.out.join("compare.md"), &table)?;
    std::fs::write(args.out.join("compare.html"), crate::compare_page::html(&report))?;
    println!("{table}");
    Ok(clean)
}

fn markdown(r: &Value) -> String {
    let mut out = format!(
        "{}. Machine: {}. {} connections, {} s per run after 1 s of warm-up, load generator on the same machine. \
         CPU/op: CPU time of the system's server processes (and of the load generator) over the run ÷ operations; \
         stolen: the share of the machine's CPU time the hypervisor took meanwhile.\n\n\
         | workload | system | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU/op µs | client CPU/op µs | stolen % | holdfast ÷ system |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        r["date"].as_str().unwrap_or(""), r["machine"].as_str().unwrap_or(""), r["connections"], r["seconds"]
    );
    let results = r["results"].as_array().cloned().unwrap_or_default();
    for row in &results {
        let holdfast = results
            .iter()
            .find(|x| x["workload"] == row["workload"] && x["system"] == "holdfast")
            .and_then(|x| x["ops_per_s"].as_f64());
        let ratio = match (holdfast, row["ops_per_s"].as_f64()) {
            (Some(h), Some(s)) if s > 0.0 => format!("{:.2}×", h / s),
            _ => "–".into(),
        };
        let keys = ["workload", "system", "ops_per_s", "p50_ms", "p99_ms", "p99_9_ms"];
        let keys = [&keys[..], &["server_cpu_us_per_op", "client_cpu_us_per_op", "stolen_percent"]].concat();
        out.push_str(&format!("{} {ratio} |\n", cells(row, &keys)));
    }
    let paced = r["paced_at_half_holdfast_max"].as_array().cloned().unwrap_or_default();
    if let Some(first) = paced.first() {
        out.push_str(&format!(
            "\nPaced at half of holdfast's hot-SKU maximum ({}/s, open loop, latency from each request's scheduled time), \
             each system that sustains that rate:\n\n\
             | system | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU/op µs | stolen % |\n| --- | --- | --- | --- | --- | --- | --- |\n",
            first["rate"]
        ));
        for row in &paced {
            let keys = [
                "system",
                "ops_per_s",
                "p50_ms",
                "p99_ms",
                "p99_9_ms",
                "server_cpu_us_per_op",
                "stolen_percent",
            ];
            out.push_str(&format!("{}\n", cells(row, &keys)));
        }
    }
    out
}

/// `| a | b | … |`: a row's fields in the order given, strings without their quotes.
fn cells(row: &Value, keys: &[&str]) -> String {
    keys.iter().fold(String::from("|"), |line, key| match &row[*key] {
        Value::String(s) => format!("{line} {s} |"),
        other => format!("{line} {other} |"),
    })
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("holdfast-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

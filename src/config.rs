//! `holdfast serve` settings: flags, `HOLDFAST_*` environment variables and an optional TOML file, in
//! that order of precedence, over safe defaults. The file uses the flags' names (`listen = "…"`,
//! `body-bytes-max = 65536`, durations as `"5s"`); a key that is not a setting is an error.

use crate::durable::SnapshotPolicy;
use crate::engine::EngineConfig;
use crate::http::HttpConfig;
use crate::reconcile::mirror::MirrorOptions;
use crate::serve::{DatabaseOptions, ServeOptions};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use holdfast_wal::{Durability, WalOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 250ms, 5s, 10m)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Runs the reservation server: recovers the data directory, then serves the HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file with any of these settings (flags and environment variables override it).
    #[arg(long, env = "HOLDFAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "HOLDFAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the write-ahead log and snapshots (created if missing; one server per directory).
    #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Log line format.
    #[arg(long, env = "HOLDFAST_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Which log lines to write (tracing's filter syntax: info, debug, holdfast=debug,…).
    #[arg(long, env = "HOLDFAST_LOG", default_value = "info")]
    pub log: String,
    /// Request-handling threads (0: one per core).
    #[arg(long, env = "HOLDFAST_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Open connections at most. At the cap the connection idle the longest is closed to make room;
    /// a new connection is closed at once only when none is idle.
    #[arg(long, env = "HOLDFAST_CONNECTIONS_MAX", default_value_t = 16_384)]
    pub connections_max: usize,
    /// Requests handled at once at most; beyond it requests get 503 overloaded with Retry-After.
    #[arg(long, env = "HOLDFAST_IN_FLIGHT_MAX", default_value_t = 8_192)]
    pub in_flight_max: usize,
    /// Of those, waiting-room joins and polls at most (the crowd): beyond it they get a fast 503
    /// overloaded with Retry-After, so the crowd can never take the places of shoppers who are
    /// buying (reserve, commit, orders), who get the rest of --in-flight-max.
    #[arg(long, env = "HOLDFAST_CROWD_IN_FLIGHT_MAX", default_value_t = 512)]
    pub crowd_in_flight_max: usize,
    /// Shed the crowd (joins and polls: 503 with Retry-After) while the server's scheduling runs
    /// this late: a ready request waiting this long for a thread means the server is behind, and
    /// buyers come first. 0 turns it off; below 5ms it would shed on an idle server (the timer's
    /// own granularity, other processes), so it is refused.
    #[arg(long, env = "HOLDFAST_CROWD_SHED_LAG", value_parser = duration, default_value = "10ms")]
    pub crowd_shed_lag: Duration,
    /// Largest request body, in bytes (413 beyond it, also for chunked bodies).
    #[arg(long, env = "HOLDFAST_BODY_BYTES_MAX", default_value_t = 64 * 1024)]
    pub body_bytes_max: usize,
    /// Largest request line plus headers, in bytes (431 beyond it).
    #[arg(long, env = "HOLDFAST_HEADER_BYTES_MAX", default_value_t = 16 * 1024)]
    pub header_bytes_max: usize,
    /// Most header fields in one request (431 beyond it).
    #[arg(long, env = "HOLDFAST_HEADERS_MAX", default_value_t = 64)]
    pub headers_max: usize,
    /// Time a client has to send a request's headers, and to send its first byte after connecting.
    #[arg(long, env = "HOLDFAST_HEADER_READ_TIMEOUT", value_parser = duration, default_value = "5s")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body (408 beyond it).
    #[arg(long, env = "HOLDFAST_BODY_READ_TIMEOUT", value_parser = duration, default_value = "5s")]
    pub body_read_timeout: Duration,
    /// After a grace second, a request body must arrive at least this fast, in bytes per second on
    /// average (408 otherwise): a stalled upload is cut within about a second.
    #[arg(long, env = "HOLDFAST_BODY_BYTES_PER_S_MIN", default_value_t = 4096)]
    pub body_bytes_per_s_min: u64,
    /// A keep-alive connection idle for this long is closed.
    #[arg(long, env = "HOLDFAST_IDLE_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// On SIGTERM or SIGINT, how long requests in progress may take to finish.
    #[arg(long, env = "HOLDFAST_DRAIN_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub drain_timeout: Duration,

    /// Shortest reservation TTL a client may ask for, in ms.
    #[arg(long, env = "HOLDFAST_TTL_MS_MIN", default_value_t = 1_000)]
    pub ttl_ms_min: u64,
    /// Longest reservation TTL a client may ask for, in ms.
    #[arg(long, env = "HOLDFAST_TTL_MS_MAX", default_value_t = 3_600_000)]
    pub ttl_ms_max: u64,
    /// Extensions never push expires_at past created_at plus this, in ms.
    #[arg(long, env = "HOLDFAST_HOLD_MS_MAX", default_value_t = 7_200_000)]
    pub hold_ms_max: u64,
    /// How long an Idempotency-Key is remembered after its reserve.
    #[arg(long, env = "HOLDFAST_IDEMPOTENCY_WINDOW", value_parser = duration, default_value = "24h")]
    pub idempotency_window: Duration,
    /// Idempotency keys remembered at once; a reserve with a new key gets 503 overloaded beyond it.
    #[arg(long, env = "HOLDFAST_IDEMPOTENCY_KEYS_MAX", default_value_t = 4_000_000)]
    pub idempotency_keys_max: usize,
    /// How long an ended reservation can still be read (and committed or released again, idempotently).
    #[arg(long, env = "HOLDFAST_ENDED_RETENTION", value_parser = duration, default_value = "24h")]
    pub ended_retention: Duration,
    /// Engine shards (0: one per core).
    #[arg(long, env = "HOLDFAST_SHARDS", default_value_t = 0)]
    pub shards: usize,
    /// How often expired reservations are returned to stock (they return within one tick).
    #[arg(long, env = "HOLDFAST_EXPIRY_TICK", value_parser = duration, default_value = "25ms")]
    pub expiry_tick: Duration,

    /// How long past its deadline a hold stays, so that a commit (or release, extend) that arrived
    /// before the deadline but waited in the server is judged at its arrival. Expired units return
    /// within this plus one expiry tick (25 ms + 50 ms by default: under 100 ms).
    #[arg(long, env = "HOLDFAST_COMMIT_GRACE", value_parser = duration, default_value = "50ms")]
    pub commit_grace: Duration,

    /// Bytes per log segment file.
    #[arg(long, env = "HOLDFAST_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// RELAXED durability: acknowledge once written to the OS and sync on this interval. A power loss
    /// can then lose up to this much acknowledged work. Unset (the default): every acknowledgement
    /// waits for its sync.
    #[arg(long, env = "HOLDFAST_SYNC_INTERVAL", value_parser = duration)]
    pub sync_interval: Option<Duration>,
    /// Take a snapshot after this many log records…
    #[arg(long, env = "HOLDFAST_SNAPSHOT_EVERY_RECORDS", default_value_t = 1_000_000)]
    pub snapshot_every_records: u64,
    /// …or after this much time with new records, whichever comes first.
    #[arg(long, env = "HOLDFAST_SNAPSHOT_EVERY", value_parser = duration, default_value = "10m")]
    pub snapshot_every: Duration,
    /// Keep log segments that snapshots already cover (for investigations) instead of removing them.
    #[arg(long, env = "HOLDFAST_KEEP_LOG", default_value_t = false)]
    pub keep_log: bool,

    /// Postgres to mirror the log into (postgresql://user@host/db); with an empty data directory, the
    /// state is first loaded from it (warm-start). Unset: no Postgres at all.
    #[arg(long, env = "HOLDFAST_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Log bytes kept for a lagging mirror; beyond it segments are removed anyway (logged, with a
    /// metric) and the mirror later resyncs from a snapshot.
    #[arg(long, env = "HOLDFAST_MIRROR_LOG_BUDGET_BYTES", default_value_t = 8 << 30)]
    pub mirror_log_budget_bytes: u64,
    /// Records per mirror transaction at most.
    #[arg(long, env = "HOLDFAST_MIRROR_BATCH_MAX", default_value_t = 20_000)]
    pub mirror_batch_max: usize,
    /// How often the server compares Postgres with the engine (drift check).
    #[arg(long, env = "HOLDFAST_RECONCILE_EVERY", value_parser = duration, default_value = "5m")]
    pub reconcile_every: Duration,

    /// A secret payment webhooks are signed with (repeatable: during a rotation both are active).
    /// The environment variable takes several, separated by commas. Keep secrets out of shell
    /// history: prefer the environment or --webhook-secrets-file.
    #[arg(
        long = "webhook-secret",
        env = "HOLDFAST_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secrets: Vec<String>,
    /// An API key: ROLE=SECRET, role admin, checkout or ops (repeatable: two keys of a role at once
    /// rotate it). The environment variable takes several, separated by commas. Prefer
    /// --api-keys-file, which holds only hashes. With no key at all the server listens on loopback
    /// only (protected mode) and every route is open there.
    #[arg(long = "api-key", env = "HOLDFAST_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Waiting-room joins a second one client address may make on average (0: no limit); beyond it
    /// 429 rate_limited with Retry-After. Loopback is never limited. Generous by default: a carrier's
    /// NAT puts many shoppers behind one address.
    #[arg(long, env = "HOLDFAST_JOIN_RATE_PER_ADDRESS", default_value_t = 20)]
    pub join_rate_per_address: u32,
    /// Joins one client address may make at once, before --join-rate-per-address applies.
    #[arg(long, env = "HOLDFAST_JOIN_BURST_PER_ADDRESS", default_value_t = 100)]
    pub join_burst_per_address: u32,
    /// A proxy in front of holdfast (repeatable, or comma-separated): for requests from it the client
    /// is the first X-Forwarded-For entry, read from the right, that is not such a proxy (an entry
    /// that is not an address counts against one bucket shared by all such). Without it a proxy's
    /// clients share its address (and a proxy on loopback is not limited at all).
    #[arg(long, env = "HOLDFAST_FORWARDED_BY", value_delimiter = ',')]
    pub forwarded_by: Vec<std::net::IpAddr>,
    /// A file of API keys as hashes, one `ROLE sha256:HEX [label]` a line (`holdfast keys new ROLE`
    /// prints a key and its line; blank lines and lines starting with # are skipped).
    #[arg(long, env = "HOLDFAST_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// A file of webhook secrets, one per line (blank lines and lines starting with # are skipped).
    #[arg(long, env = "HOLDFAST_WEBHOOK_SECRETS_FILE")]
    pub webhook_secrets_file: Option<PathBuf>,
    /// How far a webhook signature's time may be from ours, either way.
    #[arg(long, env = "HOLDFAST_WEBHOOK_TOLERANCE", value_parser = duration, default_value = "300s")]
    pub webhook_tolerance: Duration,
    /// How far each `payment_pending` pushes an order's hold (never past created_at + hold-ms-max;
    /// kept within the TTL range).
    #[arg(long, env = "HOLDFAST_ORDER_PENDING_EXTENSION", value_parser = duration, default_value = "10m")]
    pub order_pending_extension: Duration,
    /// How long payment event ids are remembered (no second effect within it); at least 3 days.
    #[arg(long, env = "HOLDFAST_PAYMENT_EVENT_RETENTION", value_parser = duration, default_value = "7days")]
    pub payment_event_retention: Duration,
    /// Orders held at once: open ones, and ended ones for as long as payment event ids are kept
    /// (a late payment must find its order). About 1.5 KB each in memory; beyond it new orders get
    /// 503 until old ones age out.
    #[arg(long, env = "HOLDFAST_ORDERS_MAX", default_value_t = 2_000_000)]
    pub orders_max: usize,
    /// Carts held at once; a new cart beyond it is refused (409 carts_full), never made room for by
    /// dropping another.
    #[arg(long, env = "HOLDFAST_CARTS_MAX", default_value_t = 2_000_000)]
    pub carts_max: usize,
    /// How long a cart is kept after its last edit.
    #[arg(long, env = "HOLDFAST_CART_IDLE", value_parser = duration, default_value = "30days")]
    pub cart_idle: Duration,
    /// Payment event ids remembered at once (64 bytes each); webhooks beyond it get 503.
    #[arg(long, env = "HOLDFAST_PAYMENT_EVENTS_MAX", default_value_t = 4_000_000)]
    pub payment_events_max: usize,
    /// The provider's payment status address (`http://host:port/path`): an order with a payment
    /// reference and no outcome is asked about at `{url}/{provider_ref}` before its pay_by. Unset: off.
    #[arg(long, env = "HOLDFAST_PAYMENT_STATUS_URL")]
    pub payment_status_url: Option<String>,
    /// Ask about an order once its pay_by is this close.
    #[arg(long, env = "HOLDFAST_PAYMENT_STATUS_LEAD", value_parser = duration, default_value = "30s")]
    pub payment_status_lead: Duration,
    /// Payment status questions in flight at once.
    #[arg(long, env = "HOLDFAST_PAYMENT_STATUS_CONCURRENCY", default_value_t = 8)]
    pub payment_status_concurrency: usize,
    /// Time one payment status question may take (it is retried twice).
    #[arg(long, env = "HOLDFAST_PAYMENT_STATUS_TIMEOUT", value_parser = duration, default_value = "2s")]
    pub payment_status_timeout: Duration,
}

/// Parses `holdfast serve`'s settings from `argv` (program name and `serve` first), with the TOML file
/// filling in whatever flags and environment left at its default.
pub fn parse_serve(argv: &[String]) -> Result<ServeArgs, clap::Error> {
    #[derive(Parser)]
    #[command(name = "holdfast serve", bin_name = "holdfast serve")]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let rest: Vec<String> = argv.iter().skip(1).cloned().collect();
    let matches = Cli::command().try_get_matches_from(&rest)?;
    let args = Cli::from_arg_matches(&matches)?.serve;
    let Some(file) = &args.config else { return Ok(args) };
    let extra = file_arguments(file, &Cli::command(), &matches)
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e))?;
    let matches = Cli::command().try_get_matches_from(rest.iter().cloned().chain(extra))?;
    Ok(Cli::from_arg_matches(&matches)?.serve)
}

/// The file's settings as flags, for those the command line and environment did not set.
fn file_arguments(
    path: &PathBuf,
    command: &clap::Command,
    matches: &ArgMatches,
) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        // Every setting the command knows, also those without a default (absent from `matches`).
        if id == "config" || !command.get_arguments().any(|known| known.get_id().as_str() == id) {
            return Err(format!("{}: {key} is not a setting (see holdfast serve --help)", path.display()));
        }
        if matches.value_source(&id) != Some(ValueSource::DefaultValue) && matches.value_source(&id).is_some()
        {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => {
                if b {
                    flags.push(format!("--{}", id.replace('_', "-")));
                }
                continue;
            }
            other => {
                return Err(format!("{}: {key} = {other} is not a string, number or boolean", path.display()))
            }
        };
        flags.push(format!("--{}={value}", id.replace('_', "-")));
    }
    Ok(flags)
}

/// hyper refuses a read buffer smaller than this; a request head must fit in it.
pub const HEADER_BYTES_MIN: usize = 8192;

impl ServeArgs {
    /// Refuses an HTTP setting that would break the server (a zero timeout resets every connection,
    /// a zero cap refuses everything), naming it, rather than starting "ready" and failing each client.
    fn check_http(&self) -> Result<(), String> {
        let durations = [
            ("header-read-timeout", self.header_read_timeout),
            ("body-read-timeout", self.body_read_timeout),
            ("idle-timeout", self.idle_timeout),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be above zero (write durations like 250ms, 5s)"));
        }
        let counts = [
            ("connections-max", self.connections_max as u64),
            ("in-flight-max", self.in_flight_max as u64),
            ("crowd-in-flight-max", self.crowd_in_flight_max as u64),
            ("body-bytes-max", self.body_bytes_max as u64),
            ("headers-max", self.headers_max as u64),
            ("body-bytes-per-s-min", self.body_bytes_per_s_min),
            ("join-burst-per-address", u64::from(self.join_burst_per_address)),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{name} must be above zero"));
        }
        let lag = self.crowd_shed_lag;
        if !lag.is_zero() && lag < Duration::from_millis(5) {
            return Err(format!(
                "crowd-shed-lag must be 0 (off) or at least 5ms, not {lag:?}: below it an idle server \
                 sheds waiting-room joins and polls (timer granularity, other processes)"
            ));
        }
        if self.crowd_in_flight_max >= self.in_flight_max {
            return Err(format!(
                "crowd-in-flight-max ({}) must be below in-flight-max ({}): the rest is kept for buyers",
                self.crowd_in_flight_max, self.in_flight_max
            ));
        }
        if self.header_bytes_max < HEADER_BYTES_MIN {
            return Err(format!(
                "header-bytes-max must be at least {HEADER_BYTES_MIN} (the HTTP parser's smallest buffer), not {}",
                self.header_bytes_max
            ));
        }
        Ok(())
    }

    /// The webhook secrets of the flags, the environment and the secrets file, together.
    fn webhook_secrets(&self) -> Result<crate::orders::webhook::Secrets, String> {
        let mut texts = self.webhook_secrets.clone();
        if let Some(path) = &self.webhook_secrets_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("webhook-secrets-file {}: {e}", path.display()))?;
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
            texts.extend(lines.map(str::to_owned));
        }
        crate::orders::webhook::Secrets::new(&texts)
    }

    /// The API keys of the flags, the environment and the keys file, together; none only on loopback.
    fn api_keys(&self) -> Result<crate::http::auth::Keys, String> {
        let mut keys = crate::http::auth::Keys::default();
        for text in &self.api_keys {
            keys.add_flag(text)?;
        }
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("api-keys-file {}: {e}", path.display()))?;
            keys.add_file(&text).map_err(|e| format!("api-keys-file {}: {e}", path.display()))?;
        }
        if keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {} without API keys: anyone who reaches it could set stock and release \
                 holds. Configure keys (--api-key ROLE=SECRET, or --api-keys-file with lines from \
                 `holdfast keys new ROLE`), or listen on loopback (--listen 127.0.0.1:PORT)",
                self.listen
            ));
        }
        Ok(keys)
    }

    pub fn options(&self) -> Result<ServeOptions, String> {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut engine = EngineConfig {
            ttl_ms_min: self.ttl_ms_min,
            ttl_ms_max: self.ttl_ms_max,
            hold_ms_max: self.hold_ms_max,
            idempotency_window_ms: ms(self.idempotency_window),
            idempotency_keys_max: self.idempotency_keys_max,
            ended_retention_ms: ms(self.ended_retention),
            // Within the TTL range (an extension is a TTL): a short --ttl-ms-max bounds it too.
            pending_extension_ms: ms(self.order_pending_extension)
                .clamp(self.ttl_ms_min, self.ttl_ms_max.max(self.ttl_ms_min)),
            payment_event_retention_ms: ms(self.payment_event_retention),
            payment_events_max: self.payment_events_max,
            orders_max: self.orders_max,
            carts_max: self.carts_max,
            cart_idle_ms: ms(self.cart_idle),
            commit_grace_ms: ms(self.commit_grace),
            ..EngineConfig::default()
        };
        if self.shards > 0 {
            engine.shards = self.shards;
        }
        if engine.commit_grace_ms > self.ttl_ms_min {
            return Err(format!(
                "commit-grace ({} ms) must not exceed ttl-ms-min ({} ms): a hold would outlive its TTL",
                engine.commit_grace_ms, self.ttl_ms_min
            ));
        }
        engine.validate().map_err(|e| e.to_string())?;
        if self.segment_bytes < holdfast_wal::SEGMENT_BYTES_MIN {
            return Err(format!("segment-bytes must be at least {}", holdfast_wal::SEGMENT_BYTES_MIN));
        }
        self.check_http()?;
        if self.expiry_tick.is_zero() {
            return Err("expiry-tick must be above zero".into());
        }
        let fallback = match &self.payment_status_url {
            None => None,
            Some(url) => {
                let options = crate::orders::fallback::FallbackOptions {
                    url: url.clone(),
                    lead: self.payment_status_lead,
                    concurrency: self.payment_status_concurrency,
                    timeout: self.payment_status_timeout,
                    ..Default::default()
                };
                crate::orders::fallback::validate(&options)?;
                Some(options)
            }
        };
        let durability = match self.sync_interval {
            Some(every) if !every.is_zero() => Durability::Interval { every },
            _ => Durability::Always,
        };
        Ok(ServeOptions {
            data_dir: self.data_dir.clone(),
            http: HttpConfig {
                connections_max: self.connections_max,
                in_flight_max: self.in_flight_max,
                crowd_in_flight_max: self.crowd_in_flight_max,
                crowd_shed_lag: self.crowd_shed_lag,
                body_bytes_max: self.body_bytes_max,
                header_bytes_max: self.header_bytes_max,
                headers_max: self.headers_max,
                header_read_timeout: self.header_read_timeout,
                body_read_timeout: self.body_read_timeout,
                body_bytes_per_s_min: self.body_bytes_per_s_min,
                idle_timeout: self.idle_timeout,
                drain_timeout: self.drain_timeout,
                webhooks: crate::http::WebhookConfig {
                    secrets: self.webhook_secrets()?,
                    tolerance_s: self.webhook_tolerance.as_secs(),
                },
                keys: self.api_keys()?,
                join_limit: crate::http::limit::JoinLimit {
                    per_s: self.join_rate_per_address,
                    burst: self.join_burst_per_address,
                    forwarded_by: self.forwarded_by.clone(),
                },
            },
            fallback,
            engine,
            wal: WalOptions { segment_bytes: self.segment_bytes, durability, observer: None },
            snapshot: SnapshotPolicy {
                every_records: self.snapshot_every_records,
                every_ms: ms(self.snapshot_every),
                remove_covered_segments: !self.keep_log,
            },
            expiry_tick: self.expiry_tick,
            database: self.database_url.as_ref().map(|url| DatabaseOptions {
                url: url.clone(),
                mirror: MirrorOptions {
                    batch_max: self.mirror_batch_max.max(1),
                    log_budget_bytes: self.mirror_log_budget_bytes,
                    ..MirrorOptions::default()
                },
                reconcile_every: self.reconcile_every,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        ["holdfast", "serve"].iter().chain(args).map(|s| s.to_string()).collect()
    }

    /// `holdfast serve --help` explains every flag: a help line each, and clap shows the default of
    /// every flag that has one.
    #[test]
    fn every_flag_has_a_help_line() {
        let command = <ServeArgs as Args>::augment_args(clap::Command::new("serve"));
        for arg in command.get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.len() >= 12, "--{} has no help line", arg.get_id());
            assert!(!arg.is_hide_default_value_set(), "--{} hides its default", arg.get_id());
        }
    }

    #[test]
    fn defaults_are_the_embedded_server() {
        let args = parse_serve(&argv(&[])).expect("parses");
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.data_dir, PathBuf::from("data"));
        let options = args.options().expect("valid");
        assert_eq!(options.wal.durability, Durability::Always, "durable by default");
        assert_eq!(options.http.body_bytes_max, 64 * 1024);
    }

    #[test]
    fn the_file_fills_in_what_flags_leave_at_default() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("holdfast.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nbody-bytes-max = 1024\nidle-timeout = \"3s\"\nkeep-log = true\n",
        )
        .expect("write");
        let config = file.to_str().expect("utf-8");
        let args = parse_serve(&argv(&["--config", config, "--body-bytes-max", "2048"])).expect("parses");
        assert_eq!(args.listen.to_string(), "127.0.0.1:9000", "from the file");
        assert_eq!(args.body_bytes_max, 2048, "the flag wins over the file");
        assert_eq!(args.idle_timeout, Duration::from_secs(3));
        assert!(args.keep_log);

        // Settings without a default are settings too.
        std::fs::write(
            &file,
            "database-url = \"postgresql://holdfast@db/shop\"\npayment-status-url = \"http://127.0.0.1:9090/pi\"\n",
        )
        .expect("write");
        let args = parse_serve(&argv(&["--config", config])).expect("parses");
        assert_eq!(args.database_url.as_deref(), Some("postgresql://holdfast@db/shop"));
        assert_eq!(args.payment_status_url.as_deref(), Some("http://127.0.0.1:9090/pi"));

        std::fs::write(&file, "lisen = \"127.0.0.1:9000\"\n").expect("write");
        let e = parse_serve(&argv(&["--config", config])).expect_err("a typo is an error");
        assert!(e.to_string().contains("lisen is not a setting"), "{e}");
        std::fs::write(&file, "idle-timeout = \"soon\"\n").expect("write");
        assert!(parse_serve(&argv(&["--config", config])).is_err(), "values are checked as flags are");
    }

    #[test]
    fn incoherent_settings_are_refused() {
        let args = parse_serve(&argv(&["--ttl-ms-min", "5000", "--ttl-ms-max", "1000"])).expect("parses");
        assert!(args.options().is_err());
        let args = parse_serve(&argv(&["--in-flight-max", "0"])).expect("parses");
        assert!(args.options().is_err());
    }

    #[test]
    fn settings_that_would_break_the_server_are_refused_by_name() {
        let cases = [
            (&["--header-read-timeout", "0s"][..], "header-read-timeout"),
            (&["--body-read-timeout", "0ms"], "body-read-timeout"),
            (&["--idle-timeout", "0s"], "idle-timeout"),
            (&["--body-bytes-max", "0"], "body-bytes-max"),
            (&["--headers-max", "0"], "headers-max"),
            (&["--connections-max", "0"], "connections-max"),
            (&["--body-bytes-per-s-min", "0"], "body-bytes-per-s-min"),
            (&["--header-bytes-max", "4096"], "header-bytes-max must be at least 8192"),
            (&["--crowd-shed-lag", "1ms"], "crowd-shed-lag must be 0 (off) or at least 5ms"),
            (&["--crowd-in-flight-max", "0"], "crowd-in-flight-max"),
            (&["--crowd-in-flight-max", "8192"], "crowd-in-flight-max (8192) must be below in-flight-max"),
            (&["--ttl-ms-min", "10"], "commit-grace (50 ms) must not exceed ttl-ms-min (10 ms)"),
        ];
        for (flags, named) in cases {
            let e = parse_serve(&argv(flags)).expect("parses").options().expect_err("refused");
            assert!(e.contains(named), "{flags:?}: {e}");
        }
        let args = parse_serve(&argv(&["--header-bytes-max", "8192"])).expect("parses");
        assert_eq!(args.options().expect("the smallest allowed").http.header_bytes_max, 8192);
        let args =
            parse_serve(&argv(&["--crowd-shed-lag", "0s", "--ttl-ms-min", "10", "--commit-grace", "10ms"]));
        let options = args.expect("parses").options().expect("lag shedding off, a grace within the TTL");
        assert!(options.http.crowd_shed_lag.is_zero());
    }
}

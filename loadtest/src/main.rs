//! `holdfast-drill`: rehearses a flash sale against a holdfast server. It creates its stock and sale,
//! sends every shopper through the waiting room on schedule, verifies the server's end state against
//! what the shoppers were told, and writes a report (JSON and HTML). Exit status: 0 when every check
//! held, 1 when one did not (with the evidence), 2 when the drill could not run.

mod carts;
mod checkout;
mod client;
mod compare;
mod compare_page;
mod cpu;
mod diff;
mod drill;
mod pacer;
mod plot;
mod provider;
mod report;
mod report_page;
mod sample;
mod scenario;
mod servers;
mod verify;

use clap::Parser;
use scenario::{Arrival, Order, Scenario};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "holdfast-drill", version, about = "Flash-sale drills against a holdfast server, verified")]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The server: loopback unless another address is given here on purpose.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The API key shoppers' and checkout requests carry (a `checkout` key), for a server with keys.
    #[arg(long, global = true, env = "HOLDFAST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The key the setup's stock and sale requests carry (an `admin` key); --api-key if not given.
    #[arg(long, global = true, env = "HOLDFAST_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// A scenario file (TOML; keys as the flags below, with underscores). Flags override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Where the report goes: DIR/report.json and DIR/report.html.
    #[arg(long, default_value = "drill-report")]
    report: PathBuf,
    /// No progress lines (default: a line a second).
    #[arg(long)]
    quiet: bool,
    /// Shoppers who arrive for the sale (1 to 10,000,000; default 100,000).
    #[arg(long)]
    users: Option<u64>,
    /// Units of the sale's one SKU, set as its stock before the drill (default 1,000).
    #[arg(long)]
    units: Option<u64>,
    /// The SKU on sale (default drill-sku).
    #[arg(long)]
    sku: Option<String>,
    /// The sale, with its waiting room (default drill).
    #[arg(long)]
    sale: Option<String>,
    /// How shoppers arrive (default opening).
    #[arg(long, value_enum)]
    arrival: Option<Arrival>,
    /// Seconds over which shoppers arrive, for opening and ramp (default 1).
    #[arg(long)]
    arrival_secs: Option<f64>,
    /// Shoppers arriving per second, for steady (default 5,000).
    #[arg(long)]
    arrival_rate: Option<f64>,
    /// Milliseconds from the end of the setup to the sale's opening (default 3,000).
    #[arg(long)]
    opens_in_ms: Option<u64>,
    /// Shoppers the waiting room admits per second (default 2,000).
    #[arg(long)]
    admission_rate: Option<u32>,
    /// Admitted shoppers shopping at once, at most (default 2,000).
    #[arg(long)]
    max_active: Option<u32>,
    /// Milliseconds an admission lasts (default 60,000).
    #[arg(long)]
    session_ms: Option<u64>,
    /// The order the waiting room admits in (default fifo).
    #[arg(long, value_enum)]
    order: Option<Order>,
    /// Units one shopper may hold or buy in the sale (default 1).
    #[arg(long)]
    per_user_limit: Option<u32>,
    /// Units each shopper reserves (default 1).
    #[arg(long)]
    qty: Option<u32>,
    /// Milliseconds an admitted shopper pauses before each step: reserve, then commit or release (default
    /// 200).
    #[arg(long)]
    think_ms: Option<u64>,
    /// Probability that a shopper holding units commits (0 to 1; default 0.9).
    #[arg(long)]
    commit: Option<f64>,
    /// Probability that a shopper holding units releases them; the rest abandon (0 to 1; default 0.05).
    #[arg(long)]
    release: Option<f64>,
    /// Milliseconds a reservation holds its units (the reserve's ttl_ms; default 5,000).
    #[arg(long)]
    hold_ttl_ms: Option<u64>,
    /// Attempts after an insufficient_stock refusal (default 3).
    #[arg(long)]
    retries: Option<u32>,
    /// Milliseconds between those attempts (default 500).
    #[arg(long)]
    retry_ms: Option<u64>,
    /// Share of shoppers who try to buy past the per-user limit, which the server must refuse (0 to 1;
    /// default 0.05).
    #[arg(long)]
    greedy: Option<f64>,
    /// Share of shoppers who resend their reserve with the same Idempotency-Key (0 to 1; default 0.05).
    #[arg(long)]
    key_retry: Option<f64>,
    /// Share of buyers who commit about when their hold runs out (0 to 1; default 0.02).
    #[arg(long)]
    late_commit: Option<f64>,
    /// Milliseconds without a reply after which a request fails and its connection is dropped (default
    /// 10,000).
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Keep-alive connections the waiting crowd shares for joins and polls (1 to 16,384; default 256).
    #[arg(long)]
    connections: Option<usize>,
    /// Keep-alive connections admitted shoppers share (reserve, commit, release), apart from the
    /// crowd's as each shopper's own connection is in production (1 to 2,048; default 64).
    #[arg(long)]
    buyer_connections: Option<usize>,
    /// Fail the verification if admitted shoppers' calls took longer than this many milliseconds at
    /// the 99th percentile (default 0: reported, not checked).
    #[arg(long)]
    buyer_p99_max_ms: Option<u64>,
    /// Seconds after which the drill stops whatever happens (default 0: users / admission rate + 120).
    #[arg(long)]
    deadline_secs: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The same workloads against holdfast, Redis (Lua; and with appendfsync always), Redis + Postgres,
    /// and Postgres alone, each started on a loopback port of its own; a table of ops/s and latency.
    Compare(compare::CompareArgs),
    /// Orders and payments: shoppers place orders and pay through a payment provider stand-in that
    /// fails, delays, duplicates, reorders and loses its signed webhooks at set rates (and answers the
    /// server's status fallback); every order's end is verified against what its payment did.
    Checkout(Box<checkout::CheckoutArgs>),
    /// Carts with soft holds: shoppers add to a cart (the sale holds the units), some abandon, the
    /// rest check out; verified: never more held than there are, every holder got their units,
    /// abandoned holds returned by their deadline.
    Carts(Box<carts::CartsArgs>),
    /// The same drill before and after a change: two report.json files side by side, each figure
    /// with its change (Markdown on standard output). Exit 1 when either verification failed.
    Diff(diff::DiffArgs),
}

fn scenario(args: &Args) -> anyhow::Result<Scenario> {
    let mut s: Scenario = match &args.scenario {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => Scenario::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { s.$field = v; } )* };
    }
    set!(
        users,
        units,
        sku,
        sale,
        arrival,
        arrival_secs,
        arrival_rate,
        opens_in_ms,
        admission_rate,
        max_active
    );
    set!(session_ms, order, per_user_limit, qty, think_ms, commit, release, hold_ttl_ms, retries, retry_ms);
    set!(
        connections,
        buyer_connections,
        buyer_p99_max_ms,
        deadline_secs,
        greedy,
        key_retry,
        late_commit,
        request_timeout_ms
    );
    s.check()?;
    Ok(s)
}

fn address(target: &str) -> anyhow::Result<SocketAddr> {
    let rest =
        target.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("--target must be http://HOST:PORT"))?;
    let host_port = rest.trim_end_matches('/');
    anyhow::ensure!(!host_port.contains('/'), "--target is a server, not a path: http://HOST:PORT");
    let addr = host_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host_port} resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        eprintln!("note: {addr} is not a loopback address; drilling it because --target names it");
    }
    Ok(addr)
}

fn main() {
    let args = Args::parse();
    // `compare` starts its own holdfast, with keys of its own.
    if !matches!(args.command, Some(Command::Compare(_) | Command::Diff(_))) {
        client::set_keys(args.api_key.clone(), args.admin_key.clone().or_else(|| args.api_key.clone()));
    }
    let outcome = match &args.command {
        Some(Command::Compare(c)) => compare::compare(c),
        Some(Command::Checkout(c)) => checkout::checkout(c),
        Some(Command::Carts(c)) => carts::carts(c),
        Some(Command::Diff(d)) => diff::diff(d),
        None => run(&args),
    };
    let code = match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("holdfast-drill: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let scenario = scenario(args)?;
    let addr = address(&args.target)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let timeout = std::time::Duration::from_millis(scenario.request_timeout_ms);
        let client = client::Client::new(addr, scenario.connections, timeout);
        let buyers = client::Client::on_own_thread(addr, scenario.buyer_connections, timeout)?;
        let users = scenario.users;
        // A server that never becomes ready, or refuses the sale, still gets a report, by the deadline.
        let prepared = async {
            ready(&client, scenario.deadline()).await?;
            drill::Drill::setup(scenario.clone(), client, buyers).await
        };
        let drill = match prepared.await {
            Ok(drill) => drill,
            Err(e) => return not_started(args, &scenario, &e),
        };
        let started = Instant::now();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let observer = client::Client::new(addr, 1, timeout);
        let mut progress = tokio::spawn(drill.clone().progress(done_rx, args.quiet, observer));
        // Each shopper stops itself at the deadline, keeping what it saw.
        let tasks: Vec<_> = (0..users).map(|i| tokio::spawn(drill.clone().shopper(i))).collect();
        let mut shoppers = Vec::with_capacity(users as usize);
        for task in tasks {
            shoppers.push(task.await?);
        }
        let wall = started.elapsed().as_secs_f64();
        let sale = std::time::Instant::now().saturating_duration_since(drill.opening).as_secs_f64();
        let _ = done_tx.send(true);
        // The last sample (the second under way) is bounded by the observer's request timeout;
        // the drill waits for it at most a few seconds.
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut progress).await.is_err() {
            progress.abort();
        }
        let (stock, states) = end_state(&drill, &shoppers).await;
        let errors = drill.stats.errors.load(std::sync::atomic::Ordering::Relaxed);
        let end = verify::EndState { stock: &stock, states: &states };
        let mut checks = verify::verify(&drill.scenario, errors, &shoppers, &end);
        let buyers_p99_us = drill.stats.class_latency[0].lock().value_at_quantile(0.99);
        checks.extend(verify::buyers_served_first(&drill.scenario, buyers_p99_us));
        let report = report::build(&drill, &shoppers, &checks, (wall, sale), &args.target, &stock);
        std::fs::create_dir_all(&args.report)?;
        std::fs::write(args.report.join("report.json"), serde_json::to_string_pretty(&report)?)?;
        std::fs::write(args.report.join("report.html"), report_page::html(&report))?;
        summary(&report);
        let passed = checks.iter().all(|c| c.ok);
        for c in checks.iter().filter(|c| !c.ok) {
            eprintln!("VERIFICATION FAILED: {}: {}", c.name, c.detail);
        }
        Ok(passed)
    })
}

/// The server's word at the end, once every hold the shoppers left has run out (one expiry tick and a
/// margin after the last deadline; not past the drill's own deadline plus a request timeout): the
/// SKU's counters and the state of every reservation a shopper was given. What gets no answer is
/// `Null` or `None`, and fails the checks that need it.
async fn end_state(
    drill: &drill::Drill,
    shoppers: &[drill::Shopper],
) -> (serde_json::Value, std::collections::HashMap<String, Option<String>>) {
    let last = shoppers.iter().flat_map(|p| &p.holds).map(|h| h.expires_at_ms).max().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let wait = std::time::Duration::from_millis((last + 500).saturating_sub(now));
    tokio::time::sleep(wait.min(std::time::Duration::from_millis(drill.scenario.hold_ttl_ms + 1_000))).await;
    let reads = shoppers.iter().flat_map(|p| &p.holds).map(|h| {
        let path = format!("/v1/reservations/{}", h.id);
        async move {
            let state = match drill.client().get(path).await {
                Ok(reply) if reply.status == 200 => serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .ok()
                    .and_then(|v| v["state"].as_str().map(str::to_owned)),
                _ => None,
            };
            (h.id.clone(), state)
        }
    });
    let states = futures_util::future::join_all(reads).await.into_iter().collect();
    let sku = &drill.scenario.sku;
    let stock = match drill.client().get(format!("/v1/skus/{sku}")).await {
        Ok(reply) => serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    (stock, states)
}

/// A drill that could not start: a report that says why, and a failed verification.
fn not_started(args: &Args, scenario: &Scenario, e: &anyhow::Error) -> anyhow::Result<bool> {
    let report = serde_json::json!({
        "target": args.target,
        "scenario": scenario,
        "verification": {"passed": false, "checks": [{"name": "drill_started", "ok": false, "detail": format!("{e:#}")}]},
    });
    std::fs::create_dir_all(&args.report)?;
    std::fs::write(args.report.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.report.join("report.html"), report_page::html(&report))?;
    eprintln!("VERIFICATION FAILED: drill_started: {e:#}");
    Ok(false)
}

/// Waits (30 s at most, and not past `deadline`) for the server to be ready: a drill may start beside
/// a server that recovers.
async fn ready(client: &client::Client, deadline: std::time::Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline.min(std::time::Duration::from_secs(30));
    loop {
        match client.get("/readyz".into()).await {
            Ok(reply) if reply.status == 200 => return Ok(()),
            outcome if Instant::now() > until => {
                let why = outcome.map_or_else(|e| e, |r| format!("status {}", r.status));
                anyhow::bail!("the server is not ready in time: {why}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

fn summary(r: &serde_json::Value) {
    println!(
        "wall {} s, from the opening {} s (goal {} s); users {}, admitted {} (peak {}/s)",
        r["wall_secs"], r["sale_secs"], r["goal_secs"], r["users"], r["admitted"], r["admitted_peak_per_s"]
    );
    println!("outcomes {}", r["outcomes"]);
    for route in drill::ROUTES {
        let x = &r["routes"][route];
        println!(
            "{route:>8}: {:>7} requests {:>6}/s  p50 {} ms  p90 {} ms  p99 {} ms  p99.9 {} ms  max {} ms",
            x["count"], x["per_s"], x["p50"], x["p90"], x["p99"], x["p99_9"], x["max"]
        );
    }
    for class in drill::CLASSES {
        let x = &r["classes"][class];
        println!(
            "{class:>8}: {:>7} requests  p50 {} ms  p99 {} ms  max {} ms",
            x["count"], x["p50"], x["p99"], x["max"]
        );
    }
    println!(
        "crowd: shed (503) and retried {}, unanswered and retried {}; commits refused 410 though sent before the deadline: {}",
        r["crowd_shed"], r["crowd_unanswered"], r["expired_in_flight"]
    );
    let w = &r["waiting_ms"];
    println!(
        "waiting: p50 {} ms  p99 {} ms  max {} ms; polls peak {}/s",
        w["p50"], w["p99"], w["max"], r["polls_per_s_peak"]
    );
    println!(
        "fairness: {} of {} pairs admitted out of joining order",
        r["fairness"]["later_admitted_before_earlier"], r["fairness"]["pairs_compared"]
    );
    println!(
        "verification: {}",
        if r["verification"]["passed"].as_bool() == Some(true) { "passed" } else { "FAILED" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `holdfast-drill --help` (and each subcommand's) explains every flag.
    #[test]
    fn every_flag_has_a_help_line() {
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(help.len() >= 12, "{} --{} has no help line", command.get_name(), arg.get_id());
            }
            command.get_subcommands().for_each(check);
        }
        check(&Args::command());
    }

    /// A scenario flag's help states the scenario's default: the two are written apart, so a test ties
    /// them together.
    #[test]
    fn scenario_flags_state_the_scenario_defaults() {
        let defaults = serde_json::to_value(Scenario::default()).expect("serializes");
        let command = Args::command();
        for (field, value) in defaults.as_object().expect("an object") {
            let arg = (command.get_arguments().find(|a| a.get_id().as_str() == field))
                .unwrap_or_else(|| panic!("no flag --{field}"));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let stated = help
                .split("default ")
                .nth(1)
                .and_then(|rest| rest.split([')', ';', ':', ' ']).next())
                .unwrap_or_else(|| panic!("--{field}: no default in {help:?}"))
                .replace(',', "");
            let expected = match value {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let same = stated == expected
                || stated.parse::<f64>().ok().zip(expected.parse::<f64>().ok()).is_some_and(|(a, b)| a == b);
            assert!(same, "--{field}: help says {stated}, the scenario {expected}");
        }
    }
}

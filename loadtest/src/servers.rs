//! The servers a comparison runs against, each on a loopback port of its own, started from their
//! installed binaries (Debian's packages for Redis and PostgreSQL, this build for holdfast) in a scratch
//! directory, and stopped (and the directory removed) when dropped.

use anyhow::Context;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released: the server binds it next).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(Instant::now() < until, "{what} did not start listening on {addr} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 12];
    stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: holdfast\r\nConnection: close\r\n\r\n").is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.ends_with(b" 200")
}

pub struct Server {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// For a private Postgres cluster: `pg_ctl` and its data directory, to stop it.
    pg_stop: Option<(PathBuf, PathBuf)>,
}

impl Server {
    /// The server's process (for a Postgres cluster, the postmaster, parent of every backend).
    pub fn pid(&self) -> Option<u32> {
        if let Some((_, data)) = &self.pg_stop {
            let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
            return text.lines().next()?.trim().parse().ok();
        }
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((pg_ctl, data)) = &self.pg_stop {
            let _ = as_postgres(pg_ctl).args(["-D"]).arg(data).args(["-m", "fast", "-w", "stop"]).output();
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// holdfast from the same build directory as this tool, with its default (durable) settings and API
/// keys, as it runs in production: requests then pay for their key check, carrying the keys given to
/// [`crate::client::set_keys`] here.
pub fn holdfast(scratch: &Path) -> anyhow::Result<Server> {
    let (checkout, admin) = (new_key()?, new_key()?);
    // In the environment, not the arguments, where anyone on the machine could read them.
    let keys = format!("checkout={checkout},admin={admin}");
    let server = start_holdfast(scratch, &[], &[("HOLDFAST_API_KEYS", keys.as_str())])?;
    crate::client::set_keys(Some(checkout), Some(admin));
    Ok(server)
}

/// A new secret: 32 bytes from the kernel, in hex.
fn new_key() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// holdfast as `holdfast`, with `extra` flags after the defaults (later flags win).
pub fn holdfast_with(scratch: &Path, extra: &[String]) -> anyhow::Result<Server> {
    start_holdfast(scratch, extra, &[])
}

fn start_holdfast(scratch: &Path, extra: &[String], env: &[(&str, &str)]) -> anyhow::Result<Server> {
    let me = std::env::current_exe()?;
    let binary = me.with_file_name(format!("holdfast{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: build the workspace (cargo build --release)",
        binary.display()
    );
    let mut child = Command::new(&binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(scratch.join("holdfast"))
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .context("holdfast did not say where it listens")?
        .parse()?;
    let server = Server { addr, child: Some(child), pg_stop: None };
    // It listens before it has recovered; it takes requests once /readyz says so.
    let until = Instant::now() + Duration::from_secs(30);
    while !ready(addr) {
        anyhow::ensure!(Instant::now() < until, "holdfast on {addr} was not ready within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// `redis-server` keeping nothing on disk, or with `appendonly yes` and `appendfsync always`.
pub fn redis(scratch: &Path, fsync_always: bool) -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = scratch.join(if fsync_always { "redis-aof" } else { "redis" });
    std::fs::create_dir_all(&dir)?;
    let mut command = Command::new("redis-server");
    command.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--dir"]).arg(&dir);
    if fsync_always {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    let child = command
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (Debian package redis-server)")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Server { addr, child: Some(child), pg_stop: None };
    wait_for(addr, "redis-server")?;
    Ok(server)
}

fn postgres_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.path().join("bin").join(name))).filter(|p| p.exists()).collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().context("no PostgreSQL server binaries in /usr/lib/postgresql (Debian package postgresql)")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// PostgreSQL refuses to run as root: as root, its tools run as the `postgres` user.
fn as_postgres(binary: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    }
}

/// A private PostgreSQL cluster (default settings: fsync and synchronous commit on), trust on loopback.
pub fn postgres(scratch: &Path) -> anyhow::Result<Server> {
    let (initdb, pg_ctl) = (postgres_bin("initdb")?, postgres_bin("pg_ctl")?);
    let data = scratch.join("postgres");
    std::fs::create_dir_all(&data)?;
    if is_root() {
        let owned = Command::new("chown").args(["-R", "postgres:postgres"]).arg(scratch).status()?;
        anyhow::ensure!(owned.success(), "chown of {} to postgres failed", scratch.display());
    }
    let out = as_postgres(&initdb).args(["-A", "trust", "-U", "postgres", "-D"]).arg(&data).output()?;
    anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port()?;
    let options =
        format!("-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200", data.display());
    let log = data.join("server.log");
    let out = as_postgres(&pg_ctl)
        .args(["-D"])
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(&log)
        .args(["-w", "start"])
        .output()?;
    anyhow::ensure!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Ok(Server { addr, child: None, pg_stop: Some((pg_ctl, data)) })
}

/// A description of this machine for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = Command::new("uname")
        .arg("-sr")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024)
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {memory} GiB, {kernel}")
}

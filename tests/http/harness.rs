//! A server in this process on 127.0.0.1 port 0 (on a runtime and thread of its own, with a clock the
//! test moves), and a raw HTTP/1.1 client over real sockets: requests are bytes written as a client
//! would write them, so malformed ones can be sent too.

use holdfast::clock::ManualClock;
use holdfast::durable::SnapshotPolicy;
use holdfast::engine::EngineConfig;
use holdfast::http::HttpConfig;
use holdfast::serve::ServeOptions;
use holdfast_wal::WalOptions;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// 2027-01-15T08:00:00Z: the test clock's start.
pub const T0_MS: u64 = 1_800_000_000_000;

pub fn options(dir: &Path) -> ServeOptions {
    ServeOptions {
        data_dir: dir.to_path_buf(),
        // Tests run side by side on a small machine: the scheduling lag is not the server's to
        // judge here, so the crowd is shed only by its bound (tests/http/storm.rs sets that).
        http: HttpConfig { crowd_shed_lag: Duration::ZERO, ..HttpConfig::default() },
        engine: EngineConfig { shards: 4, ..EngineConfig::default() },
        wal: WalOptions::default(),
        snapshot: SnapshotPolicy::default(),
        expiry_tick: Duration::from_millis(10),
        database: None,
        fallback: None,
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    /// The client's runtime.
    rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(options: ServeOptions) -> Self {
        Self::start_at(options, T0_MS)
    }

    pub fn start_at(options: ServeOptions, now_ms: u64) -> Self {
        let clock = Arc::new(ManualClock::new(now_ms));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server_clock = clock.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).expect("the test waits for the address");
                holdfast::serve::run(options, server_clock, listener, async move {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the server listens");
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let server = Self { addr, clock, stop: Some(stop), thread: Some(thread), rt };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        for _ in 0..500 {
            if self.get("/readyz").status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the server did not become ready");
    }

    /// Stops the server as SIGTERM would, and returns how `serve::run` ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().expect("the server thread does not panic"),
            None => Ok(()),
        }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn send(&self, bytes: Vec<u8>) -> Reply {
        self.rt.block_on(send(self.addr, bytes)).expect("a response")
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send(request("GET", path, &[], None))
    }

    pub fn put(&self, path: &str, body: &str) -> Reply {
        self.send(request("PUT", path, &[], Some(body)))
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.send(request("POST", path, &[], Some(body)))
    }

    pub fn post_keyed(&self, path: &str, key: &str, body: &str) -> Reply {
        self.send(request("POST", path, &[("Idempotency-Key", key)], Some(body)))
    }

    /// Creates or sets a SKU.
    pub fn stock(&self, sku: &str, on_hand: u64) {
        let reply = self.put(&format!("/v1/skus/{sku}"), &format!(r#"{{"on_hand": {on_hand}}}"#));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    /// A SKU's counters: (available, reserved, sold).
    pub fn counts(&self, sku: &str) -> (u64, u64, u64) {
        let v = self.get(&format!("/v1/skus/{sku}")).json();
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        assert_eq!(n("available") + n("reserved") + n("sold"), n("on_hand"), "conservation: {v}");
        (n("available"), n("reserved"), n("sold"))
    }

    /// A metric's value from `/metrics` (the first sample whose line starts with `prefix`).
    pub fn metric(&self, prefix: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {prefix}"))
    }

    /// Moves the clock and waits until the expiry ticker has caught up (two ticks).
    pub fn advance(&self, ms: u64) {
        self.clock.advance(ms);
        std::thread::sleep(Duration::from_millis(40));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A reserve body for one item.
pub fn reserve_body(sku: &str, qty: u32, user: &str) -> String {
    format!(r#"{{"items":[{{"sku":"{sku}","qty":{qty}}}],"ttl_ms":60000,"user_id":"{user}"}}"#)
}

/// A request as bytes: `Connection: close`, and a JSON body with its length when given.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
            out.push_str("Content-Type: application/json\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The problem's `code`, checking the problem+json shape on the way.
    pub fn code(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        let v = self.json();
        for field in ["type", "title", "status", "detail", "code"] {
            assert!(v.get(field).is_some(), "problem without {field}: {v}");
        }
        assert_eq!(v["status"].as_u64(), Some(u64::from(self.status)));
        v["code"].as_str().expect("code is a string").to_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Writes `bytes` on a new connection and reads the response until the server closes it.
pub async fn send(addr: SocketAddr, bytes: Vec<u8>) -> std::io::Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&bytes).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 20 s"))??;
    parse(&raw)
}

/// Reads one response from a kept-alive `stream` (Content-Length framed, as the server sends them).
pub async fn read_response(stream: &mut TcpStream) -> std::io::Result<Reply> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>()))
                .transpose()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                raw.truncate(end + 4 + length);
                return parse(&raw);
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed mid-response"));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{why}: {:?}", String::from_utf8_lossy(raw)),
        )
    };
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("header not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    Ok(Reply { status, headers, body: raw[end + 4..].to_vec() })
}

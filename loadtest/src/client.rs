//! A bounded pool of HTTP/1.1 keep-alive connections that every simulated shopper shares: a request
//! waits for a free connection (which is latency the shopper sees, and is counted), so a hundred
//! thousand shoppers need only as many sockets as `connections`. Every request has a time limit: a
//! server that stops answering costs each request that limit and its connection, never the drill.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    /// Wall-clock time (Unix ms) the request was handed to its connection, and the monotonic time
    /// its reply arrived there: the shopper's own scheduling after that is not the server's doing.
    pub sent_unix_ms: u64,
    pub received: std::time::Instant,
    /// A 503's `Retry-After`, in seconds.
    pub retry_after_s: Option<u64>,
}

struct Job {
    method: hyper::Method,
    path: String,
    body: Option<Bytes>,
    idempotency_key: Option<String>,
    /// Further headers (a webhook's signature).
    headers: Vec<(&'static str, String)>,
    reply: oneshot::Sender<Result<Reply, String>>,
}

#[derive(Clone)]
pub struct Client {
    jobs: async_channel::Sender<Job>,
    timeout: Duration,
    /// The runtime of a client that has a thread of its own ([`Client::on_own_thread`]).
    own: Option<tokio::runtime::Handle>,
}

impl Client {
    /// Starts `connections` workers against `addr`; each request gets `timeout` from when it is
    /// handed to the client (waiting for a connection included) to its whole reply.
    pub fn new(addr: SocketAddr, connections: usize, timeout: Duration) -> Client {
        let (jobs, queue) = async_channel::unbounded::<Job>();
        for _ in 0..connections {
            tokio::spawn(worker(addr, queue.clone(), timeout));
        }
        Client { jobs, timeout, own: None }
    }

    /// A client whose connections, timers and sends run on a thread of their own, as a shopper's
    /// requests run on their own device: the drill's other work (a hundred thousand waiting
    /// shoppers) cannot delay them, so what they measure is the server.
    pub fn on_own_thread(addr: SocketAddr, connections: usize, timeout: Duration) -> std::io::Result<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("drill-buyers".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        let (jobs, queue) = async_channel::unbounded::<Job>();
        for _ in 0..connections {
            handle.spawn(worker(addr, queue.clone(), timeout));
        }
        Ok(Client { jobs, timeout, own: Some(handle) })
    }

    /// A keyed call sent at `at` (at once if that has passed). On a client with its own thread the
    /// wait and the send happen there; the caller only collects the reply.
    pub async fn call_at(
        &self,
        at: std::time::Instant,
        method: hyper::Method,
        path: String,
        body: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<Reply, String> {
        let Some(own) = &self.own else {
            tokio::time::sleep_until(at.into()).await;
            return self.call_keyed(method, path, body, idempotency_key).await;
        };
        let client = self.clone();
        let call = async move {
            tokio::time::sleep_until(at.into()).await;
            client.call_keyed(method, path, body, idempotency_key).await
        };
        own.spawn(call).await.map_err(|e| format!("the client's thread: {e}"))?
    }

    pub async fn call(
        &self,
        method: hyper::Method,
        path: String,
        body: Option<String>,
    ) -> Result<Reply, String> {
        self.call_keyed(method, path, body, None).await
    }

    /// A call with an `Idempotency-Key` header.
    pub async fn call_keyed(
        &self,
        method: hyper::Method,
        path: String,
        body: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<Reply, String> {
        self.call_with(method, path, body, idempotency_key, Vec::new()).await
    }

    /// A call with an optional `Idempotency-Key` and further headers.
    pub async fn call_with(
        &self,
        method: hyper::Method,
        path: String,
        body: Option<String>,
        idempotency_key: Option<String>,
        headers: Vec<(&'static str, String)>,
    ) -> Result<Reply, String> {
        let (reply, answer) = oneshot::channel();
        let job = Job { method, path, body: body.map(Bytes::from), idempotency_key, headers, reply };
        let call = async {
            self.jobs.send(job).await.map_err(|_| "the client stopped".to_owned())?;
            answer.await.map_err(|_| "the connection worker stopped".to_owned())?
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("no reply within {:?}", self.timeout)),
        }
    }

    pub async fn get(&self, path: String) -> Result<Reply, String> {
        self.call(hyper::Method::GET, path, None).await
    }

    pub async fn put(&self, path: String, body: String) -> Result<Reply, String> {
        self.call(hyper::Method::PUT, path, Some(body)).await
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One connection: takes the next job, sends it, answers; reconnects (with a short backoff) when the
/// connection breaks, failing only the job that was on it.
async fn worker(addr: SocketAddr, queue: async_channel::Receiver<Job>, timeout: Duration) {
    let mut sender: Option<Sender> = None;
    while let Ok(job) = queue.recv().await {
        // Its caller gave up (timed out waiting for a connection): a shopper who walked away sends
        // nothing, so neither does the drill — a join sent now would hold a place nobody polls.
        if job.reply.is_closed() {
            continue;
        }
        let mut attempts = 0;
        let conn = loop {
            let usable = match &mut sender {
                Some(s) => s.ready().await.is_ok(),
                None => false,
            };
            if usable {
                break Ok(sender.as_mut().expect("checked above"));
            }
            attempts += 1;
            let connected = tokio::time::timeout(timeout, connect(addr)).await;
            match connected.unwrap_or_else(|_| Err(format!("connect {addr}: no answer within {timeout:?}"))) {
                Ok(s) => sender = Some(s),
                Err(e) if attempts >= 3 => break Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50 * attempts)).await,
            }
        };
        let result = match conn {
            Err(e) => Err(e),
            Ok(conn) => tokio::time::timeout(timeout, send(conn, &job))
                .await
                .unwrap_or_else(|_| Err(format!("no reply within {timeout:?}"))),
        };
        if result.is_err() {
            sender = None;
        }
        let _ = job.reply.send(result);
    }
}

/// The `Authorization` values requests carry: setup (PUT) with the admin key, the rest with the API key.
static KEYS: std::sync::OnceLock<(Option<String>, Option<String>)> = std::sync::OnceLock::new();

/// Sets the keys every request of this process carries (`--api-key`, `--admin-key`, or the keys of
/// the server `compare` started); the first call wins.
pub fn set_keys(api: Option<String>, admin: Option<String>) {
    let bearer = |k: Option<String>| k.map(|k| format!("Bearer {k}"));
    let _ = KEYS.set((bearer(api), bearer(admin)));
}

/// The `Authorization` header a request carries, if any: setup and the metrics the verification
/// reads are the operator's (admin key); the rest the shoppers' and the checkout's (API key).
pub fn authorization(method: &hyper::Method, path: &str) -> Option<&'static str> {
    let (api, admin) = KEYS.get()?;
    let operator = method == hyper::Method::PUT || path.starts_with("/metrics");
    if operator { admin } else { api }.as_deref()
}

/// Ends the process at a refusal for want of a key or a role: every request after it would be refused
/// the same way, and a drill of them measures nothing.
pub fn stop_if_refused(status: u16, body: &[u8], method: &str, path: &str) {
    if let Some(code) = refused_credentials(status, body) {
        eprintln!(
            "holdfast-drill: the server refused this drill's credentials ({status} {code} on {method} {path}): pass \
             --api-key with a checkout key, and --admin-key with an admin key for the setup and /metrics"
        );
        std::process::exit(2);
    }
}

/// The code of a refusal for want of a key or a role (not a shopper's `not_admitted`, also a 403).
fn refused_credentials(status: u16, body: &[u8]) -> Option<&'static str> {
    let forbidden = || {
        serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|problem| problem["code"] == "forbidden")
    };
    match status {
        401 => Some("unauthenticated"),
        403 if forbidden() => Some("forbidden"),
        _ => None,
    }
}

async fn send(conn: &mut Sender, job: &Job) -> Result<Reply, String> {
    let mut request = Request::builder().method(job.method.clone()).uri(&job.path).header("host", "holdfast");
    if let Some(key) = authorization(&job.method, &job.path) {
        request = request.header("authorization", key);
    }
    if job.body.is_some() {
        request = request.header("content-type", "application/json");
    }
    if let Some(key) = &job.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    for (name, value) in &job.headers {
        request = request.header(*name, value);
    }
    let request =
        request.body(Full::new(job.body.clone().unwrap_or_default())).map_err(|e| format!("request: {e}"))?;
    let sent_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let response = conn.send_request(request).await.map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let retry_after_s =
        response.headers().get(hyper::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse().ok());
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    let received = std::time::Instant::now();
    stop_if_refused(status, &body, job.method.as_str(), &job.path);
    Ok(Reply { status, body, sent_unix_ms, received, retry_after_s })
}

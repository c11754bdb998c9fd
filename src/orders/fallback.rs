//! The lost-webhook fallback: before `pay_by`, an open order with a provider reference is asked about
//! at the provider's status address (`GET {url}/{provider_ref}`), and the answer is acted on as if the
//! event had come. Bounded: so many requests at once, each with a timeout and a few retries.

use super::book::OrderId;
use super::webhook::status_of_object;
use super::{Effect, Payment};
use crate::durable::Durable;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackOptions {
    /// `http://host:port/path`: the provider's (or an egress proxy's) payment status address.
    pub url: String,
    /// Ask about an order once its `pay_by` is this close.
    pub lead: Duration,
    /// Ask the same order again no sooner than this.
    pub every: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub timeout: Duration,
    /// Attempts per question (the first and the retries).
    pub attempts: u32,
}

impl Default for FallbackOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            lead: Duration::from_secs(30),
            every: Duration::from_secs(10),
            concurrency: 8,
            timeout: Duration::from_secs(2),
            attempts: 3,
        }
    }
}

/// Where the status address points: host, port and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    authority: String,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or("the payment status URL must start with http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() || authority.contains('@') {
        return Err("the payment status URL needs a host (and no credentials)".into());
    }
    let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    Ok(Target { authority, path: format!("/{}", path.trim_end_matches('/')) })
}

/// Checks the options before the server starts.
pub fn validate(options: &FallbackOptions) -> Result<(), String> {
    target(&options.url)?;
    if options.concurrency == 0 || options.attempts == 0 || options.timeout.is_zero() {
        return Err("the status fallback needs concurrency, attempts and a timeout of at least 1".into());
    }
    Ok(())
}

/// What the fallback did, for metrics.
pub trait Counter: Send + Sync + 'static {
    /// An order the status answer moved (`settled` when to a terminal state).
    fn settled(&self, settled: bool);
    /// A question that found no answer after its retries.
    fn failed(&self);
}

/// Runs until `stop` says so: once a second, asks about the orders nearing `pay_by`.
pub async fn run(
    d: Arc<Durable>,
    clock: Arc<dyn crate::clock::Clock>,
    options: FallbackOptions,
    counter: Arc<dyn Counter>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(target) = target(&options.url) else { return };
    let target = Arc::new(target);
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency));
    let mut asked: HashMap<OrderId, u64> = HashMap::new();
    loop {
        let now = clock.now_ms();
        let lead = options.lead.as_millis() as u64;
        let open = d.engine().orders().lock().open_before(now.saturating_add(lead), 4096);
        let still_open: std::collections::HashSet<OrderId> = open.iter().map(|(id, _, _)| *id).collect();
        asked.retain(|id, _| still_open.contains(id));
        for (id, provider_ref, _) in open {
            let last = asked.get(&id).copied().unwrap_or(0);
            if last != 0 && now.saturating_sub(last) < options.every.as_millis() as u64 {
                continue;
            }
            // The bound is on questions in flight, not per sweep: a burst of lost webhooks is
            // worked through at the pace answers come back.
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = stop.wait_for(|s| *s) => return,
            };
            asked.insert(id, now);
            let (d, clock, target, counter, options) =
                (d.clone(), clock.clone(), target.clone(), counter.clone(), options.clone());
            tokio::spawn(async move {
                let _permit = permit;
                ask(&d, &*clock, &target, &options, &*counter, id, &provider_ref).await;
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn ask(
    d: &Durable,
    clock: &dyn crate::clock::Clock,
    target: &Target,
    options: &FallbackOptions,
    counter: &dyn Counter,
    id: OrderId,
    provider_ref: &str,
) {
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=options.attempts {
        match tokio::time::timeout(options.timeout, get(target, provider_ref)).await {
            Ok(Ok(object)) => {
                // `requires_payment_method` is also a payment nobody has tried yet: it is a
                // failure only once an attempt failed.
                let untried =
                    object.status == "requires_payment_method" && object.last_payment_error.is_none();
                let Some(status) = status_of_object(&object.status).filter(|_| !untried) else { return };
                // Without its amount and currency a success cannot be checked against the order.
                let (amount, currency) = match (object.amount, object.currency.as_deref()) {
                    (Some(a), Some(c)) => (a, c),
                    _ if status == super::PaymentStatus::Succeeded => {
                        tracing::warn!(order = %id, "payment status answer without amount or currency; not acted on");
                        return;
                    }
                    _ => (0, ""),
                };
                let payment = Payment { status, provider_ref, amount, currency };
                settle(d, clock, counter, id, &payment).await;
                return;
            }
            Ok(Err(e)) => tracing::debug!(order = %id, attempt, error = %e, "payment status check failed"),
            Err(_) => tracing::debug!(order = %id, attempt, "payment status check timed out"),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    counter.failed();
    tracing::warn!(order = %id, "no answer from the payment status address");
}

/// Acts on a status answer as if its event had come (with no event id: the answer is not one).
async fn settle(
    d: &Durable,
    clock: &dyn crate::clock::Clock,
    counter: &dyn Counter,
    id: OrderId,
    payment: &Payment<'_>,
) {
    match d.payment_outcome(id, payment, None, clock.now_ms()) {
        Ok(logged) => {
            if let Effect::Moved(state) = logged.value {
                // Nobody waits on this answer, but it is counted only once logged.
                if d.wal().durable(logged.lsn).await.is_ok() {
                    counter.settled(!state.is_open());
                    tracing::info!(order = %id, state = state.as_str(), "moved by the payment status check");
                }
            }
        }
        Err(e) => tracing::warn!(order = %id, error = %e, "payment status answer not applied"),
    }
}

#[derive(serde::Deserialize)]
struct PaymentObject {
    status: String,
    #[serde(default)]
    amount: Option<u64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    last_payment_error: Option<serde_json::Value>,
}

/// Payment objects are small; a larger answer is not one.
const ANSWER_BYTES_MAX: usize = 64 * 1024;

async fn get(target: &Target, provider_ref: &str) -> Result<PaymentObject, String> {
    if !provider_ref.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Err("the provider reference is not safe in a URL path".into());
    }
    let stream = tokio::net::TcpStream::connect(&target.authority).await.map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = format!("{}/{provider_ref}", target.path.trim_end_matches('/'));
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("not a payment object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_url_is_read_or_refused() {
        assert_eq!(
            target("http://127.0.0.1:9/v1/payment_intents/").expect("valid"),
            Target { authority: "127.0.0.1:9".into(), path: "/v1/payment_intents".into() }
        );
        assert_eq!(target("http://pay.internal").expect("valid").authority, "pay.internal:80");
        assert!(target("https://api.stripe.com").is_err());
        assert!(target("http://user:pw@host/").is_err());
    }
}

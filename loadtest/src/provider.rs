//! The checkout drill's payment provider stand-in: it keeps a payment object per provider reference
//! (a PaymentIntent, as Stripe shapes it), signs the events it sends as Stripe does (`Stripe-Signature:
//! t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`), and answers the server's status fallback
//! on a loopback listener of its own (`GET …/{provider_ref}` → `{"id","status","amount","currency"}`).
//!
//! A payment nobody has attempted yet reads `requires_payment_method`, as a fresh PaymentIntent does;
//! a failed attempt reads the same with a `last_payment_error`, again as Stripe answers.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::json;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// What the provider knows of one payment.
#[derive(Debug, Clone)]
pub struct Payment {
    pub order_id: String,
    pub amount: u64,
    pub currency: String,
    pub status: &'static str,
    /// Set when an attempt failed (the status then reads `requires_payment_method` again).
    pub failed: bool,
}

pub struct Provider {
    secret: Vec<u8>,
    payments: Mutex<HashMap<String, Payment>>,
    /// Status questions answered (found or not).
    pub asked: AtomicU64,
    /// Status questions about a reference the provider never made (answered 404).
    pub asked_unknown: AtomicU64,
    pub addr: SocketAddr,
}

/// The `Stripe-Signature` header for `body` signed at `t` (Unix seconds) with `secret`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

pub fn unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Provider {
    /// Listens on `listen` (loopback; port 0 picks one) and answers status questions until the
    /// runtime ends.
    pub async fn start(listen: SocketAddr, secret: &str) -> anyhow::Result<Arc<Provider>> {
        if !listen.ip().is_loopback() {
            eprintln!("note: the provider stand-in listens on {listen}, not a loopback address");
        }
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let provider = Arc::new(Provider {
            secret: secret.as_bytes().to_vec(),
            payments: Mutex::default(),
            asked: AtomicU64::new(0),
            asked_unknown: AtomicU64::new(0),
            addr: listener.local_addr()?,
        });
        let serving = provider.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let provider = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let provider = provider.clone();
                        async move { Ok::<_, std::convert::Infallible>(provider.answer(&req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(provider)
    }

    /// The status address to give the server (`--payment-status-url`).
    pub fn status_url(&self) -> String {
        format!("http://{}/v1/payment_intents", self.addr)
    }

    fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        self.asked.fetch_add(1, Relaxed);
        let reference = req.uri().path().rsplit('/').next().unwrap_or_default();
        let found = self.payments.lock().get(reference).cloned();
        let (status, body) = match found {
            Some(p) => {
                let mut object = json!({
                    "id": reference, "object": "payment_intent", "status": p.status,
                    "amount": p.amount, "currency": p.currency, "metadata": {"order_id": p.order_id},
                });
                if p.failed {
                    object["last_payment_error"] = json!({"code": "card_declined"});
                }
                (200, object.to_string())
            }
            None => {
                self.asked_unknown.fetch_add(1, Relaxed);
                (
                    404,
                    json!({"error": {"type": "invalid_request_error", "code": "resource_missing"}})
                        .to_string(),
                )
            }
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    }

    /// Makes a payment object for an order (not attempted yet).
    pub fn open(&self, reference: &str, order_id: &str, amount: u64, currency: &str) {
        let payment = Payment {
            order_id: order_id.to_owned(),
            amount,
            currency: currency.to_owned(),
            status: "requires_payment_method",
            failed: false,
        };
        self.payments.lock().insert(reference.to_owned(), payment);
    }

    /// The customer's attempt: it succeeded, or failed (card declined).
    pub fn settle(&self, reference: &str, succeeded: bool) {
        if let Some(p) = self.payments.lock().get_mut(reference) {
            p.status = if succeeded { "succeeded" } else { "requires_payment_method" };
            p.failed = !succeeded;
        }
    }

    /// An event of `kind` (`payment_intent.succeeded`, …) about `reference` as it stands, and its
    /// signature header, made now.
    pub fn event(&self, event_id: &str, kind: &str, reference: &str) -> (String, String) {
        let p = self.payments.lock().get(reference).cloned().expect("an event about a payment made");
        let status = match kind {
            "payment_intent.processing" => "processing",
            _ => p.status,
        };
        let body = json!({
            "id": event_id,
            "object": "event",
            "type": kind,
            "created": unix_s(),
            "data": {"object": {
                "id": reference, "object": "payment_intent", "status": status,
                "amount": p.amount, "currency": p.currency, "metadata": {"order_id": p.order_id},
            }},
        })
        .to_string();
        let header = sign(&self.secret, unix_s(), body.as_bytes());
        (body, header)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_stripes() {
        // HMAC-SHA256("secret", "1.{}") computed independently (Python's hmac module).
        let header = super::sign(b"secret", 1, b"{}");
        assert_eq!(header, "t=1,v1=1122767b193110cfec322b6f199b599edbf608ed087f2d27afb0b97d99523908");
    }
}

//! Payment webhooks as providers send them: the signature checked (two schemes, several secrets,
//! a time tolerance, constant-time comparison), then the event read.
//!
//! - Stripe: `Stripe-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, `v1` repeatable.
//! - Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(
//!   secret, "<id>.<timestamp>.<body>")>` (space-separated, repeatable); a `whsec_` secret is base64.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Signatures older or newer than this (seconds) are refused by default.
pub const TOLERANCE_S: u64 = 300;
/// Signature entries read from one header; more is malformed.
const ENTRIES_MAX: usize = 16;

/// The active secrets: any one of them signing the event is enough (rotation keeps two).
#[derive(Clone, Default)]
pub struct Secrets(Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} active)", self.0.len())
    }
}

impl Secrets {
    /// Secrets as configured. A Standard Webhooks secret (`whsec_<base64>`) is its decoded bytes;
    /// anything else is used as it is written (Stripe's `whsec_…` are not base64 of 24+ bytes).
    pub fn new(texts: &[String]) -> Result<Self, String> {
        let mut keys = Vec::new();
        for text in texts.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            if text.len() < 16 {
                return Err("a webhook secret must be at least 16 characters".into());
            }
            keys.push(text.as_bytes().to_vec());
            if let Some(b64) = text.strip_prefix("whsec_") {
                if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) {
                    if raw.len() >= 16 {
                        keys.push(raw);
                    }
                }
            }
        }
        Ok(Secrets(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// Whether any secret's MAC over `parts` equals `signature` (compared in constant time).
    fn verifies(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        self.0.iter().any(|key| Self::mac(key, parts).verify_slice(signature).is_ok())
    }

    /// A Stripe-style header for `body` at `t`, signed with the first secret (tests and the drill).
    pub fn sign_stripe(&self, t: u64, body: &[u8]) -> String {
        let key = self.0.first().expect("a secret");
        let sig = Self::mac(key, &[t.to_string().as_bytes(), b".", body]).finalize().into_bytes();
        format!("t={t},v1={}", hex(&sig))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Why a webhook was refused; each is a 400 with its own `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No signature header of either scheme.
    Missing,
    /// The header does not parse (its problem).
    Malformed(&'static str),
    /// Outside the tolerance: how far off, in seconds (negative: in the past).
    Stale(i64),
    /// No active secret made it.
    Mismatch,
}

/// The signature headers a request carried (at most one of each; a repeat is malformed).
#[derive(Debug, Default)]
pub struct Headers<'a> {
    pub stripe: Option<&'a str>,
    pub webhook_id: Option<&'a str>,
    pub webhook_timestamp: Option<&'a str>,
    pub webhook_signature: Option<&'a str>,
}

/// Checks the signature over the raw `body` at `now_s` (Unix seconds).
pub fn verify(
    secrets: &Secrets,
    headers: &Headers<'_>,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), Refusal> {
    let fresh = |t: u64| {
        let off = t as i64 - now_s as i64;
        if off.unsigned_abs() > tolerance_s {
            return Err(Refusal::Stale(off));
        }
        Ok(())
    };
    if let Some(header) = headers.stripe {
        let (mut t, mut sigs) = (None, Vec::new());
        for (n, entry) in header.split(',').enumerate() {
            if n >= ENTRIES_MAX {
                return Err(Refusal::Malformed("too many entries in Stripe-Signature"));
            }
            let (k, v) =
                entry.trim().split_once('=').ok_or(Refusal::Malformed("an entry is not key=value"))?;
            match k {
                "t" if t.is_none() => t = Some(digits(v).ok_or(Refusal::Malformed("t is not a time"))?),
                "t" => return Err(Refusal::Malformed("t is given twice")),
                "v1" => {
                    let sig = unhex(v)
                        .filter(|s| s.len() == 32)
                        .ok_or(Refusal::Malformed("v1 is not 64 hex digits"))?;
                    if sigs.contains(&sig) {
                        return Err(Refusal::Malformed("the same v1 is given twice"));
                    }
                    sigs.push(sig);
                }
                _ => {} // other schemes (v0) are ignored, as Stripe's libraries do
            }
        }
        let t = t.ok_or(Refusal::Malformed("no t= entry"))?;
        if sigs.is_empty() {
            return Err(Refusal::Malformed("no v1= signature"));
        }
        fresh(t)?;
        let stamp = t.to_string();
        let parts: [&[u8]; 3] = [stamp.as_bytes(), b".", body];
        return if sigs.iter().any(|sig| secrets.verifies(&parts, sig)) {
            Ok(())
        } else {
            Err(Refusal::Mismatch)
        };
    }
    let (Some(id), Some(ts), Some(sig)) =
        (headers.webhook_id, headers.webhook_timestamp, headers.webhook_signature)
    else {
        if headers.webhook_id.is_some()
            || headers.webhook_timestamp.is_some()
            || headers.webhook_signature.is_some()
        {
            return Err(Refusal::Malformed(
                "webhook-id, webhook-timestamp and webhook-signature go together",
            ));
        }
        return Err(Refusal::Missing);
    };
    if id.is_empty() || id.len() > 256 {
        return Err(Refusal::Malformed("webhook-id is empty or too long"));
    }
    let t = digits(ts).ok_or(Refusal::Malformed("webhook-timestamp is not a time"))?;
    let mut sigs = Vec::new();
    for (n, entry) in sig.split(' ').filter(|e| !e.is_empty()).enumerate() {
        if n >= ENTRIES_MAX {
            return Err(Refusal::Malformed("too many entries in webhook-signature"));
        }
        let (version, value) =
            entry.split_once(',').ok_or(Refusal::Malformed("an entry is not v1,<base64>"))?;
        if version != "v1" {
            continue; // asymmetric (v1a) signatures are not configured here
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or(Refusal::Malformed("a v1 signature is not base64 of 32 bytes"))?;
        if sigs.contains(&raw) {
            return Err(Refusal::Malformed("the same v1 is given twice"));
        }
        sigs.push(raw);
    }
    if sigs.is_empty() {
        return Err(Refusal::Malformed("no v1 signature"));
    }
    fresh(t)?;
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
    if sigs.iter().any(|s| secrets.verifies(&parts, s)) {
        Ok(())
    } else {
        Err(Refusal::Mismatch)
    }
}

/// Seconds written as digits only: `u64`'s parser would also take a leading `+`, which neither
/// scheme's grammar has.
fn digits(text: &str) -> Option<u64> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

/// A payment event, as far as orders need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// The event's type as sent.
    pub kind: String,
    /// The outcome it reports, if it is a type orders act on.
    pub status: Option<super::PaymentStatus>,
    pub provider_ref: String,
    pub amount: u64,
    pub currency: String,
    /// `metadata.order_id`, if present.
    pub order: Option<String>,
}

#[derive(serde::Deserialize)]
struct EventIn {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(deserialize_with = "crate::object_only::one")]
    data: DataIn,
}

#[derive(serde::Deserialize)]
struct DataIn {
    #[serde(deserialize_with = "crate::object_only::one")]
    object: ObjectIn,
}

#[derive(serde::Deserialize)]
struct ObjectIn {
    id: String,
    #[serde(default, deserialize_with = "crate::integral::opt")]
    amount: Option<u64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    metadata: Option<std::collections::HashMap<String, serde_json::Value>>,
}

/// What an event type means for an order; `None`: a type orders do not act on.
pub fn status_of(kind: &str) -> Option<super::PaymentStatus> {
    use super::PaymentStatus::*;
    Some(match kind {
        "payment_intent.succeeded" => Succeeded,
        "payment_intent.payment_failed" => Failed,
        "payment_intent.processing" | "payment_intent.requires_action" => Pending,
        "payment_intent.canceled" => Canceled,
        _ => return None,
    })
}

/// What a provider's payment object `status` means (the status fallback reads these).
pub fn status_of_object(status: &str) -> Option<super::PaymentStatus> {
    use super::PaymentStatus::*;
    Some(match status {
        "succeeded" => Succeeded,
        "processing" | "requires_action" | "requires_confirmation" | "requires_capture" => Pending,
        "canceled" => Canceled,
        "requires_payment_method" => Failed,
        _ => return None,
    })
}

/// Reads an event. An event of a type orders act on must carry its amount and currency.
pub fn parse(body: &[u8]) -> Result<Event, String> {
    let e: EventIn = serde_json::from_slice::<crate::object_only::ObjectOnly<EventIn>>(body)
        .map(|o| o.0)
        .map_err(|e| format!("not a payment event: {e}"))?;
    let text_ok = |s: &str| (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
    if !text_ok(&e.id) || !text_ok(&e.kind) || !text_ok(&e.data.object.id) {
        return Err("id, type and data.object.id must be 1 to 255 visible ASCII characters".into());
    }
    let status = status_of(&e.kind);
    let o = e.data.object;
    let order = match o.metadata.as_ref().and_then(|m| m.get("order_id")) {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("data.object.metadata.order_id must be a string".into()),
    };
    let (amount, currency) = match (o.amount, o.currency) {
        (Some(a), Some(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            (a, c.to_ascii_lowercase())
        }
        (_, _) if status.is_some() => {
            return Err("data.object must carry amount (minor units) and a three-letter currency".into())
        }
        _ => (0, String::new()),
    };
    Ok(Event { id: e.id, kind: e.kind, status, provider_ref: o.id, amount, currency, order })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(&["whsec_test_secret_0123456789".into()]).expect("valid")
    }

    #[test]
    fn a_stripe_signature_verifies_within_tolerance_only() {
        let s = secrets();
        let body = br#"{"id":"evt_1"}"#;
        let header = s.sign_stripe(1_000, body);
        let h = Headers { stripe: Some(&header), ..Default::default() };
        assert_eq!(verify(&s, &h, body, 1_000, 300), Ok(()));
        assert_eq!(verify(&s, &h, body, 1_301, 300), Err(Refusal::Stale(-301)));
        assert_eq!(verify(&s, &h, body, 699, 300), Err(Refusal::Stale(301)));
        assert_eq!(verify(&s, &h, b"{\"id\":\"evt_2\"}", 1_000, 300), Err(Refusal::Mismatch));
        let other = Secrets::new(&["another_secret_of_length".into()]).expect("valid");
        assert_eq!(verify(&other, &h, body, 1_000, 300), Err(Refusal::Mismatch));
    }

    #[test]
    fn a_standard_webhooks_signature_verifies() {
        let raw = b"0123456789abcdef0123456789abcdef";
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(raw));
        let s = Secrets::new(&[secret]).expect("valid");
        let body = br#"{"id":"evt_1"}"#;
        let mac = Secrets::mac(raw, &[b"msg_1", b".", b"1000", b".", body]).finalize().into_bytes();
        let sig = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac));
        let h = Headers {
            webhook_id: Some("msg_1"),
            webhook_timestamp: Some("1000"),
            webhook_signature: Some(&sig),
            ..Default::default()
        };
        assert_eq!(verify(&s, &h, body, 1_010, 300), Ok(()));
        let h2 = Headers { webhook_id: Some("msg_2"), ..h };
        assert_eq!(verify(&s, &h2, body, 1_010, 300), Err(Refusal::Mismatch));
    }
}

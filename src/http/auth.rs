//! Who may do what. Clients send `Authorization: Bearer <key>`; a key carries a role: `admin`
//! (everything), `checkout` (reservations, orders, reads) or `ops` (reads, metrics). Each route's rule
//! is in [`rule`], one exhaustive match: a route without a rule does not compile.
//!
//! Keys are held as SHA-256 hashes only (a keys file holds nothing else) and a presented key is
//! compared with every one in constant time. Keys are never logged, counted or echoed. With no key
//! configured the server is in protected mode: loopback only (see `config.rs`), every route open.

use super::error::Problem;
use super::routes::Route;
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Checkout,
    Ops,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Checkout, Role::Ops];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Checkout => "checkout",
            Role::Ops => "ops",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            // The text is not repeated: a key given where a role belongs must not reach a log.
            .ok_or_else(|| "unknown role (admin, checkout or ops)".to_owned())
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone: health, readiness, the API description, the waiting room (it faces shoppers), and the
    /// payment webhook (the provider signs each event).
    Open,
    /// A key of one of these roles.
    Roles(&'static [Role]),
    /// A key of one of these roles, or none for a shopper whose reserve carries its admission to a
    /// gated sale (checked with the reserve).
    RolesOrAdmitted(&'static [Role]),
}

const ADMIN: &[Role] = &[Role::Admin];
const CHECKOUT: &[Role] = &[Role::Admin, Role::Checkout];
const READ: &[Role] = &[Role::Admin, Role::Checkout, Role::Ops];
const OPS: &[Role] = &[Role::Admin, Role::Ops];

/// Every route's rule.
pub fn rule(route: Route) -> Rule {
    match route {
        Route::PutSku | Route::AdjustSku | Route::PutSale => Rule::Roles(ADMIN),
        Route::GetSku | Route::GetSale | Route::GetReservation | Route::GetOrder | Route::GetCart => {
            Rule::Roles(READ)
        }
        Route::DeleteCart | Route::PutCartItem | Route::DeleteCartItem | Route::MergeCart => {
            Rule::Roles(CHECKOUT)
        }
        Route::Reserve => Rule::RolesOrAdmitted(CHECKOUT),
        Route::Commit | Route::Release | Route::Extend => Rule::Roles(CHECKOUT),
        Route::PlaceOrder | Route::AttachPayment | Route::CancelOrder => Rule::Roles(CHECKOUT),
        Route::Metrics => Rule::Roles(OPS),
        Route::JoinQueue | Route::PollQueue => Rule::Open,
        Route::PaymentWebhook | Route::Healthz | Route::Readyz | Route::OpenApi => Rule::Open,
    }
}

/// Who a request was let in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No keys are configured (protected mode, loopback only): everything is allowed.
    Unguarded,
    Key(Role),
    /// No key, on a route whose rule allows that.
    Anonymous,
}

/// Longest `Authorization` value looked at; a key `keys new` makes is 67 characters.
const HEADER_BYTES_MAX: usize = 512;
/// Shortest secret `--api-key` accepts.
pub const SECRET_BYTES_MIN: usize = 16;

/// The configured keys, as hashes.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    hashes: Vec<(Role, [u8; 32])>,
}

fn hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// `ROLE=SECRET`, as `--api-key` takes it.
    pub fn add_flag(&mut self, text: &str) -> Result<(), String> {
        let (role, secret) =
            text.split_once('=').ok_or("api-key must be ROLE=SECRET (admin, checkout or ops)")?;
        let role = Role::parse(role)?;
        if secret.len() < SECRET_BYTES_MIN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "api-key for {}: the secret must be at least {SECRET_BYTES_MIN} visible ASCII characters \
                 (holdfast keys new {} makes one)",
                role.as_str(),
                role.as_str()
            ));
        }
        self.push(role, hash(secret.as_bytes()))
    }

    /// Adds a key; the same key under two roles is refused (which would win is not for a file's
    /// order to decide).
    fn push(&mut self, role: Role, digest: [u8; 32]) -> Result<(), String> {
        if self.hashes.iter().any(|(r, d)| *d == digest && *r != role) {
            return Err(format!("a {} key is also given another role", role.as_str()));
        }
        self.hashes.push((role, digest));
        Ok(())
    }

    /// A keys file: one `ROLE sha256:HEX [label…]` a line; blank lines and `#` comments skipped.
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (role, digest) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            let role = Role::parse(role).map_err(|e| format!("line {n}: {e}"))?;
            let digest = digest
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("line {n}: expected `{} sha256:<64 hex digits>`", role.as_str()))?;
            let mut bytes = [0u8; 32];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).expect("checked hex");
            }
            self.push(role, bytes).map_err(|e| format!("line {n}: {e}"))?;
        }
        Ok(())
    }

    /// The role of `key`, comparing its hash with every configured one in constant time.
    fn role_of(&self, key: &[u8]) -> Option<Role> {
        let presented = hash(key);
        let mut found = None;
        for (role, stored) in &self.hashes {
            if bool::from(stored.ct_eq(&presented)) {
                found = Some(*role);
            }
        }
        found
    }
}

/// A new key for `role`: the secret (for the client) and its keys-file line (for the server).
pub fn new_key(role: Role) -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    let secret = format!("hf_{}", hex(&bytes));
    let line = format!("{} sha256:{}", role.as_str(), hex(&hash(secret.as_bytes())));
    (secret, line)
}

fn unauthenticated(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
}

/// Lets a request for `route` in, or says why not: 401 `unauthenticated` (no usable key), 403
/// `forbidden` (a key whose role may not). The detail never repeats the key.
pub fn admit(keys: &Keys, route: Route, headers: &HeaderMap) -> Result<Access, Problem> {
    if keys.is_empty() {
        return Ok(Access::Unguarded);
    }
    let roles = match rule(route) {
        Rule::Open => return Ok(Access::Anonymous),
        Rule::Roles(roles) | Rule::RolesOrAdmitted(roles) => roles,
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return match rule(route) {
            Rule::RolesOrAdmitted(_) => Ok(Access::Anonymous),
            _ => Err(unauthenticated(format!(
                "{} needs a key: send Authorization: Bearer <key>",
                route.label()
            ))),
        };
    };
    if values.next().is_some() {
        return Err(unauthenticated("Authorization is given more than once"));
    }
    if value.len() > HEADER_BYTES_MAX {
        return Err(unauthenticated(format!("Authorization is longer than {HEADER_BYTES_MAX} bytes")));
    }
    let bytes = value.as_bytes();
    let key = match bytes.iter().position(|&b| b == b' ') {
        Some(at) if bytes[..at].eq_ignore_ascii_case(b"bearer") => &bytes[at + 1..],
        _ => return Err(unauthenticated("Authorization must be `Bearer <key>`")),
    };
    if key.is_empty() || !key.iter().all(u8::is_ascii_graphic) {
        return Err(unauthenticated("the bearer key is empty or holds spaces or invisible characters"));
    }
    let role =
        keys.role_of(key).ok_or_else(|| unauthenticated("the key is not known (revoked, or mistyped)"))?;
    if roles.contains(&role) {
        return Ok(Access::Key(role));
    }
    let may: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("a {} key may not call {}; it needs {}", role.as_str(), route.label(), may.join(" or ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_found_by_its_file_line_and_only_it() {
        let (secret, line) = new_key(Role::Checkout);
        let mut keys = Keys::default();
        keys.add_file(&format!("# rotation\n{line} ci\n")).expect("a valid line");
        assert_eq!(keys.role_of(secret.as_bytes()), Some(Role::Checkout));
        assert_eq!(keys.role_of(b"hf_0000"), None);
        assert!(keys.add_file("checkout sha256:12").is_err());
        assert!(keys.add_file("root sha256:".to_owned().as_str()).is_err());
        assert!(keys.add_flag("admin=short").is_err());
        assert!(keys.add_flag("admin").is_err());
        let e = keys.add_file("hf_0123456789abcdef").expect_err("a key where a line belongs");
        assert!(!e.contains("0123456789"), "the key is not repeated: {e}");
        let (_, line) = new_key(Role::Admin);
        let hash = line.split_whitespace().nth(1).expect("hash");
        assert!(keys.add_file(&format!("admin {hash}\nops {hash}")).is_err(), "one key, two roles");
    }
}

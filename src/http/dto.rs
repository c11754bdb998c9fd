//! The JSON of the v1 API. Engine types are not serialisable; these are, and convert to and from them.
//! Unknown fields are refused, so a typo is an error rather than a silently ignored setting.

use crate::clock::rfc3339;
use crate::engine::{ReservationView, Stock};
use serde::{Deserialize, Serialize};

use crate::integral;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    #[serde(deserialize_with = "integral::int")]
    pub on_hand: u64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ItemIn {
    pub sku: String,
    #[serde(deserialize_with = "integral::int")]
    pub qty: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    #[serde(deserialize_with = "crate::object_only::list")]
    pub items: Vec<ItemIn>,
    #[serde(deserialize_with = "integral::int")]
    pub ttl_ms: u64,
    pub user_id: String,
    #[serde(default)]
    pub sale_id: Option<String>,
    /// The admission token a gated sale's waiting room gave this user.
    #[serde(default)]
    pub admission: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    #[serde(deserialize_with = "integral::int")]
    pub ttl_ms: u64,
}

#[derive(Serialize)]
pub struct StockOut<'a> {
    pub sku: &'a str,
    pub on_hand: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

impl<'a> StockOut<'a> {
    pub fn new(sku: &'a str, s: Stock) -> Self {
        Self { sku, on_hand: s.on_hand, available: s.available, reserved: s.reserved, sold: s.sold }
    }
}

#[derive(Serialize)]
pub struct ItemOut {
    pub sku: String,
    pub qty: u32,
}

#[derive(Serialize)]
pub struct ReservationOut {
    pub id: String,
    pub state: &'static str,
    pub items: Vec<ItemOut>,
    pub created_at: String,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

impl From<&ReservationView> for ReservationOut {
    fn from(v: &ReservationView) -> Self {
        Self {
            id: v.id.to_string(),
            state: v.state.as_str(),
            items: v.items.iter().map(|i| ItemOut { sku: i.sku.to_string(), qty: i.qty }).collect(),
            created_at: rfc3339(v.created_at_ms),
            expires_at: rfc3339(v.expires_at_ms),
            ended_at: v.ended_at_ms.map(rfc3339),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    #[serde(deserialize_with = "integral::int")]
    pub delta: i64,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSale {
    #[serde(deserialize_with = "integral::int")]
    pub per_user_limit: u32,
    /// The SKUs the sale covers (a SKU is in one sale at a time).
    #[serde(default)]
    pub skus: Option<Vec<String>>,
    /// The waiting room: present together (`skus`, `opens_at`, `admission_rate` required, the rest
    /// defaulted), or all absent for a sale without one.
    #[serde(default)]
    pub opens_at: Option<String>,
    #[serde(default, deserialize_with = "integral::opt")]
    pub admission_rate: Option<u32>,
    #[serde(default, deserialize_with = "integral::opt")]
    pub max_active: Option<u32>,
    #[serde(default, deserialize_with = "integral::opt")]
    pub session_ms: Option<u64>,
    #[serde(default)]
    pub order: Option<String>,
    /// Adding the sale's SKUs to a cart holds them this long (absent: no hold).
    #[serde(default, deserialize_with = "integral::opt")]
    pub cart_hold_ms: Option<u64>,
}

impl SetSale {
    /// `skus` alone (with the limit) is a sale without a room.
    pub fn has_room(&self) -> bool {
        self.opens_at.is_some()
            || self.admission_rate.is_some()
            || self.max_active.is_some()
            || self.session_ms.is_some()
            || self.order.is_some()
    }
}

#[derive(Serialize)]
pub struct SaleOut<'a> {
    pub sale: &'a str,
    pub per_user_limit: u32,
    /// The SKUs the sale covers.
    pub skus: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_room: Option<RoomOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_hold_ms: Option<u64>,
}

#[derive(Serialize)]
pub struct RoomOut {
    pub skus: Vec<String>,
    pub opens_at: String,
    pub admission_rate: u32,
    pub max_active: u32,
    pub session_ms: u64,
    pub order: &'static str,
    pub opened_at: Option<String>,
    pub joined: u64,
    pub admitted: u64,
    pub waiting: u64,
    /// Admitted shoppers still shopping, and those of them yet to reserve (as of the last tick).
    pub active: u64,
    pub pending: u64,
    pub sold_out: bool,
    /// The most polls per second the waiting shoppers make if each follows its hint.
    pub worst_case_polls_per_s: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinQueue {
    pub user_id: String,
}

/// A shopper's place: `status` is `waiting`, `admitted`, `sold_out` or `session_over`.
#[derive(Serialize, Default)]
pub struct QueueOut {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<String>,
    /// 1: next to be admitted. Absent before a lottery's draw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    /// When to ask again; absent when there is nothing more to wait for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission_expires_at: Option<String>,
}

/// The body commit and release accept: nothing, or an empty object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The response to a reserve: everything in it is fixed when the reservation is made, so a repeat with
/// the same idempotency key gets exactly the same body.
#[derive(Serialize)]
pub struct Reserved<'a> {
    pub id: &'a str,
    pub state: &'static str,
    pub expires_at: String,
    pub items: &'a [ItemIn],
}

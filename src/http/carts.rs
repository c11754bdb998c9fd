//! Carts over HTTP: `GET|DELETE /v1/carts/{cart}`, `PUT|DELETE /v1/carts/{cart}/items/{sku}`,
//! `POST /v1/carts/{cart}/merge`; checkout is `POST /v1/orders {"cart_id"}` (`orders.rs`).

use super::error::{self, Problem};
use super::routes::{json, unkeyed, Handler, Reply};
use crate::carts::{Cart, CartError, ItemEdit, Merge};
use crate::clock::rfc3339;
use crate::durable::Refused;
use crate::engine::{CartId, SkuId};
use crate::limits::QTY_PER_ITEM_MAX;
use crate::orders::UNIT_PRICE_MAX;
use bytes::Bytes;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemIn {
    #[serde(deserialize_with = "crate::integral::int")]
    qty: u32,
    #[serde(default, deserialize_with = "crate::integral::opt")]
    unit_price: Option<u64>,
    /// In a gated sale with a cart hold: the admission the waiting room gave the cart's id.
    #[serde(default)]
    admission: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeIn {
    from: String,
}

#[derive(Serialize)]
struct ItemOut<'a> {
    sku: &'a str,
    qty: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit_price: Option<u64>,
    /// Units of the SKU available to anyone now: "only 2 left".
    available: u64,
    /// Until when the line's units are held for this cart (a sale's cart hold), if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_until: Option<String>,
}

#[derive(Serialize)]
struct CartOut<'a> {
    id: &'a str,
    items: Vec<ItemOut<'a>>,
    units: u64,
    created_at: String,
    updated_at: String,
    /// When the cart goes away if nobody touches it.
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    merged: Option<&'static str>,
}

pub(super) fn cart_id(text: &str) -> Result<CartId, Problem> {
    super::routes::not_a_dot_segment("a cart", text)?;
    CartId::new(text).map_err(|e| Problem::invalid(format!("cart: {e}")))
}

/// The problem for a cart refusal; `sku`, the line's, names it in a refused hold.
pub(super) fn cart_error(e: &Refused<CartError>, sku: Option<&str>) -> Problem {
    let e = match e {
        Refused::Log(e) => return error::log_error(e),
        Refused::Engine(e) => e,
    };
    match e {
        CartError::NotFound => Problem::new(StatusCode::NOT_FOUND, "cart_not_found", "no such cart"),
        CartError::ItemNotFound => {
            Problem::new(StatusCode::NOT_FOUND, "item_not_found", "the cart has no line for this SKU")
        }
        CartError::UnknownSku => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_sku", "no such SKU"),
        CartError::CartFull { max } => Problem::new(
            StatusCode::CONFLICT,
            "cart_full",
            format!("a cart holds at most {max} different SKUs"),
        ),
        CartError::CartsFull => Problem::new(
            StatusCode::CONFLICT,
            "carts_full",
            "the server holds as many carts as it is configured for (--carts-max): new carts are refused \
             until idle ones expire",
        ),
        CartError::LimitExceeded { limit } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "limit_exceeded",
            format!("at most {limit} units of this SKU per shopper"),
        ),
        CartError::MergeIntoItself => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "merge_into_itself",
            "a cart cannot merge into itself",
        ),
        CartError::Empty => {
            Problem::new(StatusCode::CONFLICT, "cart_empty", "the cart has no items to order")
        }
        CartError::Unpriced { sku } => Problem::new(
            StatusCode::CONFLICT,
            "cart_item_unpriced",
            format!("{sku} was added without a unit_price: set it with PUT /v1/carts/{{cart}}/items/{sku}"),
        ),
        CartError::Order(e) => super::orders::order_error(&Refused::Engine(e.clone()), &[]),
        CartError::Hold(e) => error::reserve_error(&Refused::Engine(*e), &[sku.unwrap_or("")]),
        CartError::LogRefused => unreachable!("the durable layer reports log refusals as Refused::Log"),
    }
}

/// `{cart}/items/{sku}`, the item routes' parameter, split.
fn item_path(param: &str) -> Result<(CartId, SkuId), Problem> {
    let (cart, sku) = param.split_once("/items/").ok_or_else(|| Problem::not_found("no such route"))?;
    super::routes::not_a_dot_segment("a SKU", sku)?;
    Ok((cart_id(cart)?, SkuId::new(sku).map_err(|e| Problem::invalid(format!("sku: {e}")))?))
}

impl Handler<'_> {
    fn cart_out<'c>(&self, cart: &'c Cart, merged: Option<Merge>) -> CartOut<'c> {
        let engine = self.d.engine();
        let items = (cart.items.iter())
            .map(|i| ItemOut {
                sku: i.sku.as_str(),
                qty: i.qty,
                unit_price: i.unit_price,
                available: engine.stock(i.sku.as_str()).map_or(0, |s| s.available),
                held_until: engine.live_hold(i, self.now_ms).map(|h| rfc3339(h.expires_at_ms)),
            })
            .collect();
        CartOut {
            id: cart.id.as_str(),
            items,
            units: cart.units(),
            created_at: rfc3339(cart.created_at_ms),
            updated_at: rfc3339(cart.touched_at_ms),
            expires_at: rfc3339(cart.touched_at_ms.saturating_add(self.d.config().cart_idle_ms)),
            merged: merged.map(|m| match m {
                Merge::Merged => "merged",
                Merge::Repeat => "already_merged",
            }),
        }
    }

    pub(super) async fn get_cart(&self, cart: &str) -> Result<Reply, Problem> {
        let cart = cart_id(cart)?;
        let found = self.d.engine().carts().lock().get(cart.as_str()).cloned();
        let found =
            found.ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "cart_not_found", "no such cart"))?;
        self.synced_reads().await?;
        Ok(json(StatusCode::OK, &self.cart_out(&found, None)))
    }

    pub(super) async fn delete_cart(&self, cart: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let cart = cart_id(cart)?;
        unkeyed(&req, "deleting is idempotent by nature (a repeat gets 404 cart_not_found)")?;
        let logged = self.d.delete_cart(&cart, self.now_ms).map_err(|e| cart_error(&e, None));
        let logged = self.counted("delete_cart", logged)?;
        self.synced(logged.lsn).await?;
        let mut reply = json(StatusCode::NO_CONTENT, &());
        *reply.body_mut() = Default::default();
        reply.headers_mut().remove(hyper::header::CONTENT_TYPE);
        Ok(reply)
    }

    /// `PUT` sets the line (qty 0 removes it); `DELETE` removes it.
    pub(super) async fn set_cart_item(&self, param: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let (cart, sku) = item_path(param)?;
        unkeyed(&req, "it sets the line to the quantity sent, so a repeat changes nothing")?;
        let edit = if req.method() == hyper::Method::DELETE {
            ItemEdit { sku, qty: 0, unit_price: None }
        } else {
            let body: ItemIn = self.body(&req)?;
            if body.qty > QTY_PER_ITEM_MAX {
                return Err(Problem::invalid(format!("qty: 0 to {QTY_PER_ITEM_MAX}")));
            }
            if body.unit_price.is_some_and(|p| p > UNIT_PRICE_MAX) {
                return Err(Problem::invalid(format!("unit_price: at most {UNIT_PRICE_MAX} (minor units)")));
            }
            super::routes::admission_form(body.admission.as_deref())?;
            // A hold in a gated sale is a reserve: it needs the admission given to the cart's id.
            let engine = self.d.engine();
            let hold = engine.cart_hold(&engine.carts().lock(), sku.as_str());
            if let (Some((sale, _)), true) = (hold, body.qty > 0) {
                self.check_admission(&sale, cart.as_str(), body.admission.as_deref())?;
            }
            ItemEdit { sku, qty: body.qty, unit_price: body.unit_price }
        };
        let sku = Some(edit.sku.as_str());
        let logged = self.d.set_cart_item(&cart, &edit, self.now_ms).map_err(|e| cart_error(&e, sku));
        let logged = self.counted("set_cart_item", logged)?;
        self.synced(logged.lsn).await?;
        Ok(json(StatusCode::OK, &self.cart_out(&logged.value, None)))
    }

    pub(super) async fn merge_cart(&self, cart: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let into = cart_id(cart)?;
        unkeyed(&req, "a retried merge finds the guest cart merged already and changes nothing")?;
        let body: MergeIn = self.body(&req)?;
        let from = CartId::new(&body.from).map_err(|e| Problem::invalid(format!("from: {e}")))?;
        let logged = self.d.merge_carts(&into, &from, self.now_ms).map_err(|e| cart_error(&e, None));
        let logged = self.counted("merge_carts", logged)?;
        self.synced(logged.lsn).await?;
        let (cart, merge) = &logged.value;
        if *merge == Merge::Merged {
            self.app.metrics.cart_merges.inc();
        }
        Ok(json(StatusCode::OK, &self.cart_out(cart, Some(*merge))))
    }
}

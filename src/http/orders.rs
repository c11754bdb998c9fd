//! Orders and payment webhooks over HTTP: `POST /v1/orders`, `GET /v1/orders/{id}`, `POST
//! /v1/orders/{id}/payment`, `POST /v1/orders/{id}/cancel`, `POST /v1/webhooks/payments`.

use super::error::{self, Problem};
use super::routes::{idempotency_key, json, unkeyed, Handler, Reply};
use crate::carts::CartError;
use crate::clock::rfc3339;
use crate::durable::Refused;
use crate::engine::{CartId, SaleId, SkuId, UserId};
use crate::limits::ITEMS_PER_RESERVATION_MAX;
use crate::orders::webhook::{self, Headers, Refusal};
use crate::orders::{
    Effect, Order, OrderError, OrderId, OrderLine, OrderRequest, OrderState, Payment, AMOUNT_MAX,
    UNIT_PRICE_MAX,
};
use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

/// The payment window when an order does not say (clamped to the configured TTL range).
pub const PAY_WITHIN_MS_DEFAULT: u64 = 15 * 60 * 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceIn {
    user_id: String,
    #[serde(default, deserialize_with = "crate::object_only::optional_list")]
    items: Option<Vec<LineIn>>,
    #[serde(default)]
    cart_id: Option<String>,
    currency: String,
    #[serde(default)]
    sale_id: Option<String>,
    #[serde(default)]
    admission: Option<String>,
    #[serde(default, deserialize_with = "crate::integral::opt")]
    pay_within_ms: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct LineIn {
    sku: String,
    #[serde(deserialize_with = "crate::integral::int")]
    qty: u32,
    #[serde(deserialize_with = "crate::integral::int")]
    unit_price: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachIn {
    provider_ref: String,
}

#[derive(Serialize)]
struct TransitionOut {
    at: String,
    state: &'static str,
    cause: &'static str,
}

#[derive(Serialize)]
struct OrderOut {
    id: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'static str>,
    reservation_id: String,
    user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sale_id: Option<String>,
    items: Vec<LineIn>,
    amount: u64,
    currency: String,
    pay_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_ref: Option<String>,
    created_at: String,
    history: Vec<TransitionOut>,
    /// A payment beyond the one that paid came for it: a person refunds it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    needs_refund: bool,
}

fn order_out(o: &Order) -> OrderOut {
    OrderOut {
        id: o.id.to_string(),
        state: o.state.as_str(),
        cause: o.state.cause(),
        reservation_id: o.reservation.to_string(),
        user_id: o.placed.user.to_string(),
        sale_id: o.placed.sale.as_ref().map(|s| s.to_string()),
        items: (o.placed.lines.iter())
            .map(|l| LineIn { sku: l.sku.to_string(), qty: l.qty, unit_price: l.unit_price })
            .collect(),
        amount: o.placed.amount,
        currency: o.placed.currency.clone(),
        pay_by: rfc3339(o.pay_by_ms),
        provider_ref: o.provider_ref.clone(),
        created_at: rfc3339(o.created_at_ms),
        history: (o.history.iter())
            .map(|t| TransitionOut { at: rfc3339(t.at_ms), state: t.state.as_str(), cause: t.cause })
            .collect(),
        needs_refund: o.needs_refund,
    }
}

fn order_id(text: &str) -> Result<OrderId, Problem> {
    OrderId::parse(text).ok_or_else(|| {
        let shown: String = text.chars().take(64).collect();
        Problem::not_found(format!("no order {shown:?} (an order id is ord_ and 32 hex digits, or 16 for one placed before ids had tags)"))
    })
}

pub(super) fn order_error(e: &Refused<OrderError>, skus: &[&str]) -> Problem {
    let e = match e {
        Refused::Log(e) => return error::log_error(e),
        Refused::Engine(e) => e,
    };
    match e {
        OrderError::Reserve(r) => error::reserve_error(&Refused::Engine(*r), skus),
        OrderError::NotFound => Problem::not_found("no such order"),
        OrderError::IdempotencyConflict => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_conflict",
            "this Idempotency-Key was used for another order: a retry must send the same body",
        ),
        OrderError::Paid => {
            Problem::new(StatusCode::CONFLICT, "order_paid", "the order is paid: it cannot be cancelled")
        }
        OrderError::Ended(state) => Problem::new(
            StatusCode::CONFLICT,
            "order_ended",
            format!("the order is {}: it does not change any more", state.as_str()),
        ),
        OrderError::OtherPaymentRef => Problem::new(
            StatusCode::CONFLICT,
            "provider_ref_conflict",
            "the order already has another payment reference",
        ),
        OrderError::AmountTooLarge => {
            Problem::invalid(format!("the order's amount is above {AMOUNT_MAX} (minor units)"))
        }
        OrderError::BookFull => Problem::overloaded(
            "too many orders held (--orders-max): new orders are refused until ended ones age out",
        ),
        OrderError::EventsFull => Problem::overloaded("too many payment events remembered; retry later"),
        OrderError::LogRefused => unreachable!("the durable layer reports log refusals as Refused::Log"),
    }
}

fn text_field(what: &str, s: &str) -> Result<(), Problem> {
    if !(1..=255).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::invalid(format!("{what} must be 1 to 255 visible ASCII characters")));
    }
    Ok(())
}

impl Handler<'_> {
    fn order_request(&self, body: &PlaceIn, req: &Request<Bytes>) -> Result<OrderRequest, Problem> {
        let key = idempotency_key(req)?.ok_or_else(|| {
            Problem::invalid("Idempotency-Key is required: a retried order must not buy twice")
        })?;
        super::routes::admission_form(body.admission.as_deref())?;
        let items = match (body.items.as_deref(), &body.cart_id) {
            (Some(_), Some(_)) => return Err(Problem::invalid("items and cart_id: send one of them")),
            (None, None) => return Err(Problem::invalid("items (or cart_id): required")),
            // A cart's checkout: its lines are the cart's, read under the carts' lock.
            (None, Some(_)) => &[][..],
            (Some(items), None) => items,
        };
        if body.cart_id.is_none() && (items.is_empty() || items.len() > ITEMS_PER_RESERVATION_MAX) {
            return Err(Problem::invalid(format!("items: 1 to {ITEMS_PER_RESERVATION_MAX} lines")));
        }
        let lines = (items.iter().enumerate())
            .map(|(n, l)| {
                let sku = SkuId::new(&l.sku).map_err(|e| Problem::invalid(format!("items[{n}].sku: {e}")))?;
                if l.unit_price > UNIT_PRICE_MAX {
                    return Err(Problem::invalid(format!("items[{n}].unit_price: at most {UNIT_PRICE_MAX}")));
                }
                Ok(OrderLine { sku, qty: l.qty, unit_price: l.unit_price })
            })
            .collect::<Result<Vec<_>, Problem>>()?;
        if body.currency.len() != 3 || !body.currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(Problem::invalid("currency: a three-letter ISO 4217 code, such as usd"));
        }
        let user = UserId::new(&body.user_id).map_err(|e| Problem::invalid(format!("user_id: {e}")))?;
        let sale = match &body.sale_id {
            Some(s) => Some(SaleId::new(s).map_err(|e| Problem::invalid(format!("sale_id: {e}")))?),
            None => None,
        };
        let c = self.d.config();
        let pay_within_ms =
            body.pay_within_ms.unwrap_or(PAY_WITHIN_MS_DEFAULT.clamp(c.ttl_ms_min, c.ttl_ms_max));
        if !(c.ttl_ms_min..=c.ttl_ms_max).contains(&pay_within_ms) {
            return Err(Problem::invalid(format!(
                "pay_within_ms must be between {} and {}",
                c.ttl_ms_min, c.ttl_ms_max
            )));
        }
        let currency = body.currency.to_ascii_lowercase();
        Ok(OrderRequest { user, lines, currency, sale, pay_within_ms, key })
    }

    pub(super) async fn place_order(&self, req: Request<Bytes>) -> Result<Reply, Problem> {
        let body: PlaceIn = self.body(&req)?;
        let request = self.order_request(&body, &req)?;
        if let Some(cart) = &body.cart_id {
            // In a body, `.` is a name no cart can have (it cannot be made over a path): not found.
            let cart = CartId::new(cart).map_err(|e| Problem::invalid(format!("cart_id: {e}")))?;
            return self.check_out_cart(&cart, &body, &request).await;
        }
        let skus: Vec<&str> = request.lines.iter().map(|l| l.sku.as_str()).collect();
        // A retry of a placed order is answered before any admission check, as a reserve's is.
        let known = self.d.engine().order_by_key(&request.key, self.now_ms).map(|o| o.placed.fingerprint);
        let logged = match known {
            Some(_) => self.d.place_order(&request, None, self.now_ms),
            None => {
                let items = request.lines.iter().map(|l| &l.sku);
                match self.d.engine().sale_for(items, request.sale.as_ref()) {
                    Ok(sale) => {
                        if let Some(sale) = &sale {
                            self.check_admission(sale, &body.user_id, body.admission.as_deref())?;
                        }
                        self.d.place_order(&request, Some(sale.as_ref()), self.now_ms)
                    }
                    Err(_) => self.d.place_order(&request, None, self.now_ms),
                }
            }
        };
        let logged = self.counted("place_order", logged.map_err(|e| order_error(&e, &skus)))?;
        self.synced(logged.lsn).await?;
        Ok(placed(&logged.value))
    }

    /// `POST /v1/orders {"cart_id"}`: the cart's lines at their prices, the cart removed with the
    /// order placed (one record). Admission is checked for the sale the cart's SKUs fall in.
    async fn check_out_cart(
        &self,
        cart: &CartId,
        body: &PlaceIn,
        template: &OrderRequest,
    ) -> Result<Reply, Problem> {
        let engine = self.d.engine();
        let skus: Vec<SkuId> = match engine.carts().lock().get(cart.as_str()) {
            Some(c) => c.items.iter().map(|i| i.sku.clone()).collect(),
            None => Vec::new(),
        };
        let names: Vec<&str> = skus.iter().map(|s| s.as_str()).collect();
        let known = engine.order_by_key(&template.key, self.now_ms).is_some();
        // The sale and its admission are decided on the lines read here; the checkout, on the lines
        // read under the carts' lock, is refused (sale_mismatch) unless they fall in the same sale.
        let logged = match engine.sale_for(skus.iter(), template.sale.as_ref()) {
            _ if known => self.d.checkout_cart(cart, template, None, self.now_ms),
            Ok(sale) => {
                if let Some(sale) = &sale {
                    self.check_admission(sale, &body.user_id, body.admission.as_deref())?;
                }
                self.d.checkout_cart(cart, template, Some(sale.as_ref()), self.now_ms)
            }
            Err(e) => return Err(error::reserve_error(&Refused::Engine(e), &names)),
        };
        let logged = logged.map_err(|e| match e {
            Refused::Engine(CartError::Order(e)) => order_error(&Refused::Engine(e), &names),
            e => super::carts::cart_error(&e, None),
        });
        let logged = self.counted("checkout_cart", logged)?;
        self.synced(logged.lsn).await?;
        Ok(placed(&logged.value))
    }

    pub(super) async fn get_order(&self, id: &str) -> Result<Reply, Problem> {
        let id = order_id(id)?;
        let order = self.d.engine().orders().lock().get(id).cloned();
        let order = order.ok_or_else(|| Problem::not_found("no such order"))?;
        self.synced_reads().await?;
        Ok(json(StatusCode::OK, &order_out(&order)))
    }

    pub(super) async fn attach_payment(&self, id: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let id = order_id(id)?;
        unkeyed(&req, "attaching the same reference again is already a harmless repeat")?;
        let body: AttachIn = self.body(&req)?;
        text_field("provider_ref", &body.provider_ref)?;
        let logged = self.d.attach_payment(id, &body.provider_ref, self.now_ms);
        let logged = self.counted("attach_payment", logged.map_err(|e| order_error(&e, &[])))?;
        self.synced(logged.lsn).await?;
        Ok(json(StatusCode::OK, &order_out(&logged.value)))
    }

    pub(super) async fn cancel_order(&self, id: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let id = order_id(id)?;
        unkeyed(&req, "cancelling is idempotent by nature")?;
        if !req.body().is_empty() {
            super::body::json(&req, false)?;
            super::body::parse_json::<super::dto::Empty>(req.body())?;
        }
        let logged = self.d.cancel_order(id, self.now_ms);
        let logged = self.counted("cancel_order", logged.map_err(|e| order_error(&e, &[])))?;
        self.synced(logged.lsn).await?;
        Ok(json(StatusCode::OK, &order_out(&logged.value)))
    }

    /// A payment provider's event: verified over the raw body, then acted on once; 2xx when durable,
    /// for a duplicate, a type not handled or an order not known (retrying cannot help those).
    pub(super) async fn payment_webhook(&self, req: Request<Bytes>) -> Result<Reply, Problem> {
        let config = &self.app.config.webhooks;
        if config.secrets.is_empty() {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "webhooks_unconfigured",
                "no webhook secret is configured (--webhook-secret): events cannot be verified",
            ));
        }
        super::body::json(&req, true)?;
        let one = |name: &str| -> Result<Option<&str>, Problem> {
            let mut values = req.headers().get_all(name).iter();
            let Some(v) = values.next() else { return Ok(None) };
            if values.next().is_some() {
                return Err(signature_problem(&Refusal::Malformed("a signature header is given twice")));
            }
            v.to_str().map(Some).map_err(|_| signature_problem(&Refusal::Malformed("not visible ASCII")))
        };
        let headers = Headers {
            stripe: one("stripe-signature")?,
            webhook_id: one("webhook-id")?,
            webhook_timestamp: one("webhook-timestamp")?,
            webhook_signature: one("webhook-signature")?,
        };
        let now_s = self.now_ms / 1000;
        if let Err(refusal) =
            webhook::verify(&config.secrets, &headers, req.body(), now_s, config.tolerance_s)
        {
            self.app.metrics.webhook("refused");
            return Err(signature_problem(&refusal));
        }
        let event = webhook::parse(req.body()).map_err(|e| {
            self.app.metrics.webhook("malformed");
            Problem::invalid(e)
        })?;
        let Some(status) = event.status else {
            self.app.metrics.webhook("unhandled_type");
            tracing::info!(event = %event.id, kind = %event.kind, "payment event of a type not handled");
            return Ok(accepted("ignored", "unhandled_type", None));
        };
        let Some(order) = event.order.as_deref().and_then(OrderId::parse) else {
            self.app.metrics.webhook("unknown_order");
            tracing::warn!(event = %event.id, "payment event for no order of ours (metadata.order_id)");
            return Ok(accepted("ignored", "unknown_order", None));
        };
        let payment = Payment {
            status,
            provider_ref: &event.provider_ref,
            amount: event.amount,
            currency: &event.currency,
        };
        let logged = match self.d.payment_outcome(order, &payment, Some(&event.id), self.now_ms) {
            Err(Refused::Engine(OrderError::NotFound)) => {
                self.app.metrics.webhook("unknown_order");
                tracing::warn!(event = %event.id, %order, "payment event for an order not known");
                return Ok(accepted("ignored", "unknown_order", None));
            }
            other => other.map_err(|e| order_error(&e, &[]))?,
        };
        // Duplicates and no-ops too wait for the log: the effect they stand on must be durable.
        self.synced(logged.lsn).await?;
        let state = self.d.engine().orders().lock().get(order).map(|o| o.state.as_str());
        Ok(match logged.value {
            Effect::Moved(s) => {
                self.app.metrics.webhook(match s {
                    OrderState::PaymentMismatch => "payment_mismatch",
                    OrderState::RefundDue => "refund_due",
                    _ => "applied",
                });
                accepted("applied", s.as_str(), state)
            }
            Effect::Duplicate => {
                self.app.metrics.webhook("duplicate");
                accepted("duplicate", "duplicate_event", state)
            }
            Effect::Surplus => {
                self.app.metrics.webhook("surplus_payment");
                tracing::warn!(event = %event.id, %order, "a payment the order does not need: refund it");
                accepted("applied", "surplus_payment", state)
            }
            Effect::Ignored => {
                self.app.metrics.webhook("stale");
                accepted("ignored", "no_change", state)
            }
        })
    }
}

fn accepted(status: &'static str, code: &str, order_state: Option<&str>) -> Reply {
    json(StatusCode::OK, &serde_json::json!({"status": status, "code": code, "order_state": order_state}))
}

fn signature_problem(r: &Refusal) -> Problem {
    match r {
        Refusal::Missing => Problem::new(
            StatusCode::BAD_REQUEST,
            "signature_missing",
            "no Stripe-Signature or webhook-signature header",
        ),
        Refusal::Malformed(why) => Problem::new(
            StatusCode::BAD_REQUEST,
            "signature_malformed",
            format!("the signature header: {why}"),
        ),
        Refusal::Stale(off) => Problem::new(
            StatusCode::BAD_REQUEST,
            "signature_stale",
            format!(
                "the signature's timestamp is {}s in the {}: outside the tolerance",
                off.unsigned_abs(),
                if *off < 0 { "past" } else { "future" }
            ),
        ),
        Refusal::Mismatch => Problem::new(
            StatusCode::BAD_REQUEST,
            "signature_mismatch",
            "no active webhook secret signed this body",
        ),
    }
}

/// 201 with the order placed (and `Idempotent-Replayed` on a repeat).
fn placed((order, replayed): &(Order, bool)) -> Reply {
    let mut response = json(StatusCode::CREATED, &order_out(order));
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/orders/{}", order.id)) {
        headers.insert(header::LOCATION, location);
    }
    if *replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

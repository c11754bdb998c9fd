//! The router and the handlers. A handler parses, makes one call into the durable engine, waits for the
//! log to cover what it is about to say, and maps the result. Nothing here panics on input; a panic
//! anyway becomes a 500 for that request alone.

use super::dto::{self, ItemIn};
use super::error::{self, Problem};
use super::{body, App};
use crate::durable::Durable;
use crate::engine::{IdempotencyKey, Item, Reason, ReservationId, ReserveRequest, SaleId, SkuId, UserId};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub(super) type Reply = Response<Full<Bytes>>;

/// A route the server serves. `template` is its method and path as the OpenAPI description names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    PutSku,
    GetSku,
    AdjustSku,
    Reserve,
    GetReservation,
    Commit,
    Release,
    Extend,
    PutSale,
    GetSale,
    JoinQueue,
    PollQueue,
    PlaceOrder,
    GetOrder,
    AttachPayment,
    CancelOrder,
    PaymentWebhook,
    GetCart,
    DeleteCart,
    PutCartItem,
    DeleteCartItem,
    MergeCart,
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
}

/// Every route, for the OpenAPI check and the metrics' labels.
pub const ROUTES: [Route; 26] = [
    Route::PutSku,
    Route::GetSku,
    Route::AdjustSku,
    Route::Reserve,
    Route::GetReservation,
    Route::Commit,
    Route::Release,
    Route::Extend,
    Route::PutSale,
    Route::GetSale,
    Route::JoinQueue,
    Route::PollQueue,
    Route::PlaceOrder,
    Route::GetOrder,
    Route::AttachPayment,
    Route::CancelOrder,
    Route::PaymentWebhook,
    Route::GetCart,
    Route::DeleteCart,
    Route::PutCartItem,
    Route::DeleteCartItem,
    Route::MergeCart,
    Route::Metrics,
    Route::Healthz,
    Route::Readyz,
    Route::OpenApi,
];

impl Route {
    /// The route as the metrics label it: method and path template, as the OpenAPI description names it.
    pub fn label(self) -> &'static str {
        match self {
            Route::PutSku => "PUT /v1/skus/{sku}",
            Route::GetSku => "GET /v1/skus/{sku}",
            Route::AdjustSku => "POST /v1/skus/{sku}/adjust",
            Route::Reserve => "POST /v1/reservations",
            Route::GetReservation => "GET /v1/reservations/{id}",
            Route::Commit => "POST /v1/reservations/{id}/commit",
            Route::Release => "POST /v1/reservations/{id}/release",
            Route::Extend => "POST /v1/reservations/{id}/extend",
            Route::PutSale => "PUT /v1/sales/{sale}",
            Route::GetSale => "GET /v1/sales/{sale}",
            Route::JoinQueue => "POST /v1/sales/{sale}/queue",
            Route::PollQueue => "GET /v1/sales/{sale}/queue/{ticket}",
            Route::PlaceOrder => "POST /v1/orders",
            Route::GetOrder => "GET /v1/orders/{id}",
            Route::AttachPayment => "POST /v1/orders/{id}/payment",
            Route::CancelOrder => "POST /v1/orders/{id}/cancel",
            Route::PaymentWebhook => "POST /v1/webhooks/payments",
            Route::GetCart => "GET /v1/carts/{cart}",
            Route::DeleteCart => "DELETE /v1/carts/{cart}",
            Route::PutCartItem => "PUT /v1/carts/{cart}/items/{sku}",
            Route::DeleteCartItem => "DELETE /v1/carts/{cart}/items/{sku}",
            Route::MergeCart => "POST /v1/carts/{cart}/merge",
            Route::Metrics => "GET /metrics",
            Route::Healthz => "GET /healthz",
            Route::Readyz => "GET /readyz",
            Route::OpenApi => "GET /openapi.json",
        }
    }

    /// Who gives way when the server is behind: see [`Class`](super::Class).
    pub fn class(self) -> super::Class {
        match self {
            Route::JoinQueue | Route::PollQueue => super::Class::Crowd,
            _ => super::Class::Buyer,
        }
    }

    /// The method and the path template, split from the label.
    pub fn template(self) -> (&'static str, &'static str) {
        self.label().split_once(' ').expect("a label is `METHOD path`")
    }

    /// The route `method path` asks for and its one path parameter, 404 for a path no route has, 405
    /// (naming the methods it has) for a path served with other methods.
    pub fn find<'p>(method: &Method, path: &'p str) -> Result<(Route, &'p str), Problem> {
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        let parts: [Option<&str>; 5] = std::array::from_fn(|_| segments.next());
        if segments.next().is_some() {
            return Err(no_route(path));
        }
        let (get, put, post) = (method == Method::GET, method == Method::PUT, method == Method::POST);
        let delete = method == Method::DELETE;
        let (route, param, allowed) = match parts {
            [Some("v1"), Some("skus"), Some(sku), None, None] if !sku.is_empty() => {
                let route = if get { Some(Route::GetSku) } else { put.then_some(Route::PutSku) };
                (route, sku, "GET, PUT")
            }
            [Some("v1"), Some("skus"), Some(sku), Some("adjust"), None] => {
                (post.then_some(Route::AdjustSku), sku, "POST")
            }
            [Some("v1"), Some("reservations"), None, None, None] => {
                (post.then_some(Route::Reserve), "", "POST")
            }
            [Some("v1"), Some("reservations"), Some(id), None, None] if !id.is_empty() => {
                (get.then_some(Route::GetReservation), id, "GET")
            }
            [Some("v1"), Some("reservations"), Some(id), Some(action), None] => {
                let route = match action {
                    "commit" => Route::Commit,
                    "release" => Route::Release,
                    "extend" => Route::Extend,
                    _ => return Err(no_route(path)),
                };
                (post.then_some(route), id, "POST")
            }
            [Some("v1"), Some("orders"), None, None, None] => (post.then_some(Route::PlaceOrder), "", "POST"),
            [Some("v1"), Some("orders"), Some(id), None, None] if !id.is_empty() => {
                (get.then_some(Route::GetOrder), id, "GET")
            }
            [Some("v1"), Some("orders"), Some(id), Some(action), None] if !id.is_empty() => {
                let route = match action {
                    "payment" => Route::AttachPayment,
                    "cancel" => Route::CancelOrder,
                    _ => return Err(no_route(path)),
                };
                (post.then_some(route), id, "POST")
            }
            [Some("v1"), Some("carts"), Some(cart), None, None] if !cart.is_empty() => {
                let route = if get { Some(Route::GetCart) } else { delete.then_some(Route::DeleteCart) };
                (route, cart, "GET, DELETE")
            }
            [Some("v1"), Some("carts"), Some(cart), Some("merge"), None] if !cart.is_empty() => {
                (post.then_some(Route::MergeCart), cart, "POST")
            }
            [Some("v1"), Some("carts"), Some(cart), Some("items"), Some(sku)]
                if !cart.is_empty() && !sku.is_empty() =>
            {
                // The route's parameter is the whole `cart/items/sku`; the handler splits it.
                let param = path.strip_prefix("/v1/carts/").unwrap_or_default();
                let route =
                    if put { Some(Route::PutCartItem) } else { delete.then_some(Route::DeleteCartItem) };
                (route, param, "PUT, DELETE")
            }
            [Some("v1"), Some("webhooks"), Some("payments"), None, None] => {
                (post.then_some(Route::PaymentWebhook), "", "POST")
            }
            [Some("v1"), Some("sales"), Some(sale), None, None] if !sale.is_empty() => {
                let route = if get { Some(Route::GetSale) } else { put.then_some(Route::PutSale) };
                (route, sale, "GET, PUT")
            }
            [Some("v1"), Some("sales"), Some(sale), Some("queue"), None] if !sale.is_empty() => {
                (post.then_some(Route::JoinQueue), sale, "POST")
            }
            [Some("v1"), Some("sales"), Some(sale), Some("queue"), Some(ticket)]
                if !sale.is_empty() && !ticket.is_empty() =>
            {
                // The route's parameter is the whole `sale/queue/ticket`; the handler splits it.
                let param = path.strip_prefix("/v1/sales/").unwrap_or_default();
                (get.then_some(Route::PollQueue), param, "GET")
            }
            [Some(name), None, None, None, None] => {
                let route = match name {
                    "metrics" => Route::Metrics,
                    "healthz" => Route::Healthz,
                    "readyz" => Route::Readyz,
                    "openapi.json" => Route::OpenApi,
                    _ => return Err(no_route(path)),
                };
                (get.then_some(route), "", "GET")
            }
            _ => return Err(no_route(path)),
        };
        match route {
            Some(route) => Ok((route, param)),
            None => Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} accepts {allowed}, not {method}", shown(path)),
            )
            .allow(allowed)),
        }
    }
}

fn no_route(path: &str) -> Problem {
    Problem::not_found(format!("no route {}", shown(path)))
}

/// A request path as an answer may echo it: its first 200 characters, so that a long path is not
/// reflected whole.
fn shown(path: &str) -> String {
    path.chars().take(200).collect()
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

// Made once: a header named by a string is parsed, and a name outside the standard ones copied to
// the heap, every time it is used.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Answers one request. Never fails and never panics outward: every path ends in a response.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: std::net::IpAddr) -> Reply {
    let started = Instant::now();
    // When the request arrived (its head read): what a commit is judged on time by.
    let arrived_ms = app.clock.now_ms();
    // The caller's X-Request-Id when it sends a usable one (so its traces and ours meet), else ours.
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| (1..=64).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(REQUEST_IDS.fetch_add(1, Ordering::Relaxed)));
    let found = Route::find(req.method(), req.uri().path())
        .and_then(|(route, param)| Ok((route, percent_decoded(param)?.into_owned())));
    let label = found.as_ref().map_or("unmatched", |(route, _)| route.label());
    let mut response = match found {
        Err(problem) => problem.response(),
        Ok((route, param)) => {
            let arrival = Arrival { ms: arrived_ms, at: started };
            let dispatched =
                AssertUnwindSafe(dispatch(&app, route, param, req, arrival, peer)).catch_unwind().await;
            match dispatched {
                Ok(Ok(response)) => response,
                Ok(Err(problem)) => problem.response(),
                Err(_) => {
                    tracing::error!(request_id = ?request_id, route = label, "handler panicked");
                    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").response()
                }
            }
        }
    };
    let status = response.status().as_u16();
    response.headers_mut().insert(&X_REQUEST_ID, request_id.clone());
    let metrics = &app.metrics;
    metrics.requests.with(&super::metrics::RequestLabels { route: label, status }, |c| {
        c.inc();
    });
    let took = started.elapsed();
    metrics.latency.with(&super::metrics::RouteLabels { route: label }, |h| h.observe(took.as_secs_f64()));
    // 503s (shedding, recovery, readiness) are expected and counted; 500 and 507 need a person.
    if status == 500 || status == 507 {
        tracing::warn!(request_id = ?request_id, route = label, status, micros = took.as_micros() as u64, "request failed");
    } else {
        tracing::debug!(request_id = ?request_id, route = label, status, micros = took.as_micros() as u64, "request");
    }
    response
}

/// A path parameter as the client meant it: percent-decoded (`%3A` is `:`), as a URI's segment reads.
/// An encoded `/` would move the segments' boundaries, and is refused.
fn percent_decoded(param: &str) -> Result<std::borrow::Cow<'_, str>, Problem> {
    if !param.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(param));
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let (bytes, mut out, mut i) = (param.as_bytes(), Vec::with_capacity(param.len()), 0);
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) =
            (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        else {
            return Err(Problem::invalid("the path has a malformed percent-encoding"));
        };
        let byte = (hi * 16 + lo) as u8;
        if byte == b'/' {
            return Err(Problem::invalid("the path has an encoded / inside a segment"));
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| Problem::invalid("the path is not UTF-8 once percent-decoded"))
}

/// What a shed join or poll is told.
pub(super) const CROWD_SHED: &str = "the waiting room is busy: retry after the Retry-After seconds (a \
    ticket stays valid; joining again keeps the place already taken)";

/// When a request's head was read, on the server's clock (for judging deadlines) and the monotonic
/// one (for the queueing metric).
#[derive(Clone, Copy)]
struct Arrival {
    ms: u64,
    at: Instant,
}

async fn dispatch(
    app: &Arc<App>,
    route: Route,
    param: String,
    req: Request<Incoming>,
    arrival: Arrival,
    peer: std::net::IpAddr,
) -> Result<Reply, Problem> {
    // Before anything is read or decided: a refusal here costs a hash and changes nothing.
    let access = super::auth::admit(&app.config.keys, route, req.headers()).inspect_err(|p| {
        app.metrics.refused(p.code, route.label());
    })?;
    match route {
        Route::Healthz => return Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        Route::Readyz => return readyz(app),
        Route::Metrics => return Ok(metrics(app)),
        Route::OpenApi => return Ok(openapi(app)),
        _ => {}
    }
    // The body first: a request counts as in flight only once it has all arrived, so slow uploads
    // hold their connections (bounded, and cut below a minimum rate) but never the in-flight slots
    // that requests ready to be decided need.
    let req = body::collect(&app.config, req).await?;
    // Health and metrics stay answerable under overload; the API sheds, the crowd first.
    let class = route.class();
    // A poll is shed only once its ticket is read: an admitted shopper's is served (it carries the
    // admission whose session is already running), a waiting one's told when to come back.
    let mut shedding_poll = false;
    let entered = match app.enter(class) {
        None if route == Route::PollQueue => {
            shedding_poll = true;
            app.enter(super::Class::Buyer)
        }
        entered => entered,
    };
    let Some(_in_flight) = entered else {
        app.metrics.shed[class as usize].inc();
        return Err(match class {
            super::Class::Crowd => Problem::overloaded(CROWD_SHED),
            super::Class::Buyer => Problem::overloaded("too many requests in progress; retry shortly"),
        });
    };
    app.metrics.queued[class as usize].observe(arrival.at.elapsed().as_secs_f64());
    let d = app.durable().ok_or_else(|| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "recovering; not ready yet")
    })?;
    let now_ms = app.clock.now_ms();
    // A decision on a deadline is judged at the request's arrival, within the engine's grace.
    let judged_ms = d.engine().judged_at(arrival.ms, now_ms);
    let h = Handler { app, d, now_ms, judged_ms, access, peer };
    match route {
        Route::PutSku => h.put_sku(&param, req).await,
        Route::GetSku => h.get_sku(&param).await,
        Route::AdjustSku => h.adjust_sku(&param, req).await,
        Route::Reserve => h.reserve(req).await,
        Route::GetReservation => h.get_reservation(&param).await,
        Route::Commit | Route::Release => h.end(route, &param, req).await,
        Route::Extend => h.extend(&param, req).await,
        Route::PutSale => h.put_sale(&param, req).await,
        Route::GetSale => h.get_sale(&param).await,
        Route::JoinQueue => h.join_queue(&param, req).await,
        Route::PollQueue => h.poll_queue(&param, shedding_poll).await,
        Route::PlaceOrder => h.place_order(req).await,
        Route::GetOrder => h.get_order(&param).await,
        Route::AttachPayment => h.attach_payment(&param, req).await,
        Route::CancelOrder => h.cancel_order(&param, req).await,
        Route::PaymentWebhook => h.payment_webhook(req).await,
        Route::GetCart => h.get_cart(&param).await,
        Route::DeleteCart => h.delete_cart(&param, req).await,
        Route::PutCartItem | Route::DeleteCartItem => h.set_cart_item(&param, req).await,
        Route::MergeCart => h.merge_cart(&param, req).await,
        Route::Metrics | Route::Healthz | Route::Readyz | Route::OpenApi => unreachable!("answered above"),
    }
}

fn readyz(app: &App) -> Result<Reply, Problem> {
    if app.is_ready() {
        Ok(json(StatusCode::OK, &serde_json::json!({"status": "ready"})))
    } else if app.durable().is_none() {
        Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "recovering"))
    } else {
        Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "stopping"))
    }
}

fn metrics(app: &App) -> Reply {
    let text = app.metrics.render(app.durable().map(|d| &**d), app.is_ready(), app.clock.now_ms());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn openapi(app: &App) -> Reply {
    let mut response = Response::new(Full::new(app.openapi()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let bytes = serde_json::to_vec(body).expect("response types serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) struct Handler<'a> {
    pub(super) app: &'a App,
    pub(super) d: &'a Durable,
    pub(super) now_ms: u64,
    /// The time a commit, release or extend is judged at: its arrival, within the commit grace
    /// (`Engine::judged_at`), so that waiting in the server never costs a hold.
    pub(super) judged_ms: u64,
    /// Who the caller was let in as (`auth.rs`).
    pub(super) access: super::auth::Access,
    /// The connection's peer (a proxy's, behind one: see `limit.rs`).
    pub(super) peer: std::net::IpAddr,
}

impl Handler<'_> {
    /// Waits until the log holds, on stable storage, every record up to `lsn`.
    pub(super) async fn synced(&self, lsn: holdfast_wal::Lsn) -> Result<(), Problem> {
        self.d.wal().durable(lsn).await.map_err(|e| error::log_error(&e))
    }

    /// Waits until everything applied so far is durable: a read must not show what a crash could take
    /// back. (Records are appended before they are applied, so the appended LSN covers what was read.)
    pub(super) async fn synced_reads(&self) -> Result<(), Problem> {
        self.synced(self.d.wal().appended_lsn()).await
    }

    fn outcome(&self, op: &'static str, outcome: &'static str) {
        self.app.metrics.outcomes.with(&super::metrics::OutcomeLabels { op, outcome }, |c| {
            c.inc();
        });
    }

    /// Counts the outcome of a mutation and passes it on.
    pub(super) fn counted<T>(&self, op: &'static str, result: Result<T, Problem>) -> Result<T, Problem> {
        self.outcome(op, result.as_ref().map_or_else(|p| p.code, |_| "ok"));
        result
    }

    /// The request's JSON body, declared `application/json` (415 otherwise).
    pub(super) fn body<T: DeserializeOwned>(&self, req: &Request<Bytes>) -> Result<T, Problem> {
        body::json(req, true)?;
        body::parse_json(req.body())
    }

    async fn put_sku(&self, sku: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        not_a_dot_segment("a SKU", sku)?;
        let sku = SkuId::new(sku)?;
        unkeyed(
            &req,
            "it sets on_hand to the value sent; for a keyed change use POST /v1/skus/{sku}/adjust",
        )?;
        let body: dto::SetStock = self.body(&req)?;
        let logged = self.d.set_stock(&sku, body.on_hand, self.now_ms).map_err(|e| error::stock_error(&e));
        let logged = self.counted("set_stock", logged)?;
        self.synced(logged.lsn).await?;
        Ok(json(StatusCode::OK, &dto::StockOut::new(sku.as_str(), logged.value)))
    }

    async fn get_sku(&self, sku: &str) -> Result<Reply, Problem> {
        let sku = SkuId::new(sku)?;
        let stock = self.d.engine().stock(sku.as_str()).ok_or_else(|| Problem::not_found("no such SKU"))?;
        self.synced_reads().await?;
        Ok(json(StatusCode::OK, &dto::StockOut::new(sku.as_str(), stock)))
    }

    async fn adjust_sku(&self, sku: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let sku = SkuId::new(sku)?;
        let key = idempotency_key(&req)?;
        let body: dto::Adjust = self.body(&req)?;
        if body.reason.is_empty() {
            return Err(Problem::invalid("reason must not be empty: say why stock changed"));
        }
        // The mirror marks a Postgres restock row applied by this prefix of the record's reason: no
        // caller may write it, or a made-up reason could mark a pending restock taken (and lose it).
        if body.reason.starts_with(crate::reconcile::mirror::ADJUSTMENT_PREFIX) {
            return Err(Problem::invalid(format!(
                "reason: the prefix {} is reserved for restocks taken from Postgres",
                crate::reconcile::mirror::ADJUSTMENT_PREFIX
            )));
        }
        let reason = Reason::new(&body.reason).map_err(|e| Problem::invalid(format!("reason: {e}")))?;
        let logged = self.d.adjust_stock_keyed(&sku, body.delta, &reason, key.as_ref(), self.now_ms);
        let logged = self.counted("adjust_stock", logged.map_err(|e| error::stock_error(&e)))?;
        // A repeat waits like a first answer: for the log to cover the record it depends on.
        self.synced(logged.lsn).await?;
        let mut response = json(StatusCode::OK, &dto::StockOut::new(sku.as_str(), logged.value.stock));
        if logged.value.replayed {
            response.headers_mut().insert(&IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        Ok(response)
    }

    async fn reserve(&self, req: Request<Bytes>) -> Result<Reply, Problem> {
        let anonymous = self.access == super::auth::Access::Anonymous;
        let key = idempotency_key(&req)?;
        // A caller without a key learns nothing from the server but that it needs one, unless its
        // reserve is a shopper's: well formed, with an admission. A shopper's Idempotency-Key is its
        // own (kept apart by user), so it can neither probe nor take the checkout service's keys.
        let parsed = self.body::<dto::Reserve>(&req).and_then(|b| {
            let key = if anonymous { key.map(|k| shopper_key(&b.user_id, &k)).transpose()? } else { key };
            Ok((reserve_request(&b, key)?, b))
        });
        let (request, body) = match parsed {
            Ok((request, body)) if !anonymous || body.admission.is_some() => (request, body),
            Err(problem) if !anonymous => return Err(problem),
            _ => return Err(self.keyless_reserve()),
        };
        // A retry of a remembered success is answered from the key before any admission check: the
        // admission may have ended since, yet the units are held for this caller (invariant 3). It is
        // answered from this one look-up, so a key that lapses meanwhile is never decided afresh here.
        let logged = match self.d.remembered(&request, self.now_ms) {
            Ok(Some(hit)) => hit,
            Ok(None) | Err(_) => {
                if anonymous {
                    self.admitted_shopper(&body, &request)?;
                }
                self.reserve_new(&body, &request)?
            }
        };
        self.outcome("reserve", if logged.value.replayed { "replayed" } else { "ok" });
        self.synced(logged.lsn).await?;
        let id = logged.value.id.text();
        let out = dto::Reserved {
            id: &id,
            state: "active",
            expires_at: crate::clock::rfc3339(logged.value.expires_at_ms),
            items: &body.items,
        };
        let mut response = json(StatusCode::CREATED, &out);
        let headers = response.headers_mut();
        let location = [b"/v1/reservations/", id.as_bytes()].concat();
        if let Ok(location) = HeaderValue::from_maybe_shared(Bytes::from(location)) {
            headers.insert(header::LOCATION, location);
        }
        if logged.value.replayed {
            headers.insert(&IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        Ok(response)
    }

    /// A reserve without an API key: only a shopper's, in a sale with a waiting room, with the
    /// admission it gave this user (checked again as any reserve's is).
    fn admitted_shopper(&self, body: &dto::Reserve, request: &ReserveRequest) -> Result<(), Problem> {
        let skus = request.items.iter().map(|i| &i.sku);
        match self.d.engine().sale_for(skus, request.sale.as_ref()) {
            Ok(Some(sale)) if self.d.engine().is_gated(sale.as_str()) => {
                self.check_admission(&sale, &body.user_id, body.admission.as_deref())
            }
            _ => Err(self.keyless_reserve()),
        }
    }

    fn keyless_reserve(&self) -> Problem {
        self.app.metrics.refused("unauthenticated", Route::Reserve.label());
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a reserve needs a key (Authorization: Bearer <key>), unless it is a shopper's in a sale with a \
             waiting room, carrying its admission",
        )
    }

    /// A reserve the key does not answer: admission first (gated sales), then the engine decides.
    fn reserve_new(
        &self,
        body: &dto::Reserve,
        request: &ReserveRequest,
    ) -> Result<crate::durable::Logged<crate::engine::Reserved>, Problem> {
        // The sale follows from the SKUs: a gated sale's SKU needs its admission, named or not. (A
        // SKU that is in no sale, or a mismatch, is the engine's to answer.)
        let skus = request.items.iter().map(|i| &i.sku);
        let reserved = match self.d.engine().sale_for(skus, request.sale.as_ref()) {
            Ok(sale) => {
                if let Some(sale) = &sale {
                    self.check_admission(sale, &body.user_id, body.admission.as_deref())?;
                }
                // Should a sale's SKUs change before the engine decides, it refuses the reserve.
                self.d.reserve_in(request, sale.as_ref(), self.now_ms)
            }
            Err(_) => self.d.reserve(request, self.now_ms),
        };
        reserved.or_else(|e| {
            let skus: Vec<&str> = body.items.iter().map(|i| i.sku.as_str()).collect();
            self.counted("reserve", Err(error::reserve_error(&e, &skus)))
        })
    }

    async fn get_reservation(&self, id: &str) -> Result<Reply, Problem> {
        let id = reservation_id(id)?;
        let view = self.view(id)?;
        self.synced_reads().await?;
        Ok(json(StatusCode::OK, &view))
    }

    fn view(&self, id: ReservationId) -> Result<dto::ReservationOut, Problem> {
        let view = self.d.engine().reservation(id, self.now_ms);
        view.map(|v| dto::ReservationOut::from(&v)).ok_or_else(|| Problem::not_found("no such reservation"))
    }

    /// Commit or release: idempotent by nature. An `Idempotency-Key` is checked for form and accepted.
    async fn end(&self, route: Route, id: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let id = reservation_id(id)?;
        idempotency_key(&req)?;
        if !req.body().is_empty() {
            body::json(&req, false)?;
            body::parse_json::<dto::Empty>(req.body())?;
        }
        let op = if route == Route::Commit { "commit" } else { "release" };
        self.counted(op, self.not_an_order(id))?;
        let (op, result) = match route {
            Route::Commit => ("commit", self.d.commit(id, self.judged_ms)),
            _ => ("release", self.d.release(id, self.judged_ms)),
        };
        let logged = self.counted(op, result.map_err(|e| error::reservation_error(&e)))?;
        // Read before the wait: the state is terminal now, and after the wait it may be forgotten.
        let view = self.view(id)?;
        self.synced(logged.lsn).await?;
        Ok(json(StatusCode::OK, &view))
    }

    async fn extend(&self, id: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let id = reservation_id(id)?;
        unkeyed(&req, "each extend sets the deadline anew from now; a repeat sets it again")?;
        let body: dto::Extend = self.body(&req)?;
        self.counted("extend", self.not_an_order(id))?;
        let result = self.d.extend(id, body.ttl_ms, self.judged_ms).map_err(|e| error::reservation_error(&e));
        let logged = self.counted("extend", result)?;
        // The answer is the state as of this extend's own record: a commit, release or extend that
        // came after it (and that this sync may not cover) is not this request's to report.
        let mut view = self.view(id)?;
        (view.state, view.ended_at) = ("active", None);
        view.expires_at = crate::clock::rfc3339(logged.value);
        self.synced(logged.lsn).await?;
        Ok(json(StatusCode::OK, &view))
    }
}

impl Handler<'_> {
    /// Refuses to end or extend an order's reservation (409 `order_reservation`): the order owns it.
    /// Committed here, a payment that then fails could not return the units (the order would be
    /// cancelled with its units sold); released or extended here, the order's `pay_by` and its hold
    /// would disagree. Orders move their holds through `/v1/orders/{id}` and the payment webhooks.
    fn not_an_order(&self, id: ReservationId) -> Result<(), Problem> {
        let Some(order) = self.d.engine().orders().lock().order_of(id) else { return Ok(()) };
        Err(Problem::new(
            StatusCode::CONFLICT,
            "order_reservation",
            format!(
                "reservation {id} belongs to order {order}: it is paid by the payment webhook, \
                 cancelled with POST /v1/orders/{order}/cancel, or expires at the order's pay_by"
            ),
        ))
    }
}

fn reservation_id(text: &str) -> Result<ReservationId, Problem> {
    ReservationId::parse(text).ok_or_else(|| {
        // The description's form, naming what no id can be (sequence 0, a long form with tag 0).
        if ReservationId::digits(text).is_some() {
            return Problem::not_found(format!("no reservation {text}"));
        }
        let shown: String = text.chars().take(64).collect();
        Problem::invalid(format!("{shown:?} is not a reservation id (rsv_ and 32 hex digits, or 16 for one issued before ids had tags)"))
    })
}

/// Keys a keyless shopper's reserves are remembered under: `shopper-` and a digest of user and key.
const SHOPPER_KEY_PREFIX: &str = "shopper-";

fn shopper_key(user: &str, key: &IdempotencyKey) -> Result<IdempotencyKey, Problem> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [user.as_bytes(), key.as_str().as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    IdempotencyKey::new(&format!("{SHOPPER_KEY_PREFIX}{:032x}", h.digest128()))
        .map_err(|e| Problem::invalid(format!("Idempotency-Key: {e}")))
}

pub(super) fn idempotency_key<B>(req: &Request<B>) -> Result<Option<IdempotencyKey>, Problem> {
    let mut values = req.headers().get_all("idempotency-key").iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Problem::invalid("Idempotency-Key is given more than once"));
    }
    let text = value.to_str().map_err(|_| Problem::invalid("Idempotency-Key must be visible ASCII"))?;
    // The keys restocks from Postgres are taken under: a caller holding one could block a restock.
    for (prefix, whose) in [
        (crate::reconcile::mirror::ADJUSTMENT_KEY_PREFIX, "restocks taken from Postgres"),
        (SHOPPER_KEY_PREFIX, "shoppers' own keys"),
    ] {
        if text.starts_with(prefix) {
            return Err(Problem::invalid(format!(
                "Idempotency-Key: the prefix {prefix} is reserved for {whose}"
            )));
        }
    }
    IdempotencyKey::new(text).map(Some).map_err(|e| Problem::invalid(format!("Idempotency-Key: {e}")))
}

/// Refuses an `Idempotency-Key` on a route that cannot honour one (400): ignoring it would let a
/// client believe a retry is harmless where it is not. `why` says what the route does instead.
pub(super) fn unkeyed<B>(req: &Request<B>, why: &str) -> Result<(), Problem> {
    if req.headers().contains_key("idempotency-key") {
        let route = req.uri().path();
        let shown: String = route.chars().take(100).collect();
        return Err(Problem::invalid(format!("{shown} takes no Idempotency-Key: {why}")));
    }
    Ok(())
}

/// `.` and `..` are names by the alphabet, but every URL library rewrites them out of a path, so a
/// SKU or sale of that name could be created by hand and then never reached: refused when created.
pub(super) fn not_a_dot_segment(what: &str, name: &str) -> Result<(), Problem> {
    if matches!(name, "." | "..") {
        return Err(Problem::invalid(format!(
            "{what} may not be named {name:?}: URL libraries remove it from paths, so no client could reach it"
        )));
    }
    Ok(())
}

/// An admission's form, checked whether or not the sale has a waiting room: the description states
/// it for every request, and a client that sends a malformed one has a bug worth hearing about.
pub(super) fn admission_form(admission: Option<&str>) -> Result<(), Problem> {
    match admission {
        Some(a) if a.is_empty() || a.len() > 1024 || !a.bytes().all(|b| b.is_ascii_graphic()) => Err(
            Problem::invalid("admission: 1 to 1024 visible ASCII characters, as the waiting room gave it"),
        ),
        _ => Ok(()),
    }
}

fn reserve_request(body: &dto::Reserve, key: Option<IdempotencyKey>) -> Result<ReserveRequest, Problem> {
    let items = body
        .items
        .iter()
        .enumerate()
        .map(|(n, ItemIn { sku, qty })| {
            let sku = SkuId::new(sku).map_err(|e| Problem::invalid(format!("items[{n}].sku: {e}")))?;
            Ok(Item { sku, qty: *qty })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    admission_form(body.admission.as_deref())?;
    let user = UserId::new(&body.user_id).map_err(|e| Problem::invalid(format!("user_id: {e}")))?;
    let sale = match &body.sale_id {
        Some(sale) => Some(SaleId::new(sale).map_err(|e| Problem::invalid(format!("sale_id: {e}")))?),
        None => None,
    };
    Ok(ReserveRequest { items, ttl_ms: body.ttl_ms, user: Some(user), sale, idempotency_key: key })
}

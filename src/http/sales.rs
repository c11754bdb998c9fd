//! Sales and their waiting rooms: configuration, joining, polling, and the admission check of reserve.

use super::dto::{self, QueueOut, RoomOut};
use super::error::{self, Problem};
use super::limit::Verdict;
use super::routes::{json, Handler, Reply};
use crate::clock::rfc3339;
use crate::durable::Logged;
use crate::engine::{
    Joined, QueueError, QueueOrder, QueueState, RoomConfig, RoomView, SaleId, SkuId, UserId, ADMIT_PER_S_MAX,
    SESSION_MS_MAX, SESSION_MS_MIN,
};
use crate::limits::{ROOM_JOINERS_MAX, ROOM_SKUS_MAX};
use crate::waitroom::{self, Claims, Kind, Signer, TICKET_TTL_MS};
use bytes::Bytes;
use hyper::{Request, StatusCode};

const MAX_ACTIVE_DEFAULT: u32 = 1_000;
const SESSION_MS_DEFAULT: u64 = 5 * 60 * 1000;

fn not_admitted(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "not_admitted", detail)
}

fn invalid_ticket(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "invalid_ticket", detail)
}

fn queue_error(e: &crate::durable::Refused<QueueError>) -> Problem {
    use crate::durable::Refused;
    match e {
        Refused::Log(e) => error::log_error(e),
        Refused::Engine(QueueError::NoRoom) => Problem::not_found("no such sale, or it has no waiting room"),
        Refused::Engine(QueueError::Full) => Problem::new(
            StatusCode::CONFLICT,
            "queue_full",
            format!("the waiting room holds {ROOM_JOINERS_MAX} shoppers, its most"),
        ),
        Refused::Engine(QueueError::Locked { what }) => Problem::new(
            StatusCode::CONFLICT,
            "sale_locked",
            match *what {
                "order" => "order cannot change once shoppers have joined",
                _ => "opens_at cannot change once the waiting room has opened",
            },
        ),
        Refused::Engine(QueueError::RoomRequired) => Problem::new(
            StatusCode::CONFLICT,
            "sale_locked",
            "this sale has a waiting room: send its settings with the limit",
        ),
        Refused::Engine(QueueError::UnknownSku { index }) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_sku",
            format!("skus[{index}] names no SKU: create the stock first"),
        ),
        Refused::Engine(QueueError::SkuInOtherSale { index }) => Problem::new(
            StatusCode::CONFLICT,
            "sku_in_other_sale",
            format!("skus[{index}] belongs to another sale: a SKU is in one sale at a time (take it out of that sale first)"),
        ),
        Refused::Engine(QueueError::Invalid(e)) => error::request_error(*e),
        Refused::Engine(QueueError::LogRefused) => unreachable!("the durable layer reports the log's error"),
    }
}

/// The SKUs a `PUT /v1/sales` body names, checked one by one (at most `ROOM_SKUS_MAX`, none twice).
fn sale_skus(skus: &[String]) -> Result<Vec<SkuId>, Problem> {
    if skus.len() > ROOM_SKUS_MAX {
        return Err(Problem::invalid(format!("skus: at most {ROOM_SKUS_MAX} SKUs")));
    }
    let skus = (skus.iter().enumerate())
        .map(|(n, s)| SkuId::new(s).map_err(|e| Problem::invalid(format!("skus[{n}]: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = (0..skus.len()).find(|&n| skus[..n].contains(&skus[n])) {
        return Err(Problem::invalid(format!("skus[{n}] repeats a SKU named earlier")));
    }
    Ok(skus)
}

/// The room a `PUT /v1/sales` body describes, its fields checked one by one.
fn room_config(body: &dto::SetSale) -> Result<RoomConfig, Problem> {
    let skus = body.skus.as_ref().ok_or_else(|| Problem::invalid("a waiting room needs skus"))?;
    if skus.is_empty() {
        return Err(Problem::invalid(format!("skus: between 1 and {ROOM_SKUS_MAX} SKUs")));
    }
    let skus = sale_skus(skus)?;
    let opens_at =
        body.opens_at.as_deref().ok_or_else(|| Problem::invalid("a waiting room needs opens_at"))?;
    let opens_at_ms = crate::clock::parse_rfc3339_ms(opens_at)
        .ok_or_else(|| Problem::invalid(format!("opens_at: {opens_at:?} is not an RFC 3339 date-time")))?;
    let admit_per_s =
        body.admission_rate.ok_or_else(|| Problem::invalid("a waiting room needs admission_rate"))?;
    if !(1..=ADMIT_PER_S_MAX).contains(&admit_per_s) {
        return Err(Problem::invalid(format!("admission_rate must be between 1 and {ADMIT_PER_S_MAX}")));
    }
    let max_active = body.max_active.unwrap_or(MAX_ACTIVE_DEFAULT);
    if !(1..=ROOM_JOINERS_MAX).contains(&max_active) {
        return Err(Problem::invalid(format!("max_active must be between 1 and {ROOM_JOINERS_MAX}")));
    }
    let session_ms = body.session_ms.unwrap_or(SESSION_MS_DEFAULT);
    if !(SESSION_MS_MIN..=SESSION_MS_MAX).contains(&session_ms) {
        return Err(Problem::invalid(format!(
            "session_ms must be between {SESSION_MS_MIN} and {SESSION_MS_MAX}"
        )));
    }
    let order = match body.order.as_deref().unwrap_or("fifo") {
        "fifo" => QueueOrder::Fifo,
        "lottery" => QueueOrder::Lottery,
        other => return Err(Problem::invalid(format!("order must be fifo or lottery, not {other:?}"))),
    };
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let seed = u64::from_le_bytes(seed);
    Ok(RoomConfig { skus, opens_at_ms, admit_per_s, max_active, session_ms, order, seed })
}

fn room_out(v: &RoomView) -> RoomOut {
    let c = &v.config;
    RoomOut {
        skus: c.skus.iter().map(|s| s.as_str().to_owned()).collect(),
        opens_at: rfc3339(c.opens_at_ms),
        admission_rate: c.admit_per_s,
        max_active: c.max_active,
        session_ms: c.session_ms,
        order: c.order.as_str(),
        opened_at: v.opened_at_ms.map(rfc3339),
        joined: v.joined,
        admitted: v.admitted,
        waiting: v.waiting,
        active: v.active,
        pending: v.pending,
        sold_out: v.sold_out,
        worst_case_polls_per_s: waitroom::worst_case_polls_per_s(v.waiting, c.admit_per_s).ceil() as u64,
    }
}

impl Handler<'_> {
    fn signer(&self) -> Result<&Signer, Problem> {
        self.app
            .signer()
            .ok_or_else(|| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "not ready"))
    }

    fn sale_out<'s>(&self, sale: &'s SaleId) -> Result<dto::SaleOut<'s>, Problem> {
        let engine = self.d.engine();
        let per_user_limit =
            engine.sale_limit(sale.as_str()).ok_or_else(|| Problem::not_found("no such sale"))?;
        let waiting_room = engine.room_view(sale.as_str()).map(|v| room_out(&v));
        let skus =
            engine.sale_skus(sale.as_str()).unwrap_or_default().iter().map(|s| s.to_string()).collect();
        // As it is applied: within the TTL range this server runs with.
        let c = engine.config();
        let cart_hold_ms =
            engine.carts().lock().hold_ms(sale.as_str()).map(|ms| ms.clamp(c.ttl_ms_min, c.ttl_ms_max));
        Ok(dto::SaleOut { sale: sale.as_str(), per_user_limit, skus, waiting_room, cart_hold_ms })
    }

    pub(super) async fn put_sale(&self, sale: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        super::routes::not_a_dot_segment("a sale", sale)?;
        let sale = SaleId::new(sale)?;
        super::routes::unkeyed(&req, "it sets the sale's settings to the values sent")?;
        let body: dto::SetSale = self.body(&req)?;
        let c = self.d.config();
        let hold_ms = body.cart_hold_ms.unwrap_or(0);
        if hold_ms != 0 && !(c.ttl_ms_min..=c.ttl_ms_max).contains(&hold_ms) {
            return Err(Problem::invalid(format!(
                "cart_hold_ms must be between {} and {} (a hold is a reservation's TTL)",
                c.ttl_ms_min, c.ttl_ms_max
            )));
        }
        let lsn = if body.has_room() {
            let room = room_config(&body)?;
            let logged = self.d.configure_sale(&sale, body.per_user_limit, &room, self.now_ms);
            self.counted("set_sale", logged.map_err(|e| queue_error(&e)))?.lsn
        } else {
            let skus = sale_skus(body.skus.as_deref().unwrap_or_default())?;
            let logged = self.d.set_sale(&sale, body.per_user_limit, &skus, self.now_ms);
            self.counted("set_sale", logged.map_err(|e| queue_error(&e)))?.lsn
        };
        // Its own record, after the sale's: a PUT that dies between the two was not acknowledged,
        // and its retry sets both.
        let held = self.d.set_cart_hold(&sale, hold_ms, self.now_ms);
        let lsn = held.map_err(|e| super::carts::cart_error(&e, None))?.lsn.max(lsn);
        self.synced(lsn).await?;
        Ok(json(StatusCode::OK, &self.sale_out(&sale)?))
    }

    pub(super) async fn get_sale(&self, sale: &str) -> Result<Reply, Problem> {
        let sale = SaleId::new(sale)?;
        let out = self.sale_out(&sale)?;
        self.synced_reads().await?;
        Ok(json(StatusCode::OK, &out))
    }

    pub(super) async fn join_queue(&self, sale: &str, req: Request<Bytes>) -> Result<Reply, Problem> {
        let sale = SaleId::new(sale)?;
        // Joining is idempotent by user (a repeat keeps the place): a key is checked for form and
        // accepted, as on commit and release.
        super::routes::idempotency_key(&req)?;
        let body: dto::JoinQueue = self.body(&req)?;
        let user = UserId::new(&body.user_id).map_err(|e| Problem::invalid(format!("user_id: {e}")))?;
        let signer = self.signer()?;
        // Counted per client address once the join is known to be well formed and not shed; given
        // back unless it adds a shopper (`limit.rs`).
        let limiter = &self.app.joins;
        let client = limiter.client(self.peer, req.headers());
        // A shopper already in the queue adds no one: answered whatever the address's budget.
        let repeat = self.d.engine().queue_view(sale.as_str(), user.as_str()).is_some();
        let verdict = if repeat { Verdict::Untracked } else { limiter.check(client) };
        if let Verdict::Refused(limited) = verdict {
            self.app.metrics.refused("rate_limited", super::Route::JoinQueue.label());
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many waiting-room joins from this address: retry after the Retry-After seconds",
            )
            .retry_after(limited.retry_after_s));
        }
        let logged = self.d.join_queue(&sale, &user, self.now_ms);
        if !repeat && !matches!(logged, Ok(Logged { value: Joined::Queued { again: false, .. }, .. })) {
            limiter.refund(client);
        }
        let logged = self.counted("join_queue", logged.map_err(|e| queue_error(&e)))?;
        self.synced(logged.lsn).await?;
        let (view, again) = match logged.value {
            Joined::SoldOut => {
                return Ok(json(StatusCode::OK, &QueueOut { status: "sold_out", ..QueueOut::default() }))
            }
            Joined::Queued { view, again } => (view, again),
        };
        let room =
            self.d.engine().room_view(sale.as_str()).ok_or_else(|| Problem::not_found("no such sale"))?;
        let expires_at_ms = view.joined_at_ms.max(room.config.opens_at_ms).saturating_add(TICKET_TTL_MS);
        let claims = Claims { sale: sale.as_str().to_owned(), user: user.as_str().to_owned(), expires_at_ms };
        let ticket = signer.issue(Kind::Ticket, &claims);
        let mut out = self.queue_out(&claims, view.state, &room);
        out.ticket = Some(ticket);
        out.joined_at = Some(rfc3339(view.joined_at_ms));
        Ok(json(if again { StatusCode::OK } else { StatusCode::CREATED }, &out))
    }

    /// `shedding`: the crowd is being shed; a waiting shopper's poll is then answered 503 with a
    /// `Retry-After` of the room's own poll interval for that place, an admitted shopper's served.
    pub(super) async fn poll_queue(&self, param: &str, shedding: bool) -> Result<Reply, Problem> {
        let (sale, ticket) =
            param.split_once("/queue/").ok_or_else(|| Problem::not_found("no such route"))?;
        let sale = SaleId::new(sale)?;
        let signer = self.signer()?;
        let claims = signer
            .verify(Kind::Ticket, ticket, sale.as_str(), self.now_ms)
            .map_err(|e| invalid_ticket(format!("the ticket {e}")))?;
        let engine = self.d.engine();
        let room = engine.room_view(sale.as_str()).ok_or_else(|| Problem::not_found("no such sale"))?;
        let view = engine.queue_view(sale.as_str(), &claims.user).ok_or_else(|| {
            invalid_ticket("the ticket's holder is not in this queue (was the data directory replaced?)")
        })?;
        let mut out = self.queue_out(&claims, view.state, &room);
        if shedding && out.status == "waiting" {
            self.app.metrics.shed[super::Class::Crowd as usize].inc();
            let wait_s = out.poll_after_ms.unwrap_or(1_000).div_ceil(1_000);
            return Err(Problem::overloaded(super::routes::CROWD_SHED).retry_after(wait_s));
        }
        // What the answer says must survive a crash: an admission shown must be on disk.
        self.synced_reads().await?;
        out.joined_at = Some(rfc3339(view.joined_at_ms));
        Ok(json(StatusCode::OK, &out))
    }

    fn queue_out(&self, claims: &Claims, state: QueueState, room: &RoomView) -> QueueOut {
        let c = &room.config;
        match state {
            QueueState::SoldOut => QueueOut { status: "sold_out", ..QueueOut::default() },
            QueueState::Admitted { session_ends_ms, .. } if session_ends_ms <= self.now_ms => {
                QueueOut { status: "session_over", ..QueueOut::default() }
            }
            QueueState::Admitted { session_ends_ms, .. } => {
                let admission = Claims { expires_at_ms: session_ends_ms, ..claims.clone() };
                let token = self.app.signer().map(|s| s.issue(Kind::Admission, &admission));
                QueueOut {
                    status: "admitted",
                    admission: token,
                    admission_expires_at: Some(rfc3339(session_ends_ms)),
                    ..QueueOut::default()
                }
            }
            QueueState::Waiting { ahead } => {
                let place = ahead.unwrap_or_else(|| waitroom::stand_in_place(&claims.user, room.waiting));
                let eta_in = waitroom::eta_in_ms(place, c.admit_per_s, self.now_ms, c.opens_at_ms);
                QueueOut {
                    status: "waiting",
                    position: ahead.map(|a| a + 1),
                    eta: Some(rfc3339(self.now_ms + eta_in)),
                    poll_after_ms: Some(waitroom::poll_after_ms(eta_in, &claims.user, self.now_ms)),
                    ..QueueOut::default()
                }
            }
        }
    }

    /// A reserve in a gated sale needs this user's unexpired admission to it (403 `not_admitted`).
    pub(super) fn check_admission(
        &self,
        sale: &SaleId,
        user: &str,
        token: Option<&str>,
    ) -> Result<(), Problem> {
        if !self.d.engine().is_gated(sale.as_str()) {
            return Ok(());
        }
        let token = token.ok_or_else(|| {
            not_admitted(format!(
                "sale {} has a waiting room: reserve with the admission it gives",
                sale.as_str()
            ))
        })?;
        let claims = self
            .signer()?
            .verify(Kind::Admission, token, sale.as_str(), self.now_ms)
            .map_err(|e| not_admitted(format!("the admission {e}")))?;
        if claims.user != user {
            return Err(not_admitted("the admission was issued to another user"));
        }
        Ok(())
    }
}

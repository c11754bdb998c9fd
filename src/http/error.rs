//! Errors as `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail` and a stable
//! machine word in `code`. Every refusal of the engine or the log maps to exactly one of them here.

use crate::durable::Refused;
use crate::engine::{NameError, RequestError, ReservationError, ReserveError, StockError};
use bytes::Bytes;
use holdfast_wal::WalError;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// For 405: the methods the path accepts.
    allow: Option<&'static str>,
    /// The connection cannot be reused (its request body was not read to the end).
    close: bool,
    /// For `overloaded`: seconds to wait (`Retry-After`, 1 unless set).
    retry_after_s: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), allow: None, close: false, retry_after_s: None }
    }

    pub fn allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }

    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn overloaded(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn response(&self) -> Response<Full<Bytes>> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            r#type: String,
            title: &'a str,
            status: u16,
            detail: &'a str,
            code: &'a str,
        }
        let body = Body {
            r#type: format!("/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        let bytes = serde_json::to_vec(&body).expect("a problem serializes");
        let mut response = Response::new(Full::new(Bytes::from(bytes)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/problem+json"));
        // Overload always says when to come back; other refusals (rate_limited) when they know.
        if let Some(seconds) = self.retry_after_s.or((self.code == "overloaded").then_some(1)) {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if self.code == "unauthenticated" {
            headers.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if let Some(methods) = self.allow {
            headers.insert(header::ALLOW, header::HeaderValue::from_static(methods));
        }
        if self.close {
            headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<NameError> for Problem {
    fn from(e: NameError) -> Self {
        Problem::invalid(e.to_string())
    }
}

pub fn request_error(e: RequestError) -> Problem {
    let detail = match e {
        RequestError::NoItems => "items must not be empty".to_owned(),
        RequestError::TooManyItems { max } => format!("at most {max} items per reservation"),
        RequestError::ZeroQuantity { item } => format!("items[{item}].qty must be at least 1"),
        RequestError::QuantityTooLarge { item, max } => format!("items[{item}].qty must be at most {max}"),
        RequestError::DuplicateSku { item } => format!("items[{item}] repeats a SKU named earlier"),
        RequestError::TtlOutOfRange { min, max } => format!("ttl_ms must be between {min} and {max}"),
        RequestError::SaleWithoutUser => {
            "user_id is required: the reserve is in a sale, whose per-user limit counts it".to_owned()
        }
        RequestError::Name(e) => e.to_string(),
        RequestError::StockOutOfRange => "stock or adjustment out of range".to_owned(),
        RequestError::PerUserLimitOutOfRange => "per-user limit out of range".to_owned(),
        RequestError::RoomOutOfRange => "waiting room settings out of range".to_owned(),
    };
    Problem::invalid(detail)
}

/// A log failure: a full disk refuses with 507; anything else means the log is poisoned and the
/// server is stopping (fail-stop), 503.
pub fn log_error(e: &WalError) -> Problem {
    match e {
        WalError::NoSpace { .. } => {
            Problem::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", e.to_string())
        }
        _ => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// `items` are the request's, to name the SKU an error points at.
pub fn reserve_error(e: &Refused<ReserveError>, skus: &[&str]) -> Problem {
    let sku = |item: usize| skus.get(item).copied().unwrap_or_default();
    let e = match e {
        Refused::Log(e) => return log_error(e),
        Refused::Engine(e) => *e,
    };
    match e {
        ReserveError::Invalid(r) => request_error(r),
        ReserveError::UnknownSku { item } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_sku",
            format!("no SKU {} (items[{item}])", sku(item)),
        ),
        ReserveError::UnknownSale => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_sale", "no such sale")
        }
        ReserveError::SaleMismatch { item } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "sale_mismatch",
            format!(
                "SKU {} (items[{item}]) is not in the sale this reserve counts against: every SKU of a \
                 reserve belongs to the sale it names (or, naming none, the one sale covering its SKUs) or to none",
                sku(item)
            ),
        ),
        ReserveError::InsufficientStock { item, available } => Problem::new(
            StatusCode::CONFLICT,
            "insufficient_stock",
            format!("SKU {} has {available} available (items[{item}])", sku(item)),
        ),
        ReserveError::LimitExceeded { limit, held } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "limit_exceeded",
            format!("the sale allows {limit} units per user; this user holds or bought {held}"),
        ),
        ReserveError::IdempotencyConflict => idempotency_conflict(),
        ReserveError::IdempotencyTableFull | ReserveError::ShardFull => {
            Problem::overloaded("too many reservations held; retry shortly")
        }
        ReserveError::LogRefused => unreachable!("the durable layer reports log refusals as Refused::Log"),
    }
}

pub fn reservation_error(e: &Refused<ReservationError>) -> Problem {
    let e = match e {
        Refused::Log(e) => return log_error(e),
        Refused::Engine(e) => *e,
    };
    match e {
        ReservationError::NotFound => Problem::not_found("no such reservation"),
        ReservationError::Expired => Problem::new(
            StatusCode::GONE,
            "reservation_expired",
            "the reservation expired; its units were returned",
        ),
        ReservationError::Committed => Problem::new(
            StatusCode::CONFLICT,
            "reservation_committed",
            "the reservation is already committed",
        ),
        ReservationError::OrderHeld => Problem::new(
            StatusCode::CONFLICT,
            "order_reservation",
            "this reservation belongs to an order: the order's routes and its payment move it",
        ),
        ReservationError::Released => {
            Problem::new(StatusCode::CONFLICT, "reservation_released", "the reservation was released")
        }
        ReservationError::Invalid(r) => request_error(r),
        ReservationError::LogRefused => {
            unreachable!("the durable layer reports log refusals as Refused::Log")
        }
    }
}

fn idempotency_conflict() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_conflict",
        "this Idempotency-Key was used with a different request",
    )
}

pub fn stock_error(e: &Refused<StockError>) -> Problem {
    let e = match e {
        Refused::Log(e) => return log_error(e),
        Refused::Engine(e) => *e,
    };
    match e {
        StockError::UnknownSku => Problem::not_found("no such SKU"),
        StockError::BelowHeld { held } => Problem::new(
            StatusCode::CONFLICT,
            "below_held",
            format!("on_hand may not fall below the {held} units reserved or sold"),
        ),
        StockError::AboveMax { max } => Problem::new(
            StatusCode::CONFLICT,
            "above_max",
            format!("on_hand may not rise above {max}, the most a SKU may hold"),
        ),
        StockError::Invalid(r) => request_error(r),
        StockError::IdempotencyConflict => idempotency_conflict(),
        StockError::IdempotencyTableFull => {
            Problem::overloaded("too many idempotency keys held; retry shortly")
        }
        StockError::LogRefused => unreachable!("the durable layer reports log refusals as Refused::Log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal maps to one status and code; the table is the contract's.
    #[test]
    fn refusals_map_to_the_contract_status_and_code() {
        let reserve = |e| reserve_error(&Refused::Engine(e), &["tee"]);
        let cases = [
            (reserve(ReserveError::UnknownSku { item: 0 }), 422, "unknown_sku"),
            (reserve(ReserveError::UnknownSale), 422, "unknown_sale"),
            (reserve(ReserveError::InsufficientStock { item: 0, available: 0 }), 409, "insufficient_stock"),
            (reserve(ReserveError::LimitExceeded { limit: 2, held: 2 }), 429, "limit_exceeded"),
            (reserve(ReserveError::IdempotencyConflict), 422, "idempotency_conflict"),
            (reserve(ReserveError::IdempotencyTableFull), 503, "overloaded"),
            (reserve(ReserveError::ShardFull), 503, "overloaded"),
            (reserve(ReserveError::Invalid(RequestError::NoItems)), 400, "invalid_request"),
            (reservation_error(&Refused::Engine(ReservationError::NotFound)), 404, "not_found"),
            (reservation_error(&Refused::Engine(ReservationError::Expired)), 410, "reservation_expired"),
            (reservation_error(&Refused::Engine(ReservationError::Committed)), 409, "reservation_committed"),
            (reservation_error(&Refused::Engine(ReservationError::Released)), 409, "reservation_released"),
            (stock_error(&Refused::Engine(StockError::UnknownSku)), 404, "not_found"),
            (stock_error(&Refused::Engine(StockError::BelowHeld { held: 3 })), 409, "below_held"),
            (stock_error(&Refused::Engine(StockError::AboveMax { max: 9 })), 409, "above_max"),
            (log_error(&WalError::NoSpace { file: "x".into() }), 507, "insufficient_storage"),
            (log_error(&WalError::Poisoned { cause: "sync failed".into() }), 503, "unavailable"),
        ];
        for (problem, status, code) in cases {
            assert_eq!((problem.status.as_u16(), problem.code), (status, code), "{problem:?}");
        }
        let detail = reserve(ReserveError::InsufficientStock { item: 0, available: 0 }).detail;
        assert!(detail.contains("tee"), "the detail names the SKU: {detail}");
        let response = Problem::overloaded("busy").response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
    }
}

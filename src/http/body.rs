//! Request bodies: read whole before a request counts as in flight, bounded in bytes (413), in time
//! (408) and in pace: after a grace second a client must keep sending at least
//! `body_bytes_per_s_min` on average, so a head that declares a body and then trickles or stalls is
//! cut within about a second instead of holding its connection for the whole body timeout.

use super::error::Problem;
use super::HttpConfig;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::time::Instant;

/// Time a body may take before the minimum rate applies: connection set-up and a first packet.
pub const BODY_GRACE: Duration = Duration::from_secs(1);

/// The request with its body read: at most `body_bytes_max` bytes (by `Content-Length` before
/// reading, or as chunks arrive), within `body_read_timeout` and no slower than the minimum rate.
pub async fn collect(config: &HttpConfig, req: Request<Incoming>) -> Result<Request<Bytes>, Problem> {
    let max = config.body_bytes_max;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let (parts, body) = req.into_parts();
    let mut body = Limited::new(body, max);
    let started = Instant::now();
    let give_up = started + config.body_read_timeout;
    let rate = config.body_bytes_per_s_min.max(1) as f64;
    // Most bodies arrive in one frame: kept as it is; a second one starts a copy.
    let (mut first, mut more) = (Bytes::new(), BytesMut::new());
    loop {
        let received = first.len() + more.len();
        let due = started + BODY_GRACE + Duration::from_secs_f64(received as f64 / rate);
        let frame = match tokio::time::timeout_at(give_up.min(due), body.frame()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => break,
            Ok(Some(Err(e))) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(max)),
            Ok(Some(Err(e))) => {
                return Err(Problem::invalid(format!("the body could not be read: {e}")).close())
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue }; // trailers carry nothing we use
        if first.is_empty() && more.is_empty() {
            first = data;
        } else {
            if more.is_empty() {
                more.extend_from_slice(&std::mem::take(&mut first));
            }
            more.extend_from_slice(&data);
        }
    }
    let bytes = if more.is_empty() { first } else { more.freeze() };
    Ok(Request::from_parts(parts, bytes))
}

fn timed_out() -> Problem {
    let detail = "the body did not arrive in time, or too slowly";
    Problem::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", detail).close()
}

/// Checks that the body is declared `application/json` (415 otherwise). `required`: also when it is
/// empty; a route without a body accepts an empty one with any type.
pub fn json(req: &Request<Bytes>, required: bool) -> Result<(), Problem> {
    if !required && req.body().is_empty() {
        return Ok(());
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
    let is_json = content_type.is_some_and(|t| {
        let essence = t.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    });
    if !is_json {
        let got = content_type.unwrap_or("none");
        let detail = format!("Content-Type must be application/json, not {got}");
        return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail));
    }
    Ok(())
}

fn too_large(max: usize) -> Problem {
    let detail = format!("the body is larger than {max} bytes");
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail).close()
}

/// A body the API describes as an object, read as one (an array of its fields is refused).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice::<crate::object_only::ObjectOnly<T>>(bytes).map(|o| o.0).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid field",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => "malformed JSON",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        Problem::invalid(format!("{what}: {e}"))
    })
}

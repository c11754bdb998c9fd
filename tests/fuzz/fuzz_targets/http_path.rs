//! Request targets and ids from clients: the router and the id parser never panic, and an id that
//! parses prints back as itself.
#![no_main]

use holdfast::engine::ReservationId;
use holdfast::http::Route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for method in [hyper::Method::GET, hyper::Method::POST, hyper::Method::PUT, hyper::Method::DELETE] {
        if let Ok((route, _)) = Route::find(&method, text) {
            assert_eq!(route.template().0, method.as_str());
        }
    }
    if let Some(id) = ReservationId::parse(text) {
        assert_eq!(id.to_string(), text);
    }
});

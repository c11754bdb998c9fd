//! The OpenAPI 3.1 description served at `/openapi.json`. A test checks that it describes exactly the
//! routes the router serves.

pub const DOCUMENT: &str = include_str!("openapi.json");

//! The OpenAPI 3.1 description served at `/openapi.json`. A test checks that it describes exactly the
//! routes the router serves.

pub const DOCUMENT: &str = include_str!("openapi.json");

/// The description as this server answers: `DOCUMENT` with the TTL range its engine was configured
/// with (`--ttl-ms-min`, `--ttl-ms-max`), so that a value the description allows is one it takes.
pub fn for_engine(config: &crate::engine::EngineConfig) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("the description is JSON");
    for schema in ["ReserveRequest", "Extend"] {
        let ttl = &mut doc["components"]["schemas"][schema]["properties"]["ttl_ms"];
        assert!(ttl.is_object(), "{schema}.ttl_ms is described");
        ttl["minimum"] = config.ttl_ms_min.into();
        ttl["maximum"] = config.ttl_ms_max.into();
    }
    serde_json::to_vec_pretty(&doc).expect("JSON serializes")
}

//! The OpenAPI 3.1 description served at `/openapi.json`. Tests check that it describes exactly the
//! routes the router serves, and states the code's own limits.

pub const DOCUMENT: &str = include_str!("openapi.json");

/// The description as this server answers: `DOCUMENT` with the TTL range its engine was configured
/// with (`--ttl-ms-min`, `--ttl-ms-max`, which bound an order's payment window too), so that a value
/// the description allows is one it takes.
pub fn for_engine(config: &crate::engine::EngineConfig) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("the description is JSON");
    for (schema, field) in
        [("ReserveRequest", "ttl_ms"), ("Extend", "ttl_ms"), ("PlaceOrder", "pay_within_ms")]
    {
        let ttl = &mut doc["components"]["schemas"][schema]["properties"][field];
        assert!(ttl.is_object(), "{schema}.{field} is described");
        ttl["minimum"] = config.ttl_ms_min.into();
        ttl["maximum"] = config.ttl_ms_max.into();
    }
    // A sale's cart hold: 0 (none) or a TTL.
    let hold = &mut doc["components"]["schemas"]["SetSale"]["properties"]["cart_hold_ms"]["anyOf"][1];
    assert!(hold.is_object(), "SetSale.cart_hold_ms is described");
    hold["minimum"] = config.ttl_ms_min.into();
    hold["maximum"] = config.ttl_ms_max.into();
    serde_json::to_vec_pretty(&doc).expect("JSON serializes")
}

#[cfg(test)]
mod tests {
    use crate::engine::{ADMIT_PER_S_MAX, SESSION_MS_MAX, SESSION_MS_MIN};
    use crate::limits::*;
    use crate::orders::{AMOUNT_MAX, UNIT_PRICE_MAX};
    use serde_json::Value;

    /// Every bound the description states is the server's own, from `limits.rs` and its neighbours, so
    /// the two cannot drift apart: a value the description allows is one the server takes.
    #[test]
    fn the_description_states_the_limits_of_the_code() {
        let doc: Value = serde_json::from_str(super::DOCUMENT).expect("JSON");
        let schemas = &doc["components"]["schemas"];
        let on_hand = ON_HAND_MAX as i64;
        let numbers: &[(&str, &str, i64)] = &[
            ("SetStock/properties/on_hand", "maximum", on_hand),
            ("Adjust/properties/delta", "maximum", on_hand),
            ("Adjust/properties/delta", "minimum", -on_hand),
            ("Adjust/properties/reason", "maxLength", REASON_CHARS_MAX as i64),
            ("Item/properties/qty", "maximum", QTY_PER_ITEM_MAX.into()),
            ("OrderLine/properties/qty", "maximum", QTY_PER_ITEM_MAX.into()),
            ("ReserveRequest/properties/items", "maxItems", ITEMS_PER_RESERVATION_MAX as i64),
            ("PlaceOrder/properties/items", "maxItems", ITEMS_PER_RESERVATION_MAX as i64),
            ("ReserveRequest/properties/user_id", "maxLength", USER_BYTES_MAX as i64),
            ("JoinQueue/properties/user_id", "maxLength", USER_BYTES_MAX as i64),
            ("PlaceOrder/properties/user_id", "maxLength", USER_BYTES_MAX as i64),
            ("SetSale/properties/per_user_limit", "maximum", PER_USER_UNITS_MAX.into()),
            ("SetSale/properties/skus", "maxItems", ROOM_SKUS_MAX as i64),
            ("SetSale/properties/admission_rate", "maximum", ADMIT_PER_S_MAX.into()),
            ("SetSale/properties/max_active", "maximum", ROOM_JOINERS_MAX.into()),
            ("SetSale/properties/session_ms", "minimum", SESSION_MS_MIN as i64),
            ("SetSale/properties/session_ms", "maximum", SESSION_MS_MAX as i64),
            ("OrderLine/properties/unit_price", "maximum", UNIT_PRICE_MAX as i64),
            ("Order/properties/amount", "maximum", AMOUNT_MAX as i64),
            ("CartItemSet/properties/qty", "maximum", QTY_PER_ITEM_MAX.into()),
            ("CartItemSet/properties/unit_price", "maximum", UNIT_PRICE_MAX as i64),
            ("Cart/properties/items", "maxItems", CART_ITEMS_MAX as i64),
        ];
        for (path, keyword, value) in numbers {
            let node = path.split('/').fold(schemas, |node, key| &node[key]);
            assert_eq!(node[keyword].as_i64(), Some(*value), "{path} {keyword}");
        }
        // Names are bounded by their patterns: every pattern for a name states the name's length.
        let name = format!("^[A-Za-z0-9_.:-]{{1,{SKU_BYTES_MAX}}}$");
        assert_eq!(SKU_BYTES_MAX, SALE_BYTES_MAX, "SKU and sale names share one pattern");
        let token = format!("^[!-~]{{1,{IDEMPOTENCY_KEY_BYTES_MAX}}}$");
        let mut patterns = Vec::new();
        collect_patterns(&doc, &mut patterns);
        for p in &patterns {
            if p.starts_with("^[A-Za-z0-9_.:-]") {
                assert_eq!(p, &name);
            }
        }
        assert!(patterns.iter().filter(|p| **p == name).count() >= 10, "{patterns:?}");
        assert!(patterns.iter().filter(|p| **p == token).count() >= 5, "Idempotency-Key: {patterns:?}");
    }

    fn collect_patterns(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(p)) = map.get("pattern") {
                    out.push(p.clone());
                }
                map.values().for_each(|v| collect_patterns(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_patterns(v, out)),
            _ => {}
        }
    }
}

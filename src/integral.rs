//! Integer fields take an integral JSON number written with a fraction (`5.0`) too: JSON Schema counts
//! it as an integer, so a client or gateway that builds requests from the description may send one.

use serde::{de::Error, Deserialize, Deserializer};

fn exact(n: &serde_json::Number) -> Option<i128> {
    if let Some(v) = n.as_u64() {
        return Some(i128::from(v));
    }
    if let Some(v) = n.as_i64() {
        return Some(i128::from(v));
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 2f64.powi(64)).then_some(f as i128)
}

fn convert<T: TryFrom<i128>, E: Error>(n: serde_json::Number) -> Result<T, E> {
    exact(&n)
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| E::custom(format!("{n} is not an integer in range")))
}

pub fn int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
    convert(serde_json::Number::deserialize(d)?)
}

pub fn opt<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?.map(convert).transpose()
}

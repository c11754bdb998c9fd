//! A JSON object where the API says object. Serde's derived structs also take an array of their
//! fields in order (`[7]` for `{"on_hand":7}`), which no API description allows and no client means:
//! bodies, and the objects inside them, are read through `ObjectOnly`, which takes a map and nothing
//! else.

use serde::de::{value::MapAccessDeserializer, Deserialize, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Map<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Map(PhantomData)).map(ObjectOnly)
    }
}

/// For `#[serde(deserialize_with)]`: one object.
pub fn one<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    ObjectOnly::deserialize(d).map(|o| o.0)
}

/// For `#[serde(deserialize_with)]`: an array of objects.
pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Vec::<ObjectOnly<T>>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
}

/// For `#[serde(default, deserialize_with)]`: an array of objects, or null.
pub fn optional_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Option::<Vec<ObjectOnly<T>>>::deserialize(d).map(|v| v.map(|v| v.into_iter().map(|o| o.0).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Line {
        sku: String,
        qty: u32,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(deserialize_with = "list")]
        items: Vec<Line>,
        #[serde(default, deserialize_with = "optional_list")]
        more: Option<Vec<Line>>,
    }

    fn parse(text: &str) -> Result<Body, serde_json::Error> {
        serde_json::from_str::<ObjectOnly<Body>>(text).map(|o| o.0)
    }

    #[test]
    fn objects_are_read_and_arrays_of_fields_are_not() {
        let body = parse(r#"{"items":[{"sku":"a","qty":1}],"more":null}"#).expect("an object");
        assert_eq!(body.items, vec![Line { sku: "a".into(), qty: 1 }]);
        assert_eq!(body.more, None);
        assert!(parse(r#"{"items":[{"sku":"a","qty":1}],"more":[{"sku":"b","qty":2}]}"#).is_ok());
        for bad in [
            r#"[[{"sku":"a","qty":1}]]"#,
            r#"{"items":[["a",1]]}"#,
            r#"{"items":[{"sku":"a","qty":1}],"more":[["b",2]]}"#,
            r#"{"items":[{"sku":"a","qty":1,"x":1}]}"#,
            r#"{"items":{"sku":"a","qty":1}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

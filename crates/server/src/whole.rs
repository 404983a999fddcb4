//! Integer fields of request bodies take a JSON number written with a fraction of zero or an
//! exponent (`1526.0`, `1.5e3`) as the whole number it is.
//!
//! JSON has one kind of number, and JSON Schema's `integer` (what the OpenAPI document says of
//! these fields) is any number whose fractional part is zero, so `1526.0` is a valid version;
//! but serde_json hands such a number to a visitor as an `f64`, which serde's integer types
//! refuse. [`Whole`] wraps the JSON deserializer: where the type being read asks for an integer,
//! an `f64` with no fraction is handed on as that integer (the integer type still checks its
//! range). Everything else goes through untouched: a `serde_json::Value`, the raw JSON of
//! `event_data`, a string. So no stored JSON changes, only integer fields read more numbers.
//!
//! Types that read a number through `deserialize_any` (`ExpectedVersion`, a group's `start`)
//! take whole `f64`s in their own visitors.
//!
//! It also holds structs to JSON objects: serde's derive reads a struct from an array of its
//! fields in order too (`[null, 5]`), which the document (objects with named fields) does
//! not allow and no client means.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// A deserializer whose integer requests also take whole numbers written as floats.
#[derive(Debug)]
pub struct Whole<D>(pub D);

/// A visitor passed on by [`Whole`]: it wraps what it is handed (so that nested values read
/// through [`Whole`] too); when `integer` (the type asked for an integer) it turns a whole
/// `f64` into that integer, and when `object` (a struct) it refuses an array.
struct Visit<V> {
    inner: V,
    integer: bool,
    object: bool,
}

fn visit<V>(inner: V) -> Visit<V> {
    Visit {
        inner,
        integer: false,
        object: false,
    }
}

fn integer<V>(inner: V) -> Visit<V> {
    Visit {
        inner,
        integer: true,
        object: false,
    }
}

fn object<V>(inner: V) -> Visit<V> {
    Visit {
        inner,
        integer: false,
        object: true,
    }
}

/// 2^64 and −2^63 as `f64`, both exact: every `f64` with no fraction in between converts
/// exactly.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;

macro_rules! integer_requests {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(integer(visitor))
        }
    )*};
}

macro_rules! other_requests {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(visit(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Whole<D> {
    type Error = D::Error;

    integer_requests!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128
    );

    other_requests!(
        deserialize_any,
        deserialize_bool,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, visit(visitor))
    }

    /// Also the way serde_json reads a `RawValue` (by a reserved name): it is passed on as it
    /// is, so the raw text is kept.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, visit(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visit(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, visit(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, object(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, visit(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_values {
    ($($method:ident($type:ty)),*) => {$(
        fn $method<E: de::Error>(self, v: $type) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_values!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>)
    );

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        if self.integer && v.fract() == 0.0 {
            if (0.0..TWO_POW_64).contains(&v) {
                return self.inner.visit_u64(v as u64);
            }
            if (MINUS_TWO_POW_63..0.0).contains(&v) {
                return self.inner.visit_i64(v as i64);
            }
        }
        self.inner.visit_f64(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Whole(deserializer))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Whole(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        if self.object {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        self.inner.visit_seq(Whole(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Whole(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Whole(data))
    }
}

/// A seed whose value is read through [`Whole`].
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Whole(deserializer))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Whole<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Whole<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Whole<A> {
    type Error = A::Error;
    type Variant = Whole<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(Seed(seed))
            .map(|(value, variant)| (value, Whole(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Whole<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, visit(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, visit(visitor))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::*;

    fn read<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = T::deserialize(Whole(&mut de))?;
        de.end().map(|()| value)
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Body {
        n: u64,
        small: Option<u32>,
        signed: i64,
        list: Vec<u64>,
    }

    #[test]
    fn whole_floats_read_as_integers() {
        let body: Body =
            read(r#"{"n": 1526.0, "small": 7e2, "signed": -3.0, "list": [1.0, 2, 3e0]}"#).expect("reads");
        assert_eq!(
            body,
            Body {
                n: 1526,
                small: Some(700),
                signed: -3,
                list: vec![1, 2, 3],
            }
        );
    }

    #[test]
    fn fractions_and_out_of_range_numbers_are_still_refused() {
        for bad in [
            r#"{"n": 1.5, "small": null, "signed": 0, "list": []}"#,
            r#"{"n": -1.0, "small": null, "signed": 0, "list": []}"#,
            r#"{"n": 1e20, "small": null, "signed": 0, "list": []}"#,
            r#"{"n": 1, "small": 5e9, "signed": 0, "list": []}"#,
        ] {
            assert!(read::<Body>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn structs_are_objects_not_arrays() {
        assert!(read::<Body>(r#"[1, null, 0, []]"#).is_err());
        assert!(read::<Option<Body>>(r#"[1, null, 0, []]"#).is_err());
        assert!(read::<Vec<u64>>("[1, 2]").is_ok());
    }

    #[test]
    fn values_and_raw_json_are_kept_as_sent() {
        #[derive(Deserialize)]
        struct Kept {
            value: serde_json::Value,
            raw: Box<RawValue>,
        }
        let kept: Kept = read(r#"{"value": {"x": 1.0}, "raw": {"y": 2.0 }}"#).expect("reads");
        assert_eq!(kept.value.to_string(), r#"{"x":1.0}"#);
        assert_eq!(kept.raw.get(), r#"{"y": 2.0 }"#);
    }
}

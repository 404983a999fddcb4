//! Conversions between factstore values and PostgreSQL's binary formats.
//!
//! `timestamptz` is sent and read as its binary form (microseconds since 2000-01-01 UTC), the
//! same resolution as [`Timestamp`], so no time crate and no rounding is involved. `json` is
//! sent and read as its text, unchanged.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use factstore_core::Timestamp;
use postgres_types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A [`Timestamp`] as a `timestamptz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ts(pub Timestamp);

impl ToSql for Ts {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_i64(self.0.as_micros() - PG_EPOCH_MICROS);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Ts {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Ts, Box<dyn Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into().map_err(|_| "a timestamptz is 8 bytes")?;
        let micros = i64::from_be_bytes(bytes)
            .checked_add(PG_EPOCH_MICROS)
            .ok_or("a timestamptz out of range (infinity?)")?;
        Ok(Ts(Timestamp::from_micros(micros)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// JSON text as a `json` value: the bytes go in and come out unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonText<'a>(pub &'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for JsonText<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<JsonText<'a>, Box<dyn Error + Sync + Send>> {
        // jsonb's binary form starts with a format version byte (1); json's is the bare text.
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb format version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_the_binary_form() {
        for micros in [
            0,
            1,
            -1,
            946_684_800_000_000,
            Timestamp::MIN.as_micros(),
            Timestamp::MAX.as_micros(),
        ] {
            let mut buf = BytesMut::new();
            Ts(Timestamp::from_micros(micros))
                .to_sql(&Type::TIMESTAMPTZ, &mut buf)
                .expect("encodes");
            let back = Ts::from_sql(&Type::TIMESTAMPTZ, &buf).expect("decodes");
            assert_eq!(back.0.as_micros(), micros);
        }
        // 2000-01-01 is zero in PostgreSQL's form.
        let mut buf = BytesMut::new();
        Ts(Timestamp::from_micros(PG_EPOCH_MICROS))
            .to_sql(&Type::TIMESTAMPTZ, &mut buf)
            .expect("encodes");
        assert_eq!(&buf[..], &[0u8; 8]);
    }

    #[test]
    fn jsonb_text_drops_the_version_byte() {
        let raw = b"\x01{\"a\":1}";
        assert_eq!(
            JsonText::from_sql(&Type::JSONB, raw).expect("decodes").0,
            "{\"a\":1}"
        );
        assert!(JsonText::from_sql(&Type::JSONB, b"\x02{}").is_err());
        assert_eq!(JsonText::from_sql(&Type::JSON, b"{ }").expect("decodes").0, "{ }");
    }
}

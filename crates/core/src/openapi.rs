//! OpenAPI schemas of the types whose JSON form serde's derive does not describe: times are
//! strings, and an expected version is a number or a word. Only with the `openapi` feature;
//! the server builds its API document from these.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::append::ExpectedVersion;
use crate::time::Timestamp;

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "An RFC 3339 time. Responses write UTC with microseconds \
                 (2024-01-15T14:00:00.000000Z); requests may give any fraction and any offset, \
                 normalised to UTC (a finer fraction than a microsecond is truncated).",
            ))
            .examples(["2024-01-15T14:00:00.000000Z"])
            .into()
    }
}

impl ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

impl PartialSchema for ExpectedVersion {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .description(Some(
                        "The aggregate must be at exactly this version; 0: it must not exist yet.",
                    )),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["any", "exists"]))
                    .description(Some(
                        "`any`: no check. `exists`: the aggregate must have at least one event.",
                    )),
            )
            .description(Some(
                "The version the aggregate must be at for the append to happen; otherwise \
                 409 `wrong_expected_version`. Default `any`.",
            ))
            .default(Some("any".into()))
            .into()
    }
}

impl ToSchema for ExpectedVersion {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ExpectedVersion")
    }
}

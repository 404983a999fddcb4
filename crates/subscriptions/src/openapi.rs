//! OpenAPI schemas serde's derive cannot infer (with the `openapi` feature).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// The schema of [`Start`](crate::Start): a word or a position.
#[derive(Debug)]
pub struct StartSchema;

impl PartialSchema for StartSchema {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["beginning", "end"]))
                    .description(Some(
                        "`beginning`: every matching event. `end`: only events appended after the group exists.",
                    )),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .maximum(Some(factstore_core::POSITION_MAX))
                    .description(Some("Deliver the events after this position.")),
            )
            .description(Some("Where a new group starts; default `beginning`."))
            .into()
    }
}

impl ToSchema for StartSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("SubscriptionStart")
    }
}

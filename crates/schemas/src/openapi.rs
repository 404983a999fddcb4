//! OpenAPI schemas that derives cannot express.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

/// Any JSON value: the literal of an upcaster operation.
#[derive(Debug)]
pub struct AnyValue;

impl PartialSchema for AnyValue {
    fn schema() -> RefOr<Schema> {
        // Every type listed: an empty schema (`{}`) means the same but does not read back
        // into the OpenAPI model.
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([
                Type::String,
                Type::Number,
                Type::Integer,
                Type::Boolean,
                Type::Array,
                Type::Object,
                Type::Null,
            ]))
            .description(Some("Any JSON value."))
            .into()
    }
}

impl ToSchema for AnyValue {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AnyValue")
    }
}

//! OpenAPI schemas that derives cannot express.

use std::borrow::Cow;

use utoipa::openapi::Ref;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
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

/// A JSON Pointer to a field of `event_data`, as an upcaster's operation takes it: not empty
/// (the whole document is not a field), and every `~` escaped as `~0` or `~1`.
const FIELD_POINTER: &str = "^/([^~]|~[01])*$";

impl PartialSchema for crate::upcast::UpcastOp {
    fn schema() -> RefOr<Schema> {
        let op = |name: &str, description: &str, fields: &[&str], with_value: bool| {
            let mut object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .property(
                    "op",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([name])),
                )
                .required("op")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)));
            for field in fields {
                object = object
                    .property(
                        *field,
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(FIELD_POINTER)),
                    )
                    .required(*field);
            }
            if with_value {
                object = object
                    .property("value", Ref::from_schema_name(AnyValue::name()))
                    .required("value");
            }
            object
        };
        OneOfBuilder::new()
            .item(op(
                "default",
                "Puts `value` at `path` when nothing is there.",
                &["path"],
                true,
            ))
            .item(op(
                "set",
                "Puts `value` at `path`, replacing what is there.",
                &["path"],
                true,
            ))
            .item(op(
                "rename",
                "Moves what is at `from` to `path` (nothing at `from`: nothing to do; something at \
                 `path` already: an error).",
                &["from", "path"],
                false,
            ))
            .item(op(
                "unset",
                "Removes what is at `path`, if anything.",
                &["path"],
                false,
            ))
            .description(Some("One operation of an upcaster."))
            .into()
    }
}

impl ToSchema for crate::upcast::UpcastOp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UpcastOp")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((AnyValue::name().into_owned(), AnyValue::schema()));
    }
}

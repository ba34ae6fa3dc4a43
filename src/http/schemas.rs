//! Schemas of the OpenAPI document that utoipa's attributes cannot write from a constant: the
//! patterns of what the domain's parsers accept (`schema_with = ...` on a field), so that the
//! document refuses exactly what the server refuses.

use utoipa::openapi;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

use crate::domain::mac;

const MAC_DESCRIPTION: &str = "Any common form: `AA:BB:CC:DD:EE:FF`, `aa-bb-cc-dd-ee-ff`, `AABB.CCDD.EEFF`, `aabbccddeeff`, or the \
                               decimal eFuse MAC (13 to 15 digits, or `efuse:` and digits; below 2^48).";

/// A MAC address in any form `domain::mac::Mac::parse` accepts.
pub fn mac() -> Object {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(mac::PATTERN)).description(Some(MAC_DESCRIPTION)).build()
}

/// As `mac`, or null.
pub fn optional_mac() -> Object {
    ObjectBuilder::new()
        .schema_type(openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(mac::PATTERN))
        .description(Some(MAC_DESCRIPTION))
        .build()
}

/// As `optional_mac`, for a new device (which needs a MAC, a unique name, or both).
pub fn new_device_mac() -> Object {
    let mut schema = optional_mac();
    schema.description = Some(format!("{MAC_DESCRIPTION} A device needs a `mac`, a `uid`, or both."));
    schema
}

/// A JSON Schema document: an object, or `true` / `false` (the schemas that accept, or refuse,
/// everything), as draft 2020-12 allows.
pub struct JsonSchemaDocument;

impl utoipa::PartialSchema for JsonSchemaDocument {
    fn schema() -> openapi::RefOr<openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(openapi::schema::SchemaType::from_iter([Type::Object, Type::Boolean]))
            .description(Some("A JSON Schema: an object, or `true` / `false`"))
            .into()
    }
}

impl utoipa::ToSchema for JsonSchemaDocument {}

/// A text matching one of `values` in any letter case, with surrounding white space (as
/// `domain::lvgl::ColorFormat::parse` reads one).
fn any_case(values: &[&str]) -> String {
    let alternatives: Vec<String> = values
        .iter()
        .map(|value| {
            value
                .chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() { format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()) } else { c.to_string() }
                })
                .collect()
        })
        .collect();
    format!(r"^{WHITE_SPACE}*(?:{}){WHITE_SPACE}*$", alternatives.join("|"))
}

/// An LVGL colour format, any case.
pub fn lvgl_color_format() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(any_case(crate::domain::lvgl::ColorFormat::NAMES)))
        .description(Some("RGB565, RGB565A8, RGB888, XRGB8888, ARGB8888 (default), L8, A8 (any case)."))
        .build()
}

/// What every operation's inputs have in common, added to the merged document (as
/// `roles::describe_roles` does for credentials):
/// - a path parameter is text without control characters (`path_guard` refuses the others
///   with 400 before any handler), so a text parameter without a pattern gets one saying so;
/// - an operation with a path or query parameter answers 400 to one it cannot read (a path
///   that does not decode to text, an unknown or malformed query parameter);
/// - such an operation answers 431 (no body) when its request line and headers are over
///   8 KiB (`net`), which long parameters reach;
/// - an operation with a JSON body answers 415 to a body without `Content-Type:
///   application/json` (`error::ApiJson`).
///
/// The answers are in the operation's error form: seed 003's error body for seed 003's
/// operations, else `ErrorBody`. An operation that documents the status already keeps its own.
pub fn describe_inputs(openapi: &mut openapi::OpenApi) {
    use openapi::path::ParameterIn;
    use openapi::schema::{Schema, SchemaType};
    use openapi::{ContentBuilder, RefOr, ResponseBuilder};

    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let seed003 = operation.tags.as_ref().is_some_and(|tags| tags.iter().any(|t| t == "seed-003"));
            let error_body = if seed003 { "Seed003ErrorBody" } else { "ErrorBody" };
            let answer = |description: &str| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content("application/json", ContentBuilder::new().schema(Some(openapi::Ref::from_schema_name(error_body))).build())
                        .build(),
                )
            };
            let mut has_path = false;
            let mut has_query = false;
            for parameter in operation.parameters.iter_mut().flatten() {
                let RefOr::T(parameter) = parameter else { continue };
                match parameter.parameter_in {
                    ParameterIn::Path => {
                        has_path = true;
                        if let Some(RefOr::T(Schema::Object(object))) = parameter.schema.as_mut()
                            && object.schema_type == SchemaType::Type(Type::String)
                            && object.pattern.is_none()
                            && object.enum_values.is_none()
                            && object.format.is_none()
                        {
                            object.pattern = Some(TEXT_PATTERN.into());
                        }
                    }
                    ParameterIn::Query => has_query = true,
                    _ => {}
                }
            }
            let json_body = operation
                .request_body
                .as_ref()
                .is_some_and(|body| matches!(body, RefOr::T(body) if body.content.keys().any(|c| c.contains("json"))));
            let responses = &mut operation.responses.responses;
            if (has_path || has_query) && !responses.contains_key("400") {
                responses.insert(
                    "400".into(),
                    answer("A path that does not decode to text, or a query parameter that is unknown or cannot be read"),
                );
            }
            if (has_path || has_query) && !responses.contains_key("431") {
                // hyper's answer, without a body (`net`: request heads are capped at 8 KiB).
                responses.insert(
                    "431".into(),
                    RefOr::T(ResponseBuilder::new().description("The request line and headers are over 8 KiB").build()),
                );
            }
            if json_body && !responses.contains_key("415") {
                responses.insert("415".into(), answer("The body is not sent as `Content-Type: application/json`"));
            }
        }
    }
}

/// Unicode's White_Space, which `str::trim` removes (`\s` means more in Python's `re`).
const WHITE_SPACE: &str = r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// Text without control characters.
const TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_case_matches_each_value_in_any_case_and_nothing_else() {
        let pattern = regex::Regex::new(&any_case(crate::domain::lvgl::ColorFormat::NAMES)).unwrap();
        for name in crate::domain::lvgl::ColorFormat::NAMES {
            for text in [name.to_string(), name.to_lowercase(), format!(" {name}\t")] {
                assert!(pattern.is_match(&text), "{text}");
                assert!(crate::domain::lvgl::ColorFormat::parse(&text).is_ok(), "{text}");
            }
        }
        for text in ["", "RGB", "RGB565X", "ARGB 8888"] {
            assert!(!pattern.is_match(text), "{text}");
            assert!(crate::domain::lvgl::ColorFormat::parse(text).is_err(), "{text}");
        }
    }
}

//! Schemas of the OpenAPI document that utoipa's attributes cannot write from a constant: the
//! patterns of what the domain's parsers accept (`schema_with = ...` on a field), so that the
//! document refuses exactly what the server refuses.

use utoipa::openapi;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

use crate::domain::{mac, patterns};

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

fn text(pattern: String, description: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)).description(Some(description))
}

/// A product name (`domain::firmware::ProductName`).
pub fn product() -> Object {
    text(patterns::product(), "A product name: 1-64 letters, digits, `.`, `_` or `-`, not starting with `.`").build()
}

/// A hardware (board) name (`domain::firmware::HardwareId`).
pub fn hardware() -> Object {
    text(patterns::hardware(), "A hardware (board) name: 1-64 letters, digits, inner spaces or `._-:/+()`; compared in any case").build()
}

/// As `product`, or null.
pub fn optional_product() -> Object {
    nullable(product())
}

/// A state a device reports (`domain::device::UpdateState::parse_reported`), any case.
pub fn reported_state() -> Object {
    let names: Vec<&str> = crate::domain::device::UpdateState::REPORTABLE.split(", ").collect();
    text(any_case(&names), &format!("One of {}", crate::domain::device::UpdateState::REPORTABLE)).build()
}

/// A hawkBit DDI gateway token: 16-128 characters, no white space or control characters; or
/// null.
pub fn optional_gateway_token() -> Object {
    nullable(
        text(
            r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{16,128}$".into(),
            "16-128 characters without white space or control characters; stored only as a hash",
        )
        .build(),
    )
}

/// As `hardware`, or null.
pub fn optional_hardware() -> Object {
    nullable(hardware())
}

/// A list of hardware names, or null.
pub fn optional_hardware_list() -> openapi::schema::Array {
    openapi::schema::ArrayBuilder::new()
        .schema_type(openapi::schema::SchemaType::from_iter([Type::Array, Type::Null]))
        .items(hardware())
        .description(Some("Hardware (board) names"))
        .build()
}

/// A product's provisioning mode (`domain::device::Provisioning`), any case.
pub fn provisioning() -> Object {
    text(any_case(&["open", "key", "preregistered"]), "`open`, `key` or `preregistered`").build()
}

/// A release channel (`domain::firmware::Channel`).
pub fn channel() -> Object {
    text(patterns::channel(), "A release channel: 1-32 letters, digits or `-` (stored in lower case)").build()
}

/// As `channel`, or null.
pub fn optional_channel() -> Object {
    nullable(channel())
}

/// `schema`, or null.
fn nullable(mut schema: Object) -> Object {
    schema.schema_type = openapi::schema::SchemaType::from_iter([Type::String, Type::Null]);
    schema
}

/// A device tag (`domain::device::check_tag`).
pub fn tag() -> Object {
    text(patterns::tag(), "A tag: 1-64 letters, digits or `._-:/`").build()
}

/// A version (`domain::version::Version`).
pub fn version() -> Object {
    text(
        patterns::version(),
        "A version: up to three numeric parts (`v` allowed in front), then a semver pre-release and build, e.g. `1.2.3` or `1.2.3-beta.1`",
    )
    .max_length(Some(patterns::VERSION_MAX_LENGTH))
    .build()
}

/// Update states, one or a comma-separated list (`GET /api/v1/updates`).
pub fn update_states() -> Object {
    let names: Vec<&str> = crate::domain::device::UpdateState::ALL.iter().map(|s| s.as_str()).collect();
    let item = format!("{WHITE_SPACE}*(?:{})?{WHITE_SPACE}*", names.join("|"));
    text(format!("^{item}(?:,{item})*$"), &format!("One state or a comma-separated list: {}", names.join(", "))).build()
}

/// pydantic's lax `bool` (seed 003's `allow_overwrite`): `true`/`false`, the numbers 0 and 1,
/// or one of its words in any case.
pub fn pydantic_bool() -> openapi::schema::Schema {
    let words = ["0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"];
    let words = format!("^(?:{})$", case_insensitive(&words));
    openapi::schema::OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Number).enum_values(Some([0, 1])))
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(words)))
        .description(Some("A boolean as pydantic reads one: `true`/`false`, 0 or 1, or `true`, `false`, `yes`, `no`, `on`, `off`, `t`, `f`, `y`, `n`, `1`, `0` in any case"))
        .build()
        .into()
}

/// An MQTT hook's `acc` (mosquitto-go-auth): 1-4, as a number or its digits; or null (as if
/// absent).
pub fn hook_acc() -> openapi::schema::Schema {
    hook_acc_of(true)
}

/// As `hook_acc`, not null (the ACL check needs it).
pub fn hook_acc_given() -> openapi::schema::Schema {
    hook_acc_of(false)
}

fn hook_acc_of(null: bool) -> openapi::schema::Schema {
    let one_of = openapi::schema::OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(4)))
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^\+?0*[1-4]$")));
    let one_of = if null { one_of.item(ObjectBuilder::new().schema_type(Type::Null)) } else { one_of };
    one_of.description(Some("1 read, 2 write, 3 read and write, 4 subscribe (a number, or its digits)")).build().into()
}

/// As `version`, or null.
pub fn optional_version() -> Object {
    nullable(version())
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
    format!(r"^{WHITE_SPACE}*(?:{}){WHITE_SPACE}*$", case_insensitive(values))
}

/// The alternatives `values`, each letter in either case (unanchored).
fn case_insensitive(values: &[&str]) -> String {
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
    alternatives.join("|")
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
/// - an optional header is text, never null; a query text without a pattern has no NUL;
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

    for operation in operations_mut(openapi) {
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
            // Free-form text in a path or a query: what the server's decoding accepts.
            let text_pattern = match parameter.parameter_in {
                ParameterIn::Path => Some(TEXT_PATTERN),
                ParameterIn::Query => Some(NO_NUL_PATTERN),
                _ => None,
            };
            if let Some(pattern) = text_pattern
                && let Some(RefOr::T(Schema::Object(object))) = parameter.schema.as_mut()
                && object.schema_type == SchemaType::Type(Type::String)
                && object.pattern.is_none()
                && object.enum_values.is_none()
                && object.format.is_none()
            {
                object.pattern = Some(pattern.into());
            }
            match parameter.parameter_in {
                ParameterIn::Path => has_path = true,
                ParameterIn::Query => has_query = true,
                ParameterIn::Header => {
                    // An optional header is absent or text, never null (utoipa makes an
                    // `Option` header nullable).
                    if let Some(RefOr::T(Schema::Object(object))) = parameter.schema.as_mut()
                        && object.schema_type == SchemaType::from_iter([Type::String, Type::Null])
                    {
                        object.schema_type = SchemaType::Type(Type::String);
                    }
                }
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
            responses
                .insert("431".into(), RefOr::T(ResponseBuilder::new().description("The request line and headers are over 8 KiB").build()));
        }
        if json_body && !responses.contains_key("415") {
            responses.insert("415".into(), answer("The body is not sent as `Content-Type: application/json`"));
        }
    }
}

use patterns::WHITE_SPACE;

/// Text without NUL (`error::from_query` refuses it: PostgreSQL stores no NUL).
const NO_NUL_PATTERN: &str = r"^[^\x00]*$";

/// Text without control characters.
const TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// Every operation of the document, whatever its method.
pub(crate) fn operations_mut(openapi: &mut openapi::OpenApi) -> impl Iterator<Item = &mut openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

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

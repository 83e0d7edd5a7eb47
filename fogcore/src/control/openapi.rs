//! The OpenAPI 3.1 document of a route table: every body, reply and query schema is derived from
//! the Rust type its handler reads or writes (schemars), so the document cannot drift from the
//! code.

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::control::api::{Access, ErrorBody, Payload, Route, SchemaFn, role_needed};
use crate::names::NAME_PATTERN;

/// A path parameter's schema, from its name: ids are numbers, the rest record names.
fn path_parameter(name: &str) -> Value {
    let schema = match name {
        "id" => json!({ "type": "integer", "format": "int64" }),
        _ => json!({ "type": "string", "pattern": NAME_PATTERN }),
    };
    json!({ "name": name, "in": "path", "required": true, "schema": schema })
}

/// The query parameters a route reads: the fields of its query type.
fn query_parameters(generator: &mut SchemaGenerator, make: SchemaFn) -> Vec<Value> {
    let schema = make(generator);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, field)| {
            let mut field = field.clone();
            let description = field.as_object_mut().and_then(|f| f.remove("description"));
            not_null(&mut field);
            json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "description": description.unwrap_or(Value::Null),
                "schema": field,
            })
        })
        .map(|mut p| {
            if let Some(p) = p.as_object_mut() {
                p.retain(|_, v| !v.is_null());
            }
            p
        })
        .collect()
}

/// Gives every integer schema the bounds its Rust type (and JSON's exact range) sets: the
/// derived schemas name a format (`uint32`) that validators do not enforce.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let bounds = match fields.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((json!(0), json!(u8::MAX))),
                Some("uint16") => Some((json!(0), json!(u16::MAX))),
                Some("uint32") => Some((json!(0), json!(u32::MAX))),
                Some("int32") => Some((json!(i32::MIN), json!(i32::MAX))),
                Some("uint64" | "uint") => Some((json!(0), json!(u64::MAX))),
                Some("int64" | "int") => Some((json!(i64::MIN), json!(i64::MAX))),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                fields.entry("minimum").or_insert(min);
                fields.entry("maximum").or_insert(max);
            }
            fields.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// A query parameter is absent or a value, never JSON's null: drops null from its type.
fn not_null(schema: &mut Value) {
    let Some(fields) = schema.as_object_mut() else {
        return;
    };
    if fields.get("default") == Some(&Value::Null) {
        fields.remove("default");
    }
    if let Some(Value::Array(types)) = fields.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            fields.insert("type".into(), only);
        }
    }
}

fn content(generator: &mut SchemaGenerator, payload: Payload) -> Value {
    match payload {
        Payload::Json(make) => json!({ "application/json": { "schema": make(generator) } }),
        Payload::Bytes(what) => json!({
            "application/octet-stream": { "schema": { "type": "string", "format": "binary", "description": what } }
        }),
    }
}

/// The OpenAPI 3.1 document of `routes`, titled `title`.
pub fn document(title: &str, routes: &[Route]) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let error = json!({ "application/json": { "schema": generator.subschema_for::<ErrorBody>() } });
    let mut paths = serde_json::Map::new();
    for route in routes {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(path_parameter)
            .collect();
        if let Some(make) = route.query {
            parameters.extend(query_parameters(&mut generator, make));
        }
        let mut responses = json!({
            "200": { "description": "OK", "content": content(&mut generator, route.reply) },
            "default": { "description": "An error: 4xx the caller's, 5xx the master's", "content": error },
        });
        let mut op = json!({
            "summary": route.summary,
            "operationId": format!("{}{}", route.method.as_str().to_lowercase(), route.path.replace(['/', '{', '}', '.', '-'], "_")),
            "x-fog-access": route.access.name(),
            "x-fog-role": if route.access == Access::Public { None } else { Some(role_needed(&route.method, &route.path).name()) },
            "security": if route.access == Access::Public { json!([]) } else { json!([{ "bearer": [] }]) },
            "parameters": parameters,
        });
        if let Some(body) = route.body {
            responses["413"] = json!({ "description": "The body is over the route's limit", "content": error });
            // A binary body may be empty (no ids: nothing to do); a JSON body is always sent.
            let required = matches!(body, Payload::Json(_));
            op["requestBody"] = json!({ "required": required, "content": content(&mut generator, body) });
        }
        op["responses"] = responses;
        let entry = paths.entry(route.path.clone()).or_insert_with(|| json!({}));
        entry[route.method.as_str().to_lowercase()] = op;
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": generator.take_definitions(true),
        },
        "paths": paths,
    });
    bound_integers(&mut document);
    document
}

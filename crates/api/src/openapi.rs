//! The OpenAPI 3.0 document of the HTTP/JSON routes ([`crate::rest`]),
//! made from the route table and the compiled descriptors, so it says what
//! the server reads and writes: proto field names, `x_json` fields as `x`
//! holding any JSON, 64-bit integers as strings, timestamps as RFC 3339,
//! durations as `"1.5s"`, Google's error shape for every failure.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};
use tonic::Status;

use crate::rest::{Route, route_descriptor};

/// The document for `routes`.
pub fn document(routes: &[Route]) -> Result<Value, Status> {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids = BTreeSet::new();
    for route in routes {
        let request = route_descriptor(route.request)?;
        let path_params: Vec<&str> = route
            .pattern
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.split('}').next())
            .collect();
        let mut parameters: Vec<Value> = path_params
            .iter()
            .map(|name| {
                json!({
                    "name": name, "in": "path", "required": true,
                    "schema": name_schema(name).unwrap_or_else(|| json!({ "type": "string", "minLength": 1 })),
                })
            })
            .collect();
        let ask = route.rpc == "rouse.v1.Executions/Ask";
        if !route.body {
            for field in request.fields() {
                if path_params.contains(&field.name()) {
                    continue;
                }
                let schema = if field.is_list() {
                    json!({ "type": "array", "items": schemas.scalar(&field) })
                } else {
                    schemas.scalar(&field)
                };
                let mut parameter =
                    json!({ "name": field.name(), "in": "query", "schema": schema });
                if field.is_list() {
                    parameter["explode"] = json!(true);
                }
                parameters.push(parameter);
            }
        }
        if ask {
            parameters.push(json!({
                "name": "wait", "in": "query",
                "description": "Answer with the finished execution instead of its id",
                "schema": { "type": "boolean" },
            }));
            parameters.push(json!({
                "name": "timeout", "in": "query",
                "description": "With wait: how long to wait (seconds, like `30s`; default 60s); 202 with the execution if it is still running",
                "schema": { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?s?$" },
            }));
        }
        let error = json!({
            "description": "An error: the HTTP status of the gRPC code, Google's JSON error shape",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
        });
        let answer = |schema: Value| {
            let media = if route.stream {
                "application/x-ndjson"
            } else {
                "application/json"
            };
            json!({ "description": "OK", "content": { media: { "schema": schema } } })
        };
        let response = schemas.reference(&route_descriptor(route.response)?);
        let mut responses = Map::new();
        if ask {
            let execution = schemas.reference(&route_descriptor("rouse.v1.Execution")?);
            responses.insert("200".into(), answer(execution.clone()));
            let mut accepted = answer(json!({ "anyOf": [response, execution] }));
            accepted["description"] = json!("Asked: the execution's id (its URL in Location)");
            responses.insert("202".into(), accepted);
        } else {
            responses.insert("200".into(), answer(response));
        }
        responses.insert("default".into(), error);

        let action = route.rpc.rsplit('/').next().unwrap_or(route.rpc);
        let mut operation_id = action.to_owned();
        let mut n = 2;
        while !operation_ids.insert(operation_id.clone()) {
            operation_id = format!("{action}{n}");
            n += 1;
        }
        let mut operation = json!({
            "operationId": operation_id,
            "summary": route.summary,
            "description": format!("Calls gRPC `{}`, with its permission check.", route.rpc),
            "parameters": parameters,
            "responses": responses,
        });
        if route.body {
            let body = schemas.body(&request, &path_params);
            operation["requestBody"] = json!({
                "required": false,
                "content": { "application/json": { "schema": body } },
            });
        }
        paths
            .entry(route.pattern)
            .or_default()
            .insert(method_key(&route.method).into(), operation);
    }
    let mut components = schemas.done();
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": { "type": "integer" },
                    "message": { "type": "string" },
                    "status": { "type": "string" },
                },
            }},
        }),
    );
    Ok(json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Rouse",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Rouse's control plane over HTTP/JSON: the everyday calls of its gRPC API on the same port. Send `Authorization: Bearer <token>` (`rouse auth print-access-token`). Fields at their default value are left out of answers.",
        },
        "security": [ { "bearer": [] }, {} ],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": components,
        },
    }))
}

/// The shape of a project's or a service's name (`rouse_core::names`),
/// for parameters and body fields called `project`, `service` or `name`.
fn name_schema(field: &str) -> Option<Value> {
    let longest = rouse_core::names::MAX_QUALIFIED_NAME_LEN;
    match field {
        "project" => Some(json!({
            "type": "string",
            "pattern": "^[a-z]([a-z0-9_-]*[a-z0-9])?$",
            "maxLength": rouse_core::names::MAX_PROJECT_LEN,
        })),
        "service" | "name" => Some(json!({
            "type": "string",
            "pattern": "^[a-z]([a-z0-9-]*[a-z0-9])?$",
            "maxLength": longest - 2,
        })),
        _ => None,
    }
}

fn method_key(method: &Method) -> &'static str {
    match *method {
        Method::POST => "post",
        Method::PATCH => "patch",
        Method::PUT => "put",
        Method::DELETE => "delete",
        _ => "get",
    }
}

/// Message schemas, each written once under its short name.
#[derive(Default)]
struct Schemas {
    done: Map<String, Value>,
    pending: Vec<MessageDescriptor>,
}

impl Schemas {
    /// A `$ref` to `message`'s schema (or the string form of a well-known
    /// type).
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        match message.full_name() {
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" => {
                json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" })
            }
            _ => {
                let name = message.name().to_owned();
                if !self.done.contains_key(&name) && !self.pending.iter().any(|m| m.name() == name)
                {
                    self.pending.push(message.clone());
                }
                json!({ "$ref": format!("#/components/schemas/{name}") })
            }
        }
    }

    /// The schema of one value of `field` (not its list or map).
    fn scalar(&mut self, field: &FieldDescriptor) -> Value {
        if field.name().ends_with("_json") && field.kind() == Kind::String {
            return json!({ "description": "Any JSON value" });
        }
        match field.kind() {
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "pattern": "^-?[0-9]{1,19}$" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "pattern": "^[0-9]{1,20}$" }),
            Kind::Float | Kind::Double => json!({ "type": "number" }),
            Kind::Enum(e) => json!({
                "type": "string",
                "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>(),
            }),
            Kind::Message(m) => self.reference(&m),
        }
    }

    /// The schema of `field` as it appears in an object.
    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return json!({ "type": "object" });
            };
            let value = entry.map_entry_value_field();
            return json!({ "type": "object", "additionalProperties": self.scalar(&value) });
        }
        let one = self.scalar(field);
        if field.is_list() {
            json!({ "type": "array", "items": one })
        } else {
            one
        }
    }

    /// The properties of `message`, `x_json` fields named `x`.
    fn properties(&mut self, message: &MessageDescriptor, skip: &[&str]) -> Map<String, Value> {
        let mut properties = Map::new();
        for field in message.fields() {
            if skip.contains(&field.name()) {
                continue;
            }
            let name = match field.name().strip_suffix("_json") {
                Some(short) if field.kind() == Kind::String => short.to_owned(),
                _ => field.name().to_owned(),
            };
            let schema = self.field(&field);
            properties.insert(name, schema);
        }
        properties
    }

    /// A request body: `message` without the fields the path gives.
    fn body(&mut self, message: &MessageDescriptor, path_params: &[&str]) -> Value {
        let mut properties = self.properties(message, path_params);
        for (name, schema) in properties.iter_mut() {
            if let Some(shape) = name_schema(name) {
                *schema = shape;
            }
        }
        json!({ "type": "object", "properties": properties, "additionalProperties": false })
    }

    /// Every schema referred to, written.
    fn done(mut self) -> Map<String, Value> {
        while let Some(message) = self.pending.pop() {
            let properties = self.properties(&message, &[]);
            self.done.insert(
                message.name().to_owned(),
                json!({ "type": "object", "properties": properties }),
            );
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route_and_every_schema_it_refers_to() {
        let doc = crate::rest::openapi_document().expect("document");
        let paths = doc["paths"].as_object().expect("paths");
        let service = &paths["/v1/projects/{project}/services/{name}"];
        for method in ["get", "patch", "delete"] {
            assert!(service.get(method).is_some(), "{method}");
        }
        let ask = &paths["/v1/projects/{project}/services/{service}/executions"]["post"];
        let body = &ask["requestBody"]["content"]["application/json"]["schema"]["properties"];
        assert!(body.get("input").is_some(), "{body}");
        assert!(
            body.get("project").is_none(),
            "path fields are not in the body: {body}"
        );
        let execution = &doc["components"]["schemas"]["Execution"]["properties"];
        assert_eq!(execution["receive_time"]["format"], "date-time");
        assert!(execution.get("output").is_some());
        let text = doc.to_string();
        for reference in text.split("#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{name} is referred to but not written"
            );
        }
        let mut ids = BTreeSet::new();
        for operations in paths.values() {
            for operation in operations.as_object().expect("operations").values() {
                let id = operation["operationId"].as_str().expect("id");
                assert!(ids.insert(id.to_owned()), "{id} twice");
            }
        }
    }
}

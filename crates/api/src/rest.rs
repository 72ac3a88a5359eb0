//! The HTTP/JSON face of the API, on the gRPC port: the everyday calls
//! (services, revisions, routing, executions, logs, builds) for `curl`
//! users, in the shape FaaSpot and Google's REST APIs have.
//!
//! A request that is not gRPC (its `content-type` is not
//! `application/grpc…`) is answered here; gRPC passes through untouched.
//! Each route of [`ROUTES`] names the RPC it calls: the request message is
//! built from the path's parameters, the query and the JSON body through the
//! compiled descriptors, and the very handler gRPC calls answers it, behind
//! the same [`Gate`] (the permission check of [`crate::methods`], audited
//! the same way). Errors are Google's JSON error shape, with the HTTP status
//! [`http_status`] maps each gRPC code to.
//!
//! - Bodies and answers are proto3 JSON with the proto's field names
//!   (`asked_by`); fields at their default are left out, as Google's REST
//!   APIs leave them out. A string field `x_json` holding JSON appears as
//!   `x`, holding the JSON itself (`"input": {"n": 1}`).
//! - `Authorization: Bearer <token>` (from `rouse auth print-access-token`),
//!   or `Token <token>`.
//! - `POST /v1/projects/P/services/S/executions` asks a question: `202`
//!   with the execution id and a `Location`, or with `?wait=true` the
//!   finished execution (`200`, its `output` and events; `202` if it is
//!   still running after `timeout`, default 60 s).
//! - Streams (logs, an execution's events) are NDJSON, one object per line;
//!   an error after the first line ends the stream with an `{"error": …}`
//!   line.
//! - `GET /openapi.json`: the OpenAPI 3.0 document of these routes, made
//!   from the same table and descriptors.
//! - `/ui`: the web console ([`ui`]), HTML pages made from the same
//!   handlers behind the same gates.
//! - `GET /v2/token`: the image registry's token server
//!   ([`crate::registry`]).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    SerializeOptions,
};
use serde_json::{Map, Value, json};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::methods::{self, Gate};
use crate::pb;

mod ui;

/// The largest JSON body taken, as gRPC's default message limit.
const MAX_BODY: usize = 4 << 20;
/// How long `?wait=true` waits for an answer unless `timeout` says.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest `timeout` taken.
const MAX_WAIT: Duration = Duration::from_secs(3600);

type HttpResponse = http::Response<tonic::body::Body>;

/// The APIs the routes call.
struct Apis {
    backend: crate::Backend,
    services: crate::ServicesApi,
    revisions: crate::revisions::RevisionsApi,
    executions: crate::executions::ExecutionsApi,
    logs: crate::executions::LogsApi,
    rollouts: crate::rollout::RolloutsApi,
    builds: crate::builds::BuildsApi,
}

/// What a route's handler is given.
struct Call {
    /// The route called: its RPC and messages.
    route: &'static Route,
    apis: Arc<Apis>,
    metadata: MetadataMap,
    /// The request message, encoded.
    message: Vec<u8>,
    /// `?wait=true` on an ask.
    wait: Option<Duration>,
}

impl Call {
    /// The typed request for RPC `rpc` (`rouse.v1.Services/GetService`),
    /// carrying the caller's token and the method's gate.
    fn request<T: prost::Message + Default>(
        &self,
        rpc: &str,
        message: T,
    ) -> Result<(tonic::Request<T>, Gate), Status> {
        gated(&self.metadata, rpc, message)
    }

    fn decode<T: prost::Message + Default>(&self) -> Result<T, Status> {
        T::decode(self.message.as_slice())
            .map_err(|e| Status::internal(format!("cannot convert the request: {e}")))
    }
}

/// The request for RPC `rpc` (`rouse.v1.Services/GetService`) carrying
/// the caller's token (`metadata`) and the method's gate.
fn gated<T>(
    metadata: &MetadataMap,
    rpc: &str,
    message: T,
) -> Result<(tonic::Request<T>, Gate), Status> {
    let method = methods::find(&format!("/{rpc}"))
        .ok_or_else(|| Status::internal(format!("route to unknown method {rpc}")))?;
    let gate = Gate::new(method);
    let mut extensions = tonic::Extensions::new();
    extensions.insert(gate.clone());
    Ok((
        tonic::Request::from_parts(metadata.clone(), extensions, message),
        gate,
    ))
}

/// What a handler answers.
enum Reply {
    Json {
        status: StatusCode,
        body: Value,
        location: Option<String>,
    },
    Lines(BoxStream<'static, Result<Value, Status>>),
}

type Handler = fn(Call) -> BoxFuture<'static, Result<Reply, Status>>;

/// A route: `method pattern` → the RPC `rpc`.
pub struct Route {
    pub method: Method,
    /// `/v1/projects/{project}/services/{name}`; a segment may end in a
    /// literal verb (`{id}:cancel`).
    pub pattern: &'static str,
    /// The RPC called: `rouse.v1.Services/GetService`.
    pub rpc: &'static str,
    /// Its request and answer messages (`rouse.v1.GetServiceRequest`).
    pub request: &'static str,
    pub response: &'static str,
    /// Whether the request's fields come from a JSON body (else from the query).
    pub body: bool,
    /// Whether the answer is an NDJSON stream.
    pub stream: bool,
    pub summary: &'static str,
    handler: Handler,
}

/// The handler of a unary route: decodes `$req`, calls `$trait::$method`
/// on `apis.$api` behind the route's RPC's gate, answers the JSON of the
/// route's response message.
macro_rules! unary {
    ($api:ident, $trait:path, $method:ident, $req:ty) => {
        |call: Call| -> BoxFuture<'static, Result<Reply, Status>> {
            Box::pin(async move {
                let (request, gate) = call.request(call.route.rpc, call.decode::<$req>()?)?;
                let answer = <_ as $trait>::$method(&call.apis.$api, request).await?;
                passed(&gate)?;
                Ok(Reply::Json {
                    status: StatusCode::OK,
                    body: to_json(call.route.response, &answer.into_inner())?,
                    location: None,
                })
            })
        }
    };
}

/// The same for a route answering a stream of its response message.
macro_rules! streaming {
    ($api:ident, $trait:path, $method:ident, $req:ty) => {
        |call: Call| -> BoxFuture<'static, Result<Reply, Status>> {
            Box::pin(async move {
                let (request, gate) = call.request(call.route.rpc, call.decode::<$req>()?)?;
                let stream = <_ as $trait>::$method(&call.apis.$api, request)
                    .await?
                    .into_inner();
                passed(&gate)?;
                let item = call.route.response;
                Ok(Reply::Lines(
                    stream
                        .map(move |m| m.and_then(|m| to_json(item, &m)))
                        .boxed(),
                ))
            })
        }
    };
}

use pb::builds_server::Builds;
use pb::executions_server::Executions;
use pb::logs_server::Logs;
use pb::revisions_server::Revisions;
use pb::rollouts_server::Rollouts;
use pb::services_server::Services;

#[rustfmt::skip]
fn routes() -> &'static [Route] {
    static ROUTES: OnceLock<Vec<Route>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let r = |method: Method, pattern, rpc, request, response, body, stream, summary, handler| Route {
            method, pattern, rpc, request, response, body, stream, summary, handler,
        };
        vec![
            r(Method::GET, "/v1/projects/{project}/services", "rouse.v1.Services/ListServices",
              "rouse.v1.ListServicesRequest", "rouse.v1.ListServicesResponse", false, false,
              "List a project's services",
              unary!(services, Services, list_services, pb::ListServicesRequest)),
            r(Method::POST, "/v1/projects/{project}/services", "rouse.v1.Services/CreateService",
              "rouse.v1.CreateServiceRequest", "rouse.v1.Service", true, false,
              "Create a service (its topic and subscription)",
              unary!(services, Services, create_service, pb::CreateServiceRequest)),
            r(Method::GET, "/v1/projects/{project}/services/{name}", "rouse.v1.Services/GetService",
              "rouse.v1.GetServiceRequest", "rouse.v1.Service", false, false,
              "Get a service",
              unary!(services, Services, get_service, pb::GetServiceRequest)),
            r(Method::PATCH, "/v1/projects/{project}/services/{name}", "rouse.v1.Services/UpdateService",
              "rouse.v1.UpdateServiceRequest", "rouse.v1.Service", true, false,
              "Change a service's scaling, environment, node selector or ingress",
              unary!(services, Services, update_service, pb::UpdateServiceRequest)),
            r(Method::DELETE, "/v1/projects/{project}/services/{name}", "rouse.v1.Services/DeleteService",
              "rouse.v1.DeleteServiceRequest", "rouse.v1.DeleteServiceResponse", false, false,
              "Delete a service",
              unary!(services, Services, delete_service, pb::DeleteServiceRequest)),
            r(Method::GET, "/v1/projects/{project}/services/{service}/revisions", "rouse.v1.Revisions/ListRevisions",
              "rouse.v1.ListRevisionsRequest", "rouse.v1.ListRevisionsResponse", false, false,
              "List a service's revisions",
              unary!(revisions, Revisions, list_revisions, pb::ListRevisionsRequest)),
            r(Method::POST, "/v1/projects/{project}/services/{service}/revisions", "rouse.v1.Revisions/CreateRevision",
              "rouse.v1.CreateRevisionRequest", "rouse.v1.Revision", true, false,
              "Deploy a revision (an image or a command) and make it serve",
              unary!(revisions, Revisions, create_revision, pb::CreateRevisionRequest)),
            r(Method::GET, "/v1/projects/{project}/services/{service}/routing", "rouse.v1.Rollouts/GetRouting",
              "rouse.v1.GetRoutingRequest", "rouse.v1.RoutingStatus", false, false,
              "Which revisions serve, with their traffic and tags",
              unary!(rollouts, Rollouts, get_routing, pb::GetRoutingRequest)),
            r(Method::POST, "/v1/projects/{project}/services/{service}/executions", "rouse.v1.Executions/Ask",
              "rouse.v1.AskRequest", "rouse.v1.AskResponse", true, false,
              "Ask the service a question: 202 with the execution id, or with ?wait=true the finished execution",
              ask),
            r(Method::GET, "/v1/projects/{project}/services/{service}/executions", "rouse.v1.Executions/ListExecutions",
              "rouse.v1.ListExecutionsRequest", "rouse.v1.ListExecutionsResponse", false, false,
              "List a service's executions, newest first",
              unary!(executions, Executions, list_executions, pb::ListExecutionsRequest)),
            r(Method::GET, "/v1/projects/{project}/services/{service}/logs", "rouse.v1.Logs/ReadLogs",
              "rouse.v1.ReadLogsRequest", "rouse.v1.LogLine", false, true,
              "Read the service's instances' logs (NDJSON; ?follow=true keeps streaming)",
              streaming!(logs, Logs, read_logs, pb::ReadLogsRequest)),
            r(Method::POST, "/v1/projects/{project}/services/{service}/builds", "rouse.v1.Builds/SubmitBuild",
              "rouse.v1.SubmitBuildRequest", "rouse.v1.Build", true, false,
              "Build a directory on the server's host and roll the image out",
              unary!(builds, Builds, submit_build, pb::SubmitBuildRequest)),
            r(Method::POST, "/v1/projects/{project}/services/{name}:issueDockerCredentials", "rouse.v1.Services/IssueDockerCredentials",
              "rouse.v1.IssueDockerCredentialsRequest", "rouse.v1.DockerCredentials", false, false,
              "Credentials for docker login to the service's image repository (that repository only, for an hour)",
              unary!(services, Services, issue_docker_credentials, pb::IssueDockerCredentialsRequest)),
            r(Method::POST, "/v1/projects/{project}/services/{service}/image", "rouse.v1.Builds/DeployImage",
              "rouse.v1.DeployImageRequest", "rouse.v1.Build", true, false,
              "Deploy an image (a tag of the service's repository, or a whole reference): pulled and rolled out by a build",
              unary!(builds, Builds, deploy_image, pb::DeployImageRequest)),
            r(Method::POST, "/v1/projects/{project}/services/{service}/function", "rouse.v1.Builds/DeployFunction",
              "rouse.v1.DeployFunctionRequest", "rouse.v1.Build", true, false,
              "Deploy a Python function (main(args, context)): its requirements installed by a build that rolls it out",
              unary!(builds, Builds, deploy_function, pb::DeployFunctionRequest)),
            r(Method::GET, "/v1/executions", "rouse.v1.Executions/ListExecutions",
              "rouse.v1.ListExecutionsRequest", "rouse.v1.ListExecutionsResponse", false, false,
              "List executions across the projects the caller may see",
              unary!(executions, Executions, list_executions, pb::ListExecutionsRequest)),
            r(Method::GET, "/v1/executions/{id}", "rouse.v1.Executions/GetExecution",
              "rouse.v1.GetExecutionRequest", "rouse.v1.Execution", false, false,
              "Get an execution, with its events and output",
              unary!(executions, Executions, get_execution, pb::GetExecutionRequest)),
            r(Method::POST, "/v1/executions/{id}:cancel", "rouse.v1.Executions/CancelExecution",
              "rouse.v1.CancelExecutionRequest", "rouse.v1.Execution", true, false,
              "Cancel an execution",
              unary!(executions, Executions, cancel_execution, pb::CancelExecutionRequest)),
            r(Method::GET, "/v1/executions/{id}/events", "rouse.v1.Executions/WatchExecution",
              "rouse.v1.WatchExecutionRequest", "rouse.v1.Event", false, true,
              "Follow an execution's events until it finishes (NDJSON)",
              streaming!(executions, Executions, watch_execution, pb::WatchExecutionRequest)),
            r(Method::GET, "/v1/builds", "rouse.v1.Builds/ListBuilds",
              "rouse.v1.ListBuildsRequest", "rouse.v1.ListBuildsResponse", false, false,
              "List builds, newest first",
              unary!(builds, Builds, list_builds, pb::ListBuildsRequest)),
            r(Method::GET, "/v1/builds/{id}", "rouse.v1.Builds/GetBuild",
              "rouse.v1.GetBuildRequest", "rouse.v1.Build", false, false,
              "Get a build",
              unary!(builds, Builds, get_build, pb::GetBuildRequest)),
            r(Method::POST, "/v1/builds/{id}:cancel", "rouse.v1.Builds/CancelBuild",
              "rouse.v1.CancelBuildRequest", "rouse.v1.Build", true, false,
              "Cancel a build",
              unary!(builds, Builds, cancel_build, pb::CancelBuildRequest)),
            r(Method::GET, "/v1/builds/{id}/logs", "rouse.v1.Builds/StreamBuildLogs",
              "rouse.v1.StreamBuildLogsRequest", "rouse.v1.BuildLogLine", false, true,
              "A build's log (NDJSON; ?follow=true until it finishes)",
              streaming!(builds, Builds, stream_build_logs, pb::StreamBuildLogsRequest)),
        ]
    })
}

/// Asks, then with `?wait=true` follows the question to its end.
fn ask(call: Call) -> BoxFuture<'static, Result<Reply, Status>> {
    Box::pin(async move {
        let (request, gate) =
            call.request("rouse.v1.Executions/Ask", call.decode::<pb::AskRequest>()?)?;
        let id = call.apis.executions.ask(request).await?.into_inner().id;
        passed(&gate)?;
        let location = format!("/v1/executions/{id}");
        let Some(wait) = call.wait else {
            return Ok(Reply::Json {
                status: StatusCode::ACCEPTED,
                body: json!({ "id": id }),
                location: Some(location),
            });
        };
        // The events end when the execution does; then its record.
        let watch = pb::WatchExecutionRequest {
            id: id.clone(),
            after_event_id: 0,
        };
        let (request, gate) = call.request("rouse.v1.Executions/WatchExecution", watch)?;
        let followed = tokio::time::timeout(wait, async {
            let mut events = call
                .apis
                .executions
                .watch_execution(request)
                .await?
                .into_inner();
            passed(&gate)?;
            while let Some(event) = events.next().await {
                event?;
            }
            Ok::<_, Status>(())
        })
        .await;
        // A caller who may ask but not read the execution (anonymous, with
        // `allUsers` as invoker) still asked: it gets the id, as without
        // `wait`, not a refusal.
        let asked = |id: String, location: String| Reply::Json {
            status: StatusCode::ACCEPTED,
            body: json!({ "id": id }),
            location: Some(location),
        };
        let unreadable =
            |e: &Status| matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated);
        let finished = match followed {
            Ok(Ok(())) => true,
            Ok(Err(e)) if unreadable(&e) => return Ok(asked(id, location)),
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => false,
        };
        let (request, gate) = call.request(
            "rouse.v1.Executions/GetExecution",
            pb::GetExecutionRequest { id: id.clone() },
        )?;
        let execution = match call.apis.executions.get_execution(request).await {
            Ok(answer) => answer.into_inner(),
            Err(e) if unreadable(&e) => return Ok(asked(id, location)),
            Err(e) => return Err(e),
        };
        passed(&gate)?;
        let done = finished
            && matches!(
                execution.status.as_str(),
                "succeeded" | "failed" | "cancelled"
            );
        Ok(Reply::Json {
            status: if done {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            },
            body: to_json("rouse.v1.Execution", &execution)?,
            location: Some(location),
        })
    })
}

/// INTERNAL unless the handler made its permission check (as the method
/// layer insists for gRPC).
fn passed(gate: &Gate) -> Result<(), Status> {
    if gate.passed() {
        return Ok(());
    }
    tracing::error!(
        method = gate.method.path,
        "a handler answered without a permission check; the answer was withheld"
    );
    Err(Status::internal(
        "internal error; the server log has the details",
    ))
}

fn pool() -> Result<&'static DescriptorPool, Status> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
        .ok_or_else(|| Status::internal("the API's descriptors do not decode"))
}

fn descriptor(name: &str) -> Result<MessageDescriptor, Status> {
    pool()?
        .get_message_by_name(name)
        .ok_or_else(|| Status::internal(format!("no descriptor for {name}")))
}

/// `message` (of type `name`) as JSON: proto field names, defaults left
/// out, `x_json` strings shown as the JSON they hold, under `x`.
fn to_json<T: prost::Message>(name: &str, message: &T) -> Result<Value, Status> {
    let dynamic = DynamicMessage::decode(descriptor(name)?, message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("cannot convert {name}: {e}")))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut value = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| Status::internal(format!("cannot write {name} as JSON: {e}")))?;
    unwrap_json_fields(&mut value);
    Ok(value)
}

/// Replaces every `"x_json": "<json>"` with `"x": <json>`, at any depth.
fn unwrap_json_fields(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map
                .keys()
                .filter(|k| k.ends_with("_json"))
                .cloned()
                .collect();
            for key in keys {
                if let Some(Value::String(text)) = map.remove(&key) {
                    let parsed = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    map.insert(key.trim_end_matches("_json").to_owned(), parsed);
                }
            }
            map.values_mut().for_each(unwrap_json_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_json_fields),
        _ => {}
    }
}

/// A caller's mistake, as INVALID_ARGUMENT.
fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// The request message for `route` from its path parameters, query and
/// body, encoded; and the REST-only `wait`.
fn request_message(
    route: &Route,
    params: Vec<(&'static str, String)>,
    query: Option<&str>,
    body: &[u8],
) -> Result<(Vec<u8>, Option<Duration>), Status> {
    let desc = descriptor(route.request)?;
    let mut fields = Map::new();
    let mut wait = None;
    let mut timeout = None;
    let mut query_fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let is_ask = route.rpc == "rouse.v1.Executions/Ask";
        match key.as_ref() {
            "wait" if is_ask => wait = Some(parse_bool("wait", &value)?),
            "timeout" if is_ask => timeout = Some(parse_timeout(&value)?),
            _ => query_fields
                .entry(key.into_owned())
                .or_default()
                .push(value.into_owned()),
        }
    }
    if route.body {
        if let Some(key) = query_fields.keys().next() {
            return Err(invalid(format!(
                "unknown query parameter `{key}`; {} {} takes its fields in the JSON body",
                route.method, route.pattern
            )));
        }
        let text = std::str::from_utf8(body).map_err(|_| invalid("the body is not UTF-8 JSON"))?;
        if !text.trim().is_empty() {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => fields = map,
                Ok(other) => {
                    return Err(invalid(format!(
                        "the body must be a JSON object, not {}; GET /openapi.json describes it",
                        rouse_core::json_kind(&other)
                    )));
                }
                Err(e) => return Err(invalid(format!("the body is not JSON: {e}"))),
            }
        }
        wrap_json_fields(&desc, &mut fields)?;
    } else {
        for (key, values) in query_fields {
            let field = desc.get_field_by_name(&key).ok_or_else(|| {
                let known: Vec<String> = desc
                    .fields()
                    .filter(|f| !params.iter().any(|(p, _)| *p == f.name()))
                    .map(|f| f.name().to_owned())
                    .collect();
                invalid(format!(
                    "unknown query parameter `{key}`; {} {} takes {}",
                    route.method,
                    route.pattern,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            fields.insert(key, query_value(&field, values)?);
        }
    }
    for (name, value) in params {
        match fields.get(name) {
            Some(Value::String(given)) if *given != value => {
                return Err(invalid(format!(
                    "`{name}` is `{value}` in the path and `{given}` in the body; leave it out of the body"
                )));
            }
            _ => {
                fields.insert(name.to_owned(), Value::String(value));
            }
        }
    }
    let message = DynamicMessage::deserialize_with_options(
        desc,
        Value::Object(fields),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| {
        invalid(format!(
            "invalid request for {} {}: {e}; GET /openapi.json describes it",
            route.method, route.pattern
        ))
    })?;
    let wait = match (wait, timeout) {
        (Some(true), t) => Some(t.unwrap_or(DEFAULT_WAIT)),
        (_, Some(_)) if wait != Some(true) => {
            return Err(invalid(
                "`timeout` is for `?wait=true`; add it or leave `timeout` out",
            ));
        }
        _ => None,
    };
    Ok((message.encode_to_vec(), wait))
}

/// In a body, `x` (any JSON) fills the string field `x_json`.
fn wrap_json_fields(
    desc: &MessageDescriptor,
    fields: &mut Map<String, Value>,
) -> Result<(), Status> {
    for field in desc.fields() {
        let Some(short) = field.name().strip_suffix("_json") else {
            continue;
        };
        if let Some(value) = fields.remove(short) {
            if fields.contains_key(field.name()) {
                return Err(invalid(format!(
                    "the body has both `{short}` and `{}`; send `{short}` only",
                    field.name()
                )));
            }
            fields.insert(field.name().to_owned(), Value::String(value.to_string()));
        }
    }
    Ok(())
}

fn parse_bool(name: &str, value: &str) -> Result<bool, Status> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(invalid(format!(
            "`{name}={other}` is not a boolean; use `{name}=true` or `{name}=false`"
        ))),
    }
}

fn parse_timeout(value: &str) -> Result<Duration, Status> {
    let seconds = value.strip_suffix('s').unwrap_or(value);
    match seconds.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= MAX_WAIT.as_secs_f64() => Ok(Duration::from_secs_f64(s)),
        _ => Err(invalid(format!(
            "`timeout={value}` is not a wait between 0 and {}s; use seconds like `timeout=30s`",
            MAX_WAIT.as_secs()
        ))),
    }
}

/// A query parameter's values as the JSON of `field`.
fn query_value(field: &FieldDescriptor, values: Vec<String>) -> Result<Value, Status> {
    let one = |text: String| -> Result<Value, Status> {
        let bad = |what: &str| invalid(format!("`{}={text}` is not {what}", field.name()));
        Ok(match field.kind() {
            Kind::Bool => Value::Bool(parse_bool(field.name(), &text)?),
            Kind::Uint32 | Kind::Fixed32 => Value::from(
                text.parse::<u32>()
                    .map_err(|_| bad("a whole number from 0 to 4294967295"))?,
            ),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::from(
                text.parse::<i32>()
                    .map_err(|_| bad("a 32-bit whole number"))?,
            ),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::from(
                text.parse::<i64>()
                    .map_err(|_| bad("a 64-bit whole number"))?,
            ),
            Kind::Uint64 | Kind::Fixed64 => Value::from(
                text.parse::<u64>()
                    .map_err(|_| bad("a whole number of at least 0"))?,
            ),
            Kind::Float | Kind::Double => {
                Value::from(text.parse::<f64>().map_err(|_| bad("a number"))?)
            }
            _ => Value::String(text),
        })
    };
    if field.is_list() {
        values
            .into_iter()
            .map(one)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    } else if field.is_map() || matches!(field.kind(), Kind::Message(_)) {
        Err(invalid(format!(
            "`{}` cannot be given in the query",
            field.name()
        )))
    } else {
        let count = values.len();
        let last = values.into_iter().next_back().unwrap_or_default();
        if count > 1 {
            return Err(invalid(format!(
                "`{}` is given {count} times; give it once",
                field.name()
            )));
        }
        one(last)
    }
}

/// The route `path` matches with its parameters, or why none does.
enum Matched {
    Route(&'static Route, Vec<(&'static str, String)>),
    /// The path is a route's, the method is not: the methods it takes.
    Method(Vec<Method>),
    None,
}

fn find_route(method: &Method, path: &str) -> Matched {
    let mut allowed = Vec::new();
    for route in routes() {
        let Some(params) = match_path(route.pattern, path) else {
            continue;
        };
        if route.method == *method {
            return Matched::Route(route, params);
        }
        allowed.push(route.method.clone());
    }
    if allowed.is_empty() {
        Matched::None
    } else {
        Matched::Method(allowed)
    }
}

/// The parameters of `path` under `pattern`, percent-decoded.
fn match_path(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    let mut params = Vec::new();
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) => {
                if let Some(rest) = p.strip_prefix('{') {
                    let (name, verb) = rest.split_once('}')?;
                    let value = s.strip_suffix(verb)?;
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .ok()?;
                    if value.is_empty() || value.contains(':') && !verb.is_empty() {
                        return None;
                    }
                    params.push((name, value.into_owned()));
                } else if p != s {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// The HTTP status of gRPC code `code`, as Google's APIs map them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499, "client closed request"
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Google's name of `code` (`NOT_FOUND`).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn error_json(status: &Status) -> Value {
    json!({ "error": {
        "code": http_status(status.code()).as_u16(),
        "message": status.message(),
        "status": code_name(status.code()),
    }})
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from(body.to_string()),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: &Status) -> HttpResponse {
    json_response(http_status(status.code()), &error_json(status))
}

/// The caller's token as gRPC metadata: `Bearer x`, or `Token x` read as
/// `Bearer x`.
fn metadata(headers: &http::HeaderMap) -> Result<MetadataMap, Status> {
    let mut map = http::HeaderMap::new();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = match value.to_str().ok().and_then(|v| v.strip_prefix("Token ")) {
            Some(token) => HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Status::unauthenticated("the `Authorization` header is not a valid token")
            })?,
            None => value.clone(),
        };
        map.insert(header::AUTHORIZATION, value);
    }
    Ok(MetadataMap::from_headers(map))
}

/// Answers one HTTP/JSON request.
async fn handle<B>(apis: Arc<Apis>, request: http::Request<B>) -> HttpResponse
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path == "/ui" || path.starts_with("/ui/") {
        return match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => ui::handle(apis, parts, collected.to_bytes()).await,
            Err(e) => error_response(&Status::invalid_argument(format!(
                "cannot read the body: {e}"
            ))),
        };
    }
    if path == "/v2/token" {
        return crate::registry::token(&apis.backend, &parts).await;
    }
    if path == "/openapi.json" {
        return match (parts.method.clone(), openapi_document()) {
            (Method::GET, Ok(doc)) => json_response(StatusCode::OK, doc),
            (Method::GET, Err(e)) => error_response(&e),
            _ => method_not_allowed(&[Method::GET]),
        };
    }
    let (route, params) = match find_route(&parts.method, path) {
        Matched::Route(route, params) => (route, params),
        Matched::Method(allowed) => return method_not_allowed(&allowed),
        Matched::None => {
            return json_response(
                StatusCode::NOT_FOUND,
                &error_json(&Status::not_found(format!(
                    "no route `{} {path}`; GET /openapi.json lists the routes (`/v1/projects/<project>/services/<service>/…`, `/v1/executions/<id>`, `/v1/builds/<id>`)",
                    parts.method
                ))),
            );
        }
    };
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &error_json(&Status::resource_exhausted(format!(
                        "the body is over {} MiB; send a smaller one",
                        MAX_BODY >> 20
                    ))),
                )
            } else {
                error_response(&Status::invalid_argument(format!(
                    "cannot read the body: {e}"
                )))
            };
        }
    };
    let call = match (
        request_message(route, params, parts.uri.query(), &body),
        metadata(&parts.headers),
    ) {
        (Ok((message, wait)), Ok(metadata)) => Call {
            route,
            apis,
            metadata,
            message,
            wait,
        },
        (Err(e), _) | (_, Err(e)) => return error_response(&e),
    };
    match (route.handler)(call).await {
        Err(e) => error_response(&e),
        Ok(Reply::Json {
            status,
            body,
            location,
        }) => {
            let mut response = json_response(status, &body);
            if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Ok(Reply::Lines(stream)) => {
            // An error ends the stream, as its last line.
            let lines = stream.scan(false, |ended, item| {
                if *ended {
                    return futures::future::ready(None);
                }
                let mut line = match item {
                    Ok(value) => value.to_string(),
                    Err(e) => {
                        *ended = true;
                        error_json(&e).to_string()
                    }
                };
                line.push('\n');
                futures::future::ready(Some(Ok::<_, std::convert::Infallible>(
                    http_body::Frame::data(Bytes::from(line)),
                )))
            });
            let mut response = http::Response::new(tonic::body::Body::new(
                http_body_util::StreamBody::new(lines),
            ));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
    }
}

fn method_not_allowed(allowed: &[Method]) -> HttpResponse {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": {
            "code": 405,
            "message": format!("this path takes {}", names.join(", ")),
            "status": "METHOD_NOT_ALLOWED",
        }}),
    );
    if let Ok(allow) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// Serves HTTP/JSON requests itself and passes gRPC on.
#[derive(Clone)]
pub struct JsonLayer {
    apis: Arc<Apis>,
}

impl JsonLayer {
    pub fn new(backend: crate::Backend) -> Self {
        Self {
            apis: Arc::new(Apis {
                backend: backend.clone(),
                services: crate::ServicesApi::new(backend.clone()),
                revisions: crate::revisions::RevisionsApi::new(backend.clone()),
                executions: crate::executions::ExecutionsApi::new(backend.clone()),
                logs: crate::executions::LogsApi::new(backend.clone()),
                rollouts: crate::rollout::RolloutsApi::new(backend.clone()),
                builds: crate::builds::BuildsApi::new(backend),
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for JsonLayer {
    type Service = Json<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Json {
            apis: self.apis.clone(),
            inner,
        }
    }
}

/// The service [`JsonLayer`] makes.
#[derive(Clone)]
pub struct Json<S> {
    apis: Arc<Apis>,
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for Json<S>
where
    S: tower_service::Service<http::Request<B>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move { inner.call(request).await });
        }
        let apis = self.apis.clone();
        Box::pin(async move { Ok(handle(apis, request).await) })
    }
}

/// The OpenAPI document, made once.
pub fn openapi_document() -> Result<&'static Value, Status> {
    static DOC: OnceLock<Result<Value, String>> = OnceLock::new();
    DOC.get_or_init(|| crate::openapi::document(routes()).map_err(|e| e.message().to_owned()))
        .as_ref()
        .map_err(|e| Status::internal(e.clone()))
}

pub(crate) fn route_descriptor(name: &str) -> Result<MessageDescriptor, Status> {
    descriptor(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_routes_with_decoded_parameters() {
        let Matched::Route(route, params) =
            find_route(&Method::GET, "/v1/projects/p/services/a%2Db")
        else {
            panic!("no match");
        };
        assert_eq!(route.rpc, "rouse.v1.Services/GetService");
        assert_eq!(
            params,
            vec![("project", "p".into()), ("name", "a-b".into())]
        );
        let Matched::Route(route, params) = find_route(&Method::POST, "/v1/executions/abc:cancel")
        else {
            panic!("no match");
        };
        assert_eq!(route.rpc, "rouse.v1.Executions/CancelExecution");
        assert_eq!(params, vec![("id", "abc".into())]);
        assert!(matches!(
            find_route(&Method::PUT, "/v1/projects/p/services/s"),
            Matched::Method(m) if m.len() == 3
        ));
        assert!(matches!(
            find_route(&Method::GET, "/v1/projects/p"),
            Matched::None
        ));
        assert!(matches!(
            find_route(&Method::GET, "/v1/projects//services"),
            Matched::None
        ));
    }

    #[test]
    fn every_route_calls_a_gated_method_with_known_messages() {
        for route in routes() {
            let method = methods::find(&format!("/{}", route.rpc))
                .unwrap_or_else(|| panic!("{} is not in the method table", route.rpc));
            assert_eq!(method.path, route.rpc);
            descriptor(route.request).expect("request descriptor");
            descriptor(route.response).expect("response descriptor");
            let desc = descriptor(route.request).expect("request");
            for segment in route.pattern.split('/') {
                if let Some(rest) = segment.strip_prefix('{') {
                    let name = rest.split('}').next().unwrap_or_default();
                    assert!(
                        desc.get_field_by_name(name).is_some(),
                        "{}: `{name}` is not a field of {}",
                        route.pattern,
                        route.request
                    );
                }
            }
        }
    }

    #[test]
    fn bodies_queries_and_paths_make_the_request() {
        let route = routes()
            .iter()
            .find(|r| r.rpc == "rouse.v1.Executions/Ask")
            .expect("ask");
        let (message, wait) = request_message(
            route,
            vec![("project", "p".into()), ("service", "s".into())],
            Some("wait=true&timeout=5s"),
            br#"{"input": {"n": 1}, "forward_logs": true}"#,
        )
        .expect("made");
        let ask = pb::AskRequest::decode(message.as_slice()).expect("decodes");
        assert_eq!((ask.project.as_str(), ask.service.as_str()), ("p", "s"));
        assert_eq!(ask.input_json, r#"{"n":1}"#);
        assert!(ask.forward_logs);
        assert_eq!(wait, Some(Duration::from_secs(5)));

        let error = request_message(
            route,
            vec![("project", "p".into()), ("service", "s".into())],
            None,
            br#"{"service": "other"}"#,
        )
        .expect_err("a body naming another service is refused");
        assert!(
            error.message().contains("`service` is `s` in the path"),
            "{}",
            error.message()
        );
        let error = request_message(route, vec![], None, b"[1]").expect_err("not an object");
        assert!(error.message().contains("an array"), "{}", error.message());
        let error =
            request_message(route, vec![], None, br#"{"inptu": 1}"#).expect_err("unknown field");
        assert!(error.message().contains("inptu"), "{}", error.message());

        let list = routes()
            .iter()
            .find(|r| {
                r.pattern == "/v1/projects/{project}/services/{service}/executions"
                    && r.method == Method::GET
            })
            .expect("list");
        let (message, _) = request_message(
            list,
            vec![("project", "p".into()), ("service", "s".into())],
            Some("limit=3&status=failed"),
            b"",
        )
        .expect("made");
        let req = pb::ListExecutionsRequest::decode(message.as_slice()).expect("decodes");
        assert_eq!((req.limit, req.status.as_str()), (3, "failed"));
        for (query, named) in [
            ("limit=many", "limit=many"),
            ("colour=red", "colour"),
            ("wait=true", "wait"),
        ] {
            let error = request_message(list, vec![], Some(query), b"").expect_err(query);
            assert!(
                error.message().contains(named),
                "{query}: {}",
                error.message()
            );
        }
    }

    #[test]
    fn json_fields_are_shown_as_json() {
        let execution = pb::Execution {
            id: "q".into(),
            output_json: r#"{"n":2}"#.into(),
            events: vec![pb::Event {
                kind: "result".into(),
                data_json: r#"{"output_values":{"n":2}}"#.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let value = to_json("rouse.v1.Execution", &execution).expect("json");
        assert_eq!(value["output"], json!({"n": 2}));
        assert_eq!(value["events"][0]["data"]["output_values"]["n"], 2);
        assert!(
            value.get("status").is_none(),
            "defaults are left out: {value}"
        );
    }

    #[test]
    fn grpc_codes_map_to_googles_http_statuses() {
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let body = error_json(&Status::not_found("gone"));
        assert_eq!(body["error"]["code"], 404);
        assert_eq!(body["error"]["status"], "NOT_FOUND");
    }
}

//! A stand-in for Google's Cloud Run Admin API (v2, REST) and the metadata
//! server, for tests of `rouse server --runtime cloudrun`: no Google
//! endpoint can be reached here, so the official client is pointed at
//! this, and this starts real Docker containers for what it is asked.
//!
//! - Jobs: `create_job` stores the job; `run_job` starts one container of
//!   its image with the overrides' arguments and environment (host
//!   network) and answers with an operation that is done when the
//!   container exits (succeeded on code 0, else failed, as Cloud Run does);
//!   `cancel_execution` kills it.
//! - Services: `create_service` starts a container with `PORT` and puts
//!   a proxy of its own in front of it that, like Cloud Run's front end for
//!   a private service, refuses requests without an ID token minted for the
//!   service's URL; the service's `uri` is the proxy's.
//! - The metadata server's `identity` endpoint mints those tokens (set
//!   `GCE_METADATA_HOST` to [`FakeCloudRun::metadata_host`]).
//!
//! Every call is recorded ([`FakeCloudRun::calls`]), so a test can tell
//! what Rouse asked Cloud Run for. Dropping it removes its containers.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// The label on the fake's containers.
const LABEL: &str = "rouse-fake-cloudrun";

/// A running fake; stopped (its containers removed) when dropped.
pub struct FakeCloudRun {
    addr: SocketAddr,
    state: Arc<Shared>,
    /// Ends the fake's thread (its own runtime, so that a test's runtime
    /// can start and drop it).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    id: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    calls: Vec<String>,
    jobs: HashMap<String, Value>,
    /// Execution name → the execution (Cloud Run's JSON) and its container.
    executions: HashMap<String, (Value, String)>,
    /// Operation name → the resource it is about (an execution, or a done response).
    operations: HashMap<String, Operation>,
    services: HashMap<String, Value>,
    /// Tokens minted, with their audience.
    tokens: HashSet<(String, String)>,
    /// Requests each service's proxy let through, and refused.
    passed: HashMap<String, (usize, usize)>,
}

enum Operation {
    Execution(String),
    Done(Value),
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared
        .inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeCloudRun {
    pub fn start() -> Self {
        let state = Arc::new(Shared {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            inner: Mutex::new(Inner::default()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the fake");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("its address");
        let app = axum::Router::new()
            .fallback(admin)
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the fake");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `--cloudrun-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GCE_METADATA_HOST`.
    pub fn metadata_host(&self) -> String {
        self.addr.to_string()
    }

    /// `METHOD path` of every Admin API call so far (no query).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// The executions so far: each one's overrides' arguments and status.
    pub fn executions(&self) -> Vec<Value> {
        lock(&self.state)
            .executions
            .values()
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// The service's URL (its proxy) and how many requests the proxy let
    /// through and refused (no token, or one for another audience).
    pub fn services(&self) -> Vec<(String, usize, usize)> {
        let inner = lock(&self.state);
        inner
            .services
            .values()
            .map(|s| {
                let uri = s["uri"].as_str().unwrap_or_default().to_owned();
                let (ok, refused) = inner.passed.get(&uri).copied().unwrap_or_default();
                (uri, ok, refused)
            })
            .collect()
    }
}

impl Drop for FakeCloudRun {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        crate::echo_image::remove_containers(
            &format!("label={LABEL}={}", self.state.id),
            "{{.Names}}",
            |_| true,
        );
    }
}

fn error(status: StatusCode, name: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    let mut response = json_body(body);
    *response.status_mut() = status;
    response
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn operation(parent: &str, done: Option<Value>, metadata: Option<Value>) -> (String, Value) {
    let name = format!("{parent}/operations/{}", uuid::Uuid::new_v4().simple());
    let mut op = json!({"name": name, "done": done.is_some()});
    if let Some(response) = done {
        op["response"] = response;
    }
    if let Some(metadata) = metadata {
        op["metadata"] = metadata;
    }
    (name, op)
}

fn typed(kind: &str, mut value: Value) -> Value {
    value["@type"] = json!(format!("type.googleapis.com/google.cloud.run.v2.{kind}"));
    value
}

/// `projects/p/locations/l` out of a resource name.
fn location(name: &str) -> String {
    name.split('/').take(4).collect::<Vec<_>>().join("/")
}

async fn admin(
    State(state): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = query_of(&uri);
    if let Some(rest) = path.strip_prefix("/computeMetadata/v1/instance/service-accounts/default/")
    {
        return metadata(&state, rest, &query, &headers);
    }
    lock(&state).calls.push(format!("{method} {path}"));
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "not a v2 path");
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (name, verb) = match rest.rsplit_once(':') {
        Some((n, v)) if !v.contains('/') => (n.to_owned(), Some(v.to_owned())),
        _ => (rest.to_owned(), None),
    };
    let segments: Vec<&str> = name.split('/').collect();
    let kind = segments.get(4).copied().unwrap_or_default();
    match (method.as_str(), segments.len(), kind, verb.as_deref()) {
        ("POST", 5, "jobs", None) => create_job(&state, &location(&name), &query, body),
        ("POST", 6, "jobs", Some("run")) => run_job(&state, &name, body),
        ("GET", 8, "jobs", None) => get_execution(&state, &name),
        ("POST", 8, "jobs", Some("cancel")) => cancel_execution(&state, &name),
        ("GET", 6, "operations", None) => get_operation(&state, &name),
        ("POST", 5, "services", None) => {
            create_service(state.clone(), &location(&name), &query, body).await
        }
        ("GET", 6, "services", None) => match lock(&state).services.get(&name) {
            Some(s) => json_body(s.clone()).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("service {name} not found"),
            ),
        },
        _ => error(
            StatusCode::NOT_IMPLEMENTED,
            "UNIMPLEMENTED",
            &format!("the fake does not do {method} {path}"),
        ),
    }
}

fn metadata(
    state: &Shared,
    rest: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (StatusCode::FORBIDDEN, "Metadata-Flavor: Google is missing").into_response();
    }
    let (Some(audience), "identity") = (query.get("audience"), rest) else {
        return (StatusCode::NOT_FOUND, "not an identity request").into_response();
    };
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(0);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(json!({"aud": audience, "exp": exp, "iss": "fake-metadata"}).to_string()),
        b64.encode(uuid::Uuid::new_v4().as_bytes()),
    );
    lock(state).tokens.insert((token.clone(), audience.clone()));
    token.into_response()
}

fn create_job(
    state: &Shared,
    parent: &str,
    query: &HashMap<String, String>,
    body: Value,
) -> Response {
    let Some(id) = query.get("jobId") else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "jobId is missing",
        );
    };
    let name = format!("{parent}/jobs/{id}");
    let mut inner = lock(state);
    if inner.jobs.contains_key(&name) {
        return error(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            &format!("job {name} exists"),
        );
    }
    let mut job = body;
    job["name"] = json!(name);
    inner.jobs.insert(name, job.clone());
    let (op_name, op) = operation(parent, Some(typed("Job", job.clone())), None);
    inner
        .operations
        .insert(op_name, Operation::Done(typed("Job", job)));
    json_body(op).into_response()
}

fn env_args(env: &Value) -> Vec<String> {
    env.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap_or_default(),
                e["value"].as_str().unwrap_or_default()
            )
        })
        .flat_map(|kv| ["-e".to_owned(), kv])
        .collect()
}

fn run_job(state: &Arc<Shared>, job_name: &str, body: Value) -> Response {
    let Some(job) = lock(state).jobs.get(job_name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("job {job_name} not found"),
        );
    };
    let container = &job["template"]["template"]["containers"][0];
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    let overrides = &body["overrides"]["containerOverrides"][0];
    let args: Vec<String> = overrides["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let execution_name = format!(
        "{job_name}/executions/{}-{id}",
        job_name.rsplit('/').next().unwrap_or("job")
    );
    let docker_name = format!("fake-cloudrun-{}-{id}", state.id);
    let env = env_args(&overrides["env"]);
    if let Err(why) = docker_run(&state.id, &docker_name, &env, &image, &args) {
        return error(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", &why);
    }
    let execution = json!({
        "name": execution_name,
        "job": job_name,
        "taskCount": 1,
        "runningCount": 1,
        "startTime": now(),
        "args": args,
    });
    let parent = location(job_name);
    let (op_name, op) = operation(&parent, None, Some(typed("Execution", execution.clone())));
    {
        let mut inner = lock(state);
        inner
            .executions
            .insert(execution_name.clone(), (execution, docker_name.clone()));
        inner
            .operations
            .insert(op_name, Operation::Execution(execution_name.clone()));
    }
    // Cloud Run's own view: the execution ends when its one task does.
    let state = state.clone();
    std::thread::spawn(move || {
        let waited = Command::new("docker").args(["wait", &docker_name]).output();
        let code: Option<i64> = waited
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
        let mut inner = lock(&state);
        if let Some((e, _)) = inner.executions.get_mut(&execution_name) {
            if e.get("completionTime").is_some() {
                return;
            }
            e["runningCount"] = json!(0);
            e["completionTime"] = json!(now());
            let (count, state_value, message) = match code {
                Some(0) => (
                    "succeededCount",
                    4,
                    "Execution completed successfully.".to_owned(),
                ),
                other => (
                    "failedCount",
                    3,
                    format!(
                        "Task {execution_name}-task0 failed with exit code {}",
                        other.unwrap_or(-1)
                    ),
                ),
            };
            e[count] = json!(1);
            e["conditions"] =
                json!([{"type": "Completed", "state": state_value, "message": message}]);
        }
    });
    json_body(op).into_response()
}

fn get_execution(state: &Shared, name: &str) -> Response {
    match lock(state).executions.get(name) {
        Some((e, _)) => json_body(e.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("execution {name} not found"),
        ),
    }
}

fn cancel_execution(state: &Shared, name: &str) -> Response {
    let Some((_, container)) = lock(state).executions.get(name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("execution {name} not found"),
        );
    };
    let _ = Command::new("docker").args(["kill", &container]).output();
    let mut inner = lock(state);
    let Some((e, _)) = inner.executions.get_mut(name) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "gone");
    };
    e["runningCount"] = json!(0);
    e["cancelledCount"] = json!(1);
    e["completionTime"] = json!(now());
    let e = e.clone();
    let (op_name, op) = operation(&location(name), Some(typed("Execution", e.clone())), None);
    inner
        .operations
        .insert(op_name, Operation::Done(typed("Execution", e)));
    json_body(op).into_response()
}

fn get_operation(state: &Shared, name: &str) -> Response {
    let inner = lock(state);
    match inner.operations.get(name) {
        Some(Operation::Done(response)) => {
            json_body(json!({"name": name, "done": true, "response": response})).into_response()
        }
        Some(Operation::Execution(execution)) => {
            let e = inner
                .executions
                .get(execution)
                .map(|(e, _)| e.clone())
                .unwrap_or(Value::Null);
            let done = e.get("completionTime").is_some();
            let mut op =
                json!({"name": name, "done": done, "metadata": typed("Execution", e.clone())});
            if done {
                op["response"] = typed("Execution", e);
            }
            json_body(op).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("operation {name} not found"),
        ),
    }
}

async fn create_service(
    state: Arc<Shared>,
    parent: &str,
    query: &HashMap<String, String>,
    body: Value,
) -> Response {
    let Some(id) = query.get("serviceId") else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "serviceId is missing",
        );
    };
    let name = format!("{parent}/services/{id}");
    if lock(&state).services.contains_key(&name) {
        return error(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            &format!("service {name} exists"),
        );
    }
    let container = &body["template"]["containers"][0];
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    let port = free_port();
    let docker_name = format!("fake-cloudrun-{}-{id}", state.id);
    let mut env = vec!["-e".to_owned(), format!("PORT={port}")];
    env.extend(env_args(&container["env"]));
    if let Err(why) = docker_run(&state.id, &docker_name, &env, &image, &[]) {
        return error(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", &why);
    }
    // Ready once it listens, as Cloud Run's startup probe sees it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return error(
                StatusCode::BAD_REQUEST,
                "FAILED_PRECONDITION",
                "the container did not listen",
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxy = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                &e.to_string(),
            );
        }
    };
    let uri = format!(
        "http://{}",
        proxy
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let front =
        axum::Router::new()
            .fallback(front_end)
            .with_state((state.clone(), uri.clone(), port));
    tokio::spawn(async move {
        let _ = axum::serve(proxy, front).await;
    });
    let mut service = body;
    service["name"] = json!(name);
    service["uri"] = json!(uri);
    service["urls"] = json!([uri]);
    service["conditions"] = json!([{"type": "Ready", "state": 4}]);
    let mut inner = lock(&state);
    inner.services.insert(name, service.clone());
    let (op_name, op) = operation(parent, Some(typed("Service", service.clone())), None);
    inner
        .operations
        .insert(op_name, Operation::Done(typed("Service", service)));
    json_body(op).into_response()
}

/// Cloud Run's front end of a private service: an ID token for its URL,
/// or 403.
async fn front_end(
    State((state, uri, port)): State<(Arc<Shared>, String, u16)>,
    method: Method,
    path: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let allowed = token.is_some_and(|t| lock(&state).tokens.contains(&(t, uri.clone())));
    {
        let mut inner = lock(&state);
        let counts = inner.passed.entry(uri.clone()).or_default();
        match allowed {
            true => counts.0 += 1,
            false => counts.1 += 1,
        }
    }
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            "Your client does not have permission to get URL from this server.",
        )
            .into_response();
    }
    let url = format!("http://127.0.0.1:{port}{}", path.path());
    let client = reqwest::Client::new();
    let mut request = client.request(method, &url).body(body);
    if let Some(ct) = headers.get("content-type") {
        request = request.header("content-type", ct);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status();
            let bytes = r.bytes().await.unwrap_or_default();
            (status, bytes).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A JSON body (axum's `Json` needs a feature the workspace leaves off).
fn json_body(value: Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The query's pairs, percent-decoded.
fn query_of(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `docker run -d` of `image` on the host network, labelled as the fake's;
/// `Err` says why it did not start.
fn docker_run(
    fake: &str,
    name: &str,
    env: &[String],
    image: &str,
    args: &[String],
) -> Result<(), String> {
    let started = Command::new("docker")
        .args(["run", "-d", "--network", "host", "--name", name])
        .args(["--label", &format!("{LABEL}={fake}")])
        .args(env)
        .arg(image)
        .args(args)
        .output();
    match started {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "cannot run {image}: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run docker: {e}")),
    }
}

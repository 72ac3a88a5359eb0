//! `echo`: the smallest service Rouse can run, used by the runtime and
//! end-to-end tests and as a template.
//!
//! It speaks the two contracts a Rouse service can choose:
//!
//! - **server mode** (default): HTTP/1.1 on `0.0.0.0:$PORT` (8080 without
//!   `PORT`). `POST /` takes a Pub/Sub push envelope whose `message.data` is
//!   the base64 of an Octue question (`{"kind":"question","input_values":…}`)
//!   and answers `200 {"echo": <input_values>, "instance": "<name>"}`, with
//!   `"version": $ECHO_VERSION` added when that variable is set.
//!   `GET /healthz` answers `200 ok`.
//! - **HTTP service**: any request under `$CONTEXT_ROOT` (`/<project>-<service>`,
//!   set by Rouse; the ingress routes by it) answers `200` with a JSON
//!   description of what arrived: method, path, the `X-Forwarded-*`
//!   headers, whether an `Authorization` header came, the body's length
//!   and the instance's and revision's names. `?sleep_ms=N`
//!   answers after N ms. A request asking to upgrade (`Connection: upgrade`,
//!   `Upgrade: P`) is answered `101` and every byte sent after it is sent
//!   back, until the client closes.
//! - **job mode**: `echo --attributes <json> --input-values <json>` prints
//!   `{"echo": <input_values>}` as one JSON line and exits 0.
//!
//! Inputs that make it misbehave on purpose, for tests: `{"sleep_ms": N}`
//! answers after N ms, `{"fail": "msg"}` answers 500 with `msg`,
//! `{"crash": true}` exits with code 3 without answering. In server mode,
//! `ECHO_STARTUP_DELAY_MS` delays listening (to test readiness probes).
//!
//! Only std, serde_json and base64, so that it builds quickly and links
//! statically into a `FROM scratch` image.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// Exit code of a deliberate crash, so tests can tell it from other failures.
const CRASH_EXIT_CODE: i32 = 3;
/// Largest request head or body accepted; a push envelope is far smaller.
const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// A client that sends nothing for this long is dropped, so that stuck
/// connections do not pin threads forever.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--input-values") {
        std::process::exit(run_job(&args));
    }
    if let Err(err) = serve() {
        eprintln!("echo: {err}");
        std::process::exit(1);
    }
}

/// Job mode: answer one question given on the command line and exit.
fn run_job(args: &[String]) -> i32 {
    let mut input_values = Value::Null;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = match arg.as_str() {
            "--attributes" | "--input-values" => iter.next(),
            other => {
                eprintln!("echo: unexpected argument `{other}`");
                return 2;
            }
        };
        let Some(value) = value else {
            eprintln!("echo: `{arg}` needs a JSON value");
            return 2;
        };
        let parsed: Value = match serde_json::from_str(value) {
            Ok(parsed) => parsed,
            Err(err) => {
                eprintln!("echo: `{arg}` is not JSON: {err}");
                return 2;
            }
        };
        if arg == "--input-values" {
            input_values = parsed;
        }
    }
    if input_values.get("crash") == Some(&Value::Bool(true)) {
        eprintln!("echo: crashing as asked");
        return CRASH_EXIT_CODE;
    }
    println!("{}", json!({ "echo": input_values }));
    0
}

fn serve() -> Result<(), String> {
    if let Some(delay) = std::env::var("ECHO_STARTUP_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        println!("echo: waiting {delay} ms before listening");
        std::thread::sleep(Duration::from_millis(delay));
    }
    let port = match std::env::var("PORT") {
        Ok(port) => port
            .parse::<u16>()
            .map_err(|_| format!("PORT `{port}` is not a port number"))?,
        Err(_) => 8080,
    };
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|err| format!("cannot listen on 0.0.0.0:{port}: {err}"))?;
    println!("echo: listening on 0.0.0.0:{port}");
    let instance = instance_name();
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let instance = instance.clone();
                std::thread::spawn(move || handle(stream, &instance));
            }
            Err(err) => eprintln!("echo: accept failed: {err}"),
        }
    }
    Ok(())
}

fn instance_name() -> String {
    ["ROUSE_INSTANCE", "HOSTNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// One request read off a connection.
struct Request {
    method: String,
    path: String,
    /// `X-Forwarded-*` headers, lower-cased names.
    forwarded: Vec<(String, String)>,
    /// Whether an `Authorization` header came.
    authorization: bool,
    /// The protocol of `Upgrade` when `Connection` asks for an upgrade.
    upgrade: Option<String>,
    body: Vec<u8>,
    /// The client asked to close the connection after this request.
    close: bool,
}

/// Serves requests on one connection until the client closes it or asks
/// to (`Connection: close`): HTTP/1.1 keeps connections alive, so a
/// dispatcher delivering many questions reuses one.
fn handle(stream: TcpStream, instance: &str) {
    // Best effort: without the timeout a silent client only costs a thread;
    // without no-delay a response may wait for the client's delayed ack.
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(&stream);
    loop {
        let (response, keep_alive) = match read_request(&mut reader) {
            Ok(None) => return,
            Ok(Some(request)) if request.upgrade.is_some() && under_context_root(&request.path) => {
                echo_upgraded(
                    &stream,
                    reader,
                    request.upgrade.as_deref().unwrap_or_default(),
                );
                return;
            }
            Ok(Some(request)) => (route(&request, instance), !request.close),
            Err(reason) => (Response::text(400, reason), false),
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            response.status,
            reason_phrase(response.status),
            response.content_type,
            response.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        )
        .into_bytes();
        out.extend_from_slice(response.body.as_bytes());
        let mut stream = &stream;
        // The client may have gone; there is nobody to tell.
        if stream
            .write_all(&out)
            .and_then(|()| stream.flush())
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// The next request, or `None` when the client closed the connection
/// between requests.
fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(err) => return Err(format!("cannot read request: {err}")),
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("malformed request line `{}`", line.trim_end()));
    };
    let (method, path) = (method.to_owned(), target.to_owned());
    // HTTP/1.0 closes unless asked to keep alive; 1.1 keeps alive unless
    // asked to close.
    let mut close = line.trim_end().ends_with("HTTP/1.0");
    let mut content_length = 0usize;
    let mut forwarded = Vec::new();
    let mut authorization = false;
    let (mut upgrade, mut upgrading) = (None, false);
    let mut head_bytes = line.len();
    loop {
        line.clear();
        read_line(reader, &mut line)?;
        head_bytes += line.len();
        if head_bytes > MAX_REQUEST_BYTES {
            return Err("request head too large".to_owned());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| format!("bad Content-Length `{value}`"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
            upgrading = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = true;
        } else if name.to_ascii_lowercase().starts_with("x-forwarded-") {
            forwarded.push((name.to_ascii_lowercase(), value.to_owned()));
        }
    }
    if content_length > MAX_REQUEST_BYTES {
        return Err(format!("body of {content_length} bytes is too large"));
    }
    let mut body = vec![0; content_length];
    reader
        .read_exact(&mut body)
        .map_err(|err| format!("cannot read body: {err}"))?;
    Ok(Some(Request {
        method,
        path,
        forwarded,
        authorization,
        upgrade: upgrade.filter(|_| upgrading),
        body,
        close,
    }))
}

fn read_line(reader: &mut impl BufRead, line: &mut String) -> Result<(), String> {
    match reader.read_line(line) {
        Ok(0) => Err("connection closed before the request was complete".to_owned()),
        Ok(_) => Ok(()),
        Err(err) => Err(format!("cannot read request: {err}")),
    }
}

fn route(request: &Request, instance: &str) -> Response {
    let (method, path) = (request.method.as_str(), request.path.as_str());
    match (method, path) {
        ("GET", "/healthz") => Response::text(200, "ok"),
        ("POST", "/") => answer(&request.body, instance),
        (_, "/" | "/healthz") => Response::text(405, format!("{method} is not allowed on {path}")),
        _ if under_context_root(path) => described(request, instance),
        _ => Response::text(404, format!("no route for {path}")),
    }
}

/// Switches to `protocol` and sends back every byte that comes, until the
/// client closes.
fn echo_upgraded(stream: &TcpStream, mut reader: BufReader<&TcpStream>, protocol: &str) {
    use std::io::Read as _;
    let mut out = stream;
    let switched = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    if out.write_all(switched.as_bytes()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(None);
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether `path` is `$CONTEXT_ROOT` or below it.
fn under_context_root(path: &str) -> bool {
    let Ok(root) = std::env::var("CONTEXT_ROOT") else {
        return false;
    };
    let path = path.split('?').next().unwrap_or_default();
    !root.is_empty()
        && path
            .strip_prefix(root.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with(':'))
}

/// An HTTP service's answer: what arrived, after `?sleep_ms=N`.
fn described(request: &Request, instance: &str) -> Response {
    let query = request.path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let sleep = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = sleep {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let forwarded: serde_json::Map<String, Value> = request
        .forwarded
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.clone())))
        .collect();
    Response {
        status: 200,
        content_type: "application/json",
        body: json!({
            "method": request.method,
            "path": request.path,
            "forwarded": forwarded,
            "authorization": request.authorization,
            "body_bytes": request.body.len(),
            "instance": instance,
            // The revision it runs (Rouse sets it on every instance).
            "revision": std::env::var("OCTUE_SERVICE_REVISION_TAG").unwrap_or_default(),
        })
        .to_string(),
    }
}

fn answer(body: &[u8], instance: &str) -> Response {
    let input_values = match question_inputs(body) {
        Ok(input_values) => input_values,
        Err(reason) => return Response::text(400, reason),
    };
    record_delivery(&input_values);
    if let Some(ms) = input_values.get("sleep_ms").and_then(Value::as_u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if input_values.get("crash") == Some(&Value::Bool(true)) {
        eprintln!("echo: crashing as asked");
        std::process::exit(CRASH_EXIT_CODE);
    }
    if let Some(fail) = input_values.get("fail") {
        let message = fail
            .as_str()
            .map_or_else(|| fail.to_string(), str::to_owned);
        eprintln!("echo: failing as asked: {message}");
        return Response::text(500, message);
    }
    println!("echo: answered a question");
    Response {
        status: 200,
        content_type: "application/json",
        body: echo_answer(input_values, instance).to_string(),
    }
}

/// With `$ECHO_DELIVERY_LOG` set, appends the question's inputs to that
/// file, one line per delivery (one `write` on a file opened for appending,
/// so lines from several instances do not interleave): how tests count the
/// deliveries a service saw.
fn record_delivery(input_values: &Value) {
    let Some(path) = std::env::var_os("ECHO_DELIVERY_LOG") else {
        return;
    };
    let line = format!("{input_values}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(err) = written {
        eprintln!("echo: cannot record a delivery: {err}");
    }
}

/// The answer: the inputs and the instance, and `$ECHO_VERSION` when set
/// (so that a rebuilt image with another version answers differently).
fn echo_answer(input_values: Value, instance: &str) -> Value {
    let mut answer = json!({ "echo": input_values, "instance": instance });
    if let Ok(version) = std::env::var("ECHO_VERSION")
        && let Some(map) = answer.as_object_mut()
    {
        map.insert("version".into(), Value::String(version));
    }
    answer
}

/// The question's `input_values` out of a Pub/Sub push envelope.
fn question_inputs(body: &[u8]) -> Result<Value, String> {
    let envelope: Value =
        serde_json::from_slice(body).map_err(|err| format!("envelope is not JSON: {err}"))?;
    let data = envelope
        .pointer("/message/data")
        .and_then(Value::as_str)
        .ok_or("envelope has no string `message.data`")?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|err| format!("`message.data` is not base64: {err}"))?;
    let mut question: Value = serde_json::from_slice(&data)
        .map_err(|err| format!("`message.data` is not JSON: {err}"))?;
    if question.get("kind").and_then(Value::as_str) != Some("question") {
        return Err("`message.data` is not a question (`kind` must be \"question\")".to_owned());
    }
    Ok(question
        .get_mut("input_values")
        .map(Value::take)
        .unwrap_or(Value::Null))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "",
    }
}

//! End-to-end: the ingress (HTTP services behind one port, routed by their
//! context root `/<project>-<service>`, woken by the first request), with
//! the real binary, the echo example as the HTTP service, and IAM.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rouse_tests::{Emulator, Server, promtool_accepts, wait_until};
use serde_json::Value;

/// Service `p/<name>` running the echo example (process runtime, server
/// mode) with the service settings `settings`.
fn echo_service(server: &Server, name: &str, settings: &[&str]) {
    server.echo_service("p", name, settings, &[]);
}

/// `rouse auth print-access-token` as the holder of `key`, for `service`
/// (or the API).
fn token(server: &Server, key: &Path, service: Option<&str>) -> String {
    let mut args = vec!["auth", "print-access-token"];
    if let Some(service) = service {
        args.extend(["--service", service, "--project", "p"]);
    }
    let out = server.rouse_as(Some(key), &args);
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.trim().to_owned()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

/// Every line of `needles` is in the metrics `text` (else the text and the
/// server's log are shown), and Prometheus's own checker accepts the text.
fn metrics_hold(text: &str, needles: &[&str], server: &Server) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{needle} in:\n{text}\n{}",
            server.log()
        );
    }
    promtool_accepts(text);
}

async fn get(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> Answer {
    let mut request = http.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the ingress answers");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.expect("a body"),
    }
}

/// Two services behind one port, each answering under its own context root
/// (the path passed on whole, `X-Forwarded-*` set); the first request wakes
/// an instance and the next reuses it; after the idle timeout the service is
/// back at zero and the next request wakes a new one. Callers are checked
/// and audited like askers: anonymous → 401 (with how to get a token), a
/// token of a caller without `services.ask` → 403, a token for another
/// service → 401, an `roles/invoker` caller's token (for the service, or for
/// the API) → 200. Paths that name no service get 404 with the route form.
#[tokio::test]
async fn services_behind_one_port_wake_on_their_first_request_for_allowed_callers() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    echo_service(&server, "web", &["--idle-timeout", "2s"]);
    echo_service(&server, "shop", &[]);
    let keys = tempfile::tempdir().expect("keys");
    let key_of = |name: &str| server.service_account(keys.path(), "p", name);
    let caller = key_of("caller");
    let stranger = key_of("stranger");
    server
        .rouse(&[
            "projects",
            "add-iam-policy-binding",
            "p",
            "--member=serviceAccount:caller@p.rouse",
            "--role=roles/invoker",
        ])
        .ok();
    let http = reqwest::Client::new();
    let ingress = server.ingress().to_owned();
    let web = format!("{ingress}/p-web/hello?x=1");

    // Who may call.
    let anonymous = get(&http, &web, None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
    assert!(
        anonymous
            .text
            .contains("rouse auth print-access-token --service web --project p"),
        "{}",
        anonymous.text
    );
    assert!(anonymous.headers.contains_key("www-authenticate"));
    let denied = get(&http, &web, Some(&token(&server, &stranger, Some("web")))).await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert!(denied.text.contains("services.ask"), "{}", denied.text);
    let web_token = token(&server, &caller, Some("web"));
    let elsewhere = get(&http, &format!("{ingress}/p-shop/"), Some(&web_token)).await;
    assert_eq!(
        elsewhere.status, 401,
        "a token for web used on shop: {}",
        elsewhere.text
    );
    assert!(elsewhere.text.contains("audience"), "{}", elsewhere.text);

    // Cold, then warm, under the service's context root.
    let cold = get(&http, &web, Some(&web_token)).await;
    assert_eq!(cold.status, 200, "{}\n{}", cold.text, server.log());
    let cold = cold.json();
    assert_eq!(cold["method"], "GET");
    assert_eq!(
        cold["path"], "/p-web/hello?x=1",
        "the path is passed on whole"
    );
    assert_eq!(
        cold["authorization"], false,
        "the caller's Rouse token stays at the ingress"
    );
    assert_eq!(cold["forwarded"]["x-forwarded-for"], "127.0.0.1", "{cold}");
    assert_eq!(cold["forwarded"]["x-forwarded-proto"], "http", "{cold}");
    assert!(
        cold["forwarded"]["x-forwarded-host"]
            .as_str()
            .is_some_and(|h| ingress.ends_with(h)),
        "{cold}"
    );
    let warm = get(&http, &web, Some(&web_token)).await.json();
    assert_eq!(
        warm["instance"], cold["instance"],
        "the second request reuses the instance"
    );
    let api_token = token(&server, &caller, None);
    let shop = get(&http, &format!("{ingress}/p-shop/cart"), Some(&api_token)).await;
    assert_eq!(shop.status, 200, "{}", shop.text);
    assert_eq!(shop.json()["path"], "/p-shop/cart");
    assert_ne!(shop.json()["instance"], cold["instance"]);

    // Scale to zero after the idle timeout, and wake again.
    wait_until(
        Duration::from_secs(20),
        "web's instance stopped after its idle timeout",
        || match server.log().contains("stopping idle instance") {
            true => Ok(()),
            false => Err("not yet".into()),
        },
    )
    .await;
    let again = get(&http, &web, Some(&web_token)).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_ne!(
        again.json()["instance"],
        cold["instance"],
        "a new instance woke"
    );

    // Paths that name no service.
    for path in ["/", "/p-nothing/x", "/p-web:/x"] {
        let lost = get(&http, &format!("{ingress}{path}"), None).await;
        assert_eq!(lost.status, 404, "{path}: {}", lost.text);
        assert!(
            lost.text.contains("/<project>-<service>"),
            "{path}: {}",
            lost.text
        );
    }

    // Metrics, in a format Prometheus's own checker accepts.
    let metrics = get(&http, &format!("{ingress}/metrics"), None).await;
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    metrics_hold(
        &metrics.text,
        &[
            "rouse_http_requests_total{service=\"p-web\",code=\"200\"} 3",
            "rouse_http_requests_total{service=\"p-web\",code=\"401\"} 1",
            "rouse_http_requests_total{service=\"p-web\",code=\"403\"} 1",
            "rouse_cold_starts_total{service=\"p-web\"} 2",
            "rouse_cold_start_seconds_count{service=\"p-web\"} 2",
            "rouse_queue_depth{service=\"p-web\",revision=\"web-00001\"} 0",
        ],
        &server,
    );

    // Audited: the anonymous refusal and the grants (grants are written
    // just after their requests).
    wait_until(Duration::from_secs(10), "the requests audited", || {
        let audit = server
            .rouse(&["audit", "list", "--limit", "500", "--format", "json"])
            .json();
        let http_entries: Vec<&Value> = audit
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["action"] == "http")
            .collect();
        let denied = http_entries
            .iter()
            .any(|e| e["decision"] == "denied" && e["principal"] == "anonymous");
        let granted = http_entries.iter().any(|e| {
            e["decision"] == "granted" && e["principal"] == "serviceAccount:caller@p.rouse"
        });
        match denied && granted {
            true => Ok(()),
            false => Err(format!("denied {denied}, granted {granted}: {audit}")),
        }
    })
    .await;
}

/// A service that freezes its idle instances: a request after the idle
/// timeout is answered by the same instance, thawed (no second cold start),
/// and the thaw is counted.
#[tokio::test]
async fn a_request_thaws_a_frozen_instance() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    echo_service(&server, "ice", &["--idle-timeout", "1s", "--freeze", "on"]);
    let http = reqwest::Client::new();
    let url = format!("{}/p-ice/", server.ingress());
    let first = get(&http, &url, None).await;
    assert_eq!(first.status, 200, "{}", first.text);
    for round in 1..=3 {
        wait_until(
            Duration::from_secs(20),
            "the idle instance frozen",
            || match server.log().matches("freezing idle instance").count() >= round {
                true => Ok(()),
                false => Err("not yet".into()),
            },
        )
        .await;
        let thawed = get(&http, &url, None).await;
        assert_eq!(thawed.status, 200, "{}", thawed.text);
        assert_eq!(
            thawed.json()["instance"],
            first.json()["instance"],
            "round {round}: the frozen instance answers"
        );
    }
    let metrics = get(&http, &format!("{}/metrics", server.ingress()), None).await;
    metrics_hold(
        &metrics.text,
        &[
            "rouse_cold_starts_total{service=\"p-ice\"} 1",
            "rouse_thaws_total{service=\"p-ice\"} 3",
            "rouse_thaw_seconds_count{service=\"p-ice\"} 3",
        ],
        &server,
    );
}

/// 200 requests at once to a service at zero with `max_instances 3,
/// concurrency 4`: every one answered 200 (none refused or failed), by at
/// most three instances.
#[tokio::test]
async fn a_burst_of_requests_wakes_at_most_max_instances() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    echo_service(
        &server,
        "burst",
        &["--max-instances", "3", "--concurrency", "4"],
    );
    let http = reqwest::Client::new();
    // A public service's own credentials (not a Rouse token) pass through.
    let own = get(
        &http,
        &format!("{}/p-burst/login", server.ingress()),
        Some("the-service-s-own-token"),
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(own.json()["authorization"], true);
    let url = format!("{}/p-burst/work?sleep_ms=50", server.ingress());
    let mut requests = Vec::new();
    for _ in 0..200 {
        let (http, url) = (http.clone(), url.clone());
        requests.push(tokio::spawn(async move { get(&http, &url, None).await }));
    }
    let mut instances = HashSet::new();
    for r in requests {
        let answer = r.await.expect("join");
        assert_eq!(answer.status, 200, "{}\n{}", answer.text, server.log());
        instances.insert(
            answer.json()["instance"]
                .as_str()
                .expect("instance")
                .to_owned(),
        );
    }
    assert!(
        (1..=3).contains(&instances.len()),
        "instances: {instances:?}"
    );
}

/// Requests that cannot be served say why: a service with no revision, a
/// job-mode service, and one whose instance cannot wake.
#[tokio::test]
async fn requests_that_cannot_be_served_say_why() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    server.create_service("p", "empty");
    server.create_service("p", "broken");
    server
        .rouse(&[
            "revisions",
            "create",
            "broken",
            "--project",
            "p",
            "--command",
            "/bin/false",
            "--workdir",
            "/tmp",
        ])
        .ok();
    server.echo_service("p", "batch", &[], &["--mode", "job"]);
    let http = reqwest::Client::new();
    let ingress = server.ingress();
    for (service, says) in [
        ("empty", "rouse revisions create empty --project p"),
        ("batch", "--mode server"),
        ("broken", "could not be woken"),
    ] {
        let answer = get(&http, &format!("{ingress}/p-{service}/"), None).await;
        assert_eq!(answer.status, 503, "{service}: {}", answer.text);
        assert!(answer.text.contains(says), "{service}: {}", answer.text);
        assert!(answer.headers.contains_key("retry-after"), "{service}");
    }
    // The platform goes on serving.
    assert!(server.rouse(&["services", "list"]).code == 0);
}

/// A test CA and a certificate it signed for 127.0.0.1 (openssl):
/// (CA certificate, certificate, key).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=rouse-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "key.pem", "-out", "cert.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// `--tls-cert/--tls-key`: the ingress serves HTTPS with that certificate
/// (and says `X-Forwarded-Proto: https`); a half-given or unreadable
/// certificate is refused at start, naming the file.
#[tokio::test]
async fn the_ingress_serves_https_with_a_given_certificate() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(data.path());
    let (cert_arg, key_arg) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));

    let half = Server::try_start(emulator.host(), data.path(), &["--tls-cert", cert_arg]);
    let half = half.err().expect("refused");
    assert!(half.contains("--tls-key"), "{half}");
    let garbage = data.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let bad = Server::try_start(
        emulator.host(),
        data.path(),
        &[
            "--tls-cert",
            garbage.to_str().expect("utf-8"),
            "--tls-key",
            key_arg,
        ],
    );
    let bad = bad.err().expect("refused");
    assert!(bad.contains("garbage.pem"), "{bad}");

    let server = Server::start(
        &emulator,
        data.path(),
        &["--tls-cert", cert_arg, "--tls-key", key_arg],
    );
    server.allow_anonymous_askers("p");
    echo_service(&server, "secure", &[]);
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("CA"))
        .expect("a PEM certificate");
    let https = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .expect("client");
    let url = server.ingress().replacen("http://", "https://", 1) + "/p-secure/x";
    let answer = get(&https, &url, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["forwarded"]["x-forwarded-proto"], "https");
    // Plain HTTP to the TLS port gets nothing served.
    let plain = reqwest::Client::new()
        .get(format!("{}/p-secure/x", server.ingress()))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
}

/// Bad requests are bounded by the configured limits
/// (`--ingress-max-body/-max-head/-header-timeout`): a declared body over
/// the limit → 413 at once, one within it reaches the instance whole; an
/// oversized head → 431; a client that never finishes its head is
/// disconnected after the header timeout; the ingress goes on serving.
#[tokio::test]
async fn oversized_and_slow_requests_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    // Limits below the defaults (32 MiB, 64 KiB, 10 s), so that each is
    // seen to be the one configured.
    let server = Server::start(
        &emulator,
        data.path(),
        &[
            "--ingress-max-body",
            "1MiB",
            "--ingress-max-head",
            "16KiB",
            "--ingress-header-timeout",
            "2s",
        ],
    );
    server.allow_anonymous_askers("p");
    echo_service(&server, "bounded", &[]);
    let ingress = server.ingress().to_owned();
    let url = format!("{ingress}/p-bounded/upload");
    let http = reqwest::Client::new();

    // A declared body over the limit: 413 before any of it is read.
    let addr = ingress.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(
            format!(
                "POST /p-bounded/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                2 * 1024 * 1024
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("1048576 bytes"), "{answer}");
    // Within the limit, the body reaches the instance whole.
    let within = http
        .post(&url)
        .body(vec![b'z'; 1024 * 1024])
        .send()
        .await
        .expect("an answer");
    assert_eq!(within.status().as_u16(), 200);
    let within: Value = within.json().await.expect("echo's JSON");
    assert_eq!(within["body_bytes"], 1024 * 1024);

    let huge = http
        .get(&url)
        .header("x-padding", "y".repeat(20 * 1024))
        .send()
        .await
        .expect("an answer");
    assert_eq!(huge.status().as_u16(), 431);

    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /p-bounded/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let since = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(8), slow.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "a half-sent request head kept its connection for 8 s (the header timeout is 2 s)"
    );
    assert!(
        since.elapsed() >= Duration::from_millis(1500),
        "cut off before its timeout"
    );

    let fine = get(&http, &format!("{ingress}/p-bounded/"), None).await;
    assert_eq!(fine.status, 200, "{}", fine.text);
}

/// An upgrade (what a WebSocket handshake is) passes through the ingress:
/// the instance's `101` reaches the client and bytes flow both ways on the
/// joined connection until the client closes; the ingress goes on serving.
#[tokio::test]
async fn an_upgraded_connection_is_joined_through_to_the_instance() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    echo_service(&server, "live", &[]);
    let addr = server.ingress().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /p-live/socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: rouse-echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(ANSWER_WAIT, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: rouse-echo"), "{head}");
    for message in [&b"ping"[..], b"a longer message, twice over"] {
        stream.write_all(message).await.expect("write");
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(ANSWER_WAIT, stream.read_exact(&mut back))
            .await
            .expect("echoed in time")
            .expect("read");
        assert_eq!(back, message);
    }
    drop(stream);
    let http = reqwest::Client::new();
    let after = get(&http, &format!("{}/p-live/", server.ingress()), None).await;
    assert_eq!(after.status, 200, "{}", after.text);
}

const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// The leaf certificate (PEM) the TLS server at `addr` serves for `name`,
/// if openssl verifies it against `root` for that name; else openssl's words.
fn served_certificate(addr: &str, name: &str, root: &Path) -> Result<String, String> {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", name])
        .args(["-verify_return_error", "-verify_hostname", name, "-CAfile"])
        .arg(root)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("Verify return code: 0 (ok)") {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    first_certificate(&text).ok_or_else(|| format!("no certificate in: {text}"))
}

/// The first PEM certificate in `text`.
fn first_certificate(text: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = start + text[start..].find(END)? + END.len();
    Some(text[start..end].to_owned())
}

/// One TLS connection (openssl s_client) kept open across requests.
struct TlsSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// What openssl said on stderr.
    said: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    name: String,
}

impl TlsSession {
    fn open(addr: &str, name: &str, root: &Path) -> Self {
        use std::io::Read as _;
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", addr, "-servername", name])
            .args(["-verify_return_error", "-CAfile"])
            .arg(root)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl");
        let stdin = child.stdin.take().expect("stdin");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let copy = |mut from: Box<dyn std::io::Read + Send>,
                    sink: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    sink.lock().expect("lock").extend_from_slice(&buf[..n]);
                }
            })
        };
        copy(Box::new(child.stdout.take().expect("stdout")), seen.clone());
        copy(Box::new(child.stderr.take().expect("stderr")), said.clone());
        Self {
            child,
            stdin,
            seen,
            said,
            name: name.to_owned(),
        }
    }

    /// `GET path` on this connection: the response's status line.
    async fn get(&mut self, path: &str) -> String {
        use std::io::Write as _;
        self.seen.lock().expect("lock").clear();
        write!(
            self.stdin,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.name
        )
        .and_then(|()| self.stdin.flush())
        .unwrap_or_else(|e| {
            let said = String::from_utf8_lossy(&self.said.lock().expect("lock")).into_owned();
            panic!("the kept connection is gone ({e}); openssl said: {said}")
        });
        let seen = self.seen.clone();
        wait_until(
            Duration::from_secs(30),
            "an answer on the kept connection",
            || {
                let seen = String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
                let (head, body) = seen.split_once("\r\n\r\n").ok_or_else(|| seen.clone())?;
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>())
                    })
                    .ok_or_else(|| format!("no content-length: {head}"))?
                    .map_err(|e| e.to_string())?;
                match body.len() >= length {
                    true => Ok(head.lines().next().unwrap_or_default().to_owned()),
                    false => Err(seen.clone()),
                }
            },
        )
        .await
    }
}

impl Drop for TlsSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ACME against Debian's pebble (`.ci/setup` installs it), with its DNS
/// answering 127.0.0.1 for every name: the ingress answers the HTTP-01
/// challenge on its plain-HTTP port, serves the certificate pebble issued
/// (verified by openssl against pebble's root for the name), renews it
/// ahead of expiry (here at once: `--acme-renew-before` longer than its
/// life) while a connection opened before goes on serving, redirects plain
/// HTTP to HTTPS, keeps the certificate's key sealed, and after a restart
/// serves the kept certificate at once rather than ordering another.
#[tokio::test]
async fn the_ingress_gets_and_renews_its_certificate_over_acme() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(pki.path());
    let http_port = rouse_tests::free_port();
    let pebble = rouse_tests::engines::Pebble::start(&cert, &key, http_port);
    let domain = "app.rouse.test";
    let http_listen = format!("127.0.0.1:{http_port}");
    let ca_arg = ca.to_str().expect("utf-8");
    let flags = [
        "--acme-directory",
        pebble.directory(),
        "--acme-ca-cert",
        ca_arg,
        "--domain",
        domain,
        "--acme-email",
        "ops@rouse.test",
        "--ingress-http-listen",
        &http_listen,
    ];
    let mut renewing = flags.to_vec();
    renewing.extend(["--acme-renew-before", "100000d"]);
    let server = Server::start(&emulator, data.path(), &renewing);
    server.allow_anonymous_askers("p");
    echo_service(&server, "acme", &[]);

    let trusting_ca = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("CA")).expect("PEM"),
        )
        .build()
        .expect("client");
    let issuing_root = trusting_ca
        .get(format!("{}/roots/0", pebble.management()))
        .send()
        .await
        .expect("pebble's management interface")
        .text()
        .await
        .expect("pebble's root");
    let root = pki.path().join("issued-root.pem");
    std::fs::write(&root, issuing_root).expect("root");
    let addr = server.ingress().trim_start_matches("http://").to_owned();

    let first = wait_until(
        Duration::from_secs(90),
        "a certificate from pebble served by the ingress",
        || served_certificate(&addr, domain, &root),
    )
    .await;
    let mut kept_open = TlsSession::open(&addr, domain, &root);
    // Requests go on over the connection opened before the renewal (one a
    // second, within the ingress's idle limit) until new connections get
    // the renewed certificate, and after.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        assert_eq!(kept_open.get("/p-acme/kept").await, "HTTP/1.1 200 OK");
        let served = served_certificate(&addr, domain, &root).expect("a certificate");
        if served != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewed certificate within 90 s:\n{}\n{}",
            server.log(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(kept_open.get("/p-acme/after").await, "HTTP/1.1 200 OK");
    drop(kept_open);

    // Plain HTTP is sent to HTTPS, path and query kept.
    let answer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("http://{http_listen}/p-acme/x?y=1"))
        .header("host", domain)
        .send()
        .await
        .expect("plain HTTP");
    assert_eq!(answer.status(), 308);
    let port = addr.rsplit(':').next().expect("a port");
    assert_eq!(
        answer.headers()["location"],
        format!("https://{domain}:{port}/p-acme/x?y=1").as_str()
    );

    // The key is kept sealed, readable by its owner only.
    let sealed_key = data.path().join("acme/certificate.key.sealed");
    let sealed = std::fs::read(&sealed_key).expect("the sealed key");
    assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&sealed_key)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // After a restart (renewal not due with the default), the kept
    // certificate is served at once.
    server.stop();
    let kept = std::fs::read_to_string(data.path().join("acme/certificate.pem")).expect("kept");
    let kept = first_certificate(&kept).expect("a kept certificate");
    let server = Server::start(&emulator, data.path(), &flags);
    let addr = server.ingress().trim_start_matches("http://").to_owned();
    let served = served_certificate(&addr, domain, &root).expect("served at once");
    assert_eq!(served, kept);
    assert!(
        !server.log().contains("ACME certificate issued"),
        "{}",
        server.log()
    );
}

/// `services update --ingress internal`: requests from outside the
/// server's internal networks get 403 naming the setting and the address
/// (here the networks leave loopback out, so the test's own requests come
/// from outside), other services are unaffected, and `--ingress all` opens
/// it again. `--allow-unauthenticated` lets anonymous callers in (the
/// `allUsers` grant of `roles/invoker`); `--no-allow-unauthenticated` takes
/// it back.
#[tokio::test]
async fn internal_services_and_unauthenticated_callers_are_per_service_settings() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &emulator,
        data.path(),
        &["--internal-networks", "10.0.0.0/8,fd00::/8"],
    );
    server.allow_anonymous_askers("p");
    echo_service(&server, "inner", &["--ingress", "internal"]);
    echo_service(&server, "outer", &[]);
    let described = server
        .rouse(&[
            "services",
            "describe",
            "inner",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(described["ingress"], "internal");
    let http = reqwest::Client::new();
    let ingress = server.ingress().to_owned();

    let refused = get(&http, &format!("{ingress}/p-inner/x"), None).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.text.contains("internal") && refused.text.contains("127.0.0.1"),
        "{}",
        refused.text
    );
    let other = get(&http, &format!("{ingress}/p-outer/x"), None).await;
    assert_eq!(other.status, 200, "{}", other.text);
    // The metrics are for the internal networks too.
    let metrics = get(&http, &format!("{ingress}/metrics"), None).await;
    assert_eq!(metrics.status, 403, "{}", metrics.text);

    server
        .rouse(&[
            "services",
            "update",
            "inner",
            "--project",
            "p",
            "--ingress",
            "all",
        ])
        .ok();
    let opened = get(&http, &format!("{ingress}/p-inner/x"), None).await;
    assert_eq!(opened.status, 200, "{}", opened.text);

    // Project q lets no one in by default.
    let update_site = |flag: &str| {
        server
            .rouse(&["services", "update", "site", "--project", "q", flag])
            .ok();
    };
    server.echo_service("q", "site", &[], &[]);
    let url = format!("{ingress}/q-site/");
    assert_eq!(get(&http, &url, None).await.status, 401);
    update_site("--allow-unauthenticated");
    let public = get(&http, &url, None).await;
    assert_eq!(public.status, 200, "{}", public.text);
    let policy = server
        .rouse(&[
            "services",
            "get-iam-policy",
            "site",
            "--project",
            "q",
            "--format",
            "json",
        ])
        .json();
    assert!(
        policy["bindings"]
            .as_array()
            .expect("bindings")
            .iter()
            .any(|b| b["role"] == "roles/invoker"
                && b["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == "allUsers"))),
        "{policy}"
    );
    update_site("--no-allow-unauthenticated");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&http, &url, None).await.status;
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "anonymous callers still get {status} after --no-allow-unauthenticated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tagged revisions behind the ingress: `/<root>:<tag>/…` and the
/// `Rouse-Tag` header reach the revision under that tag (the path's tag
/// winning over the header's), untagged requests the serving revision, an
/// unknown tag gets 404 naming it; the path is passed on whole.
#[tokio::test]
async fn tags_in_the_path_or_a_header_reach_tagged_revisions() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    // Two revisions: the newer one serves.
    echo_service(&server, "tagged", &[]);
    server.echo_revision("p", "tagged", &[]);
    let serving = server.serving("tagged", "p");
    let older = "tagged-00001";
    assert_ne!(serving, older);
    server
        .rouse(&[
            "services",
            "deploy",
            "tagged",
            "--project",
            "p",
            "--revision",
            older,
            "--tag",
            "old",
        ])
        .ok();
    let http = reqwest::Client::new();
    let ingress = server.ingress().to_owned();
    let revision_of = |answer: &Answer| {
        answer.json()["revision"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    let untagged = get(&http, &format!("{ingress}/p-tagged/x"), None).await;
    assert_eq!(untagged.status, 200, "{}", untagged.text);
    assert_eq!(revision_of(&untagged), serving);
    let by_path = get(&http, &format!("{ingress}/p-tagged:old/x"), None).await;
    assert_eq!(by_path.status, 200, "{}", by_path.text);
    assert_eq!(revision_of(&by_path), older);
    assert_eq!(by_path.json()["path"], "/p-tagged:old/x");
    let by_header = http
        .get(format!("{ingress}/p-tagged/x"))
        .header("rouse-tag", "old")
        .send()
        .await
        .expect("an answer");
    assert_eq!(by_header.status().as_u16(), 200);
    let by_header: Value = by_header.json().await.expect("JSON");
    assert_eq!(by_header["revision"], older);
    let unknown = get(&http, &format!("{ingress}/p-tagged:nope/x"), None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert!(unknown.text.contains("nope"), "{}", unknown.text);
    let unknown_header = http
        .get(format!("{ingress}/p-tagged/x"))
        .header("rouse-tag", "nope")
        .send()
        .await
        .expect("an answer");
    assert_eq!(unknown_header.status().as_u16(), 404);
}

/// `revisions create --use-http2`: the instances of such a revision speak
/// only h2c (the test's `h2echo`, as a gRPC server would); they are found
/// ready by an HTTP/2 probe, requests through the ingress reach them over
/// HTTP/2 (path and body passed on), and questions are delivered over
/// HTTP/2 too. The same server without the flag is never taken for ready
/// (an open port is not enough): its request is refused naming the wake
/// failure. A probe path with the flag is refused at create.
#[tokio::test]
async fn h2c_revisions_get_requests_and_questions_over_http2() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    let h2echo = rouse_tests::workspace_bin("h2echo");
    let h2echo = h2echo.to_str().expect("utf-8");
    let revision = |service: &str, extra: &[&str]| {
        let mut args = vec![
            "revisions",
            "create",
            service,
            "--project",
            "p",
            "--command",
            h2echo,
            "--workdir",
            "/tmp",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        server.rouse(&args)
    };
    server.create_service("p", "grpcish");
    let created = revision("grpcish", &["--use-http2"]).json();
    assert_eq!(created["protocol"], "h2c", "{created}");
    let http = reqwest::Client::new();
    let ingress = server.ingress().to_owned();

    let answer = get(
        &http,
        &format!("{ingress}/p-grpcish/pkg.Service/Method"),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let json = answer.json();
    assert_eq!(json["version"], "HTTP/2.0", "{json}");
    assert_eq!(json["path"], "/p-grpcish/pkg.Service/Method");
    let posted = http
        .post(format!("{ingress}/p-grpcish/upload"))
        .body(vec![b'x'; 70_000])
        .send()
        .await
        .expect("an answer");
    assert_eq!(posted.status().as_u16(), 200);
    let posted: Value = posted.json().await.expect("JSON");
    assert_eq!(posted["body_bytes"], 70_000);
    assert_eq!(posted["method"], "POST");

    let asked = server.rouse(&[
        "ask",
        "grpcish",
        "--project",
        "p",
        "--input",
        "{}",
        "--wait",
    ]);
    assert_eq!(asked.code, 0, "{asked:?}\n{}", server.log());
    assert!(asked.stdout.contains("HTTP/2.0"), "{asked:?}");

    // Without the flag, the h2c-only server never passes the HTTP/1.1 probe.
    server.create_service("p", "plain");
    server
        .rouse(&[
            "services",
            "update",
            "plain",
            "--project",
            "p",
            "--wake-timeout",
            "2s",
        ])
        .ok();
    revision("plain", &[]).ok();
    let refused = get(&http, &format!("{ingress}/p-plain/x"), None).await;
    assert_eq!(refused.status, 503, "{}", refused.text);

    let both = revision("grpcish", &["--use-http2", "--probe-path", "/healthz"]);
    assert_ne!(both.code, 0, "{both:?}");
    assert!(both.stderr.contains("--probe-path"), "{both:?}");
}

/// With two dispatchers (each with an ingress) sharing the services, either
/// ingress serves every service: a request for one the other dispatcher
/// runs is forwarded to that dispatcher's ingress, once, which checks the
/// caller and serves it (the forwarded chain shows both hops). A caller
/// without a token is refused through either door.
#[tokio::test(flavor = "multi_thread")]
async fn either_dispatchers_ingress_serves_every_service() {
    const BATCH: usize = 4;
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let api = Server::start(&emulator, data.path(), &["--roles", "api"]);
    let doors: Vec<Server> = (0..2)
        .map(|_| Server::start(&emulator, data.path(), &["--roles", "dispatcher,ingress"]))
        .collect();
    // The caller first: the dispatchers see a new key within their next
    // look at the store (250 ms), long before the services are shared out.
    let caller = api.service_account(data.path(), "p", "caller");
    api.rouse(&[
        "projects",
        "add-iam-policy-binding",
        "p",
        "--member=serviceAccount:caller@p.rouse",
        "--role=roles/invoker",
    ])
    .ok();
    let bearer = token(&api, &caller, None);
    let runs = |door: &Server, uuid: &str| {
        door.log().lines().any(|l| {
            l.contains(uuid)
                && (l.contains("runs the service now") || l.contains("took the service over"))
        })
    };
    // Services go to dispatchers by a hash of the service and the
    // dispatcher's process, so a batch may all land on one (1 in 2^(n-1)):
    // services are added a batch at a time until each dispatcher runs some.
    let mut names: Vec<String> = Vec::new();
    let mut uuids: Vec<String> = Vec::new();
    let mut owners: Vec<usize> = Vec::new();
    while !(owners.contains(&0) && owners.contains(&1)) {
        assert!(
            names.len() < 4 * BATCH,
            "{} services all run by dispatcher {owners:?}",
            names.len()
        );
        for _ in 0..BATCH {
            let name = format!("door-{}", names.len());
            let created = api.echo_service("p", &name, &[], &[]);
            uuids.push(created["uuid"].as_str().expect("uuid").to_owned());
            names.push(name);
        }
        owners = wait_until(
            Duration::from_secs(30),
            "every service run by one dispatcher",
            || {
                let owners: Vec<Vec<usize>> = uuids
                    .iter()
                    .map(|u| (0..2).filter(|d| runs(&doors[*d], u)).collect())
                    .collect();
                if owners.iter().all(|o| o.len() == 1) {
                    Ok(owners.iter().map(|o| o[0]).collect())
                } else {
                    Err(format!("{owners:?}"))
                }
            },
        )
        .await;
    }

    let http = reqwest::Client::new();
    // Another process learns of a new key at its next look at the store
    // (every 250 ms), which the steps above may outrun: wait until each
    // dispatcher, where it runs a service, knows the caller.
    for (d, door) in doors.iter().enumerate() {
        let n = owners
            .iter()
            .position(|o| *o == d)
            .expect("one of its services");
        let url = format!("{}/p-{}/hello", door.ingress(), names[n]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = get(&http, &url, Some(&bearer)).await;
            if answer.status != 401 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "door {d} does not know the caller's key: {}\n{}",
                answer.text,
                door.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (n, name) in names.iter().enumerate() {
        for (d, door) in doors.iter().enumerate() {
            let url = format!("{}/p-{name}/hello", door.ingress());
            let answer = get(&http, &url, Some(&bearer)).await;
            assert_eq!(
                answer.status,
                200,
                "{name} through door {d} (run by {}): {}\n{}",
                owners[n],
                answer.text,
                door.log()
            );
            let chain = answer.json()["forwarded"]["x-forwarded-for"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let hops = if owners[n] == d { 1 } else { 2 };
            assert_eq!(
                chain.split(", ").count(),
                hops,
                "{name} through door {d}, run by {}: {chain}",
                owners[n]
            );
            // The caller is checked where the service runs: anonymous is
            // refused through either door.
            let anonymous = get(&http, &url, None).await;
            assert_eq!(
                anonymous.status, 401,
                "{name} through door {d}: {}",
                anonymous.text
            );
        }
    }
}

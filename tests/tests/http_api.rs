//! The HTTP/JSON API end to end, as a `curl` user meets it: the real
//! binary on the emulator, JSON over HTTP/1.1 on the API's port, tokens from
//! `rouse auth print-access-token`.
//!
//! - A service is created, deployed, asked (async: 202 and the execution's
//!   URL; `?wait=true`: the finished execution with its output), its
//!   events and logs read as NDJSON; `Authorization: Token …` works like
//!   `Bearer …`.
//! - The same permission checks as gRPC: anonymous → 401/403, a caller
//!   without the permission → 403 naming it; an `roles/serviceUser` caller
//!   asks as itself.
//! - Bad input gets Google's JSON error naming the value: unknown routes,
//!   methods, fields, query parameters, bodies that are not objects.
//! - `/openapi.json` describes the routes; gRPC on the same port still works.

use std::path::Path;
use std::time::{Duration, Instant};

use rouse_tests::{Emulator, Server, workspace_bin};
use serde_json::{Value, json};

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.text))
    }

    /// The error's message, after checking Google's error shape.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        assert_eq!(body["error"]["code"], status, "{body}");
        assert!(body["error"]["status"].is_string(), "{body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("the API answers");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.expect("a body"),
        }
    }
}

/// `rouse auth print-access-token` as the holder of `key` (`None`: the owner).
fn token(server: &Server, key: Option<&Path>) -> String {
    format!("Bearer {}", server.access_token(key))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_curl_user_deploys_asks_and_follows_over_http_json() {
    use reqwest::Method as M;
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    let api = Api {
        http: reqwest::Client::builder()
            .http1_only()
            .build()
            .expect("client"),
        base: server.endpoint().to_owned(),
    };
    let owner = token(&server, None);
    let owner = Some(owner.as_str());

    // The document, open to anyone.
    let doc = api.call(M::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    assert!(
        doc.json()["paths"]["/v1/projects/{project}/services/{service}/executions"]["post"]
            .is_object()
    );

    // Create and deploy.
    let created = api
        .call(
            M::POST,
            "/v1/projects/p/services",
            owner,
            Some(r#"{"name": "echo"}"#),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(
        created.json()["topic"]
            .as_str()
            .map(|t| t.starts_with("octue.services.")),
        Some(true),
        "{}",
        created.text
    );
    let again = api
        .call(
            M::POST,
            "/v1/projects/p/services",
            owner,
            Some(r#"{"name": "echo"}"#),
        )
        .await;
    assert!(again.error(409).contains("already exists"));
    let echo = workspace_bin("echo");
    let revision = json!({ "command": { "argv": [echo], "workdir": "/tmp" } }).to_string();
    let deployed = api
        .call(
            M::POST,
            "/v1/projects/p/services/echo/revisions",
            owner,
            Some(&revision),
        )
        .await;
    assert_eq!(deployed.status, 200, "{}", deployed.text);
    let patched = api
        .call(
            M::PATCH,
            "/v1/projects/p/services/echo",
            owner,
            Some(r#"{"max_instances": 2, "idle_timeout": "30s"}"#),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(
        patched.json()["scaling"]["max_instances"],
        2,
        "{}",
        patched.text
    );

    // Ask async: 202, the execution's URL; follow it to the answer. The
    // `Token` scheme works like `Bearer`.
    let token_scheme = owner.map(|b| b.replacen("Bearer ", "Token ", 1));
    let asked = api
        .call(
            M::POST,
            "/v1/projects/p/services/echo/executions",
            token_scheme.as_deref(),
            Some(r#"{"input": {"n": 5}}"#),
        )
        .await;
    assert_eq!(asked.status, 202, "{}", asked.text);
    let id = asked.json()["id"].as_str().expect("an id").to_owned();
    let location = asked.headers["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(location, format!("/v1/executions/{id}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let execution = loop {
        let got = api.call(M::GET, &location, owner, None).await;
        if got.status == 200 && got.json()["status"] == "succeeded" {
            break got.json();
        }
        assert!(Instant::now() < deadline, "no answer: {}", got.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(execution["output"]["echo"]["n"], 5, "{execution}");
    let events = api
        .call(M::GET, &format!("{location}/events"), owner, None)
        .await;
    assert_eq!(events.status, 200, "{}", events.text);
    assert_eq!(
        events.headers["content-type"], "application/x-ndjson",
        "{:?}",
        events.headers
    );
    let kinds: Vec<String> = events
        .text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line")["kind"].to_string())
        .collect();
    assert!(kinds.iter().any(|k| k == "\"result\""), "{}", events.text);
    // Past the last event of a finished execution: the stream ends, empty.
    let past = tokio::time::timeout(
        Duration::from_secs(10),
        api.call(
            M::GET,
            &format!("{location}/events?after_event_id=1000"),
            owner,
            None,
        ),
    )
    .await
    .expect("a finished execution's stream ends");
    assert_eq!((past.status, past.text.as_str()), (200, ""));

    // Ask and wait: the finished execution, its output.
    let waited = api
        .call(
            M::POST,
            "/v1/projects/p/services/echo/executions?wait=true&timeout=60s",
            owner,
            Some(r#"{"input": {"n": 6}}"#),
        )
        .await;
    assert_eq!(waited.status, 200, "{}", waited.text);
    let waited = waited.json();
    assert_eq!(waited["status"], "succeeded", "{waited}");
    assert_eq!(waited["output"]["echo"]["n"], 6, "{waited}");

    // Lists.
    let listed = api
        .call(
            M::GET,
            "/v1/projects/p/services/echo/executions?limit=1",
            owner,
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(
        listed.json()["executions"].as_array().map(Vec::len),
        Some(1)
    );
    let logs = api
        .call(
            M::GET,
            "/v1/projects/p/services/echo/logs?tail=5",
            owner,
            None,
        )
        .await;
    assert_eq!(logs.status, 200, "{}", logs.text);
    for line in logs.text.lines() {
        let line: Value = serde_json::from_str(line).expect("NDJSON");
        assert!(
            line["line"].is_string() || line["instance"].is_string(),
            "{line}"
        );
    }

    // Who may call: anonymous, a caller without the permission, a caller
    // with roles/serviceUser who asks as itself.
    let anonymous = api
        .call(M::GET, "/v1/projects/p/services/echo", None, None)
        .await;
    let message = anonymous.error(403);
    assert!(message.contains("services.get"), "{message}");
    let forged = api
        .call(
            M::GET,
            "/v1/projects/p/services/echo",
            Some("Bearer not-a-token"),
            None,
        )
        .await;
    forged.error(401);
    let keys = tempfile::tempdir().expect("keys");
    let user = server.service_account(keys.path(), "p", "user");
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "echo",
            "--project",
            "p",
            "--member=serviceAccount:user@p.rouse",
            "--role=roles/serviceUser",
        ])
        .ok();
    let user_token = token(&server, Some(&user));
    let denied = api
        .call(
            M::DELETE,
            "/v1/projects/p/services/echo",
            Some(&user_token),
            None,
        )
        .await;
    let message = denied.error(403);
    assert!(
        message.contains("serviceAccount:user@p.rouse") && message.contains("services.delete"),
        "{message}"
    );
    let asked = api
        .call(
            M::POST,
            "/v1/projects/p/services/echo/executions?wait=true",
            Some(&user_token),
            Some(r#"{"input": {"n": 7}}"#),
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    assert_eq!(
        asked.json()["asked_by"],
        "serviceAccount:user@p.rouse",
        "{}",
        asked.text
    );

    // A public service: an anonymous caller may ask but not read the
    // execution, so waiting gives it the id rather than a refusal.
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "echo",
            "--project",
            "p",
            "--member=allUsers",
            "--role=roles/invoker",
        ])
        .ok();
    let public = api
        .call(
            M::POST,
            "/v1/projects/p/services/echo/executions?wait=true",
            None,
            Some(r#"{"input": {"n": 8}}"#),
        )
        .await;
    assert_eq!(public.status, 202, "{}", public.text);
    assert!(public.json()["id"].is_string(), "{}", public.text);

    // Bad input, named.
    let unknown = api.call(M::GET, "/v1/projects/p", owner, None).await;
    assert!(unknown.error(404).contains("/openapi.json"));
    let method = api
        .call(M::PUT, "/v1/projects/p/services/echo", owner, None)
        .await;
    method.error(405);
    assert!(
        method.headers["allow"]
            .to_str()
            .is_ok_and(|a| a.contains("PATCH")),
        "{:?}",
        method.headers
    );
    for (path, body, named) in [
        (
            "/v1/projects/p/services/echo/executions",
            "[1, 2]",
            "an array",
        ),
        (
            "/v1/projects/p/services/echo/executions",
            r#"{"inptu": {}}"#,
            "inptu",
        ),
        (
            "/v1/projects/p/services/echo/executions",
            "{not json",
            "not JSON",
        ),
        (
            "/v1/projects/p/services/echo/executions?wait=soon",
            "{}",
            "wait=soon",
        ),
        (
            "/v1/projects/p/services",
            r#"{"name": "Bad Name!"}"#,
            "Bad Name!",
        ),
    ] {
        let answer = api.call(M::POST, path, owner, Some(body)).await;
        let message = answer.error(400);
        assert!(message.contains(named), "{path} {body}: {message}");
    }
    let query = api
        .call(
            M::GET,
            "/v1/projects/p/services/echo/executions?limit=lots",
            owner,
            None,
        )
        .await;
    assert!(query.error(400).contains("limit=lots"));

    // gRPC on the same port is untouched: the CLI still works.
    let described = server
        .rouse(&[
            "services",
            "describe",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(described["name"], "echo", "{described}");
}

/// schemathesis (PyPI) against the running server, from `/openapi.json`:
/// generated requests to every route, as the owner, must never get a 5xx,
/// and every answer must match the document (status, content type, body
/// schema).
#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(repo.join(".ci/schemathesis-venv"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run .ci/schemathesis-venv");
    assert!(out.status.success(), ".ci/schemathesis-venv failed");
    let st = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    // A service that exists, so that some generated calls reach it, and a
    // finished execution of it.
    server.echo_service("p", "echo", &[], &[]);
    let asked = server.rouse(&[
        "ask",
        "echo",
        "--project",
        "p",
        "--input",
        "{}",
        "--wait",
        "--format",
        "json",
    ]);
    assert_eq!(asked.code, 0, "{asked:?}");
    let listed = server
        .rouse(&["executions", "list", "--project", "p", "--format", "json"])
        .json();
    let id = listed[0]["id"].as_str().expect("an execution").to_owned();
    // Streams that follow run until their client leaves: fuzzed with
    // `follow` off; an execution's events are read from the finished one
    // (for an id not recorded yet the API waits 10 s for the question to
    // arrive, by design).
    let config = data.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[[operations]]\ninclude-operation-id = [\"ReadLogs\", \"StreamBuildLogs\"]\n\
             parameters = {{ \"query.follow\" = false }}\n\n\
             [[operations]]\ninclude-operation-id = \"WatchExecution\"\n\
             parameters = {{ \"path.id\" = \"{id}\" }}\n"
        ),
    )
    .expect("config");
    let owner = token(&server, None);
    let out = std::process::Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &format!("{}/openapi.json", server.endpoint()),
            "--url",
            server.endpoint(),
            "--header",
            &format!("Authorization: {owner}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "20",
            "--request-timeout",
            "20",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache (`.schemathesis/`) goes with the test's data, not into
        // the repository.
        .current_dir(data.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(stdout.contains("passed"), "{stdout}");
}

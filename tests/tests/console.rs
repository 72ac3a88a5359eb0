//! The web console (`/ui` on the API port) in headless Chromium, on the
//! real binary:
//!
//! - every page renders for the owner, and a screenshot of each is written
//!   (the paths are printed: `target/console-screenshots/*.png`);
//! - a viewer of project `p` sees p's services and not q's, and its
//!   rollback is refused (403) while the owner's makes the revision serve;
//! - a build's log streams as server-sent events to its end;
//! - without a token every page sends the browser to the sign-in form.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rouse_tests::{Emulator, Server, wait_until};

/// `chromium --headless` on `url`: `Some(png)` writes a screenshot there,
/// else the DOM after load is returned.
fn chromium(url: &str, screenshot: Option<&Path>) -> String {
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ]);
    let profile = tempfile::tempdir().expect("profile dir");
    command.arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(png) => command.arg(format!("--screenshot={}", png.display())),
        None => command.arg("--dump-dom"),
    };
    let out = command
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium (apt-get install chromium; `just setup` does)");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The console's URL that signs in with `token` and goes on to `page`.
fn signed_in(api: &str, token: &str, page: &str) -> String {
    format!("{api}/ui/signin?token={token}&next={page}")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_what_each_caller_may_see() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    let api = format!("http://{}", server.endpoint().trim_start_matches("http://"));

    // p/alpha with two revisions and a few questions (one cold start);
    // q/beta elsewhere; a function gives a build with a log.
    server.echo_service("p", "alpha", &[], &[]);
    server.echo_revision("p", "alpha", &[]);
    server.echo_service("q", "beta", &[], &[]);
    for n in 0..3 {
        server
            .rouse(&[
                "ask",
                "alpha",
                "--project",
                "p",
                "--input",
                &format!(r#"{{"n": {n}}}"#),
                "--wait",
            ])
            .ok();
    }
    let function = data.path().join("main.py");
    std::fs::write(&function, "def main(args, context):\n    return 'hi'\n").expect("write");
    let build = server
        .rouse(&[
            "functions",
            "deploy",
            "hello",
            "--project",
            "p",
            "--file",
            function.to_str().expect("utf-8"),
        ])
        .ok()
        .trim()
        .to_owned();
    let built = server.wait_build(&build, &["succeeded", "failed"], &[]);
    assert_eq!(built["status"], "succeeded", "{built}");
    let executions = server
        .rouse(&[
            "executions",
            "list",
            "--project",
            "p",
            "--service",
            "alpha",
            "--format",
            "json",
        ])
        .json();
    let execution = executions[0]["id"]
        .as_str()
        .expect("an execution")
        .to_owned();

    let owner = server.access_token(None);
    let viewer_key = server.service_account(data.path(), "p", "viewer");
    server
        .rouse(&[
            "projects",
            "add-iam-policy-binding",
            "p",
            "--member=serviceAccount:viewer@p.rouse",
            "--role=roles/viewer",
        ])
        .ok();
    let viewer = server.access_token(Some(&viewer_key));

    // Every page, as the owner: its content, and a screenshot.
    let pages = [
        ("services", "/ui/services".to_owned(), "alpha"),
        (
            "service",
            "/ui/projects/p/services/alpha".to_owned(),
            "Cold starts",
        ),
        (
            "execution",
            format!("/ui/executions/{execution}"),
            "delivery_acknowledgement",
        ),
        ("builds", "/ui/builds".to_owned(), &build),
        ("build", format!("/ui/builds/{build}"), "Log"),
    ];
    let dir = screenshots();
    for (name, page, expected) in &pages {
        let dom = chromium(&signed_in(&api, &owner, page), None);
        assert!(dom.contains(expected), "{page} shows `{expected}`:\n{dom}");
        let png = dir.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&png);
        chromium(&signed_in(&api, &owner, page), Some(&png));
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 5_000,
            "{} is a real screenshot ({size} bytes)",
            png.display()
        );
        println!("console screenshot: {}", png.display());
    }
    let services = chromium(&signed_in(&api, &owner, "/ui/services"), None);
    assert!(
        services.contains("beta"),
        "the owner sees q/beta:\n{services}"
    );
    let service = chromium(
        &signed_in(&api, &owner, "/ui/projects/p/services/alpha"),
        None,
    );
    assert!(
        service.contains("<svg") && service.contains("cold start"),
        "the cold-start chart:\n{service}"
    );
    assert!(service.contains("Roll back to it"), "{service}");

    // A viewer of p: p's services, not q's.
    let seen = chromium(&signed_in(&api, &viewer, "/ui/services"), None);
    assert!(seen.contains("alpha"), "the viewer sees p/alpha:\n{seen}");
    assert!(
        !seen.contains("beta"),
        "the viewer does not see q/beta:\n{seen}"
    );
    let other = chromium(
        &signed_in(&api, &viewer, "/ui/projects/q/services/beta"),
        None,
    );
    assert!(
        other.contains("does not have permission"),
        "q/beta's page is refused:\n{other}"
    );

    // Rollback: refused to the viewer, done for the owner.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let rollback = |token: String| {
        http.post(format!("{api}/ui/projects/p/services/alpha/rollback"))
            .header("cookie", format!("rouse_token={token}"))
            .form(&[("revision", "alpha-00001")])
            .send()
    };
    let refused = rollback(viewer.clone()).await.expect("answered");
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(server.serving("alpha", "p"), "alpha-00002");
    let done = rollback(owner.clone()).await.expect("answered");
    assert_eq!(done.status().as_u16(), 303);
    assert_eq!(server.serving("alpha", "p"), "alpha-00001");

    // The build's log as server-sent events, to its final status.
    let events = http
        .get(format!("{api}/ui/builds/{build}/events"))
        .header("cookie", format!("rouse_token={owner}"))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        events.headers()["content-type"]
            .to_str()
            .unwrap_or_default(),
        "text/event-stream"
    );
    let text = tokio::time::timeout(Duration::from_secs(30), events.text())
        .await
        .expect("the stream ends with the build")
        .expect("a body");
    assert!(text.contains("data: function from"), "{text}");
    assert!(
        text.ends_with("event: status\ndata: succeeded\n\n"),
        "{text}"
    );

    // No token: to the sign-in form, which the browser shows.
    let anonymous = http
        .get(format!("{api}/ui/services"))
        .send()
        .await
        .expect("answered");
    assert_eq!(anonymous.status().as_u16(), 303);
    let form = chromium(&format!("{api}/ui/services"), None);
    assert!(form.contains("rouse auth print-access-token"), "{form}");
    // The audit log recorded the viewer's refused rollback.
    wait_until(Duration::from_secs(5), "the refusal audited", || {
        let audit = server.rouse(&[
            "audit",
            "list",
            "--principal",
            "serviceAccount:viewer@p.rouse",
            "--decision",
            "denied",
            "--format",
            "json",
        ]);
        if audit.stdout.contains("Rollback") {
            Ok(())
        } else {
            Err(audit.stdout.chars().take(2000).collect::<String>())
        }
    })
    .await;
}

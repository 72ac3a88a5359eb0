//! A repository per service (seed 000's create → docker login → push →
//! update): Debian's `docker-registry` with token authentication, Rouse as
//! its token server, the real `docker login` and `docker push`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rouse_tests::asker::Asker;
use rouse_tests::echo_image::{STATIC_BUILD, static_echo_binary};
use rouse_tests::engines::Registry;
use rouse_tests::{Emulator, Server, free_port, pushes};
use serde_json::json;

const ANSWER: Duration = Duration::from_secs(90);

/// `docker --config <dir> ARGS` with `stdin`; the client's credentials stay
/// in the test's own directory.
fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("docker ran")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Removes the test's image tags on drop.
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_push_and_update_image_through_a_service_s_own_repository() {
    let echo = static_echo_binary()
        .unwrap_or_else(|| panic!("the static echo is not built: run `{STATIC_BUILD}` first"));
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let host = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&emulator, data.path(), &["--registry", &host]);
    server.allow_anonymous_askers("p");
    let cert = data.path().join("registry-auth/issuer.crt");
    assert!(cert.is_file(), "the issuer's certificate is kept");
    let _registry = Registry::start_with_token_auth(
        host.clone(),
        &format!("{}/v2/token", server.endpoint()),
        &cert,
    );
    let echo_repo = format!("{host}/p-echo");
    let other_repo = format!("{host}/p-other");
    let _tags = Tags(vec![
        format!("{echo_repo}:v1"),
        format!("{other_repo}:v1"),
        format!("{echo_repo}:v2"),
        format!("{echo_repo}:v3"),
        format!("{echo_repo}:v4"),
    ]);

    // 1. Create: each service has its repository.
    let service = server
        .rouse(&[
            "services",
            "create",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    let topic = service["topic"].as_str().expect("topic").to_owned();
    assert_eq!(service["image_repository"], echo_repo.as_str(), "{service}");
    server
        .rouse(&["services", "create", "other", "--project", "p"])
        .ok();

    // 2. Credentials for echo's repository.
    let credentials = server
        .rouse(&[
            "services",
            "docker-credentials",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(credentials["registry"], host.as_str(), "{credentials}");
    assert_eq!(
        credentials["repository"],
        echo_repo.as_str(),
        "{credentials}"
    );
    let username = credentials["username"].as_str().expect("username");
    let password = credentials["password"].as_str().expect("password");

    // Over HTTP/JSON too; the token endpoint wants Basic credentials.
    let http = reqwest::Client::new();
    let answer = http
        .post(format!(
            "{}/v1/projects/p/services/other:issueDockerCredentials",
            server.endpoint()
        ))
        .header(
            "authorization",
            format!("Bearer {}", server.access_token(None)),
        )
        .send()
        .await
        .expect("the API answers");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(body["repository"], other_repo.as_str(), "{body}");
    let answer = http
        .get(format!(
            "{}/v2/token?service=rouse-registry&scope=repository:p-echo:push",
            server.endpoint()
        ))
        .send()
        .await
        .expect("the token endpoint answers");
    assert_eq!(answer.status(), 401);
    assert!(answer.headers().contains_key("www-authenticate"));
    let said = answer.text().await.expect("a body");
    assert!(said.contains("docker-credentials"), "{said}");

    // 3. docker login: a wrong password is refused, the credential works.
    let config = tempfile::tempdir().expect("docker config");
    let refused = docker(
        config.path(),
        &["login", &host, "--username", username, "--password-stdin"],
        Some("not-a-credential"),
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    let login = docker(
        config.path(),
        &["login", &host, "--username", username, "--password-stdin"],
        Some(password),
    );
    assert!(login.status.success(), "{}\n{}", text(&login), server.log());

    // 4. docker push to echo's repository.
    let context = tempfile::tempdir().expect("context");
    std::fs::copy(&echo, context.path().join("echo")).expect("copy echo");
    std::fs::write(
        context.path().join("Dockerfile"),
        pushes::echo_dockerfile("pushed"),
    )
    .expect("Dockerfile");
    let v1 = format!("{echo_repo}:v1");
    let built = docker(
        config.path(),
        &[
            "build",
            "-q",
            "-t",
            &v1,
            context.path().to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(built.status.success(), "{}", text(&built));
    let pushed = docker(config.path(), &["push", &v1], None);
    assert!(
        pushed.status.success(),
        "{}\n{}",
        text(&pushed),
        server.log()
    );

    // 5. The same credential cannot push to another service's repository.
    let other_v1 = format!("{other_repo}:v1");
    let tagged = docker(config.path(), &["tag", &v1, &other_v1], None);
    assert!(tagged.status.success(), "{}", text(&tagged));
    let denied = docker(config.path(), &["push", &other_v1], None);
    assert!(!denied.status.success(), "{}", text(&denied));
    let said = text(&denied);
    assert!(
        said.contains("denied") || said.contains("unauthorized"),
        "{said}"
    );

    // 6. Nor can other's credential push to echo's.
    let other_credentials = server
        .rouse(&[
            "services",
            "docker-credentials",
            "other",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    let other_config = tempfile::tempdir().expect("docker config");
    let login = docker(
        other_config.path(),
        &["login", &host, "--username", "rouse", "--password-stdin"],
        Some(other_credentials["password"].as_str().expect("password")),
    );
    assert!(login.status.success(), "{}", text(&login));
    let v2 = format!("{echo_repo}:v2");
    assert!(
        docker(other_config.path(), &["tag", &v1, &v2], None)
            .status
            .success()
    );
    let denied = docker(other_config.path(), &["push", &v2], None);
    assert!(!denied.status.success(), "{}", text(&denied));

    // 7. A caller without services.deploy gets no credentials.
    let keys = tempfile::tempdir().expect("keys");
    let stranger = server.service_account(keys.path(), "p", "stranger");
    let refused = server.rouse_as(
        Some(&stranger),
        &["services", "docker-credentials", "echo", "--project", "p"],
    );
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("services.deploy"),
        "{}",
        refused.stderr
    );

    // 8. A deployer's credential works while the binding does: the token
    // server checks services.deploy on every use, not only at issue.
    let deployer = server.service_account(keys.path(), "p", "deployer");
    let binding = |verb: &str| {
        server
            .rouse(&[
                "services",
                verb,
                "echo",
                "--project",
                "p",
                "--member=serviceAccount:deployer@p.rouse",
                "--role=roles/deployer",
            ])
            .ok()
            .to_owned()
    };
    binding("add-iam-policy-binding");
    let issued = server.rouse_as(
        Some(&deployer),
        &[
            "services",
            "docker-credentials",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ],
    );
    let issued: serde_json::Value = serde_json::from_str(issued.ok()).expect("JSON");
    let deployer_config = tempfile::tempdir().expect("docker config");
    let login = docker(
        deployer_config.path(),
        &["login", &host, "--username", "rouse", "--password-stdin"],
        Some(issued["password"].as_str().expect("password")),
    );
    assert!(login.status.success(), "{}", text(&login));
    let v3 = format!("{echo_repo}:v3");
    assert!(
        docker(deployer_config.path(), &["tag", &v1, &v3], None)
            .status
            .success()
    );
    let pushed = docker(deployer_config.path(), &["push", &v3], None);
    assert!(pushed.status.success(), "{}", text(&pushed));
    binding("remove-iam-policy-binding");
    // The API process sees the policy change at its next look (250 ms).
    std::thread::sleep(Duration::from_millis(600));
    let v4 = format!("{echo_repo}:v4");
    assert!(
        docker(deployer_config.path(), &["tag", &v1, &v4], None)
            .status
            .success()
    );
    let denied = docker(deployer_config.path(), &["push", &v4], None);
    assert!(!denied.status.success(), "{}", text(&denied));
    let audit = server
        .rouse(&["audit", "list", "--format", "json"])
        .ok()
        .to_owned();
    assert!(
        audit.contains("registry.token") && audit.contains("deployer@p.rouse"),
        "token requests are audited"
    );

    // 9. update --image: the engine loses its copy, so the builder pulls it
    // with its own credential; the question is answered by the pushed image.
    let removed = docker(
        config.path(),
        &["rmi", "-f", &v1, &other_v1, &v2, &v3, &v4],
        None,
    );
    assert!(removed.status.success(), "{}", text(&removed));
    let update = server.rouse(&[
        "services",
        "update",
        "echo",
        "--project",
        "p",
        "--image",
        "v1",
    ]);
    assert_eq!(
        update.code,
        0,
        "{}\n{}\n{}",
        update.stdout,
        update.stderr,
        server.log()
    );
    assert!(
        update.stdout.contains(&format!("pulling {v1}")),
        "{}",
        update.stdout
    );
    let describe = server
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
    let serving = server.serving("echo", "p");
    let revision = server
        .rouse(&[
            "revisions",
            "describe",
            &serving,
            "--service",
            "echo",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(revision["source"], v1.as_str(), "{revision}\n{describe}");
    let mut asker = Asker::new(emulator.host(), "octue.services").await;
    let q = asker.ask(&topic, "p/echo", json!({"n": 1})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, server.log());
    assert_eq!(a.data["output_values"]["version"], "pushed", "{:?}", a.data);

    // 10. Bad images: another service's repository is refused naming the
    // service's own; a tag never pushed fails its build and v1 keeps serving.
    let refused = server.rouse(&[
        "services",
        "update",
        "echo",
        "--project",
        "p",
        "--image",
        &other_v1,
    ]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains(&echo_repo), "{}", refused.stderr);
    let missing = server.rouse(&[
        "services",
        "update",
        "echo",
        "--project",
        "p",
        "--image",
        "v9",
    ]);
    assert_ne!(missing.code, 0, "{}", missing.stdout);
    let said = format!("{}{}", missing.stdout, missing.stderr);
    assert!(said.contains("pulling") && said.contains(":v9"), "{said}");
    assert_eq!(server.serving("echo", "p"), serving);

    // An image only the engine has (no registry in its name) is deployed
    // as it is, not looked for on Docker Hub.
    let local = "rouse-test/repositories-echo:local";
    let _local = Tags(vec![local.to_owned()]);
    assert!(
        docker(config.path(), &["pull", "-q", &v1], None)
            .status
            .success()
    );
    assert!(
        docker(config.path(), &["tag", &v1, local], None)
            .status
            .success()
    );
    let update = server.rouse(&[
        "services",
        "update",
        "echo",
        "--project",
        "p",
        "--image",
        local,
    ]);
    assert_eq!(update.code, 0, "{}\n{}", update.stdout, update.stderr);
    assert!(
        update.stdout.contains("nothing to pull"),
        "{}",
        update.stdout
    );
    assert_ne!(server.serving("echo", "p"), serving);
}

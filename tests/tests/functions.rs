//! Functions end to end: FaaSpot's examples as written, with `rouse` in
//! place of `fas`, on the real binary and the process runtime. The
//! requirements are installed from PyPI (as the octue virtualenv is).
//!
//! - `examples/functions/hello` (a requirement and a context) deploys with
//!   `--wait`, runs synchronously with `--parameters "name=user1" --wait`,
//!   and asynchronously (an execution id, then `rouse executions get`).
//! - A redeploy with the same requirements reuses their environment.
//! - A file without a usable `main` is refused at deploy, naming the file,
//!   the line and the fix; a bad context line likewise; the server goes on.
//! - An exception raised by `main` is the run's error.
//! - The Python client (`examples/python-client`) deploys and runs over the
//!   HTTP API, sync and async.
//! - With `--function-base-image`, functions are Docker images on a local
//!   base image (made by the test from the machine's Python), their
//!   requirements in an image made once per base and requirements.

use std::path::{Path, PathBuf};

use rouse_tests::echo_image::PythonBaseImage;
use rouse_tests::{Emulator, Server};
use serde_json::Value;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn faaspot_examples_deploy_and_run_sync_and_async() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    let hello = examples().join("functions/hello");
    let (file, requirements, context) = (
        hello.join("main.py"),
        hello.join("requirements.txt"),
        hello.join("context.env"),
    );
    let deploy = |name: &str, file: &Path, extra: &[&str]| {
        let mut args = vec![
            "functions",
            "deploy",
            name,
            "--project",
            "p",
            "--file",
            path(file),
        ];
        args.extend_from_slice(extra);
        server.rouse(&args)
    };

    // fas deployments create hello --file … --requirements-file … --context-file … --wait
    let deployed = deploy(
        "hello",
        &file,
        &[
            "--requirements-file",
            path(&requirements),
            "--context-file",
            path(&context),
            "--wait",
        ],
    );
    assert_eq!(
        deployed.code,
        0,
        "{}\n{}\n{}",
        deployed.stdout,
        deployed.stderr,
        server.log()
    );
    assert!(
        deployed.stdout.contains("installing its requirements"),
        "the build log is followed: {}",
        deployed.stdout
    );

    // fas deployments run hello --parameters "name=user1" --wait
    let ran = server.rouse(&[
        "functions",
        "run",
        "hello",
        "--project",
        "p",
        "--parameters",
        "name=user1",
        "--wait",
    ]);
    let result: Value = serde_json::from_str(ran.ok()).expect("the result is JSON");
    assert_eq!(result["greeting"], "Hello user1", "{result}");
    assert_eq!(
        result["access_key_is"], "XYZ",
        "the context reaches main: {result}"
    );
    assert_eq!(
        result["six"], "1.16.0",
        "the requirement is installed: {result}"
    );

    // UUID=`fas deployments run hello --parameters "name=user1"`; fas executions get $UUID
    let id = server
        .rouse(&[
            "functions",
            "run",
            "hello",
            "--project",
            "p",
            "--parameters",
            "name=user2",
        ])
        .ok()
        .trim()
        .to_owned();
    let execution = server.finished_execution(&id);
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert_eq!(
        execution["output"]["greeting"], "Hello user2",
        "{execution}"
    );
    assert!(
        server
            .rouse(&["executions", "get", &id])
            .ok()
            .contains("Hello user2"),
        "the table shows the output too"
    );
    // The context is one of the service's secrets (sealed, listed by name).
    let secrets = server.rouse(&["secrets", "list", "hello", "--project", "p"]);
    assert!(
        secrets.ok().contains("ROUSE_FUNCTION_CONTEXT"),
        "{}",
        secrets.stdout
    );

    // New code, the same requirements: their environment is reused.
    let changed = data.path().join("main.py");
    std::fs::write(
        &changed,
        "import six\n\ndef main(args, context):\n    return {'v': 2, 'six': six.__version__, 'context': context}\n",
    )
    .expect("write");
    let build = deploy("hello", &changed, &["--requirements", path(&requirements)]);
    let build = build.ok().trim().to_owned();
    let built = server.wait_build(&build, &["succeeded", "failed"], &[]);
    assert_eq!(built["status"], "succeeded", "{built}\n{}", server.log());
    let log = server.rouse(&["builds", "logs", &build]);
    assert!(
        log.ok().contains("the requirements are installed already"),
        "{}",
        log.stdout
    );
    let ran = server.rouse(&["functions", "run", "hello", "--project", "p", "--wait"]);
    let result: Value = serde_json::from_str(ran.ok()).expect("JSON");
    assert_eq!(result["v"], 2, "the new code serves: {result}");
    assert_eq!(
        result["context"],
        serde_json::json!({}),
        "a deploy without a context file leaves an empty context: {result}"
    );

    // A file without a usable main is refused before anything is built.
    let bad = data.path().join("bad.py");
    std::fs::write(&bad, "import os\n\ndef main(args):\n    return 1\n").expect("write");
    let refused = deploy("hello", &bad, &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!(
            "{}:3: `main(args)` cannot be called as `main(args, context)`",
            path(&bad)
        )),
        "{}",
        refused.stderr
    );
    let missing = data.path().join("none.py");
    std::fs::write(&missing, "def handler(args, context):\n    pass\n").expect("write");
    let refused = deploy("hello", &missing, &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("has no top-level `main` function"),
        "{}",
        refused.stderr
    );
    let context = data.path().join("bad.env");
    std::fs::write(&context, "a = 1\nnot a pair\n").expect("write");
    let refused = deploy("hello", &file, &["--context-file", path(&context)]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("{}:2: `not a pair` has no `=`", path(&context))),
        "{}",
        refused.stderr
    );

    // main raising: the run fails with its exception; the function still runs.
    let raising = data.path().join("raising.py");
    std::fs::write(
        &raising,
        "def main(args, context):\n    if args.get('fail'):\n        raise ValueError('asked to fail: ' + args['fail'])\n    return 'fine'\n",
    )
    .expect("write");
    assert_eq!(deploy("raising", &raising, &["--wait"]).code, 0);
    let failed = server.rouse(&[
        "functions",
        "run",
        "raising",
        "--project",
        "p",
        "--parameters",
        "fail=yes",
        "--wait",
    ]);
    assert_eq!(failed.code, 1, "{}", failed.stdout);
    assert!(
        failed.stderr.contains("ValueError: asked to fail: yes"),
        "{}",
        failed.stderr
    );
    let fine = server.rouse(&["functions", "run", "raising", "--project", "p", "--wait"]);
    assert_eq!(fine.ok().trim(), "\"fine\"");
    let bad_parameter = server.rouse(&[
        "functions",
        "run",
        "raising",
        "--project",
        "p",
        "--parameters",
        "novalue",
    ]);
    assert_eq!(bad_parameter.code, 2);
    assert!(
        bad_parameter
            .stderr
            .contains("--parameters `novalue` is not `key=value`"),
        "{}",
        bad_parameter.stderr
    );

    // fas deployments list / delete: functions only.
    server.echo_service("p", "plain", &[], &[]);
    let names = |server: &Server| -> Vec<String> {
        let listed = server
            .rouse(&["functions", "list", "--project", "p", "--format", "json"])
            .json();
        let mut names: Vec<String> = listed
            .as_array()
            .expect("a list")
            .iter()
            .map(|f| f["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&server), ["hello", "raising"]);
    let refused = server.rouse(&["functions", "delete", "plain", "--project", "p"]);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("does not serve a function")
            && refused
                .stderr
                .contains("rouse services delete plain --project p"),
        "{}",
        refused.stderr
    );
    server
        .rouse(&["functions", "delete", "raising", "--project", "p"])
        .ok();
    assert_eq!(names(&server), ["hello"]);
}

/// The Python client over the HTTP API: deployments.create (wait), run
/// (sync and async), executions.get, and an error naming the bad value.
#[test]
fn the_python_client_deploys_and_runs_over_http() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    let token = server.access_token(None);
    let main = data.path().join("double.py");
    std::fs::write(
        &main,
        "def main(args, context):\n    return {'doubled': int(args['n']) * 2, 'secret': context['secret']}\n",
    )
    .expect("write");
    let context = data.path().join("context.env");
    std::fs::write(&context, "secret = 's3'\n").expect("write");
    let bad = data.path().join("bad.py");
    std::fs::write(&bad, "def main():\n    pass\n").expect("write");
    let script = format!(
        r#"
import json, sys, time
sys.path.insert(0, {client:?})
from rouse_client import Rouse, RouseError

rouse = Rouse({endpoint:?}, token={token:?}, project="p")
build = rouse.deployments.create("double", file={main:?}, context_file={context:?}, wait=True)
assert build["status"] == "succeeded", build
print("sync", json.dumps(rouse.deployments.run("double", {{"n": "21"}}, wait=True)))
execution_id = rouse.deployments.run("double", {{"n": "5"}})
for _ in range(300):
    execution = rouse.executions.get(execution_id)
    if execution["status"] in ("succeeded", "failed"):
        break
    time.sleep(0.2)
print("async", execution["status"], json.dumps(execution.get("output")))
try:
    rouse.deployments.create("double", file={bad:?})
except RouseError as error:
    print("refused", error.status, error)
"#,
        client = path(&examples().join("python-client")),
        endpoint = format!("http://{}", server.endpoint().trim_start_matches("http://")),
        main = path(&main),
        context = path(&context),
        bad = path(&bad),
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(
        stdout.contains(r#"sync {"doubled": 42, "secret": "s3"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"async succeeded {"doubled": 10, "secret": "s3"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused 400 bad.py:1: `main()` cannot be called"),
        "{stdout}"
    );
}

/// Removes the images a test made, by repository, on drop.
struct Repositories(Vec<String>);

impl Drop for Repositories {
    fn drop(&mut self) {
        for repository in &self.0 {
            let listed = std::process::Command::new("docker")
                .args(["images", "-q", repository])
                .output();
            if let Ok(out) = listed {
                let ids = String::from_utf8_lossy(&out.stdout);
                for id in ids.split_whitespace() {
                    let _ = std::process::Command::new("docker")
                        .args(["rmi", "-f", id])
                        .output();
                }
            }
        }
    }
}

#[test]
fn functions_are_images_on_a_configured_base_image() {
    let base = PythonBaseImage::build("rouse-test/python:functions");
    // The function's images go first: the requirements' image is their base.
    let mut images = Repositories(vec!["rouse/fimg-hello".to_owned()]);
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &emulator,
        data.path(),
        &["--function-base-image", &base.tag],
    );
    let hello = examples().join("functions/hello");
    let deployed = server.rouse(&[
        "functions",
        "deploy",
        "hello",
        "--project",
        "fimg",
        "--file",
        path(&hello.join("main.py")),
        "--requirements-file",
        path(&hello.join("requirements.txt")),
        "--context-file",
        path(&hello.join("context.env")),
        "--wait",
    ]);
    assert_eq!(
        deployed.code,
        0,
        "{}\n{}\n{}",
        deployed.stdout,
        deployed.stderr,
        server.log()
    );
    let log = &deployed.stdout;
    let env_image = log
        .lines()
        .find_map(|l| l.split("installing the requirements into image ").nth(1))
        .unwrap_or_else(|| panic!("the requirements get an image: {log}"))
        .trim()
        .to_owned();
    images.0.push(env_image.clone());
    assert!(
        log.contains("built image rouse/fimg-hello:function-"),
        "{log}"
    );
    let serving = server.serving("hello", "fimg");
    let revision = server
        .rouse(&[
            "revisions",
            "describe",
            &serving,
            "--service",
            "hello",
            "--project",
            "fimg",
            "--format",
            "json",
        ])
        .json();
    let source = revision["source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with("rouse/fimg-hello:function-"),
        "{revision}"
    );

    let ran = server.rouse(&[
        "functions",
        "run",
        "hello",
        "--project",
        "fimg",
        "--parameters",
        "name=user1",
        "--wait",
    ]);
    let result: Value = serde_json::from_str(ran.ok()).expect("the result is JSON");
    assert_eq!(result["greeting"], "Hello user1", "{result}");
    assert_eq!(result["access_key_is"], "XYZ", "{result}");
    assert_eq!(result["six"], "1.16.0", "{result}");
    // It ran in a container of the function's image.
    let ps = std::process::Command::new("docker")
        .args(["ps", "--format", "{{.Image}}"])
        .output()
        .expect("docker ps");
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains(source),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );

    // New code, the same requirements: their image is reused.
    let code = tempfile::tempdir().expect("tempdir");
    let file = code.path().join("main.py");
    std::fs::write(
        &file,
        "import six\n\ndef main(args, context):\n    return {'v': 2, 'six': six.__version__}\n",
    )
    .expect("write");
    let redeployed = server.rouse(&[
        "functions",
        "deploy",
        "hello",
        "--project",
        "fimg",
        "--file",
        path(&file),
        "--requirements-file",
        path(&hello.join("requirements.txt")),
        "--wait",
    ]);
    assert_eq!(redeployed.code, 0, "{}", redeployed.stderr);
    assert!(
        redeployed.stdout.contains(&format!(
            "the requirements are installed already: image {env_image}"
        )),
        "{}",
        redeployed.stdout
    );
    let ran = server.rouse(&["functions", "run", "hello", "--project", "fimg", "--wait"]);
    let result: Value = serde_json::from_str(ran.ok()).expect("the result is JSON");
    assert_eq!(result["v"], 2, "{result}");
    assert_eq!(result["six"], "1.16.0", "{result}");

    // A base image the engine lacks: the function runs as a process, and
    // the log says why.
    let other = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &emulator,
        other.path(),
        &["--function-base-image", "rouse-test/absent:1"],
    );
    std::fs::write(&file, "def main(args, context):\n    return 'process'\n").expect("write");
    let deployed = server.rouse(&[
        "functions",
        "deploy",
        "plain",
        "--project",
        "fimg",
        "--file",
        path(&file),
        "--wait",
    ]);
    assert_eq!(deployed.code, 0, "{}\n{}", deployed.stdout, deployed.stderr);
    assert!(
        deployed
            .stdout
            .contains("the base image rouse-test/absent:1 is not in the engine"),
        "{}",
        deployed.stdout
    );
    let ran = server.rouse(&["functions", "run", "plain", "--project", "fimg", "--wait"]);
    assert_eq!(ran.ok().trim(), "\"process\"");
}

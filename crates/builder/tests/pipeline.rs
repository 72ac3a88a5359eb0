//! The builder's parts wired as the api crate will wire them: a signed
//! push for a local bare repository → trigger → queue → git → Docker, with
//! the statuses recorded. Real `git`, the real engine (skipped, with a
//! notice, when there is no engine socket).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rouse_builder::docker::{self, BuildSpec, ImageBuilder};
use rouse_builder::git::{GitConfig, GitFetcher};
use rouse_builder::payload;
use rouse_builder::queue::{
    BuildContext, BuildFailure, BuildRunner, QueueConfig, StatusSink, StatusUpdate,
};
use rouse_builder::signature::{self, SignatureHeaders};
use rouse_builder::{
    BuildQueue, BuildStatus, CommitId, Decision, Push, SkipReason, Trigger, TriggerSpec,
};

const SECRET: &str = "a-webhook-secret-of-some-length";

fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Rouse Test",
            "-c",
            "user.email=test@rouse.invalid",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

struct Job {
    trigger: Arc<Trigger>,
    push: Push,
}

struct Runner {
    git: GitFetcher,
    images: ImageBuilder,
    built: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl BuildRunner<Job> for Runner {
    async fn run(&self, build: BuildContext, job: Job) -> Result<(), BuildFailure> {
        let Job { trigger, push } = job;
        build.set_status(BuildStatus::Fetching).await;
        let (source, _) = self
            .git
            .checkout(
                trigger.repo_url(),
                &push.after,
                trigger.github_token(),
                build.cancellation(),
            )
            .await?;
        build.set_status(BuildStatus::Building).await;
        let mut spec = BuildSpec::new(
            source.path().join(trigger.context_dir()),
            docker::image_tags(trigger.project(), trigger.service(), &push.after),
        );
        spec.dockerfile = trigger.dockerfile().to_owned();
        self.built.lock().expect("lock").extend(spec.tags.clone());
        let mut log = |line: &str| eprintln!("[{}] {line}", build.id());
        self.images
            .build(&spec, &mut log, build.cancellation())
            .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Statuses(Mutex<Vec<(String, BuildStatus, Option<String>)>>);

#[async_trait::async_trait]
impl StatusSink for Statuses {
    async fn report(&self, update: StatusUpdate) {
        self.0
            .lock()
            .expect("lock")
            .push((update.build, update.status, update.detail));
    }
}

impl Statuses {
    fn of(&self, build: &str) -> Vec<BuildStatus> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|u| u.0 == build)
            .map(|u| u.1)
            .collect()
    }

    fn detail(&self, build: &str) -> Option<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .find(|u| u.0 == build)
            .and_then(|u| u.2.clone())
    }
}

#[tokio::test]
async fn a_signed_push_to_main_builds_the_pushed_commit() {
    let socket = docker::default_socket();
    if !Path::new(&socket).exists() {
        eprintln!("skipping: no Docker engine socket at {socket}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = dir.path().join("app.git");
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("svc")).expect("mkdir");
    git(
        dir.path(),
        &["init", "--quiet", "--bare", "-b", "main", "app.git"],
    );
    git(&work, &["init", "--quiet", "-b", "main"]);
    std::fs::write(
        work.join("svc/Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .expect("write");
    std::fs::write(work.join("svc/hello.txt"), "v1\n").expect("write");
    git(&work, &["add", "--all"]);
    git(&work, &["commit", "--quiet", "-m", "good"]);
    let good = git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(
        work.join("svc/Dockerfile"),
        "FROM scratch\nCOPY missing.txt /\n",
    )
    .expect("write");
    git(&work, &["commit", "--quiet", "-am", "broken"]);
    let broken = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "--quiet", &bare.to_string_lossy(), "main"]);

    let trigger = Arc::new(
        Trigger::new(TriggerSpec {
            id: "trigger-1".into(),
            project: "pipeline".into(),
            service: format!("test-{}", std::process::id()),
            repo: bare.to_string_lossy().into_owned(),
            branch_pattern: "^main$".into(),
            context_dir: Some("svc".into()),
            webhook_secret: SECRET.into(),
            ..TriggerSpec::default()
        })
        .expect("trigger"),
    );
    let statuses = Arc::new(Statuses::default());
    let runner = Arc::new(Runner {
        git: GitFetcher::new(GitConfig::new(&dir.path().join("state"))),
        images: ImageBuilder::connect_to(&socket).await.expect("engine"),
        built: Mutex::new(Vec::new()),
    });
    let queue =
        BuildQueue::new(QueueConfig::default(), runner.clone(), statuses.clone()).expect("queue");

    // What the webhook handler will do for each delivery.
    let deliver = |git_ref: &str, sha: &str| {
        let body = format!(
            r#"{{"repo":"file://{}","ref":"{git_ref}","sha":"{sha}"}}"#,
            bare.display()
        );
        let header = signature::sign(SECRET.as_bytes(), body.as_bytes());
        (body, header)
    };
    let mut decisions = Vec::new();
    for (id, git_ref, sha) in [
        ("build-1", "refs/heads/main", good.as_str()),
        ("build-2", "refs/heads/feature/x", good.as_str()),
        ("build-3", "refs/heads/main", broken.as_str()),
    ] {
        let (body, header) = deliver(git_ref, sha);
        let headers = SignatureHeaders {
            sha256: Some(&header),
            sha1: None,
        };
        signature::verify(
            trigger.webhook_secret().expose().as_bytes(),
            body.as_bytes(),
            headers,
        )
        .expect("signed");
        let push = payload::parse_generic(body.as_bytes()).expect("push");
        assert!(trigger.watches(&push.repository.clone_url, None));
        let decision = trigger.matches(&push);
        if decision == Decision::Build {
            // Distinct keys: the broken push must not supersede the good one here.
            queue
                .submit(
                    id.into(),
                    Some(format!("{}-{id}", trigger.id())),
                    Job {
                        trigger: trigger.clone(),
                        push,
                    },
                )
                .await
                .expect("queued");
        }
        decisions.push(decision);
    }
    queue.idle().await;

    let tags = runner.built.lock().expect("lock").clone();
    let cleanup = async {
        for tag in &tags {
            let _ = runner.images.remove_image(tag).await;
        }
    };
    let good_id = CommitId::parse(&good).expect("commit");
    let good_tag = docker::image_tags(trigger.project(), trigger.service(), &good_id)[0].clone();
    let inspected = runner.images.docker().inspect_image(&good_tag).await;
    let detail = statuses.detail("build-3");
    cleanup.await;

    assert_eq!(decisions[0], Decision::Build);
    assert!(
        matches!(&decisions[1], Decision::Skip(SkipReason::BranchNotMatched { branch, .. }) if branch == "feature/x")
    );
    assert_eq!(
        statuses.of("build-1"),
        [
            BuildStatus::Fetching,
            BuildStatus::Building,
            BuildStatus::Succeeded
        ]
    );
    assert!(
        inspected.is_ok(),
        "the good commit's image was tagged {good_tag}"
    );
    assert_eq!(statuses.of("build-2"), []);
    assert_eq!(
        statuses.of("build-3"),
        [
            BuildStatus::Fetching,
            BuildStatus::Building,
            BuildStatus::Failed
        ]
    );
    let detail = detail.unwrap_or_default();
    assert!(
        detail.contains("COPY missing.txt /"),
        "the failing step is named: {detail}"
    );
}

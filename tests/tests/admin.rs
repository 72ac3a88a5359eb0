//! End-to-end: `rouse admin backup` of a running server's store, and a
//! restore from it (the backup put in place of the store).

use std::time::Duration;

use rouse_tests::asker::Asker;
use rouse_tests::{Emulator, Server};
use serde_json::json;

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(60);

/// A backup taken while the server runs holds what was there then: put in
/// place of the store, the services it held answer again, and one made
/// after it is not there. A backup never overwrites a file. On PostgreSQL
/// the command points to `pg_dump` and writes nothing.
#[tokio::test]
async fn a_backup_taken_while_the_server_runs_restores_its_services() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    let kept = server.echo_service("p", "kept", &[], &[]);
    let backups = tempfile::tempdir().expect("tempdir");
    let file = backups.path().join("rouse-backup.db");
    let file_arg = file.to_str().expect("utf-8 path");
    let mut args = vec!["admin", "backup", file_arg];
    let store = emulator.store_args(data.path());
    match store.is_empty() {
        true => args.extend(["--data-dir", data.path().to_str().expect("utf-8 path")]),
        false => args.extend(store.iter().map(String::as_str)),
    }
    let out = server.rouse(&args);
    if emulator.on_postgres() {
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("pg_dump"), "{out:?}");
        assert!(!file.exists(), "nothing written");
        return;
    }
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("1 services, 1 revisions"),
        "{}",
        out.stdout
    );
    let again = server.rouse(&args);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("never overwrites"), "{again:?}");

    server.create_service("p", "later");
    let status = server.stop();
    assert!(status.success(), "rouse server: {status}");
    for name in ["rouse.db", "rouse.db-wal", "rouse.db-shm"] {
        let path = data.path().join(name);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove the store");
        }
    }
    std::fs::copy(&file, data.path().join("rouse.db")).expect("restore");

    let restored = Server::start(&emulator, data.path(), &[]);
    let listed = restored
        .rouse(&["services", "list", "--project", "p", "--format", "json"])
        .json();
    let names: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["kept"], "{listed}");
    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    let topic = kept["topic"].as_str().expect("topic");
    let q = asker.ask(topic, "p/kept", json!({"restored": true})).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, restored.log());
    assert_eq!(a.data["output_values"]["echo"], json!({"restored": true}));
}

/// An export of a running server's store, imported into a new data dir,
/// exports as the same document byte for byte; a server started there runs
/// the exported services (they answer), keeps their IAM (a service
/// account's key still works) and their sealed secrets. An import into a
/// store that holds records is refused. On PostgreSQL both point to
/// PostgreSQL's own tools.
#[tokio::test]
async fn an_export_imported_into_a_new_store_runs_the_same_services() {
    let emulator = Emulator::start();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, data.path(), &[]);
    server.allow_anonymous_askers("p");
    let kept = server.echo_service("p", "kept", &["--freeze", "on"], &[]);
    server
        .rouse(&[
            "secrets",
            "set",
            "kept",
            "--project",
            "p",
            "API_TOKEN=s3cret",
        ])
        .ok();
    let keys = tempfile::tempdir().expect("keys");
    let account = server.service_account(keys.path(), "p", "reader");
    server
        .rouse(&[
            "projects",
            "add-iam-policy-binding",
            "p",
            "--member=serviceAccount:reader@p.rouse",
            "--role=roles/viewer",
        ])
        .ok();
    let files = tempfile::tempdir().expect("tempdir");
    let export = files.path().join("export.json");
    let export_arg = export.to_str().expect("utf-8 path");
    let store_of = |dir: &std::path::Path| -> Vec<String> {
        match emulator.store_args(dir) {
            args if args.is_empty() => vec![
                "--data-dir".to_owned(),
                dir.to_str().expect("utf-8 path").to_owned(),
            ],
            args => args,
        }
    };
    let with = |first: &[&str], store: &[String]| -> Vec<String> {
        first
            .iter()
            .map(|s| (*s).to_owned())
            .chain(store.iter().cloned())
            .collect()
    };
    let run = |args: &[String]| server.rouse(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(&with(
        &["admin", "export", export_arg],
        &store_of(data.path()),
    ));
    if emulator.on_postgres() {
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("pg_dump"), "{out:?}");
        return;
    }
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("services 1"), "{}", out.stdout);
    let document = std::fs::read_to_string(&export).expect("the export");
    assert!(!document.contains("s3cret"), "secrets stay sealed");

    // Into a new data dir with the same secrets key and the owner's key.
    let moved = tempfile::tempdir().expect("tempdir");
    for file in ["secrets.key", "owner-key.json"] {
        std::fs::copy(data.path().join(file), moved.path().join(file)).expect("copy");
    }
    let moved_store = store_of(moved.path());
    let imported = run(&with(&["admin", "import", export_arg], &moved_store));
    assert_eq!(imported.code, 0, "{imported:?}");
    let again = files.path().join("again.json");
    run(&with(
        &["admin", "export", again.to_str().expect("utf-8")],
        &moved_store,
    ));
    assert_eq!(
        std::fs::read_to_string(&again).expect("the second export"),
        document,
        "the imported store exports the same document"
    );
    let twice = run(&with(&["admin", "import", export_arg], &moved_store));
    assert_eq!(twice.code, 2, "{twice:?}");
    assert!(twice.stderr.contains("not empty"), "{twice:?}");
    let status = server.stop();
    assert!(status.success(), "rouse server: {status}");

    let restored = Server::start(&emulator, moved.path(), &[]);
    let described = restored
        .rouse(&[
            "services",
            "describe",
            "kept",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(described["uuid"], kept["uuid"], "{described}");
    assert_eq!(described["scaling"]["freeze"], true, "{described}");
    let secrets = restored.rouse(&["secrets", "list", "kept", "--project", "p"]);
    assert!(secrets.ok().contains("API_TOKEN"), "{secrets:?}");
    let as_reader = restored.rouse_as(
        Some(&account),
        &["services", "list", "--project", "p", "--format", "json"],
    );
    assert_eq!(
        as_reader.code, 0,
        "the account's key and binding came along: {as_reader:?}"
    );
    let mut asker = Asker::new(emulator.host(), NETWORK).await;
    let topic = kept["topic"].as_str().expect("topic");
    let q = asker.ask(topic, "p/kept", json!("moved")).await;
    let a = asker.answer(&q, ANSWER).await;
    assert_eq!(a.kind, "result", "{:?}\n{}", a.data, restored.log());
}

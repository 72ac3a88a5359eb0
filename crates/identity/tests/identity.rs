//! The crate through its public API: key files on disk, and a token signed
//! with a key read back from one.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use rouse_identity::{
    API_AUDIENCE, Account, KeyFile, KeyFileError, KeyFileFormatError, KeyRecord, PublicKey,
    TokenError, sign, verify,
};

fn service_account() -> Account {
    Account::from_principal("serviceAccount:builder@my_project.rouse").unwrap()
}

#[test]
fn key_file_write_read_round_trip_with_owner_only_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    let now = SystemTime::now();
    let (key, entry) = KeyFile::generate(service_account(), "http://127.0.0.1:50051", now).unwrap();
    key.write(&path).unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let back = KeyFile::read(&path).unwrap();
    assert_eq!(back.key_id(), entry.key_id);
    assert_eq!(back.principal(), entry.principal);
    assert_eq!(back.public_key(), entry.public_key);
    assert_eq!(back.token_uri(), "http://127.0.0.1:50051");
    assert_eq!(back.project_id(), "my_project");

    // A token signed with the key read back verifies against the stored half,
    // kept as base64 the way the store keeps it.
    let stored = entry.public_key.to_base64();
    let token = sign(&back, API_AUDIENCE, None, now, Duration::from_secs(60)).unwrap();
    let lookup = |kid: &str| {
        (kid == entry.key_id).then(|| KeyRecord {
            principal: entry.principal.clone(),
            public_key: PublicKey::from_base64(&stored).unwrap(),
            disabled: false,
        })
    };
    let claims = verify(&token, API_AUDIENCE, None, now, lookup).unwrap();
    assert_eq!(
        claims.principal(),
        "serviceAccount:builder@my_project.rouse"
    );

    // Deleting the stored key revokes it at once.
    assert_eq!(
        verify(&token, API_AUDIENCE, None, now, |_| None),
        Err(TokenError::UnknownKey {
            kid: entry.key_id.clone()
        })
    );
}

#[test]
fn write_replaces_and_keeps_owner_only_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    std::fs::write(&path, "old").unwrap();
    let (key, _) = KeyFile::generate(service_account(), "", SystemTime::now()).unwrap();
    key.write(&path).unwrap();
    assert_eq!(KeyFile::read(&path).unwrap().key_id(), key.key_id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
}

#[test]
fn write_new_never_clobbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let (first, _) = KeyFile::generate(service_account(), "", SystemTime::now()).unwrap();
    let (second, _) = KeyFile::generate(service_account(), "", SystemTime::now()).unwrap();
    first.write_new(&path).unwrap();
    let err = second.write_new(&path).unwrap_err();
    assert!(matches!(err, KeyFileError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("credentials.json"), "{err}");
    assert_eq!(KeyFile::read(&path).unwrap().key_id(), first.key_id());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn unknown_fields_are_refused_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    let (key, _) = KeyFile::generate(service_account(), "", SystemTime::now()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&key.to_json()).unwrap();
    json["auth_provider_x509_cert_url"] = "https://example.com".into();
    std::fs::write(&path, json.to_string()).unwrap();

    let err = KeyFile::read(&path).unwrap_err();
    let KeyFileError::Invalid { problem, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(
        problem,
        &KeyFileFormatError::UnknownField {
            field: "auth_provider_x509_cert_url".into()
        }
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("`auth_provider_x509_cert_url`"),
        "{message}"
    );
}

#[test]
fn malformed_files_name_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    let (key, _) = KeyFile::generate(service_account(), "", SystemTime::now()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&key.to_json()).unwrap();
    json["private_key"] = "not a key".into();
    std::fs::write(&path, json.to_string()).unwrap();
    let message = KeyFile::read(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "key file {}: field `private_key`:",
            path.display()
        )),
        "{message}"
    );

    std::fs::write(&path, "{").unwrap();
    let message = KeyFile::read(&path).unwrap_err().to_string();
    assert!(message.contains("not a JSON object"), "{message}");

    let missing = dir.path().join("missing.json");
    let message = KeyFile::read(&missing).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("cannot read key file {}", missing.display())),
        "{message}"
    );
}

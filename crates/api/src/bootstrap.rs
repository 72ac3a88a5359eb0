//! The first owner. On the first start of a store (no policy on the root
//! yet), `rouse server` makes the local user `roles/owner` on the root, so on
//! every project: it writes the user's key to `<data-dir>/owner-key.json`
//! (0600), stores its public half, and copies the key to the CLI's default
//! credentials file unless one exists there already.
//!
//! Crash-safe and idempotent: the key file is written before anything is
//! stored and reused when a crashed start left it behind; the root policy is
//! set last and is what marks the bootstrap done.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rouse_iam::{Policy, Resource};
use rouse_identity::{Account, KeyFile};
use rouse_store::{IamStore, PublicKeyRecord, StoreError, StoredPolicy};

/// The name of the owner's key file in the data directory.
pub const OWNER_KEY_FILE: &str = "owner-key.json";

/// What a bootstrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrapped {
    pub principal: String,
    pub key_file: PathBuf,
    /// Where the key was also copied for the CLI, if it was.
    pub credentials: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot bootstrap the owner: {0}")]
    Store(#[from] StoreError),
    #[error("cannot bootstrap the owner: {0}")]
    Key(String),
}

/// The local user's e-mail-shaped name: `$USER@localhost.localdomain` (else `owner@localhost.localdomain`).
pub fn local_user_email() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default();
    let email = format!("{user}@localhost.localdomain");
    if !user.is_empty() && Account::user(&email).is_ok() {
        email
    } else {
        "owner@localhost.localdomain".to_owned()
    }
}

/// Makes `email` the owner if the store has no root policy yet; `None` if it
/// has one (already bootstrapped).
pub async fn bootstrap_owner(
    store: &dyn IamStore,
    data_dir: &Path,
    credentials: Option<&Path>,
    email: &str,
    token_uri: &str,
) -> Result<Option<Bootstrapped>, BootstrapError> {
    let root = Resource::Root.to_string();
    if store.get_policy(&root).await?.is_some() {
        return Ok(None);
    }
    let key_file = data_dir.join(OWNER_KEY_FILE);
    let key = if key_file.exists() {
        KeyFile::read(&key_file).map_err(|e| BootstrapError::Key(e.to_string()))?
    } else {
        let account = Account::user(email).map_err(|e| BootstrapError::Key(e.to_string()))?;
        let (key, _) = KeyFile::generate(account, token_uri, SystemTime::now())
            .map_err(|e| BootstrapError::Key(e.to_string()))?;
        key.write_new(&key_file)
            .map_err(|e| BootstrapError::Key(e.to_string()))?;
        key
    };
    let principal = key.principal();
    match store
        .insert_key(&PublicKeyRecord {
            key_id: key.key_id().to_owned(),
            principal: principal.clone(),
            public_key: key.public_key().to_base64(),
            created_at: SystemTime::now(),
        })
        .await
    {
        Ok(()) | Err(StoreError::Duplicate { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut policy = Policy::default();
    policy.add_binding("roles/owner", &principal, None);
    let policy = policy.with_etag();
    store
        .set_policy(
            &StoredPolicy {
                resource: root,
                document: policy.to_json(),
                etag: policy.etag.clone().unwrap_or_default(),
                updated_at: SystemTime::now(),
            },
            None,
            false,
        )
        .await?;
    let copied = match credentials {
        Some(path) if !path.exists() => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    BootstrapError::Key(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            key.write_new(path)
                .map_err(|e| BootstrapError::Key(e.to_string()))?;
            Some(path.to_owned())
        }
        _ => None,
    };
    Ok(Some(Bootstrapped {
        principal,
        key_file,
        credentials: copied,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_store::{AccountStore, PolicyStore, SqliteStore};

    #[tokio::test]
    async fn first_start_makes_an_owner_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("rouse.db")).expect("store");
        let creds = dir.path().join("config/rouse/credentials.json");
        let done = bootstrap_owner(
            &store,
            dir.path(),
            Some(&creds),
            "alice@localhost.localdomain",
            "",
        )
        .await
        .expect("bootstrap")
        .expect("first start bootstraps");
        assert_eq!(done.principal, "user:alice@localhost.localdomain");
        assert_eq!(done.credentials.as_deref(), Some(creds.as_path()));
        let key = KeyFile::read(&done.key_file).expect("owner key");
        assert_eq!(
            KeyFile::read(&creds).expect("credentials").key_id(),
            key.key_id()
        );
        let root = store.get_policy("rouse").await.expect("get").expect("set");
        assert!(root.document.contains("roles/owner"), "{}", root.document);
        assert!(root.document.contains("user:alice@localhost.localdomain"));
        assert!(store.get_key(key.key_id()).await.expect("key").is_some());
        // The second start changes nothing, and never overwrites credentials.
        let again = bootstrap_owner(
            &store,
            dir.path(),
            Some(&creds),
            "bob@localhost.localdomain",
            "",
        )
        .await
        .expect("second");
        assert_eq!(again, None);
    }

    #[tokio::test]
    async fn existing_credentials_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("rouse.db")).expect("store");
        let creds = dir.path().join("credentials.json");
        std::fs::write(&creds, "someone else's").expect("write");
        let done = bootstrap_owner(
            &store,
            dir.path(),
            Some(&creds),
            "alice@localhost.localdomain",
            "",
        )
        .await
        .expect("bootstrap")
        .expect("bootstrapped");
        assert_eq!(done.credentials, None);
        assert_eq!(
            std::fs::read_to_string(&creds).expect("read"),
            "someone else's"
        );
    }
}

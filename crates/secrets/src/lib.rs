//! Secrets of services (`rouse secrets set SERVICE NAME=VALUE`), encrypted
//! at rest with a key that is kept outside the database.
//!
//! The key is 32 random bytes in a file of its own (created with mode 0600
//! when missing; refused when group or others may read it), so a copy of
//! the database alone reveals no secret. Each value is sealed with
//! ChaCha20-Poly1305 (aws-lc-rs, the crypto library the TLS stack already
//! links) under a fresh random 96-bit nonce, with the secret's name as
//! associated data: a sealed value copied to another name (or another
//! service, when the caller scopes the name as `<project>/<service>/<NAME>`)
//! does not open. Random nonces are safe for far more values than a
//! deployment will ever seal (the bound is around 2³² per key).
//!
//! A sealed value is `version (1) ‖ key id (4) ‖ nonce (12) ‖ ciphertext ‖
//! tag (16)`; version and key id are authenticated too. The key id (from a
//! hash of the key) tells "sealed with another key" (a lost or replaced key
//! file) apart from tampering. Values are never printed: [`SecretValue`]'s
//! `Debug` shows only its length, and it is wiped from memory on drop.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use zeroize::Zeroizing;

/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// Largest value accepted: secrets become environment variables, and a
/// bound keeps the store's rows small.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Longest secret name.
pub const MAX_NAME_LEN: usize = 256;
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Why a key could not be loaded or a value not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot {action} the secrets key file `{}`: {source}", .path.display())]
    KeyFile {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secrets key file `{}` holds {len} bytes, not {KEY_LEN}: it is not a Rouse secrets key; restore the right file", .path.display())]
    KeyLength { path: PathBuf, len: u64 },
    #[error("secrets key file `{}` may be read by group or others (mode {mode:o}): run `chmod 600 {}`", .path.display(), .path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "secret `{name}` was sealed with another key (id {sealed_with}, this key is {current}): restore the key file it was sealed with, or set the secret again"
    )]
    WrongKey {
        name: String,
        sealed_with: String,
        current: String,
    },
    #[error(
        "secret `{name}` does not open: its sealed value was altered, truncated or belongs to another secret"
    )]
    Tampered { name: String },
    #[error("sealed value of secret `{name}` is not in a known format (version {version})")]
    Format { name: String, version: u8 },
    #[error("secret `{name}`'s value is {len} bytes, more than the {MAX_VALUE_LEN} allowed")]
    TooLarge { name: String, len: usize },
    #[error("secret name `{name}` {problem}")]
    Name { name: String, problem: &'static str },
    #[error("sealed value is not valid base64: {0}")]
    Text(String),
    #[error("cannot encrypt: {0}")]
    Crypto(String),
}

/// The key that seals and opens secret values.
pub struct SecretsKey {
    key: LessSafeKey,
    /// HMAC-SHA256 under the key's bytes: [`SecretsKey::derive`].
    derivation: aws_lc_rs::hmac::Key,
    id: [u8; KEY_ID_LEN],
    path: Option<PathBuf>,
}

impl SecretsKey {
    /// Loads the key at `path`, creating it (mode 0600, parent directories
    /// included) if there is no file.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        match Self::create(path) {
            Ok(key) => Ok(key),
            Err(SecretsError::KeyFile { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Self::load(path)
            }
            Err(err) => Err(err),
        }
    }

    /// Loads the key at `path`; never creates one (a missing key must not
    /// be silently replaced when values sealed with it exist).
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let error = |action, source| SecretsError::KeyFile {
            action,
            path: path.to_owned(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(|source| error("read", source))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        if metadata.len() != KEY_LEN as u64 {
            return Err(SecretsError::KeyLength {
                path: path.to_owned(),
                len: metadata.len(),
            });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| error("read", source))?);
        let bytes: &[u8; KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretsError::KeyLength {
                    path: path.to_owned(),
                    len: bytes.len() as u64,
                })?;
        let mut key = Self::from_bytes(bytes)?;
        key.path = Some(path.to_owned());
        Ok(key)
    }

    fn create(path: &Path) -> Result<Self, SecretsError> {
        let error = |action, source| SecretsError::KeyFile {
            action,
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| error("create the directory of", source))?;
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(bytes.as_mut_slice())
            .map_err(|_| SecretsError::Crypto("no randomness for a new key".to_owned()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| error("create", source))?;
        let written = file
            .write_all(bytes.as_slice())
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            // A short key file would be refused at the next start anyway.
            let _ = std::fs::remove_file(path);
            return Err(error("write", source));
        }
        tracing::info!(path = %path.display(), "created a new secrets key; back it up: without it no stored secret can be read");
        let mut key = Self::from_bytes(&bytes)?;
        key.path = Some(path.to_owned());
        Ok(key)
    }

    /// A key from its bytes (for keys kept elsewhere, and tests).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, SecretsError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| SecretsError::Crypto("the key was refused".to_owned()))?;
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(b"rouse secrets key id\0");
        context.update(bytes);
        let digest = context.finish();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        Ok(Self {
            key: LessSafeKey::new(unbound),
            derivation: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, bytes),
            id,
            path: None,
        })
    }

    /// A short, non-secret identifier of this key (hex).
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    /// 32 bytes derived from the key for `purpose` (HMAC-SHA256 of the
    /// purpose under the key): every process holding the key derives the
    /// same bytes, and no purpose's bytes tell anything of another's or of
    /// the key. The platform's question-assertion key is one.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let tag = aws_lc_rs::hmac::sign(&self.derivation, purpose.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Seals `value` as the secret `name`.
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<SealedValue, SecretsError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(SecretsError::TooLarge {
                name: name.to_owned(),
                len: value.len(),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| SecretsError::Crypto("no randomness for a nonce".to_owned()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + value.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let aad = associated_data(&out[..1 + KEY_ID_LEN], name);
        let mut in_out = Zeroizing::new(value.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut *in_out,
            )
            .map_err(|_| SecretsError::Crypto("sealing failed".to_owned()))?;
        out.extend_from_slice(&in_out);
        Ok(SealedValue(out))
    }

    /// Opens the secret `name` sealed as `sealed`.
    pub fn open(&self, name: &str, sealed: &SealedValue) -> Result<SecretValue, SecretsError> {
        let bytes = &sealed.0;
        let Some(&version) = bytes.first() else {
            return Err(SecretsError::Tampered {
                name: name.to_owned(),
            });
        };
        if version != VERSION {
            return Err(SecretsError::Format {
                name: name.to_owned(),
                version,
            });
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(SecretsError::Tampered {
                name: name.to_owned(),
            });
        }
        let key_id = &bytes[1..1 + KEY_ID_LEN];
        if key_id != self.id {
            return Err(SecretsError::WrongKey {
                name: name.to_owned(),
                sealed_with: hex(key_id),
                current: self.id(),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[1 + KEY_ID_LEN..HEADER_LEN]);
        let aad = associated_data(&bytes[..1 + KEY_ID_LEN], name);
        let mut in_out = Zeroizing::new(bytes[HEADER_LEN..].to_vec());
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut in_out,
            )
            .map_err(|_| SecretsError::Tampered {
                name: name.to_owned(),
            })?
            .len();
        in_out.truncate(plain_len);
        Ok(SecretValue(in_out))
    }
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.id())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The header (version and key id) and the name, unambiguously joined.
fn associated_data(header: &[u8], name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 8 + name.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(name.len() as u64).to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Checks that `name` can be an environment variable: letters, digits and
/// `_`, not starting with a digit.
pub fn validate_name(name: &str) -> Result<(), SecretsError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 256 characters")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("must not start with a digit (it becomes an environment variable)")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some(
            "may only hold letters, digits and `_` (it becomes an environment variable), e.g. `DATABASE_URL`",
        )
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SecretsError::Name {
            name: name.chars().take(MAX_NAME_LEN).collect(),
            problem,
        }),
        None => Ok(()),
    }
}

/// A sealed secret value, as stored (bytes, or base64 text).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue(Vec<u8>);

impl SealedValue {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Standard base64, for text columns.
    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    pub fn from_text(text: &str) -> Result<Self, SecretsError> {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(Self)
            .map_err(|err| SecretsError::Text(err.to_string()))
    }
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedValue({} bytes)", self.0.len())
    }
}

/// An opened secret value: never printed, wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text (environment variables are text).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.0.len())
    }
}

/// The name a service's secret is sealed under: binds the value to the
/// service, so a sealed value copied to another service does not open.
pub fn sealed_name(service: uuid::Uuid, name: &str) -> String {
    format!("service/{service}/{name}")
}

/// The name a trigger's secret (`webhook_secret`, `github_token`) is sealed
/// under: binds the value to the trigger.
pub fn trigger_secret_name(trigger: &str, what: &str) -> String {
    format!("trigger/{trigger}/{what}")
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[byte; KEY_LEN]).expect("key")
    }

    #[test]
    fn seal_and_open_round_trip_with_fresh_nonces() {
        let key = key(7);
        let a = key
            .seal("acme/echo/DATABASE_URL", b"postgres://u:p@db/x")
            .expect("sealed");
        let b = key
            .seal("acme/echo/DATABASE_URL", b"postgres://u:p@db/x")
            .expect("sealed");
        assert_ne!(a, b, "a fresh nonce per value");
        assert_eq!(a.as_bytes().len(), HEADER_LEN + 19 + TAG_LEN);
        let opened = key.open("acme/echo/DATABASE_URL", &a).expect("opens");
        assert_eq!(opened.expose_str(), Some("postgres://u:p@db/x"));
        let text = a.to_text();
        let back = SealedValue::from_text(&text).expect("base64");
        assert_eq!(
            key.open("acme/echo/DATABASE_URL", &back)
                .expect("opens")
                .expose(),
            b"postgres://u:p@db/x"
        );
        // Empty and binary values too.
        assert_eq!(
            key.open("E", &key.seal("E", b"").expect("empty"))
                .expect("opens")
                .expose(),
            b""
        );
        let binary: Vec<u8> = (0..=255).collect();
        assert_eq!(
            key.open("B", &key.seal("B", &binary).expect("binary"))
                .expect("opens")
                .expose(),
            binary
        );
    }

    #[test]
    fn any_change_is_detected() {
        let key = key(7);
        let sealed = key.seal("TOKEN", b"s3cr3t").expect("sealed");
        for index in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[index] ^= 0x01;
            let result = key.open("TOKEN", &SealedValue::from_bytes(bytes));
            assert!(result.is_err(), "flipped byte {index} went unnoticed");
        }
        let mut truncated = sealed.as_bytes().to_vec();
        truncated.pop();
        assert!(matches!(
            key.open("TOKEN", &SealedValue::from_bytes(truncated)),
            Err(SecretsError::Tampered { .. })
        ));
        assert!(matches!(
            key.open("TOKEN", &SealedValue::from_bytes(Vec::new())),
            Err(SecretsError::Tampered { .. })
        ));
        // Moved to another name: the associated data differs.
        let err = key.open("OTHER", &sealed).expect_err("another name");
        assert_eq!(
            err.to_string(),
            "secret `OTHER` does not open: its sealed value was altered, truncated or belongs to another secret"
        );
    }

    #[test]
    fn a_wrong_key_is_named_as_such() {
        let sealed = key(1).seal("TOKEN", b"value").expect("sealed");
        let err = key(2).open("TOKEN", &sealed).expect_err("wrong key");
        assert!(matches!(err, SecretsError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains(&key(1).id()), "{err}");
        assert!(err.to_string().contains("restore the key file"), "{err}");
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/secrets.key");
        let first = SecretsKey::load_or_create(&path).expect("created");
        let metadata = std::fs::metadata(&path).expect("key file");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert_eq!(metadata.len(), KEY_LEN as u64);
        let sealed = first.seal("TOKEN", b"value").expect("sealed");
        let again = SecretsKey::load_or_create(&path).expect("loaded");
        assert_eq!(again.id(), first.id());
        assert_eq!(
            again.open("TOKEN", &sealed).expect("opens").expose(),
            b"value"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = SecretsKey::load(&path).expect_err("readable by others");
        assert!(err.to_string().contains("run `chmod 600 "), "{err}");

        let short = dir.path().join("short.key");
        std::fs::write(&short, b"too short").expect("write");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = SecretsKey::load_or_create(&short).expect_err("wrong length");
        assert!(
            matches!(err, SecretsError::KeyLength { len: 9, .. }),
            "{err}"
        );

        let err = SecretsKey::load(&dir.path().join("missing.key")).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot read the secrets key file"),
            "{err}"
        );
    }

    #[test]
    fn values_never_show_in_debug() {
        let key = key(3);
        let value = key
            .open("P", &key.seal("P", b"hunter2").expect("sealed"))
            .expect("opens");
        let debug = format!(
            "{value:?} {key:?} {:?}",
            key.seal("P", b"hunter2").expect("sealed")
        );
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
        assert!(!debug.contains(&format!("{:?}", [3u8; 4])), "{debug}");
    }

    #[test]
    fn names_and_sizes_are_bounded() {
        validate_name("DATABASE_URL").expect("valid");
        validate_name("_x1").expect("valid");
        for bad in ["", "1X", "A-B", "A B", "É"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let err = key(1)
            .seal("BIG", &vec![0; MAX_VALUE_LEN + 1])
            .expect_err("too large");
        assert!(matches!(err, SecretsError::TooLarge { .. }), "{err}");
    }
}

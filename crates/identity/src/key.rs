//! Accounts, Ed25519 key pairs and the JSON key file.
//!
//! The key file format is described in the crate header.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rouse_core::ProjectName;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// PKCS#8 v1 `PrivateKeyInfo` for Ed25519 (RFC 8410 §7) up to the 32-byte
/// seed: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING (32) } }. The encoding is fixed, so it is written and matched
/// byte for byte instead of pulling in a DER parser.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// A key file is a few hundred bytes; anything much larger is not one, and
/// reading stops there instead of loading an arbitrary file into memory.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// Key ids are ours (32 hex digits) but may be carried over from elsewhere;
/// the bound keeps them reasonable in headers and logs.
const MAX_KEY_ID_LEN: usize = 128;
/// The longest e-mail address (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Google's limit on a service-account id.
const MAX_ACCOUNT_NAME_LEN: usize = 30;

/// The key file's fields, in the order they are written.
const FIELDS: [&str; 7] = [
    "type",
    "project_id",
    "private_key_id",
    "private_key",
    "client_email",
    "principal",
    "token_uri",
];

/// What kind of account a key belongs to (the key file's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountType {
    /// `service_account`: `serviceAccount:NAME@PROJECT.rouse`.
    ServiceAccount,
    /// `user`: `user:EMAIL`.
    User,
}

impl AccountType {
    /// The key file spelling: `service_account` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "service_account",
            Self::User => "user",
        }
    }
}

/// Why an account (an e-mail address or principal) was refused. The message
/// names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("account `{value}`: {problem}")]
pub struct AccountError {
    pub value: String,
    pub problem: String,
}

fn account_error(value: &str, problem: impl Into<String>) -> AccountError {
    AccountError {
        value: value.to_owned(),
        problem: problem.into(),
    }
}

/// Who holds a key: a service account or a user. Valid by construction, so
/// its [`principal`](Self::principal) is always well formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    kind: AccountType,
    /// `NAME@PROJECT.rouse` or the user's address.
    email: String,
    /// The service account's project; empty for users.
    project: String,
}

impl Account {
    /// The service account `NAME@PROJECT.rouse`.
    pub fn service_account(name: &str, project: &ProjectName) -> Result<Self, AccountError> {
        Self::service_account_email(&format!("{name}@{project}.rouse"))
    }

    /// A service account from its e-mail form, `NAME@PROJECT.rouse`.
    pub fn service_account_email(email: &str) -> Result<Self, AccountError> {
        let Some((name, project)) = email
            .split_once('@')
            .and_then(|(name, rest)| Some((name, rest.strip_suffix(".rouse")?)))
        else {
            return Err(account_error(
                email,
                "a service account is written `NAME@PROJECT.rouse`",
            ));
        };
        let b = name.as_bytes();
        let name_ok = !b.is_empty()
            && b.len() <= MAX_ACCOUNT_NAME_LEN
            && b[0].is_ascii_lowercase()
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if !name_ok {
            return Err(account_error(
                email,
                format!(
                    "service account name `{name}` must be 1 to {MAX_ACCOUNT_NAME_LEN} lower-case letters, digits and `-`, starting with a letter and not ending with `-`"
                ),
            ));
        }
        let project =
            ProjectName::parse(project).map_err(|e| account_error(email, e.to_string()))?;
        Ok(Self {
            kind: AccountType::ServiceAccount,
            email: email.to_owned(),
            project: project.to_string(),
        })
    }

    /// The user with this e-mail address (lower case).
    pub fn user(email: &str) -> Result<Self, AccountError> {
        let problem = if email.len() > MAX_EMAIL_LEN {
            Some(format!(
                "e-mail address is longer than {MAX_EMAIL_LEN} bytes"
            ))
        } else if email.chars().any(|c| c.is_ascii_uppercase()) {
            Some(format!(
                "e-mail address must be lower case; write `{}`",
                email.to_ascii_lowercase()
            ))
        } else if let Some(c) = email
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '"' | '<' | '>'))
        {
            Some(format!("e-mail address must not contain {c:?}"))
        } else {
            match email.split_once('@') {
                None => Some("expected an e-mail address, `NAME@DOMAIN`".to_owned()),
                Some(("", _)) => Some("e-mail address has nothing before `@`".to_owned()),
                Some((_, domain))
                    if domain.contains('@')
                        || !domain.contains('.')
                        || domain.starts_with('.')
                        || domain.ends_with('.')
                        || domain.contains("..") =>
                {
                    Some(format!(
                        "e-mail domain `{domain}` must look like `example.com`"
                    ))
                }
                Some(_) => None,
            }
        };
        match problem {
            Some(problem) => Err(account_error(email, problem)),
            None => Ok(Self {
                kind: AccountType::User,
                email: email.to_owned(),
                project: String::new(),
            }),
        }
    }

    /// An account from its principal, `serviceAccount:…` or `user:…`.
    pub fn from_principal(principal: &str) -> Result<Self, AccountError> {
        if let Some(email) = principal.strip_prefix("serviceAccount:") {
            Self::service_account_email(email)
        } else if let Some(email) = principal.strip_prefix("user:") {
            Self::user(email)
        } else {
            Err(account_error(
                principal,
                "only `serviceAccount:NAME@PROJECT.rouse` and `user:EMAIL` hold keys",
            ))
        }
    }

    pub fn kind(&self) -> AccountType {
        self.kind
    }

    /// `NAME@PROJECT.rouse` or the user's address: the key file's `client_email`.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The service account's project; empty for a user.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// `serviceAccount:NAME@PROJECT.rouse` or `user:EMAIL`: the `iss` and
    /// `sub` of this account's tokens, and the member string policies name.
    pub fn principal(&self) -> String {
        match self.kind {
            AccountType::ServiceAccount => format!("serviceAccount:{}", self.email),
            AccountType::User => format!("user:{}", self.email),
        }
    }
}

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("public key is not valid base64 (expected 44 characters of standard base64)")]
    NotBase64,
    #[error("public key has {len} bytes; an Ed25519 public key has 32")]
    WrongLength { len: usize },
    #[error("public key is not a valid Ed25519 point")]
    NotOnCurve,
    #[error("public key is a weak (small-order) Ed25519 key and cannot be trusted")]
    Weak,
}

/// An Ed25519 public key, decompressed once so verification does not pay for
/// it on every token. Stored by the server as [`to_base64`](Self::to_base64).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub(crate) VerifyingKey);

impl PublicKey {
    /// From the 32-byte compressed form; weak (small-order) keys are refused
    /// because signatures under them prove nothing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PublicKeyError> {
        let bytes: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| PublicKeyError::WrongLength { len: bytes.len() })?;
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| PublicKeyError::NotOnCurve)?;
        if key.is_weak() {
            return Err(PublicKeyError::Weak);
        }
        Ok(Self(key))
    }

    /// From standard, padded base64 (what [`to_base64`](Self::to_base64) writes).
    pub fn from_base64(text: &str) -> Result<Self, PublicKeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| PublicKeyError::NotBase64)?;
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Standard, padded base64 of the 32 bytes (44 characters): the form the
    /// store keeps.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// What the server stores when a key is created: only the public half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyEntry {
    pub key_id: String,
    /// `serviceAccount:…` or `user:…`
    pub principal: String,
    pub public_key: PublicKey,
    pub created_at: SystemTime,
}

/// Why a key could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a key: the operating system's random number source failed: {0}")]
pub struct GenerateKeyError(getrandom::Error);

/// Why a key file's content was refused: the field and what is wrong with it.
/// Never contains the private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileFormatError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("unknown field `{field}` (a key file has exactly {})", FIELDS.join(", "))]
    UnknownField { field: String },
    #[error("missing field `{field}`")]
    MissingField { field: &'static str },
    #[error("field `{field}`: {problem}")]
    InvalidField {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> KeyFileFormatError {
    KeyFileFormatError::InvalidField {
        field,
        problem: problem.into(),
    }
}

/// Why a key file could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {} already exists; it was left as it is", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("key file {}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        problem: KeyFileFormatError,
    },
}

/// A key file: an account, its key id and its private key (format in the
/// crate header). Holds the secret, so its `Debug` form leaves the key out and
/// the key is wiped on drop.
#[derive(Clone)]
pub struct KeyFile {
    account: Account,
    key_id: String,
    signing_key: SigningKey,
    token_uri: String,
    /// The key file's `project_id`: the account's project for a service
    /// account; for a user whatever the file says (empty when generated).
    project_id: String,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("account", &self.account)
            .field("key_id", &self.key_id)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish()
    }
}

impl KeyFile {
    /// A new key pair for `account`, with a fresh random key id (32 hex
    /// digits). Returns the key file, to hand to the account's holder, and the
    /// public half, for the server to store.
    pub fn generate(
        account: Account,
        token_uri: &str,
        now: SystemTime,
    ) -> Result<(KeyFile, PublicKeyEntry), GenerateKeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(GenerateKeyError)?;
        let signing_key = SigningKey::from_bytes(&seed);
        let key_id = uuid::Uuid::new_v4().simple().to_string();
        let entry = PublicKeyEntry {
            key_id: key_id.clone(),
            principal: account.principal(),
            public_key: PublicKey(signing_key.verifying_key()),
            created_at: now,
        };
        let key_file = KeyFile {
            project_id: account.project.clone(),
            account,
            key_id,
            signing_key,
            token_uri: token_uri.to_owned(),
        };
        Ok((key_file, entry))
    }

    pub fn account(&self) -> &Account {
        &self.account
    }

    /// `serviceAccount:…` or `user:…`
    pub fn principal(&self) -> String {
        self.account.principal()
    }

    /// The key id (`private_key_id`), the `kid` of every token it signs.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The public half of this key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing_key.verifying_key())
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The key file as pretty-printed JSON (contains the private key).
    pub fn to_json(&self) -> Zeroizing<String> {
        let mut map = Map::new();
        let values = [
            self.account.kind.as_str().to_owned(),
            self.project_id.clone(),
            self.key_id.clone(),
            private_key_pem(&self.signing_key).to_string(),
            self.account.email.clone(),
            self.account.principal(),
            self.token_uri.clone(),
        ];
        for (field, value) in FIELDS.iter().zip(values) {
            map.insert((*field).to_owned(), Value::String(value));
        }
        let mut json = Zeroizing::new(
            serde_json::to_string_pretty(&Value::Object(map))
                .unwrap_or_else(|_| unreachable!("a map of strings always serializes")),
        );
        json.push('\n');
        // The map's copy of the PEM is dropped without wiping: serde_json's
        // `Value` does not zeroize. The key itself lives in `SigningKey`.
        json
    }

    /// Parses a key file's content. Errors name the field, never the key.
    pub fn from_json(text: &str) -> Result<KeyFile, KeyFileFormatError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| KeyFileFormatError::NotJson(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(KeyFileFormatError::NotJson(
                "the file holds JSON, but not an object".to_owned(),
            ));
        };
        if let Some(field) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(KeyFileFormatError::UnknownField {
                field: field.clone(),
            });
        }
        let field = |name: &'static str| -> Result<&str, KeyFileFormatError> {
            match map.get(name) {
                None => Err(KeyFileFormatError::MissingField { field: name }),
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(invalid(name, "must be a string")),
            }
        };
        let kind = match field("type")? {
            "service_account" => AccountType::ServiceAccount,
            "user" => AccountType::User,
            other => {
                return Err(invalid(
                    "type",
                    format!("must be `service_account` or `user`, not `{other}`"),
                ));
            }
        };
        let project_id = field("project_id")?;
        let key_id = field("private_key_id")?;
        check_key_id(key_id).map_err(|problem| invalid("private_key_id", problem))?;
        let signing_key =
            parse_private_key_pem(field("private_key")?).map_err(|p| invalid("private_key", p))?;
        let email = field("client_email")?;
        let account = match kind {
            AccountType::ServiceAccount => Account::service_account_email(email),
            AccountType::User => Account::user(email),
        }
        .map_err(|e| invalid("client_email", e.to_string()))?;
        match kind {
            AccountType::ServiceAccount if project_id != account.project => {
                return Err(invalid(
                    "project_id",
                    format!(
                        "is `{project_id}`, but service account `{}` belongs to project `{}`",
                        account.email, account.project
                    ),
                ));
            }
            AccountType::User if !project_id.is_empty() => {
                ProjectName::parse(project_id).map_err(|e| invalid("project_id", e.to_string()))?;
            }
            _ => {}
        }
        let principal = field("principal")?;
        if principal != account.principal() {
            return Err(invalid(
                "principal",
                format!(
                    "is `{principal}`, but a key of type `{}` for `{email}` belongs to `{}`",
                    kind.as_str(),
                    account.principal()
                ),
            ));
        }
        let token_uri = field("token_uri")?;
        Ok(KeyFile {
            account,
            key_id: key_id.to_owned(),
            signing_key,
            token_uri: token_uri.to_owned(),
            project_id: project_id.to_owned(),
        })
    }

    /// Reads and validates a key file.
    pub fn read(path: &Path) -> Result<KeyFile, KeyFileError> {
        let read_error = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(KeyFileError::Invalid {
                path: path.to_owned(),
                problem: KeyFileFormatError::NotJson(format!(
                    "the file is larger than {MAX_KEY_FILE_LEN} bytes; a key file is a few hundred"
                )),
            });
        }
        KeyFile::from_json(&text).map_err(|problem| KeyFileError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// Writes the key file, replacing any file at `path`. The content goes to
    /// a temporary file beside it (mode 0600 on unix, from creation on, so the
    /// key is never readable by others) that is then renamed over `path`: a
    /// reader sees the old file or the whole new one, never a part.
    pub fn write(&self, path: &Path) -> Result<(), KeyFileError> {
        self.write_with(path, |tmp, path| std::fs::rename(tmp, path))
            .map_err(|source| KeyFileError::Write {
                path: path.to_owned(),
                source,
            })
    }

    /// Writes the key file only if nothing is at `path` yet (for defaults,
    /// such as the CLI's credentials file, that must not clobber a key the
    /// user put there): [`KeyFileError::AlreadyExists`] otherwise, even when
    /// another process creates the file at the same moment.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        // A hard link fails if the target exists, atomically.
        self.write_with(path, |tmp, path| {
            let linked = std::fs::hard_link(tmp, path);
            let removed = std::fs::remove_file(tmp);
            linked.and(removed)
        })
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                KeyFileError::Write {
                    path: path.to_owned(),
                    source,
                }
            }
        })
    }

    fn write_with(
        &self,
        path: &Path,
        publish: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
        })?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(self.to_json().as_bytes())?;
            file.sync_all()?;
            drop(file);
            publish(&tmp, path)
        })();
        if result.is_err() {
            // Best effort: the temporary file may not exist or be gone already.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Key ids travel in token headers and file names: printable ASCII only.
fn check_key_id(key_id: &str) -> Result<(), String> {
    if key_id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if key_id.len() > MAX_KEY_ID_LEN {
        return Err(format!("is longer than {MAX_KEY_ID_LEN} characters"));
    }
    if let Some(c) = key_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "may contain only letters, digits, `-`, `_` and `.`, not {c:?}"
        ));
    }
    Ok(())
}

/// PKCS#8 v1 PEM (RFC 8410) of the key's seed.
fn private_key_pem(key: &SigningKey) -> Zeroizing<String> {
    let mut der = Zeroizing::new([0u8; 48]);
    der[..16].copy_from_slice(&PKCS8_ED25519_PREFIX);
    der[16..].copy_from_slice(key.as_bytes());
    let body = Zeroizing::new(STANDARD.encode(der.as_ref()));
    Zeroizing::new(format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", body.as_str()))
}

/// Parses an unencrypted Ed25519 PKCS#8 v1 PEM. Problems never quote the key.
fn parse_private_key_pem(pem: &str) -> Result<SigningKey, String> {
    let body = pem
        .trim()
        .strip_prefix(PEM_BEGIN)
        .and_then(|rest| rest.strip_suffix(PEM_END))
        .ok_or_else(|| {
            format!("expected an unencrypted PKCS#8 PEM private key (`{PEM_BEGIN}` … `{PEM_END}`)")
        })?;
    let body: Zeroizing<String> =
        Zeroizing::new(body.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    let der = Zeroizing::new(
        STANDARD
            .decode(body.as_bytes())
            .map_err(|_| "the PEM body is not valid base64".to_owned())?,
    );
    let Some(seed) = der.strip_prefix(&PKCS8_ED25519_PREFIX[..]) else {
        return Err(
            "not an Ed25519 key in PKCS#8 v1 form (RFC 8410); only Ed25519 keys are supported"
                .to_owned(),
        );
    };
    let seed: &[u8; 32] = seed.try_into().map_err(|_| {
        "not an Ed25519 key in PKCS#8 v1 form (RFC 8410): the seed is not 32 bytes".to_owned()
    })?;
    Ok(SigningKey::from_bytes(seed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn service_account() -> Account {
        Account::service_account("builder", &ProjectName::parse("my_project").unwrap()).unwrap()
    }

    fn json_of(key: &KeyFile) -> Map<String, Value> {
        match serde_json::from_str(&key.to_json()).unwrap() {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn reparse(map: Map<String, Value>) -> Result<KeyFile, KeyFileFormatError> {
        KeyFile::from_json(&serde_json::to_string(&map).unwrap())
    }

    #[test]
    fn generate_returns_the_public_half_of_the_file() {
        let now = SystemTime::now();
        let (key, entry) = KeyFile::generate(service_account(), "http://api", now).unwrap();
        assert_eq!(entry.key_id, key.key_id());
        assert_eq!(entry.key_id.len(), 32);
        assert_eq!(entry.principal, "serviceAccount:builder@my_project.rouse");
        assert_eq!(entry.public_key, key.public_key());
        assert_eq!(entry.created_at, now);
        assert_eq!(
            PublicKey::from_base64(&entry.public_key.to_base64()).unwrap(),
            entry.public_key
        );
        let map = json_of(&key);
        assert_eq!(
            map.keys().map(String::as_str).collect::<Vec<_>>().len(),
            FIELDS.len()
        );
        assert_eq!(map["type"], "service_account");
        assert_eq!(map["project_id"], "my_project");
        assert_eq!(map["client_email"], "builder@my_project.rouse");
        assert_eq!(map["principal"], "serviceAccount:builder@my_project.rouse");
        assert_eq!(map["token_uri"], "http://api");
        assert!(!format!("{key:?}").contains(map["private_key"].as_str().unwrap()));
    }

    #[test]
    fn json_round_trip_keeps_the_key() {
        for account in [service_account(), Account::user("ada@example.com").unwrap()] {
            let (key, _) = KeyFile::generate(account, "", SystemTime::now()).unwrap();
            let back = KeyFile::from_json(&key.to_json()).unwrap();
            assert_eq!(back.account(), key.account());
            assert_eq!(back.key_id(), key.key_id());
            assert_eq!(back.public_key(), key.public_key());
            assert_eq!(back.project_id(), key.project_id());
        }
    }

    #[test]
    fn the_private_key_is_standard_pkcs8() {
        // `openssl genpkey -algorithm ed25519` for the RFC 8032 test vector 1 seed.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let key = parse_private_key_pem(pem).unwrap();
        assert_eq!(
            STANDARD.encode(key.verifying_key().as_bytes()),
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        assert_eq!(private_key_pem(&key).as_str(), pem);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let (key, _) = KeyFile::generate(service_account(), "", SystemTime::now()).unwrap();
        let mut map = json_of(&key);
        map.insert("client_id".into(), "1".into());
        let err = reparse(map).unwrap_err();
        assert_eq!(
            err,
            KeyFileFormatError::UnknownField {
                field: "client_id".into()
            }
        );
        assert!(err.to_string().contains("`client_id`"), "{err}");
    }

    #[test]
    fn malformed_fields_are_named_and_the_key_is_not_quoted() {
        let (key, _) = KeyFile::generate(service_account(), "", SystemTime::now()).unwrap();
        let pem = json_of(&key)["private_key"].as_str().unwrap().to_owned();
        let body = pem.lines().nth(1).unwrap().to_owned();
        let cases: Vec<(&str, Value, &str)> = vec![
            ("type", "robot".into(), "`service_account` or `user`"),
            ("type", 3.into(), "must be a string"),
            (
                "project_id",
                "other".into(),
                "belongs to project `my_project`",
            ),
            ("private_key_id", "".into(), "must not be empty"),
            ("private_key_id", "a b".into(), "not ' '"),
            ("private_key", body.clone().into(), "PKCS#8 PEM"),
            (
                "private_key",
                format!("{PEM_BEGIN}\n{}!\n{PEM_END}", &body).into(),
                "not valid base64",
            ),
            (
                "private_key",
                format!("{PEM_BEGIN}\n{}\n{PEM_END}", STANDARD.encode([1u8; 48])).into(),
                "only Ed25519",
            ),
            (
                "client_email",
                "builder@my_project".into(),
                "NAME@PROJECT.rouse",
            ),
            (
                "principal",
                "user:builder@my_project.rouse".into(),
                "belongs to `serviceAccount:builder@my_project.rouse`",
            ),
        ];
        for (field, value, expected) in cases {
            let mut map = json_of(&key);
            map.insert(field.into(), value);
            let err = reparse(map).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("field `{field}`: ")),
                "{field}: {message}"
            );
            assert!(message.contains(expected), "{field}: {message}");
            assert!(!message.contains(&body[..20]), "{field}: {message}");
        }
        let mut map = json_of(&key);
        map.remove("token_uri");
        assert_eq!(
            reparse(map).unwrap_err(),
            KeyFileFormatError::MissingField { field: "token_uri" }
        );
        assert!(matches!(
            KeyFile::from_json("[1]"),
            Err(KeyFileFormatError::NotJson(_))
        ));
    }

    #[test]
    fn accounts_validate_their_names() {
        assert_eq!(
            Account::from_principal("serviceAccount:a-1@p.rouse")
                .unwrap()
                .principal(),
            "serviceAccount:a-1@p.rouse"
        );
        assert_eq!(
            Account::from_principal("user:ada@example.com")
                .unwrap()
                .project(),
            ""
        );
        for bad in [
            "serviceAccount:A@p.rouse",
            "serviceAccount:a-@p.rouse",
            "serviceAccount:a@p",
            "serviceAccount:a@P.rouse",
            "user:Ada@example.com",
            "user:ada",
            "user:ada@localhost",
            "group:admins",
        ] {
            let err = Account::from_principal(bad).unwrap_err();
            assert!(err.to_string().contains('`'), "{bad}: {err}");
        }
    }

    #[test]
    fn public_keys_are_checked() {
        assert_eq!(
            PublicKey::from_bytes(&[0u8; 31]),
            Err(PublicKeyError::WrongLength { len: 31 })
        );
        assert_eq!(
            PublicKey::from_base64("not base64!"),
            Err(PublicKeyError::NotBase64)
        );
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(PublicKeyError::Weak));
    }
}

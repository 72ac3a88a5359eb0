//! A repository per service in the image registry, with Rouse as the
//! registry's token server (Docker's token authentication, which Debian's
//! `docker-registry`, distribution 2.x, speaks).
//!
//! - A service's repository is `<registry>/<project>-<service>`, where the
//!   builder pushes its images too. Distribution makes a repository on its
//!   first push, so there is nothing to provision beforehand.
//! - `rouse services docker-credentials` ([`crate::ServicesApi`]) checks
//!   `services.deploy` on the service and returns a credential (user name
//!   [`USERNAME`], the password a platform-signed token bound to that one
//!   repository, at most an hour long).
//! - The registry sends `docker login`/`push`/`pull` to `GET /v2/token` on
//!   the API port with those as Basic credentials; [`token`] verifies them,
//!   checks `services.deploy` again (a binding removed since takes effect at
//!   once), and answers a registry token (ES256, signed by the key of
//!   [`Issuer`], its certificate in the `x5c` header) granting pull and
//!   push on the credential's repository only: any other repository gets no
//!   actions, and the registry refuses.
//! - The registry is configured with `auth.token.realm` this endpoint,
//!   `service` [`SERVICE`], `issuer` [`ISSUER`] and `rootcertbundle` the
//!   certificate file Rouse keeps (logged at start).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderValue, StatusCode, header};
use rouse_core::{ProjectName, ServiceName};
use rouse_iam::{Caller, Permission, Principal, Resource};
use rouse_secrets::{SealedValue, SecretsKey};
use serde_json::{Value, json};

use crate::backend::Backend;

/// The registry's `auth.token.service`: the audience of registry tokens.
pub const SERVICE: &str = "rouse-registry";
/// The registry's `auth.token.issuer`.
pub const ISSUER: &str = "rouse";
/// The user name of every credential (the password says who it is for).
pub const USERNAME: &str = "rouse";
/// How long a credential from `docker-credentials` works.
pub const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a registry token works: one push or pull asks for a new one.
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Under the data directory.
pub const DIR: &str = "registry-auth";
/// The certificate the registry trusts (`rootcertbundle`), PEM.
pub const CERT_FILE: &str = "issuer.crt";
/// The signing key and certificate, sealed with the secrets key.
const BUNDLE_FILE: &str = "issuer.sealed";
/// The name the sealed bundle is bound to.
const BUNDLE_SEAL: &str = "registry-token-issuer";

/// The registry Rouse issues tokens for.
pub struct RegistryAuth {
    /// `host[:port][/path]`, as `--registry` gave it.
    pub prefix: String,
    issuer: Issuer,
}

impl RegistryAuth {
    /// The issuer kept in `dir` (made there on first use), for the registry
    /// at `prefix`.
    pub fn open(prefix: String, dir: &Path, key: &SecretsKey) -> Result<Self, String> {
        Ok(Self {
            prefix,
            issuer: Issuer::load_or_create(dir, key)?,
        })
    }

    /// The registry's `host[:port]`, as `docker login` takes it.
    pub fn host(&self) -> &str {
        self.prefix.split('/').next().unwrap_or(&self.prefix)
    }

    /// A service's repository as image references name it.
    pub fn repository(&self, project: &ProjectName, service: &ServiceName) -> String {
        format!("{}/{project}-{service}", self.prefix)
    }

    /// A service's repository as the registry names it (no host).
    fn repository_name(&self, project: &ProjectName, service: &ServiceName) -> String {
        let full = self.repository(project, service);
        full.split_once('/')
            .map_or(full.clone(), |(_, n)| n.to_owned())
    }

    /// The certificate file to give the registry as `rootcertbundle`.
    pub fn cert_path(&self) -> &Path {
        &self.issuer.cert_path
    }
}

/// The registry tokens' signing key (ECDSA P-256) and its self-signed
/// certificate.
struct Issuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Bundle {
    /// PKCS#8, base64.
    key: String,
    /// DER, base64.
    cert: String,
}

impl Issuer {
    /// Reads the issuer kept in `dir`, or makes one. Several processes
    /// starting at once agree: the bundle is linked into place only if none
    /// is there, and a loser reads the winner's.
    fn load_or_create(dir: &Path, secrets: &SecretsKey) -> Result<Self, String> {
        let at = |e: std::io::Error, path: &Path| format!("{}: {e}", path.display());
        std::fs::create_dir_all(dir).map_err(|e| at(e, dir))?;
        let bundle_path = dir.join(BUNDLE_FILE);
        if !bundle_path.exists() {
            let made = Self::generate(secrets)?;
            let temporary = dir.join(format!("{BUNDLE_FILE}.{}", std::process::id()));
            write_private(&temporary, &made)?;
            let linked = std::fs::hard_link(&temporary, &bundle_path);
            let _ = std::fs::remove_file(&temporary);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(at(e, &bundle_path)),
            }
        }
        let sealed = std::fs::read(&bundle_path).map_err(|e| at(e, &bundle_path))?;
        let opened = secrets
            .open(BUNDLE_SEAL, &SealedValue::from_bytes(sealed))
            .map_err(|e| {
                format!(
                    "{}: {e} (it was sealed with another secrets key: give that key, or remove the directory to make a new issuer and give the registry its new certificate)",
                    bundle_path.display()
                )
            })?;
        let bundle: Bundle = serde_json::from_slice(opened.expose())
            .map_err(|e| format!("{}: {e}", bundle_path.display()))?;
        let decode = |what: &str, text: &str| {
            STANDARD
                .decode(text)
                .map_err(|e| format!("{}: the {what} is not base64: {e}", bundle_path.display()))
        };
        let key_der = decode("key", &bundle.key)?;
        let cert_der = decode("certificate", &bundle.cert)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der)
            .map_err(|e| format!("{}: the key is not P-256: {e}", bundle_path.display()))?;
        // Written each start from the bundle: the same bytes from every
        // process, so a rename over another's is harmless.
        let cert_path = dir.join(CERT_FILE);
        let pem = pem("CERTIFICATE", &cert_der);
        if std::fs::read(&cert_path).ok().as_deref() != Some(pem.as_bytes()) {
            let temporary = dir.join(format!("{CERT_FILE}.{}", std::process::id()));
            std::fs::write(&temporary, &pem).map_err(|e| at(e, &temporary))?;
            std::fs::rename(&temporary, &cert_path).map_err(|e| at(e, &cert_path))?;
        }
        Ok(Self {
            key,
            cert_der,
            cert_path,
        })
    }

    /// A new key and certificate, sealed.
    fn generate(secrets: &SecretsKey) -> Result<Vec<u8>, String> {
        let failed = |e: rcgen::Error| format!("cannot make the registry token issuer: {e}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params = rcgen::CertificateParams::new(Vec::new()).map_err(failed)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Rouse registry token issuer");
        let cert = params.self_signed(&key).map_err(failed)?;
        let bundle = Bundle {
            key: STANDARD.encode(key.serialize_der()),
            cert: STANDARD.encode(cert.der()),
        };
        let json = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
        secrets
            .seal(BUNDLE_SEAL, &json)
            .map(|sealed| sealed.as_bytes().to_vec())
            .map_err(|e| e.to_string())
    }

    /// A JWS (ES256) of `claims`, the certificate in its `x5c` header.
    fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
        let signature = self
            .key
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|e| format!("cannot sign a registry token: {e}"))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    written.map_err(|e| format!("{}: {e}", path.display()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One `scope` of a token request: `repository:<name>:<actions>`.
#[derive(Debug, PartialEq, Eq)]
struct Scope {
    name: String,
    actions: Vec<String>,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    let mut parts = text.splitn(2, ':');
    let (Some(kind), Some(rest)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "scope `{text}` is not `repository:<name>:<actions>`"
        ));
    };
    // The name may hold a `:port`-free path only, so the actions follow
    // the last `:`.
    let Some((name, actions)) = rest.rsplit_once(':') else {
        return Err(format!(
            "scope `{text}` is not `repository:<name>:<actions>`"
        ));
    };
    if kind != "repository" {
        // `registry:catalog:*` and the like: nothing is granted.
        return Ok(Scope {
            name: String::new(),
            actions: Vec::new(),
        });
    }
    Ok(Scope {
        name: name.to_owned(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// The service a credential's audience names.
fn service_of(audience: &str) -> Option<(ProjectName, ServiceName)> {
    let rest = audience
        .strip_prefix(rouse_identity::REGISTRY_AUDIENCE_PREFIX)?
        .strip_prefix("projects/")?;
    let (project, service) = rest.split_once("/services/")?;
    let project = ProjectName::parse(project).ok()?;
    let service = ServiceName::parse(&project, service).ok()?;
    Some((project, service))
}

/// The `aud` of a token, unverified (to know which audience to verify it
/// against).
fn audience_of(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("aud")?.as_str().map(str::to_owned)
}

fn answer(status: StatusCode, body: &Value) -> http::Response<tonic::body::Body> {
    crate::rest::json_response(status, body)
}

/// 401 in the registry's error shape, naming what is wrong.
fn unauthorized(message: &str) -> http::Response<tonic::body::Body> {
    let mut response = answer(
        StatusCode::UNAUTHORIZED,
        &json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]}),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rouse\""),
    );
    response
}

/// `GET /v2/token?service=…&scope=repository:<name>:pull,push`: a registry
/// token for the Basic credentials' repository.
pub async fn token(
    backend: &Backend,
    parts: &http::request::Parts,
) -> http::Response<tonic::body::Body> {
    let Some(registry) = &backend.registry else {
        return answer(
            StatusCode::NOT_FOUND,
            &json!({"errors": [{"code": "UNSUPPORTED", "message": "no registry is configured: start Rouse with --registry HOST[:PORT] to issue its tokens"}]}),
        );
    };
    if parts.method != http::Method::GET {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"errors": [{"code": "UNSUPPORTED", "message": "the token endpoint takes GET"}]}),
        );
    }
    let query = parts.uri.query().unwrap_or("");
    let mut audience = SERVICE.to_owned();
    let mut scopes = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "service" => audience = value.into_owned(),
            "scope" => {
                // Several scopes may share one parameter, space-separated.
                for one in value.split(' ').filter(|s| !s.is_empty()) {
                    match parse_scope(one) {
                        Ok(scope) => scopes.push(scope),
                        Err(e) => {
                            return answer(
                                StatusCode::BAD_REQUEST,
                                &json!({"errors": [{"code": "INVALID_SCOPE", "message": e}]}),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if audience != SERVICE {
        return answer(
            StatusCode::BAD_REQUEST,
            &json!({"errors": [{"code": "UNSUPPORTED", "message": format!("service `{audience}` is not this token server's; configure the registry's auth.token.service as `{SERVICE}`")}]}),
        );
    }
    let Some(password) = basic_password(parts) else {
        return unauthorized(
            "send Basic credentials: `docker login` with the user name and password from `rouse services docker-credentials SERVICE`",
        );
    };
    let now = SystemTime::now();
    let Some((project, service)) = audience_of(&password).as_deref().and_then(service_of) else {
        return unauthorized(
            "the password is not a Rouse registry credential; get one from `rouse services docker-credentials SERVICE`",
        );
    };
    let expected = rouse_identity::registry_audience(&project, &service);
    let snapshot = backend.authority.snapshot();
    let claims = match snapshot.verify_registry_credential(&password, &expected, now) {
        Ok(claims) => claims,
        Err(e) => {
            return unauthorized(&format!(
                "the credential is refused: {e}; get a new one from `rouse services docker-credentials {service} --project {project}`"
            ));
        }
    };
    let resource = Resource::Service(project.clone(), service.clone());
    let principal = claims.principal().to_owned();
    let repository = registry.repository_name(&project, &service);
    // The builder's own credential needs no binding; anyone else's is
    // checked now, audited like an API call.
    if principal != rouse_identity::BUILDER_PRINCIPAL {
        let caller = match Principal::parse(&principal).ok().and_then(|p| {
            Caller::authenticated(p, snapshot.groups_of(&principal).iter().cloned()).ok()
        }) {
            Some(caller) => caller,
            None => {
                return unauthorized(&format!(
                    "the credential names `{principal}`, not a principal"
                ));
            }
        };
        let decision = snapshot.check(&caller, Permission::ServicesDeploy, &resource, now);
        let mut entry = rouse_authz::decision_entry(
            &caller,
            "registry.token",
            &resource,
            Permission::ServicesDeploy,
            &decision,
        );
        if let Ok(mut detail) = serde_json::from_str::<Value>(&entry.detail) {
            detail["repository"] = repository.clone().into();
            entry.detail = detail.to_string();
        }
        backend.authority.audit(entry).await;
        if let Err(denied) = decision {
            return answer(
                StatusCode::FORBIDDEN,
                &json!({"errors": [{"code": "DENIED", "message": denied.to_string()}]}),
            );
        }
    }
    let access: Vec<Value> = scopes
        .iter()
        .filter(|s| s.name == repository)
        .map(|s| {
            let actions: Vec<&str> = s
                .actions
                .iter()
                .map(String::as_str)
                .filter(|a| matches!(*a, "pull" | "push"))
                .collect();
            json!({"type": "repository", "name": s.name, "actions": actions})
        })
        .collect();
    let issued = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = json!({
        "iss": ISSUER,
        "sub": principal,
        "aud": SERVICE,
        "iat": issued,
        "nbf": issued.saturating_sub(60),
        "exp": issued + TOKEN_LIFETIME.as_secs(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "access": access,
    });
    match registry.issuer.sign(&claims) {
        Ok(token) => answer(
            StatusCode::OK,
            &json!({
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_LIFETIME.as_secs(),
                "issued_at": humantime::format_rfc3339_seconds(now).to_string(),
            }),
        ),
        Err(e) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"errors": [{"code": "UNKNOWN", "message": e}]}),
        ),
    }
}

/// The password of a Basic `Authorization` header. A header longer than
/// any credential is not decoded (it comes before any check).
fn basic_password(parts: &http::request::Parts) -> Option<String> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > 2 * rouse_identity::MAX_TOKEN_LEN {
        return None;
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// A credential for `service`'s repository, for `principal`.
pub fn credential(
    backend: &Backend,
    principal: &str,
    project: &ProjectName,
    service: &ServiceName,
) -> Result<(String, SystemTime), String> {
    let now = SystemTime::now();
    let audience = rouse_identity::registry_audience(project, service);
    backend
        .asserter
        .assert_registry(principal, &audience, now, CREDENTIAL_LIFETIME)
        .map(|password| (password, now + CREDENTIAL_LIFETIME))
        .map_err(|e| e.to_string())
}

/// The reference `services update --image VALUE` deploys: a tag of the
/// service's repository (`v1`), or a whole reference (`host/path:tag`,
/// `…@sha256:…`; `:latest` when it names neither). A reference into the
/// registry must be the service's own repository.
pub fn image_reference(
    registry: Option<&RegistryAuth>,
    project: &ProjectName,
    service: &ServiceName,
    value: &str,
) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("--image is empty: give a tag of the service's repository (e.g. v1) or a whole image reference".into());
    }
    if !value.contains('/') {
        let tag = value.strip_prefix(':').unwrap_or(value);
        let good = tag.len() <= 128
            && tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !good {
            return Err(format!(
                "--image `{value}` is neither a tag (letters, digits, `_.-`, at most 128) nor a whole reference (host[:port]/path:tag)"
            ));
        }
        return match registry {
            Some(r) => Ok(format!("{}:{tag}", r.repository(project, service))),
            None => Err(format!(
                "--image `{value}` is a tag, but no registry is configured to hold the service's repository: give a whole reference of an image the engine has (e.g. rouse/{project}-{service}:{tag}), or start the server with --registry"
            )),
        };
    }
    let last = value.rsplit('/').next().unwrap_or(value);
    let reference = if value.contains('@') || last.contains(':') {
        value.to_owned()
    } else {
        format!("{value}:latest")
    };
    if let Some(r) = registry {
        let own = r.repository(project, service);
        let in_registry = reference.starts_with(&format!("{}/", r.prefix));
        let in_own =
            reference.starts_with(&format!("{own}:")) || reference.starts_with(&format!("{own}@"));
        if in_registry && !in_own {
            return Err(format!(
                "--image `{value}` is in another repository of the registry; a service deploys from its own, {own} (push there with the credentials of `rouse services docker-credentials {service} --project {project}`)"
            ));
        }
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_tags_of_the_service_s_repository_or_whole_references() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretsKey::from_bytes(&[9; 32]).expect("key");
        let registry =
            RegistryAuth::open("127.0.0.1:5000/rouse".into(), dir.path(), &key).expect("registry");
        let p = ProjectName::parse("p").expect("project");
        let s = ServiceName::parse(&p, "echo").expect("service");
        let r = |v: &str| image_reference(Some(&registry), &p, &s, v);
        assert_eq!(r("v1"), Ok("127.0.0.1:5000/rouse/p-echo:v1".into()));
        assert_eq!(r(":v1"), Ok("127.0.0.1:5000/rouse/p-echo:v1".into()));
        assert_eq!(
            r("127.0.0.1:5000/rouse/p-echo"),
            Ok("127.0.0.1:5000/rouse/p-echo:latest".into())
        );
        assert_eq!(
            r("127.0.0.1:5000/rouse/p-echo@sha256:abc"),
            Ok("127.0.0.1:5000/rouse/p-echo@sha256:abc".into())
        );
        assert_eq!(r("rouse/p-echo:local"), Ok("rouse/p-echo:local".into()));
        let err = r("127.0.0.1:5000/rouse/p-other:v1").expect_err("another's");
        assert!(
            err.contains("127.0.0.1:5000/rouse/p-echo") && err.contains("docker-credentials"),
            "{err}"
        );
        let err = r("p-echo:v1").expect_err("not a tag");
        assert!(err.contains("`p-echo:v1`"), "{err}");
        assert!(r(" ").is_err());
        let err = image_reference(None, &p, &s, "v1").expect_err("no registry");
        assert!(err.contains("--registry"), "{err}");
    }

    #[test]
    fn scopes_are_parsed_and_others_grant_nothing() {
        assert_eq!(
            parse_scope("repository:rouse/p-echo:pull,push"),
            Ok(Scope {
                name: "rouse/p-echo".into(),
                actions: vec!["pull".into(), "push".into()],
            })
        );
        assert_eq!(
            parse_scope("registry:catalog:*").map(|s| s.actions.len()),
            Ok(0)
        );
        assert!(parse_scope("repository").is_err());
    }

    #[test]
    fn audiences_name_their_service() {
        let (p, s) = service_of("registry:projects/p/services/echo").expect("a service");
        assert_eq!((p.as_str(), s.as_str()), ("p", "echo"));
        assert!(service_of("rouse-api").is_none());
        assert!(service_of("registry:projects/p").is_none());
    }

    #[test]
    fn the_issuer_is_made_once_and_read_back_by_every_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretsKey::from_bytes(&[9; 32]).expect("key");
        let first = Issuer::load_or_create(dir.path(), &key).expect("made");
        let second = Issuer::load_or_create(dir.path(), &key).expect("read");
        assert_eq!(first.cert_der, second.cert_der);
        let pem = std::fs::read_to_string(dir.path().join(CERT_FILE)).expect("cert");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        // Signed tokens verify with the certificate's key.
        let token = first.sign(&json!({"sub": "x"})).expect("signed");
        let (signed, signature) = token.rsplit_once('.').expect("three parts");
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64");
        let public = aws_lc_rs::signature::KeyPair::public_key(&first.key);
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            public.as_ref(),
        )
        .verify(signed.as_bytes(), &signature)
        .expect("verifies");
        // Another secrets key cannot open it, and says what to do.
        let other = SecretsKey::from_bytes(&[8; 32]).expect("key");
        let err = Issuer::load_or_create(dir.path(), &other)
            .err()
            .expect("refused");
        assert!(err.contains("another secrets key"), "{err}");
    }
}

//! Automatic certificates for the ingress over ACME (RFC 8555): Let's
//! Encrypt, or any ACME CA (Debian's `pebble` in the tests).
//!
//! - The account and the certificate's private key are kept in the data
//!   dir sealed with the platform's secrets key; the certificate chain
//!   (public) beside them. A restart serves the kept certificate at once
//!   and orders a new one only when it is due.
//! - Challenges are HTTP-01: the key authorizations wait in
//!   [`Challenges`], answered at `/.well-known/acme-challenge/<token>` by
//!   the plain-HTTP listener ([`serve_http`], which sends every other
//!   request to HTTPS): the CA fetches them from port 80 of each name.
//! - A certificate is renewed [`AcmeConfig::renew_before`] its expiry (a
//!   third of its lifetime by default, as Let's Encrypt advises). The new
//!   one is swapped into [`Certificates`], which the TLS server asks at
//!   every handshake: connections already open keep theirs, new ones get
//!   the new certificate, nothing is dropped.
//! - A failed order is logged with the CA's words and tried again after a
//!   backoff (10 s doubling to an hour); the old certificate is served
//!   meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Response, StatusCode, Uri, header};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rouse_iam::time::days_from_civil;
use rouse_secrets::{SealedValue, SecretsKey};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The soonest a certificate is replaced after it was issued, whatever
/// `renew_before` says (a CA's rate limits).
const MIN_LIFE: Duration = Duration::from_secs(10);
/// The longest one look at the certificate sleeps (clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The first wait after a failed order, doubled up to [`MAX_SLEEP`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// How long one order may take, from account to certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// What to ask of which CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL (Let's Encrypt's is
    /// `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// A contact address for the account (expiry notices), if any.
    pub email: Option<String>,
    /// The names the certificate is for (its subject alternative names).
    pub domains: Vec<String>,
    /// A PEM root to trust for the directory's own HTTPS instead of the
    /// system's (a private or test CA).
    pub ca_cert: Option<PathBuf>,
    /// How long before expiry a certificate is replaced; `None`: a third of
    /// its lifetime.
    pub renew_before: Option<Duration>,
    /// Where the account, the certificate and its sealed key are kept.
    pub state_dir: PathBuf,
}

impl AcmeConfig {
    /// Checks the names and the directory, naming what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !(self.directory.starts_with("https://") || self.directory.starts_with("http://")) {
            return Err(format!(
                "--acme-directory `{}` is not a URL; give the CA's directory, e.g. https://acme-v02.api.letsencrypt.org/directory",
                self.directory
            ));
        }
        if self.domains.is_empty() {
            return Err(
                "--acme-directory needs the names to certify: add --domain NAME (once per name; ROUSE_DOMAINS=a,b)"
                    .into(),
            );
        }
        for domain in &self.domains {
            check_domain(domain)?;
        }
        if let Some(email) = &self.email
            && (!email.contains('@') || email.contains(char::is_whitespace))
        {
            return Err(format!(
                "--acme-email `{email}` is not an email address; give one like ops@example.com"
            ));
        }
        Ok(())
    }
}

/// A DNS name a CA can certify over HTTP-01 (no wildcard, no address).
fn check_domain(domain: &str) -> Result<(), String> {
    let fix = "give a DNS name this ingress answers on port 80, e.g. --domain app.example.com";
    if domain.starts_with("*.") {
        return Err(format!(
            "--domain `{domain}`: wildcard names need a DNS-01 challenge, which Rouse does not answer; {fix}"
        ));
    }
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "--domain `{domain}` is an IP address; ACME certifies names: {fix}"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!("--domain `{domain}` is not a DNS name; {fix}"));
    }
    Ok(())
}

/// The key authorizations of the challenges under way, by token.
#[derive(Debug, Default, Clone)]
pub struct Challenges(Arc<Mutex<HashMap<String, String>>>);

impl Challenges {
    /// The key authorization for `token`, if a challenge with it is under way.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.0.lock().ok()?.get(token).cloned()
    }

    fn put(&self, token: &str, key_authorization: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    fn clear(&self) {
        if let Ok(mut map) = self.0.lock() {
            map.clear();
        }
    }
}

/// The certificate the ingress serves now, swapped in whole at renewal.
#[derive(Debug, Default)]
pub struct Certificates(RwLock<Option<Arc<CertifiedKey>>>);

impl Certificates {
    fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut current) = self.0.write() {
            *current = Some(key);
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok()?.clone()
    }
}

/// The ingress's TLS when its certificates come from ACME, and the task
/// that gets and renews them.
pub struct Acme {
    config: AcmeConfig,
    key: Arc<SecretsKey>,
    certificates: Arc<Certificates>,
    challenges: Challenges,
}

/// What is kept beside a certificate: what it was ordered for and when it
/// ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Kept {
    directory: String,
    domains: Vec<String>,
    /// Seconds since the epoch.
    issued: u64,
    not_after: u64,
}

/// The account as kept: the directory it belongs to and its credentials.
#[derive(Serialize, Deserialize)]
struct KeptAccount {
    directory: String,
    credentials: AccountCredentials,
}

const ACCOUNT_FILE: &str = "account.sealed";
const CHAIN_FILE: &str = "certificate.pem";
const KEY_FILE: &str = "certificate.key.sealed";
const KEPT_FILE: &str = "certificate.json";
/// The names the sealed values are bound to (a file moved onto another
/// does not open).
const ACCOUNT_SEAL: &str = "acme-account";
const KEY_SEAL: &str = "acme-certificate-key";

impl Acme {
    /// Reads what is kept in `config.state_dir` (a certificate still valid
    /// for the same names and CA is served at once).
    pub fn new(config: AcmeConfig, key: Arc<SecretsKey>) -> Result<Self, String> {
        config.check()?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| format!("ACME state {}: {e}", config.state_dir.display()))?;
        let acme = Self {
            config,
            key,
            certificates: Arc::default(),
            challenges: Challenges::default(),
        };
        match acme.load_kept() {
            Ok(Some((kept, certified))) if acme.serves(&kept) => {
                tracing::info!(
                    domains = ?kept.domains,
                    expires = %humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(kept.not_after)),
                    "serving the kept ACME certificate"
                );
                acme.certificates.set(certified);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the kept ACME certificate is not used; a new one is ordered")
            }
        }
        Ok(acme)
    }

    /// The challenges under way, for the listeners that answer them.
    pub fn challenges(&self) -> Challenges {
        self.challenges.clone()
    }

    /// A TLS server configuration that serves the current certificate.
    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.certificates.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Whether a kept certificate is for these names and this CA and not
    /// expired.
    fn serves(&self, kept: &Kept) -> bool {
        kept.directory == self.config.directory
            && sorted(&kept.domains) == sorted(&self.config.domains)
            && UNIX_EPOCH + Duration::from_secs(kept.not_after) > SystemTime::now()
    }

    /// When a certificate is to be replaced.
    fn renew_at(&self, kept: &Kept) -> SystemTime {
        let issued = UNIX_EPOCH + Duration::from_secs(kept.issued);
        let not_after = UNIX_EPOCH + Duration::from_secs(kept.not_after);
        let lifetime = not_after.duration_since(issued).unwrap_or_default();
        let before = self.config.renew_before.unwrap_or(lifetime / 3);
        let at = not_after.checked_sub(before).unwrap_or(UNIX_EPOCH);
        at.max(issued + MIN_LIFE)
    }

    /// Gets a certificate when none is served and renews it when due, until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let kept = match self.load_kept() {
                Ok(Some((kept, _))) if self.serves(&kept) => Some(kept),
                _ => None,
            };
            let wait = match &kept {
                Some(kept) => self
                    .renew_at(kept)
                    .duration_since(SystemTime::now())
                    .unwrap_or_default(),
                None => Duration::ZERO,
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait.min(MAX_SLEEP)) => continue,
                }
            }
            let ordered = tokio::select! {
                () = shutdown.cancelled() => return,
                ordered = tokio::time::timeout(ORDER_TIMEOUT, self.order()) => ordered
                    .unwrap_or_else(|_| Err(format!("the order took longer than {}s", ORDER_TIMEOUT.as_secs()))),
            };
            self.challenges.clear();
            match ordered {
                Ok(kept) => {
                    backoff = FIRST_BACKOFF;
                    tracing::info!(
                        domains = ?kept.domains,
                        expires = %humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(kept.not_after)),
                        renewal = %humantime::format_rfc3339_seconds(self.renew_at(&kept)),
                        "ACME certificate issued and served"
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        directory = %self.config.directory,
                        error = %e,
                        retry_in = %humantime::format_duration(backoff),
                        "no ACME certificate"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_SLEEP);
                }
            }
        }
    }

    /// One order: account, challenges, finalisation, certificate; kept and
    /// swapped in.
    async fn order(&self) -> Result<Kept, String> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("an authorization is {other:?}")),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or("the CA offers no http-01 challenge (Rouse answers only http-01)")?;
            self.challenges
                .put(&challenge.token, challenge.key_authorization().as_str());
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            let state = order.state();
            let why = state
                .error
                .as_ref()
                .map_or_else(String::new, |p| format!(": {p}"));
            return Err(format!(
                "the order is {status:?}, not ready{why} (the CA fetches http://<domain>/.well-known/acme-challenge/…: is port 80 of each --domain this ingress's --ingress-http-listen?)"
            ));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let (chain, not_after) = parse_chain(chain_pem.as_bytes())?;
        let certified = certified_key(chain, key_pem.as_bytes())?;
        let kept = Kept {
            directory: self.config.directory.clone(),
            domains: self.config.domains.clone(),
            issued: unix(SystemTime::now()),
            not_after: unix(not_after),
        };
        self.keep(&kept, &chain_pem, &key_pem)?;
        self.certificates.set(certified);
        Ok(kept)
    }

    /// The kept account for this directory, or a new one (kept).
    async fn account(&self) -> Result<Account, String> {
        let builder = || match &self.config.ca_cert {
            Some(root) => Account::builder_with_root(root)
                .map_err(|e| format!("--acme-ca-cert {}: {e}", root.display())),
            None => Account::builder().map_err(|e| format!("ACME client: {e}")),
        };
        let path = self.config.state_dir.join(ACCOUNT_FILE);
        if let Ok(bytes) = std::fs::read(&path) {
            let opened = self
                .key
                .open(ACCOUNT_SEAL, &SealedValue::from_bytes(bytes))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let kept: KeptAccount = serde_json::from_slice(opened.expose())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if kept.directory == self.config.directory {
                return builder()?
                    .from_credentials(kept.credentials)
                    .await
                    .map_err(|e| format!("ACME account at {}: {e}", self.config.directory));
            }
        }
        let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await
            .map_err(|e| format!("new ACME account at {}: {e}", self.config.directory))?;
        let kept = KeptAccount {
            directory: self.config.directory.clone(),
            credentials,
        };
        let json = serde_json::to_vec(&kept).map_err(|e| format!("account: {e}"))?;
        let sealed = self
            .key
            .seal(ACCOUNT_SEAL, &json)
            .map_err(|e| format!("account: {e}"))?;
        write_private(&path, sealed.as_bytes())?;
        Ok(account)
    }

    /// Writes the certificate, its sealed key and what it is for; the
    /// record last, so a crash midway leaves the previous set or none.
    fn keep(&self, kept: &Kept, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let dir = &self.config.state_dir;
        let sealed = self
            .key
            .seal(KEY_SEAL, key_pem.as_bytes())
            .map_err(|e| format!("certificate key: {e}"))?;
        write_private(&dir.join(KEY_FILE), sealed.as_bytes())?;
        write_private(&dir.join(CHAIN_FILE), chain_pem.as_bytes())?;
        let json = serde_json::to_vec_pretty(kept).map_err(|e| format!("certificate: {e}"))?;
        write_private(&dir.join(KEPT_FILE), &json)
    }

    /// The kept certificate, if there is one that opens.
    fn load_kept(&self) -> Result<Option<(Kept, Arc<CertifiedKey>)>, String> {
        let dir = &self.config.state_dir;
        let record = match std::fs::read(dir.join(KEPT_FILE)) {
            Ok(record) => record,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", dir.join(KEPT_FILE).display())),
        };
        let kept: Kept = serde_json::from_slice(&record)
            .map_err(|e| format!("{}: {e}", dir.join(KEPT_FILE).display()))?;
        let chain = std::fs::read(dir.join(CHAIN_FILE))
            .map_err(|e| format!("{}: {e}", dir.join(CHAIN_FILE).display()))?;
        let sealed = std::fs::read(dir.join(KEY_FILE))
            .map_err(|e| format!("{}: {e}", dir.join(KEY_FILE).display()))?;
        let key = self
            .key
            .open(KEY_SEAL, &SealedValue::from_bytes(sealed))
            .map_err(|e| format!("{}: {e}", dir.join(KEY_FILE).display()))?;
        let (chain, _) = parse_chain(&chain)?;
        Ok(Some((kept, certified_key(chain, key.expose())?)))
    }
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    names
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Writes `bytes` to `path` readable by the owner only, replacing it whole
/// (a temporary file renamed over it).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    written.map_err(|e| format!("{}: {e}", path.display()))
}

/// A PEM chain (leaf first) and the leaf's expiry.
fn parse_chain(pem: &[u8]) -> Result<(Vec<CertificateDer<'static>>, SystemTime), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate chain: {e}"))?;
    let leaf = chain.first().ok_or("the certificate chain is empty")?;
    let not_after = not_after(leaf).ok_or("the certificate's expiry cannot be read")?;
    Ok((chain, not_after))
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, String> {
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the key: {e}"))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("the key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A certificate's `notAfter` (RFC 5280 §4.1.2.5).
fn not_after(certificate: &[u8]) -> Option<SystemTime> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = der(certificate)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der(certificate)? else {
        return None;
    };
    // [0] version, if there; then serial, signature algorithm, issuer.
    let (tag, _, rest) = der(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..3 {
        tbs = der(tbs)?.2;
    }
    let (SEQUENCE, validity, _) = der(tbs)? else {
        return None;
    };
    let (_, _, validity) = der(validity)?;
    let (tag, time, _) = der(validity)?;
    asn1_time(tag, time)
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn asn1_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| rest[i..i + 2].parse::<u32>().ok();
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// The plain-HTTP listener beside an HTTPS ingress: answers HTTP-01
/// challenges and sends every other request to the same path over HTTPS
/// (308, on `https_port`).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    challenges: Challenges,
    https_port: u16,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(challenge),
        )
        .fallback(move |headers: HeaderMap, uri: Uri| async move {
            to_https(&headers, &uri, https_port)
        })
        .with_state(challenges);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// `GET /.well-known/acme-challenge/<token>`: the key authorization.
async fn challenge(
    State(challenges): State<Challenges>,
    UrlPath(token): UrlPath<String>,
) -> Response<Body> {
    match challenges.answer(&token) {
        Some(answer) => Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(answer))
            .unwrap_or_default(),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from(
                "no ACME challenge is under way with this token\n",
            ))
            .unwrap_or_default(),
    }
}

fn to_https(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Response<Body> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => h,
        });
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Body::from(
                "this port serves HTTPS redirects and ACME challenges; send a Host header\n",
            ))
            .unwrap_or_default();
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, format!("https://{host}{port}{path}"))
        .body(Body::empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().expect("key");
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn a_certificates_expiry_is_read() {
        // UTCTime (before 2050) and GeneralizedTime (from 2050).
        for (year, month, day) in [(2027, 3, 1), (2049, 12, 31), (2051, 2, 28)] {
            let at = not_after(&certificate_until(year, month, day)).expect("an expiry");
            let days = days_from_civil(i64::from(year), u32::from(month), u32::from(day));
            assert_eq!(
                at,
                UNIX_EPOCH + Duration::from_secs(u64::try_from(days * 86_400).expect("after 1970"))
            );
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert!(not_after(b"not a certificate").is_none());
        assert!(not_after(&[0x30, 0x82, 0xff]).is_none());
    }

    #[test]
    fn names_a_ca_cannot_certify_over_http_are_refused() {
        assert!(check_domain("app.example.com").is_ok());
        assert!(check_domain("localhost").is_ok());
        for (bad, says) in [
            ("*.example.com", "wildcard"),
            ("10.0.0.1", "IP address"),
            ("a..b", "not a DNS name"),
            ("-a.b", "not a DNS name"),
            ("a_b.c", "not a DNS name"),
        ] {
            let e = check_domain(bad).expect_err(bad);
            assert!(e.contains(bad) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn renewal_is_a_third_of_the_lifetime_ahead_unless_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AcmeConfig {
            directory: "https://ca.example/dir".into(),
            email: None,
            domains: vec!["a.example".into()],
            ca_cert: None,
            renew_before: None,
            state_dir: dir.path().join("acme"),
        };
        let key = Arc::new(SecretsKey::from_bytes(&[7; 32]).expect("key"));
        let mut acme = Acme::new(config, key).expect("acme");
        let day = 86_400;
        let kept = Kept {
            directory: "https://ca.example/dir".into(),
            domains: vec!["a.example".into()],
            issued: 1_000 * day,
            not_after: 1_090 * day,
        };
        assert_eq!(
            acme.renew_at(&kept),
            UNIX_EPOCH + Duration::from_secs(1_060 * day)
        );
        acme.config.renew_before = Some(Duration::from_secs(10 * day));
        assert_eq!(
            acme.renew_at(&kept),
            UNIX_EPOCH + Duration::from_secs(1_080 * day)
        );
        // Never sooner than MIN_LIFE after issue, whatever is asked.
        acme.config.renew_before = Some(Duration::from_secs(1_000 * day));
        assert_eq!(
            acme.renew_at(&kept),
            UNIX_EPOCH + Duration::from_secs(1_000 * day) + MIN_LIFE
        );
    }

    #[test]
    fn plain_http_is_sent_to_https_on_the_same_host_and_path() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "app.example:8080".parse().expect("host"));
        let uri: Uri = "/p-s/x?y=1".parse().expect("uri");
        let r = to_https(&headers, &uri, 8443);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://app.example:8443/p-s/x?y=1"
        );
        let r = to_https(&headers, &uri, 443);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://app.example/p-s/x?y=1"
        );
        assert_eq!(
            to_https(&HeaderMap::new(), &uri, 443).status(),
            StatusCode::BAD_REQUEST
        );
    }
}

//! `rouse server` configuration: flags > environment > TOML file > defaults.
//!
//! Clap resolves flags and environment variables; the file fills what they
//! left unset; [`ServerConfig::resolve`] applies the defaults. Unknown keys in
//! the file are errors naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rouse_server::StoreLocation;
use serde::Deserialize;

use crate::args::LogFormat;
use crate::commands::server::{RuntimeKind, ServerArgs};

/// The default API address: loopback only, since the API is the control plane.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7070";
/// The Google Cloud project used with the emulator when none is given.
pub const DEFAULT_EMULATOR_PROJECT: &str = "rouse-local";
/// The Octue network topic (docs/protocol.md).
pub const DEFAULT_NETWORK_TOPIC: &str = "octue.services";
/// The builder's webhook server: loopback by default; put a proxy in front
/// of it (or listen wider) for GitHub to reach it.
pub const DEFAULT_WEBHOOK_LISTEN: &str = "127.0.0.1:7071";
/// Where the ingress listens by default (Knative's and Cloud Run's port).
pub const DEFAULT_INGRESS_LISTEN: &str = "127.0.0.1:8080";
/// Where the embedded Pub/Sub broker listens by default: the emulator's
/// usual port, so `PUBSUB_EMULATOR_HOST=localhost:8085` clients find it.
pub const DEFAULT_BROKER_LISTEN: &str = "127.0.0.1:8085";
/// How long permission decisions stay in the audit log (changes stay for
/// good): 30 days, as Google keeps Data Access audit logs.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// The TOML file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub api_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub pubsub: PubSubSection,
    #[serde(default)]
    pub dispatcher: DispatcherSection,
    #[serde(default)]
    pub builder: BuilderSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
}

/// `[runtime]`: what runs image revisions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    pub kind: Option<RuntimeKind>,
    pub cloudrun_project: Option<String>,
    pub cloudrun_region: Option<String>,
    pub cloudrun_endpoint: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub cloudrun_poll: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderSection {
    pub webhook_listen: Option<SocketAddr>,
    pub github_api_url: Option<String>,
    pub secrets_key: Option<PathBuf>,
    pub registry: Option<String>,
    pub registry_credentials: Option<PathBuf>,
    pub function_base_image: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSection {
    #[serde(default, with = "humantime_serde_opt")]
    pub heartbeat_interval: Option<Duration>,
    pub queue_capacity: Option<usize>,
    pub ingress_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub acme_directory: Option<String>,
    pub acme_email: Option<String>,
    pub domains: Option<Vec<String>>,
    pub acme_ca_cert: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    pub acme_renew_before: Option<Duration>,
    pub ingress_http_listen: Option<SocketAddr>,
    pub internal_networks: Option<Vec<String>>,
    pub ingress_max_body: Option<String>,
    pub ingress_max_head: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub ingress_header_timeout: Option<Duration>,
    pub ingress_advertise: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// A SQLite file.
    pub path: Option<PathBuf>,
    /// A PostgreSQL database, `postgres://…`.
    pub url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub audit_retention: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubSection {
    pub mode: Option<PubSubMode>,
    pub broker_listen: Option<SocketAddr>,
    pub project: Option<String>,
    pub emulator_host: Option<String>,
    pub network_topic: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub call_timeout: Option<Duration>,
}

/// `call_timeout = "10s"` in TOML.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write e.g. \"10s\""
                ))
            })
        })
        .transpose()
    }
}

/// Which Pub/Sub the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PubSubMode {
    /// Rouse's own broker, in this process, on `--broker-listen`.
    Embedded,
    /// The official emulator (or any broker) at `--pubsub-emulator-host`.
    Emulator,
    /// Google Cloud Pub/Sub, in `--pubsub-project`.
    Google,
}

/// Everything the server needs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub store: StoreLocation,
    pub log_format: LogFormat,
    pub pubsub: rouse_pubsub::PubSubConfig,
    /// The embedded broker, when the mode is `embedded`.
    pub broker: Option<rouse_server::BrokerConfig>,
    pub network_topic: String,
    pub roles: Roles,
    pub heartbeat_interval: Duration,
    /// How long decisions stay in the audit log; `None` keeps them all.
    pub audit_retention: Option<Duration>,
    pub queue_capacity: usize,
    /// Where the builder's webhook server listens.
    pub webhook_listen: SocketAddr,
    /// Where the ingress listens.
    pub ingress_listen: SocketAddr,
    /// The ingress's certificate chain and key.
    pub ingress_tls: Option<(PathBuf, PathBuf)>,
    /// The ingress's certificates from an ACME CA.
    pub ingress_acme: Option<rouse_dispatcher::acme::AcmeConfig>,
    /// Plain HTTP beside an HTTPS ingress (ACME challenges, redirects).
    pub ingress_http_listen: Option<SocketAddr>,
    /// Where requests for `--ingress internal` services may come from.
    pub internal_networks: Vec<rouse_dispatcher::ingress::Network>,
    /// What the ingress bounds.
    pub ingress_limits: rouse_dispatcher::ingress::Limits,
    /// Where other ingresses forward this one's requests.
    pub ingress_advertise: Option<String>,
    /// GitHub's REST API (commit statuses).
    pub github_api_url: String,
    /// The key sealing secrets, kept outside the store.
    pub secrets_key: PathBuf,
    /// Where built images are pushed (`host[:port][/path]`), if anywhere.
    pub registry: Option<String>,
    /// A JSON file `{"username": …, "password": …}` for the registry.
    pub registry_credentials: Option<PathBuf>,
    /// The local image functions are built on, if they are built into images.
    pub function_base_image: Option<String>,
    /// What runs image revisions.
    pub runtime: rouse_server::ImageRuntime,
}

pub use rouse_server::Roles;

/// The ACME settings (flags over the file) and the plain-HTTP listener:
/// ACME needs its names and the ingress role; the ACME-only settings need
/// `--acme-directory`; with ACME the plain listener defaults to port 80 of
/// the ingress's host (where the CA fetches its challenges).
/// The ingress's limits: flags over the file over the defaults, checked.
fn ingress_limits(
    args: &ServerArgs,
    file: &DispatcherSection,
) -> Result<rouse_dispatcher::ingress::Limits, String> {
    use rouse_dispatcher::ingress::{Limits, parse_size};
    let defaults = Limits::default();
    let size = |flag: Option<u64>, file: &Option<String>, name: &str| match (flag, file) {
        (Some(n), _) => Ok(Some(n)),
        (None, Some(text)) => parse_size(text)
            .map(Some)
            .map_err(|e| format!("[dispatcher] {name}: {e}")),
        (None, None) => Ok(None),
    };
    let max_body = size(
        args.ingress_max_body,
        &file.ingress_max_body,
        "ingress_max_body",
    )?;
    let max_head = size(
        args.ingress_max_head,
        &file.ingress_max_head,
        "ingress_max_head",
    )?;
    let limits = Limits {
        max_body_bytes: max_body.unwrap_or(defaults.max_body_bytes),
        max_head_bytes: max_head.map_or(defaults.max_head_bytes, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
        header_timeout: args
            .ingress_header_timeout
            .or(file.ingress_header_timeout)
            .unwrap_or(defaults.header_timeout),
    };
    limits.check()?;
    Ok(limits)
}

/// The ACME settings of the config file's `[dispatcher]`.
struct AcmeFile {
    directory: Option<String>,
    email: Option<String>,
    domains: Option<Vec<String>>,
    ca_cert: Option<PathBuf>,
    renew_before: Option<Duration>,
    http_listen: Option<SocketAddr>,
}

fn ingress_acme(
    args: &ServerArgs,
    file: AcmeFile,
    data_dir: &std::path::Path,
    ingress_listen: SocketAddr,
    ingress: bool,
) -> Result<
    (
        Option<rouse_dispatcher::acme::AcmeConfig>,
        Option<SocketAddr>,
    ),
    String,
> {
    let directory = args.acme_directory.clone().or(file.directory);
    let email = args.acme_email.clone().or(file.email);
    let domains = match args.domains.is_empty() {
        false => args.domains.clone(),
        true => file.domains.unwrap_or_default(),
    };
    let ca_cert = args.acme_ca_cert.clone().or(file.ca_cert);
    let renew_before = args.acme_renew_before.or(file.renew_before);
    let http_listen = args.ingress_http_listen.or(file.http_listen);
    let Some(directory) = directory else {
        let given = [
            ("--domain", !domains.is_empty()),
            ("--acme-email", email.is_some()),
            ("--acme-ca-cert", ca_cert.is_some()),
            ("--acme-renew-before", renew_before.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{flag} is an ACME setting but no CA is given: add --acme-directory URL (ROUSE_ACME_DIRECTORY), or drop it"
            ));
        }
        return Ok((None, http_listen));
    };
    if !ingress {
        return Err(
            "--acme-directory is for the ingress, which these --roles do not run; add `ingress` (beside `dispatcher`) or drop it"
                .into(),
        );
    }
    if let Some(root) = &ca_cert
        && !root.is_file()
    {
        return Err(format!(
            "--acme-ca-cert {}: no such file; give the PEM root the ACME directory's HTTPS is signed by",
            root.display()
        ));
    }
    let config = rouse_dispatcher::acme::AcmeConfig {
        directory,
        email,
        domains,
        ca_cert,
        renew_before,
        state_dir: data_dir.join("acme"),
    };
    config.check()?;
    let http_listen = http_listen.unwrap_or(SocketAddr::new(ingress_listen.ip(), 80));
    Ok((Some(config), Some(http_listen)))
}

/// `--runtime` and the Cloud Run settings: Cloud Run needs a region, and
/// Cloud Run settings without `--runtime cloudrun` are a mistake.
fn image_runtime(
    args: &ServerArgs,
    file: RuntimeSection,
    pubsub_project: &str,
) -> Result<rouse_server::ImageRuntime, String> {
    let kind = args.runtime.or(file.kind).unwrap_or(RuntimeKind::Docker);
    let project = args.cloudrun_project.clone().or(file.cloudrun_project);
    let region = args.cloudrun_region.clone().or(file.cloudrun_region);
    let endpoint = args.cloudrun_endpoint.clone().or(file.cloudrun_endpoint);
    let poll = args.cloudrun_poll.or(file.cloudrun_poll);
    match kind {
        RuntimeKind::Docker => {
            let given = [
                ("--cloudrun-project", project.is_some()),
                ("--cloudrun-region", region.is_some()),
                ("--cloudrun-endpoint", endpoint.is_some()),
                ("--cloudrun-poll", poll.is_some()),
            ];
            match given.iter().find(|(_, set)| *set) {
                Some((flag, _)) => Err(format!(
                    "{flag} is given but the runtime is docker: add --runtime cloudrun (ROUSE_RUNTIME), or drop it"
                )),
                None => Ok(rouse_server::ImageRuntime::Docker),
            }
        }
        RuntimeKind::Cloudrun => {
            let region = region.ok_or(
                "Cloud Run needs a region: set --cloudrun-region (ROUSE_CLOUDRUN_REGION), e.g. europe-west1",
            )?;
            let poll = poll.unwrap_or(std::time::Duration::from_secs(1));
            if poll.is_zero() || poll > Duration::from_secs(60) {
                return Err(format!(
                    "--cloudrun-poll {} is out of range; use 100ms..=1m",
                    humantime::format_duration(poll)
                ));
            }
            if let Some(e) = &endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(format!(
                    "--cloudrun-endpoint `{e}` is not a URL; write e.g. https://run.googleapis.com"
                ));
            }
            Ok(rouse_server::ImageRuntime::CloudRun(
                rouse_server::CloudRunSettings {
                    project: project.unwrap_or_else(|| pubsub_project.to_owned()),
                    region,
                    endpoint,
                    poll,
                },
            ))
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            format!(
                "config file {} is invalid: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })
    }
}

/// `$XDG_DATA_HOME/rouse`, else `~/.local/share/rouse`.
pub fn default_data_dir() -> Result<PathBuf, String> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("rouse"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/rouse")),
        None => Err("neither XDG_DATA_HOME nor HOME is set; pass --data-dir".into()),
    }
}

fn check_topic_id(topic: &str) -> Result<(), String> {
    // Pub/Sub's rule for resource ids.
    let ok = topic.len() >= 3
        && topic.len() <= 255
        && topic.starts_with(|c: char| c.is_ascii_alphabetic())
        && !topic.starts_with("goog")
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network topic `{topic}` is not a valid Pub/Sub topic id: 3-255 characters, starting with a letter, of letters, digits and `-_.~+%`, not starting with `goog`"
        ))
    }
}

impl ServerConfig {
    pub fn resolve(args: &ServerArgs, global_log: Option<LogFormat>) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let data_dir = match args.data_dir.clone().or(file.data_dir) {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let api_listen = match args.api_listen.or(file.api_listen) {
            Some(a) => a,
            None => DEFAULT_API_LISTEN
                .parse()
                .map_err(|e| format!("bad built-in address: {e}"))?,
        };
        let store = match (args.store.as_deref(), file.store.path, file.store.url) {
            (Some(flag), _, _) => StoreLocation::parse(flag),
            (None, Some(_), Some(_)) => {
                return Err(
                    "the config file's [store] sets both `path` and `url`; keep one (`path` for a SQLite file, `url` for PostgreSQL)".into(),
                );
            }
            (None, _, Some(url)) => match StoreLocation::parse(&url) {
                postgres @ StoreLocation::Postgres(_) => postgres,
                StoreLocation::Sqlite(_) => {
                    return Err(format!(
                        "the config file's [store] url `{url}` is not a PostgreSQL URL; write postgres://USER:PASSWORD@HOST:PORT/DATABASE, or set `path` for a SQLite file"
                    ));
                }
            },
            (None, Some(path), None) => StoreLocation::Sqlite(path),
            (None, None, None) => StoreLocation::Sqlite(data_dir.join("rouse.db")),
        };
        let emulator_host = args
            .pubsub_emulator_host
            .clone()
            .or(file.pubsub.emulator_host)
            .filter(|h| !h.is_empty());
        let explicit_project = args.pubsub_project.clone().or(file.pubsub.project);
        // Unless told: an emulator host means the emulator, a project means
        // Google, and neither means Rouse's own broker.
        let mode =
            args.pubsub
                .or(file.pubsub.mode)
                .unwrap_or(match (&emulator_host, &explicit_project) {
                    (Some(_), _) => PubSubMode::Emulator,
                    (None, Some(_)) => PubSubMode::Google,
                    (None, None) => PubSubMode::Embedded,
                });
        let (emulator_host, broker) = match mode {
            PubSubMode::Embedded => {
                let listen = match args.broker_listen.or(file.pubsub.broker_listen) {
                    Some(a) => a,
                    None => DEFAULT_BROKER_LISTEN
                        .parse()
                        .map_err(|e| format!("bad built-in address: {e}"))?,
                };
                let broker = rouse_server::BrokerConfig {
                    listen,
                    store: data_dir.join("broker.db"),
                };
                (None, Some(broker))
            }
            PubSubMode::Emulator => match emulator_host {
                Some(host) => (Some(host), None),
                None => {
                    return Err(
                        "--pubsub emulator needs the emulator's address: pass --pubsub-emulator-host HOST:PORT or set PUBSUB_EMULATOR_HOST".into(),
                    );
                }
            },
            PubSubMode::Google => (None, None),
        };
        let project = match explicit_project {
            Some(p) => p,
            None if mode != PubSubMode::Google => DEFAULT_EMULATOR_PROJECT.to_owned(),
            None => {
                return Err(
                    "no Google Cloud project for Pub/Sub: pass --pubsub-project or set GOOGLE_CLOUD_PROJECT (or use --pubsub embedded, the default without one)".into(),
                );
            }
        };
        let network_topic = args
            .network_topic
            .clone()
            .or(file.pubsub.network_topic)
            .unwrap_or_else(|| DEFAULT_NETWORK_TOPIC.to_owned());
        check_topic_id(&network_topic)?;
        let roles = Roles::parse(&args.roles)?;
        let queue_capacity = file
            .dispatcher
            .queue_capacity
            .unwrap_or(rouse_dispatcher::DispatcherConfig::DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err("[dispatcher] queue_capacity must be at least 1".into());
        }
        let audit_retention = Some(
            args.audit_retention
                .or(file.store.audit_retention)
                .unwrap_or(DEFAULT_AUDIT_RETENTION),
        )
        .filter(|d| !d.is_zero());
        let heartbeat_interval = args
            .heartbeat_interval
            .or(file.dispatcher.heartbeat_interval)
            .unwrap_or(rouse_dispatcher::DispatcherConfig::DEFAULT_HEARTBEAT);
        if heartbeat_interval.is_zero() || heartbeat_interval > Duration::from_secs(300) {
            return Err(format!(
                "heartbeat interval {} is out of range; use 1s..=5m (Octue askers give up after 6m without one)",
                humantime::format_duration(heartbeat_interval)
            ));
        }
        let webhook_listen = match args.webhook_listen.or(file.builder.webhook_listen) {
            Some(a) => a,
            None => DEFAULT_WEBHOOK_LISTEN
                .parse()
                .map_err(|e| format!("bad built-in address: {e}"))?,
        };
        let ingress_listen = match args.ingress_listen.or(file.dispatcher.ingress_listen) {
            Some(a) => a,
            None => DEFAULT_INGRESS_LISTEN
                .parse()
                .map_err(|e| format!("bad built-in address: {e}"))?,
        };
        let ingress_limits = ingress_limits(args, &file.dispatcher)?;
        let ingress_advertise = match args
            .ingress_advertise
            .clone()
            .or(file.dispatcher.ingress_advertise.clone())
        {
            None => None,
            Some(url) => Some(rouse_dispatcher::ingress::parse_advertise(&url)?),
        };
        let tls_cert = args.tls_cert.clone().or(file.dispatcher.tls_cert);
        let tls_key = args.tls_key.clone().or(file.dispatcher.tls_key);
        let ingress_tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(format!(
                    "--tls-cert {} is given without its key: add --tls-key (ROUSE_TLS_KEY or [dispatcher] tls_key)",
                    cert.display()
                ));
            }
            (None, Some(key)) => {
                return Err(format!(
                    "--tls-key {} is given without its certificate: add --tls-cert (ROUSE_TLS_CERT or [dispatcher] tls_cert)",
                    key.display()
                ));
            }
        };
        if ingress_tls.is_some() && !roles.ingress {
            return Err(
                "--tls-cert/--tls-key are for the ingress, which these --roles do not run; add `ingress` (beside `dispatcher`) or drop them"
                    .into(),
            );
        }
        let internal_networks = match args.internal_networks.is_empty() {
            false => Some(args.internal_networks.clone()),
            true => file.dispatcher.internal_networks,
        };
        let internal_networks = match internal_networks {
            None => rouse_dispatcher::ingress::Network::default_internal(),
            Some(list) => list
                .iter()
                .map(|n| rouse_dispatcher::ingress::Network::parse(n.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--internal-networks: {e}"))?,
        };
        let (ingress_acme, ingress_http_listen) = ingress_acme(
            args,
            AcmeFile {
                directory: file.dispatcher.acme_directory,
                email: file.dispatcher.acme_email,
                domains: file.dispatcher.domains,
                ca_cert: file.dispatcher.acme_ca_cert,
                renew_before: file.dispatcher.acme_renew_before,
                http_listen: file.dispatcher.ingress_http_listen,
            },
            &data_dir,
            ingress_listen,
            roles.ingress,
        )?;
        if ingress_acme.is_some() && ingress_tls.is_some() {
            return Err(
                "--acme-directory and --tls-cert/--tls-key both give the ingress a certificate; keep one"
                    .into(),
            );
        }
        if ingress_http_listen.is_some() && ingress_acme.is_none() && ingress_tls.is_none() {
            return Err(
                "--ingress-http-listen is for an HTTPS ingress (ACME challenges and redirects); without --tls-cert or --acme-directory the ingress serves plain HTTP already: drop it"
                    .into(),
            );
        }
        let github_api_url = args
            .github_api_url
            .clone()
            .or(file.builder.github_api_url)
            .unwrap_or_else(|| rouse_builder::github::DEFAULT_API_URL.to_owned());
        let secrets_key = args
            .secrets_key
            .clone()
            .or(file.builder.secrets_key)
            .unwrap_or_else(|| data_dir.join("secrets.key"));
        let registry = args
            .registry
            .clone()
            .or(file.builder.registry)
            .map(|r| rouse_builder::docker::parse_registry(&r))
            .transpose()
            .map_err(|e| format!("{e} (--registry, ROUSE_REGISTRY or [builder] registry)"))?;
        let registry_credentials = args
            .registry_credentials
            .clone()
            .or(file.builder.registry_credentials);
        if registry.is_none()
            && let Some(path) = &registry_credentials
        {
            return Err(format!(
                "registry credentials `{}` are given but no registry: set --registry (ROUSE_REGISTRY) too, or drop them",
                path.display()
            ));
        }
        let function_base_image = args
            .function_base_image
            .clone()
            .or(file.builder.function_base_image)
            .map(|image| {
                let image = image.trim().to_owned();
                if image.is_empty() || image.chars().any(char::is_whitespace) {
                    Err(format!(
                        "function base image `{image}` is not an image reference; give one the engine has, e.g. python:3.12-slim (--function-base-image, ROUSE_FUNCTION_BASE_IMAGE or [builder] function_base_image)"
                    ))
                } else {
                    Ok(image)
                }
            })
            .transpose()?;
        let runtime = image_runtime(args, file.runtime, &project)?;
        Ok(Self {
            runtime,
            registry,
            registry_credentials,
            function_base_image,
            webhook_listen,
            ingress_listen,
            ingress_tls,
            ingress_acme,
            ingress_http_listen,
            internal_networks,
            ingress_limits,
            ingress_advertise,
            github_api_url,
            secrets_key,
            roles,
            heartbeat_interval,
            audit_retention,
            queue_capacity,
            data_dir,
            api_listen,
            store,
            log_format: global_log.or(file.log_format).unwrap_or(LogFormat::Human),
            pubsub: rouse_pubsub::PubSubConfig {
                project,
                emulator_host,
                call_timeout: args
                    .pubsub_timeout
                    .or(file.pubsub.call_timeout)
                    .unwrap_or(rouse_pubsub::PubSubConfig::DEFAULT_CALL_TIMEOUT),
            },
            broker,
            network_topic,
        })
    }

    /// What the platform is started with; the owner's key is copied to
    /// `owner_credentials` on the first start.
    pub fn platform(&self, owner_credentials: Option<PathBuf>) -> rouse_server::Config {
        let Self {
            data_dir,
            api_listen,
            store,
            log_format: _,
            pubsub,
            broker,
            network_topic,
            roles,
            heartbeat_interval,
            audit_retention,
            queue_capacity,
            webhook_listen,
            ingress_listen,
            ingress_tls,
            ingress_acme,
            ingress_http_listen,
            internal_networks,
            ingress_limits,
            ingress_advertise,
            github_api_url,
            secrets_key,
            registry,
            registry_credentials,
            function_base_image,
            runtime,
        } = self.clone();
        rouse_server::Config {
            roles,
            data_dir,
            store,
            api_listen,
            webhook_listen,
            ingress_listen,
            ingress_tls,
            ingress_acme,
            ingress_http_listen,
            internal_networks,
            ingress_limits,
            ingress_advertise,
            pubsub,
            broker,
            network_topic,
            heartbeat_interval,
            queue_capacity,
            audit_retention,
            github_api_url,
            secrets_key,
            registry,
            registry_credentials,
            function_base_image,
            owner_credentials,
            runtime,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn server_args(argv: &[&str]) -> (ServerArgs, Option<LogFormat>) {
        let cli = Cli::try_parse_from(argv).expect("parse");
        match cli.command {
            Command::Server(a) => (*a, cli.log_format),
            _ => panic!("not server"),
        }
    }

    #[test]
    fn without_an_emulator_or_a_project_the_server_runs_its_own_broker() {
        let (mut args, _) = server_args(&["rouse", "server", "--data-dir", "/d"]);
        // Whatever the environment says.
        args.pubsub = None;
        args.pubsub_emulator_host = None;
        args.pubsub_project = None;
        args.broker_listen = None;
        let cfg = ServerConfig::resolve(&args, None).expect("resolve");
        let broker = cfg.broker.expect("embedded");
        assert_eq!(broker.listen.to_string(), DEFAULT_BROKER_LISTEN);
        assert_eq!(broker.store, PathBuf::from("/d/broker.db"));
        assert_eq!(cfg.pubsub.project, DEFAULT_EMULATOR_PROJECT);

        args.pubsub_emulator_host = Some("127.0.0.1:9".into());
        let cfg = ServerConfig::resolve(&args, None).expect("resolve");
        assert_eq!(cfg.broker, None, "an emulator host means the emulator");
        assert_eq!(cfg.pubsub.emulator_host.as_deref(), Some("127.0.0.1:9"));

        args.pubsub = Some(PubSubMode::Embedded);
        let cfg = ServerConfig::resolve(&args, None).expect("resolve");
        assert!(
            cfg.broker.is_some() && cfg.pubsub.emulator_host.is_none(),
            "told embedded"
        );

        args.pubsub_emulator_host = None;
        args.pubsub = Some(PubSubMode::Emulator);
        let err = ServerConfig::resolve(&args, None).expect_err("no host");
        assert!(err.contains("--pubsub-emulator-host"), "{err}");
        args.pubsub = Some(PubSubMode::Google);
        let err = ServerConfig::resolve(&args, None).expect_err("no project");
        assert!(err.contains("--pubsub-project"), "{err}");
    }

    #[test]
    fn acme_settings_need_a_ca_names_and_the_ingress() {
        let resolve = |extra: &[&str]| {
            let mut argv = vec![
                "rouse",
                "server",
                "--data-dir",
                "/d",
                "--pubsub",
                "embedded",
            ];
            argv.extend(extra);
            ServerConfig::resolve(&server_args(&argv).0, None)
        };
        let ca = ["--acme-directory", "https://ca.example/dir"];
        let cfg = resolve(&[&ca[..], &["--domain", "a.example", "--domain", "b.example"]].concat())
            .expect("resolve");
        let acme = cfg.ingress_acme.expect("acme");
        assert_eq!(acme.domains, ["a.example", "b.example"]);
        assert_eq!(acme.state_dir, PathBuf::from("/d/acme"));
        // The CA fetches challenges on port 80 of the ingress's host.
        assert_eq!(
            cfg.ingress_http_listen,
            Some("127.0.0.1:80".parse().expect("addr"))
        );
        for (extra, says) in [
            (&ca[..], "--domain"),
            (&["--domain", "a.example"][..], "--acme-directory"),
            (
                &[&ca[..], &["--domain", "*.a.example"]].concat()[..],
                "wildcard",
            ),
            (
                &[
                    &ca[..],
                    &["--domain", "a.example", "--tls-cert", "c", "--tls-key", "k"],
                ]
                .concat()[..],
                "keep one",
            ),
            (
                &[&ca[..], &["--domain", "a.example", "--roles", "api"]].concat()[..],
                "ingress",
            ),
            (
                &["--ingress-http-listen", "127.0.0.1:80"][..],
                "plain HTTP already",
            ),
        ] {
            let e = resolve(extra).expect_err(says);
            assert!(e.contains(says), "{extra:?}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rouse.toml");
        std::fs::write(&path, "[pubsub]\nemulator_hots = \"x\"\n").expect("write");
        let err = FileConfig::load(&path).expect_err("unknown key");
        assert!(err.contains("emulator_hots"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "[pubsub]\ncall_timeout = \"ten\"\n").expect("write");
        let err = FileConfig::load(&path).expect_err("bad duration");
        assert!(err.contains("`ten` is not a duration"), "{err}");
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rouse.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\napi_listen = \"127.0.0.1:9000\"\n[pubsub]\nemulator_host = \"127.0.0.1:1\"\nnetwork_topic = \"main.octue.twined.services\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8");
        let (args, log) = server_args(&[
            "rouse",
            "server",
            "--config",
            p,
            "--api-listen",
            "127.0.0.1:9001",
        ]);
        let cfg = ServerConfig::resolve(&args, log).expect("resolve");
        assert_eq!(cfg.api_listen.port(), 9001, "flag beats file");
        assert_eq!(
            cfg.data_dir,
            PathBuf::from("/from/file"),
            "file beats default"
        );
        assert_eq!(
            cfg.store,
            StoreLocation::Sqlite(PathBuf::from("/from/file/rouse.db"))
        );
        assert_eq!(cfg.pubsub.project, DEFAULT_EMULATOR_PROJECT);
        assert_eq!(cfg.network_topic, "main.octue.twined.services");
        assert_eq!(cfg.log_format, LogFormat::Human);
        assert_eq!(cfg.webhook_listen.port(), 7071, "default");
        assert_eq!(cfg.secrets_key, PathBuf::from("/from/file/secrets.key"));
    }

    #[test]
    fn the_store_is_a_sqlite_file_or_a_postgres_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rouse.toml");
        let p = path.to_str().expect("utf-8");
        let resolve = |file: &str, extra: &[&str]| {
            std::fs::write(&path, format!("data_dir = \"/d\"\n{file}")).expect("write");
            let mut argv = vec!["rouse", "server", "--config", p];
            argv.extend_from_slice(extra);
            let (args, log) = server_args(&argv);
            ServerConfig::resolve(&args, log)
        };
        let url = "postgres://rouse:secret@db.internal:5432/rouse";
        let cfg = resolve("", &["--store", url]).expect("flag");
        assert_eq!(cfg.store, StoreLocation::Postgres(url.into()));
        assert_eq!(
            cfg.store.to_string(),
            "postgres://rouse:***@db.internal:5432/rouse",
            "the password stays out of logs"
        );
        let cfg = resolve("[store]\nurl = \"postgresql://h/db\"\n", &[]).expect("file url");
        assert_eq!(
            cfg.store,
            StoreLocation::Postgres("postgresql://h/db".into())
        );
        let cfg = resolve(
            "[store]\nurl = \"postgresql://h/db\"\n",
            &["--store", "/x.db"],
        )
        .expect("flag beats file");
        assert_eq!(cfg.store, StoreLocation::Sqlite("/x.db".into()));
        let err = resolve("[store]\nurl = \"/var/rouse.db\"\n", &[]).expect_err("not a url");
        assert!(
            err.contains("`/var/rouse.db`") && err.contains("postgres://"),
            "{err}"
        );
        let err = resolve(
            "[store]\nurl = \"postgres://h/db\"\npath = \"/a.db\"\n",
            &[],
        )
        .expect_err("both");
        assert!(err.contains("both"), "{err}");
    }

    #[test]
    fn builder_settings_follow_the_precedence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rouse.toml");
        std::fs::write(
            &path,
            "[pubsub]\nemulator_host = \"127.0.0.1:1\"\n[builder]\nwebhook_listen = \"127.0.0.1:9100\"\ngithub_api_url = \"http://file\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8");
        let (args, log) = server_args(&[
            "rouse",
            "server",
            "--config",
            p,
            "--data-dir",
            "/d",
            "--github-api-url",
            "http://flag",
        ]);
        let cfg = ServerConfig::resolve(&args, log).expect("resolve");
        assert_eq!(cfg.webhook_listen.port(), 9100, "file beats default");
        assert_eq!(cfg.github_api_url, "http://flag", "flag beats file");
    }

    #[test]
    fn audit_retention_defaults_to_30_days_and_0s_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rouse.toml");
        std::fs::write(
            &path,
            "[pubsub]\nemulator_host = \"127.0.0.1:1\"\n[store]\naudit_retention = \"7d\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8");
        let resolve = |argv: &[&str]| {
            let (args, log) = server_args(argv);
            ServerConfig::resolve(&args, log).expect("resolve")
        };
        let from_file = resolve(&["rouse", "server", "--config", p, "--data-dir", "/d"]);
        assert_eq!(
            from_file.audit_retention,
            Some(Duration::from_secs(7 * 86_400))
        );
        let kept = resolve(&[
            "rouse",
            "server",
            "--config",
            p,
            "--data-dir",
            "/d",
            "--audit-retention",
            "0s",
        ]);
        assert_eq!(kept.audit_retention, None, "flag beats file; 0s keeps all");
        let default = resolve(&[
            "rouse",
            "server",
            "--data-dir",
            "/d",
            "--pubsub-emulator-host",
            "127.0.0.1:1",
        ]);
        assert_eq!(default.audit_retention, Some(DEFAULT_AUDIT_RETENTION));
    }

    #[test]
    fn registry_settings_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rouse.toml");
        std::fs::write(
            &path,
            "[pubsub]\nemulator_host = \"127.0.0.1:1\"\n[builder]\nregistry = \"file.example.com/team/\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8");
        let (args, log) = server_args(&["rouse", "server", "--config", p, "--data-dir", "/d"]);
        let cfg = ServerConfig::resolve(&args, log).expect("resolve");
        assert_eq!(cfg.registry.as_deref(), Some("file.example.com/team"));
        let (args, log) = server_args(&[
            "rouse",
            "server",
            "--config",
            p,
            "--data-dir",
            "/d",
            "--registry",
            "myteam",
        ]);
        let err = ServerConfig::resolve(&args, log).expect_err("not a registry host");
        assert!(
            err.contains("`myteam`") && err.contains("--registry"),
            "{err}"
        );
        let (args, log) = server_args(&[
            "rouse",
            "server",
            "--data-dir",
            "/d",
            "--pubsub-emulator-host",
            "127.0.0.1:1",
            "--registry-credentials",
            "/creds.json",
        ]);
        let err = ServerConfig::resolve(&args, log).expect_err("credentials without a registry");
        assert!(
            err.contains("/creds.json") && err.contains("--registry"),
            "{err}"
        );
    }

    #[test]
    fn bad_network_topic_is_refused() {
        let (args, log) = server_args(&[
            "rouse",
            "server",
            "--data-dir",
            "/x",
            "--pubsub-emulator-host",
            "127.0.0.1:1",
            "--network-topic",
            "goog.x",
        ]);
        let err = ServerConfig::resolve(&args, log).expect_err("bad topic");
        assert!(err.contains("`goog.x`"), "{err}");
    }
}

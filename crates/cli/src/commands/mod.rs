//! One module per top-level command.

pub mod ask;
pub mod audit;
pub mod builds;
pub mod executions;
pub mod iam;
pub mod logs;
pub mod policy;
pub mod projects;
pub mod revisions;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod services;
pub mod triggers;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rouse_identity::KeyFile;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Channel, Endpoint};

use crate::args::{Cli, ClientArgs, Command, LogFormat};
use crate::exit::CliError;

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Server(args) => server::run(args, cli.log_format).await,
        other => {
            init_tracing(cli.log_format.unwrap_or(LogFormat::Human), "warn");
            match other {
                Command::Services(cmd) => services::run(cmd).await,
                Command::Revisions(cmd) => revisions::run(cmd).await,
                Command::Ask(args) => ask::run(args).await,
                Command::Executions(cmd) => executions::run(cmd).await,
                Command::Logs(args) => logs::run(args).await,
                Command::Projects(cmd) => projects::run(cmd).await,
                Command::Iam(cmd) => iam::run(cmd).await,
                Command::Audit(cmd) => audit::run(cmd).await,
                Command::Triggers(cmd) => triggers::run(cmd).await,
                Command::Builds(cmd) => builds::run(cmd).await,
                Command::Secrets(cmd) => secrets::run(cmd).await,
                Command::Server(_) => Ok(()),
            }
        }
    }
}

/// Logs go to stderr, so that stdout carries only a command's output.
/// `RUST_LOG` overrides `default_filter`.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// How long the CLI waits to connect to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one API call may take: creating a service makes several Pub/Sub
/// calls, each bounded by the server's own (10 s default) timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the API whose calls carry the caller's token.
pub type Api = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (nothing when the CLI
/// has no credentials: the call is then anonymous).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The CLI's default credentials file: `$XDG_CONFIG_HOME/rouse/credentials.json`,
/// else `~/.config/rouse/credentials.json`.
pub fn default_credentials_path() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("rouse/credentials.json"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".config/rouse/credentials.json"))
}

/// The key the CLI calls with: `--credentials`/`ROUSE_CREDENTIALS` (which must
/// exist), else the default file if it exists, else none (anonymous).
pub fn credentials(args: &ClientArgs) -> Result<Option<KeyFile>, CliError> {
    let path = match &args.credentials {
        Some(path) => path.clone(),
        None => match default_credentials_path() {
            Some(path) if path.exists() => path,
            _ => return Ok(None),
        },
    };
    KeyFile::read(&path).map(Some).map_err(|e| {
        CliError::usage(format!(
            "{e}; pass --credentials FILE (or set ROUSE_CREDENTIALS) with a key file from `rouse iam service-accounts keys create`, or the owner's `<data-dir>/owner-key.json`"
        ))
    })
}

/// A connection to the API, or a clear error naming the endpoint; its calls
/// carry a token signed with the caller's credentials.
pub async fn connect(args: &ClientArgs) -> Result<Api, CliError> {
    let token = match credentials(args)? {
        Some(key) => {
            let token = rouse_identity::sign(
                &key,
                rouse_identity::API_AUDIENCE,
                None,
                SystemTime::now(),
                rouse_identity::DEFAULT_LIFETIME,
            )
            .map_err(|e| CliError::internal(format!("cannot sign an API token: {e}")))?;
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|e| CliError::internal(format!("cannot send the API token: {e}")))?;
            Some(value)
        }
        None => None,
    };
    let endpoint = Endpoint::from_shared(args.endpoint.clone())
        .map_err(|e| {
            CliError::usage(format!(
                "--endpoint `{}` is not a valid URL ({e}); write e.g. http://127.0.0.1:7070",
                args.endpoint
            ))
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::unreachable(&args.endpoint, &source_chain(&e)))?;
    Ok(InterceptedService::new(channel, Bearer(token)))
}

/// Maps an error answer of the API at `endpoint` to the CLI's error.
pub fn status(endpoint: &str) -> impl Fn(tonic::Status) -> CliError + '_ {
    move |s| CliError::from_status(&s, endpoint)
}

/// An error and its causes on one line: transport errors hide the useful part
/// ("connection refused") in their sources.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

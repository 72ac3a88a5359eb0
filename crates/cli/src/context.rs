//! The context every client command runs in: the API's address, the
//! caller's credentials and the output format, from the global flags. It
//! connects (once; every call then carries the caller's token), makes calls
//! (their error answers become [`CliError`]s) and prints what a command
//! shows. Commands check their arguments, build requests and views, and
//! leave the rest to it.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rouse_identity::KeyFile;
use serde::Serialize;
use tokio::sync::OnceCell;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Channel, Endpoint};

use crate::args::{ClientArgs, Format};
use crate::exit::CliError;
use crate::output::{self, PolicyFormat, View};

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

pub struct Context {
    args: ClientArgs,
    format: Option<Format>,
    /// Made by the first call that needs it, so that a command checks its
    /// arguments (usage errors, exit 2) before it tries to reach the API.
    api: OnceCell<Api>,
}

impl Context {
    pub fn new(args: ClientArgs, format: Option<Format>) -> Self {
        Self {
            args,
            format,
            api: OnceCell::new(),
        }
    }

    /// The API's URL, as given.
    pub fn endpoint(&self) -> &str {
        &self.args.endpoint
    }

    /// A client of one of the API's services, e.g. `ctx.client(ServicesClient::new)`.
    pub async fn client<C>(&self, new: impl FnOnce(Api) -> C) -> Result<C, CliError> {
        Ok(new(self.connect().await?))
    }

    /// Awaits one call; an error answer becomes the CLI's error.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CliError> {
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.error(s))
    }

    /// The next message of a streamed answer, `None` at its end.
    pub async fn next<T>(&self, stream: &mut tonic::Streaming<T>) -> Result<Option<T>, CliError> {
        stream.message().await.map_err(|s| self.error(s))
    }

    /// An error answer of the API as the CLI's error.
    pub fn error(&self, status: tonic::Status) -> CliError {
        CliError::from_status(status, &self.args.endpoint)
    }

    /// The key the CLI calls with: `--credentials`/`ROUSE_CREDENTIALS` (which
    /// must exist), else the default file if it exists, else none (anonymous).
    pub fn credentials(&self) -> Result<Option<KeyFile>, CliError> {
        let path = match &self.args.credentials {
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

    /// The connection, made on first use.
    async fn connect(&self) -> Result<Api, CliError> {
        self.api.get_or_try_init(|| self.dial()).await.cloned()
    }

    /// A connection to the API, or a clear error naming the endpoint; its
    /// calls carry a token signed with the caller's credentials.
    async fn dial(&self) -> Result<Api, CliError> {
        let token = match self.credentials()? {
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
        let endpoint = &self.args.endpoint;
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| {
                CliError::usage(format!(
                    "--endpoint `{endpoint}` is not a valid URL ({e}); write e.g. http://127.0.0.1:7070"
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| CliError::Transport {
                endpoint: endpoint.clone(),
                detail: source_chain(&e),
            })?;
        Ok(InterceptedService::new(channel, Bearer(token)))
    }

    /// The output format (`--format`) of everything but IAM policies.
    pub fn format(&self) -> Format {
        self.format.unwrap_or_default()
    }

    /// The output format of an IAM policy: YAML unless `--format json`. Ask
    /// for it before changing anything, so that a wrong format changes nothing.
    pub fn policy_format(&self) -> Result<PolicyFormat, CliError> {
        match self.format {
            None | Some(Format::Yaml) => Ok(PolicyFormat::Yaml),
            Some(Format::Json) => Ok(PolicyFormat::Json),
            Some(Format::Table) => Err(CliError::usage(
                "--format table does not apply to IAM policies; use --format yaml (the default) or --format json",
            )),
        }
    }

    /// Prints one thing (`describe`, `get`, what `create` made).
    pub fn print_one<V: View>(&self, view: &V) -> Result<(), CliError> {
        output::print_one(view, self.format())
    }

    /// Prints a list (`list`).
    pub fn print_list<V: View>(&self, views: &[V]) -> Result<(), CliError> {
        output::print_list(views, self.format())
    }

    /// Prints `value` as JSON or YAML, or drawn by `table` for people.
    pub fn print_value<T: Serialize + ?Sized>(
        &self,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        output::print_value(value, self.format(), table)
    }

    /// Prints an IAM policy in `format` (from [`Self::policy_format`]).
    pub fn print_policy(
        &self,
        policy: &rouse_iam::Policy,
        format: PolicyFormat,
    ) -> Result<(), CliError> {
        output::print_policy(policy, format)
    }

    /// Says what was done, on stderr (stdout carries only output).
    pub fn note(&self, message: impl std::fmt::Display) {
        eprintln!("{message}");
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

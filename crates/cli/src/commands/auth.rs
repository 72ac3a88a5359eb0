//! `rouse auth print-access-token`: a token for `curl` and other HTTP
//! clients, signed with the caller's credentials (as `gcloud auth
//! print-identity-token` is for Cloud Run).

use std::time::{Duration, SystemTime};

use crate::context::Context;
use crate::exit::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Print a bearer token: for one service's HTTP requests through the
    /// ingress (`--service S --project P`), else for the API.
    PrintAccessToken(PrintArgs),
}

#[derive(Debug, clap::Args)]
pub struct PrintArgs {
    /// The service the token is for (its audience); with --project.
    #[arg(long, requires = "project")]
    pub service: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    /// How long the token lives, at most 1h.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
}

pub async fn run(ctx: &Context, cmd: AuthCommand) -> Result<(), CliError> {
    let AuthCommand::PrintAccessToken(args) = cmd;
    let Some(key) = ctx.credentials()? else {
        return Err(CliError::usage(
            "no credentials to sign with: pass --credentials FILE (or set ROUSE_CREDENTIALS) with a key file from `rouse iam service-accounts keys create`, or the owner's `<data-dir>/owner-key.json`",
        ));
    };
    let audience = match (&args.service, &args.project) {
        (Some(service), Some(project)) => {
            let project = rouse_core::ProjectName::parse(project)
                .map_err(|e| CliError::usage(format!("--project: {e}")))?;
            let service = rouse_core::ServiceName::parse(&project, service)
                .map_err(|e| CliError::usage(format!("--service: {e}")))?;
            rouse_identity::service_audience(&project, &service)
        }
        (None, Some(_)) => {
            return Err(CliError::usage(
                "--project names the service's project: give --service too, or neither for an API token",
            ));
        }
        _ => rouse_identity::API_AUDIENCE.to_owned(),
    };
    let token = rouse_identity::sign(&key, &audience, None, SystemTime::now(), args.lifetime)
        .map_err(|e| CliError::usage(format!("--lifetime: {e}")))?;
    println!("{token}");
    Ok(())
}

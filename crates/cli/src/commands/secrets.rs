//! `rouse secrets …`: per-service secrets, injected into instances as
//! environment variables. Values are never shown again.

use std::path::PathBuf;

use rouse_proto as pb;
use rouse_proto::secrets_client::SecretsClient;

use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Set secrets: NAME=VALUE, or --from-file NAME=PATH.
    Set {
        service: String,
        #[command(flatten)]
        project: ProjectArg,
        /// NAME=VALUE pairs (the value is visible in your shell history: prefer --from-file).
        values: Vec<String>,
        /// NAME=PATH: the secret's value is the file's content.
        #[arg(long)]
        from_file: Vec<String>,
    },
    /// The names of a service's secrets (never their values).
    List {
        service: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Delete a secret.
    Delete {
        service: String,
        #[command(flatten)]
        project: ProjectArg,
        name: String,
    },
}

fn split_pair<'a>(flag: &str, pair: &'a str) -> Result<(&'a str, &'a str), CliError> {
    pair.split_once('=').ok_or_else(|| {
        let shown = pair.split(['=']).next().unwrap_or(pair);
        CliError::usage(format!(
            "{flag} `{shown}…` must be NAME=VALUE (or NAME=PATH with --from-file)"
        ))
    })
}

pub async fn run(ctx: &Context, cmd: SecretsCommand) -> Result<(), CliError> {
    match cmd {
        SecretsCommand::Set {
            service,
            project,
            values,
            from_file,
        } => {
            let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
            for v in &values {
                let (name, value) = split_pair("secret", v)?;
                pairs.push((name.to_owned(), value.as_bytes().to_vec()));
            }
            for f in &from_file {
                let (name, path) = split_pair("--from-file", f)?;
                let path = PathBuf::from(path);
                let value = std::fs::read(&path).map_err(|e| {
                    CliError::usage(format!(
                        "--from-file {name}=`{}` cannot be read: {e}",
                        path.display()
                    ))
                })?;
                pairs.push((name.to_owned(), value));
            }
            if pairs.is_empty() {
                return Err(CliError::usage(
                    "give at least one NAME=VALUE or --from-file NAME=PATH",
                ));
            }
            let mut api = ctx.client(SecretsClient::new).await?;
            for (name, value) in pairs {
                ctx.call(api.set_secret(pb::SetSecretRequest {
                    project: project.project.clone(),
                    service: service.clone(),
                    name: name.clone(),
                    value,
                }))
                .await?;
                ctx.note(format_args!("set secret {name}"));
            }
            Ok(())
        }
        SecretsCommand::List { service, project } => {
            let mut api = ctx.client(SecretsClient::new).await?;
            let list = ctx
                .call(api.list_secrets(pb::ListSecretsRequest {
                    project: project.project,
                    service,
                }))
                .await?;
            if list.names.is_empty() {
                ctx.note("no secrets");
            }
            for name in list.names {
                println!("{name}");
            }
            Ok(())
        }
        SecretsCommand::Delete {
            service,
            project,
            name,
        } => {
            let mut api = ctx.client(SecretsClient::new).await?;
            ctx.call(api.delete_secret(pb::DeleteSecretRequest {
                project: project.project,
                service,
                name: name.clone(),
            }))
            .await?;
            ctx.note(format_args!("deleted secret {name}"));
            Ok(())
        }
    }
}

//! `rouse iam service-accounts keys …`: a service account's keys.
//!
//! Keys are generated here, not on the server: `keys create` writes the key
//! file first (never over an existing file), then registers only the public
//! half, and removes the file again if that fails, so the server never knows
//! a key whose private half nobody holds, and a failed call leaves nothing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rouse_identity::{KeyFile, KeyFileError};
use rouse_proto as pb;
use rouse_proto::service_accounts_client::ServiceAccountsClient;

use super::account;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::KeyView;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Generate a key pair, write it to FILE (use it with --credentials) and register its public half.
    Create {
        /// Where to write the key file; must not exist yet.
        file: PathBuf,
        /// The service account, NAME@PROJECT.rouse.
        #[arg(long)]
        iam_account: String,
    },
    /// List a service account's keys.
    List {
        #[arg(long)]
        iam_account: String,
    },
    /// Delete (revoke) a key: tokens signed with it are refused at once.
    Delete {
        key_id: String,
        #[arg(long)]
        iam_account: String,
    },
}

pub async fn run(ctx: &Context, cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Create { file, iam_account } => create(ctx, &file, &iam_account).await,
        KeysCommand::List { iam_account } => {
            let email = account(&iam_account)?.email().to_owned();
            let mut api = ctx.client(ServiceAccountsClient::new).await?;
            let list = ctx
                .call(api.list_keys(pb::ListKeysRequest { email }))
                .await?;
            let views: Vec<_> = list.keys.iter().map(KeyView::from).collect();
            ctx.print_list(&views)
        }
        KeysCommand::Delete {
            key_id,
            iam_account,
        } => {
            let email = account(&iam_account)?.email().to_owned();
            let mut api = ctx.client(ServiceAccountsClient::new).await?;
            ctx.call(api.delete_key(pb::DeleteKeyRequest {
                email: email.clone(),
                key_id: key_id.clone(),
            }))
            .await?;
            ctx.note(format_args!(
                "deleted key `{key_id}` of `{email}`: tokens signed with it are refused from now on"
            ));
            Ok(())
        }
    }
}

async fn create(ctx: &Context, file: &Path, iam_account: &str) -> Result<(), CliError> {
    let account = account(iam_account)?;
    let email = account.email().to_owned();
    // Early, for a clear error before any call; `write_new` still refuses
    // atomically should the file appear in between.
    if file.exists() {
        return Err(CliError::usage(format!(
            "key file {} already exists; choose another FILE or delete it first",
            file.display()
        )));
    }
    // Connect first: an unreachable server then leaves no file behind.
    let mut api = ctx.client(ServiceAccountsClient::new).await?;
    let (key, entry) = KeyFile::generate(account, ctx.endpoint(), SystemTime::now())
        .map_err(|e| CliError::internal(e.to_string()))?;
    key.write_new(file).map_err(|e| match e {
        KeyFileError::AlreadyExists { .. } => {
            CliError::usage(format!("{e}; choose another FILE or delete it first"))
        }
        other => CliError::internal(other.to_string()),
    })?;
    let created = ctx
        .call(api.create_key(pb::CreateKeyRequest {
            email: email.clone(),
            key_id: entry.key_id.clone(),
            public_key: entry.public_key.to_base64(),
        }))
        .await;
    if let Err(e) = created {
        // The key was not registered: a file holding it would only mislead.
        return Err(match std::fs::remove_file(file) {
            Ok(()) => e,
            Err(r) => e.and(&format!(
                "; the unregistered key file {} could not be removed ({r}), delete it",
                file.display()
            )),
        });
    }
    ctx.note(format_args!(
        "created key `{}` for `{email}` in {}; use it with --credentials {} (or ROUSE_CREDENTIALS)",
        entry.key_id,
        file.display(),
        file.display()
    ));
    Ok(())
}

//! `rouse admin`: what an administrator does to the store itself, on the
//! machine that holds it (no API call: file access is the permission).

use std::path::{Path, PathBuf};

use rouse_server::StoreLocation;

use crate::exit::CliError;

/// Which store: the server's flags of the same names.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The server's data directory [default: $XDG_DATA_HOME/rouse, else
    /// ~/.local/share/rouse].
    #[arg(long, env = "ROUSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store, if not `<data-dir>/rouse.db`.
    #[arg(long, env = "ROUSE_STORE")]
    store: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Copy the store to a new SQLite file, consistent while servers run
    /// (restore: stop the servers, put the file in place of the store,
    /// keep the same secrets key).
    Backup {
        /// The new file (never overwritten).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write what is configured (services, revisions, routing, triggers,
    /// sealed secrets, IAM, nodes) to a new JSON file with a format
    /// version; executions, events, audit and builds stay out.
    Export {
        /// The new file (never overwritten).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Load an export into an empty store (a new data dir, before any
    /// server starts on it; give it the same secrets key).
    Import {
        /// A file `rouse admin export` wrote.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The SQLite file `args` name; PostgreSQL is refused with `how`, the
/// PostgreSQL tool to use instead.
fn sqlite_path(args: StoreArgs, how: &str) -> Result<PathBuf, CliError> {
    let location = match args.store {
        Some(store) => StoreLocation::parse(&store),
        None => {
            let dir = match args.data_dir {
                Some(dir) => dir,
                None => crate::config::default_data_dir().map_err(CliError::usage)?,
            };
            StoreLocation::Sqlite(dir.join("rouse.db"))
        }
    };
    match location {
        StoreLocation::Sqlite(path) => Ok(path),
        postgres @ StoreLocation::Postgres(_) => Err(CliError::usage(format!(
            "the store is PostgreSQL ({postgres}); use PostgreSQL's own tools: {how}"
        ))),
    }
}

fn refuse_existing(file: &Path) -> Result<(), CliError> {
    match file.exists() {
        true => Err(CliError::usage(format!(
            "{} exists already; name a new file (it is never overwritten)",
            file.display()
        ))),
        false => Ok(()),
    }
}

pub fn run(cmd: AdminCommand) -> Result<(), CliError> {
    let store_error = |e: rouse_store::StoreError| CliError::usage(e.to_string());
    match cmd {
        AdminCommand::Backup { file, store } => {
            let how = format!(
                "`pg_dump --format=custom --file {} '<the URL>'` (and `pg_restore` to restore)",
                file.display()
            );
            let source = sqlite_path(store, &how)?;
            let backup = rouse_store::backup_sqlite(&source, &file).map_err(store_error)?;
            println!(
                "backed up {} to {}: {} services, {} revisions, schema version {}, {} bytes",
                source.display(),
                backup.path.display(),
                backup.services,
                backup.revisions,
                backup.schema_version,
                backup.bytes
            );
        }
        AdminCommand::Export { file, store } => {
            let source = sqlite_path(
                store,
                "`pg_dump` (a PostgreSQL store is backed up and moved with it)",
            )?;
            refuse_existing(&file)?;
            let doc = rouse_store::export_sqlite(&source).map_err(store_error)?;
            let mut text = serde_json::to_string_pretty(&doc)
                .map_err(|e| CliError::internal(format!("cannot write the export: {e}")))?;
            text.push('\n');
            std::fs::write(&file, text)
                .map_err(|e| CliError::usage(format!("cannot write {}: {e}", file.display())))?;
            let counts = doc["tables"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(table, rows)| Some(format!("{table} {}", rows.as_array()?.len())))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "exported {} to {}: {counts}",
                source.display(),
                file.display()
            );
        }
        AdminCommand::Import { file, store } => {
            let target = sqlite_path(store, "`pg_restore` of a `pg_dump`")?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                CliError::usage(format!(
                    "{} is not JSON ({e}); give a file `rouse admin export` wrote",
                    file.display()
                ))
            })?;
            let imported = rouse_store::import_sqlite(&target, &doc).map_err(store_error)?;
            let counts = imported
                .iter()
                .map(|(table, n)| format!("{table} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "imported {} into {}: {counts}",
                file.display(),
                target.display()
            );
        }
    }
    Ok(())
}

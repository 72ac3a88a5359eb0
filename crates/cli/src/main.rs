//! `rouse`: `rouse server` runs the platform; every other subcommand is a
//! client of its gRPC API. Exit codes: 0 success, 1 a failure on the server
//! side (or reaching it), 2 a usage error (bad flags, config or argument values).

mod args;
mod commands;
mod config;
mod context;
mod exit;
mod output;
mod progress;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return exit::report(exit::CliError::internal(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => exit::report(e),
    }
}

//! `herald`: parses the command line, sets up logging, and runs a node
//! until SIGTERM (or mints a development token). Everything else is the
//! library's (`herald::run`).

use std::io::IsTerminal;

use clap::Parser;
use herald::config::{Cli, Command};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colour codes only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    match cli.command {
        Command::Serve(config) => {
            let stop = CancellationToken::new();
            let signalled = stop.clone();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                signalled.cancel();
            });
            herald::run(*config, stop).await?;
        }
        Command::Token(args) => println!("{}", herald::auth::mint(&args)?),
    }
    Ok(())
}

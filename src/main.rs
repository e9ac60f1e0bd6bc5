//! Command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use cdc_indexer::{config::Config, pipeline, status};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cdc-indexer",
    version,
    about = "Streams MySQL/MariaDB binlog changes into Elasticsearch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the indexer until SIGTERM / Ctrl-C.
    Run {
        #[arg(long, short, default_value = "cdc-indexer.toml")]
        config: PathBuf,
    },
    /// Show the checkpoint, the server position and the lag.
    Status {
        #[arg(long, short, default_value = "cdc-indexer.toml")]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path, std::env::vars()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CDC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            tracing::info!(config = ?cfg, "starting");
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested; flushing");
                let _ = tx.send(true);
            });
            match pipeline::run(cfg, rx).await {
                Ok(()) => {
                    tracing::info!("stopped cleanly");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "fatal");
                    eprintln!("fatal: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { config, json } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match status::gather(&cfg).await {
                Ok(s) if json => {
                    println!("{}", serde_json::to_string_pretty(&s).expect("json"));
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    print!("{}", status::render(&s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! Command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use cdc_indexer::{checker, config::Config, pipeline, status};
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: decode and transform allocate per row and per value, and
/// malloc/free were ~20% of catch-up CPU (issue #7).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Inspect or replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[arg(long, short, default_value = "cdc-indexer.toml", global = true)]
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
    /// Compare the database with the index (random sample, or every row with --full); exit
    /// code 0 clean, 1 drift found, 2 error, 3 incomplete (something left unverified).
    Check {
        #[arg(long, short, default_value = "cdc-indexer.toml")]
        config: PathBuf,
        /// Compare every row, by primary-key ranges, instead of a random sample.
        #[arg(long, conflicts_with = "sample")]
        full: bool,
        /// Primary keys to sample per table (default: check.sample_rows).
        #[arg(long)]
        sample: Option<usize>,
        /// Seed of the sample (default: random; the report shows it so a run can be replayed).
        #[arg(long)]
        seed: Option<u64>,
        /// Re-index exactly the differing rows, and delete extra documents.
        #[arg(long)]
        repair: bool,
        /// Only the table mapping writing to this index (alias).
        #[arg(long)]
        index: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the check's metrics (Prometheus text format) to this file, e.g. for
        /// node-exporter's textfile collector.
        #[arg(long)]
        metrics_file: Option<PathBuf>,
    },
    /// Customer-service search: name, last 4 phone digits, date, phone, order number, address.
    Search {
        /// Free text, e.g. "张三 5678 20260125", "+86 138-1234-5678", "文三路".
        text: String,
        #[arg(long, short, default_value = "cdc-indexer.toml")]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Most orders to show.
        #[arg(long, default_value_t = 20)]
        size: usize,
    },
    /// Zero-downtime reindex of one table into `<alias>_v{N+1}`, then an atomic alias swap.
    /// Run it again to resume after a crash.
    Reindex {
        /// The table's index alias (e.g. `orders`) or a `database.table` its mapping covers.
        table: String,
        #[arg(long, short, default_value = "cdc-indexer.toml")]
        config: PathBuf,
        /// Swap the alias back to the previous index and delete the new one.
        #[arg(long, conflicts_with = "finish")]
        rollback: bool,
        /// Delete the previous index now (it is otherwise kept for `reindex.retention_hours`).
        #[arg(long)]
        finish: bool,
        /// Backfill rate limit in rows per second (0 = unlimited); default `reindex.rows_per_sec`.
        #[arg(long)]
        rows_per_sec: Option<u64>,
        /// Rows per backfill chunk; default `reindex.chunk_rows`.
        #[arg(long)]
        chunk_rows: Option<u64>,
        /// Re-snapshot only the rows matching this SQL condition, in place (no new index).
        #[arg(long = "where", value_name = "SQL", conflicts_with_all = ["rollback", "finish", "keys"])]
        condition: Option<String>,
        /// Re-snapshot these document ids in place (comma-separated); ids whose row is gone
        /// are deleted from the index.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["rollback", "finish"])]
        keys: Option<Vec<String>>,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead-lettered changes.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-send dead-lettered documents (after fixing the cause); what succeeds leaves the file.
    Replay {
        /// Only report what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
}

async fn dlq(config: &std::path::Path, action: DlqAction) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = cfg.dead_letter_path();
    match action {
        DlqAction::List { json } => match cdc_indexer::dead_letter::read_all(&path) {
            Ok(records) => {
                for r in &records {
                    if json {
                        println!("{}", serde_json::to_string(r).expect("json"));
                    } else {
                        let reason: String = r.reason.chars().take(100).collect();
                        println!(
                            "{}\t{}\t{}\t{}\t{}\tv{}\t{}\t{reason}",
                            r.at,
                            r.table,
                            r.index,
                            r.id.as_deref().unwrap_or("-"),
                            r.op,
                            r.version,
                            r.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                        );
                    }
                }
                if !json {
                    eprintln!("{} dead-lettered change(s) in {}", records.len(), path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        DlqAction::Replay { dry_run } => {
            let client = match cdc_indexer::sink::client(&cfg.sink) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let timeout = std::time::Duration::from_millis(cfg.sink.request_timeout_ms);
            match cdc_indexer::dead_letter::replay(&client, timeout, &path, dry_run).await {
                Ok(r) => {
                    println!(
                        "written {}, stale {}, still failing {}, need a repair from the database {}",
                        r.written, r.stale, r.kept, r.need_repair
                    );
                    if r.kept + r.need_repair > 0 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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
            if let Some(addr) = cfg.metrics.address() {
                if let Err(e) = cdc_indexer::health::start(addr).await {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
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
        Command::Dlq { action, config } => dlq(&config, action).await,
        Command::Reindex {
            table,
            config,
            rollback,
            finish,
            rows_per_sec,
            chunk_rows,
            condition,
            keys,
        } => {
            use cdc_indexer::reindex::{self, Action, Options, Part};
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            let action = match (rollback, finish, condition, keys) {
                (true, ..) => Action::Rollback,
                (_, true, ..) => Action::Finish,
                (_, _, Some(c), _) => Action::Resnapshot(Part::Where(c)),
                (_, _, _, Some(k)) => Action::Resnapshot(Part::Keys(k)),
                _ => Action::Run,
            };
            use std::io::IsTerminal;
            let opts = Options {
                table,
                action,
                rows_per_sec,
                chunk_rows,
                progress_bar: std::io::stderr().is_terminal(),
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("stop requested; saving the reindex state");
                let _ = tx.send(true);
            });
            match reindex::run(&cfg, &opts, rx).await {
                Ok(summary) => {
                    println!("{}", summary.0);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "reindex stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Search {
            text,
            config,
            json,
            size,
        } => search(&config, &text, json, size).await,
        Command::Check {
            config,
            full,
            sample,
            seed,
            repair,
            index,
            json,
            metrics_file,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            let mode = if full {
                checker::Mode::Full
            } else {
                checker::Mode::Sample {
                    rows: sample.unwrap_or(cfg.check.sample_rows),
                    seed: seed.unwrap_or_else(rand::random),
                }
            };
            check(
                &cfg,
                checker::Options { mode, repair, index },
                json,
                metrics_file.as_deref(),
            )
            .await
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

/// `cdc-indexer check`: the report on stdout, the exit code per [`checker`]'s `EXIT_*`.
async fn check(cfg: &Config, opts: checker::Options, json: bool, metrics_file: Option<&std::path::Path>) -> ExitCode {
    if let Some(i) = &opts.index {
        if !cfg.tables.iter().any(|t| &t.index == i) {
            eprintln!("error: no table mapping writes to index {i}");
            return ExitCode::from(checker::EXIT_ERROR);
        }
    }
    let result = checker::run(cfg, None, &opts).await;
    if let Some(path) = metrics_file {
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, cdc_indexer::metrics::get().render_check()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            eprintln!("error: writing {}: {e}", path.display());
        }
    }
    match result {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("json"));
            } else {
                print!("{}", report.render());
            }
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(checker::EXIT_ERROR)
        }
    }
}

/// `cdc-indexer search`; the input is never logged or echoed (it may hold a phone number).
async fn search(config: &std::path::Path, text: &str, json: bool, size: usize) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let searcher = cdc_indexer::tokenize::Tokenizer::load(cfg.search.user_dict.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|t| {
            let client = cdc_indexer::sink::client(&cfg.sink).map_err(|e| e.to_string())?;
            cdc_indexer::search::Searcher::new(client, &cfg, std::sync::Arc::new(t)).map_err(|e| e.to_string())
        });
    let searcher = match searcher {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match searcher.search(text, size).await {
        Ok(r) if json => {
            println!("{}", serde_json::to_string_pretty(&r).expect("json"));
            ExitCode::SUCCESS
        }
        Ok(r) => {
            print!("{}", cdc_indexer::search::render(&r, searcher.builder().phone_fields()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
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

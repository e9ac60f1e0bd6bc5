//! Wiring: `source → transform → sink → checkpoint`. No logic of its own lives here.
//!
//! Shutdown order is what makes a graceful stop lose nothing: the source stops first (at any
//! point: only transaction boundaries are checkpointed), the transform drains what was read,
//! the sink lanes flush and resolve every batch, and only then does the committer write the
//! last checkpoint whose changes are all acknowledged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::change::SourceEvent;
use crate::checkpoint::{commit_loop, CheckpointError, CheckpointStore};
use crate::config::Config;
use crate::dead_letter::{now_secs, DeadLetters};
use crate::heartbeat::{self, HeartbeatTable};
use crate::indexes::{self, IndexError};
use crate::metrics::{self, ProbeKind};
use crate::sink::{self, Shared, Sink, SinkError};
use crate::snapshot::{self, SnapshotError};
use crate::source::{self, Source, SourceError};
use crate::transform::{Mapping, Router};
use crate::{binlog_watch, retry, transform_pool};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot open the dead-letter file {path}: {source}")]
    DeadLetter { path: String, source: std::io::Error },
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenize::TokenizerError),
    #[error("internal task failure: {0}")]
    Task(String),
}

/// Runs the indexer until `shutdown` turns true or a fatal error occurs.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), PipelineError> {
    let mut store = CheckpointStore::open(&cfg.checkpoint_path())?;
    let dead_letters =
        DeadLetters::open(&cfg.dead_letter_path(), cfg.state.dead_letter_segment_bytes).map_err(|source| {
            PipelineError::DeadLetter {
                path: cfg.dead_letter_path().display().to_string(),
                source,
            }
        })?;
    if let Some(c) = store.current() {
        metrics::get().checkpointed(c);
    }
    let client = sink::client(&cfg.sink)?;
    let checkpoint_path = cfg.checkpoint_path();
    let patience = Duration::from_millis(cfg.source.reconnect_max_ms);
    for t in &cfg.tables {
        let existing = store.current().map(|_| checkpoint_path.as_path());
        retry::until_ok("preparing the index", patience, IndexError::is_transient, || {
            indexes::ensure(&client, &t.index, &t.mapping, existing)
        })
        .await?;
    }
    let info = retry::until_ok(
        "checking the source server",
        patience,
        SourceError::is_transient,
        || async {
            let mut conn = source::connect(&source::Endpoint::main(&cfg.source)).await?;
            source::preflight(&mut conn).await
        },
    )
    .await?;
    tracing::info!(server = %info.version, position = %info.position, "source checked");
    // Monitoring helpers: they never fail the pipeline and are stopped when it returns.
    let mut helpers = vec![tokio::spawn(binlog_watch::run(
        source::Endpoint::main(&cfg.source),
        info.mariadb,
        shutdown.clone(),
    ))];
    // Previous indexes of finished reindexes are deleted once their retention is over.
    helpers.push(tokio::spawn(crate::reindex::retention_loop(
        cfg.clone(),
        shutdown.clone(),
    )));
    let heartbeat = HeartbeatTable::parse(&cfg.source.heartbeat_table);
    if let Some(table) = &heartbeat {
        metrics::get().enable_heartbeat();
        helpers.push(tokio::spawn(heartbeat::write_loop(
            source::Endpoint::heartbeat(&cfg.source),
            table.clone(),
            cfg.source.server_id,
            shutdown.clone(),
        )));
    }

    let zone = cfg.source.offset();
    // One jieba instance (≈150 ms, ≈32 MB) shared by every mapping, built only if needed.
    let tokenizer = match crate::transform::needs_tokenizer(&cfg.tables) {
        true => Some(Arc::new(crate::tokenize::Tokenizer::load(
            cfg.search.user_dict.as_deref(),
        )?)),
        false => None,
    };
    // The scheduled consistency check (sampling, the compensation job): a helper like the
    // monitors above, so its failures never stop the pipeline.
    if cfg.check.interval_seconds > 0 {
        helpers.push(tokio::spawn(crate::checker::schedule(
            cfg.clone(),
            tokenizer.clone(),
            shutdown.clone(),
        )));
    }
    let router = Router::new(
        cfg.tables
            .iter()
            .map(|t| Mapping::new(t, zone, tokenizer.as_ref()))
            .collect(),
    );
    let filter = Arc::new(router.table_filter());

    let shared = Shared::new(dead_letters);
    let mut tasks: JoinSet<Result<(), PipelineError>> = JoinSet::new();
    let sink = Sink::start(client, &cfg.sink, shared.clone(), &mut tasks);
    let (tx, rx) = mpsc::channel::<SourceEvent>(cfg.sink.queue_capacity);
    let queue = tx.downgrade();
    metrics::get().probe(ProbeKind::SourceQueue, move || {
        queue.upgrade().map_or(0, |t| t.max_capacity() - t.capacity())
    });
    let tracked = Arc::downgrade(&shared);
    metrics::get().probe(ProbeKind::Unacked, move || {
        tracked
            .upgrade()
            .map_or(0, |s| s.tracker.lock().expect("tracker lock").in_flight())
    });

    // Source: resume from the checkpoint, or load first, or start at the current end.
    let resume = store.current().map(|c| c.position.clone());
    let marker = cfg.state.dir.join("initial-load.json");
    match &resume {
        Some(r) => {
            source::check_retention(&info, r)?;
            snapshot::forget_interrupted(&marker)?;
        }
        // An interrupted initial load must be able to replay from where it began.
        None => {
            if let Some(first) = snapshot::interrupted(&marker)? {
                source::check_retention(&info, &first)?;
            }
        }
    }
    let source_cfg = cfg.source.clone();
    let source_shutdown = shutdown.clone();
    let heartbeat_name = heartbeat.as_ref().map(HeartbeatTable::qualified_name);
    tasks.spawn(async move {
        let start = match resume {
            Some(r) => r,
            None if source_cfg.initial_load => {
                let f = filter.clone();
                snapshot::initial_load(
                    &source::Endpoint::main(&source_cfg),
                    info.mariadb,
                    source_cfg.snapshot_chunk_rows,
                    &*f,
                    &marker,
                    &tx,
                )
                .await?
            }
            None => {
                let p = info.position.clone();
                let _ = tx
                    .send(SourceEvent::Commit {
                        position: p.clone(),
                        source_ts: now_secs() as u32,
                    })
                    .await;
                p
            }
        };
        let f = filter.clone();
        // The heartbeat table is read too: the transform consumes its rows.
        let hb = heartbeat_name;
        Source::new(
            source_cfg,
            info,
            start,
            Box::new(move |n: &str| f(n) || hb.as_deref() == Some(n)),
        )
        .run(tx, source_shutdown)
        .await?;
        Ok(())
    });

    let beat = heartbeat.map(|t| (t, cfg.source.server_id));
    tasks.spawn(transform_pool::run(
        rx,
        router,
        beat,
        cfg.pipeline.transform_workers,
        sink,
    ));

    let (stop_commit, stop_rx) = watch::channel(false);
    let committer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            commit_loop(
                &shared.tracker,
                &shared.acked,
                &mut store,
                Duration::from_millis(200),
                stop_rx,
            )
            .await
        })
    };

    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let r = joined.map_err(|e| PipelineError::Task(e.to_string())).and_then(|r| r);
        if let Err(e) = r {
            tracing::error!(error = %e, "stopping");
            tasks.abort_all();
            result = Err(e);
            break;
        }
    }
    let _ = stop_commit.send(true);
    committer.await.map_err(|e| PipelineError::Task(e.to_string()))??;
    for h in helpers {
        h.abort();
    }
    result
}

//! Zero-downtime reindex: rebuild a table's index from the primary and swap the alias atomically.
//!
//! # Contract
//!
//! `cdc-indexer reindex <table>` builds `<alias>_v{N+1}` from the current mapping file, fills it
//! from the database and moves the alias to it in one `_aliases` request, while the running
//! indexer keeps serving and updating the alias. It needs no coordination with that indexer.
//! The old index is kept for `reindex --rollback` until `reindex --finish` or until
//! `reindex.retention_hours` have passed (a running indexer then deletes it). A killed job is
//! resumed by running the same command again; two jobs for one alias exclude each other (lock
//! file). Progress and all resume state live in `<state.dir>/reindex-<alias>.json`.
//!
//! # How, and why nothing is lost, overwritten by a stale row, or resurrected
//!
//! 1. The job records the binlog end P0, creates the new index with `index.gc_deletes` raised
//!    (`reindex.gc_deletes`) and a job alias `<alias>_reindex` (bulk writes use
//!    `require_alias`), and checks that the cluster keeps a delete tombstone for an external
//!    version on a missing document (a delete at version 2, then an index at version 1, must be
//!    answered 409); otherwise it refuses to run.
//! 2. It runs its own binlog stream from P0 through the same source, transform and sink as the
//!    indexer, into the job alias. Every change committed after P0 thus reaches the new index,
//!    with its usual binlog-derived version.
//! 3. It backfills by primary-key chunks. Each chunk is read in its own short
//!    `START TRANSACTION WITH CONSISTENT SNAPSHOT` (no global lock on MariaDB), whose binlog
//!    position S the server reports, and every row is written with version `Version::at(S)`.
//!    For any document, the final state is that of its newest change, whatever the arrival
//!    order: a chunk row shows the row as of S, and every change after S has a higher version
//!    (see [`crate::position`]), so a later update wins (`external_gte`) and a later delete wins
//!    too, because its tombstone, kept while `gc_deletes` is raised, makes the older snapshot
//!    write a 409. Changes before S are either older than the chunk row (which then wins, and
//!    already contains them) or, for rows not in the chunk because they were deleted before S,
//!    deletes whose only effect is a tombstone. A row whose key moved between chunks is caught
//!    by the stream, which has every change after P0 and every chunk was read after P0. Each
//!    table's backfill stops at the largest key the table had when it began (read after P0):
//!    a row that existed at P0 either still exists then, with a key at most that large, or was
//!    deleted or re-keyed after P0, which the stream carries; rows inserted later come through
//!    the stream too, so a busy table's inserts cannot keep the backfill from ending.
//! 4. When the backfill is done and the stream has caught up with the binlog end, the job
//!    verifies counts exactly: it pauses its stream at a transaction boundary X (the index is
//!    then frozen: nobody else writes it yet), counts the index, counts the rows in one
//!    consistent snapshot at S ≥ X, resumes, and adds the net inserts minus deletes the stream
//!    saw in the transactions between X and S. A mismatch (e.g. dead-lettered rows) stops the
//!    job before the swap.
//! 5. It records the indexer's checkpoint R (everything up to R is in the old index), swaps the
//!    alias, records the binlog end P1 right after the swap, and keeps streaming into the new
//!    index until everything up to P1 is acknowledged. A change before P1 may have been written
//!    by the indexer to the old index only: the job's stream writes it to the new one too. A
//!    change after P1 was committed after the swap, so the indexer reads it (and sends its bulk
//!    request) after the swap, through the alias, into the new index. Only while the two
//!    writers overlap can an older version arrive after a newer delete, which the raised
//!    `gc_deletes` covers; it is restored afterwards.
//!
//! Readers of the alias see the old index until the swap and the new one, complete and caught
//! up to within the stream's lag, after it: the count never drops to a half-built index and no
//! query fails.
//!
//! Resuming: chunks count as finished only when every row of them is acknowledged by
//! Elasticsearch, and the job stream's position only advances over acknowledged transactions
//! (both persisted). A restarted job streams again from its saved position (replays are
//! idempotent) and reads the remaining chunks in new snapshots, so the argument above holds
//! across any number of crashes. A crash between the swap and saving it is detected by looking
//! at the alias.
//!
//! Rollback is the same catch-up in reverse: the job alias moves to the old index, its
//! `gc_deletes` is raised, a stream from R (the indexer's checkpoint before the swap: all the
//! old index is guaranteed to hold) replays every later change into it, counts are verified,
//! the alias swaps back, and the stream runs until the binlog end P2 recorded right after that
//! swap. The new index is then deleted.
//!
//! `--where` / `--keys` re-snapshot part of a table in place (see [`Part`]): no new index and no
//! stream, because the running indexer applies every concurrent change to the live index. The
//! argument of step 3 carries over unchanged (the raised `gc_deletes` now protects the
//! indexer's deletes), and a key missing from a chunk's snapshot is deleted at that snapshot's
//! version, which a later insert of that key outranks.
//!
//! Errors: a transient failure (a server unreachable or too slow to answer) reruns the current
//! step from the saved state after a backoff; anything else stops the job with a message, and
//! running the command again resumes it.
//!
//! The job's stream uses `reindex.server_id` (default `source.server_id + 1`) so the server
//! does not confuse it with the indexer's. Waiting for "caught up" means the stream has
//! acknowledged a transaction boundary at or after the binlog end; on a source that has been
//! idle since a binlog rotation that needs one more write (the heartbeat table provides it).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elasticsearch::Elasticsearch;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::change::{RowOp, SourceEvent};
use crate::checkpoint::{Boundary, CheckpointStore};
use crate::config::{Config, TableMapping};
use crate::dead_letter::{now_secs, DeadLetter, DeadLetters};
use crate::indexes::{self, IndexError};
use crate::pipeline::PipelineError;
use crate::position::{BinlogPosition, Version};
use crate::sink::{self, Shared, Sink, SinkError};
use crate::snapshot::{self, ChunkReader, SnapshotError};
use crate::source::{self, ServerInfo, Source, SourceError};
use crate::transform::Mapping;

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("no table mapping has index `{0}` or a source matching `{0}`; name the index (alias) or a `database.table` of the config")]
    UnknownTable(String),
    #[error("alias `{0}` does not exist or points to no index; run the indexer once (it creates `{0}_v1`) before reindexing")]
    NoAlias(String),
    #[error("reindex job state {path}: {reason}")]
    State { path: String, reason: String },
    #[error("{0}")]
    WrongPhase(String),
    #[error("another reindex of `{alias}` is running (it holds {lock})")]
    Locked { alias: String, lock: String },
    #[error("index {0} did not keep a delete tombstone for an external version: an older snapshot row could resurrect a deleted document, so the reindex cannot run safely on this cluster (check that index.gc_deletes can be set)")]
    NoTombstones(String),
    #[error("count check failed for {index}: it holds {indexed} documents but the database had {expected} matching rows at the same binlog position; see the dead-letter file for rows that could not be indexed, fix the cause and run the reindex again (it resumes)")]
    Mismatch { index: String, indexed: u64, expected: i64 },
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
}

impl From<PipelineError> for ReindexError {
    fn from(e: PipelineError) -> Self {
        ReindexError::Pipeline(Box::new(e))
    }
}

impl ReindexError {
    /// Whether running the step again (from the saved state) can help.
    fn is_transient(&self) -> bool {
        let ReindexError::Pipeline(e) = self else {
            return false;
        };
        match &**e {
            PipelineError::Index(e) => e.is_transient(),
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Snapshot(e) => e.is_transient(),
            _ => false,
        }
    }
}

macro_rules! via_pipeline {
    ($($t:ty),*) => {$(
        impl From<$t> for ReindexError {
            fn from(e: $t) -> Self {
                PipelineError::from(e).into()
            }
        }
    )*};
}
via_pipeline!(SourceError, SnapshotError, SinkError, IndexError);

impl From<mysql_async::Error> for ReindexError {
    fn from(e: mysql_async::Error) -> Self {
        SnapshotError::Query(e).into()
    }
}

/// What the command was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build the new index and swap (or resume doing so).
    Run,
    /// Swap back to the old index and drop the new one.
    Rollback,
    /// Drop the old index now.
    Finish,
    /// Re-snapshot part of the table into the live index.
    Resnapshot(Part),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Index alias of a table mapping, or a `database.table` one matches.
    pub table: String,
    pub action: Action,
    /// Overrides `reindex.rows_per_sec` (0 = unlimited).
    pub rows_per_sec: Option<u64>,
    /// Overrides `reindex.chunk_rows`.
    pub chunk_rows: Option<u64>,
    /// Draw a progress bar (stderr is a terminal) instead of periodic log lines.
    pub progress_bar: bool,
}

/// Re-snapshot part of a table in place (no new index, no swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Rows matching an SQL condition, e.g. `occurred_at >= '2026-01-01'`.
    Where(String),
    /// Documents by `_id` (tables keyed by a single-column primary key); ids whose row no
    /// longer exists are deleted from the index.
    Keys(Vec<String>),
}

/// The job state, persisted after every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    alias: String,
    old_index: String,
    new_index: String,
    /// P0: where the job's stream began.
    start: BinlogPosition,
    /// Everything before this is acknowledged by the index the job currently writes.
    stream: BinlogPosition,
    /// Tables whose backfill is complete.
    done_tables: Vec<String>,
    /// The last finished chunk of the table being backfilled.
    cursor: Option<Cursor>,
    /// Rows backfilled and acknowledged.
    rows: u64,
    /// The indexer's checkpoint just before the swap: where a rollback replays from.
    rollback_from: Option<BinlogPosition>,
    /// `index.gc_deletes` to restore on the new / old index (`None`: the cluster default).
    gc_new: Option<String>,
    gc_old: Option<String>,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    table: String,
    last_key: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
enum Phase {
    Backfill,
    Swapping,
    Draining {
        until: BinlogPosition,
    },
    /// Done; the old index is kept until `swapped_at + retention`.
    Swapped {
        swapped_at: u64,
    },
    RollingBack,
    RollbackSwapping,
    RollbackDraining {
        until: BinlogPosition,
    },
}

/// A primary-key value as persisted in the job state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Key {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    /// Hex.
    Bytes(String),
    Date(u16, u8, u8, u8, u8, u8, u32),
    Time(bool, u32, u8, u8, u8, u32),
}

impl Key {
    fn from_value(v: &mysql_async::Value) -> Key {
        use mysql_async::Value as M;
        match v {
            M::NULL => Key::Null,
            M::Int(i) => Key::Int(*i),
            M::UInt(u) => Key::UInt(*u),
            M::Float(f) => Key::Float(*f),
            M::Double(d) => Key::Double(*d),
            M::Bytes(b) => Key::Bytes(b.iter().map(|x| format!("{x:02x}")).collect()),
            M::Date(y, mo, d, h, mi, s, us) => Key::Date(*y, *mo, *d, *h, *mi, *s, *us),
            M::Time(neg, d, h, mi, s, us) => Key::Time(*neg, *d, *h, *mi, *s, *us),
        }
    }

    fn to_value(&self) -> Option<mysql_async::Value> {
        use mysql_async::Value as M;
        Some(match self {
            Key::Null => M::NULL,
            Key::Int(i) => M::Int(*i),
            Key::UInt(u) => M::UInt(*u),
            Key::Float(f) => M::Float(*f),
            Key::Double(d) => M::Double(*d),
            Key::Bytes(h) => {
                if h.len() % 2 != 0 {
                    return None;
                }
                let bytes: Option<Vec<u8>> = (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                    .collect();
                M::Bytes(bytes?)
            }
            Key::Date(y, mo, d, h, mi, s, us) => M::Date(*y, *mo, *d, *h, *mi, *s, *us),
            Key::Time(neg, d, h, mi, s, us) => M::Time(*neg, *d, *h, *mi, *s, *us),
        })
    }
}

fn state_path(cfg: &Config, alias: &str) -> PathBuf {
    cfg.state.dir.join(format!("reindex-{alias}.json"))
}

fn job_alias(alias: &str) -> String {
    format!("{alias}_reindex")
}

fn state_err(path: &Path, reason: impl std::fmt::Display) -> ReindexError {
    ReindexError::State {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn load(path: &Path) -> Result<Option<Job>, ReindexError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            state_err(
                path,
                format!("corrupt ({e}); restore it or delete it together with the half-built index"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err(path, e)),
    }
}

/// Replaces the state file atomically (temp file, fsync, rename).
fn save(path: &Path, job: &Job) -> Result<(), ReindexError> {
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(job).expect("json"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| state_err(path, e))
}

fn forget(path: &Path) -> Result<(), ReindexError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(state_err(path, e)),
        _ => Ok(()),
    }
}

/// An exclusive `flock` on `<state>/reindex-<alias>.lock`, held while the value lives.
struct Lock(#[allow(dead_code)] std::fs::File);

fn lock(cfg: &Config, alias: &str) -> Result<Option<Lock>, ReindexError> {
    use std::os::fd::AsRawFd;
    let path = cfg.state.dir.join(format!("reindex-{alias}.lock"));
    std::fs::create_dir_all(&cfg.state.dir).map_err(|e| state_err(&cfg.state.dir, e))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| state_err(&path, e))?;
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(Lock(f)))
}

fn reached(at: &BinlogPosition, target: &BinlogPosition) -> bool {
    match (at.key(), target.key()) {
        (Ok(a), Ok(t)) => a >= t,
        _ => false,
    }
}

/// What the command did, for the operator.
#[derive(Debug)]
pub struct Summary(pub String);

/// Runs `opts.action` for one table until done, or until `shutdown` (then resumable).
pub async fn run(cfg: &Config, opts: &Options, shutdown: watch::Receiver<bool>) -> Result<Summary, ReindexError> {
    let table = cfg
        .tables
        .iter()
        .find(|t| t.index == opts.table)
        .or_else(|| {
            cfg.tables
                .iter()
                .find(|t| regex::Regex::new(&format!("^(?:{})$", t.source)).is_ok_and(|r| r.is_match(&opts.table)))
        })
        .ok_or_else(|| ReindexError::UnknownTable(opts.table.clone()))?
        .clone();
    let alias = table.index.clone();
    let _lock = lock(cfg, &alias)?.ok_or_else(|| ReindexError::Locked {
        alias: alias.clone(),
        lock: cfg
            .state
            .dir
            .join(format!("reindex-{alias}.lock"))
            .display()
            .to_string(),
    })?;
    let path = state_path(cfg, &alias);
    let client = sink::client(&cfg.sink).map_err(ReindexError::from)?;
    let ctx = Ctx {
        cfg,
        table,
        client,
        path,
        opts: opts.clone(),
        shutdown,
    };
    // Every step resumes from the saved state, so a transient failure (a server unreachable or
    // too slow to answer) simply runs the job again from there.
    let patience = Duration::from_millis(ctx.cfg.source.reconnect_max_ms);
    crate::retry::until_ok("reindex", patience, ReindexError::is_transient, || async {
        let job = load(&ctx.path)?;
        match &opts.action {
            Action::Resnapshot(part) => ctx.resnapshot(part).await,
            Action::Finish => ctx.finish(job).await,
            Action::Rollback => ctx.rollback(job).await,
            Action::Run => ctx.forward(job).await,
        }
    })
    .await
}

/// Deletes the old indexes of reindexes swapped longer than `reindex.retention_hours` ago
/// (skipping jobs another process holds); returns the indexes deleted.
pub async fn expire(cfg: &Config) -> Result<Vec<String>, ReindexError> {
    let mut deleted = Vec::new();
    let Ok(dir) = std::fs::read_dir(&cfg.state.dir) else {
        return Ok(deleted);
    };
    let client = sink::client(&cfg.sink)?;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(alias) = name.strip_prefix("reindex-").and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let Some(job) = load(&entry.path())? else { continue };
        let Phase::Swapped { swapped_at } = job.phase else {
            continue;
        };
        if now_secs() < swapped_at + cfg.reindex.retention_hours * 3600 {
            continue;
        }
        let Some(_lock) = lock(cfg, alias)? else { continue };
        // A rollback may have completed between reading and locking: read the job again.
        let Some(job) = load(&entry.path())?.filter(|j| matches!(j.phase, Phase::Swapped { .. })) else {
            continue;
        };
        let old = job.old_index.clone();
        drop_old(&client, &job, &entry.path()).await?;
        tracing::info!(alias, index = %old, "reindex retention over: deleted the previous index");
        deleted.push(old);
    }
    Ok(deleted)
}

/// For the indexer: applies [`expire`] at start and every ten minutes until `shutdown`.
pub async fn retention_loop(cfg: Config, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = expire(&cfg).await {
            tracing::warn!(error = %e, "reindex retention check failed; retrying later");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn drop_old(client: &Elasticsearch, job: &Job, path: &Path) -> Result<(), ReindexError> {
    let ja = job_alias(&job.alias);
    if indexes::indexes_of(client, &ja).await?.contains(&job.new_index) {
        indexes::update_aliases(client, json!([{ "remove": { "index": job.new_index, "alias": ja } }])).await?;
    }
    if indexes::indexes_of(client, &job.alias).await?.contains(&job.old_index) {
        return Err(ReindexError::WrongPhase(format!(
            "refusing to delete {}: alias `{}` points to it (was it swapped back by hand?)",
            job.old_index, job.alias
        )));
    }
    indexes::delete(client, &job.old_index).await?;
    forget(path)
}

struct Ctx<'a> {
    cfg: &'a Config,
    table: TableMapping,
    client: Elasticsearch,
    path: PathBuf,
    opts: Options,
    shutdown: watch::Receiver<bool>,
}

impl Ctx<'_> {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn server(&self) -> Result<ServerInfo, ReindexError> {
        let patience = Duration::from_millis(self.cfg.source.reconnect_max_ms);
        Ok(crate::retry::until_ok(
            "checking the source server",
            patience,
            SourceError::is_transient,
            || async {
                let mut conn = source::connect(&source::Endpoint::main(&self.cfg.source)).await?;
                source::preflight(&mut conn).await
            },
        )
        .await?)
    }

    /// The table mapping, writing to the job alias.
    fn mapping(&self) -> Result<Mapping, ReindexError> {
        let mut t = self.table.clone();
        t.index = job_alias(&self.table.index);
        let tokenizer = match crate::transform::needs_tokenizer(std::slice::from_ref(&t)) {
            true => Some(Arc::new(
                crate::tokenize::Tokenizer::load(self.cfg.search.user_dict.as_deref()).map_err(PipelineError::from)?,
            )),
            false => None,
        };
        Ok(Mapping::new(&t, self.cfg.source.offset(), tokenizer.as_ref()))
    }

    async fn forward(&self, job: Option<Job>) -> Result<Summary, ReindexError> {
        let info = self.server().await?;
        let mut job = match job {
            None => self.new_job(&info).await?,
            Some(j) => match j.phase {
                Phase::Swapped { .. } => {
                    return Err(ReindexError::WrongPhase(format!(
                        "`{}` was already reindexed into {} ; keep it with `reindex --finish` (drops {}) or undo it with `reindex --rollback` before starting another",
                        j.alias, j.new_index, j.old_index
                    )))
                }
                Phase::RollingBack | Phase::RollbackSwapping | Phase::RollbackDraining { .. } => {
                    return Err(ReindexError::WrongPhase(format!(
                        "a rollback of `{}` is in progress: run `reindex --rollback` again to complete it",
                        j.alias
                    )))
                }
                _ => {
                    tracing::info!(alias = %j.alias, index = %j.new_index, phase = ?j.phase, rows = j.rows, "resuming the reindex");
                    j
                }
            },
        };
        source::check_retention(&info, &job.stream)?;
        let mut stream: Option<JobStream> = None;
        loop {
            match job.phase.clone() {
                Phase::Backfill => {
                    self.prepare_new(&mut job).await?;
                    let s = stream.insert(self.start_stream(&info, &job).await?);
                    self.backfill(&mut job, s).await?;
                    self.catch_up(&mut job, s).await?;
                    job.phase = Phase::Swapping;
                    save(&self.path, &job)?;
                }
                Phase::Swapping => {
                    let s = match stream.as_mut() {
                        Some(s) => s,
                        None => stream.insert(self.start_stream(&info, &job).await?),
                    };
                    if !indexes::indexes_of(&self.client, &job.alias)
                        .await?
                        .contains(&job.new_index)
                    {
                        let new_index = job.new_index.clone();
                        self.verify(&mut job, s, &new_index, true).await?;
                        // Keep the new index as close to the live one as possible at the swap.
                        self.catch_up(&mut job, s).await?;
                        job.rollback_from = Some(self.indexer_checkpoint(&job));
                        save(&self.path, &job)?;
                        self.swap(&job.alias, &job.old_index, &job.new_index).await?;
                    }
                    let until = self.end_position().await?;
                    tracing::info!(alias = %job.alias, index = %job.new_index, %until, "alias swapped; draining the job stream up to the binlog end at the swap");
                    job.phase = Phase::Draining { until };
                    save(&self.path, &job)?;
                }
                Phase::Draining { until } => {
                    let mut s = match stream.take() {
                        Some(s) => s,
                        None => self.start_stream(&info, &job).await?,
                    };
                    self.wait_acked(&mut job, &mut s, &until).await?;
                    job.stream = s.stop().await?.unwrap_or(job.stream);
                    indexes::put_settings(
                        &self.client,
                        &job.new_index,
                        json!({ "index": { "gc_deletes": job.gc_new } }),
                    )
                    .await?;
                    job.phase = Phase::Swapped { swapped_at: now_secs() };
                    save(&self.path, &job)?;
                    return Ok(Summary(format!(
                        "`{}` now points to {} ({} rows backfilled); {} is kept for `reindex --rollback` until `reindex --finish` or {} h from now",
                        job.alias, job.new_index, job.rows, job.old_index, self.cfg.reindex.retention_hours
                    )));
                }
                other => unreachable!("forward phase {other:?}"),
            }
        }
    }

    async fn new_job(&self, info: &ServerInfo) -> Result<Job, ReindexError> {
        let alias = &self.table.index;
        let current = indexes::indexes_of(&self.client, alias).await?;
        let [old] = current.as_slice() else {
            return Err(match current.len() {
                0 => ReindexError::NoAlias(alias.clone()),
                _ => ReindexError::WrongPhase(format!(
                    "alias `{alias}` points to several indexes ({}); leave one before reindexing",
                    current.join(", ")
                )),
            });
        };
        let base = old
            .strip_prefix(&format!("{alias}_v"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        let mut n = base + 1;
        while indexes::exists(&self.client, &format!("{alias}_v{n}")).await? {
            n += 1;
        }
        let job = Job {
            alias: alias.clone(),
            old_index: old.clone(),
            new_index: format!("{alias}_v{n}"),
            start: info.position.clone(),
            stream: info.position.clone(),
            done_tables: vec![],
            cursor: None,
            rows: 0,
            rollback_from: None,
            gc_new: mapping_gc_deletes(&self.table.mapping),
            gc_old: None,
            phase: Phase::Backfill,
        };
        // Saved before the index exists, so a crash right after creating it is resumed.
        save(&self.path, &job)?;
        tracing::info!(%alias, from = %job.old_index, to = %job.new_index, start = %job.start, "reindex started");
        Ok(job)
    }

    /// Creates the new index (gc_deletes raised, job alias attached) or checks it after a
    /// restart, and probes that deletes leave tombstones.
    async fn prepare_new(&self, job: &mut Job) -> Result<(), ReindexError> {
        let ja = job_alias(&job.alias);
        let gc = &self.cfg.reindex.gc_deletes;
        if !indexes::exists(&self.client, &job.new_index).await? {
            indexes::create_from_mapping(
                &self.client,
                &job.new_index,
                &self.table.mapping,
                json!({ "index.gc_deletes": gc }),
                json!({ ja.clone(): {} }),
            )
            .await?;
            tracing::info!(index = %job.new_index, gc_deletes = %gc, "created the new index");
        } else {
            indexes::put_settings(&self.client, &job.new_index, json!({ "index": { "gc_deletes": gc } })).await?;
            self.point_job_alias(job, &job.new_index.clone()).await?;
        }
        self.probe_tombstones(&ja, &job.new_index).await
    }

    /// Moves the job alias to `index` (from wherever it points).
    async fn point_job_alias(&self, job: &Job, index: &str) -> Result<(), ReindexError> {
        let ja = job_alias(&job.alias);
        let now = indexes::indexes_of(&self.client, &ja).await?;
        if now == [index] {
            return Ok(());
        }
        let mut actions: Vec<serde_json::Value> = now
            .iter()
            .map(|i| json!({ "remove": { "index": i, "alias": ja } }))
            .collect();
        actions.push(json!({ "add": { "index": index, "alias": ja } }));
        indexes::update_aliases(&self.client, serde_json::Value::Array(actions)).await?;
        Ok(())
    }

    async fn probe_tombstones(&self, alias: &str, index: &str) -> Result<(), ReindexError> {
        let timeout = Duration::from_millis(self.cfg.sink.request_timeout_ms);
        let id = "_cdc_reindex_tombstone_probe";
        let body = format!(
            "{{\"delete\":{{\"_index\":\"{alias}\",\"_id\":\"{id}\",\"version\":2,\"version_type\":\"external_gte\"}}}}\n\
             {{\"index\":{{\"_index\":\"{alias}\",\"_id\":\"{id}\",\"version\":1,\"version_type\":\"external_gte\"}}}}\n{{}}\n"
        );
        let outcome = sink::post_bulk(&self.client, timeout, bytes::Bytes::from(body), 2).await;
        use crate::bulk::{BulkOutcome, ItemOutcome};
        match outcome {
            BulkOutcome::Items(items) if items.get(1) == Some(&ItemOutcome::Stale) => Ok(()),
            BulkOutcome::Items(items) if items.get(1) == Some(&ItemOutcome::Done) => {
                // Remove the probe document again (a newer delete), then refuse.
                let body = format!(
                    "{{\"delete\":{{\"_index\":\"{alias}\",\"_id\":\"{id}\",\"version\":3,\"version_type\":\"external_gte\"}}}}\n"
                );
                sink::post_bulk(&self.client, timeout, bytes::Bytes::from(body), 1).await;
                Err(ReindexError::NoTombstones(index.into()))
            }
            BulkOutcome::RetryAll { reason, .. } => {
                Err(IndexError::Unreachable(format!("tombstone probe on {index}: {reason}")).into())
            }
            other => Err(SinkError::Fatal(format!("tombstone probe on {index} failed: {other:?}")).into()),
        }
    }

    async fn start_stream(&self, info: &ServerInfo, job: &Job) -> Result<JobStream, ReindexError> {
        JobStream::start(
            self.cfg,
            info.clone(),
            self.mapping()?,
            &self.table.source,
            job.stream.clone(),
            self.client.clone(),
        )
        .await
    }

    async fn end_position(&self) -> Result<BinlogPosition, ReindexError> {
        let mut conn = source::connect(&source::Endpoint::main(&self.cfg.source)).await?;
        let mariadb = is_mariadb(&mut conn).await?;
        Ok(source::current_position(&mut conn, mariadb).await?)
    }

    /// The indexer's checkpoint (all of it is in the index the alias points to), or P0 if
    /// there is none in this state directory.
    fn indexer_checkpoint(&self, job: &Job) -> BinlogPosition {
        match CheckpointStore::open(&self.cfg.checkpoint_path())
            .ok()
            .and_then(|s| s.current().map(|c| c.position.clone()))
        {
            Some(p) => p,
            None => {
                tracing::warn!(
                    path = %self.cfg.checkpoint_path().display(),
                    "no indexer checkpoint found: a rollback will replay from the reindex start; run the reindex with the indexer's own configuration"
                );
                job.start.clone()
            }
        }
    }

    async fn swap(&self, alias: &str, from: &str, to: &str) -> Result<(), ReindexError> {
        indexes::update_aliases(
            &self.client,
            json!([
                { "remove": { "index": from, "alias": alias } },
                { "add": { "index": to, "alias": alias, "is_write_index": true } }
            ]),
        )
        .await?;
        Ok(())
    }

    /// Waits until the job stream has acknowledged everything up to the binlog end.
    async fn catch_up(&self, job: &mut Job, stream: &mut JobStream) -> Result<(), ReindexError> {
        let end = self.end_position().await?;
        self.wait_acked(job, stream, &end).await
    }

    async fn wait_acked(
        &self,
        job: &mut Job,
        stream: &mut JobStream,
        target: &BinlogPosition,
    ) -> Result<(), ReindexError> {
        let mut shutdown = self.shutdown.clone();
        let mut last_log = Instant::now();
        loop {
            let at = stream.acked.borrow().clone();
            if let Some(at) = at {
                if job.stream != at {
                    job.stream = at.clone();
                    save(&self.path, job)?;
                }
                if reached(&at, target) {
                    return Ok(());
                }
                if last_log.elapsed() > Duration::from_secs(5) {
                    tracing::info!(at = %at, %target, "waiting for the job stream to catch up");
                    last_log = Instant::now();
                }
            }
            let stop = tokio::select! {
                _ = stream.acked.changed() => false,
                r = failed(&mut stream.tasks) => return Err(r),
                _ = shutdown.wait_for(|s| *s) => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            if stop {
                return Err(self.interrupt(job, stream));
            }
        }
    }

    /// Saves the acknowledged stream position; the caller returns and drops the stream.
    fn interrupt(&self, job: &mut Job, stream: &mut JobStream) -> ReindexError {
        let _ = stream.stop_signal.send(true);
        let acked = stream.acked.borrow().clone();
        if let Some(at) = acked {
            job.stream = at;
            let _ = save(&self.path, job);
        }
        ReindexError::Interrupted
    }

    /// Exact count check (module doc, step 4) of `index`, which only the job stream writes.
    async fn verify(
        &self,
        job: &mut Job,
        stream: &mut JobStream,
        index: &str,
        strict: bool,
    ) -> Result<(), ReindexError> {
        for attempt in 1..=5 {
            // Freeze the index at a transaction boundary X.
            let _ = stream.hold.send(true);
            let (x, net_x) = loop {
                let held = {
                    let r = stream.report.lock().expect("report lock");
                    r.held.then(|| (r.last_commit.clone(), r.net))
                };
                if let Some((Some(x), n)) = held {
                    break (x, n);
                }
                tokio::select! {
                    r = failed(&mut stream.tasks) => return Err(r),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            };
            self.wait_acked(job, stream, &x).await?;
            let indexed = indexes::refreshed_count(&self.client, index).await?;
            let mut conn = source::connect(&source::Endpoint::main(&self.cfg.source)).await?;
            let mariadb = is_mariadb(&mut conn).await?;
            let s = snapshot::begin_snapshot(&mut conn, mariadb).await?;
            let mut rows = 0u64;
            let mapping = self.mapping()?;
            for (db, table) in snapshot::tracked_tables(&mut conn, &|n| mapping.matches(n)).await? {
                rows += ChunkReader::open(&mut conn, &db, &table, 1, None)
                    .await?
                    .count(&mut conn)
                    .await?;
            }
            conn.query_drop("COMMIT").await?;
            let _ = stream.hold.send(false);
            // Net inserts minus deletes of the transactions in (X, S].
            let deadline = Instant::now() + Duration::from_secs(60);
            let net_s = loop {
                let found = {
                    let r = stream.report.lock().expect("report lock");
                    match &r.last_commit {
                        Some(c) if reached(c, &s) => r
                            .history
                            .iter()
                            .rev()
                            .find(|(p, _)| reached(&s, p))
                            .map(|(_, n)| Some(*n))
                            .unwrap_or(None),
                        _ => None,
                    }
                };
                if let Some(n) = found {
                    break Some(n);
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::select! {
                    r = failed(&mut stream.tasks) => return Err(r),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            };
            let Some(net_s) = net_s else {
                tracing::warn!(attempt, snapshot = %s, "the job stream did not pass the count snapshot in time; counting again");
                continue;
            };
            let expected = rows as i64 - (net_s - net_x);
            tracing::info!(%index, indexed, expected, database_rows = rows, at = %s, "count check");
            if indexed as i64 != expected && !strict {
                tracing::warn!(%index, indexed, expected, "count check failed; continuing the rollback anyway");
            } else if indexed as i64 != expected {
                return Err(ReindexError::Mismatch {
                    index: index.into(),
                    indexed,
                    expected,
                });
            }
            return Ok(());
        }
        Err(ReindexError::WrongPhase(
            "the count check could not complete: the job stream never passed the snapshot position (an idle source after a binlog rotation? write any row, or configure the heartbeat table, and run again)".into(),
        ))
    }

    /// Backfills every table of the mapping by primary-key chunks (module doc, step 3).
    async fn backfill(&self, job: &mut Job, stream: &mut JobStream) -> Result<(), ReindexError> {
        let chunk_rows = self.opts.chunk_rows.unwrap_or(self.cfg.reindex.chunk_rows).max(1);
        let rate = self.opts.rows_per_sec.unwrap_or(self.cfg.reindex.rows_per_sec);
        let mapping = self.mapping()?;
        let mut conn = source::connect(&source::Endpoint::main(&self.cfg.source)).await?;
        let mariadb = is_mariadb(&mut conn).await?;
        let tables = snapshot::tracked_tables(&mut conn, &|n| mapping.matches(n)).await?;
        let mut total = 0u64;
        for (db, table) in &tables {
            let estimate: Option<Option<u64>> = conn
                .exec_first(
                    "SELECT table_rows FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                    (db, table),
                )
                .await?;
            total += estimate.flatten().unwrap_or(0);
        }
        let mut progress = Progress::new(self.opts.progress_bar, total.max(job.rows), job.rows);

        let dead = DeadLetters::open(&self.cfg.dead_letter_path(), self.cfg.state.dead_letter_segment_bytes).map_err(
            |source| PipelineError::DeadLetter {
                path: self.cfg.dead_letter_path().display().to_string(),
                source,
            },
        )?;
        let shared = Shared::new(dead);
        let mut tasks: JoinSet<Result<(), PipelineError>> = JoinSet::new();
        let sink = Sink::start(self.client.clone(), &self.cfg.sink, shared.clone(), &mut tasks);
        // Chunks submitted but not yet wholly acknowledged: (number, cursor after it, rows).
        let mut pending: VecDeque<(u32, ChunkEnd, u64)> = VecDeque::new();
        let mut seq = 0u32;
        let started = Instant::now();
        let mut rows_this_run = 0u64;
        let mut interrupted = false;
        'tables: for (db, table) in &tables {
            let name = format!("{db}.{table}");
            if job.done_tables.contains(&name) {
                continue;
            }
            // Rows inserted from here on reach the new index through the job's stream (started
            // at P0, before this bound is read): the backfill need not, and must not, chase them.
            let bound = snapshot::keys_up_to_current_max(&mut conn, db, table).await?;
            let mut reader = ChunkReader::open(&mut conn, db, table, chunk_rows, Some(&bound)).await?;
            let mut after: Option<Vec<mysql_async::Value>> = match &job.cursor {
                Some(c) if c.table == name => Some(
                    c.last_key
                        .iter()
                        .map(Key::to_value)
                        .collect::<Option<_>>()
                        .ok_or_else(|| state_err(&self.path, "unreadable chunk key"))?,
                ),
                _ => None,
            };
            loop {
                if self.stopping() {
                    interrupted = true;
                    break 'tables;
                }
                if let Some(e) = stream.try_failed() {
                    return Err(e);
                }
                let at = snapshot::begin_snapshot(&mut conn, mariadb).await?;
                let version = Version::at(&at).map_err(SourceError::from)?;
                let chunk = reader.read(&mut conn, after.as_deref(), version).await?;
                conn.query_drop("COMMIT").await?;
                let n = chunk.changes.len() as u64;
                for change in &chunk.changes {
                    submit(&mapping, &sink, change).await?;
                }
                seq += 1;
                let end = match (&chunk.last_key, n < chunk_rows) {
                    (Some(k), false) => ChunkEnd::Key(Cursor {
                        table: name.clone(),
                        last_key: k.iter().map(Key::from_value).collect(),
                    }),
                    _ => ChunkEnd::TableDone(name.clone()),
                };
                let done = matches!(end, ChunkEnd::TableDone(_));
                pending.push_back((seq, end, n));
                // The boundary carries the chunk's snapshot position; its number rides in source_ts.
                sink.boundary(Boundary {
                    position: at,
                    source_ts: seq,
                });
                self.finished_chunks(job, &shared, &mut pending, stream)?;
                progress.show(job.rows.max(progress.base) + pending.iter().map(|p| p.2).sum::<u64>());
                rows_this_run += n;
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(rows_this_run as f64 / rate as f64);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                }
                after = chunk.last_key;
                if done {
                    break;
                }
            }
        }
        drop(sink);
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| PipelineError::Task(e.to_string()))??;
        }
        self.finished_chunks(job, &shared, &mut pending, stream)?;
        progress.done(job.rows);
        if interrupted {
            return Err(self.interrupt(job, stream));
        }
        tracing::info!(rows = job.rows, secs = started.elapsed().as_secs_f64(), "backfill done");
        Ok(())
    }

    /// Records the chunks whose rows are all acknowledged, in order, and saves the state.
    fn finished_chunks(
        &self,
        job: &mut Job,
        shared: &Shared,
        pending: &mut VecDeque<(u32, ChunkEnd, u64)>,
        stream: &JobStream,
    ) -> Result<(), ReindexError> {
        let Some(safe) = shared.tracker.lock().expect("tracker lock").take_safe() else {
            return Ok(());
        };
        while pending.front().is_some_and(|(s, _, _)| *s <= safe.source_ts) {
            let (_, end, n) = pending.pop_front().expect("front");
            job.rows += n;
            match end {
                ChunkEnd::Key(c) => job.cursor = Some(c),
                ChunkEnd::TableDone(t) => {
                    job.done_tables.push(t);
                    job.cursor = None;
                }
            }
        }
        if let Some(at) = stream.acked.borrow().clone() {
            job.stream = at;
        }
        save(&self.path, job)
    }

    /// Rewrites part of the table in the live index (see [`Part`] and the README). Every row is
    /// written with the version of the snapshot it was read in, and a key missing from that
    /// snapshot is deleted at that version, so a concurrent change by the indexer always wins
    /// (as in step 3 of the module doc; `gc_deletes` is raised on the live index meanwhile).
    async fn resnapshot(&self, part: &Part) -> Result<Summary, ReindexError> {
        let alias = &self.table.index;
        let [live] = indexes::indexes_of(&self.client, alias)
            .await?
            .try_into()
            .map_err(|v: Vec<String>| match v.len() {
                0 => ReindexError::NoAlias(alias.clone()),
                _ => ReindexError::WrongPhase(format!(
                    "alias `{alias}` points to several indexes ({}); finish that reindex first",
                    v.join(", ")
                )),
            })?;
        let chunk_rows = self.opts.chunk_rows.unwrap_or(self.cfg.reindex.chunk_rows).max(1);
        let rate = self.opts.rows_per_sec.unwrap_or(self.cfg.reindex.rows_per_sec);
        let tokenizer = match crate::transform::needs_tokenizer(std::slice::from_ref(&self.table)) {
            true => Some(Arc::new(
                crate::tokenize::Tokenizer::load(self.cfg.search.user_dict.as_deref()).map_err(PipelineError::from)?,
            )),
            false => None,
        };
        let mapping = Mapping::new(&self.table, self.cfg.source.offset(), tokenizer.as_ref());
        if let Part::Keys(_) = part {
            if !(self.table.id_columns.is_empty() || self.table.id_columns.len() == 1) {
                return Err(ReindexError::WrongPhase(
                    "--keys needs documents keyed by one column; use --where for this table".into(),
                ));
            }
        }
        let gc_before = indexes::gc_deletes(&self.client, &live).await?;
        indexes::put_settings(
            &self.client,
            &live,
            json!({ "index": { "gc_deletes": self.cfg.reindex.gc_deletes } }),
        )
        .await?;
        let result = self.resnapshot_rows(part, &mapping, chunk_rows, rate).await;
        indexes::put_settings(&self.client, &live, json!({ "index": { "gc_deletes": gc_before } })).await?;
        let (rows, deleted) = result?;
        Ok(Summary(format!(
            "re-snapshotted {rows} row(s) into {live} through `{alias}`; deleted {deleted} document(s) whose row is gone"
        )))
    }

    async fn resnapshot_rows(
        &self,
        part: &Part,
        mapping: &Mapping,
        chunk_rows: u64,
        rate: u64,
    ) -> Result<(u64, u64), ReindexError> {
        let mut conn = source::connect(&source::Endpoint::main(&self.cfg.source)).await?;
        let mariadb = is_mariadb(&mut conn).await?;
        let tables = snapshot::tracked_tables(&mut conn, &|n| mapping.matches(n)).await?;
        let dead = DeadLetters::open(&self.cfg.dead_letter_path(), self.cfg.state.dead_letter_segment_bytes).map_err(
            |source| PipelineError::DeadLetter {
                path: self.cfg.dead_letter_path().display().to_string(),
                source,
            },
        )?;
        let shared = Shared::new(dead);
        let mut tasks: JoinSet<Result<(), PipelineError>> = JoinSet::new();
        let sink = Sink::start(self.client.clone(), &self.cfg.sink, shared.clone(), &mut tasks);
        let started = Instant::now();
        let (mut rows, mut deleted) = (0u64, 0u64);
        let throttle = |rows: u64| async move {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(rows as f64 / rate as f64);
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            }
        };
        match part {
            Part::Where(condition) => {
                for (db, table) in &tables {
                    let mut reader = ChunkReader::open(&mut conn, db, table, chunk_rows, Some(condition)).await?;
                    let mut after: Option<Vec<mysql_async::Value>> = None;
                    loop {
                        if self.stopping() {
                            return Err(ReindexError::Interrupted);
                        }
                        let at = snapshot::begin_snapshot(&mut conn, mariadb).await?;
                        let version = Version::at(&at).map_err(SourceError::from)?;
                        let chunk = reader.read(&mut conn, after.as_deref(), version).await?;
                        conn.query_drop("COMMIT").await?;
                        for change in &chunk.changes {
                            submit(mapping, &sink, change).await?;
                        }
                        rows += chunk.changes.len() as u64;
                        throttle(rows).await;
                        if (chunk.changes.len() as u64) < chunk_rows {
                            break;
                        }
                        after = chunk.last_key;
                    }
                }
            }
            Part::Keys(keys) => {
                for group in keys.chunks(chunk_rows as usize) {
                    if self.stopping() {
                        return Err(ReindexError::Interrupted);
                    }
                    let mut readers = Vec::new();
                    for (db, table) in &tables {
                        let probe = ChunkReader::open(&mut conn, db, table, 1, None).await?;
                        let [key] = probe.key_columns() else {
                            return Err(ReindexError::WrongPhase(format!(
                                "--keys needs a single-column primary key; {db}.{table} has {}: use --where",
                                probe.key_columns().join(", ")
                            )));
                        };
                        let list = group
                            .iter()
                            .map(|k| mysql_async::Value::from(k.as_str()).as_sql(false))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let condition = format!("`{}` IN ({list})", key.replace('`', "``"));
                        readers
                            .push(ChunkReader::open(&mut conn, db, table, group.len() as u64, Some(&condition)).await?);
                    }
                    // One snapshot for all tables: a key found in none of them is gone.
                    let at = snapshot::begin_snapshot(&mut conn, mariadb).await?;
                    let version = Version::at(&at).map_err(SourceError::from)?;
                    let mut found = std::collections::HashSet::new();
                    for reader in &mut readers {
                        let chunk = reader.read(&mut conn, None, version).await?;
                        for change in &chunk.changes {
                            if let Ok(id) = mapping.doc_id(&change.table, change.after.as_deref().unwrap_or_default()) {
                                found.insert(id);
                            }
                            submit(mapping, &sink, change).await?;
                        }
                        rows += chunk.changes.len() as u64;
                    }
                    conn.query_drop("COMMIT").await?;
                    for id in group.iter().filter(|k| !found.contains(*k)) {
                        sink.submit(crate::change::DocOp {
                            index: mapping.index.clone(),
                            id: id.clone(),
                            version,
                            action: crate::change::DocAction::Delete,
                            table: Arc::from(self.table.source.as_str()),
                            op: RowOp::Delete,
                        })
                        .await?;
                        deleted += 1;
                    }
                    throttle(rows).await;
                }
            }
        }
        drop(sink);
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| PipelineError::Task(e.to_string()))??;
        }
        Ok((rows, deleted))
    }

    async fn rollback(&self, job: Option<Job>) -> Result<Summary, ReindexError> {
        let Some(mut job) = job else {
            return Err(ReindexError::WrongPhase(format!(
                "there is no swapped reindex of `{}` to roll back",
                self.table.index
            )));
        };
        let info = self.server().await?;
        let mut stream: Option<JobStream> = None;
        loop {
            match job.phase.clone() {
                Phase::Backfill | Phase::Swapping | Phase::Draining { .. } => {
                    return Err(ReindexError::WrongPhase(format!(
                        "the reindex of `{}` has not completed its swap: run `reindex` to complete it, then roll back",
                        job.alias
                    )))
                }
                Phase::Swapped { .. } => {
                    job.gc_old = indexes::gc_deletes(&self.client, &job.old_index).await?;
                    indexes::put_settings(
                        &self.client,
                        &job.old_index,
                        json!({ "index": { "gc_deletes": self.cfg.reindex.gc_deletes } }),
                    )
                    .await?;
                    self.point_job_alias(&job, &job.old_index.clone()).await?;
                    job.stream = job.rollback_from.clone().unwrap_or_else(|| job.start.clone());
                    job.phase = Phase::RollingBack;
                    save(&self.path, &job)?;
                    tracing::info!(alias = %job.alias, to = %job.old_index, from = %job.stream, "rolling back");
                }
                Phase::RollingBack => {
                    source::check_retention(&info, &job.stream)?;
                    self.point_job_alias(&job, &job.old_index.clone()).await?;
                    self.probe_tombstones(&job_alias(&job.alias), &job.old_index).await?;
                    let s = stream.insert(self.start_stream(&info, &job).await?);
                    self.catch_up(&mut job, s).await?;
                    // The old index may be what needed the reindex: report, do not block.
                    let old_index = job.old_index.clone();
                    self.verify(&mut job, s, &old_index, false).await?;
                    job.phase = Phase::RollbackSwapping;
                    save(&self.path, &job)?;
                }
                Phase::RollbackSwapping => {
                    let s = match stream.as_mut() {
                        Some(s) => s,
                        None => stream.insert(self.start_stream(&info, &job).await?),
                    };
                    if !indexes::indexes_of(&self.client, &job.alias)
                        .await?
                        .contains(&job.old_index)
                    {
                        self.catch_up(&mut job, s).await?;
                        self.swap(&job.alias, &job.new_index, &job.old_index).await?;
                    }
                    let until = self.end_position().await?;
                    job.phase = Phase::RollbackDraining { until };
                    save(&self.path, &job)?;
                }
                Phase::RollbackDraining { until } => {
                    let mut s = match stream.take() {
                        Some(s) => s,
                        None => self.start_stream(&info, &job).await?,
                    };
                    self.wait_acked(&mut job, &mut s, &until).await?;
                    s.stop().await?;
                    indexes::put_settings(
                        &self.client,
                        &job.old_index,
                        json!({ "index": { "gc_deletes": job.gc_old } }),
                    )
                    .await?;
                    let ja = job_alias(&job.alias);
                    indexes::update_aliases(
                        &self.client,
                        json!([{ "remove": { "index": job.old_index, "alias": ja } }]),
                    )
                    .await?;
                    indexes::delete(&self.client, &job.new_index).await?;
                    forget(&self.path)?;
                    return Ok(Summary(format!(
                        "`{}` points to {} again; {} was deleted",
                        job.alias, job.old_index, job.new_index
                    )));
                }
            }
        }
    }

    async fn finish(&self, job: Option<Job>) -> Result<Summary, ReindexError> {
        match job {
            Some(job) if matches!(job.phase, Phase::Swapped { .. }) => {
                drop_old(&self.client, &job, &self.path).await?;
                Ok(Summary(format!(
                    "deleted {}; `{}` stays on {}",
                    job.old_index, job.alias, job.new_index
                )))
            }
            Some(job) => Err(ReindexError::WrongPhase(format!(
                "the reindex of `{}` is not complete (phase {:?}): run `reindex` (or `reindex --rollback`) to complete it first",
                job.alias, job.phase
            ))),
            None => Err(ReindexError::WrongPhase(format!(
                "there is no swapped reindex of `{}` to finish",
                self.table.index
            ))),
        }
    }
}

async fn is_mariadb(conn: &mut mysql_async::Conn) -> Result<bool, ReindexError> {
    let v: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(v.is_some_and(|v| v.contains("MariaDB")))
}

enum ChunkEnd {
    Key(Cursor),
    TableDone(String),
}

/// `index.gc_deletes` as the mapping file sets it, to restore after the job.
fn mapping_gc_deletes(path: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let s = &v["settings"];
    let found = [&s["index.gc_deletes"], &s["index"]["gc_deletes"], &s["gc_deletes"]]
        .into_iter()
        .find_map(|g| g.as_str().map(str::to_string));
    found
}

async fn submit(mapping: &Mapping, sink: &Sink, change: &crate::change::RowChange) -> Result<(), PipelineError> {
    match mapping.apply(change) {
        Ok(ops) => {
            for op in ops {
                sink.submit(op).await?;
            }
        }
        Err(e) => {
            let reason = e.to_string();
            sink.shared().dead_letter(&[DeadLetter {
                at: now_secs(),
                table: change.table.qualified_name(),
                index: &mapping.index,
                id: None,
                op: change.op.as_str(),
                version: change.version.0,
                status: None,
                reason: &reason,
                document: None,
            }])?;
        }
    }
    Ok(())
}

/// Transactions remembered for the count check (it only needs those since the last pause).
const HISTORY: usize = 100_000;

/// What the job stream's transform stage reports.
#[derive(Default)]
struct StreamReport {
    last_commit: Option<BinlogPosition>,
    /// Paused at a transaction boundary.
    held: bool,
    /// Net inserts minus deletes over every transaction passed so far.
    net: i64,
    /// `(commit position, net)` per transaction since the last pause.
    history: VecDeque<(BinlogPosition, i64)>,
}

/// The job's own `source → transform → sink` into the job alias.
struct JobStream {
    tasks: JoinSet<Result<(), PipelineError>>,
    stop_signal: watch::Sender<bool>,
    hold: watch::Sender<bool>,
    report: Arc<Mutex<StreamReport>>,
    acked: watch::Receiver<Option<BinlogPosition>>,
    shared: Arc<Shared>,
    committer: tokio::task::JoinHandle<()>,
}

impl JobStream {
    async fn start(
        cfg: &Config,
        info: ServerInfo,
        mapping: Mapping,
        tables: &str,
        from: BinlogPosition,
        client: Elasticsearch,
    ) -> Result<JobStream, ReindexError> {
        let dead =
            DeadLetters::open(&cfg.dead_letter_path(), cfg.state.dead_letter_segment_bytes).map_err(|source| {
                PipelineError::DeadLetter {
                    path: cfg.dead_letter_path().display().to_string(),
                    source,
                }
            })?;
        let shared = Shared::new(dead);
        let mut tasks: JoinSet<Result<(), PipelineError>> = JoinSet::new();
        let sink = Sink::start(client, &cfg.sink, shared.clone(), &mut tasks);
        let (tx, rx) = mpsc::channel::<SourceEvent>(cfg.sink.queue_capacity);
        // The start is a boundary too: nothing before it is the job's to write.
        tx.send(SourceEvent::Commit {
            position: from.clone(),
            source_ts: now_secs() as u32,
        })
        .await
        .map_err(|_| PipelineError::Task("job stream closed".into()))?;
        let (stop_signal, stop_rx) = watch::channel(false);
        let mut source_cfg = cfg.source.clone();
        source_cfg.server_id = cfg.reindex.stream_server_id(cfg.source.server_id);
        let regex = regex::Regex::new(&format!("^(?:{tables})$")).expect("validated by the config");
        tasks.spawn(async move {
            Source::new(source_cfg, info, from, Box::new(move |n: &str| regex.is_match(n)))
                .run(tx, stop_rx)
                .await?;
            Ok(())
        });
        let (hold, hold_rx) = watch::channel(false);
        let report = Arc::new(Mutex::new(StreamReport::default()));
        tasks.spawn(transform(rx, mapping, sink, hold_rx, report.clone()));
        let (acked_tx, acked) = watch::channel(None);
        let committer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shared.acked.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    let safe = shared.tracker.lock().expect("tracker lock").take_safe();
                    if let Some(b) = safe {
                        let _ = acked_tx.send(Some(b.position));
                    }
                }
            })
        };
        Ok(JobStream {
            tasks,
            stop_signal,
            hold,
            report,
            acked,
            shared,
            committer,
        })
    }

    fn try_failed(&mut self) -> Option<ReindexError> {
        match self.tasks.try_join_next()? {
            Ok(Err(e)) => Some(e.into()),
            Err(e) => Some(PipelineError::Task(e.to_string()).into()),
            Ok(Ok(())) => Some(PipelineError::Task("the job stream stopped unexpectedly".into()).into()),
        }
    }

    /// Stops the source, flushes the sink; returns the last acknowledged boundary.
    async fn stop(mut self) -> Result<Option<BinlogPosition>, ReindexError> {
        let _ = self.stop_signal.send(true);
        let _ = self.hold.send(false);
        let mut result = Ok(());
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r.map_err(|e| PipelineError::Task(e.to_string())).and_then(|r| r) {
                result = Err(e);
            }
        }
        self.committer.abort();
        result?;
        let safe = self.shared.tracker.lock().expect("tracker lock").take_safe();
        Ok(safe.map(|b| b.position).or_else(|| self.acked.borrow().clone()))
    }
}

impl Drop for JobStream {
    fn drop(&mut self) {
        // Dropping the JoinSet aborts the stages; the committer is a detached task.
        self.committer.abort();
    }
}

/// Resolves when a stage of the stream fails (or ends unexpectedly), with the error.
async fn failed(tasks: &mut JoinSet<Result<(), PipelineError>>) -> ReindexError {
    match tasks.join_next().await {
        Some(Ok(Err(e))) => e.into(),
        Some(Err(e)) => PipelineError::Task(e.to_string()).into(),
        Some(Ok(Ok(()))) | None => PipelineError::Task("the job stream stopped unexpectedly".into()).into(),
    }
}

/// The job stream's transform stage: like the indexer's, plus pausing at a transaction
/// boundary on request and counting net inserts for the count check.
async fn transform(
    mut rx: mpsc::Receiver<SourceEvent>,
    mapping: Mapping,
    sink: Sink,
    mut hold: watch::Receiver<bool>,
    report: Arc<Mutex<StreamReport>>,
) -> Result<(), PipelineError> {
    let mut in_txn = false;
    let mut txn_net = 0i64;
    let mut last_version: Option<Version> = None;
    loop {
        let started = report.lock().expect("report lock").last_commit.is_some();
        if !in_txn && started && *hold.borrow_and_update() {
            {
                let mut r = report.lock().expect("report lock");
                r.held = true;
                r.history.clear();
                if let Some(c) = r.last_commit.clone() {
                    let n = r.net;
                    r.history.push_back((c, n));
                }
            }
            if hold.wait_for(|h| !*h).await.is_err() {
                return Ok(());
            }
            report.lock().expect("report lock").held = false;
        }
        let event = tokio::select! {
            e = rx.recv() => e,
            r = hold.changed(), if !in_txn && started => {
                if r.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(event) = event else { return Ok(()) };
        match event {
            SourceEvent::Change(change) => {
                // A transaction cut off by a reconnect is sent again from its start.
                if last_version.is_some_and(|v| change.version <= v) {
                    txn_net = 0;
                }
                last_version = Some(change.version);
                in_txn = true;
                txn_net += match change.op {
                    RowOp::Insert => 1,
                    RowOp::Delete => -1,
                    RowOp::Update => 0,
                };
                submit(&mapping, &sink, &change).await?;
            }
            SourceEvent::Commit { position, source_ts } => {
                sink.boundary(Boundary {
                    position: position.clone(),
                    source_ts,
                });
                in_txn = false;
                last_version = None;
                let mut r = report.lock().expect("report lock");
                r.net += std::mem::take(&mut txn_net);
                r.last_commit = Some(position.clone());
                let n = r.net;
                r.history.push_back((position, n));
                if r.history.len() > HISTORY {
                    r.history.pop_front();
                }
            }
        }
    }
}

/// Backfill progress: a bar with rate and ETA on a terminal, log lines otherwise.
struct Progress {
    bar: bool,
    total: u64,
    base: u64,
    started: Instant,
    shown: Option<Instant>,
}

impl Progress {
    fn new(bar: bool, total: u64, base: u64) -> Self {
        Progress {
            bar,
            total,
            base,
            started: Instant::now(),
            shown: None,
        }
    }

    fn show(&mut self, done: u64) {
        let every = if self.bar {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        if self.shown.is_some_and(|s| s.elapsed() < every) {
            return;
        }
        self.shown = Some(Instant::now());
        self.total = self.total.max(done);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done.saturating_sub(self.base) as f64 / secs;
        let eta = match rate > 0.0 {
            true => Some(((self.total - done) as f64 / rate) as u64),
            false => None,
        };
        let eta_text = eta.map_or("--:--".to_string(), |s| format!("{}:{:02}", s / 60, s % 60));
        if self.bar {
            let frac = done as f64 / self.total.max(1) as f64;
            let filled = (frac * 30.0) as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {:>3.0}% {done}/{} rows {:.0} rows/s ETA {eta_text}",
                "#".repeat(filled),
                ".".repeat(30 - filled.min(30)),
                frac * 100.0,
                self.total,
                rate
            );
        } else {
            tracing::info!(
                rows = done,
                total = self.total,
                rows_per_sec = rate as u64,
                eta_secs = eta,
                "backfill progress"
            );
        }
    }

    fn done(&mut self, done: u64) {
        self.shown = None;
        self.show(done);
        if self.bar {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_state_file() {
        use mysql_async::Value as M;
        let values = vec![
            M::NULL,
            M::Int(-5),
            M::UInt(u64::MAX),
            M::Bytes(b"ab\x00\xff".to_vec()),
            M::Date(2026, 1, 25, 10, 0, 1, 5),
            M::Time(true, 1, 2, 3, 4, 5),
            M::Double(1.5),
        ];
        let keys: Vec<Key> = values.iter().map(Key::from_value).collect();
        let text = serde_json::to_string(&keys).unwrap();
        let back: Vec<Key> = serde_json::from_str(&text).unwrap();
        let restored: Vec<M> = back.iter().map(|k| k.to_value().unwrap()).collect();
        assert_eq!(restored, values);
        assert!(Key::Bytes("abc".into()).to_value().is_none());
        assert!(Key::Bytes("zz".into()).to_value().is_none());
    }

    #[test]
    fn job_state_round_trips() {
        let p = |pos| BinlogPosition {
            file: "bin.000001".into(),
            pos,
            gtid: None,
        };
        let job = Job {
            alias: "orders".into(),
            old_index: "orders_v1".into(),
            new_index: "orders_v2".into(),
            start: p(4),
            stream: p(100),
            done_tables: vec!["shop.a".into()],
            cursor: Some(Cursor {
                table: "shop.b".into(),
                last_key: vec![Key::UInt(7)],
            }),
            rows: 10,
            rollback_from: None,
            gc_new: None,
            gc_old: Some("60s".into()),
            phase: Phase::Draining { until: p(200) },
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reindex-orders.json");
        save(&path, &job).unwrap();
        assert_eq!(load(&path).unwrap(), Some(job));
        forget(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }

    #[test]
    fn positions_compare_across_files() {
        let p = |f: &str, pos| BinlogPosition {
            file: f.into(),
            pos,
            gtid: None,
        };
        assert!(reached(&p("b.000002", 4), &p("b.000001", 9000)));
        assert!(reached(&p("b.000001", 9000), &p("b.000001", 9000)));
        assert!(!reached(&p("b.000001", 8999), &p("b.000001", 9000)));
    }

    #[test]
    fn gc_deletes_is_read_from_the_mapping_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, r#"{"settings":{"index":{"gc_deletes":"2m"}},"mappings":{}}"#).unwrap();
        assert_eq!(mapping_gc_deletes(&path).as_deref(), Some("2m"));
        std::fs::write(&path, r#"{"mappings":{}}"#).unwrap();
        assert_eq!(mapping_gc_deletes(&path), None);
    }
}

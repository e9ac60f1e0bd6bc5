//! The transform stage: row changes rendered into document operations on `N` worker threads,
//! handed to the sink in binlog order.
//!
//! Contract:
//! * Output order is input order. Every [`DocOp`], dead letter and transaction boundary reaches
//!   the [`Output`] in exactly the order a single-threaded transform would produce it. So each
//!   document's changes are submitted in binlog order, and a [`Boundary`] is registered only
//!   after every operation of the changes before it has been submitted (registered with the
//!   [`crate::checkpoint::AckTracker`]), which is what keeps the checkpoint from passing an
//!   unacknowledged change.
//! * A change whose transform fails is dead-lettered with its reason (never indexed
//!   approximately), in its place in the order, and the stream goes on.
//! * Heartbeat rows of our own heartbeat table are consumed here, never indexed; the newest
//!   reading of a transaction is reported when its boundary is passed on.
//! * Every queue is bounded (the source channel, `2` batches into and out of each worker), so
//!   a slow sink stops the dispatcher, which stops reading the source: memory stays flat.
//! * A worker that dies (a panic in a mapping) stops the stage with an error instead of
//!   silently losing its batches.
//!
//! Why it is correct: one dispatcher reads the source channel, cuts it into batches of
//! consecutive events (at most [`BATCH_MAX`], never waiting to fill one, so latency is not
//! added), and deals them round-robin: batch `k` to worker `k mod N`. Each worker handles its
//! batches in order and returns one result batch per input batch on its own channel. The
//! collector reads the result of batch `k` from worker `k mod N`, for `k = 0, 1, 2, …`, so it
//! re-sequences the batches exactly as they were dealt, and within a batch the worker keeps
//! the order. Routing and heartbeat detection are cheap and run in the dispatcher; the
//! expensive part (rendering, masking, tokenizing, serializing) runs in the workers, which
//! share the compiled mappings read-only.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::change::{DocOp, RowChange, RowOp, SourceEvent};
use crate::checkpoint::Boundary;
use crate::dead_letter::{now_secs, DeadLetter};
use crate::heartbeat::HeartbeatTable;
use crate::pipeline::PipelineError;
use crate::position::BinlogPosition;
use crate::sink::{Sink, SinkError};
use crate::transform::{Mapping, Router};

/// Most source events in one batch handed to a worker.
pub const BATCH_MAX: usize = 256;
/// Batches queued into, and out of, each worker.
const WORKER_QUEUE: usize = 2;

/// Where the stage delivers, in order (the [`Sink`]; benchmarks and tests use their own).
pub trait Output {
    fn submit(&mut self, op: DocOp) -> impl Future<Output = Result<(), SinkError>> + Send;
    fn boundary(&mut self, boundary: Boundary);
    fn dead_letter(&mut self, record: &DeadLetter<'_>) -> Result<(), SinkError>;
}

impl Output for Sink {
    fn submit(&mut self, op: DocOp) -> impl Future<Output = Result<(), SinkError>> + Send {
        Sink::submit(self, op)
    }
    fn boundary(&mut self, boundary: Boundary) {
        Sink::boundary(self, boundary)
    }
    fn dead_letter(&mut self, record: &DeadLetter<'_>) -> Result<(), SinkError> {
        self.shared().dead_letter(std::slice::from_ref(record))
    }
}

/// What a worker gets: a change with the index of its mapping, or a boundary.
enum Task {
    Change(usize, RowChange),
    Commit {
        position: BinlogPosition,
        source_ts: u32,
        /// Our heartbeat seen in this transaction (ms since the epoch when written).
        beat: Option<u64>,
    },
}

/// What a worker returns, in input order.
enum Done {
    Op(DocOp),
    Failed(Failed),
    Commit {
        position: BinlogPosition,
        source_ts: u32,
        beat: Option<u64>,
    },
}

/// A change whose transform failed, for the dead-letter file.
struct Failed {
    table: Arc<str>,
    index: Arc<str>,
    op: RowOp,
    version: u64,
    reason: String,
}

/// Runs the stage until the source channel closes (then drains every worker) or `out` fails.
pub async fn run<O: Output + Send>(
    rx: mpsc::Receiver<SourceEvent>,
    router: Router,
    heartbeat: Option<(HeartbeatTable, u32)>,
    workers: usize,
    mut out: O,
) -> Result<(), PipelineError> {
    let workers = workers.max(1);
    let mappings = router.mappings();
    let mut inputs = Vec::with_capacity(workers);
    let mut outputs = Vec::with_capacity(workers);
    for no in 0..workers {
        let (task_tx, task_rx) = mpsc::channel::<Vec<Task>>(WORKER_QUEUE);
        let (done_tx, done_rx) = mpsc::channel::<Vec<Done>>(WORKER_QUEUE);
        let mappings = Arc::clone(&mappings);
        std::thread::Builder::new()
            .name(format!("transform-{no}"))
            .spawn(move || work(&mappings, task_rx, done_tx))
            .map_err(|e| PipelineError::Task(format!("cannot start a transform worker: {e}")))?;
        inputs.push(task_tx);
        outputs.push(done_rx);
    }
    let progress = Progress::default();
    tokio::try_join!(
        dispatch(rx, router, heartbeat, inputs, &progress),
        collect(outputs, &mut out, &progress),
    )?;
    Ok(())
}

/// Shared between dispatcher and collector, to tell a drained stage from a dead worker.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    dispatch_done: AtomicBool,
}

async fn dispatch(
    mut rx: mpsc::Receiver<SourceEvent>,
    mut router: Router,
    heartbeat: Option<(HeartbeatTable, u32)>,
    inputs: Vec<mpsc::Sender<Vec<Task>>>,
    progress: &Progress,
) -> Result<(), PipelineError> {
    let mut beat: Option<u64> = None;
    let mut next = 0usize;
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::with_capacity(BATCH_MAX.min(rx.len() + 1));
        let mut event = Some(first);
        while let Some(e) = event.take() {
            match e {
                SourceEvent::Change(change) => {
                    if let Some(reading) = heartbeat.as_ref().and_then(|(t, id)| t.reading(&change, *id)) {
                        beat = beat.max(reading);
                    } else if let Some(i) = router.route_index(&change.table) {
                        crate::metrics::get().change_read(change.table.qualified_name(), change.op);
                        batch.push(Task::Change(i, change));
                    }
                }
                SourceEvent::Commit { position, source_ts } => batch.push(Task::Commit {
                    position,
                    source_ts,
                    beat: beat.take(),
                }),
            }
            if batch.len() < BATCH_MAX {
                event = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        inputs[next]
            .send(batch)
            .await
            .map_err(|_| PipelineError::Task("a transform worker stopped unexpectedly".into()))?;
        progress.sent.fetch_add(1, Ordering::SeqCst);
        next = (next + 1) % inputs.len();
    }
    progress.dispatch_done.store(true, Ordering::SeqCst);
    Ok(())
}

async fn collect<O: Output>(
    mut outputs: Vec<mpsc::Receiver<Vec<Done>>>,
    out: &mut O,
    progress: &Progress,
) -> Result<(), PipelineError> {
    let mut received = 0u64;
    let mut next = 0usize;
    loop {
        let Some(batch) = outputs[next].recv().await else {
            // Normal end: the dispatcher closed the inputs and every batch came back.
            if progress.dispatch_done.load(Ordering::SeqCst) && progress.sent.load(Ordering::SeqCst) == received {
                return Ok(());
            }
            return Err(PipelineError::Task("a transform worker stopped unexpectedly".into()));
        };
        received += 1;
        next = (next + 1) % outputs.len();
        for done in batch {
            match done {
                Done::Op(op) => out.submit(op).await?,
                Done::Failed(f) => out.dead_letter(&DeadLetter {
                    at: now_secs(),
                    table: &f.table,
                    index: &f.index,
                    id: None,
                    op: f.op.as_str(),
                    version: f.version,
                    status: None,
                    reason: &f.reason,
                    document: None,
                })?,
                Done::Commit {
                    position,
                    source_ts,
                    beat,
                } => {
                    if let Some(ts_ms) = beat {
                        crate::metrics::get().heartbeat_read(&position, ts_ms);
                    }
                    out.boundary(Boundary { position, source_ts });
                }
            }
        }
    }
}

/// One worker thread: transforms its batches in order until its input closes or the
/// collector is gone.
fn work(mappings: &[Mapping], mut tasks: mpsc::Receiver<Vec<Task>>, done: mpsc::Sender<Vec<Done>>) {
    while let Some(batch) = tasks.blocking_recv() {
        let mut results = Vec::with_capacity(batch.len() + batch.len() / 8);
        for task in batch {
            match task {
                Task::Change(i, change) => {
                    let mapping = &mappings[i];
                    match mapping.apply(&change) {
                        Ok(ops) => results.extend(ops.into_iter().map(Done::Op)),
                        Err(e) => results.push(Done::Failed(Failed {
                            table: change.table.qualified_arc(),
                            index: mapping.index.clone(),
                            op: change.op,
                            version: change.version.0,
                            reason: e.to_string(),
                        })),
                    }
                }
                Task::Commit {
                    position,
                    source_ts,
                    beat,
                } => results.push(Done::Commit {
                    position,
                    source_ts,
                    beat,
                }),
            }
        }
        if done.blocking_send(results).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::DocAction;
    use crate::checkpoint::AckTracker;
    use crate::config::TableMapping;
    use crate::position::Version;
    use crate::schema::{ColumnSchema, TableSchema};
    use crate::value::Value;
    use chrono::FixedOffset;

    /// What the stage delivered, as the sink and the ack tracker would see it.
    #[derive(Debug, Clone, PartialEq)]
    enum Seen {
        Op { id: String, version: u64, delete: bool },
        DeadLetter { version: u64, reason: String },
        Boundary { pos: u64, registered_before: u64 },
    }

    #[derive(Default)]
    struct Recorder {
        seen: Vec<Seen>,
        tracker: AckTracker,
        /// Makes `submit` yield, so the workers run ahead and the collector must re-sequence.
        slow: bool,
        fail_after: Option<usize>,
    }

    impl Output for Recorder {
        fn submit(&mut self, op: DocOp) -> impl Future<Output = Result<(), SinkError>> + Send {
            let fail = self.fail_after.is_some_and(|n| self.seen.len() >= n);
            if !fail {
                self.tracker.register();
                self.seen.push(Seen::Op {
                    id: op.id,
                    version: op.version.0,
                    delete: matches!(op.action, DocAction::Delete),
                });
            }
            let slow = self.slow;
            async move {
                if fail {
                    return Err(SinkError::Closed);
                }
                if slow {
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
        }
        fn boundary(&mut self, b: Boundary) {
            // Count the operations registered before this boundary, as AckTracker sees them.
            let registered_before = self.seen.iter().filter(|s| matches!(s, Seen::Op { .. })).count() as u64;
            self.tracker.boundary(b.clone());
            self.seen.push(Seen::Boundary {
                pos: b.position.pos,
                registered_before,
            });
        }
        fn dead_letter(&mut self, r: &DeadLetter<'_>) -> Result<(), SinkError> {
            self.seen.push(Seen::DeadLetter {
                version: r.version,
                reason: r.reason.to_string(),
            });
            Ok(())
        }
    }

    fn table() -> Arc<TableSchema> {
        let col = |name: &str| ColumnSchema {
            name: name.into(),
            column_type: 0,
            meta: vec![],
            unsigned: false,
            nullable: true,
            charset: None,
            members: vec![],
        };
        Arc::new(TableSchema::new(
            "shop".into(),
            "orders".into(),
            vec![col("id"), col("items")],
            vec![0],
        ))
    }

    fn heartbeat_table() -> Arc<TableSchema> {
        let col = |name: &str| ColumnSchema {
            name: name.into(),
            column_type: 0,
            meta: vec![],
            unsigned: true,
            nullable: false,
            charset: None,
            members: vec![],
        };
        Arc::new(TableSchema::new(
            "cdc".into(),
            "heartbeat".into(),
            vec![col("id"), col("ts_ms")],
            vec![0],
        ))
    }

    fn router() -> Router {
        let cfg: TableMapping = toml::from_str(
            "source = 'shop\\.orders|cdc\\.heartbeat'\nindex = \"orders\"\nmapping = \"m.json\"\njson_columns = [\"items\"]",
        )
        .unwrap();
        Router::new(vec![Mapping::new(&cfg, FixedOffset::east_opt(0).unwrap(), None)])
    }

    fn row(id: i64, items: &str) -> Vec<Value> {
        vec![
            Value::Int(id),
            Value::Text {
                bytes: items.as_bytes().to_vec(),
                charset: 224,
            },
        ]
    }

    /// A replayable stream: transactions of 0–6 changes on few ids (so documents repeat),
    /// some updates changing the key, some rows with invalid JSON, a few heartbeats.
    fn stream(seed: u64, transactions: usize) -> Vec<SourceEvent> {
        let mut x = seed | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut events = Vec::new();
        let mut version = 0u64;
        for t in 0..transactions {
            for _ in 0..rnd(7) {
                version += 1;
                let id = rnd(20) as i64;
                let items = if rnd(10) == 0 { "{broken" } else { "{\"a\":1}" };
                let (op, before, after) = match rnd(4) {
                    0 => (RowOp::Delete, Some(row(id, items)), None),
                    1 => (RowOp::Update, Some(row(id, items)), Some(row(rnd(20) as i64, items))),
                    _ => (RowOp::Insert, None, Some(row(id, items))),
                };
                events.push(SourceEvent::Change(RowChange {
                    table: table(),
                    op,
                    before,
                    after,
                    version: Version(version),
                    source_ts: 0,
                }));
                if rnd(15) == 0 {
                    events.push(SourceEvent::Change(RowChange {
                        table: heartbeat_table(),
                        op: RowOp::Insert,
                        before: None,
                        after: Some(vec![Value::UInt(777), Value::UInt(1_000 + version)]),
                        version: Version(version),
                        source_ts: 0,
                    }));
                }
            }
            events.push(SourceEvent::Commit {
                position: BinlogPosition {
                    file: "bin.000001".into(),
                    pos: t as u64 + 1,
                    gtid: None,
                },
                source_ts: 0,
            });
        }
        events
    }

    /// The single-threaded reference: what the stage must deliver, in this order.
    fn reference(events: &[SourceEvent]) -> Vec<Seen> {
        let mut router = router();
        let mut seen = Vec::new();
        let mut ops = 0u64;
        for e in events {
            match e {
                SourceEvent::Change(c) => {
                    if c.table.table == "heartbeat" {
                        continue;
                    }
                    let Some(m) = router.route(&c.table) else { continue };
                    match m.apply(c) {
                        Ok(list) => {
                            for op in list {
                                ops += 1;
                                seen.push(Seen::Op {
                                    id: op.id,
                                    version: op.version.0,
                                    delete: matches!(op.action, DocAction::Delete),
                                });
                            }
                        }
                        Err(e) => seen.push(Seen::DeadLetter {
                            version: c.version.0,
                            reason: e.to_string(),
                        }),
                    }
                }
                SourceEvent::Commit { position, .. } => seen.push(Seen::Boundary {
                    pos: position.pos,
                    registered_before: ops,
                }),
            }
        }
        seen
    }

    async fn run_stage(
        events: Vec<SourceEvent>,
        workers: usize,
        capacity: usize,
        out: Recorder,
    ) -> (Result<(), PipelineError>, Recorder) {
        let (tx, rx) = mpsc::channel(capacity);
        let feeder = tokio::spawn(async move {
            for e in events {
                if tx.send(e).await.is_err() {
                    break;
                }
            }
        });
        let mut out = out;
        let hb = Some((HeartbeatTable::parse("cdc.heartbeat").unwrap(), 777));
        let r = run(rx, router(), hb, workers, &mut out).await;
        feeder.await.unwrap();
        (r, out)
    }

    impl<T: Output + Send> Output for &mut T {
        fn submit(&mut self, op: DocOp) -> impl Future<Output = Result<(), SinkError>> + Send {
            (**self).submit(op)
        }
        fn boundary(&mut self, b: Boundary) {
            (**self).boundary(b)
        }
        fn dead_letter(&mut self, r: &DeadLetter<'_>) -> Result<(), SinkError> {
            (**self).dead_letter(r)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn order_boundaries_and_dead_letters_match_the_sequential_transform() {
        // GIVEN replayable streams (seed printed on failure) with errors and heartbeats
        for seed in [1u64, 42, 0xdead_beef, 7_777_777] {
            for (workers, capacity, slow) in [(1, 1, false), (2, 3, true), (3, 1000, false), (4, 50, true)] {
                let events = stream(seed, 300);
                let expected = reference(&events);
                // WHEN they run through the stage with several workers
                let out = Recorder {
                    slow,
                    ..Recorder::default()
                };
                let (r, out) = run_stage(events, workers, capacity, out).await;
                r.unwrap();
                // THEN every op, dead letter and boundary arrives in the sequential order:
                // per-_id order holds and each boundary follows all ops before it.
                assert_eq!(out.seen, expected, "seed {seed}, {workers} workers");
                assert!(
                    out.seen.iter().any(|s| matches!(s, Seen::DeadLetter { .. })),
                    "seed {seed}"
                );
            }
        }
    }

    #[tokio::test]
    async fn boundary_waits_for_acks_of_every_earlier_op() {
        // GIVEN a stream through 3 workers
        let events = stream(9, 100);
        let (r, mut out) = run_stage(events, 3, 10, Recorder::default()).await;
        r.unwrap();
        // WHEN every op but the first is acknowledged
        let total = out.seen.iter().filter(|s| matches!(s, Seen::Op { .. })).count() as u64;
        assert!(total > 1);
        for s in 1..total {
            out.tracker.ack(s);
        }
        // THEN only boundaries registered before any op are released (op 0 is still pending)
        let released = out.tracker.take_safe();
        let first_op_at = out.seen.iter().position(|s| matches!(s, Seen::Op { .. })).unwrap();
        let before_first = out.seen[..first_op_at]
            .iter()
            .filter_map(|s| match s {
                Seen::Boundary { pos, .. } => Some(*pos),
                _ => None,
            })
            .next_back();
        assert_eq!(released.map(|b| b.position.pos), before_first);
        out.tracker.ack(0);
        let last = out
            .seen
            .iter()
            .filter_map(|s| match s {
                Seen::Boundary { pos, .. } => Some(*pos),
                _ => None,
            })
            .next_back();
        assert_eq!(out.tracker.take_safe().map(|b| b.position.pos), last);
    }

    #[tokio::test]
    async fn a_failing_sink_stops_the_stage_with_its_error() {
        let events = stream(5, 200);
        let out = Recorder {
            fail_after: Some(10),
            ..Recorder::default()
        };
        let (r, _) = run_stage(events, 2, 5, out).await;
        assert!(matches!(r, Err(PipelineError::Sink(SinkError::Closed))), "{r:?}");
    }

    #[tokio::test]
    async fn heartbeats_are_consumed_not_indexed() {
        let events = stream(3, 200);
        let (r, out) = run_stage(events, 2, 10, Recorder::default()).await;
        r.unwrap();
        // GIVEN a router that would map the heartbeat table too
        // THEN its rows (id 777) are consumed as heartbeats, never indexed
        assert!(out.seen.iter().all(|s| match s {
            Seen::Op { id, .. } => id.parse::<u64>().unwrap() < 20,
            _ => true,
        }));
    }
}

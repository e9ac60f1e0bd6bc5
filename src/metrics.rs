//! Prometheus metrics: every name in one place ([`names`]), one process-wide registry, and the
//! two replication-lag figures.
//!
//! Contract:
//! * Metric names follow `cdc_<noun>_<unit>` and exist only as constants in [`names`]; the alert
//!   rules (`alerts/cdc-indexer.rules.yml`) and the README use exactly these strings.
//! * Labels carry only table names, index names, row operations and status classes; never a
//!   data value or a document id (they would leak personal data into monitoring and explode
//!   cardinality).
//! * Lag from binlog timestamps ([`names::REPLICATION_LAG_SECONDS`]) is 0 while the indexer is
//!   caught up (everything read is acknowledged and the source has read up to the server's
//!   end as last polled), else `now − max(commit time of the checkpointed transaction, the last
//!   poll at which it was caught up)`. Every change not yet acknowledged was committed after
//!   both instants, so this never understates the true lag, and it overstates it by at most
//!   one poll period plus the binlog's one-second timestamp resolution. An idle source therefore
//!   reads 0, and a stuck indexer keeps growing because the server's end moves away from it.
//! * Lag from the heartbeat table ([`names::HEARTBEAT_LAG_SECONDS`]) is `now − ts_ms` of the
//!   newest heartbeat row whose transaction has been acknowledged (pt-heartbeat style; the
//!   indexer writes the row every second). Before the first one arrives it is the time since
//!   start, so a heartbeat that never comes back cannot look healthy.
//! * Derived gauges (lags, queue depths, headroom) are recomputed by [`Metrics::refresh`], which
//!   runs at every scrape and every server poll.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::change::RowOp;
use crate::checkpoint::{Boundary, Checkpoint};
use crate::position::{file_sequence, BinlogPosition};

/// Every metric name the indexer exports (process metrics aside: `process_*`).
pub mod names {
    pub const BUILD_INFO: &str = "cdc_build_info";
    pub const REPLICATION_LAG_SECONDS: &str = "cdc_replication_lag_seconds";
    pub const HEARTBEAT_LAG_SECONDS: &str = "cdc_heartbeat_lag_seconds";
    pub const END_TO_END_LATENCY_SECONDS: &str = "cdc_end_to_end_latency_seconds";
    pub const CHANGES_READ_TOTAL: &str = "cdc_changes_read_total";
    pub const CHANGES_INDEXED_TOTAL: &str = "cdc_changes_indexed_total";
    pub const CHANGES_DEAD_LETTERED_TOTAL: &str = "cdc_changes_dead_lettered_total";
    pub const BULK_REQUEST_DURATION_SECONDS: &str = "cdc_bulk_request_duration_seconds";
    pub const BULK_REQUEST_DOCS: &str = "cdc_bulk_request_docs";
    pub const BULK_REQUEST_BYTES: &str = "cdc_bulk_request_bytes";
    pub const BULK_RETRIES_TOTAL: &str = "cdc_bulk_retries_total";
    pub const BULK_THROTTLED_DOCS_TOTAL: &str = "cdc_bulk_throttled_docs_total";
    pub const BULK_REQUESTS_IN_FLIGHT: &str = "cdc_bulk_requests_in_flight";
    pub const SINK_CONCURRENCY_LIMIT_REQUESTS: &str = "cdc_sink_concurrency_limit_requests";
    pub const SOURCE_QUEUE_DEPTH_EVENTS: &str = "cdc_source_queue_depth_events";
    pub const SINK_UNACKED_OPS: &str = "cdc_sink_unacked_ops";
    pub const CHECKPOINT_FILE_SEQUENCE: &str = "cdc_checkpoint_file_sequence";
    pub const CHECKPOINT_OFFSET_BYTES: &str = "cdc_checkpoint_offset_bytes";
    pub const CHECKPOINT_SOURCE_TIMESTAMP_SECONDS: &str = "cdc_checkpoint_source_timestamp_seconds";
    pub const SERVER_BINLOG_FILE_SEQUENCE: &str = "cdc_server_binlog_file_sequence";
    pub const SERVER_BINLOG_OFFSET_BYTES: &str = "cdc_server_binlog_offset_bytes";
    pub const BINLOG_BEHIND_BYTES: &str = "cdc_binlog_behind_bytes";
    pub const BINLOG_RETENTION_HEADROOM_BYTES: &str = "cdc_binlog_retention_headroom_bytes";
    pub const BINLOG_RETENTION_HEADROOM_FILES: &str = "cdc_binlog_retention_headroom_files";
    pub const SOURCE_CONNECTED: &str = "cdc_source_connected";
    pub const SOURCE_RECONNECTS_TOTAL: &str = "cdc_source_reconnects_total";
    pub const HEARTBEAT_WRITE_ERRORS_TOTAL: &str = "cdc_heartbeat_write_errors_total";
    /// Rows found differing (confirmed) by the last consistency check of an index, by kind.
    pub const CHECK_DRIFT_ROWS: &str = "cdc_check_drift_rows";
    pub const CHECK_RUNS_TOTAL: &str = "cdc_check_runs_total";
    pub const CHECK_LAST_RUN_TIMESTAMP_SECONDS: &str = "cdc_check_last_run_timestamp_seconds";
    pub const CHECK_DURATION_SECONDS: &str = "cdc_check_duration_seconds";
    pub const CHECK_REPAIRED_DOCS_TOTAL: &str = "cdc_check_repaired_docs_total";
}

/// Unacknowledged work older than this makes `/readyz` fail.
pub const STALL_MS: u64 = 30_000;

type Probe = Box<dyn Fn() -> usize + Send + Sync>;

/// The process-wide metrics.
pub struct Metrics {
    registry: Registry,
    started_ms: u64,
    replication_lag: Gauge,
    heartbeat_lag: Gauge,
    heartbeat_enabled: AtomicBool,
    latency: Histogram,
    changes_read: IntCounterVec,
    changes_indexed: IntCounterVec,
    changes_dead: IntCounterVec,
    bulk_duration: Histogram,
    bulk_docs: Histogram,
    bulk_bytes: Histogram,
    bulk_retries: IntCounter,
    bulk_throttled: IntCounter,
    bulk_in_flight: IntGauge,
    concurrency_limit: IntGauge,
    source_queue: IntGauge,
    unacked: IntGauge,
    cp_file: IntGauge,
    cp_offset: IntGauge,
    cp_ts: IntGauge,
    server_file: IntGauge,
    server_offset: IntGauge,
    behind_bytes: IntGauge,
    headroom_bytes: IntGauge,
    headroom_files: IntGauge,
    source_connected: IntGauge,
    reconnects: IntCounter,
    heartbeat_errors: IntCounter,
    check_drift: IntGaugeVec,
    check_runs: IntCounterVec,
    check_last_run: IntGaugeVec,
    check_duration: prometheus::GaugeVec,
    check_repaired: IntCounterVec,
    state: Mutex<LagState>,
    probes: Mutex<Vec<(ProbeKind, Probe)>>,
    last_ack_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Events waiting between the source and the transform.
    SourceQueue,
    /// Operations submitted to the sink and not yet acknowledged.
    Unacked,
}

/// What the lag computation needs, updated from several tasks.
#[derive(Debug, Default)]
struct LagState {
    checkpoint: Option<(BinlogPosition, u32)>,
    /// Highest (file sequence, offset) the source has read.
    read: (u64, u64),
    /// The server's binlog end and when it was polled (ms since the epoch).
    server_end: Option<(BinlogPosition, u64)>,
    binlogs: Vec<(String, u64)>,
    last_caught_up_ms: u64,
    /// Heartbeats read but not yet acknowledged: (transaction end, ts_ms).
    heartbeats: VecDeque<((u64, u64), u64)>,
    last_heartbeat_ms: Option<u64>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The process-wide instance.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

fn key(p: &BinlogPosition) -> Option<(u64, u64)> {
    Some((file_sequence(&p.file).ok()?, p.pos))
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let gauge = |n: &str, h: &str| reg(&registry, Gauge::new(n, h).expect("valid"));
        let igauge = |n: &str, h: &str| reg(&registry, IntGauge::new(n, h).expect("valid"));
        let counter = |n: &str, h: &str| reg(&registry, IntCounter::new(n, h).expect("valid"));
        let counter_vec =
            |n: &str, h: &str, l: &[&str]| reg(&registry, IntCounterVec::new(Opts::new(n, h), l).expect("valid"));
        let histogram = |n: &str, h: &str, b: Vec<f64>| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(n, h).buckets(b)).expect("valid"),
            )
        };
        use names::*;
        let build = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(BUILD_INFO, "Always 1; labels tell the running build"),
                &["version"],
            )
            .expect("valid"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metrics");
        let seconds = vec![
            0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        ];
        let heartbeat_lag = Gauge::new(
            HEARTBEAT_LAG_SECONDS,
            "Seconds since the newest acknowledged heartbeat row was written at the source",
        )
        .expect("valid");
        Metrics {
            started_ms: now_ms(),
            replication_lag: gauge(
                REPLICATION_LAG_SECONDS,
                "Seconds the index is behind the source, from binlog commit timestamps; 0 when caught up",
            ),
            heartbeat_lag,
            heartbeat_enabled: AtomicBool::new(false),
            latency: histogram(
                END_TO_END_LATENCY_SECONDS,
                "Source commit to Elasticsearch acknowledgement, per transaction (1 s resolution except heartbeats)",
                seconds.clone(),
            ),
            changes_read: counter_vec(
                CHANGES_READ_TOTAL,
                "Row changes of tracked tables read from the binlog",
                &["table", "op"],
            ),
            changes_indexed: counter_vec(
                CHANGES_INDEXED_TOTAL,
                "Document operations acknowledged by Elasticsearch (written or already newer)",
                &["table", "op"],
            ),
            changes_dead: counter_vec(
                CHANGES_DEAD_LETTERED_TOTAL,
                "Changes written to the dead-letter file",
                &["table", "op"],
            ),
            bulk_duration: histogram(
                BULK_REQUEST_DURATION_SECONDS,
                "Duration of one bulk request",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ],
            ),
            bulk_docs: histogram(
                BULK_REQUEST_DOCS,
                "Documents per bulk request",
                prometheus::exponential_buckets(1.0, 4.0, 9).expect("valid"),
            ),
            bulk_bytes: histogram(
                BULK_REQUEST_BYTES,
                "NDJSON bytes per bulk request",
                prometheus::exponential_buckets(256.0, 4.0, 10).expect("valid"),
            ),
            bulk_retries: counter(
                BULK_RETRIES_TOTAL,
                "Bulk requests (or their rejected remainder) scheduled for a retry",
            ),
            bulk_throttled: counter(
                BULK_THROTTLED_DOCS_TOTAL,
                "Documents answered with HTTP 429 (whole request or per item)",
            ),
            bulk_in_flight: igauge(BULK_REQUESTS_IN_FLIGHT, "Bulk requests awaiting a response"),
            concurrency_limit: igauge(
                SINK_CONCURRENCY_LIMIT_REQUESTS,
                "Bulk requests allowed in flight now (adapts to pushback between sink.min_in_flight and sink.max_in_flight)",
            ),
            source_queue: igauge(
                SOURCE_QUEUE_DEPTH_EVENTS,
                "Events read from the binlog waiting for the transform",
            ),
            unacked: igauge(
                SINK_UNACKED_OPS,
                "Document operations submitted to the sink and not yet acknowledged",
            ),
            cp_file: igauge(CHECKPOINT_FILE_SEQUENCE, "Binlog file number of the checkpoint"),
            cp_offset: igauge(
                CHECKPOINT_OFFSET_BYTES,
                "Byte offset of the checkpoint in its binlog file",
            ),
            cp_ts: igauge(
                CHECKPOINT_SOURCE_TIMESTAMP_SECONDS,
                "Commit time (epoch seconds) of the last checkpointed transaction",
            ),
            server_file: igauge(
                SERVER_BINLOG_FILE_SEQUENCE,
                "Binlog file number of the server's current end",
            ),
            server_offset: igauge(SERVER_BINLOG_OFFSET_BYTES, "Byte offset of the server's current end"),
            behind_bytes: igauge(
                BINLOG_BEHIND_BYTES,
                "Binlog bytes between the checkpoint and the server's end; 0 when caught up",
            ),
            headroom_bytes: igauge(
                BINLOG_RETENTION_HEADROOM_BYTES,
                "Binlog bytes on the server older than the checkpoint (what a purge removes before reaching it)",
            ),
            headroom_files: igauge(
                BINLOG_RETENTION_HEADROOM_FILES,
                "Binlog files on the server older than the checkpoint's file",
            ),
            source_connected: igauge(SOURCE_CONNECTED, "1 while the binlog stream is established"),
            reconnects: counter(SOURCE_RECONNECTS_TOTAL, "Binlog stream interruptions"),
            heartbeat_errors: counter(HEARTBEAT_WRITE_ERRORS_TOTAL, "Failed heartbeat row writes"),
            check_drift: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        CHECK_DRIFT_ROWS,
                        "Rows the last consistency check of the index confirmed as missing, extra or stale",
                    ),
                    &["index", "kind"],
                )
                .expect("valid"),
            ),
            check_runs: counter_vec(
                CHECK_RUNS_TOTAL,
                "Consistency checks run, by mode and result (clean, drift, incomplete, error)",
                &["mode", "result"],
            ),
            check_last_run: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        CHECK_LAST_RUN_TIMESTAMP_SECONDS,
                        "When the last consistency check of this mode finished (epoch seconds)",
                    ),
                    &["mode"],
                )
                .expect("valid"),
            ),
            check_duration: reg(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        CHECK_DURATION_SECONDS,
                        "Duration of the last consistency check of this mode",
                    ),
                    &["mode"],
                )
                .expect("valid"),
            ),
            check_repaired: counter_vec(
                CHECK_REPAIRED_DOCS_TOTAL,
                "Documents re-indexed or deleted by consistency-check repairs",
                &["index"],
            ),
            registry,
            state: Mutex::new(LagState::default()),
            probes: Mutex::new(Vec::new()),
            last_ack_ms: AtomicU64::new(0),
        }
    }

    /// Exports the heartbeat lag from now on (only when a heartbeat table is configured).
    pub fn enable_heartbeat(&self) {
        if !self.heartbeat_enabled.swap(true, Ordering::SeqCst) {
            let _ = self.registry.register(Box::new(self.heartbeat_lag.clone()));
        }
    }

    /// Registers a depth probe; it replaces an earlier one of the same kind.
    pub fn probe(&self, kind: ProbeKind, f: impl Fn() -> usize + Send + Sync + 'static) {
        let mut p = self.probes.lock().expect("probes lock");
        p.retain(|(k, _)| *k != kind);
        p.push((kind, Box::new(f)));
    }

    fn probe_value(&self, kind: ProbeKind) -> usize {
        let p = self.probes.lock().expect("probes lock");
        p.iter().filter(|(k, _)| *k == kind).map(|(_, f)| f()).sum()
    }

    pub fn change_read(&self, table: &str, op: RowOp) {
        self.changes_read.with_label_values(&[table, op.as_str()]).inc();
    }

    pub fn change_indexed(&self, table: &str, op: RowOp) {
        self.changes_indexed.with_label_values(&[table, op.as_str()]).inc();
    }

    pub fn change_dead_lettered(&self, table: &str, op: &str) {
        self.changes_dead.with_label_values(&[table, op]).inc();
    }

    /// A bulk request is about to be sent; the guard records its duration when dropped.
    pub fn bulk_started(&self, docs: usize, bytes: usize) -> BulkTimer {
        self.bulk_docs.observe(docs as f64);
        self.bulk_bytes.observe(bytes as f64);
        self.bulk_in_flight.inc();
        BulkTimer(std::time::Instant::now())
    }

    pub fn concurrency_limit(&self, limit: usize) {
        self.concurrency_limit.set(limit as i64);
    }

    pub fn bulk_retry(&self) {
        self.bulk_retries.inc();
    }

    pub fn bulk_throttled(&self, docs: usize) {
        self.bulk_throttled.inc_by(docs as u64);
    }

    /// Operations were acknowledged (progress for `/readyz`).
    pub fn acked(&self) {
        self.last_ack_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn source_connected(&self, up: bool) {
        if !up && self.source_connected.get() == 1 {
            self.reconnects.inc();
        }
        self.source_connected.set(up as i64);
    }

    pub fn heartbeat_write_failed(&self) {
        self.heartbeat_errors.inc();
    }

    /// The last check of `index` confirmed `rows` differences of `kind` (missing/extra/stale).
    pub fn check_drift(&self, index: &str, kind: &str, rows: u64) {
        self.check_drift.with_label_values(&[index, kind]).set(rows as i64);
    }

    /// A consistency check of `mode` (sample/full) ended with `result` after `seconds`.
    pub fn check_finished(&self, mode: &str, result: &str, seconds: f64) {
        self.check_runs.with_label_values(&[mode, result]).inc();
        self.check_last_run
            .with_label_values(&[mode])
            .set((now_ms() / 1000) as i64);
        self.check_duration.with_label_values(&[mode]).set(seconds);
    }

    /// A repair re-indexed or deleted `docs` documents of `index`.
    pub fn check_repaired(&self, index: &str, docs: u64) {
        self.check_repaired.with_label_values(&[index]).inc_by(docs);
    }

    /// The Prometheus text exposition of the consistency-check metrics only (for a one-shot
    /// `cdc-indexer check` writing a node-exporter textfile).
    pub fn render_check(&self) -> Vec<u8> {
        let families: Vec<_> = self
            .registry
            .gather()
            .into_iter()
            .filter(|f| f.name().starts_with("cdc_check_"))
            .collect();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("text encoding into memory cannot fail");
        buf
    }

    /// The source has read the event ending at `offset` of binlog file number `file_seq`.
    pub fn source_read(&self, file_seq: u64, offset: u64) {
        if offset == 0 {
            return; // artificial events carry no position
        }
        let mut s = self.state.lock().expect("lag lock");
        s.read = s.read.max((file_seq, offset));
    }

    /// A heartbeat row written at `ts_ms` belongs to the transaction ending at `end`.
    pub fn heartbeat_read(&self, end: &BinlogPosition, ts_ms: u64) {
        if let Some(k) = key(end) {
            self.state.lock().expect("lag lock").heartbeats.push_back((k, ts_ms));
        }
    }

    /// Every change of the transaction ending at `b` is acknowledged.
    pub fn acknowledged(&self, b: &Boundary) {
        let now = now_ms();
        let mut s = self.state.lock().expect("lag lock");
        let mut latency_ms = now.saturating_sub(b.source_ts as u64 * 1000);
        if let Some(k) = key(&b.position) {
            while s.heartbeats.front().is_some_and(|(hk, _)| *hk <= k) {
                let (hk, ts) = s.heartbeats.pop_front().expect("front exists");
                s.last_heartbeat_ms = Some(s.last_heartbeat_ms.unwrap_or(0).max(ts));
                if hk == k {
                    latency_ms = now.saturating_sub(ts);
                }
            }
        }
        drop(s);
        self.latency.observe(latency_ms as f64 / 1000.0);
    }

    /// A checkpoint was written (or found at start-up).
    pub fn checkpointed(&self, c: &Checkpoint) {
        if let Some((seq, pos)) = key(&c.position) {
            self.cp_file.set(seq as i64);
            self.cp_offset.set(pos as i64);
        }
        self.cp_ts.set(c.source_ts as i64);
        self.state.lock().expect("lag lock").checkpoint = Some((c.position.clone(), c.source_ts));
    }

    /// The server's binlog end as polled now.
    pub fn server_end(&self, end: BinlogPosition) {
        if let Some((seq, pos)) = key(&end) {
            self.server_file.set(seq as i64);
            self.server_offset.set(pos as i64);
        }
        self.state.lock().expect("lag lock").server_end = Some((end, now_ms()));
    }

    /// The server's binlog files, oldest first, with sizes.
    pub fn server_binlogs(&self, files: Vec<(String, u64)>) {
        self.state.lock().expect("lag lock").binlogs = files;
    }

    /// Recomputes the derived gauges.
    pub fn refresh(&self) {
        let now = now_ms();
        let queued = self.probe_value(ProbeKind::SourceQueue);
        let unacked = self.probe_value(ProbeKind::Unacked);
        self.source_queue.set(queued as i64);
        self.unacked.set(unacked as i64);
        if unacked == 0 {
            self.acked(); // nothing is waiting, so nothing is stalled
        }
        let mut s = self.state.lock().expect("lag lock");
        let caught_up_at = match &s.server_end {
            Some((end, polled)) if queued == 0 && unacked == 0 && key(end).is_some_and(|k| s.read >= k) => {
                Some(*polled)
            }
            _ => None,
        };
        if let Some(at) = caught_up_at {
            s.last_caught_up_ms = s.last_caught_up_ms.max(at);
        }
        let lag = replication_lag_ms(
            now,
            caught_up_at.is_some(),
            s.checkpoint.as_ref().map(|(_, ts)| *ts),
            s.last_caught_up_ms,
            self.started_ms,
        );
        self.replication_lag.set(lag as f64 / 1000.0);
        if self.heartbeat_enabled.load(Ordering::Relaxed) {
            let since = s.last_heartbeat_ms.unwrap_or(self.started_ms);
            self.heartbeat_lag.set(now.saturating_sub(since) as f64 / 1000.0);
        }
        if let (Some((cp, _)), Some((end, _))) = (&s.checkpoint, &s.server_end) {
            let behind = if caught_up_at.is_some() {
                Some(0)
            } else {
                crate::status::bytes_between(&s.binlogs, cp, end)
            };
            if let Some(b) = behind {
                self.behind_bytes.set(b as i64);
            }
            if let Some((files, bytes)) = retention_headroom(&s.binlogs, cp) {
                self.headroom_files.set(files as i64);
                self.headroom_bytes.set(bytes as i64);
            }
        }
    }

    /// Whether the indexer is doing its job: `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.source_connected.get() != 1 {
            return Err("the binlog stream is not connected".into());
        }
        let idle_for = now_ms().saturating_sub(self.last_ack_ms.load(Ordering::Relaxed));
        let unacked = self.unacked.get();
        if unacked > 0 && idle_for > STALL_MS {
            return Err(format!(
                "{unacked} operations unacknowledged and no progress for {} s",
                idle_for / 1000
            ));
        }
        Ok(())
    }

    /// The Prometheus text exposition of every metric, refreshed.
    pub fn render(&self) -> Vec<u8> {
        self.refresh();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory cannot fail");
        buf
    }
}

/// Records a bulk request's duration when dropped, whatever path the request took.
pub struct BulkTimer(std::time::Instant);

impl Drop for BulkTimer {
    fn drop(&mut self) {
        let m = get();
        m.bulk_in_flight.dec();
        m.bulk_duration.observe(self.0.elapsed().as_secs_f64());
    }
}

/// The lag rule of the module contract, in milliseconds.
fn replication_lag_ms(
    now: u64,
    caught_up: bool,
    checkpoint_ts: Option<u32>,
    last_caught_up_ms: u64,
    started_ms: u64,
) -> u64 {
    if caught_up {
        return 0;
    }
    let newest_known_applied = match checkpoint_ts {
        Some(ts) => (ts as u64 * 1000).max(last_caught_up_ms),
        None => last_caught_up_ms.max(started_ms),
    };
    now.saturating_sub(newest_known_applied)
}

/// Files and bytes on the server before the checkpoint: what a purge removes before ours.
fn retention_headroom(files: &[(String, u64)], cp: &BinlogPosition) -> Option<(u64, u64)> {
    let cp_seq = file_sequence(&cp.file).ok()?;
    if !files.iter().any(|(f, _)| *f == cp.file) {
        return Some((0, 0)); // already purged: the source reports the fatal error
    }
    let mut count = 0;
    let mut bytes = cp.pos;
    for (name, size) in files {
        if file_sequence(name).ok()? < cp_seq {
            count += 1;
            bytes += size;
        }
    }
    Some((count, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(f: &str, pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: f.into(),
            pos,
            gtid: None,
        }
    }

    #[test]
    fn lag_is_zero_when_caught_up_and_bounded_otherwise() {
        // Caught up: 0 whatever the checkpoint's age (an idle source is not lagging).
        assert_eq!(replication_lag_ms(1_000_000, true, Some(10), 0, 0), 0);
        // Behind: measured from the newer of the checkpoint's commit and the last caught-up poll.
        assert_eq!(replication_lag_ms(100_000, false, Some(90), 0, 0), 10_000);
        assert_eq!(replication_lag_ms(100_000, false, Some(10), 97_000, 0), 3_000);
        // No checkpoint yet: since start.
        assert_eq!(replication_lag_ms(100_000, false, None, 0, 40_000), 60_000);
    }

    #[test]
    fn headroom_counts_older_files() {
        let files = vec![
            ("b.000001".to_string(), 1000),
            ("b.000002".to_string(), 500),
            ("b.000003".to_string(), 300),
        ];
        assert_eq!(retention_headroom(&files, &p("b.000003", 10)), Some((2, 1510)));
        assert_eq!(retention_headroom(&files, &p("b.000001", 10)), Some((0, 10)));
        assert_eq!(retention_headroom(&files, &p("b.000009", 10)), Some((0, 0)));
    }

    #[test]
    fn heartbeats_count_once_acknowledged() {
        let m = Metrics::new();
        m.enable_heartbeat();
        m.heartbeat_read(&p("b.000001", 100), 5_000);
        m.heartbeat_read(&p("b.000001", 200), 6_000);
        m.acknowledged(&Boundary {
            position: p("b.000001", 150),
            source_ts: 5,
        });
        assert_eq!(m.state.lock().unwrap().last_heartbeat_ms, Some(5_000));
        m.acknowledged(&Boundary {
            position: p("b.000001", 200),
            source_ts: 6,
        });
        let s = m.state.lock().unwrap();
        assert_eq!(s.last_heartbeat_ms, Some(6_000));
        assert!(s.heartbeats.is_empty());
    }

    #[test]
    fn exposition_has_every_exported_name_and_no_data_labels() {
        let m = Metrics::new();
        m.enable_heartbeat();
        m.change_read("shop.orders", RowOp::Insert);
        m.change_indexed("shop.orders", RowOp::Insert);
        m.change_dead_lettered("shop.orders", "update");
        drop(m.bulk_started(3, 900));
        m.check_drift("orders", "missing", 2);
        m.check_finished("full", "drift", 1.5);
        m.check_repaired("orders", 2);
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            names::BUILD_INFO,
            names::REPLICATION_LAG_SECONDS,
            names::HEARTBEAT_LAG_SECONDS,
            names::END_TO_END_LATENCY_SECONDS,
            names::CHANGES_READ_TOTAL,
            names::CHANGES_INDEXED_TOTAL,
            names::CHANGES_DEAD_LETTERED_TOTAL,
            names::BULK_REQUEST_DURATION_SECONDS,
            names::BULK_REQUEST_DOCS,
            names::BULK_REQUEST_BYTES,
            names::BULK_RETRIES_TOTAL,
            names::BULK_THROTTLED_DOCS_TOTAL,
            names::BULK_REQUESTS_IN_FLIGHT,
            names::SOURCE_QUEUE_DEPTH_EVENTS,
            names::SINK_UNACKED_OPS,
            names::CHECKPOINT_FILE_SEQUENCE,
            names::CHECKPOINT_OFFSET_BYTES,
            names::SERVER_BINLOG_FILE_SEQUENCE,
            names::BINLOG_BEHIND_BYTES,
            names::BINLOG_RETENTION_HEADROOM_BYTES,
            names::BINLOG_RETENTION_HEADROOM_FILES,
            names::SOURCE_CONNECTED,
            names::SOURCE_RECONNECTS_TOTAL,
            names::CHECK_DRIFT_ROWS,
            names::CHECK_RUNS_TOTAL,
            names::CHECK_LAST_RUN_TIMESTAMP_SECONDS,
            names::CHECK_DURATION_SECONDS,
            names::CHECK_REPAIRED_DOCS_TOTAL,
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(&format!("\n{name}")), "{name} missing:\n{text}");
        }
        assert!(text.contains(r#"cdc_build_info{version="#), "{text}");
        assert!(
            text.contains(r#"cdc_check_drift_rows{index="orders",kind="missing"} 2"#),
            "{text}"
        );
        let only_check = String::from_utf8(m.render_check()).unwrap();
        assert!(only_check.contains(names::CHECK_RUNS_TOTAL) && !only_check.contains(names::BUILD_INFO));
        assert!(text.contains(r#"cdc_changes_read_total{op="insert",table="shop.orders"} 1"#));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let labels = line.split_once('{').map(|(_, r)| r).unwrap_or("");
            for pair in labels.split(',').filter(|p| p.contains('=')) {
                let name = pair.split('=').next().unwrap();
                assert!(
                    [
                        "table",
                        "op",
                        "version",
                        "le",
                        "index",
                        "status_class",
                        "kind",
                        "mode",
                        "result"
                    ]
                    .contains(&name),
                    "unexpected label {name} in {line}"
                );
            }
        }
    }
}

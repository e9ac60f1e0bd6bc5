//! Consistency checker: compares each tracked table with its index, and repairs exactly what
//! differs.
//!
//! Contract:
//! * Rows are read from the primary (`source.url`) inside `START TRANSACTION WITH CONSISTENT
//!   SNAPSHOT`, together with the binlog position P that snapshot corresponds to, and rendered
//!   by the indexer's own [`Mapping`] (masking, tokens, pinyin and all), so the document compared
//!   is byte for byte what the indexer writes. Documents are compared by a digest of their
//!   canonical JSON (object keys sorted), so key order and number spelling do not matter.
//! * **Sampling** ([`Mode::Sample`]) draws random integer keys over the key span of both the
//!   table and the index and keeps those present on either side, so every row *and* every
//!   document is equally likely to be picked: missing, extra and stale documents are all found
//!   at their true rate. (A table whose key is not an integer samples rows with `ORDER BY RAND`,
//!   which finds missing and stale documents but not extra ones.)
//! * **Full** ([`Mode::Full`]) walks the table in primary-key ranges of `check.range_rows` rows,
//!   each read in its own short snapshot, and reads the index documents of the same key range
//!   (a `range` query on the key field, paged with `search_after`). A range whose row count and
//!   sum of per-key hashes equal the index's is done; a range that differs is bisected by key,
//!   comparing count and hash of each half, down to the single keys that differ. Only one
//!   range's digests (≈ 40 bytes a row) are held at a time, so memory is flat however large
//!   the table. Documents without the key field cannot belong to any row and are extra.
//! * **No false positives from changes in flight.** A first difference is only a candidate. It
//!   becomes drift after a re-check: wait until the indexer's checkpoint (the state directory's
//!   `checkpoint.json`) has passed P — then every change up to P is in the index — read the
//!   document again (with its `_version`), and read the row again in a new snapshot P'. The
//!   difference is confirmed only if the row did not change between P and P' and the document's
//!   version is below every version a change after P can carry (see [`after`]): then the index
//!   must hold exactly the row as of P, and does not. A row that changed meanwhile, or a
//!   document already carrying a newer change, is re-checked from P' (up to
//!   `check.recheck_rounds` times; still changing → reported *unsettled*, not drift). If the
//!   checkpoint does not pass P within `check.settle_timeout_ms` (indexer stopped or stuck), the
//!   candidates are reported *unverified*, never as drift.
//! * **Repair cannot overwrite a newer change.** A repair writes the row as read at P' (or
//!   deletes an extra document) through the same `_bulk` encoding as the sink, with
//!   `version_type=external_gte` and version `after(P') − 1`: the highest version that is still
//!   below every change committed after P' (a change after P' sits in a rows event starting
//!   after P', see [`crate::position`]). So a live change that arrives later, or arrived first,
//!   always wins (Elasticsearch answers 409 to the repair, counted as superseded), while a
//!   document edited directly in the index (internal versioning adds 1 to its version) loses
//!   to the repair.
//! * Results: a [`Report`] (human table or JSON), the exit code ([`EXIT_CLEAN`], [`EXIT_DRIFT`],
//!   [`EXIT_INCOMPLETE`]; errors are [`EXIT_ERROR`]), and metrics (`cdc_check_*`).
//!
//! Limits: one table per index (a `source` regex matching several tables is skipped), a
//! single-column primary key forming `_id`; full mode needs an integer key that documents carry
//! as a field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::bulk::{self, BulkOutcome, ItemOutcome};
use crate::change::{DocAction, DocOp, RowOp};
use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::config::{Config, TableMapping};
use crate::position::{file_sequence, BinlogPosition, Version, VersionError};
use crate::schema::TableSchema;
use crate::snapshot::{self, SnapshotError};
use crate::source::{self, SourceError};
use crate::tokenize::{Tokenizer, TokenizerError};
use crate::transform::Mapping;

/// Exit code: index and database agree.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: drift was confirmed (with `--repair`: and repaired, unless the report says not).
pub const EXIT_DRIFT: u8 = 1;
/// Exit code: the check could not run (configuration, connection, server error).
pub const EXIT_ERROR: u8 = 2;
/// Exit code: no drift confirmed, but something was not checked (an unverified difference, a
/// skipped table, a failed repair).
pub const EXIT_INCOMPLETE: u8 = 3;

/// Ids listed per kind in a report (counts are always complete).
const MAX_LISTED: usize = 1_000;
/// Candidates confirmed (and repaired) together.
const CONFIRM_BATCH: usize = 1_000;
/// Keys per `IN (…)` query and per `_mget`.
const KEYS_PER_QUERY: usize = 1_000;
/// Documents per `_search` page.
const ES_PAGE: usize = 1_000;
/// Repair operations per `_bulk` request.
const REPAIR_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("database query failed: {0}")]
    Query(#[from] mysql_async::Error),
    #[error("Elasticsearch {what}: {reason}")]
    Es { what: String, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Position(#[from] VersionError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
}

/// What to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `rows` random keys per table, drawn from a generator seeded with `seed`.
    Sample { rows: usize, seed: u64 },
    /// Every row and every document.
    Full,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Sample { .. } => "sample",
            Mode::Full => "full",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// Re-index the confirmed differences.
    pub repair: bool,
    /// Only the table mapping with this index (alias).
    pub index: Option<String>,
}

/// How a document differs from its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The row exists, the document does not.
    Missing,
    /// The document exists, the row does not.
    Extra,
    /// Both exist and the document is not the row's rendering.
    Stale,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Stale => "stale",
        }
    }
}

/// A count with the first [`MAX_LISTED`] ids.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Found {
    pub count: u64,
    pub ids: Vec<String>,
}

impl Found {
    fn add(&mut self, id: &str) {
        self.count += 1;
        if self.ids.len() < MAX_LISTED {
            self.ids.push(id.to_string());
        }
    }
}

/// The result for one table / index pair.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TableReport {
    pub index: String,
    pub table: String,
    /// Database rows compared.
    pub rows: u64,
    /// Index documents compared.
    pub docs: u64,
    /// Full mode: key ranges compared, and those whose count or hash differed.
    pub ranges: u64,
    pub ranges_differing: u64,
    /// Keys that differed when first compared and were re-checked (most are changes in
    /// flight, which settle and are not drift).
    pub rechecked: u64,
    pub missing: Found,
    pub extra: Found,
    pub stale: Found,
    /// Rows still changing after every re-check (not drift: the indexer is writing them).
    pub unsettled: Found,
    /// Differences not re-checked because the indexer's checkpoint did not pass their read
    /// position in time.
    pub unverified: Found,
    /// Rows the mapping cannot render (the indexer dead-letters them); not compared.
    pub unrenderable: u64,
    /// Repair writes applied, and those a newer change had already superseded (409).
    pub repaired: u64,
    pub superseded: u64,
    pub repair_failed: Found,
    /// Why the table was not checked, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub seconds: f64,
}

impl TableReport {
    pub fn drift(&self) -> u64 {
        self.missing.count + self.extra.count + self.stale.count
    }

    fn found(&mut self, kind: Kind) -> &mut Found {
        match kind {
            Kind::Missing => &mut self.missing,
            Kind::Extra => &mut self.extra,
            Kind::Stale => &mut self.stale,
        }
    }

    fn incomplete(&self) -> bool {
        self.skipped.is_some() || self.unverified.count > 0 || self.repair_failed.count > 0
    }
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub repair: bool,
    pub result: &'static str,
    pub exit_code: u8,
    pub seconds: f64,
    pub tables: Vec<TableReport>,
}

impl Report {
    fn new(opts: &Options, tables: Vec<TableReport>, seconds: f64) -> Report {
        let drift = tables.iter().any(|t| t.drift() > 0);
        let incomplete = tables.iter().any(TableReport::incomplete);
        let (result, exit_code) = match (drift, incomplete) {
            (true, _) => ("drift", EXIT_DRIFT),
            (false, true) => ("incomplete", EXIT_INCOMPLETE),
            (false, false) => ("clean", EXIT_CLEAN),
        };
        Report {
            mode: opts.mode.name(),
            seed: match opts.mode {
                Mode::Sample { seed, .. } => Some(seed),
                Mode::Full => None,
            },
            repair: opts.repair,
            result,
            exit_code,
            seconds,
            tables,
        }
    }

    /// Confirmed differences over all tables.
    pub fn drift(&self) -> u64 {
        self.tables.iter().map(TableReport::drift).sum()
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<28} {:<28} {:>9} {:>9} {:>8} {:>6} {:>6} {:>10} {:>11} {:>9} {:>8}\n",
            "index",
            "table",
            "rows",
            "docs",
            "missing",
            "extra",
            "stale",
            "unsettled",
            "unverified",
            "repaired",
            "seconds"
        );
        for t in &self.tables {
            out.push_str(&format!(
                "{:<28} {:<28} {:>9} {:>9} {:>8} {:>6} {:>6} {:>10} {:>11} {:>9} {:>8.2}\n",
                t.index,
                t.table,
                t.rows,
                t.docs,
                t.missing.count,
                t.extra.count,
                t.stale.count,
                t.unsettled.count,
                t.unverified.count,
                t.repaired,
                t.seconds
            ));
            for (what, f) in [
                ("missing", &t.missing),
                ("extra", &t.extra),
                ("stale", &t.stale),
                ("unsettled", &t.unsettled),
                ("unverified", &t.unverified),
                ("repair failed", &t.repair_failed),
            ] {
                if f.count > 0 {
                    let more = f.count.saturating_sub(f.ids.len() as u64);
                    let tail = if more > 0 {
                        format!(" … and {more} more")
                    } else {
                        String::new()
                    };
                    out.push_str(&format!("  {what}: {}{tail}\n", f.ids.join(", ")));
                }
            }
            if let Some(why) = &t.skipped {
                out.push_str(&format!("  skipped: {why}\n"));
            }
        }
        let seed = self.seed.map(|s| format!(", seed {s}")).unwrap_or_default();
        out.push_str(&format!(
            "{} check{seed}: {} ({} differing rows{}) in {:.2} s; exit code {}\n",
            self.mode,
            self.result,
            self.drift(),
            if self.repair { ", repair on" } else { "" },
            self.seconds,
            self.exit_code
        ));
        out
    }
}

/// The exclusive upper bound of versions that reflect the database as of `p`: every change
/// committed after `p` lies in a rows event that starts after `p` (the transaction's first
/// event, GTID or BEGIN, comes before it), so its version is at least this.
fn after(p: &BinlogPosition) -> Result<u64, VersionError> {
    Ok(Version::of_row(file_sequence(&p.file)?, p.pos + 1, 0)?.0)
}

/// Digest of a JSON document, independent of object key order.
fn digest(v: &Json) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    hash_json(v, &mut h);
    h.finish()
}

fn hash_json(v: &Json, h: &mut impl Hasher) {
    match v {
        Json::Null => 0u8.hash(h),
        Json::Bool(b) => (1u8, b).hash(h),
        Json::Number(n) => {
            2u8.hash(h);
            // 10 and 10.0 are the same value to Elasticsearch.
            match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => (0u8, i as i128).hash(h),
                (_, Some(u), _) => (0u8, u as i128).hash(h),
                (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => (0u8, f as i128).hash(h),
                (_, _, Some(f)) => (1u8, f.to_bits()).hash(h),
                _ => n.to_string().hash(h),
            }
        }
        Json::String(s) => (3u8, s).hash(h),
        Json::Array(a) => {
            (4u8, a.len()).hash(h);
            a.iter().for_each(|x| hash_json(x, h));
        }
        Json::Object(o) => {
            (5u8, o.len()).hash(h);
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            for k in keys {
                k.hash(h);
                hash_json(&o[k], h);
            }
        }
    }
}

/// Hash of one key's state for range sums.
fn entry_hash(key: i128, digest: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, digest).hash(&mut h);
    h.finish()
}

/// Keys whose entries differ between `a` and `b` (each sorted by key, one entry per key), found
/// by comparing count and hash sum of key ranges and halving only the ranges that differ.
fn bisect(a: &[(i128, u64)], b: &[(i128, u64)], out: &mut Vec<i128>) {
    let sum = |s: &[(i128, u64)]| s.iter().fold(0u64, |acc, (k, d)| acc.wrapping_add(entry_hash(*k, *d)));
    if a.len() == b.len() && sum(a) == sum(b) {
        return;
    }
    let lo = a.first().map(|e| e.0).into_iter().chain(b.first().map(|e| e.0)).min();
    let hi = a.last().map(|e| e.0).into_iter().chain(b.last().map(|e| e.0)).max();
    let (Some(lo), Some(hi)) = (lo, hi) else { return };
    if lo == hi {
        out.push(lo);
        return;
    }
    let mid = lo + (hi - lo) / 2;
    let (sa, sb) = (a.partition_point(|e| e.0 <= mid), b.partition_point(|e| e.0 <= mid));
    bisect(&a[..sa], &b[..sb], out);
    bisect(&a[sa..], &b[sb..], out);
}

/// A row as the checker saw it.
#[derive(Debug, Clone)]
enum RowState {
    /// Rendered: digest, and the document when kept for a repair.
    Doc(u64, Option<Arc<str>>),
    /// The mapping cannot render it (the indexer dead-letters such rows).
    Unrenderable,
}

/// A document as the checker saw it.
#[derive(Debug, Clone, Copy)]
struct EsDoc {
    version: u64,
    digest: u64,
}

fn agree(db: Option<u64>, es: Option<&EsDoc>) -> bool {
    match (db, es) {
        (None, None) => true,
        (Some(d), Some(e)) => d == e.digest,
        _ => false,
    }
}

/// A difference waiting for its re-check.
#[derive(Debug, Clone)]
struct Candidate {
    id: String,
    /// The row's digest as read at `at` (`None`: no row).
    db: Option<u64>,
    at: BinlogPosition,
}

/// The key column's SQL type class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Integer,
    Text,
}

/// One table and its index, ready to compare.
struct Target {
    mapping: Mapping,
    index: String,
    db: String,
    table: String,
    select: String,
    from: String,
    key_col: String,
    key_type: KeyType,
    /// Document field that holds the key (absent when excluded from documents).
    key_field: Option<String>,
    key_pos: usize,
    schema: Option<Arc<TableSchema>>,
}

impl Target {
    fn qualified(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }

    /// The SQL parameter for the key of `_id` `id` (`None`: no row can have it).
    fn key_param(&self, id: &str) -> Option<mysql_async::Value> {
        match self.key_type {
            KeyType::Integer => id.parse::<i128>().ok().and_then(|k| {
                i64::try_from(k)
                    .map(mysql_async::Value::Int)
                    .ok()
                    .or_else(|| u64::try_from(k).ok().map(mysql_async::Value::UInt))
            }),
            KeyType::Text => Some(mysql_async::Value::Bytes(id.as_bytes().to_vec())),
        }
    }

    /// Renders rows into `_id → state`; `keep` keeps the documents (for repairs).
    fn render(
        &mut self,
        rows: Vec<mysql_async::Row>,
        keep: bool,
        report: &mut TableReport,
    ) -> BTreeMap<String, RowState> {
        let mut out = BTreeMap::new();
        for row in rows {
            let schema = self
                .schema
                .get_or_insert_with(|| {
                    Arc::new(snapshot::schema_from_columns(
                        &self.db,
                        &self.table,
                        row.columns_ref(),
                        &[self.key_pos],
                    ))
                })
                .clone();
            let values = snapshot::row_values(row);
            let Ok(id) = self.mapping.doc_id(&schema, &values) else {
                report.unrenderable += 1;
                continue;
            };
            let state = match self
                .mapping
                .render(&schema, &values)
                .ok()
                .and_then(|doc| serde_json::from_str::<Json>(&doc).ok().map(|j| (digest(&j), doc)))
            {
                Some((d, doc)) => RowState::Doc(d, keep.then(|| Arc::from(doc))),
                None => {
                    report.unrenderable += 1;
                    RowState::Unrenderable
                }
            };
            out.insert(id, state);
        }
        out
    }
}

/// Runs one check of every configured table (or `opts.index`'s).
pub async fn run(cfg: &Config, tokenizer: Option<Arc<Tokenizer>>, opts: &Options) -> Result<Report, CheckError> {
    let started = Instant::now();
    let result = run_tables(cfg, tokenizer, opts).await;
    let seconds = started.elapsed().as_secs_f64();
    let m = crate::metrics::get();
    match result {
        Ok(tables) => {
            let report = Report::new(opts, tables, seconds);
            for t in &report.tables {
                if t.skipped.is_none() {
                    for kind in [Kind::Missing, Kind::Extra, Kind::Stale] {
                        let n = match kind {
                            Kind::Missing => t.missing.count,
                            Kind::Extra => t.extra.count,
                            Kind::Stale => t.stale.count,
                        };
                        m.check_drift(&t.index, kind.name(), n);
                    }
                }
            }
            m.check_finished(report.mode, report.result, seconds);
            Ok(report)
        }
        Err(e) => {
            m.check_finished(opts.mode.name(), "error", seconds);
            Err(e)
        }
    }
}

async fn run_tables(
    cfg: &Config,
    tokenizer: Option<Arc<Tokenizer>>,
    opts: &Options,
) -> Result<Vec<TableReport>, CheckError> {
    let tokenizer = match (tokenizer, crate::transform::needs_tokenizer(&cfg.tables)) {
        (Some(t), _) => Some(t),
        (None, true) => Some(Arc::new(Tokenizer::load(cfg.search.user_dict.as_deref())?)),
        (None, false) => None,
    };
    let client = crate::sink::client(&cfg.sink)?;
    let mut conn = source::connect(&source::Endpoint::main(&cfg.source)).await?;
    let version: String = conn.query_first("SELECT VERSION()").await?.unwrap_or_default();
    let checker = Checker {
        cfg,
        es: Es {
            client,
            timeout: Duration::from_millis(cfg.sink.request_timeout_ms),
        },
        mariadb: version.contains("MariaDB"),
    };
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
             AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2",
        )
        .await?;
    let heartbeat = crate::heartbeat::HeartbeatTable::parse(&cfg.source.heartbeat_table).map(|h| h.qualified_name());
    let mut reports = Vec::new();
    for t in cfg
        .tables
        .iter()
        .filter(|t| opts.index.as_ref().is_none_or(|i| *i == t.index))
    {
        let mapping = Mapping::new(t, cfg.source.offset(), tokenizer.as_ref());
        let matching: Vec<&(String, String)> = tables
            .iter()
            .filter(|(d, n)| {
                let q = format!("{d}.{n}");
                mapping.matches(&q) && heartbeat.as_deref() != Some(q.as_str())
            })
            .collect();
        let started = Instant::now();
        let mut report = TableReport {
            index: t.index.clone(),
            ..Default::default()
        };
        let target = match matching.as_slice() {
            [] => Err(format!("no table matches `{}`", t.source)),
            [(db, table)] => {
                report.table = format!("{db}.{table}");
                describe(&mut conn, db, table, t, mapping).await?
            }
            many => Err(format!(
                "`{}` matches {} tables; the checker compares one table per index",
                t.source,
                many.len()
            )),
        };
        match target {
            Ok(mut target) => {
                tracing::info!(index = %t.index, table = %target.qualified(), mode = opts.mode.name(), "consistency check started");
                match opts.mode {
                    Mode::Full if target.key_type != KeyType::Integer || target.key_field.is_none() => {
                        report.skipped = Some(
                            "full mode needs an integer primary key that documents carry as a field; use sampling"
                                .into(),
                        )
                    }
                    Mode::Full => checker.full(&mut conn, &mut target, opts, &mut report).await?,
                    Mode::Sample { rows, seed } => {
                        checker
                            .sample(&mut conn, &mut target, rows, seed, opts, &mut report)
                            .await?
                    }
                }
            }
            Err(why) => report.skipped = Some(why),
        }
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            index = %report.index,
            rows = report.rows,
            docs = report.docs,
            missing = report.missing.count,
            extra = report.extra.count,
            stale = report.stale.count,
            unsettled = report.unsettled.count,
            unverified = report.unverified.count,
            repaired = report.repaired,
            skipped = report.skipped.as_deref().unwrap_or(""),
            "consistency check done"
        );
        reports.push(report);
    }
    Ok(reports)
}

/// Reads the table's key and builds its [`Target`], or says why it cannot be checked.
async fn describe(
    conn: &mut Conn,
    db: &str,
    table: &str,
    cfg: &TableMapping,
    mapping: Mapping,
) -> Result<Result<Target, String>, CheckError> {
    let columns: Vec<(String, String)> = conn
        .exec(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? \
             ORDER BY ordinal_position",
            (db, table),
        )
        .await?;
    let keys: Vec<String> = conn
        .exec(
            "SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = ? AND table_name = ? \
             AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
            (db, table),
        )
        .await?;
    let [key] = keys.as_slice() else {
        return Ok(Err(format!(
            "the checker needs a single-column primary key ({db}.{table} has {})",
            keys.len()
        )));
    };
    if !(cfg.id_columns.is_empty() || cfg.id_columns == [key.clone()]) {
        return Ok(Err("id_columns differ from the primary key".into()));
    }
    let Some(key_pos) = columns.iter().position(|(c, _)| c == key) else {
        return Ok(Err(format!("primary key column {key} not found")));
    };
    let key_type = match columns[key_pos].1.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => KeyType::Integer,
        "char" | "varchar" => KeyType::Text,
        other => return Ok(Err(format!("primary key type {other} is not supported by the checker"))),
    };
    let in_docs = (cfg.include.is_empty() || cfg.include.contains(key)) && !cfg.exclude.contains(key);
    Ok(Ok(Target {
        mapping,
        index: cfg.index.clone(),
        db: db.into(),
        table: table.into(),
        select: columns
            .iter()
            .map(|(c, _)| snapshot::ident(c))
            .collect::<Vec<_>>()
            .join(", "),
        from: format!("{}.{}", snapshot::ident(db), snapshot::ident(table)),
        key_col: snapshot::ident(key),
        key_type,
        key_field: in_docs.then(|| cfg.rename.get(key).unwrap_or(key).clone()),
        key_pos,
        schema: None,
    }))
}

struct Checker<'a> {
    cfg: &'a Config,
    es: Es,
    mariadb: bool,
}

/// The Elasticsearch reads (cheap to clone, so a range can be read on another task).
#[derive(Clone)]
struct Es {
    client: Elasticsearch,
    timeout: Duration,
}

impl Checker<'_> {
    // ---- database side ----

    /// Reads the rows with these `_id`s in one new snapshot.
    async fn read_ids(
        &self,
        conn: &mut Conn,
        t: &mut Target,
        ids: &[String],
        keep: bool,
        report: &mut TableReport,
    ) -> Result<(BinlogPosition, BTreeMap<String, RowState>), CheckError> {
        let p = snapshot::begin_consistent_snapshot(conn, self.mariadb).await?;
        let params: Vec<mysql_async::Value> = ids.iter().filter_map(|id| t.key_param(id)).collect();
        let mut rows = Vec::new();
        for chunk in params.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT {} FROM {} WHERE {} IN ({})",
                t.select,
                t.from,
                t.key_col,
                vec!["?"; chunk.len()].join(", ")
            );
            let mut r: Vec<mysql_async::Row> = conn.exec(sql, chunk.to_vec()).await?;
            rows.append(&mut r);
        }
        conn.query_drop("COMMIT").await?;
        Ok((p, t.render(rows, keep, report)))
    }

    // ---- the two modes ----

    async fn full(
        &self,
        conn: &mut Conn,
        t: &mut Target,
        opts: &Options,
        report: &mut TableReport,
    ) -> Result<(), CheckError> {
        let field = t.key_field.clone().expect("checked by the caller");
        let range_rows = self.cfg.check.range_rows;
        let mut lower: Option<i128> = None;
        let mut pending: Vec<Candidate> = Vec::new();
        loop {
            // The database side of the range, in its own short snapshot.
            let started = Instant::now();
            let p = snapshot::begin_consistent_snapshot(conn, self.mariadb).await?;
            let rows: Vec<mysql_async::Row> = match lower {
                None => {
                    conn.exec(
                        format!(
                            "SELECT {} FROM {} ORDER BY {} LIMIT {range_rows}",
                            t.select, t.from, t.key_col
                        ),
                        (),
                    )
                    .await?
                }
                Some(l) => {
                    conn.exec(
                        format!(
                            "SELECT {} FROM {} WHERE {} > ? ORDER BY {} LIMIT {range_rows}",
                            t.select, t.from, t.key_col, t.key_col
                        ),
                        (int_param(l),),
                    )
                    .await?
                }
            };
            conn.query_drop("COMMIT").await?;
            let n = rows.len() as u64;
            let last_key: Option<i128> = rows.last().and_then(|r| r.as_ref(t.key_pos)).and_then(int_of);
            let done = n < range_rows;
            let upper = if done { None } else { last_key };
            // The index side of the range is read on another task while the rows render.
            let es_side = {
                let (es, index, field) = (self.es.clone(), t.index.clone(), field.clone());
                tokio::spawn(async move { es.range_docs(&index, &field, lower, upper).await })
            };
            let read_ms = started.elapsed().as_millis() as u64;
            let db = t.render(rows, false, report);
            let rendered_ms = started.elapsed().as_millis() as u64;
            let es = es_side.await.map_err(|e| CheckError::Es {
                what: "range read".into(),
                reason: e.to_string(),
            })??;
            tracing::debug!(
                index = %t.index,
                rows = n,
                docs = es.len(),
                read_ms,
                rendered_ms,
                both_ms = started.elapsed().as_millis() as u64,
                "range read"
            );
            report.ranges += 1;
            report.rows += n;
            report.docs += es.len() as u64;

            let mut a: Vec<(i128, u64)> = Vec::with_capacity(db.len());
            let mut db_state: HashMap<i128, Option<u64>> = HashMap::new();
            for (id, state) in &db {
                let Ok(k) = id.parse::<i128>() else { continue };
                match state {
                    RowState::Doc(d, _) => {
                        a.push((k, *d));
                        db_state.insert(k, Some(*d));
                    }
                    // Not compared: mark so the index side of this key is ignored too.
                    RowState::Unrenderable => {
                        db_state.insert(k, None);
                    }
                }
            }
            let unrenderable: HashSet<i128> = db_state.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
            let mut b: Vec<(i128, u64)> = Vec::with_capacity(es.len());
            let mut odd_ids = Vec::new();
            for (id, doc) in &es {
                match id.parse::<i128>() {
                    Ok(k) if !unrenderable.contains(&k) => b.push((k, doc.digest)),
                    Ok(_) => {}
                    // An `_id` that is no integer: no row renders to it.
                    Err(_) => odd_ids.push(id.clone()),
                }
            }
            a.sort_unstable();
            b.sort_unstable();
            b.dedup_by_key(|e| e.0);
            let mut differing = Vec::new();
            bisect(&a, &b, &mut differing);
            if !differing.is_empty() || !odd_ids.is_empty() {
                report.ranges_differing += 1;
            }
            for k in differing {
                pending.push(Candidate {
                    id: k.to_string(),
                    db: db_state.get(&k).copied().flatten(),
                    at: p.clone(),
                });
            }
            for id in odd_ids {
                pending.push(Candidate {
                    id,
                    db: None,
                    at: p.clone(),
                });
            }
            if pending.len() >= CONFIRM_BATCH || done {
                if done {
                    // Documents without the key field were in no range.
                    let keyless = self.es.keyless_docs(&t.index, &field).await?;
                    report.docs += keyless.len() as u64;
                    for (id, _) in keyless {
                        pending.push(Candidate {
                            id,
                            db: None,
                            at: p.clone(),
                        });
                    }
                }
                self.confirm(conn, t, std::mem::take(&mut pending), opts, report)
                    .await?;
            }
            if done {
                return Ok(());
            }
            lower = last_key;
        }
    }

    async fn sample(
        &self,
        conn: &mut Conn,
        t: &mut Target,
        rows: usize,
        seed: u64,
        opts: &Options,
        report: &mut TableReport,
    ) -> Result<(), CheckError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        t.qualified().hash(&mut h);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ h.finish());
        let ids = match t.key_type {
            KeyType::Integer => self.sample_integer_keys(conn, t, rows, &mut rng).await?,
            KeyType::Text => {
                let sql = format!(
                    "SELECT CAST({} AS CHAR) FROM {} ORDER BY RAND({}) LIMIT {rows}",
                    t.key_col,
                    t.from,
                    rng.gen::<u32>()
                );
                conn.query(sql).await?
            }
        };
        let (p, db) = self.read_ids(conn, t, &ids, false, report).await?;
        let es = self.es.mget(&t.index, &ids, true).await?;
        report.rows += db.len() as u64;
        report.docs += es.len() as u64;
        let mut pending = Vec::new();
        for id in &ids {
            let row = match db.get(id) {
                Some(RowState::Unrenderable) => continue,
                Some(RowState::Doc(d, _)) => Some(*d),
                None => None,
            };
            if !agree(row, es.get(id)) {
                pending.push(Candidate {
                    id: id.clone(),
                    db: row,
                    at: p.clone(),
                });
            }
        }
        self.confirm(conn, t, pending, opts, report).await
    }

    /// Up to `rows` keys drawn uniformly from those present in the table or in the index:
    /// random integers over both key spans, kept when either side has them.
    async fn sample_integer_keys(
        &self,
        conn: &mut Conn,
        t: &Target,
        rows: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Vec<String>, CheckError> {
        let db_bounds: Option<(Option<i128>, Option<i128>)> = {
            let sql = format!(
                "SELECT CAST(MIN({k}) AS CHAR), CAST(MAX({k}) AS CHAR) FROM {}",
                t.from,
                k = t.key_col
            );
            let r: Option<(Option<String>, Option<String>)> = conn.query_first(sql).await?;
            r.map(|(a, b)| (a.and_then(|s| s.parse().ok()), b.and_then(|s| s.parse().ok())))
        };
        let mut lo: Option<i128> = db_bounds.and_then(|b| b.0);
        let mut hi: Option<i128> = db_bounds.and_then(|b| b.1);
        if let Some(field) = &t.key_field {
            if let Some((a, b)) = self.es.es_key_bounds(&t.index, field).await? {
                lo = Some(lo.map_or(a, |l| l.min(a)));
                hi = Some(hi.map_or(b, |h| h.max(b)));
            }
        }
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(Vec::new());
        };
        let span = (hi - lo + 1) as u128;
        let mut chosen: Vec<String> = Vec::new();
        let mut tried: HashSet<i128> = HashSet::new();
        // Small spans are enumerated (shuffled); large ones are drawn at random.
        let mut all: Option<Vec<i128>> = (span <= 200_000).then(|| {
            let mut v: Vec<i128> = (lo..=hi).collect();
            v.shuffle(rng);
            v
        });
        for _ in 0..256 {
            if chosen.len() >= rows {
                break;
            }
            let want = ((rows - chosen.len()) * 4).clamp(256, 5_000);
            let batch: Vec<i128> = match &mut all {
                Some(v) => {
                    let take = want.min(v.len());
                    v.drain(..take).collect()
                }
                None => {
                    let mut b = Vec::with_capacity(want);
                    while b.len() < want && (tried.len() as u128) < span {
                        let k = rng.gen_range(lo..=hi);
                        if tried.insert(k) {
                            b.push(k);
                        }
                    }
                    b
                }
            };
            if batch.is_empty() {
                break;
            }
            let ids: Vec<String> = batch.iter().map(i128::to_string).collect();
            let mut present: HashSet<String> = HashSet::new();
            let params: Vec<mysql_async::Value> = batch.iter().map(|k| int_param(*k)).collect();
            for chunk in params.chunks(KEYS_PER_QUERY) {
                let sql = format!(
                    "SELECT CAST({k} AS CHAR) FROM {} WHERE {k} IN ({})",
                    t.from,
                    vec!["?"; chunk.len()].join(", "),
                    k = t.key_col
                );
                let found: Vec<String> = conn.exec(sql, chunk.to_vec()).await?;
                present.extend(found);
            }
            present.extend(self.es.mget(&t.index, &ids, false).await?.into_keys());
            // In draw order, so the first `rows` present keys are a uniform sample.
            for id in ids {
                if chosen.len() < rows && present.contains(&id) {
                    chosen.push(id);
                }
            }
        }
        Ok(chosen)
    }

    // ---- re-check and repair ----

    /// Re-checks candidates until each is confirmed, settled, or out of rounds (see the
    /// module doc), then repairs the confirmed ones when asked to.
    async fn confirm(
        &self,
        conn: &mut Conn,
        t: &mut Target,
        mut pending: Vec<Candidate>,
        opts: &Options,
        report: &mut TableReport,
    ) -> Result<(), CheckError> {
        // A document whose key field disagrees with its `_id` can surface in two ranges.
        let mut seen = HashSet::new();
        pending.retain(|c| seen.insert(c.id.clone()));
        report.rechecked += pending.len() as u64;
        let mut repairs: Vec<DocOp> = Vec::new();
        let table: Arc<str> = Arc::from(t.qualified());
        let index: Arc<str> = Arc::from(t.index.as_str());
        for _round in 0..self.cfg.check.recheck_rounds {
            if pending.is_empty() {
                break;
            }
            let target = pending
                .iter()
                .map(|c| c.at.clone())
                .max_by_key(|p| p.key().unwrap_or((0, 0)))
                .expect("not empty");
            if !self.wait_for_checkpoint(&target).await? {
                for c in pending.drain(..) {
                    report.unverified.add(&c.id);
                }
                break;
            }
            let ids: Vec<String> = pending.iter().map(|c| c.id.clone()).collect();
            // The index after the checkpoint passed, then the row again in a new snapshot.
            let es = self.es.mget(&t.index, &ids, true).await?;
            let (p2, db) = self.read_ids(conn, t, &ids, opts.repair, report).await?;
            let repair_version = after(&p2)? - 1;
            let mut next = Vec::new();
            for c in pending {
                let (row, doc) = match db.get(&c.id) {
                    Some(RowState::Unrenderable) => continue,
                    Some(RowState::Doc(d, doc)) => (Some(*d), doc.clone()),
                    None => (None, None),
                };
                let indexed = es.get(&c.id);
                if agree(row, indexed) {
                    continue; // was in flight
                }
                let stable = row == c.db;
                let not_newer = indexed.is_none_or(|e| e.version < after(&c.at).unwrap_or(u64::MAX));
                if !(stable && not_newer) {
                    next.push(Candidate {
                        id: c.id,
                        db: row,
                        at: p2.clone(),
                    });
                    continue;
                }
                let kind = match (row, indexed) {
                    (Some(_), None) => Kind::Missing,
                    (None, Some(_)) => Kind::Extra,
                    _ => Kind::Stale,
                };
                report.found(kind).add(&c.id);
                if opts.repair {
                    let (action, op) = match (kind, doc) {
                        (Kind::Extra, _) => (DocAction::Delete, RowOp::Delete),
                        (Kind::Missing, Some(d)) => (DocAction::Index(d.to_string()), RowOp::Insert),
                        (_, Some(d)) => (DocAction::Index(d.to_string()), RowOp::Update),
                        (_, None) => continue,
                    };
                    repairs.push(DocOp {
                        index: index.clone(),
                        id: c.id,
                        version: Version(repair_version),
                        action,
                        table: table.clone(),
                        op,
                    });
                }
            }
            pending = next;
        }
        for c in &pending {
            report.unsettled.add(&c.id);
        }
        if !repairs.is_empty() {
            self.repair(repairs, report).await;
        }
        Ok(())
    }

    /// Waits (bounded) until the indexer's checkpoint is at or past `p`.
    async fn wait_for_checkpoint(&self, p: &BinlogPosition) -> Result<bool, CheckError> {
        let path = self.cfg.checkpoint_path();
        let limit = Duration::from_millis(self.cfg.check.settle_timeout_ms);
        let started = Instant::now();
        let want = p.key()?;
        loop {
            let current = read_checkpoint(&path)?;
            if let Some(c) = &current {
                if c.key()? >= want {
                    return Ok(true);
                }
            }
            if started.elapsed() >= limit {
                let have = current.map_or("none".to_string(), |c| c.to_string());
                tracing::warn!(
                    checkpoint = %have,
                    read_at = %p,
                    waited_ms = limit.as_millis() as u64,
                    file = %path.display(),
                    "the indexer's checkpoint has not passed the position the differing rows were read at; \
                     is `cdc-indexer run` running with this configuration and keeping up? The differences \
                     are reported unverified"
                );
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes repair operations with the sink's bulk encoding; transient failures are retried
    /// a bounded number of times (a later check finds whatever is left).
    async fn repair(&self, ops: Vec<DocOp>, report: &mut TableReport) {
        let index = ops.first().map(|o| o.index.to_string()).unwrap_or_default();
        let mut applied = 0u64;
        for batch in ops.chunks(REPAIR_BATCH) {
            let mut pending: Vec<&DocOp> = batch.iter().collect();
            let mut delays = crate::retry::delays(
                Duration::from_millis(self.cfg.sink.retry_min_ms),
                Duration::from_millis(self.cfg.sink.retry_max_ms),
            );
            for attempt in 1..=8 {
                let mut buf = BytesMut::new();
                for op in &pending {
                    bulk::encode(&mut buf, op);
                }
                let mut retry = Vec::new();
                match crate::sink::post_bulk(&self.es.client, self.es.timeout, buf.freeze(), pending.len()).await {
                    BulkOutcome::Items(items) => {
                        for (op, item) in pending.iter().zip(items) {
                            match item {
                                ItemOutcome::Done => applied += 1,
                                ItemOutcome::Stale => report.superseded += 1,
                                ItemOutcome::Retry { .. } => retry.push(*op),
                                ItemOutcome::DeadLetter { reason, .. } | ItemOutcome::Fatal { reason, .. } => {
                                    tracing::warn!(index = %op.index, id = %op.id, %reason, "repair rejected");
                                    report.repair_failed.add(&op.id);
                                }
                            }
                        }
                    }
                    BulkOutcome::RetryAll { reason, .. } => {
                        tracing::warn!(%reason, attempt, "repair bulk request failed; retrying");
                        retry = pending.clone();
                    }
                    BulkOutcome::TooLarge | BulkOutcome::Fatal { .. } => {
                        for op in &pending {
                            report.repair_failed.add(&op.id);
                        }
                    }
                }
                pending = retry;
                if pending.is_empty() {
                    break;
                }
                if attempt == 8 {
                    for op in &pending {
                        report.repair_failed.add(&op.id);
                    }
                    break;
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
            }
        }
        report.repaired += applied;
        crate::metrics::get().check_repaired(&index, applied);
    }
}

impl Es {
    async fn es(&self, method: Method, path: &str, body: &Json) -> Result<Json, CheckError> {
        let mut delays = crate::retry::delays(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let sent = self
                .client
                .send(
                    method,
                    path,
                    headers,
                    None::<&()>,
                    Some(body.to_string()),
                    Some(self.timeout),
                )
                .await;
            let failure = match sent {
                Ok(resp) => {
                    let status = resp.status_code().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return serde_json::from_str(&text).map_err(|e| CheckError::Es {
                            what: path.to_string(),
                            reason: format!("unreadable answer: {e}"),
                        });
                    }
                    let reason = format!("HTTP {status}: {}", text.chars().take(300).collect::<String>());
                    if !(status == 429 || status >= 500) {
                        return Err(CheckError::Es {
                            what: path.to_string(),
                            reason,
                        });
                    }
                    reason
                }
                Err(e) => e.to_string(),
            };
            if attempt >= 6 {
                return Err(CheckError::Es {
                    what: path.to_string(),
                    reason: failure,
                });
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(path, reason = %failure, delay_ms = delay.as_millis() as u64, "Elasticsearch request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn hit(&self, h: &Json) -> Option<(String, Option<EsDoc>)> {
        let id = h["_id"].as_str()?.to_string();
        let doc = h.get("_source").filter(|s| s.is_object()).map(|s| EsDoc {
            version: h["_version"].as_u64().unwrap_or(0),
            digest: digest(s),
        });
        Some((id, doc))
    }

    /// The documents with these `_id`s (absent ones are not in the map).
    async fn mget(&self, index: &str, ids: &[String], source: bool) -> Result<HashMap<String, EsDoc>, CheckError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(KEYS_PER_QUERY) {
            let body = json!({ "ids": chunk });
            let path = format!("/{index}/_mget");
            let path = if source { path } else { format!("{path}?_source=false") };
            let reply = self.es(Method::Post, &path, &body).await?;
            for d in reply["docs"].as_array().into_iter().flatten() {
                if d["found"] != json!(true) {
                    continue;
                }
                let Some(id) = d["_id"].as_str() else { continue };
                let version = d["_version"].as_u64().unwrap_or(0);
                let digest = d.get("_source").map(digest).unwrap_or(0);
                out.insert(id.to_string(), EsDoc { version, digest });
            }
        }
        Ok(out)
    }

    /// Documents whose key field is in `(gt, lte]` (open ends when `None`), as `(_id, doc)`.
    async fn range_docs(
        &self,
        index: &str,
        field: &str,
        gt: Option<i128>,
        lte: Option<i128>,
    ) -> Result<Vec<(String, EsDoc)>, CheckError> {
        let mut bounds = serde_json::Map::new();
        if let Some(g) = gt {
            bounds.insert("gt".into(), int_json(g));
        }
        if let Some(l) = lte {
            bounds.insert("lte".into(), int_json(l));
        }
        let query = if bounds.is_empty() {
            json!({ "exists": { "field": field } })
        } else {
            json!({ "range": { field: bounds } })
        };
        let mut out = Vec::new();
        let mut search_after: Option<Json> = None;
        loop {
            let mut body = json!({
                "size": ES_PAGE,
                "version": true,
                "track_total_hits": false,
                "query": query,
                "sort": [{ field: "asc" }],
            });
            if let Some(sa) = &search_after {
                body["search_after"] = sa.clone();
            }
            let reply = self.es(Method::Post, &format!("/{index}/_search"), &body).await?;
            let hits = reply["hits"]["hits"].as_array().cloned().unwrap_or_default();
            for h in &hits {
                if let Some((id, Some(doc))) = self.hit(h) {
                    out.push((id, doc));
                }
            }
            if hits.len() < ES_PAGE {
                return Ok(out);
            }
            search_after = hits.last().map(|h| h["sort"].clone());
        }
    }

    /// Documents lacking the key field: no row can render to them.
    async fn keyless_docs(&self, index: &str, field: &str) -> Result<Vec<(String, EsDoc)>, CheckError> {
        let body = json!({
            "size": 10_000,
            "version": true,
            "query": { "bool": { "must_not": { "exists": { "field": field } } } },
        });
        let reply = self.es(Method::Post, &format!("/{index}/_search"), &body).await?;
        Ok(reply["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| self.hit(h))
            .filter_map(|(id, d)| d.map(|d| (id, d)))
            .collect())
    }

    /// Smallest and largest value of the key field in the index.
    async fn es_key_bounds(&self, index: &str, field: &str) -> Result<Option<(i128, i128)>, CheckError> {
        let mut ends = Vec::new();
        for order in ["asc", "desc"] {
            let body = json!({
                "size": 1,
                "_source": false,
                "query": { "exists": { "field": field } },
                "sort": [{ field: order }],
            });
            let reply = self.es(Method::Post, &format!("/{index}/_search"), &body).await?;
            let v = &reply["hits"]["hits"][0]["sort"][0];
            match v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from)) {
                Some(k) => ends.push(k),
                None => return Ok(None),
            }
        }
        Ok(Some((ends[0], ends[1])))
    }
}

fn read_checkpoint(path: &Path) -> Result<Option<BinlogPosition>, CheckError> {
    Ok(CheckpointStore::open(path)?.current().map(|c| c.position.clone()))
}

fn int_of(v: &mysql_async::Value) -> Option<i128> {
    match v {
        mysql_async::Value::Int(i) => Some(*i as i128),
        mysql_async::Value::UInt(u) => Some(*u as i128),
        mysql_async::Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn int_param(k: i128) -> mysql_async::Value {
    match i64::try_from(k) {
        Ok(i) => mysql_async::Value::Int(i),
        Err(_) => mysql_async::Value::UInt(k as u64),
    }
}

fn int_json(k: i128) -> Json {
    match i64::try_from(k) {
        Ok(i) => Json::from(i),
        Err(_) => Json::from(k as u64),
    }
}

/// The scheduled compensation job inside `run`: a sampling check (with repair when
/// `check.repair`) every `check.interval_seconds`. It never fails the pipeline: an error is
/// logged and counted (`cdc_check_runs_total{result="error"}`) and the next run comes anyway.
pub async fn schedule(
    cfg: Config,
    tokenizer: Option<Arc<Tokenizer>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(cfg.check.interval_seconds);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let opts = Options {
            mode: Mode::Sample {
                rows: cfg.check.sample_rows,
                seed: rand::random(),
            },
            repair: cfg.check.repair,
            index: None,
        };
        match run(&cfg, tokenizer.clone(), &opts).await {
            Ok(r) if r.drift() > 0 => tracing::warn!(
                drift = r.drift(),
                repaired = r.tables.iter().map(|t| t.repaired).sum::<u64>(),
                seed = ?r.seed,
                "scheduled consistency check found drift"
            ),
            Ok(r) => tracing::info!(result = r.result, seconds = r.seconds, "scheduled consistency check"),
            Err(e) => tracing::warn!(error = %e, "scheduled consistency check failed; the next one runs as planned"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(file: &str, pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: file.into(),
            pos,
            gtid: None,
        }
    }

    #[test]
    fn digest_ignores_key_order_and_number_spelling() {
        let a: Json = serde_json::from_str(r#"{"a":1,"b":{"x":[1,"y"],"z":null},"c":"张三"}"#).unwrap();
        let b: Json = serde_json::from_str(r#"{"c":"张三","b":{"z":null,"x":[1.0,"y"]},"a":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        let c: Json = serde_json::from_str(r#"{"c":"张三","b":{"z":null,"x":["y",1]},"a":1}"#).unwrap();
        assert_ne!(digest(&a), digest(&c));
        assert_ne!(digest(&json!({"a": "1"})), digest(&json!({"a": 1})));
        assert_ne!(digest(&json!({"a": null})), digest(&json!({})));
    }

    #[test]
    fn repair_version_sits_between_the_snapshot_and_any_later_change() {
        let at = p("bin.000007", 1_000);
        let repair = after(&at).unwrap() - 1;
        // Above the snapshot's own version (and a few internal-version bumps of it) …
        assert!(repair >= Version::at(&at).unwrap().0 + 2_000);
        // … below the first row of any event after the position, and below the next file.
        assert!(repair < Version::of_row(7, 1_001, 0).unwrap().0);
        assert!(repair < Version::of_row(8, 4, 0).unwrap().0);
        // A change before the position loses to the repair.
        assert!(Version::of_row(7, 999, 2_047).unwrap().0 < repair);
    }

    proptest! {
        // Bisection finds exactly the keys whose entries differ, whatever the layout.
        #[test]
        fn bisection_finds_exactly_the_differing_keys(
            rows in proptest::collection::btree_map(-1_000i128..1_000, 0u64..3, 0..200),
            edits in proptest::collection::vec((-1_100i128..1_100, 0u8..3), 0..20),
        ) {
            let a: Vec<(i128, u64)> = rows.iter().map(|(k, v)| (*k, *v)).collect();
            let mut other = rows.clone();
            for (k, e) in edits {
                match e {
                    0 => { other.remove(&k); }
                    1 => { other.insert(k, 7); }
                    _ => { if let Some(v) = other.get_mut(&k) { *v += 10; } }
                }
            }
            let b: Vec<(i128, u64)> = other.iter().map(|(k, v)| (*k, *v)).collect();
            let mut found = Vec::new();
            bisect(&a, &b, &mut found);
            found.sort();
            let mut expected: Vec<i128> = rows.keys().chain(other.keys()).copied()
                .filter(|k| rows.get(k) != other.get(k)).collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn report_exit_codes() {
        let opts = Options {
            mode: Mode::Full,
            repair: false,
            index: None,
        };
        let clean = TableReport::default();
        assert_eq!(Report::new(&opts, vec![clean.clone()], 0.0).exit_code, EXIT_CLEAN);
        let mut drift = TableReport::default();
        drift.found(Kind::Stale).add("5");
        let r = Report::new(&opts, vec![clean.clone(), drift], 0.0);
        assert_eq!((r.exit_code, r.result, r.drift()), (EXIT_DRIFT, "drift", 1));
        assert!(r.render().contains("stale: 5"), "{}", r.render());
        let mut unverified = TableReport::default();
        unverified.unverified.add("9");
        assert_eq!(Report::new(&opts, vec![unverified], 0.0).exit_code, EXIT_INCOMPLETE);
        let mut unsettled = TableReport::default();
        unsettled.unsettled.add("9");
        assert_eq!(Report::new(&opts, vec![unsettled], 0.0).exit_code, EXIT_CLEAN);
    }
}

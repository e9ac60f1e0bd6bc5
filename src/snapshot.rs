//! Initial load: the existing rows of every tracked table, consistent with one binlog position.
//!
//! Contract: [`initial_load`] reads all tracked tables inside one `START TRANSACTION WITH
//! CONSISTENT SNAPSHOT` and returns the binlog position P that snapshot corresponds to (MariaDB
//! reports it lock-free as `binlog_snapshot_file/position`; on MySQL a brief
//! `FLUSH TABLES WITH READ LOCK` pins it). Rows go through the same transform and sink as live
//! changes, each with version `Version::at(P)`. The stream then starts at P.
//!
//! Why this cannot resurrect a deleted row or overwrite a newer state: the snapshot shows each
//! row as of P; every binlog change after P carries a version above `Version::at(P)`
//! (see [`crate::position`]), so whichever order the snapshot write and a later change reach
//! Elasticsearch, the later change wins; and a row deleted before P is simply not in the
//! snapshot.
//!
//! A load interrupted by a crash leaves documents of its own in the index, and rows may be
//! deleted before the next attempt, whose snapshot would then simply not contain them. So the
//! first snapshot position P1 is persisted (`initial-load.json`) before any row is written, and
//! every later attempt, after loading its own snapshot at P2, streams from P1 rather than P2:
//! replaying P1..P2 deletes what was deleted meanwhile, while for rows present at P2 the replayed
//! older changes lose to the snapshot's higher version.
//!
//! Reads use primary-key chunks (keyset pagination, never OFFSET), so each query is
//! short and the sink's backpressure never holds a server-side cursor open.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use chrono::NaiveDate;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn};

use crate::change::{RowChange, RowOp, SourceEvent};
use crate::position::{BinlogPosition, Version};
use crate::schema::{ColumnSchema, TableSchema};
use crate::source::{connect, current_position, SourceError};
use crate::value::Value;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("snapshot query failed: {0}")]
    Query(#[from] mysql_async::Error),
    #[error("table {0} has no primary key; the initial load pages by primary key")]
    NoPrimaryKey(String),
    #[error("initial-load marker: {0}")]
    Marker(String),
    #[error("the pipeline stopped during the initial load")]
    Closed,
}

impl SnapshotError {
    pub fn is_transient(&self) -> bool {
        use mysql_async::Error::{Driver, Io};
        matches!(
            self,
            SnapshotError::Query(Io(_) | Driver(_))
                | SnapshotError::Source(SourceError::Connect { .. } | SourceError::Stream(Io(_) | Driver(_)))
        )
    }
}

pub(crate) fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Loads every table accepted by `tracked` and emits its rows on `tx`, then a commit at the
/// position streaming must start from, which it returns: the snapshot's own position, or the
/// first attempt's as recorded in `marker` (see the module doc).
pub async fn initial_load(
    url: &crate::source::Endpoint,
    mariadb: bool,
    chunk_rows: u64,
    tracked: &(dyn Fn(&str) -> bool + Sync),
    marker: &Path,
    tx: &tokio::sync::mpsc::Sender<SourceEvent>,
) -> Result<BinlogPosition, SnapshotError> {
    // A lost connection (server restart, network) restarts the load from a new snapshot; that
    // is safe for the same reason a crash is (see the module doc).
    crate::retry::until_ok(
        "initial load",
        Duration::from_secs(30),
        SnapshotError::is_transient,
        || attempt(url, mariadb, chunk_rows, tracked, marker, tx),
    )
    .await
}

async fn attempt(
    url: &crate::source::Endpoint,
    mariadb: bool,
    chunk_rows: u64,
    tracked: &(dyn Fn(&str) -> bool + Sync),
    marker: &Path,
    tx: &tokio::sync::mpsc::Sender<SourceEvent>,
) -> Result<BinlogPosition, SnapshotError> {
    let mut conn = connect(url).await?;
    let position = begin_consistent_snapshot(&mut conn, mariadb).await?;
    tracing::info!(%position, "initial load: consistent snapshot taken");
    let stream_from = match interrupted(marker)? {
        Some(first) => {
            tracing::warn!(first = %first, "an earlier initial load was interrupted; streaming will replay from its position");
            first
        }
        None => {
            write_marker(marker, &position)?;
            position.clone()
        }
    };
    let version = Version::at(&position).map_err(SourceError::from)?;

    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
             AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2",
        )
        .await?;
    for (db, table) in tables.into_iter().filter(|(d, t)| tracked(&format!("{d}.{t}"))) {
        let rows = load_table(&mut conn, &db, &table, chunk_rows, version, tx).await?;
        tracing::info!(table = %format!("{db}.{table}"), rows, "initial load: table done");
    }
    conn.query_drop("COMMIT").await?;
    tx.send(SourceEvent::Commit {
        position: stream_from.clone(),
        source_ts: now(),
    })
    .await
    .map_err(|_| SnapshotError::Closed)?;
    Ok(stream_from)
}

/// Opens a `START TRANSACTION WITH CONSISTENT SNAPSHOT` on `conn` (session time zone UTC, so
/// TIMESTAMP values read as instants) and returns the binlog position the snapshot corresponds
/// to. The caller ends it with `COMMIT`. Shared by the initial load and the consistency checker.
pub(crate) async fn begin_consistent_snapshot(conn: &mut Conn, mariadb: bool) -> Result<BinlogPosition, SnapshotError> {
    conn.query_drop("SET SESSION time_zone = '+00:00'").await?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let position = if mariadb {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
        let file: Option<(String, String)> = conn.query_first("SHOW STATUS LIKE 'binlog_snapshot_file'").await?;
        let pos: Option<(String, u64)> = conn.query_first("SHOW STATUS LIKE 'binlog_snapshot_position'").await?;
        let mut p = current_position(conn, true).await?;
        p.file = file.map(|f| f.1).unwrap_or(p.file);
        p.pos = pos.map(|p| p.1).unwrap_or(p.pos);
        // The GTID state read separately may be newer than the snapshot; positions are what
        // we resume from, so do not record a GTID that could be ahead of them.
        p.gtid = None;
        p
    } else {
        conn.query_drop("FLUSH TABLES WITH READ LOCK").await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
        let p = current_position(conn, false).await;
        conn.query_drop("UNLOCK TABLES").await?;
        p?
    };
    Ok(position)
}

/// The position an interrupted initial load began at, if one was interrupted.
pub fn interrupted(path: &Path) -> Result<Option<BinlogPosition>, SnapshotError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| SnapshotError::Marker(format!("{} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SnapshotError::Marker(format!("{}: {e}", path.display()))),
    }
}

/// Removes the marker once a checkpoint exists: the load it guarded is complete.
pub fn forget_interrupted(path: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::Marker(format!("{}: {e}", path.display()))),
    }
}

fn write_marker(path: &Path, position: &BinlogPosition) -> Result<(), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Marker(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::File::create(path).map_err(io)?;
    std::io::Write::write_all(&mut f, &serde_json::to_vec(position).expect("json")).map_err(io)?;
    f.sync_all().map_err(io)
}

fn now() -> u32 {
    crate::dead_letter::now_secs() as u32
}

async fn load_table(
    conn: &mut Conn,
    db: &str,
    table: &str,
    chunk_rows: u64,
    version: Version,
    tx: &tokio::sync::mpsc::Sender<SourceEvent>,
) -> Result<u64, SnapshotError> {
    let mut reader = ChunkReader::open(conn, db, table, chunk_rows, None).await?;
    let mut after: Option<Vec<mysql_async::Value>> = None;
    let mut total = 0u64;
    loop {
        let chunk = reader.read(conn, after.as_deref(), version).await?;
        let n = chunk.changes.len() as u64;
        for change in chunk.changes {
            tx.send(SourceEvent::Change(change))
                .await
                .map_err(|_| SnapshotError::Closed)?;
        }
        total += n;
        if n < chunk_rows {
            return Ok(total);
        }
        after = chunk.last_key;
    }
}

pub(crate) fn schema_from_columns(db: &str, table: &str, cols: &[Column], key_pos: &[usize]) -> TableSchema {
    TableSchema::new(
        db.into(),
        table.into(),
        cols.iter()
            .map(|c| ColumnSchema {
                name: c.name_str().into_owned(),
                column_type: c.column_type() as u8,
                meta: vec![c.decimals()],
                unsigned: c.flags().contains(ColumnFlags::UNSIGNED_FLAG),
                nullable: !c.flags().contains(ColumnFlags::NOT_NULL_FLAG),
                charset: Some(c.character_set()),
                members: vec![],
            })
            .collect(),
        key_pos.to_vec(),
    )
}

/// Converts a binary-protocol row to the same [`Value`]s the binlog decoder produces.
pub(crate) fn row_values(row: mysql_async::Row) -> Vec<Value> {
    let cols = row.columns();
    row.unwrap()
        .into_iter()
        .zip(cols.iter())
        .map(|(v, c)| convert(v, c))
        .collect()
}

fn convert(v: mysql_async::Value, c: &Column) -> Value {
    use mysql_async::Value as M;
    let ty = c.column_type();
    let flags = c.flags();
    let fsp = c.decimals().min(6);
    match v {
        M::NULL => Value::Null,
        M::Int(i) if ty == ColumnType::MYSQL_TYPE_YEAR => Value::Year(i as u16),
        M::UInt(u) if ty == ColumnType::MYSQL_TYPE_YEAR => Value::Year(u as u16),
        M::Int(i) => Value::Int(i),
        M::UInt(u) => Value::UInt(u),
        M::Float(f) => Value::Float(f),
        M::Double(d) => Value::Double(d),
        M::Date(year, month, day, hour, minute, second, micros) => match ty {
            ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => Value::Date { year, month, day },
            ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2 => {
                let seconds = NaiveDate::from_ymd_opt(year as i32, month as u32, day as u32)
                    .and_then(|d| d.and_hms_opt(hour as u32, minute as u32, second as u32))
                    .map(|t| t.and_utc().timestamp())
                    .unwrap_or(0);
                Value::Timestamp { seconds, micros, fsp }
            }
            _ => Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
                fsp,
            },
        },
        M::Time(negative, days, hours, minutes, seconds, micros) => Value::Time {
            negative,
            hours: days * 24 + hours as u32,
            minutes,
            seconds,
            micros,
            fsp,
        },
        M::Bytes(b) => match ty {
            ColumnType::MYSQL_TYPE_NEWDECIMAL | ColumnType::MYSQL_TYPE_DECIMAL => {
                Value::Decimal(String::from_utf8_lossy(&b).into_owned())
            }
            ColumnType::MYSQL_TYPE_BIT => Value::Bit(b),
            ColumnType::MYSQL_TYPE_JSON => match serde_json::from_slice(&b) {
                Ok(j) => Value::Json(j),
                Err(_) => Value::Text { bytes: b, charset: 45 },
            },
            _ if flags.contains(ColumnFlags::ENUM_FLAG) => Value::Enum(String::from_utf8_lossy(&b).into_owned()),
            _ if flags.contains(ColumnFlags::SET_FLAG) => Value::Set(if b.is_empty() {
                vec![]
            } else {
                String::from_utf8_lossy(&b).split(',').map(str::to_string).collect()
            }),
            _ if c.character_set() == 63 => Value::Bytes(b),
            _ => Value::Text {
                bytes: b,
                charset: c.character_set(),
            },
        },
    }
}

/// Starts a `START TRANSACTION WITH CONSISTENT SNAPSHOT` on `conn` (UTC session, repeatable
/// read) and returns the binlog position the snapshot corresponds to. On MariaDB this takes no
/// lock at all; on MySQL a brief `FLUSH TABLES WITH READ LOCK` pins the position.
pub async fn begin_snapshot(conn: &mut Conn, mariadb: bool) -> Result<BinlogPosition, SnapshotError> {
    conn.query_drop("SET SESSION time_zone = '+00:00'").await?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    if mariadb {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
        let file: Option<(String, String)> = conn.query_first("SHOW STATUS LIKE 'binlog_snapshot_file'").await?;
        let pos: Option<(String, u64)> = conn.query_first("SHOW STATUS LIKE 'binlog_snapshot_position'").await?;
        let (Some((_, file)), Some((_, pos))) = (file, pos) else {
            return Err(SnapshotError::Source(SourceError::Misconfigured(
                "the server reports no binlog_snapshot_file/position; binary logging must be on".into(),
            )));
        };
        Ok(BinlogPosition { file, pos, gtid: None })
    } else {
        conn.query_drop("FLUSH TABLES WITH READ LOCK").await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
        let p = current_position(conn, false).await;
        conn.query_drop("UNLOCK TABLES").await?;
        Ok(BinlogPosition { gtid: None, ..p? })
    }
}

/// The base tables accepted by `tracked`, as `(database, table)`, sorted.
pub async fn tracked_tables(
    conn: &mut Conn,
    tracked: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<(String, String)>, SnapshotError> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
             AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2",
        )
        .await?;
    Ok(tables
        .into_iter()
        .filter(|(d, t)| tracked(&format!("{d}.{t}")))
        .collect())
}

/// Reads one table in primary-key chunks (keyset pagination), optionally restricted by an SQL
/// condition. Each [`read`](ChunkReader::read) is one query, so the caller decides which
/// snapshot (transaction) every chunk is read in.
/// The columns of `db.table` in order, and its primary-key columns (which must exist: chunks
/// are read by key).
async fn columns_and_key(conn: &mut Conn, db: &str, table: &str) -> Result<(Vec<String>, Vec<String>), SnapshotError> {
    let columns: Vec<String> = conn
        .exec(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
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
    if keys.is_empty() {
        return Err(SnapshotError::NoPrimaryKey(format!("{db}.{table}")));
    }
    Ok((columns, keys))
}

/// An SQL condition that keeps `db.table` to the keys at or below its largest key now (`FALSE`
/// when it is empty), for a [`ChunkReader`] that must not chase rows inserted while it reads.
/// A caller whose binlog stream already started before this call loses nothing by it: every
/// row that existed when the stream started either still exists now (so its key is at most the
/// largest key now) or was deleted or re-keyed later, which the stream carries.
pub async fn keys_up_to_current_max(conn: &mut Conn, db: &str, table: &str) -> Result<String, SnapshotError> {
    let (_, keys) = columns_and_key(conn, db, table).await?;
    let key_list = keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
    let descending = keys
        .iter()
        .map(|k| format!("{} DESC", ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let last: Option<mysql_async::Row> = conn
        .query_first(format!(
            "SELECT {key_list} FROM {}.{} ORDER BY {descending} LIMIT 1",
            ident(db),
            ident(table)
        ))
        .await?;
    let Some(last) = last else {
        return Ok("FALSE".into());
    };
    // Literals must be written the way the session's sql_mode reads them.
    let mode: Option<String> = conn.query_first("SELECT @@SESSION.sql_mode").await?;
    let no_backslash_escapes = mode.is_some_and(|m| m.contains("NO_BACKSLASH_ESCAPES"));
    let values = last
        .unwrap()
        .iter()
        .map(|v| v.as_sql(no_backslash_escapes))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!("({key_list}) <= ({values})"))
}

pub struct ChunkReader {
    db: String,
    table: String,
    keys: Vec<String>,
    key_pos: Vec<usize>,
    first: String,
    next: String,
    count: String,
    schema: Option<Arc<TableSchema>>,
}

/// One chunk: rows as insert changes, and the primary key of its last row.
pub struct Chunk {
    pub changes: Vec<RowChange>,
    pub last_key: Option<Vec<mysql_async::Value>>,
}

impl ChunkReader {
    /// Prepares the chunk queries of `db.table`; `condition` is an SQL boolean expression
    /// (trusted operator input, e.g. `created_at >= '2026-01-01'`).
    pub async fn open(
        conn: &mut Conn,
        db: &str,
        table: &str,
        chunk_rows: u64,
        condition: Option<&str>,
    ) -> Result<Self, SnapshotError> {
        let (columns, keys) = columns_and_key(conn, db, table).await?;
        let key_pos = keys
            .iter()
            .filter_map(|k| columns.iter().position(|c| c == k))
            .collect();
        let select = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let key_list = keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
        let placeholders = vec!["?"; keys.len()].join(", ");
        let from = format!("{}.{}", ident(db), ident(table));
        let cond = condition.map(|c| format!("({c})")).unwrap_or_else(|| "TRUE".into());
        Ok(ChunkReader {
            db: db.into(),
            table: table.into(),
            keys,
            key_pos,
            first: format!("SELECT {select} FROM {from} WHERE {cond} ORDER BY {key_list} LIMIT {chunk_rows}"),
            next: format!(
                "SELECT {select} FROM {from} WHERE {cond} AND ({key_list}) > ({placeholders}) ORDER BY {key_list} LIMIT {chunk_rows}"
            ),
            count: format!("SELECT COUNT(*) FROM {from} WHERE {cond}"),
            schema: None,
        })
    }

    /// The rows after `after` (from the start if `None`), each an insert with `version`.
    pub async fn read(
        &mut self,
        conn: &mut Conn,
        after: Option<&[mysql_async::Value]>,
        version: Version,
    ) -> Result<Chunk, SnapshotError> {
        let rows: Vec<mysql_async::Row> = match after {
            None => conn.exec(&self.first, ()).await?,
            Some(k) => {
                conn.exec(&self.next, mysql_async::Params::Positional(k.to_vec()))
                    .await?
            }
        };
        let mut last_key = None;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let schema = self
                .schema
                .get_or_insert_with(|| {
                    Arc::new(schema_from_columns(
                        &self.db,
                        &self.table,
                        row.columns_ref(),
                        &self.key_pos,
                    ))
                })
                .clone();
            last_key = Some(
                self.key_pos
                    .iter()
                    .map(|&i| row.as_ref(i).cloned().unwrap_or(mysql_async::Value::NULL))
                    .collect(),
            );
            changes.push(RowChange {
                table: schema,
                op: RowOp::Insert,
                before: None,
                after: Some(row_values(row)),
                version,
                source_ts: now(),
            });
        }
        Ok(Chunk { changes, last_key })
    }

    /// The primary key's column names, in key order.
    pub fn key_columns(&self) -> &[String] {
        &self.keys
    }

    /// Rows matching the condition, as seen by `conn`'s current transaction.
    pub async fn count(&self, conn: &mut Conn) -> Result<u64, SnapshotError> {
        Ok(conn.query_first(&self.count).await?.unwrap_or(0))
    }
}

//! The unit of data flowing from source to sink.
//!
//! Contract: the source emits, per transaction, every [`RowChange`] in binlog order followed by
//! one [`SourceEvent::Commit`]; nothing is emitted for a transaction that is not complete in the
//! binlog. The transform turns each change into zero or more [`DocOp`]s that keep the change's
//! [`Version`], so the sink can write them idempotently in any retry order.

use std::sync::Arc;

use crate::position::{BinlogPosition, Version};
use crate::schema::TableSchema;
use crate::value::Value;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowOp {
    Insert,
    Update,
    Delete,
}

impl RowOp {
    pub fn as_str(self) -> &'static str {
        match self {
            RowOp::Insert => "insert",
            RowOp::Update => "update",
            RowOp::Delete => "delete",
        }
    }
}

/// One decoded row change.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub table: Arc<TableSchema>,
    pub op: RowOp,
    /// Before image (updates and deletes), aligned with `table.columns`.
    pub before: Option<Vec<Value>>,
    /// After image (inserts and updates), aligned with `table.columns`.
    pub after: Option<Vec<Value>>,
    /// Idempotency version, unique and increasing along the binlog.
    pub version: Version,
    /// Commit time at the source (event header timestamp, seconds since the epoch).
    pub source_ts: u32,
}

/// What the source hands to the pipeline.
#[derive(Debug)]
pub enum SourceEvent {
    Change(RowChange),
    /// A transaction boundary: every change before it belongs to a committed transaction, and
    /// restarting the stream at `position` continues right after it.
    Commit {
        position: BinlogPosition,
        source_ts: u32,
    },
}

/// One write to Elasticsearch.
#[derive(Debug, Clone)]
pub struct DocOp {
    /// Target index or alias.
    pub index: Arc<str>,
    /// `_id`, derived from the primary key.
    pub id: String,
    /// External version (`version_type=external_gte`).
    pub version: Version,
    pub action: DocAction,
    /// Where the change came from, for dead letters and logs.
    pub table: Arc<str>,
    pub op: RowOp,
}

#[derive(Debug, Clone)]
pub enum DocAction {
    /// Full document source, already serialized as one JSON object line.
    Index(String),
    Delete,
}

//! Binlog row decoding: TABLE_MAP → [`TableSchema`], rows events → [`Value`] rows, and a
//! file reader for tests and benchmarks.
//!
//! # Contract
//!
//! * [`RowDecoder::table_map`] turns a TABLE_MAP into an `Arc<TableSchema>` plus a per-column
//!   decode plan, cached by table id. TABLE_MAPs repeat before every transaction, so the schema
//!   is rebuilt only when the event's bytes differ from the cached ones (an `ALTER TABLE`, or a
//!   reused table id); otherwise the cached `Arc` is returned after one byte comparison.
//! * [`RowDecoder::rows`] decodes every row of a WRITE/UPDATE/DELETE rows event (v1 as MariaDB
//!   writes them, v2 as MySQL writes them) into [`RowImage`]s whose vectors are aligned with
//!   `schema.columns`: a column left out of the image's columns-present bitmap is
//!   [`Value::Absent`], a set NULL bit is [`Value::Null`]. UPDATE events have separate
//!   before/after bitmaps (e.g. `binlog_row_image=NOBLOB`) and both are honoured.
//! * Values are exact (see [`crate::value`]): integers are sign-extended or zero-extended by the
//!   column's SIGNEDNESS metadata (so negative MEDIUMINT stays negative), DECIMAL is rendered
//!   from its digit groups keeping the scale (the same string as `mysql_common`'s
//!   binary-decimal reader), temporal types follow the server's packed formats bit for bit
//!   (including negative TIME with a fraction), YEAR 0 is `Year(0)`, and JSON goes through
//!   `mysql_common`'s binary-JSON parser.
//! * Malformed input (truncated buffers, impossible lengths, unknown types, out-of-range
//!   digits) returns a [`DecodeError`] naming the table, the column and its type; nothing here
//!   panics or allocates more than the input size justifies. Before handing bytes to
//!   `mysql_common` code that would panic or recurse without bound on corrupt data (decimal
//!   digit overflow, JSON nesting, opaque JSON temporals), the bytes are checked here.
//!
//! # Why this is correct
//!
//! A rows event carries no types: its bytes only make sense against the TABLE_MAP that
//! precedes it in the same binlog, which is exactly what is cached (keyed by the table id the
//! rows event names, and reused only for a byte-identical TABLE_MAP). Each column's decode
//! plan is derived once from that TABLE_MAP, and every read is bounds-checked against the event
//! buffer. Rows are consecutive and the last one must end exactly where the event ends, so a
//! wrong length assumption surfaces as an error (truncation or a trailing partial row) instead
//! of values silently shifted into the wrong columns.
//!
//! # Documented choices
//!
//! * Character columns whose charset is unknown (no optional metadata: MySQL 5.7, MariaDB with
//!   `binlog_row_metadata=NO_LOG`) decode as `Value::Text { charset: 0 }`
//!   ([`UNKNOWN_COLLATION`]): most such columns are text, and the bytes are kept as stored so
//!   the transform can still decide. Charset 63 (`binary`) decodes as `Value::Bytes`.
//! * BINARY(n) (CHAR with charset 63) is right-padded with 0x00 to n bytes, because the server
//!   strips the pad bytes in the binlog but returns them on SELECT.
//! * ENUM/SET with unknown members (no FULL metadata) fall back to numbers as strings: the
//!   ENUM index (index 0 is still `""`), and the 1-based member numbers of the SET bits.
//! * PARTIAL_UPDATE_ROWS_EVENT (type 39) decodes unless a row carries a partial JSON diff, which
//!   is [`DecodeError::Unsupported`] (set `binlog_row_value_options=''`). MariaDB's compressed
//!   rows events (types 166–171) are also `Unsupported` rather than silently skipped.
//!
//! [`read_binlog_file`] reads binlog files the way `mysql_async`'s stream delivers events, for
//! tests and benchmarks: TRANSACTION_PAYLOAD events are followed by their decompressed inner
//! events, unknown event types are passed through, and CRC32 checksums are verified (see
//! [`BinlogFileReader`]).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mysql_common::binlog::consts::{
    BinlogChecksumAlg, BinlogVersion, EventFlags, EventType, TransactionPayloadCompressionType,
};
use mysql_common::binlog::decimal::decimal_bin_size;
use mysql_common::binlog::events::TransactionPayloadEvent;
use mysql_common::binlog::events::{BinlogEventHeader, Event, FormatDescriptionEvent};
use mysql_common::binlog::jsonb;
use mysql_common::io::ParseBuf;

use crate::change::RowOp;
use crate::schema::*;
use crate::value::{push_padded, Value};

/// Charset reported in [`Value::Text`] when the binlog did not say (no optional metadata).
pub const UNKNOWN_COLLATION: u16 = 0;

/// MySQL refuses JSON documents nested deeper than this (`JSON_DOCUMENT_MAX_DEPTH`).
const JSON_MAX_DEPTH: usize = 100;

/// Rows event type bytes.
const WRITE_ROWS_V1: u8 = EventType::WRITE_ROWS_EVENT_V1 as u8;
const UPDATE_ROWS_V1: u8 = EventType::UPDATE_ROWS_EVENT_V1 as u8;
const DELETE_ROWS_V1: u8 = EventType::DELETE_ROWS_EVENT_V1 as u8;
const WRITE_ROWS_V2: u8 = EventType::WRITE_ROWS_EVENT as u8;
const UPDATE_ROWS_V2: u8 = EventType::UPDATE_ROWS_EVENT as u8;
const DELETE_ROWS_V2: u8 = EventType::DELETE_ROWS_EVENT as u8;
const PARTIAL_UPDATE_ROWS: u8 = EventType::PARTIAL_UPDATE_ROWS_EVENT as u8;
/// MariaDB's `*_ROWS_COMPRESSED_EVENT` and `*_ROWS_COMPRESSED_EVENT_V1` (`log_bin_compress`).
const MARIADB_COMPRESSED_ROWS: std::ops::RangeInclusive<u8> = 166..=171;

/// One row change of a rows event, images aligned with `schema.columns`.
#[derive(Debug, Clone, PartialEq)]
pub enum RowImage {
    Insert(Vec<Value>),
    Update { before: Vec<Value>, after: Vec<Value> },
    Delete(Vec<Value>),
}

impl RowImage {
    pub fn op(&self) -> RowOp {
        match self {
            RowImage::Insert(_) => RowOp::Insert,
            RowImage::Update { .. } => RowOp::Update,
            RowImage::Delete(_) => RowOp::Delete,
        }
    }

    /// `(before, after)` as [`crate::change::RowChange`] holds them.
    pub fn into_images(self) -> (Option<Vec<Value>>, Option<Vec<Value>>) {
        match self {
            RowImage::Insert(after) => (None, Some(after)),
            RowImage::Update { before, after } => (Some(before), Some(after)),
            RowImage::Delete(before) => (Some(before), None),
        }
    }
}

/// Why an event could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A column value does not match its type.
    #[error("{table}: column `{column}` ({column_type}): {reason}")]
    Column {
        table: String,
        column: String,
        column_type: String,
        reason: String,
    },
    /// A TABLE_MAP event could not be turned into a schema.
    #[error("TABLE_MAP of {table}: {reason}")]
    TableMap { table: String, reason: String },
    /// A rows event's framing (post-header, bitmaps, row boundaries) is broken.
    #[error("malformed {event} event{table}: {reason}")]
    Malformed {
        event: &'static str,
        /// ` for db.table` when known, else empty.
        table: String,
        reason: String,
    },
    #[error("rows event for table id {0}, which no TABLE_MAP of this binlog file described")]
    UnknownTable(u64),
    #[error("event type {0} is not a rows event")]
    NotRowsEvent(u8),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// `mysql_common` could not parse an event.
    #[error("unreadable event: {0}")]
    Event(#[from] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: event at offset {offset}: {reason}")]
    File { path: String, offset: u64, reason: String },
}

/// Why a byte-level read failed; turned into a [`DecodeError`] with context by the caller, so
/// the hot path does not allocate messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Truncated,
    Invalid(&'static str),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Truncated => f.write_str("row data ends inside the value"),
            Fault::Invalid(why) => f.write_str(why),
        }
    }
}

/// Bounds-checked reader over a byte slice.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The unread bytes, without consuming them.
    pub(crate) fn peek_rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Consumes and returns the unread bytes.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        if n > self.buf.len() {
            return Err(Fault::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Fault> {
        Ok(self.take(1)?[0])
    }

    /// Little-endian unsigned integer of `n <= 8` bytes.
    pub(crate) fn uint_le(&mut self, n: usize) -> Result<u64, Fault> {
        Ok(self.take(n)?.iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// Big-endian unsigned integer of `n <= 8` bytes.
    pub(crate) fn uint_be(&mut self, n: usize) -> Result<u64, Fault> {
        Ok(self.take(n)?.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// MySQL length-encoded integer (`0xfb`/`0xff` are not valid lengths).
    pub(crate) fn lenenc(&mut self) -> Result<u64, Fault> {
        match self.u8()? {
            x @ 0..=0xfa => Ok(u64::from(x)),
            0xfc => self.uint_le(2),
            0xfd => self.uint_le(3),
            0xfe => self.uint_le(8),
            _ => Err(Fault::Invalid("invalid length-encoded integer")),
        }
    }

    /// Length-encoded byte string.
    pub(crate) fn lenenc_bytes(&mut self) -> Result<&'a [u8], Fault> {
        let len = self.lenenc()?;
        self.take(usize::try_from(len).map_err(|_| Fault::Truncated)?)
    }
}

/// How one column's bytes become a [`Value`]; derived once per TABLE_MAP.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Int {
        width: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
        len: u8,
    },
    Year,
    Date,
    /// Pre-5.6 TIME: 3-byte signed `±HHMMSS`.
    Time,
    Time2 {
        fsp: u8,
    },
    /// Pre-5.6 DATETIME: 8-byte `YYYYMMDDhhmmss`.
    DateTime,
    DateTime2 {
        fsp: u8,
    },
    /// Pre-5.6 TIMESTAMP: 4-byte seconds.
    Timestamp,
    Timestamp2 {
        fsp: u8,
    },
    /// Length-prefixed string or blob; `pad_to` is BINARY(n)'s length.
    Str {
        prefix: u8,
        out: StrOut,
        pad_to: u16,
    },
    Json {
        prefix: u8,
    },
    Enum {
        width: u8,
    },
    Set {
        width: u8,
    },
    Bit {
        len: u8,
    },
    Null,
    Unsupported(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum StrOut {
    Text(u16),
    Bytes,
}

impl Plan {
    /// Derives the plan of `column`; errors on metadata no server writes.
    fn of(column: &ColumnSchema) -> Result<Plan, String> {
        let m = &column.meta;
        let m0 = m.first().copied().unwrap_or(0);
        let m1 = m.get(1).copied().unwrap_or(0);
        let fsp = || {
            if m0 > 6 {
                Err(format!("fractional precision {m0} > 6"))
            } else {
                Ok(m0)
            }
        };
        let text_or_bytes = || match column.charset {
            Some(BINARY_COLLATION) => StrOut::Bytes,
            Some(charset) => StrOut::Text(charset),
            None => StrOut::Text(UNKNOWN_COLLATION),
        };
        let length_bytes = || match m0 {
            1..=4 => Ok(m0),
            _ => Err(format!("length size {m0} not in 1..=4")),
        };
        Ok(match column.column_type {
            TINY => Plan::Int {
                width: 1,
                unsigned: column.unsigned,
            },
            SHORT => Plan::Int {
                width: 2,
                unsigned: column.unsigned,
            },
            INT24 => Plan::Int {
                width: 3,
                unsigned: column.unsigned,
            },
            LONG => Plan::Int {
                width: 4,
                unsigned: column.unsigned,
            },
            LONGLONG => Plan::Int {
                width: 8,
                unsigned: column.unsigned,
            },
            FLOAT => Plan::Float,
            DOUBLE => Plan::Double,
            NEWDECIMAL => {
                if !(1..=65).contains(&m0) || m1 > 30 || m1 > m0 {
                    return Err(format!("invalid precision/scale {m0},{m1}"));
                }
                let len = decimal_bin_size(usize::from(m0), usize::from(m1)) as u8;
                Plan::Decimal {
                    precision: m0,
                    scale: m1,
                    len,
                }
            }
            YEAR => Plan::Year,
            DATE | NEWDATE => Plan::Date,
            TIME => Plan::Time,
            TIME2 => Plan::Time2 { fsp: fsp()? },
            DATETIME => Plan::DateTime,
            DATETIME2 => Plan::DateTime2 { fsp: fsp()? },
            TIMESTAMP => Plan::Timestamp,
            TIMESTAMP2 => Plan::Timestamp2 { fsp: fsp()? },
            VARCHAR | VAR_STRING => {
                let max = u16::from_le_bytes([m0, m1]);
                let prefix = if max > 255 { 2 } else { 1 };
                Plan::Str {
                    prefix,
                    out: text_or_bytes(),
                    pad_to: 0,
                }
            }
            STRING => {
                // Bits 8-9 of a long CHAR's byte length are stored inverted in meta[0] bits 4-5.
                let max = u16::from(m1) | (u16::from((m0 & 0x30) ^ 0x30) << 4);
                let prefix = if max > 255 { 2 } else { 1 };
                let out = text_or_bytes();
                let pad_to = if matches!(out, StrOut::Bytes) { max } else { 0 };
                Plan::Str { prefix, out, pad_to }
            }
            TINY_BLOB..=BLOB => Plan::Str {
                prefix: length_bytes()?,
                out: text_or_bytes(),
                pad_to: 0,
            },
            GEOMETRY | VECTOR => Plan::Str {
                prefix: length_bytes()?,
                out: StrOut::Bytes,
                pad_to: 0,
            },
            JSON => Plan::Json {
                prefix: length_bytes()?,
            },
            ENUM => match m1 {
                1 | 2 => Plan::Enum { width: m1 },
                _ => return Err(format!("ENUM storage size {m1} not 1 or 2")),
            },
            SET => match m1 {
                1..=8 => Plan::Set { width: m1 },
                _ => return Err(format!("SET storage size {m1} not in 1..=8")),
            },
            BIT => {
                if m0 > 7 || m1 > 8 || (m1 == 8 && m0 > 0) {
                    return Err(format!("invalid BIT metadata {m0},{m1}"));
                }
                Plan::Bit {
                    len: m1 + u8::from(m0 > 0),
                }
            }
            NULL => Plan::Null,
            OLD_DECIMAL => Plan::Unsupported("pre-5.0 DECIMAL is not supported"),
            TYPED_ARRAY => Plan::Unsupported("typed arrays are not supported"),
            _ => Plan::Unsupported("unknown column type"),
        })
    }
}

/// A TABLE_MAP as cached: its bytes (to detect changes), schema and decode plan.
struct CachedTable {
    raw: Vec<u8>,
    schema: Arc<TableSchema>,
    plans: Box<[Plan]>,
    /// Indexes of the JSON columns (PARTIAL_UPDATE_ROWS_EVENT has one bit per JSON column).
    json_columns: Box<[usize]>,
}

/// Decodes rows events against the TABLE_MAPs seen before them.
///
/// Feed it every TABLE_MAP ([`RowDecoder::table_map`]); then [`RowDecoder::rows`] decodes rows
/// events. Call [`RowDecoder::clear`] when the binlog file changes (ROTATE): table ids are per
/// file, and clearing bounds the cache. Correctness does not depend on it, because a TABLE_MAP
/// always precedes the rows events that use it and a cached schema is only reused for
/// byte-identical TABLE_MAPs. It holds no other state, so one decoder serves a whole stream.
#[derive(Default)]
pub struct RowDecoder {
    tables: HashMap<u64, CachedTable>,
}

/// Kind of rows event, from its type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowsKind {
    Write,
    Update,
    Delete,
    PartialUpdate,
}

/// True for every event type that carries row changes, including the ones [`RowDecoder::rows`]
/// rejects as unsupported (so that a caller dispatching on this never skips row data).
pub fn is_rows_event(event: &Event) -> bool {
    let t = event.header().event_type_raw();
    rows_kind(t).is_some() || MARIADB_COMPRESSED_ROWS.contains(&t)
}

fn rows_kind(event_type: u8) -> Option<RowsKind> {
    Some(match event_type {
        WRITE_ROWS_V1 | WRITE_ROWS_V2 => RowsKind::Write,
        UPDATE_ROWS_V1 | UPDATE_ROWS_V2 => RowsKind::Update,
        DELETE_ROWS_V1 | DELETE_ROWS_V2 => RowsKind::Delete,
        PARTIAL_UPDATE_ROWS => RowsKind::PartialUpdate,
        _ => return None,
    })
}

fn event_name(kind: RowsKind) -> &'static str {
    match kind {
        RowsKind::Write => "WRITE_ROWS",
        RowsKind::Update => "UPDATE_ROWS",
        RowsKind::Delete => "DELETE_ROWS",
        RowsKind::PartialUpdate => "PARTIAL_UPDATE_ROWS",
    }
}

/// The parts of a rows event before its rows.
struct RowsHeader<'a> {
    kind: RowsKind,
    table_id: u64,
    width: usize,
    before: Option<&'a [u8]>,
    after: Option<&'a [u8]>,
    rows: &'a [u8],
}

/// Parses the rows event post-header and bitmaps (as `Rows_log_event`'s constructor does: the
/// FORMAT_DESCRIPTION's post-header length says whether the table id is 4 or 6 bytes and
/// whether the v2 variable-length extra-data header is present).
fn parse_rows_header(event: &Event) -> Result<RowsHeader<'_>, DecodeError> {
    let event_type = event.header().event_type_raw();
    let Some(kind) = rows_kind(event_type) else {
        if MARIADB_COMPRESSED_ROWS.contains(&event_type) {
            return Err(DecodeError::Unsupported(format!(
                "MariaDB compressed rows event (type {event_type}); set log_bin_compress=OFF"
            )));
        }
        return Err(DecodeError::NotRowsEvent(event_type));
    };
    let v2 = !matches!(event_type, WRITE_ROWS_V1 | UPDATE_ROWS_V1 | DELETE_ROWS_V1);
    let header_len = event
        .fde()
        .event_type_header_lengths()
        .get(usize::from(event_type) - 1)
        .copied()
        .unwrap_or(if v2 { 10 } else { 8 });
    let malformed = |reason: &str| DecodeError::Malformed {
        event: event_name(kind),
        table: String::new(),
        reason: reason.to_string(),
    };
    let mut cur = Cursor::new(event.data());
    let table_id = if header_len == 6 {
        cur.uint_le(4)
    } else {
        cur.uint_le(6)
    }
    .map_err(|_| malformed("truncated post-header"))?;
    cur.take(2).map_err(|_| malformed("truncated post-header"))?; // flags
    if header_len == 10 {
        // The length includes its own two bytes.
        let extra_len = cur.uint_le(2).map_err(|_| malformed("truncated extra-data header"))?;
        let extra_len = usize::try_from(extra_len)
            .ok()
            .and_then(|l| l.checked_sub(2))
            .ok_or_else(|| malformed("extra-data length below 2"))?;
        cur.take(extra_len).map_err(|_| malformed("truncated extra data"))?;
    }
    let width = cur.lenenc().map_err(|_| malformed("truncated column count"))?;
    if width > (cur.remaining() as u64) * 8 {
        return Err(malformed("column count exceeds the event size"));
    }
    let width = width as usize;
    let bitmap_len = width.div_ceil(8);
    let mut bitmap = || {
        cur.take(bitmap_len)
            .map_err(|_| malformed("truncated columns-present bitmap"))
    };
    let before = match kind {
        RowsKind::Update | RowsKind::Delete | RowsKind::PartialUpdate => Some(bitmap()?),
        RowsKind::Write => None,
    };
    let after = match kind {
        RowsKind::Update | RowsKind::Write | RowsKind::PartialUpdate => Some(bitmap()?),
        RowsKind::Delete => None,
    };
    Ok(RowsHeader {
        kind,
        table_id,
        width,
        before,
        after,
        rows: cur.rest(),
    })
}

impl RowDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles a TABLE_MAP event; returns its (possibly cached) schema.
    pub fn table_map(&mut self, event: &Event) -> Result<Arc<TableSchema>, DecodeError> {
        let data = event.data();
        let header_len = event.fde().get_event_type_header_length(EventType::TABLE_MAP_EVENT);
        let table_id = if header_len == 6 {
            Cursor::new(data).uint_le(4)
        } else {
            Cursor::new(data).uint_le(6)
        }
        .map_err(|_| DecodeError::TableMap {
            table: "?".into(),
            reason: "truncated post-header".into(),
        })?;
        if let Some(cached) = self.tables.get(&table_id) {
            if cached.raw == data {
                return Ok(Arc::clone(&cached.schema));
            }
        }
        let schema = TableSchema::from_table_map(event)?;
        let plans = schema
            .columns
            .iter()
            .map(|c| {
                Plan::of(c).map_err(|reason| DecodeError::TableMap {
                    table: schema.qualified_name().to_string(),
                    reason: format!("column `{}` ({}): {reason}", c.name, c.type_name()),
                })
            })
            .collect::<Result<Box<[Plan]>, _>>()?;
        let json_columns = (0..schema.columns.len())
            .filter(|&i| schema.columns[i].column_type == JSON)
            .collect();
        let schema = Arc::new(schema);
        self.tables.insert(
            table_id,
            CachedTable {
                raw: data.to_vec(),
                schema: Arc::clone(&schema),
                plans,
                json_columns,
            },
        );
        Ok(schema)
    }

    /// Schema of the table a rows event refers to, without decoding its rows (lets the caller
    /// skip tables it does not track).
    pub fn rows_table(&self, event: &Event) -> Result<Arc<TableSchema>, DecodeError> {
        let header = parse_rows_header(event)?;
        self.tables
            .get(&header.table_id)
            .map(|t| Arc::clone(&t.schema))
            .ok_or(DecodeError::UnknownTable(header.table_id))
    }

    /// Decodes every row of a WRITE/UPDATE/DELETE rows event (v1 or v2, and
    /// PARTIAL_UPDATE_ROWS without partial JSON).
    pub fn rows(&self, event: &Event) -> Result<(Arc<TableSchema>, Vec<RowImage>), DecodeError> {
        let header = parse_rows_header(event)?;
        let table = self
            .tables
            .get(&header.table_id)
            .ok_or(DecodeError::UnknownTable(header.table_id))?;
        let rows = decode_rows(table, &header)?;
        Ok((Arc::clone(&table.schema), rows))
    }

    /// Forgets all table maps (call on ROTATE: table ids are only meaningful within a file).
    pub fn clear(&mut self) {
        self.tables.clear();
    }
}

fn decode_rows(table: &CachedTable, header: &RowsHeader<'_>) -> Result<Vec<RowImage>, DecodeError> {
    let schema = &table.schema;
    if header.width != schema.columns.len() {
        return Err(DecodeError::Malformed {
            event: event_name(header.kind),
            table: format!(" for {}", schema.qualified_name()),
            reason: format!(
                "{} columns, but its TABLE_MAP has {}",
                header.width,
                schema.columns.len()
            ),
        });
    }
    let mut cur = Cursor::new(header.rows);
    let mut rows = Vec::new();
    while !cur.is_empty() {
        let before_row = cur.remaining();
        let row = match header.kind {
            RowsKind::Write => RowImage::Insert(decode_image(table, header, header.after, false, &mut cur)?),
            RowsKind::Delete => RowImage::Delete(decode_image(table, header, header.before, false, &mut cur)?),
            RowsKind::Update | RowsKind::PartialUpdate => {
                let before = decode_image(table, header, header.before, false, &mut cur)?;
                let partial = header.kind == RowsKind::PartialUpdate;
                let after = decode_image(table, header, header.after, partial, &mut cur)?;
                RowImage::Update { before, after }
            }
        };
        // An image with no present columns takes no bytes; looping on it would never end.
        if cur.remaining() == before_row {
            return Err(DecodeError::Malformed {
                event: event_name(header.kind),
                table: format!(" for {}", schema.qualified_name()),
                reason: "row image without columns".into(),
            });
        }
        rows.push(row);
    }
    Ok(rows)
}

fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Decodes one row image: `present` is its columns-present bitmap; `shared_image` marks the
/// after image of a PARTIAL_UPDATE_ROWS event, which starts with value options.
fn decode_image(
    table: &CachedTable,
    header: &RowsHeader<'_>,
    present: Option<&[u8]>,
    shared_image: bool,
    cur: &mut Cursor<'_>,
) -> Result<Vec<Value>, DecodeError> {
    let schema = &table.schema;
    let n = schema.columns.len();
    let present = present.unwrap_or_default(); // always Some for the images of `header.kind`
    let framing = |reason: &str| DecodeError::Malformed {
        event: event_name(header.kind),
        table: format!(" for {}", schema.qualified_name()),
        reason: reason.to_string(),
    };
    if shared_image {
        // PARTIAL_JSON_UPDATES (bit 0): one bit per JSON column of the table says whether its
        // value is a diff against the before image rather than a whole document.
        let options = cur.lenenc().map_err(|_| framing("truncated value options"))?;
        if options & 1 != 0 {
            let bits = cur
                .take(table.json_columns.len().div_ceil(8))
                .map_err(|_| framing("truncated partial-JSON bitmap"))?;
            for (k, &i) in table.json_columns.iter().enumerate() {
                if bit(bits, k) {
                    let column = &schema.columns[i];
                    return Err(DecodeError::Unsupported(format!(
                        "{}: column `{}` ({}): partial JSON update in a PARTIAL_UPDATE_ROWS \
                         event; set binlog_row_value_options='' on the source",
                        schema.qualified_name(),
                        column.name,
                        column.type_name()
                    )));
                }
            }
        }
    }
    let present_count = (0..n).filter(|&i| bit(present, i)).count();
    let nulls = cur
        .take(present_count.div_ceil(8))
        .map_err(|_| framing("truncated NULL bitmap"))?;
    let mut values = Vec::with_capacity(n);
    let mut ordinal = 0;
    for i in 0..n {
        if !bit(present, i) {
            values.push(Value::Absent);
            continue;
        }
        let is_null = bit(nulls, ordinal);
        ordinal += 1;
        if is_null {
            values.push(Value::Null);
            continue;
        }
        let column = &schema.columns[i];
        let value = decode_value(table.plans[i], column, cur).map_err(|fault| DecodeError::Column {
            table: schema.qualified_name().to_string(),
            column: column.name.clone(),
            column_type: column.type_name(),
            reason: fault.to_string(),
        })?;
        values.push(value);
    }
    Ok(values)
}

fn sign_extend(value: u64, width: u8) -> i64 {
    let shift = 64 - 8 * u32::from(width);
    ((value << shift) as i64) >> shift
}

/// Decodes one non-NULL value.
fn decode_value(plan: Plan, column: &ColumnSchema, cur: &mut Cursor<'_>) -> Result<Value, Fault> {
    Ok(match plan {
        Plan::Int { width, unsigned } => {
            let raw = cur.uint_le(usize::from(width))?;
            if unsigned {
                Value::UInt(raw)
            } else {
                Value::Int(sign_extend(raw, width))
            }
        }
        Plan::Float => Value::Float(f32::from_bits(cur.uint_le(4)? as u32)),
        Plan::Double => Value::Double(f64::from_bits(cur.uint_le(8)?)),
        Plan::Decimal { precision, scale, len } => {
            let bytes = cur.take(usize::from(len))?;
            Value::Decimal(decimal_string(bytes, precision, scale)?)
        }
        Plan::Year => match cur.u8()? {
            0 => Value::Year(0),
            y => Value::Year(1900 + u16::from(y)),
        },
        Plan::Date => {
            let v = cur.uint_le(3)?;
            Value::Date {
                year: (v >> 9) as u16,
                month: ((v >> 5) & 0x0f) as u8,
                day: (v & 0x1f) as u8,
            }
        }
        Plan::Time => {
            let v = sign_extend(cur.uint_le(3)?, 3);
            let abs = v.unsigned_abs();
            let (minutes, seconds) = ((abs / 100 % 100) as u8, (abs % 100) as u8);
            if minutes > 59 || seconds > 59 {
                return Err(Fault::Invalid("TIME minutes or seconds out of range"));
            }
            Value::Time {
                negative: v < 0,
                hours: (abs / 10000) as u32,
                minutes,
                seconds,
                micros: 0,
                fsp: 0,
            }
        }
        Plan::Time2 { fsp } => time2(cur, fsp)?,
        Plan::DateTime => {
            let v = cur.uint_le(8)?;
            let (date, time) = (v / 1_000_000, v % 1_000_000);
            Value::DateTime {
                year: u16::try_from(date / 10000).map_err(|_| Fault::Invalid("DATETIME year out of range"))?,
                month: (date / 100 % 100) as u8,
                day: (date % 100) as u8,
                hour: (time / 10000) as u8,
                minute: (time / 100 % 100) as u8,
                second: (time % 100) as u8,
                micros: 0,
                fsp: 0,
            }
        }
        Plan::DateTime2 { fsp } => datetime2(cur, fsp)?,
        Plan::Timestamp => Value::Timestamp {
            seconds: cur.uint_le(4)? as i64,
            micros: 0,
            fsp: 0,
        },
        Plan::Timestamp2 { fsp } => {
            let seconds = cur.uint_be(4)? as i64;
            Value::Timestamp {
                seconds,
                micros: fraction(cur, fsp)?,
                fsp,
            }
        }
        Plan::Str { prefix, out, pad_to } => {
            let len = cur.uint_le(usize::from(prefix))?;
            let bytes = cur.take(usize::try_from(len).map_err(|_| Fault::Truncated)?)?;
            match out {
                StrOut::Text(charset) => Value::Text {
                    bytes: bytes.to_vec(),
                    charset,
                },
                StrOut::Bytes => {
                    let mut bytes = bytes.to_vec();
                    if bytes.len() < usize::from(pad_to) {
                        bytes.resize(usize::from(pad_to), 0);
                    }
                    Value::Bytes(bytes)
                }
            }
        }
        Plan::Json { prefix } => {
            let len = cur.uint_le(usize::from(prefix))?;
            let bytes = cur.take(usize::try_from(len).map_err(|_| Fault::Truncated)?)?;
            Value::Json(json_value(bytes)?)
        }
        Plan::Enum { width } => {
            let index = cur.uint_le(usize::from(width))?;
            Value::Enum(enum_name(column, index)?)
        }
        Plan::Set { width } => {
            let bits = cur.uint_le(usize::from(width))?;
            Value::Set(set_names(column, bits)?)
        }
        Plan::Bit { len } => Value::Bit(cur.take(usize::from(len))?.to_vec()),
        Plan::Null => Value::Null,
        Plan::Unsupported(why) => return Err(Fault::Invalid(why)),
    })
}

/// Fractional seconds of TIMESTAMP2/DATETIME2: `(fsp + 1) / 2` big-endian bytes holding the
/// fraction in units of 10^-2, 10^-4 or 10^-6 seconds.
fn fraction(cur: &mut Cursor<'_>, fsp: u8) -> Result<u32, Fault> {
    let (bytes, limit, scale) = match fsp {
        0 => return Ok(0),
        1 | 2 => (1, 100, 10_000),
        3 | 4 => (2, 10_000, 100),
        _ => (3, 1_000_000, 1),
    };
    let v = cur.uint_be(bytes)?;
    if v >= limit {
        return Err(Fault::Invalid("fractional seconds out of range"));
    }
    Ok(v as u32 * scale)
}

/// DATETIME2: 40-bit big-endian `1 sign | 17 year*13+month | 5 day | 5 hour | 6 minute |
/// 6 second` (offset by 2^39) plus the fraction.
fn datetime2(cur: &mut Cursor<'_>, fsp: u8) -> Result<Value, Fault> {
    let int_part = cur.uint_be(5)? as i64 - 0x80_0000_0000;
    if int_part < 0 {
        return Err(Fault::Invalid("negative DATETIME"));
    }
    let micros = fraction(cur, fsp)?;
    let ymd = int_part >> 17;
    let ym = ymd >> 5;
    let hms = int_part & 0x1_ffff;
    let (minute, second) = (((hms >> 6) & 0x3f) as u8, (hms & 0x3f) as u8);
    if minute > 59 || second > 59 {
        return Err(Fault::Invalid("DATETIME minutes or seconds out of range"));
    }
    Ok(Value::DateTime {
        year: (ym / 13) as u16,
        month: (ym % 13) as u8,
        day: (ymd & 0x1f) as u8,
        hour: (hms >> 12) as u8,
        minute,
        second,
        micros,
        fsp,
    })
}

/// TIME2: the server's packed time (`hms << 24 | micros`, negated for negative times) stored as
/// a 24-bit integer part offset by 2^23 plus a fraction; a negative time with a fraction
/// stores the integer part rounded down and the fraction as its (negative) complement, which
/// is undone here exactly as `my_time_packed_from_binary` does.
fn time2(cur: &mut Cursor<'_>, fsp: u8) -> Result<Value, Fault> {
    let packed: i64 = match fsp {
        0 => (cur.uint_be(3)? as i64 - 0x80_0000) << 24,
        1..=4 => {
            let mut int_part = cur.uint_be(3)? as i64 - 0x80_0000;
            let (bytes, modulus, unit) = if fsp <= 2 {
                (1, 0x100, 10_000)
            } else {
                (2, 0x1_0000, 100)
            };
            let mut frac = cur.uint_be(bytes)? as i64;
            if int_part < 0 && frac != 0 {
                int_part += 1;
                frac -= modulus;
            }
            (int_part << 24) + frac * unit
        }
        _ => cur.uint_be(6)? as i64 - 0x8000_0000_0000,
    };
    let abs = packed.unsigned_abs();
    let hms = abs >> 24;
    let micros = (abs & 0xff_ffff) as u32;
    let (minutes, seconds) = (((hms >> 6) & 0x3f) as u8, (hms & 0x3f) as u8);
    if micros > 999_999 || minutes > 59 || seconds > 59 {
        return Err(Fault::Invalid("TIME fields out of range"));
    }
    Ok(Value::Time {
        negative: packed < 0,
        hours: ((hms >> 12) & 0x3ff) as u32,
        minutes,
        seconds,
        micros,
        fsp,
    })
}

/// Bytes of a binary DECIMAL group holding that many digits.
const DECIMAL_GROUP_BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Digits held by each group of a binary DECIMAL: leading partial group, full 9-digit groups
/// of the integer part, full groups of the fraction, trailing partial group.
fn decimal_groups(precision: usize, scale: usize) -> impl Iterator<Item = usize> {
    let intg = precision - scale;
    let lead = (!intg.is_multiple_of(9)).then_some(intg % 9);
    let trail = (!scale.is_multiple_of(9)).then_some(scale % 9);
    lead.into_iter()
        .chain(std::iter::repeat_n(9, intg / 9 + scale / 9))
        .chain(trail)
}

/// Checks that every digit group of a binary DECIMAL is below 10^digits. `mysql_common`'s
/// reader (used on JSON's DECIMALs) multiplies groups without overflow checks, so corrupt
/// bytes must not reach it.
fn check_decimal(bytes: &[u8], precision: usize, scale: usize) -> Result<(), Fault> {
    read_decimal(bytes, precision, scale, |_, _| {})
}

/// Reads the digit groups of a binary DECIMAL in order (see [`decimal_groups`]), checking each
/// is below 10^digits, and hands `each` its digit count and value.
fn read_decimal(bytes: &[u8], precision: usize, scale: usize, mut each: impl FnMut(usize, u32)) -> Result<(), Fault> {
    let Some(&first) = bytes.first() else {
        return Err(Fault::Truncated);
    };
    // The sign is the inverted top bit; negative numbers store every byte complemented.
    let mask = if first & 0x80 == 0 { 0xff } else { 0 };
    let mut pos = 0;
    for digits in decimal_groups(precision, scale) {
        let size = DECIMAL_GROUP_BYTES[digits];
        let group = bytes.get(pos..pos + size).ok_or(Fault::Truncated)?;
        let value = group.iter().enumerate().fold(0u32, |acc, (k, &b)| {
            let b = if pos + k == 0 { b ^ 0x80 } else { b };
            (acc << 8) | u32::from(b ^ mask)
        });
        if value >= 10u32.pow(digits as u32) {
            return Err(Fault::Invalid("DECIMAL digit group out of range"));
        }
        each(digits, value);
        pos += size;
    }
    Ok(())
}

/// A binary DECIMAL as the exact string `mysql_common`'s `Decimal` prints (its reader and
/// `Display`, which the tests keep as the oracle): leading zero groups dropped, `0` before the
/// point when no integer digit is left, every scale digit kept, and `-` kept on a negative
/// zero only when it has a fraction. Written directly from the groups in one pass: the reader
/// and `fmt` cost ~800 instructions and three allocations per value (issue #7).
fn decimal_string(bytes: &[u8], precision: u8, scale: u8) -> Result<String, Fault> {
    let (precision, scale) = (usize::from(precision), usize::from(scale));
    let negative = bytes.first().is_some_and(|b| b & 0x80 == 0);
    let intg = precision - scale;
    let integer_groups = usize::from(!intg.is_multiple_of(9)) + intg / 9;
    let mut out = String::with_capacity(precision + 3);
    if negative {
        out.push('-');
    }
    let integer_start = out.len();
    let mut k = 0;
    read_decimal(bytes, precision, scale, |digits, value| {
        if k == integer_groups {
            // The first fraction group.
            if out.len() == integer_start {
                out.push('0');
            }
            out.push('.');
        }
        if k >= integer_groups || out.len() > integer_start {
            push_padded(&mut out, value, digits);
        } else if value != 0 {
            // The first significant integer group, without leading zeros.
            push_padded(&mut out, value, 0);
        }
        k += 1;
    })?;
    if out.len() == integer_start {
        // No integer digit and no fraction: zero, unsigned.
        return Ok("0".into());
    }
    Ok(out)
}

fn enum_name(column: &ColumnSchema, index: u64) -> Result<String, Fault> {
    if index == 0 {
        return Ok(String::new());
    }
    if column.members.is_empty() {
        return Ok(index.to_string());
    }
    column
        .members
        .get(index as usize - 1)
        .cloned()
        .ok_or(Fault::Invalid("ENUM index beyond the member list"))
}

fn set_names(column: &ColumnSchema, bits: u64) -> Result<Vec<String>, Fault> {
    let members = &column.members;
    if !members.is_empty() && members.len() < 64 && bits >> members.len() != 0 {
        return Err(Fault::Invalid("SET bit beyond the member list"));
    }
    Ok((0..64)
        .filter(|k| bits & (1 << k) != 0)
        .map(|k| match members.get(k) {
            Some(name) => name.clone(),
            None => (k + 1).to_string(),
        })
        .collect())
}

/// Decodes MySQL binary JSON with `mysql_common`'s parser, after [`check_jsonb`].
fn json_value(bytes: &[u8]) -> Result<serde_json::Value, Fault> {
    check_jsonb(bytes)?;
    let value: jsonb::Value<'_> = ParseBuf(bytes)
        .parse(())
        .map_err(|_| Fault::Invalid("malformed binary JSON"))?;
    let dom = value.parse().map_err(|_| Fault::Invalid("malformed binary JSON"))?;
    Ok(serde_json::Value::from(dom))
}

/// Walks a binary JSON document the way `mysql_common` will, rejecting what it would choke on:
/// nesting deeper than MySQL allows (its parser recurses), more value entries than the
/// document has bytes (entries sharing storage could make the walk exponential), opaque
/// DECIMALs with impossible precision or digits, and opaque temporals equal to `i64::MIN`
/// (which it negates).
fn check_jsonb(bytes: &[u8]) -> Result<(), Fault> {
    let Some((&value_type, data)) = bytes.split_first() else {
        return Ok(()); // an empty document reads as JSON null
    };
    let mut budget = bytes.len();
    check_jsonb_value(value_type, data, 0, &mut budget)
}

fn check_jsonb_value(value_type: u8, data: &[u8], depth: usize, budget: &mut usize) -> Result<(), Fault> {
    const OPAQUE: u8 = 0x0f;
    match value_type {
        0..=3 => {
            if depth >= JSON_MAX_DEPTH {
                return Err(Fault::Invalid("JSON nested too deeply"));
            }
            let large = value_type & 1 == 1;
            let is_object = value_type < 2;
            let offset_size = if large { 4 } else { 2 };
            let mut cur = Cursor::new(data);
            let count = cur.uint_le(offset_size)? as usize;
            let size = cur.uint_le(offset_size)? as usize;
            let data = data.get(..size).ok_or(Fault::Truncated)?;
            *budget = budget
                .checked_sub(count)
                .ok_or(Fault::Invalid("JSON has more entries than bytes"))?;
            let key_entries = if is_object { count * (offset_size + 2) } else { 0 };
            let value_entries = 2 * offset_size + key_entries;
            for k in 0..count {
                let entry = value_entries + k * (offset_size + 1);
                let mut cur = Cursor::new(data.get(entry..).ok_or(Fault::Truncated)?);
                let element_type = cur.u8()?;
                let inlined = match element_type {
                    4..=6 => true,
                    7 | 8 => large,
                    _ => false,
                };
                let offset = cur.uint_le(offset_size)? as usize;
                if !inlined {
                    let nested = data.get(offset..).ok_or(Fault::Truncated)?;
                    check_jsonb_value(element_type, nested, depth + 1, budget)?;
                }
            }
            Ok(())
        }
        OPAQUE => {
            let mut cur = Cursor::new(data);
            let field_type = cur.u8()?;
            let mut len = 0u64;
            for k in 0..5 {
                let b = cur.u8()?;
                len |= u64::from(b & 0x7f) << (7 * k);
                if b & 0x80 == 0 {
                    break;
                }
            }
            let payload = cur.take(usize::try_from(len).map_err(|_| Fault::Truncated)?)?;
            match field_type {
                NEWDECIMAL => {
                    let (&p, rest) = payload.split_first().ok_or(Fault::Truncated)?;
                    let (&s, digits) = rest.split_first().ok_or(Fault::Truncated)?;
                    if !(1..=65).contains(&p) || s > 30 || s > p {
                        return Err(Fault::Invalid("JSON DECIMAL with invalid precision"));
                    }
                    check_decimal(digits, usize::from(p), usize::from(s))
                }
                DATE | TIME | DATETIME | TIMESTAMP => match payload.first_chunk::<8>() {
                    Some(b) if i64::from_le_bytes(*b) == i64::MIN => Err(Fault::Invalid("JSON temporal out of range")),
                    _ => Ok(()),
                },
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading binlog files.

/// One event read from a binlog file.
#[derive(Debug)]
pub struct FileEvent {
    /// Byte offset of the event in the file; for events expanded from a TRANSACTION_PAYLOAD,
    /// the offset of that payload event.
    pub offset: u64,
    /// True for events expanded from a TRANSACTION_PAYLOAD.
    pub in_payload: bool,
    pub event: Event,
}

/// Iterator over the events of a binlog file.
///
/// * Event framing is validated before `mysql_common` sees the bytes (its reader unwraps short
///   reads and underflows on tiny event sizes).
/// * CRC32 checksums are verified with `mysql_common`'s `Event::calc_checksum`, which clears
///   `LOG_EVENT_BINLOG_IN_USE_F` on the FORMAT_DESCRIPTION event first, exactly as the server
///   does: a file copied while the server was still writing it has that flag set although the
///   CRC was computed without it. (`mysql_common`'s reader itself verifies nothing.)
/// * After a TRANSACTION_PAYLOAD event, its decompressed inner events follow (marked
///   `in_payload`, which carry no checksums), as `mysql_async`'s binlog stream delivers them.
/// * Events of unknown types (e.g. Aurora's type 100) are yielded like any other.
/// * After the first error the iterator ends: the framing of what follows is unknown.
pub struct BinlogFileReader<R> {
    input: R,
    path: String,
    offset: u64,
    fde: FormatDescriptionEvent<'static>,
    payload: Option<PayloadEvents>,
    failed: bool,
}

/// Decompressed inner events of one TRANSACTION_PAYLOAD.
struct PayloadEvents {
    data: Vec<u8>,
    pos: usize,
    offset: u64,
    fde: FormatDescriptionEvent<'static>,
}

/// Opens a binlog file (checking its `\xfebin` magic) for reading its events in order.
pub fn read_binlog_file(path: impl AsRef<Path>) -> Result<BinlogFileReader<BufReader<File>>, DecodeError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| DecodeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    BinlogFileReader::new(BufReader::new(file), path.to_path_buf())
}

impl<R: Read> BinlogFileReader<R> {
    /// Reads from `input` (a whole binlog file, magic included); `name` is used in errors.
    pub fn new(mut input: R, name: PathBuf) -> Result<Self, DecodeError> {
        let path = name.display().to_string();
        let mut magic = [0u8; 4];
        input.read_exact(&mut magic).map_err(|source| DecodeError::Io {
            path: path.clone(),
            source,
        })?;
        if magic != [0xfe, b'b', b'i', b'n'] {
            return Err(DecodeError::File {
                path,
                offset: 0,
                reason: "not a binlog file (bad magic)".into(),
            });
        }
        Ok(BinlogFileReader {
            input,
            path,
            offset: 4,
            fde: FormatDescriptionEvent::new(BinlogVersion::Version4),
            payload: None,
            failed: false,
        })
    }

    fn error(&self, offset: u64, reason: impl Into<String>) -> DecodeError {
        DecodeError::File {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn next_top_level(&mut self) -> Option<Result<FileEvent, DecodeError>> {
        let offset = self.offset;
        let mut header = [0u8; BinlogEventHeader::LEN];
        match read_up_to(&mut self.input, &mut header) {
            Ok(0) => return None,
            Ok(n) if n < header.len() => return Some(Err(self.error(offset, "truncated event header"))),
            Ok(_) => {}
            Err(source) => {
                return Some(Err(DecodeError::Io {
                    path: self.path.clone(),
                    source,
                }))
            }
        }
        let size = u32::from_le_bytes([header[9], header[10], header[11], header[12]]) as usize;
        if size < header.len() {
            return Some(Err(
                self.error(offset, format!("event size {size} below the header size"))
            ));
        }
        let mut bytes = Vec::with_capacity(size.min(1 << 20));
        bytes.extend_from_slice(&header);
        let body = (size - header.len()) as u64;
        match (&mut self.input).take(body).read_to_end(&mut bytes) {
            Ok(_) if bytes.len() == size => {}
            Ok(_) => return Some(Err(self.error(offset, "truncated event"))),
            Err(source) => {
                return Some(Err(DecodeError::Io {
                    path: self.path.clone(),
                    source,
                }))
            }
        }
        self.offset += size as u64;
        let event = match read_event(&self.fde, &bytes) {
            Ok(event) => event,
            Err(reason) => return Some(Err(self.error(offset, reason))),
        };
        if let Err(reason) = verify_checksum(&event) {
            return Some(Err(self.error(offset, reason)));
        }
        let event_type = event.header().event_type_raw();
        if event_type == EventType::FORMAT_DESCRIPTION_EVENT as u8 {
            match event.read_event::<FormatDescriptionEvent<'_>>() {
                Ok(fde) => self.fde = fde.into_owned().with_footer(event.footer()),
                Err(e) => return Some(Err(self.error(offset, format!("bad FORMAT_DESCRIPTION: {e}")))),
            }
        } else if event_type == EventType::TRANSACTION_PAYLOAD_EVENT as u8 {
            match decompress_payload(event.data()) {
                Ok(data) => {
                    let mut footer = self.fde.footer();
                    footer.set_checksum_enabled(false); // WL#3549: inner events carry none
                    self.payload = Some(PayloadEvents {
                        data,
                        pos: 0,
                        offset,
                        fde: self.fde.clone().with_footer(footer),
                    })
                }
                Err(reason) => return Some(Err(self.error(offset, reason))),
            }
        }
        Some(Ok(FileEvent {
            offset,
            in_payload: false,
            event,
        }))
    }

    fn next_in_payload(&mut self) -> Option<Result<FileEvent, DecodeError>> {
        let payload = self.payload.as_mut()?;
        let rest = &payload.data[payload.pos..];
        if rest.is_empty() {
            self.payload = None;
            return None;
        }
        let offset = payload.offset;
        let size = match rest.get(9..13) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => return Some(Err(self.error(offset, "truncated event header in payload"))),
        };
        if size < BinlogEventHeader::LEN || size > rest.len() {
            return Some(Err(self.error(offset, format!("bad event size {size} in payload"))));
        }
        let result = read_event(&payload.fde, &rest[..size]);
        payload.pos += size;
        match result {
            Ok(event) if event.header().event_type_raw() == EventType::TRANSACTION_PAYLOAD_EVENT as u8 => {
                Some(Err(self.error(offset, "TRANSACTION_PAYLOAD nested in a payload")))
            }
            Ok(event) => Some(Ok(FileEvent {
                offset,
                in_payload: true,
                event,
            })),
            Err(reason) => Some(Err(self.error(offset, reason))),
        }
    }
}

impl<R: Read> Iterator for BinlogFileReader<R> {
    type Item = Result<FileEvent, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = match self.next_in_payload() {
            Some(item) => Some(item),
            None => self.next_top_level(),
        };
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses one complete event (`bytes` holds exactly header + body) with `mysql_common`, after
/// checking that the body is long enough for the checksum trailer it will cut off.
fn read_event(fde: &FormatDescriptionEvent<'static>, bytes: &[u8]) -> Result<Event, String> {
    let body = bytes.len() - BinlogEventHeader::LEN;
    let is_fde = bytes[4] == EventType::FORMAT_DESCRIPTION_EVENT as u8;
    let footer = fde.footer();
    let trailer = if is_fde {
        // Checksum-algorithm byte and CRC (servers >= 5.6.1, whose FDE bodies exceed 57 bytes).
        5
    } else if footer.get_checksum_enabled()
        && !matches!(
            footer.get_checksum_alg(),
            Ok(None) | Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_OFF))
        )
    {
        4
    } else {
        0
    };
    if body < trailer || (is_fde && body < 57) {
        return Err(format!("event body of {body} bytes is too short"));
    }
    Event::read(fde, bytes).map_err(|e| format!("unreadable event: {e}"))
}

/// Verifies the CRC32 of `event` when its format says it has one.
fn verify_checksum(event: &Event) -> Result<(), String> {
    let footer = event.footer();
    if !footer.get_checksum_enabled()
        || footer.get_checksum_alg() != Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32))
    {
        return Ok(());
    }
    let Some(stored) = event.checksum() else {
        return Ok(());
    };
    let stored = u32::from_le_bytes(stored);
    // calc_checksum hashes the header with LOG_EVENT_BINLOG_IN_USE_F cleared.
    let computed = event.calc_checksum(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32);
    if stored != computed {
        let in_use = event.header().flags().contains(EventFlags::LOG_EVENT_BINLOG_IN_USE_F);
        return Err(format!(
            "CRC32 mismatch (stored {stored:08x}, computed {computed:08x}, in-use flag {in_use})"
        ));
    }
    Ok(())
}

/// Decompresses a TRANSACTION_PAYLOAD body. The header is parsed here rather than by
/// `mysql_common` (which panics on unknown compression types and short fields); the
/// decompression itself is its zstd reader, bounded by the declared uncompressed size.
fn decompress_payload(data: &[u8]) -> Result<Vec<u8>, String> {
    const END_MARK: u64 = 0;
    const PAYLOAD_SIZE: u64 = 1;
    const COMPRESSION_TYPE: u64 = 2;
    const UNCOMPRESSED_SIZE: u64 = 3;
    let malformed = |_| "malformed TRANSACTION_PAYLOAD header".to_string();
    let mut cur = Cursor::new(data);
    let (mut size, mut compression, mut uncompressed) = (None, None, None);
    loop {
        let field = cur.lenenc().map_err(malformed)?;
        if field == END_MARK {
            break;
        }
        let value = cur.lenenc_bytes().map_err(malformed)?;
        let number = Cursor::new(value).lenenc();
        match field {
            PAYLOAD_SIZE => size = Some(number.map_err(malformed)?),
            COMPRESSION_TYPE => compression = Some(number.map_err(malformed)?),
            UNCOMPRESSED_SIZE => uncompressed = Some(number.map_err(malformed)?),
            _ => {}
        }
    }
    let size = size.ok_or("TRANSACTION_PAYLOAD without payload size")?;
    let payload = cur
        .take(usize::try_from(size).unwrap_or(usize::MAX))
        .map_err(|_| "TRANSACTION_PAYLOAD shorter than its payload size".to_string())?;
    let algorithm = match compression {
        Some(0) => TransactionPayloadCompressionType::ZSTD,
        Some(255) => TransactionPayloadCompressionType::NONE,
        other => return Err(format!("unsupported payload compression type {other:?}")),
    };
    let limit = uncompressed.unwrap_or(u64::from(u32::MAX));
    let event = TransactionPayloadEvent::new(size, algorithm, limit, payload);
    let mut out = Vec::new();
    event
        .decompressed()
        .and_then(|reader| reader.take(limit.saturating_add(1)).read_to_end(&mut out))
        .map_err(|e| format!("cannot decompress TRANSACTION_PAYLOAD: {e}"))?;
    if uncompressed.is_some_and(|u| out.len() as u64 != u) {
        return Err(format!(
            "TRANSACTION_PAYLOAD decompressed to {} bytes, header says {limit}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// A binlog event (19-byte header + body, no checksum) as the default v4 format reads it.
    fn event(event_type: u8, body: &[u8]) -> Event {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_le_bytes()); // timestamp
        bytes.push(event_type);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // server id
        bytes.extend_from_slice(&(19 + body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes()); // log pos
        bytes.extend_from_slice(&0u16.to_le_bytes()); // flags
        bytes.extend_from_slice(body);
        let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
        Event::read(&fde, &bytes[..]).unwrap()
    }

    /// TABLE_MAP `db.t` for table id 7 with the given (type, metadata) columns, all nullable,
    /// followed by raw optional metadata.
    fn table_map(columns: &[(u8, &[u8])], optional: &[u8]) -> Event {
        let mut body = vec![7, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[2, b'd', b'b', 0, 1, b't', 0]);
        body.push(columns.len() as u8);
        body.extend(columns.iter().map(|c| c.0));
        let meta: Vec<u8> = columns.iter().flat_map(|c| c.1.iter().copied()).collect();
        body.push(meta.len() as u8);
        body.extend_from_slice(&meta);
        body.extend(std::iter::repeat_n(0xff, columns.len().div_ceil(8)));
        body.extend_from_slice(optional);
        event(EventType::TABLE_MAP_EVENT as u8, &body)
    }

    /// WRITE_ROWS_V2 for table 7 with every column present and `rows` as the row data.
    fn write_rows(width: usize, rows: &[u8]) -> Event {
        let mut body = vec![7, 0, 0, 0, 0, 0, 1, 0, 2, 0, width as u8];
        body.extend(std::iter::repeat_n(0xff, width.div_ceil(8)));
        body.extend_from_slice(rows);
        event(EventType::WRITE_ROWS_EVENT as u8, &body)
    }

    fn decode_one(columns: &[(u8, &[u8])], optional: &[u8], row: &[u8]) -> Result<Vec<Value>, DecodeError> {
        let mut decoder = RowDecoder::new();
        decoder.table_map(&table_map(columns, optional))?;
        let (_, mut rows) = decoder.rows(&write_rows(columns.len(), row))?;
        assert_eq!(rows.len(), 1);
        match rows.pop().unwrap() {
            RowImage::Insert(values) => Ok(values),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn mediumint_is_sign_extended() {
        let cols: &[(u8, &[u8])] = &[(INT24, &[]), (INT24, &[]), (INT24, &[])];
        let row = [0x00, 0xff, 0xff, 0xff, 0x00, 0x00, 0x80, 0x01, 0x00, 0x80];
        assert_eq!(
            decode_one(cols, &[], &row).unwrap(),
            vec![Value::Int(-1), Value::Int(-8_388_608), Value::Int(-8_388_607)]
        );
        // SIGNEDNESS (one bit per numeric column, most significant first) makes them unsigned.
        let unsigned = [1, 1, 0b1110_0000];
        assert_eq!(
            decode_one(cols, &unsigned, &row).unwrap(),
            vec![Value::UInt(0xff_ffff), Value::UInt(0x80_0000), Value::UInt(0x80_0001)]
        );
    }

    #[test]
    fn integer_widths() {
        let cols: &[(u8, &[u8])] = &[(TINY, &[]), (SHORT, &[]), (LONG, &[]), (LONGLONG, &[])];
        let mut row = vec![0x00, 0x80, 0x00, 0x80, 0xff, 0xff, 0xff, 0xff];
        row.extend_from_slice(&i64::MIN.to_le_bytes());
        assert_eq!(
            decode_one(cols, &[], &row).unwrap(),
            vec![
                Value::Int(-128),
                Value::Int(-32768),
                Value::Int(-1),
                Value::Int(i64::MIN)
            ]
        );
    }

    #[test]
    fn year_zero_and_1901() {
        let cols: &[(u8, &[u8])] = &[(YEAR, &[]), (YEAR, &[]), (YEAR, &[])];
        assert_eq!(
            decode_one(cols, &[], &[0x00, 0, 1, 255]).unwrap(),
            vec![Value::Year(0), Value::Year(1901), Value::Year(2155)]
        );
    }

    #[test]
    fn legacy_temporal_types() {
        let cols: &[(u8, &[u8])] = &[(TIME, &[]), (DATETIME, &[]), (TIMESTAMP, &[]), (TIME, &[])];
        let mut row = vec![0x00];
        row.extend_from_slice(&(-123456i32).to_le_bytes()[..3]);
        row.extend_from_slice(&20230728085904u64.to_le_bytes());
        row.extend_from_slice(&1_690_534_744u32.to_le_bytes());
        row.extend_from_slice(&8_385_959i32.to_le_bytes()[..3]);
        assert_eq!(
            decode_one(cols, &[], &row).unwrap(),
            vec![
                Value::Time {
                    negative: true,
                    hours: 12,
                    minutes: 34,
                    seconds: 56,
                    micros: 0,
                    fsp: 0
                },
                Value::DateTime {
                    year: 2023,
                    month: 7,
                    day: 28,
                    hour: 8,
                    minute: 59,
                    second: 4,
                    micros: 0,
                    fsp: 0
                },
                Value::Timestamp {
                    seconds: 1_690_534_744,
                    micros: 0,
                    fsp: 0
                },
                Value::Time {
                    negative: false,
                    hours: 838,
                    minutes: 59,
                    seconds: 59,
                    micros: 0,
                    fsp: 0
                },
            ]
        );
    }

    #[test]
    fn time2_negative_fractions() {
        // -00:00:00.5 with fsp 1: integer part -1, fraction 0x100 - 50.
        let cols: &[(u8, &[u8])] = &[(TIME2, &[1]), (TIME2, &[6])];
        let mut row = vec![0x00, 0x7f, 0xff, 0xff, 206];
        // -838:59:59.000000 with fsp 6: 0x800000000000 - packed.
        let packed = ((838i64 << 12) | (59 << 6) | 59) << 24;
        row.extend_from_slice(&(0x8000_0000_0000i64 - packed).to_be_bytes()[2..]);
        assert_eq!(
            decode_one(cols, &[], &row).unwrap(),
            vec![
                Value::Time {
                    negative: true,
                    hours: 0,
                    minutes: 0,
                    seconds: 0,
                    micros: 500_000,
                    fsp: 1
                },
                Value::Time {
                    negative: true,
                    hours: 838,
                    minutes: 59,
                    seconds: 59,
                    micros: 0,
                    fsp: 6
                },
            ]
        );
    }

    #[test]
    fn binary_char_is_padded_and_null_and_absent() {
        // BINARY(4): CHAR with charset 63 via COLUMN_CHARSET.
        let cols: &[(u8, &[u8])] = &[(STRING, &[0xfe, 4]), (LONG, &[]), (LONG, &[])];
        let optional = [3, 1, 63];
        let values = decode_one(cols, &optional, &[0b010, 1, 0xab, 5, 0, 0, 0]).unwrap();
        assert_eq!(
            values,
            vec![Value::Bytes(vec![0xab, 0, 0, 0]), Value::Null, Value::Int(5)]
        );
    }

    #[test]
    fn unknown_members_fall_back_to_numbers() {
        let cols: &[(u8, &[u8])] = &[(STRING, &[ENUM, 1]), (STRING, &[ENUM, 1]), (STRING, &[SET, 1])];
        assert_eq!(
            decode_one(cols, &[], &[0, 0, 2, 0b101]).unwrap(),
            vec![
                Value::Enum(String::new()),
                Value::Enum("2".into()),
                Value::Set(vec!["1".into(), "3".into()])
            ]
        );
    }

    #[test]
    fn decimal_keeps_scale_and_rejects_bad_digits() {
        // DECIMAL(5,2) -1.50: groups [3 digits: 2 bytes][2 digits: 1 byte], complemented.
        let cols: &[(u8, &[u8])] = &[(NEWDECIMAL, &[5, 2])];
        let positive: [u8; 3] = [0x80, 0x01, 50];
        let negative: Vec<u8> = positive.iter().map(|b| !b).collect();
        let mut row = vec![0];
        row.extend_from_slice(&negative);
        assert_eq!(
            decode_one(cols, &[], &row).unwrap(),
            vec![Value::Decimal("-1.50".into())]
        );
        // A fraction group of 127 cannot be two digits (and would overflow mysql_common).
        let err = decode_one(cols, &[], &[0, 0x80, 0x01, 127]).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("db.t") && message.contains("@1") && message.contains("DECIMAL(5,2)"),
            "{message}"
        );
    }

    #[test]
    fn truncated_rows_are_errors_naming_the_column() {
        let cols: &[(u8, &[u8])] = &[(LONG, &[]), (VARCHAR, &[10, 0])];
        let err = decode_one(cols, &[4, 5, 2, b'i', b'd', 1, b'v'], &[0, 1, 0, 0, 0, 5, b'a']).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Column { column, column_type, .. } if column == "v" && column_type == "VARCHAR"),
            "{err}"
        );
    }

    #[test]
    fn deep_json_is_rejected_without_recursing() {
        // Small arrays nested `depth` deep: each is [count=1][size][entry: type 2, offset 7]
        // followed by the nested array; the innermost is empty.
        let nested = |depth: usize| {
            let mut array = vec![0, 0, 4, 0];
            for _ in 0..depth {
                let mut outer = vec![1, 0];
                outer.extend_from_slice(&((7 + array.len()) as u16).to_le_bytes());
                outer.extend_from_slice(&[0x02, 7, 0]);
                outer.extend_from_slice(&array);
                array = outer;
            }
            let mut doc = vec![0x02];
            doc.extend_from_slice(&array);
            doc
        };
        let ok = json_value(&nested(50)).unwrap();
        assert_eq!(ok.to_string(), format!("{}{}", "[".repeat(51), "]".repeat(51)));
        assert!(json_value(&nested(200)).is_err());
    }

    #[test]
    fn table_map_cache_reuses_identical_bytes() {
        let mut decoder = RowDecoder::new();
        let cols: &[(u8, &[u8])] = &[(LONG, &[])];
        let first = decoder.table_map(&table_map(cols, &[])).unwrap();
        let again = decoder.table_map(&table_map(cols, &[])).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let changed = decoder.table_map(&table_map(&[(LONGLONG, &[])], &[])).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        decoder.clear();
        assert!(matches!(
            decoder.rows(&write_rows(1, &[0, 1, 0, 0, 0])),
            Err(DecodeError::UnknownTable(7))
        ));
    }

    #[test]
    fn malformed_table_maps_are_errors() {
        let good = table_map(&[(LONG, &[]), (VARCHAR, &[10, 0])], &[]);
        let data = good.data();
        for len in 0..data.len() {
            let ev = event(EventType::TABLE_MAP_EVENT as u8, &data[..len]);
            // Truncations are errors or (when only optional metadata was cut) a schema.
            let _ = RowDecoder::new().table_map(&ev);
        }
        let unknown_type = table_map(&[(100, &[])], &[]);
        assert!(RowDecoder::new().table_map(&unknown_type).is_err());
        // COLUMN_CHARSET with two entries for one character column.
        let wrong_count = table_map(&[(VARCHAR, &[10, 0])], &[3, 2, 33, 33]);
        assert!(RowDecoder::new().table_map(&wrong_count).is_err());
    }

    #[test]
    fn primary_keys_and_names() {
        // SIMPLE_PRIMARY_KEY [1, 0], then COLUMN_NAME.
        let cols: &[(u8, &[u8])] = &[(LONG, &[]), (LONG, &[])];
        let optional = [8, 2, 1, 0, 4, 4, 1, b'a', 1, b'b'];
        let schema = RowDecoder::new().table_map(&table_map(cols, &optional)).unwrap();
        assert_eq!(schema.primary_key, vec![1, 0]);
        assert!(schema.has_full_metadata());
        assert_eq!(schema.column_index("b"), Some(1));
        // PRIMARY_KEY_WITH_PREFIX (index, prefix length) pairs; no names.
        let schema = RowDecoder::new().table_map(&table_map(cols, &[9, 2, 1, 10])).unwrap();
        assert_eq!(schema.primary_key, vec![1]);
        assert!(!schema.has_full_metadata());
        assert_eq!(schema.columns[1].name, "@2");
        // A key column beyond the table is malformed.
        assert!(RowDecoder::new().table_map(&table_map(cols, &[8, 1, 2])).is_err());
    }

    #[test]
    fn partial_update_rows_without_json_diff() {
        let cols: &[(u8, &[u8])] = &[(LONG, &[]), (JSON, &[4])];
        let mut decoder = RowDecoder::new();
        decoder.table_map(&table_map(cols, &[])).unwrap();
        // before: id 1, js NULL; after: value options 0, id 2, js NULL.
        let partial = |options: &[u8]| {
            let mut body = vec![7, 0, 0, 0, 0, 0, 1, 0, 2, 0, 2, 0b11, 0b11];
            body.extend_from_slice(&[0b10, 1, 0, 0, 0]);
            body.extend_from_slice(options);
            body.extend_from_slice(&[0b10, 2, 0, 0, 0]);
            event(EventType::PARTIAL_UPDATE_ROWS_EVENT as u8, &body)
        };
        let (_, rows) = decoder.rows(&partial(&[0])).unwrap();
        assert_eq!(
            rows,
            vec![RowImage::Update {
                before: vec![Value::Int(1), Value::Null],
                after: vec![Value::Int(2), Value::Null],
            }]
        );
        // PARTIAL_JSON_UPDATES with js's bit set: a JSON diff, which is not supported.
        let err = decoder.rows(&partial(&[1, 0b1])).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("`@2` (JSON)"), "{err}");
    }

    /// Every column type the decoder knows, with metadata, to feed random row bytes into.
    fn all_types() -> Vec<(u8, &'static [u8])> {
        vec![
            (TINY, &[]),
            (SHORT, &[]),
            (INT24, &[]),
            (LONG, &[]),
            (LONGLONG, &[]),
            (FLOAT, &[4]),
            (DOUBLE, &[8]),
            (NEWDECIMAL, &[10, 4]),
            (YEAR, &[]),
            (DATE, &[]),
            (TIME, &[]),
            (TIME2, &[3]),
            (DATETIME, &[]),
            (DATETIME2, &[6]),
            (TIMESTAMP, &[]),
            (TIMESTAMP2, &[2]),
            (VARCHAR, &[0x2c, 0x01]),
            (STRING, &[0xfe, 8]),
            (BLOB, &[2]),
            (JSON, &[4]),
            (STRING, &[ENUM, 1]),
            (STRING, &[SET, 1]),
            (BIT, &[2, 1]),
            (GEOMETRY, &[4]),
        ]
    }

    proptest! {
        // Failing cases are persisted by proptest under proptest-regressions/ and replayed first.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_row_bytes_never_panic(row in proptest::collection::vec(any::<u8>(), 0..400)) {
            let cols = all_types();
            let mut decoder = RowDecoder::new();
            decoder.table_map(&table_map(&cols, &[])).unwrap();
            let _ = decoder.rows(&write_rows(cols.len(), &row));
        }

        #[test]
        fn random_event_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), t in 0usize..4) {
            let event_type = [19u8, 30, 31, 39][t];
            let mut decoder = RowDecoder::new();
            decoder.table_map(&table_map(&all_types(), &[])).unwrap();
            let ev = event(event_type, &body);
            let _ = decoder.table_map(&ev);
            let _ = decoder.rows(&ev);
            let _ = decoder.rows_table(&ev);
        }

        #[test]
        fn decimals_render_as_mysql_common_does(
            precision in 1usize..=65,
            scale_pick in 0usize..=30,
            negative: bool,
            seeds in proptest::collection::vec(any::<u32>(), 16),
            zeros in 0usize..16,
        ) {
            let scale = scale_pick.min(precision);
            // Groups below 10^digits, the first `zeros` of them zero (leading-zero trimming).
            let mut bytes = Vec::new();
            for (k, digits) in decimal_groups(precision, scale).enumerate() {
                let value = if k < zeros { 0 } else { seeds[k % 16] % 10u32.pow(digits as u32) };
                let size = DECIMAL_GROUP_BYTES[digits];
                bytes.extend_from_slice(&value.to_be_bytes()[4 - size..]);
            }
            if negative {
                bytes.iter_mut().for_each(|b| *b = !*b);
            }
            bytes[0] ^= 0x80;
            let expected = mysql_common::binlog::decimal::Decimal::read_bin(&bytes[..], precision, scale, false)
                .unwrap()
                .to_string();
            prop_assert_eq!(decimal_string(&bytes, precision as u8, scale as u8).unwrap(), expected);
        }

        #[test]
        fn random_json_never_panics(doc in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = json_value(&doc);
        }
    }
}

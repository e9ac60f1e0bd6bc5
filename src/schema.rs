//! Table schemas as described by the binlog's TABLE_MAP events.
//!
//! Contract: a [`TableSchema`] describes the table exactly as it was when the rows event that
//! follows its TABLE_MAP was written, because it is built from that TABLE_MAP (with
//! `binlog_row_metadata=FULL` it carries column names, signedness, charsets, ENUM/SET members and
//! the primary key). This is why an `ALTER TABLE` mid-stream cannot mis-map columns: rows are
//! never decoded against a schema read from the live server at a different time.
//!
//! # How optional metadata is attributed to columns
//!
//! Most optional metadata fields are lists with one entry per column *of a class*, in column
//! order, and carry no column index. Attributing an entry to the wrong column would silently
//! mislabel data (a latin1 charset on a utf8mb4 column, UNSIGNED on the wrong integer), so
//! [`TableSchema::from_table_map`] uses the server's own class rules (MySQL `sql/log_event.cc`,
//! `Table_map_log_event::init_metadata_fields`) and rejects a TABLE_MAP whose lists do not have
//! exactly one entry per column of the class:
//!
//! * SIGNEDNESS: one bit (most significant first) per *numeric* column, judged by the binlog
//!   type byte: TINY, SHORT, INT24, LONG, LONGLONG, FLOAT, DOUBLE, DECIMAL, NEWDECIMAL. YEAR is
//!   not numeric here (its binlog type is YEAR).
//! * DEFAULT_CHARSET / COLUMN_CHARSET: *character* columns, judged by the real type: CHAR
//!   (STRING whose metadata says STRING), VAR_STRING, VARCHAR and BLOB (which includes TEXT).
//!   MySQL 9 also lists VECTOR columns (a blob field underneath; observed in its binlogs, where
//!   they carry the `binary` collation). ENUM and SET (STRING on the wire) are not character
//!   columns; JSON and GEOMETRY are not either, except that MariaDB counts GEOMETRY as a
//!   character column (its geometry field derives from its blob field), which is detected from
//!   the FORMAT_DESCRIPTION server version.
//!   DEFAULT_CHARSET's column indexes count character columns only.
//! * ENUM_AND_SET_DEFAULT_CHARSET / ENUM_AND_SET_COLUMN_CHARSET: ENUM and SET columns.
//! * ENUM_STR_VALUE / SET_STR_VALUE: ENUM columns, respectively SET columns.
//! * COLUMN_NAME: every column. SIMPLE_PRIMARY_KEY / PRIMARY_KEY_WITH_PREFIX: column indexes.
//!
//! Without optional metadata (MySQL 5.7, MariaDB with `binlog_row_metadata=NO_LOG`) names are
//! `@N`, integers are taken as signed, charsets are unknown (`None`) and ENUM/SET members are
//! unknown; [`TableSchema::has_full_metadata`] tells the two cases apart.

use mysql_common::binlog::consts::EventType;
use mysql_common::binlog::events::Event;
use mysql_common::constants::ColumnType;

use crate::decode::{Cursor, DecodeError};

/// A table's layout at one point of the binlog.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub database: String,
    pub table: String,
    pub columns: Vec<ColumnSchema>,
    /// Positions (into `columns`) of the primary key columns, in key order; empty when the
    /// server sent no primary key metadata.
    pub primary_key: Vec<usize>,
    /// `database.table`, built once: it is looked up for every row.
    qualified: std::sync::Arc<str>,
}

impl TableSchema {
    pub fn new(database: String, table: String, columns: Vec<ColumnSchema>, primary_key: Vec<usize>) -> Self {
        let qualified = std::sync::Arc::from(format!("{database}.{table}"));
        TableSchema {
            database,
            table,
            columns,
            primary_key,
            qualified,
        }
    }

    /// `database.table`, the name mappings match against.
    pub fn qualified_name(&self) -> &str {
        &self.qualified
    }

    /// The same, shared (documents and dead letters keep it without copying).
    pub fn qualified_arc(&self) -> std::sync::Arc<str> {
        self.qualified.clone()
    }

    /// Position of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// True when the TABLE_MAP carried real column names (`binlog_row_metadata=FULL`), i.e. no
    /// column has the placeholder name `@N` at position N (1-based). A real column literally
    /// named `@3` in third position would be mistaken for a placeholder; MySQL allows that name
    /// but nobody uses it.
    pub fn has_full_metadata(&self) -> bool {
        self.columns
            .iter()
            .enumerate()
            .all(|(i, c)| !is_placeholder_name(&c.name, i))
    }

    /// Builds the schema described by a TABLE_MAP event.
    ///
    /// Fails on truncated or inconsistent events and on column types whose metadata length is
    /// unknown (the metadata of every later column could not be located).
    pub fn from_table_map(event: &Event) -> Result<TableSchema, DecodeError> {
        let header_len = event.fde().get_event_type_header_length(EventType::TABLE_MAP_EVENT);
        // MariaDB's geometry field is a blob field, so MariaDB lists GEOMETRY columns among
        // the character columns of DEFAULT_CHARSET / COLUMN_CHARSET.
        let geometry_is_character = event.fde().server_version().contains("MariaDB");
        parse_table_map(event.data(), header_len, geometry_is_character)
    }
}

/// One column's decode metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSchema {
    /// Column name; `@N` (1-based) when the binlog carries no names.
    pub name: String,
    /// Binlog column type byte (`MYSQL_TYPE_*`), with ENUM/SET resolved from the STRING real type.
    pub column_type: u8,
    /// Type metadata bytes from the TABLE_MAP.
    pub meta: Vec<u8>,
    pub unsigned: bool,
    pub nullable: bool,
    /// Collation id for character, ENUM and SET columns.
    pub charset: Option<u16>,
    /// ENUM or SET member names.
    pub members: Vec<String>,
}

impl ColumnSchema {
    /// SQL-like type name for messages, e.g. `DATETIME(3)`, `DECIMAL(30,10)`, `VARCHAR`.
    pub fn type_name(&self) -> String {
        let m0 = self.meta.first().copied().unwrap_or(0);
        let m1 = self.meta.get(1).copied().unwrap_or(0);
        let unsigned = if self.unsigned { " UNSIGNED" } else { "" };
        match self.column_type {
            TINY => format!("TINYINT{unsigned}"),
            SHORT => format!("SMALLINT{unsigned}"),
            INT24 => format!("MEDIUMINT{unsigned}"),
            LONG => format!("INT{unsigned}"),
            LONGLONG => format!("BIGINT{unsigned}"),
            FLOAT => "FLOAT".into(),
            DOUBLE => "DOUBLE".into(),
            OLD_DECIMAL => "DECIMAL (pre-5.0)".into(),
            NEWDECIMAL => format!("DECIMAL({m0},{m1})"),
            YEAR => "YEAR".into(),
            DATE | NEWDATE => "DATE".into(),
            TIME => "TIME (pre-5.6)".into(),
            TIME2 => format!("TIME({m0})"),
            DATETIME => "DATETIME (pre-5.6)".into(),
            DATETIME2 => format!("DATETIME({m0})"),
            TIMESTAMP => "TIMESTAMP (pre-5.6)".into(),
            TIMESTAMP2 => format!("TIMESTAMP({m0})"),
            VARCHAR | VAR_STRING if self.charset == Some(BINARY_COLLATION) => "VARBINARY".into(),
            VARCHAR | VAR_STRING => "VARCHAR".into(),
            STRING if self.charset == Some(BINARY_COLLATION) => "BINARY".into(),
            STRING => "CHAR".into(),
            TINY_BLOB..=BLOB if self.charset == Some(BINARY_COLLATION) => "BLOB".into(),
            TINY_BLOB..=BLOB if self.charset.is_some() => "TEXT".into(),
            TINY_BLOB..=BLOB => "BLOB/TEXT".into(),
            JSON => "JSON".into(),
            ENUM => "ENUM".into(),
            SET => "SET".into(),
            BIT => format!("BIT({})", u16::from(m1) * 8 + u16::from(m0)),
            GEOMETRY => "GEOMETRY".into(),
            VECTOR => "VECTOR".into(),
            NULL => "NULL".into(),
            TYPED_ARRAY => "TYPED_ARRAY".into(),
            other => format!("type {other}"),
        }
    }
}

/// Collation id of the `binary` character set.
pub(crate) const BINARY_COLLATION: u16 = 63;

// Binlog column type bytes, spelled once from mysql_common's definitions.
pub(crate) const OLD_DECIMAL: u8 = ColumnType::MYSQL_TYPE_DECIMAL as u8;
pub(crate) const TINY: u8 = ColumnType::MYSQL_TYPE_TINY as u8;
pub(crate) const SHORT: u8 = ColumnType::MYSQL_TYPE_SHORT as u8;
pub(crate) const LONG: u8 = ColumnType::MYSQL_TYPE_LONG as u8;
pub(crate) const FLOAT: u8 = ColumnType::MYSQL_TYPE_FLOAT as u8;
pub(crate) const DOUBLE: u8 = ColumnType::MYSQL_TYPE_DOUBLE as u8;
pub(crate) const NULL: u8 = ColumnType::MYSQL_TYPE_NULL as u8;
pub(crate) const TIMESTAMP: u8 = ColumnType::MYSQL_TYPE_TIMESTAMP as u8;
pub(crate) const LONGLONG: u8 = ColumnType::MYSQL_TYPE_LONGLONG as u8;
pub(crate) const INT24: u8 = ColumnType::MYSQL_TYPE_INT24 as u8;
pub(crate) const DATE: u8 = ColumnType::MYSQL_TYPE_DATE as u8;
pub(crate) const TIME: u8 = ColumnType::MYSQL_TYPE_TIME as u8;
pub(crate) const DATETIME: u8 = ColumnType::MYSQL_TYPE_DATETIME as u8;
pub(crate) const YEAR: u8 = ColumnType::MYSQL_TYPE_YEAR as u8;
pub(crate) const NEWDATE: u8 = ColumnType::MYSQL_TYPE_NEWDATE as u8;
pub(crate) const VARCHAR: u8 = ColumnType::MYSQL_TYPE_VARCHAR as u8;
pub(crate) const BIT: u8 = ColumnType::MYSQL_TYPE_BIT as u8;
pub(crate) const TIMESTAMP2: u8 = ColumnType::MYSQL_TYPE_TIMESTAMP2 as u8;
pub(crate) const DATETIME2: u8 = ColumnType::MYSQL_TYPE_DATETIME2 as u8;
pub(crate) const TIME2: u8 = ColumnType::MYSQL_TYPE_TIME2 as u8;
pub(crate) const TYPED_ARRAY: u8 = ColumnType::MYSQL_TYPE_TYPED_ARRAY as u8;
pub(crate) const VECTOR: u8 = ColumnType::MYSQL_TYPE_VECTOR as u8;
pub(crate) const JSON: u8 = ColumnType::MYSQL_TYPE_JSON as u8;
pub(crate) const NEWDECIMAL: u8 = ColumnType::MYSQL_TYPE_NEWDECIMAL as u8;
pub(crate) const ENUM: u8 = ColumnType::MYSQL_TYPE_ENUM as u8;
pub(crate) const SET: u8 = ColumnType::MYSQL_TYPE_SET as u8;
pub(crate) const TINY_BLOB: u8 = ColumnType::MYSQL_TYPE_TINY_BLOB as u8;
pub(crate) const BLOB: u8 = ColumnType::MYSQL_TYPE_BLOB as u8;
pub(crate) const VAR_STRING: u8 = ColumnType::MYSQL_TYPE_VAR_STRING as u8;
pub(crate) const STRING: u8 = ColumnType::MYSQL_TYPE_STRING as u8;
pub(crate) const GEOMETRY: u8 = ColumnType::MYSQL_TYPE_GEOMETRY as u8;

// Optional metadata field types (`Table_map_log_event::Optional_metadata_field_type`).
const SIGNEDNESS: u8 = 1;
const DEFAULT_CHARSET: u8 = 2;
const COLUMN_CHARSET: u8 = 3;
const COLUMN_NAME: u8 = 4;
const SET_STR_VALUE: u8 = 5;
const ENUM_STR_VALUE: u8 = 6;
const SIMPLE_PRIMARY_KEY: u8 = 8;
const PRIMARY_KEY_WITH_PREFIX: u8 = 9;
const ENUM_AND_SET_DEFAULT_CHARSET: u8 = 10;
const ENUM_AND_SET_COLUMN_CHARSET: u8 = 11;

fn is_placeholder_name(name: &str, index: usize) -> bool {
    name.strip_prefix('@')
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n == index + 1)
}

/// Number of TABLE_MAP metadata bytes a column of binlog type `t` takes (`rest` starts at the
/// column's metadata: TYPED_ARRAY nests the element type there). `None` for unknown types.
fn metadata_len(t: u8, rest: &[u8], in_typed_array: bool) -> Option<usize> {
    Some(match t {
        TINY_BLOB..=BLOB | DOUBLE | FLOAT | GEOMETRY | TIME2 | DATETIME2 | TIMESTAMP2 | JSON | VECTOR => 1,
        // A VARCHAR element of a typed array carries a 3-byte length.
        VARCHAR if in_typed_array => 3,
        VARCHAR | NEWDECIMAL | SET | ENUM | STRING | BIT => 2,
        OLD_DECIMAL | TINY | SHORT | LONG | NULL | TIMESTAMP | LONGLONG | INT24 | DATE | TIME | DATETIME | YEAR
        | NEWDATE | VAR_STRING => 0,
        TYPED_ARRAY if !in_typed_array => {
            let (&element, rest) = rest.split_first()?;
            1 + metadata_len(element, rest, true)?
        }
        _ => return None,
    })
}

/// Which optional-metadata lists a column belongs to.
fn is_numeric(binlog_type: u8) -> bool {
    matches!(
        binlog_type,
        TINY | SHORT | INT24 | LONG | LONGLONG | FLOAT | DOUBLE | OLD_DECIMAL | NEWDECIMAL
    )
}

fn is_character(real_type: u8, geometry_is_character: bool) -> bool {
    matches!(real_type, STRING | VAR_STRING | VARCHAR | BLOB | VECTOR)
        || (geometry_is_character && real_type == GEOMETRY)
}

/// Parses the TABLE_MAP body (`data` is the event data without header and checksum).
fn parse_table_map(data: &[u8], header_len: u8, geometry_is_character: bool) -> Result<TableSchema, DecodeError> {
    let mut cur = Cursor::new(data);
    let mut table_name = String::from("?");
    let fail = |table: &str, reason: String| DecodeError::TableMap {
        table: table.to_string(),
        reason,
    };
    let truncated = |table: &str, what: &str| fail(table, format!("truncated at {what}"));

    // A 6-byte post-header means a pre-5.1.4 server with 4-byte table ids.
    let table_id_len = if header_len == 6 { 4 } else { 6 };
    cur.take(table_id_len + 2)
        .map_err(|_| truncated(&table_name, "post-header"))?;
    let database = read_name(&mut cur).map_err(|_| truncated(&table_name, "database name"))?;
    let table = read_name(&mut cur).map_err(|_| truncated(&database, "table name"))?;
    table_name = format!("{database}.{table}");

    let column_count = cur.lenenc().map_err(|_| truncated(&table_name, "column count"))?;
    // Every column has a type byte, so a count beyond the event size is malformed (and must
    // not drive an allocation).
    if column_count > cur.remaining() as u64 {
        return Err(fail(
            &table_name,
            format!("column count {column_count} exceeds the event size"),
        ));
    }
    let n = column_count as usize;
    let types = cur.take(n).map_err(|_| truncated(&table_name, "column types"))?;
    let meta_block_len = cur.lenenc().map_err(|_| truncated(&table_name, "metadata length"))?;
    let meta_block = cur
        .take(usize::try_from(meta_block_len).unwrap_or(usize::MAX))
        .map_err(|_| truncated(&table_name, "column metadata"))?;
    let null_bits = cur
        .take(n.div_ceil(8))
        .map_err(|_| truncated(&table_name, "NULL bitmap"))?;
    let optional = cur.rest();

    let mut columns = Vec::with_capacity(n);
    let mut meta_cur = Cursor::new(meta_block);
    for (i, &binlog_type) in types.iter().enumerate() {
        let len = metadata_len(binlog_type, meta_cur.peek_rest(), false)
            .ok_or_else(|| fail(&table_name, format!("column @{} has unknown type {binlog_type}", i + 1)))?;
        let meta = meta_cur
            .take(len)
            .map_err(|_| fail(&table_name, format!("metadata block too short at column @{}", i + 1)))?;
        let column_type = resolve_type(binlog_type, meta)
            .map_err(|reason| fail(&table_name, format!("column @{}: {reason}", i + 1)))?;
        columns.push(ColumnSchema {
            name: format!("@{}", i + 1),
            column_type,
            meta: meta.to_vec(),
            unsigned: false,
            nullable: null_bits[i / 8] & (1 << (i % 8)) != 0,
            charset: None,
            members: Vec::new(),
        });
    }
    if !meta_cur.is_empty() {
        return Err(fail(
            &table_name,
            format!("{} unused metadata bytes", meta_cur.remaining()),
        ));
    }

    let mut schema = TableSchema::new(database, table, columns, Vec::new());
    apply_optional_metadata(&mut schema, types, optional, geometry_is_character)
        .map_err(|reason| fail(&table_name, reason))?;
    Ok(schema)
}

fn read_name(cur: &mut Cursor<'_>) -> Result<String, crate::decode::Fault> {
    let len = cur.u8()?;
    let name = cur.take(usize::from(len))?;
    cur.take(1)?; // NUL terminator
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// Resolves the real type of a STRING column (CHAR, ENUM or SET) from its metadata.
fn resolve_type(binlog_type: u8, meta: &[u8]) -> Result<u8, String> {
    if binlog_type != STRING {
        return Ok(binlog_type);
    }
    // meta[0] is the real type with bits 4-5 flipped to carry bits 8-9 of a long CHAR's length.
    match meta[0] {
        0 => Ok(STRING),
        m => match m | 0x30 {
            ENUM => Ok(ENUM),
            SET => Ok(SET),
            STRING | VAR_STRING => Ok(STRING),
            other => Err(format!("STRING column with unexpected real type {other}")),
        },
    }
}

/// Optional metadata fields of one TABLE_MAP (each the raw TLV value).
#[derive(Default)]
struct OptionalFields<'a> {
    signedness: Option<&'a [u8]>,
    default_charset: Option<&'a [u8]>,
    column_charset: Option<&'a [u8]>,
    column_name: Option<&'a [u8]>,
    set_str_value: Option<&'a [u8]>,
    enum_str_value: Option<&'a [u8]>,
    simple_primary_key: Option<&'a [u8]>,
    primary_key_with_prefix: Option<&'a [u8]>,
    enum_and_set_default_charset: Option<&'a [u8]>,
    enum_and_set_column_charset: Option<&'a [u8]>,
}

fn apply_optional_metadata(
    schema: &mut TableSchema,
    binlog_types: &[u8],
    optional: &[u8],
    geometry_is_character: bool,
) -> Result<(), String> {
    let mut fields = OptionalFields::default();
    let mut cur = Cursor::new(optional);
    while !cur.is_empty() {
        let truncated = |_| "optional metadata truncated".to_string();
        let field_type = cur.u8().map_err(truncated)?;
        let len = cur.lenenc().map_err(truncated)?;
        let value = cur
            .take(usize::try_from(len).unwrap_or(usize::MAX))
            .map_err(truncated)?;
        let slot = match field_type {
            SIGNEDNESS => &mut fields.signedness,
            DEFAULT_CHARSET => &mut fields.default_charset,
            COLUMN_CHARSET => &mut fields.column_charset,
            COLUMN_NAME => &mut fields.column_name,
            SET_STR_VALUE => &mut fields.set_str_value,
            ENUM_STR_VALUE => &mut fields.enum_str_value,
            SIMPLE_PRIMARY_KEY => &mut fields.simple_primary_key,
            PRIMARY_KEY_WITH_PREFIX => &mut fields.primary_key_with_prefix,
            ENUM_AND_SET_DEFAULT_CHARSET => &mut fields.enum_and_set_default_charset,
            ENUM_AND_SET_COLUMN_CHARSET => &mut fields.enum_and_set_column_charset,
            // GEOMETRY_TYPE, COLUMN_VISIBILITY, VECTOR_DIMENSIONALITY and future fields do not
            // affect decoding; skipping unknown TLVs is what the format is designed for.
            _ => continue,
        };
        *slot = Some(value);
    }

    let columns = &mut schema.columns;
    let numeric: Vec<usize> = (0..columns.len()).filter(|&i| is_numeric(binlog_types[i])).collect();
    let character: Vec<usize> = (0..columns.len())
        .filter(|&i| is_character(columns[i].column_type, geometry_is_character))
        .collect();
    let enum_or_set: Vec<usize> = (0..columns.len())
        .filter(|&i| matches!(columns[i].column_type, ENUM | SET))
        .collect();

    if let Some(bits) = fields.signedness {
        if bits.len() != numeric.len().div_ceil(8) {
            return Err(format!(
                "SIGNEDNESS has {} bytes for {} numeric columns",
                bits.len(),
                numeric.len()
            ));
        }
        for (k, &i) in numeric.iter().enumerate() {
            columns[i].unsigned = bits[k / 8] & (0x80 >> (k % 8)) != 0;
        }
    }

    let charsets = class_charsets(
        character.len(),
        fields.default_charset,
        fields.column_charset,
        "character",
    )?;
    for (&i, charset) in character.iter().zip(charsets) {
        columns[i].charset = charset;
    }
    let charsets = class_charsets(
        enum_or_set.len(),
        fields.enum_and_set_default_charset,
        fields.enum_and_set_column_charset,
        "ENUM/SET",
    )?;
    for (&i, charset) in enum_or_set.iter().zip(charsets) {
        columns[i].charset = charset;
    }

    for (kind, field) in [(ENUM, fields.enum_str_value), (SET, fields.set_str_value)] {
        let Some(value) = field else { continue };
        let targets: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].column_type == kind).collect();
        let mut cur = Cursor::new(value);
        for &i in &targets {
            columns[i].members = read_members(&mut cur)
                .ok_or_else(|| format!("member list of column {} is malformed", columns[i].name))?;
        }
        if !cur.is_empty() {
            return Err(format!(
                "{} members listed for more than {} columns",
                if kind == ENUM { "ENUM" } else { "SET" },
                targets.len()
            ));
        }
    }

    if let Some(value) = fields.column_name {
        let mut cur = Cursor::new(value);
        let mut names = Vec::with_capacity(columns.len());
        while !cur.is_empty() {
            let name = cur.lenenc_bytes().map_err(|_| "COLUMN_NAME is malformed".to_string())?;
            names.push(String::from_utf8_lossy(name).into_owned());
        }
        if names.len() != columns.len() {
            return Err(format!(
                "COLUMN_NAME has {} names for {} columns",
                names.len(),
                columns.len()
            ));
        }
        for (column, name) in columns.iter_mut().zip(names) {
            column.name = name;
        }
    }

    let mut primary_key = Vec::new();
    for (field, with_prefix) in [
        (fields.simple_primary_key, false),
        (fields.primary_key_with_prefix, true),
    ] {
        let Some(value) = field else { continue };
        let mut cur = Cursor::new(value);
        while !cur.is_empty() {
            let malformed = |_| "primary key metadata is malformed".to_string();
            let index = cur.lenenc().map_err(malformed)?;
            if with_prefix {
                cur.lenenc().map_err(malformed)?; // prefix length; the whole column is the key
            }
            match usize::try_from(index) {
                Ok(index) if index < columns.len() => primary_key.push(index),
                _ => return Err(format!("primary key column index {index} out of range")),
            }
        }
    }
    schema.primary_key = primary_key;
    Ok(())
}

/// Charsets of the `count` columns of one class, from the DEFAULT_CHARSET-style field (default
/// plus `(index within class, collation)` exceptions) or the COLUMN_CHARSET-style field (one
/// collation per column). `None`s when the server sent neither.
fn class_charsets(
    count: usize,
    with_default: Option<&[u8]>,
    per_column: Option<&[u8]>,
    class: &str,
) -> Result<Vec<Option<u16>>, String> {
    let mut charsets = vec![None; count];
    let malformed = |_| format!("{class} charset metadata is malformed");
    if let Some(value) = with_default {
        let mut cur = Cursor::new(value);
        let default = collation(cur.lenenc().map_err(malformed)?)?;
        charsets.iter_mut().for_each(|c| *c = Some(default));
        while !cur.is_empty() {
            let index = cur.lenenc().map_err(malformed)?;
            let charset = collation(cur.lenenc().map_err(malformed)?)?;
            let slot = usize::try_from(index)
                .ok()
                .and_then(|i| charsets.get_mut(i))
                .ok_or_else(|| format!("{class} charset index {index} but only {count} {class} columns"))?;
            *slot = Some(charset);
        }
    }
    if let Some(value) = per_column {
        let mut cur = Cursor::new(value);
        let mut listed = 0;
        while !cur.is_empty() {
            let charset = collation(cur.lenenc().map_err(malformed)?)?;
            if let Some(slot) = charsets.get_mut(listed) {
                *slot = Some(charset);
            }
            listed += 1;
        }
        if listed != count {
            return Err(format!(
                "{listed} {class} column charsets listed for {count} {class} columns"
            ));
        }
    }
    Ok(charsets)
}

fn collation(id: u64) -> Result<u16, String> {
    u16::try_from(id).map_err(|_| format!("collation id {id} out of range"))
}

fn read_members(cur: &mut Cursor<'_>) -> Option<Vec<String>> {
    let count = cur.lenenc().ok()?;
    // Each member takes at least its length byte: a larger count is malformed.
    if count > cur.remaining() as u64 {
        return None;
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = cur.lenenc_bytes().ok()?;
        members.push(String::from_utf8_lossy(name).into_owned());
    }
    Some(members)
}

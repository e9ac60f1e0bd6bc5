//! Row change → document operations, as pure functions of the change and the mapping.
//!
//! Contract: [`Mapping::apply`] turns one [`RowChange`] into the [`DocOp`]s that make the index
//! reflect the row's new state: an insert or update writes the whole document (`index`), a
//! delete removes it, and an update that changes the primary key deletes the old `_id` and
//! writes the new one. Every op keeps the change's version, so applying the ops of a replayed
//! change again is harmless. A change that cannot be rendered exactly (unknown charset, invalid
//! JSON text, a partial row image) yields a [`TransformError`], which the pipeline dead-letters:
//! it is never indexed approximately.
//!
//! Rendering: DECIMAL as an exact string; DATETIME in the configured source zone as ISO-8601
//! with offset (the fraction keeps the column's precision); TIMESTAMP as the same instant shown
//! in that zone; zero dates as `null`; TIME as `[-]HH:MM:SS[.ffffff]`; binary data as base64;
//! SET as an array of member names; BIT as an unsigned number.

use std::sync::Arc;

use base64::Engine;
use chrono::{Datelike, FixedOffset, NaiveDate, TimeZone, Timelike};
use regex::Regex;
use serde_json::{Map, Number, Value as Json};

use crate::change::{DocAction, DocOp, RowChange, RowOp};
use crate::config::TableMapping;
use crate::mask::{Masker, PhoneColumns, Rules, ScanColumns};
use crate::schema::TableSchema;
use crate::tokenize::{PinyinFields, TokenFields, Tokenizer};
use crate::value::{push_padded, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TransformError {
    #[error("column `{column}`: unsupported character set id {charset}")]
    Charset { column: String, charset: u16 },
    #[error("column `{column}`: text is not valid in its character set {charset}")]
    Encoding { column: String, charset: u16 },
    #[error("column `{column}` is configured as JSON but holds invalid JSON: {reason}")]
    Json { column: String, reason: String },
    #[error("column `{column}` is missing from the row image (the writing session used binlog_row_image other than FULL); repair this row with a consistency check")]
    PartialImage { column: String },
    #[error("table {table} has no primary key in the binlog metadata; set `id_columns` for it")]
    NoKey { table: String },
    #[error("id column `{column}` does not exist in table {table}")]
    UnknownIdColumn { table: String, column: String },
    #[error("id column `{column}` is NULL")]
    NullKey { column: String },
}

/// A hook for per-field rewriting (masking and tokenizing plug in here). It sees the rendered
/// document and may change, add or remove fields.
pub trait FieldTransform: Send + Sync {
    fn apply(&self, doc: &mut Map<String, Json>) -> Result<(), TransformError>;
}

/// Parses text columns that hold JSON (MariaDB stores JSON as LONGTEXT) into JSON values.
struct ParseJson {
    fields: Vec<String>,
}

impl FieldTransform for ParseJson {
    fn apply(&self, doc: &mut Map<String, Json>) -> Result<(), TransformError> {
        for f in &self.fields {
            // Replaced in place: no new key, no second lookup.
            let Some(value) = doc.get_mut(f) else {
                continue;
            };
            if let Json::String(s) = value {
                let parsed = serde_json::from_str(s).map_err(|e| TransformError::Json {
                    column: f.clone(),
                    reason: e.to_string(),
                })?;
                *value = parsed;
            }
        }
        Ok(())
    }
}

/// Name of the field listing the fields a document had cut or dropped for size.
pub const OVERSIZED_FIELD: &str = "oversized_fields";

/// Bounds every top-level field (e.g. a 12 MB base64 image pasted into a description): text
/// longer than `max_bytes` is cut at a character boundary, other values (JSON objects, arrays)
/// that serialize longer are dropped; either way the field is named in [`OVERSIZED_FIELD`], so
/// the document stays searchable and the cut is visible, and the stream never stops for it.
struct SizeLimit {
    max_bytes: usize,
    action: crate::config::Oversize,
}

impl FieldTransform for SizeLimit {
    fn apply(&self, doc: &mut Map<String, Json>) -> Result<(), TransformError> {
        let mut cut = Vec::new();
        for (name, value) in doc.iter_mut() {
            let too_big = match value {
                Json::String(s) => s.len() > self.max_bytes,
                Json::Array(_) | Json::Object(_) => {
                    serde_json::to_string(value).map_or(true, |t| t.len() > self.max_bytes)
                }
                _ => false,
            };
            if !too_big {
                continue;
            }
            match (value, self.action) {
                (Json::String(s), crate::config::Oversize::Truncate) => {
                    let mut end = self.max_bytes;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.truncate(end);
                }
                (v, _) => *v = Json::Null,
            }
            cut.push(Json::String(name.clone()));
        }
        if !cut.is_empty() {
            doc.insert(OVERSIZED_FIELD.into(), Json::Array(cut));
        }
        Ok(())
    }
}

/// A table mapping compiled for the hot path.
pub struct Mapping {
    pub index: Arc<str>,
    source: Regex,
    id_columns: Vec<String>,
    include: Vec<String>,
    exclude: Vec<String>,
    rename: std::collections::BTreeMap<String, String>,
    transforms: Vec<Box<dyn FieldTransform>>,
    zone: FixedOffset,
}

impl Mapping {
    /// Compiles a table mapping. Transforms run in this order: JSON columns are parsed, then
    /// phone columns and free text are masked, and only then are tokens and pinyin made, so
    /// derived fields never see a plaintext number. `tokenizer` must be given when the table
    /// has `token_fields` (see [`needs_tokenizer`]).
    pub fn new(cfg: &TableMapping, zone: FixedOffset, tokenizer: Option<&Arc<Tokenizer>>) -> Self {
        let mut transforms: Vec<Box<dyn FieldTransform>> = Vec::new();
        let field = |c: &String| cfg.rename.get(c).unwrap_or(c).clone();
        if !cfg.json_columns.is_empty() {
            let fields = cfg.json_columns.iter().map(field).collect();
            transforms.push(Box::new(ParseJson { fields }));
        }
        if !cfg.phone_columns.is_empty() {
            transforms.push(Box::new(PhoneColumns {
                fields: cfg.phone_columns.iter().map(field).collect(),
                key: cfg
                    .phone_hash_key
                    .clone()
                    .expect("Config::parse reads the key of every table with phone columns"),
            }));
        }
        if !cfg.scan_columns.is_empty() {
            transforms.push(Box::new(ScanColumns {
                fields: cfg.scan_columns.iter().map(field).collect(),
                masker: Masker::new(Rules {
                    landlines: cfg.mask_landlines,
                    id_numbers: cfg.mask_id_numbers,
                    emails: cfg.mask_emails,
                }),
            }));
        }
        if !cfg.token_fields.is_empty() {
            let tokenizer = tokenizer
                .expect("a tokenizer is built when a table has token_fields")
                .clone();
            let paths: Vec<String> = cfg.token_fields.iter().map(field).collect();
            transforms.push(Box::new(TokenFields::new(tokenizer, &paths)));
        }
        if !cfg.pinyin_fields.is_empty() {
            transforms.push(Box::new(PinyinFields {
                fields: cfg.pinyin_fields.iter().map(field).collect(),
            }));
        }
        // Last, so it also bounds fields the transforms above derived from large text.
        transforms.push(Box::new(SizeLimit {
            max_bytes: cfg.max_field_bytes,
            action: cfg.oversize,
        }));
        Mapping {
            index: Arc::from(cfg.index.as_str()),
            source: Regex::new(&format!("^(?:{})$", cfg.source)).expect("validated"),
            id_columns: cfg.id_columns.clone(),
            include: cfg.include.clone(),
            exclude: cfg.exclude.clone(),
            rename: cfg.rename.clone(),
            transforms,
            zone,
        }
    }

    /// Whether this mapping covers `database.table`.
    pub fn matches(&self, qualified_table: &str) -> bool {
        self.source.is_match(qualified_table)
    }

    /// Adds a per-field transform (applied in the order added).
    pub fn with_transform(mut self, t: Box<dyn FieldTransform>) -> Self {
        self.transforms.push(t);
        self
    }

    /// The document operations for one change.
    pub fn apply(&self, change: &RowChange) -> Result<Vec<DocOp>, TransformError> {
        let table = &change.table;
        let table_name = table.qualified_arc();
        let op = |id: String, action: DocAction| DocOp {
            index: self.index.clone(),
            id,
            version: change.version,
            action,
            table: table_name.clone(),
            op: change.op,
        };
        match change.op {
            RowOp::Insert => {
                let after = change.after.as_deref().unwrap_or_default();
                Ok(vec![op(
                    self.doc_id(table, after)?,
                    DocAction::Index(self.render(table, after)?),
                )])
            }
            RowOp::Delete => {
                let before = change.before.as_deref().unwrap_or_default();
                Ok(vec![op(self.doc_id(table, before)?, DocAction::Delete)])
            }
            RowOp::Update => {
                let before = change.before.as_deref().unwrap_or_default();
                let after = change.after.as_deref().unwrap_or_default();
                let new_id = self.doc_id(table, after)?;
                let doc = DocAction::Index(self.render(table, after)?);
                let old_id = self.doc_id(table, before)?;
                if old_id == new_id {
                    Ok(vec![op(new_id, doc)])
                } else {
                    Ok(vec![op(old_id, DocAction::Delete), op(new_id, doc)])
                }
            }
        }
    }

    /// `_id` of a row: the key columns' values joined with `:` (`\` and `:` escaped).
    pub fn doc_id(&self, table: &TableSchema, row: &[Value]) -> Result<String, TransformError> {
        let positions: Vec<usize> = if self.id_columns.is_empty() {
            if table.primary_key.is_empty() {
                return Err(TransformError::NoKey {
                    table: table.qualified_name().to_string(),
                });
            }
            table.primary_key.clone()
        } else {
            self.id_columns
                .iter()
                .map(|c| {
                    table.column_index(c).ok_or_else(|| TransformError::UnknownIdColumn {
                        table: table.qualified_name().to_string(),
                        column: c.clone(),
                    })
                })
                .collect::<Result<_, _>>()?
        };
        let mut id = String::new();
        for (n, &i) in positions.iter().enumerate() {
            let column = &table.columns[i].name;
            let part = match row.get(i) {
                Some(Value::Null) => return Err(TransformError::NullKey { column: column.clone() }),
                Some(Value::Absent) | None => return Err(TransformError::PartialImage { column: column.clone() }),
                Some(v) => match render_value(v, column, self.zone)? {
                    Json::String(s) => s,
                    other => other.to_string(),
                },
            };
            if n > 0 {
                id.push(':');
            }
            if positions.len() == 1 {
                id.push_str(&part);
            } else {
                id.push_str(&part.replace('\\', "\\\\").replace(':', "\\:"));
            }
        }
        Ok(id)
    }

    /// The JSON document for a row image.
    pub fn render(&self, table: &TableSchema, row: &[Value]) -> Result<String, TransformError> {
        let mut doc = Map::with_capacity(table.columns.len());
        for (col, value) in table.columns.iter().zip(row) {
            if !self.include.is_empty() && !self.include.contains(&col.name) {
                continue;
            }
            if self.exclude.contains(&col.name) {
                continue;
            }
            if matches!(value, Value::Absent) {
                return Err(TransformError::PartialImage {
                    column: col.name.clone(),
                });
            }
            let field = self.rename.get(&col.name).unwrap_or(&col.name);
            doc.insert(field.clone(), render_value(value, &col.name, self.zone)?);
        }
        for t in &self.transforms {
            t.apply(&mut doc)?;
        }
        // The serializer writes into a Vec directly (Display goes through fmt::Write, ~2× slower).
        Ok(serde_json::to_string(&doc).expect("a JSON map always serializes"))
    }
}

/// Whether any table needs the (expensive to build) jieba [`Tokenizer`].
pub fn needs_tokenizer(tables: &[TableMapping]) -> bool {
    tables.iter().any(|t| !t.token_fields.is_empty())
}

/// Picks the mapping for a table (the first whose `source` regex matches), cached per table.
/// Clones share the compiled mappings.
#[derive(Clone)]
pub struct Router {
    mappings: Arc<[Mapping]>,
    cache: std::collections::HashMap<Arc<str>, Option<usize>>,
}

impl Router {
    pub fn new(mappings: Vec<Mapping>) -> Self {
        Router {
            mappings: mappings.into(),
            cache: Default::default(),
        }
    }

    /// A predicate telling whether any mapping covers `database.table` (for the source, which
    /// skips decoding rows of other tables).
    pub fn table_filter(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let regexes: Vec<Regex> = self.mappings.iter().map(|m| m.source.clone()).collect();
        move |name| regexes.iter().any(|r| r.is_match(name))
    }

    pub fn route(&mut self, table: &TableSchema) -> Option<&Mapping> {
        self.route_index(table).map(|i| &self.mappings[i])
    }

    /// Like [`Router::route`], as an index into [`Router::mappings`] (for parallel workers,
    /// which share the mappings but not the cache).
    pub fn route_index(&mut self, table: &TableSchema) -> Option<usize> {
        match self.cache.get(table.qualified_name()) {
            Some(idx) => *idx,
            None => {
                let idx = self.mappings.iter().position(|m| m.matches(table.qualified_name()));
                self.cache.insert(table.qualified_arc(), idx);
                idx
            }
        }
    }

    /// The mappings, shareable across threads.
    pub fn mappings(&self) -> Arc<[Mapping]> {
        Arc::clone(&self.mappings)
    }
}

/// Renders one value as JSON (see the module doc for the rules).
pub fn render_value(value: &Value, column: &str, zone: FixedOffset) -> Result<Json, TransformError> {
    Ok(match value {
        Value::Null | Value::Absent => Json::Null,
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        // Shortest decimal form of the f32 (1.1 stays 1.1, not 1.100000023841858).
        Value::Float(f) => number(f.to_string().parse::<f64>().unwrap_or(*f as f64)),
        Value::Double(d) => number(*d),
        Value::Decimal(s) => Json::String(s.clone()),
        Value::Date { year, month, day } => match NaiveDate::from_ymd_opt(*year as i32, *month as u32, *day as u32) {
            Some(_) => {
                let mut s = String::with_capacity(10);
                push_date(&mut s, u32::from(*year), u32::from(*month), u32::from(*day));
                Json::String(s)
            }
            None => Json::Null,
        },
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
            fsp,
        } => match NaiveDate::from_ymd_opt(*year as i32, *month as u32, *day as u32) {
            Some(_) => {
                let mut s = String::with_capacity(32);
                push_date(&mut s, u32::from(*year), u32::from(*month), u32::from(*day));
                s.push('T');
                push_clock(&mut s, u32::from(*hour), u32::from(*minute), u32::from(*second));
                push_fraction(&mut s, *micros, *fsp);
                push_offset(&mut s, zone);
                Json::String(s)
            }
            None => Json::Null,
        },
        Value::Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
            fsp,
        } => {
            let mut s = String::with_capacity(16);
            if *negative {
                s.push('-');
            }
            push_clock(&mut s, *hours, u32::from(*minutes), u32::from(*seconds));
            push_fraction(&mut s, *micros, *fsp);
            Json::String(s)
        }
        Value::Timestamp { seconds, micros, fsp } => {
            if *seconds == 0 && *micros == 0 {
                Json::Null
            } else {
                match zone.timestamp_opt(*seconds, 0).single() {
                    Some(t) => {
                        let mut s = String::with_capacity(32);
                        // chrono's `%Y` signs years past 9999; those keep its formatting.
                        if (0..=9999).contains(&t.year()) {
                            push_date(&mut s, t.year() as u32, t.month(), t.day());
                            s.push('T');
                            push_clock(&mut s, t.hour(), t.minute(), t.second());
                        } else {
                            s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
                        }
                        push_fraction(&mut s, *micros, *fsp);
                        push_offset(&mut s, zone);
                        Json::String(s)
                    }
                    None => Json::Null,
                }
            }
        }
        Value::Year(y) => Json::from(*y),
        Value::Text { bytes, charset } => Json::String(decode_text(bytes, *charset, column)?),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Enum(s) => Json::String(s.clone()),
        Value::Set(members) => Json::Array(members.iter().cloned().map(Json::String).collect()),
        Value::Bit(bytes) => Json::from(bytes.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64)),
        Value::Json(j) => j.clone(),
    })
}

fn number(f: f64) -> Json {
    Number::from_f64(f).map(Json::Number).unwrap_or(Json::Null)
}

// Dates and times are written digit by digit: `format!` cost ~8% of the transform of an
// `orders` row (issue #7). Each helper prints exactly what `{n:0w$}` formats would.

/// `YYYY-MM-DD`.
fn push_date(out: &mut String, year: u32, month: u32, day: u32) {
    push_fields(out, [(year, 4), (month, 2), (day, 2)], '-');
}

/// `HH:MM:SS` (hours may have more digits, for TIME).
fn push_clock(out: &mut String, hours: u32, minutes: u32, seconds: u32) {
    push_fields(out, [(hours, 2), (minutes, 2), (seconds, 2)], ':');
}

/// Zero-padded `(value, width)` fields joined by `sep`.
fn push_fields(out: &mut String, fields: [(u32, usize); 3], sep: char) {
    for (i, (n, width)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        push_padded(out, n, width);
    }
}

/// `.fff…` with `fsp` digits (none for 0).
fn push_fraction(out: &mut String, micros: u32, fsp: u8) {
    let n = (fsp as usize).min(6);
    if n > 0 {
        out.push('.');
        push_padded(out, micros / 10u32.pow(6 - n as u32), n);
    }
}

/// `+08:00`.
fn push_offset(out: &mut String, zone: FixedOffset) {
    let secs = zone.local_minus_utc();
    out.push(if secs < 0 { '-' } else { '+' });
    let secs = secs.unsigned_abs();
    push_padded(out, secs / 3600, 2);
    out.push(':');
    push_padded(out, (secs % 3600) / 60, 2);
}

/// Decodes column bytes by collation id.
fn decode_text(bytes: &[u8], charset: u16, column: &str) -> Result<String, TransformError> {
    use encoding_rs::{Encoding, BIG5, GB18030, GBK, UTF_16BE, UTF_16LE, WINDOWS_1252};
    let bad = || TransformError::Encoding {
        column: column.into(),
        charset,
    };
    let enc: &'static Encoding = match charset {
        // utf8mb3 / utf8mb4 collations (MySQL and MariaDB numbering), and ascii.
        33 | 45 | 46 | 76 | 83 | 192..=215 | 223..=247 | 255..=323 | 11 | 65 => {
            return std::str::from_utf8(bytes).map(str::to_string).map_err(|_| bad());
        }
        // MariaDB 10.10+ numbers its newer (UCA 14.0) collations from 2048 upwards; the ones
        // for utf8mb3/utf8mb4 are the only ones it uses by default. Accept them as UTF-8 when
        // the bytes are valid UTF-8.
        2048..=4095 => return std::str::from_utf8(bytes).map(str::to_string).map_err(|_| bad()),
        63 => return Ok(base64::engine::general_purpose::STANDARD.encode(bytes)),
        5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 => WINDOWS_1252,
        28 | 87 | 24 | 86 => GBK,
        248..=250 => GB18030,
        1 | 84 => BIG5,
        // ucs2 is UTF-16BE restricted to the BMP.
        35 | 90 | 128..=151 | 159 | 54 | 55 | 101..=124 => UTF_16BE,
        56 | 62 => UTF_16LE,
        60 | 61 | 160..=183 => {
            if !bytes.len().is_multiple_of(4) {
                return Err(bad());
            }
            return bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).ok_or_else(bad))
                .collect();
        }
        other => {
            return Err(TransformError::Charset {
                column: column.into(),
                charset: other,
            })
        }
    };
    let (text, had_errors) = enc.decode_without_bom_handling(bytes);
    if had_errors {
        return Err(bad());
    }
    Ok(text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Version;
    use crate::schema::ColumnSchema;

    fn col(name: &str) -> ColumnSchema {
        ColumnSchema {
            name: name.into(),
            column_type: 0,
            meta: vec![],
            unsigned: false,
            nullable: true,
            charset: None,
            members: vec![],
        }
    }

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            "shop".into(),
            "orders_03".into(),
            vec![
                col("id"),
                col("buyer_name"),
                col("amount"),
                col("created_at"),
                col("items"),
                col("secret"),
            ],
            vec![0],
        ))
    }

    fn mapping(extra: &str) -> Mapping {
        let cfg: TableMapping = toml::from_str(&format!(
            "source = 'shop\\.orders(_\\d+)?'\nindex = \"orders\"\nmapping = \"m.json\"\njson_columns = [\"items\"]\n{extra}"
        ))
        .unwrap();
        Mapping::new(&cfg, FixedOffset::east_opt(8 * 3600).unwrap(), None)
    }

    fn text(s: &str) -> Value {
        Value::Text {
            bytes: s.as_bytes().to_vec(),
            charset: 224,
        }
    }

    fn row(id: i64, name: &str) -> Vec<Value> {
        vec![
            Value::Int(id),
            text(name),
            Value::Decimal("1234.50".into()),
            Value::DateTime {
                year: 2026,
                month: 1,
                day: 25,
                hour: 9,
                minute: 3,
                second: 4,
                micros: 120_000,
                fsp: 3,
            },
            text(r#"{"sku":"A1","qty":2}"#),
            text("x"),
        ]
    }

    fn change(op: RowOp, before: Option<Vec<Value>>, after: Option<Vec<Value>>) -> RowChange {
        RowChange {
            table: table(),
            op,
            before,
            after,
            version: Version(77),
            source_ts: 0,
        }
    }

    #[test]
    fn insert_renders_exact_document() {
        let m = mapping("exclude = [\"secret\"]\nrename = { buyer_name = \"buyer\" }");
        assert!(m.matches("shop.orders_03") && m.matches("shop.orders") && !m.matches("shop.orders_x"));
        let ops = m.apply(&change(RowOp::Insert, None, Some(row(7, "张三")))).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].id, "7");
        assert_eq!(ops[0].version, Version(77));
        let DocAction::Index(doc) = &ops[0].action else {
            panic!()
        };
        let doc: Json = serde_json::from_str(doc).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"id": 7, "buyer": "张三", "amount": "1234.50",
                "created_at": "2026-01-25T09:03:04.120+08:00", "items": {"sku": "A1", "qty": 2}})
        );
    }

    #[test]
    fn oversized_fields_are_cut_and_named() {
        let limit = SizeLimit {
            max_bytes: 10,
            action: crate::config::Oversize::Truncate,
        };
        let mut doc = Map::new();
        doc.insert("small".into(), Json::from("ok"));
        doc.insert("big".into(), Json::from("张三张三张三")); // 18 bytes: cut to 9 (3 whole chars)
        doc.insert("obj".into(), serde_json::json!({"k": "0123456789"}));
        doc.insert("n".into(), Json::from(123456789012345u64));
        limit.apply(&mut doc).unwrap();
        assert_eq!(doc["small"], "ok");
        assert_eq!(doc["big"], "张三张");
        assert_eq!(doc["obj"], Json::Null);
        assert_eq!(doc["n"], 123456789012345u64);
        assert_eq!(doc[OVERSIZED_FIELD], serde_json::json!(["big", "obj"]));
        let drop = SizeLimit {
            max_bytes: 10,
            action: crate::config::Oversize::Drop,
        };
        let mut doc = Map::new();
        doc.insert("big".into(), Json::from("x".repeat(11)));
        drop.apply(&mut doc).unwrap();
        assert_eq!(doc["big"], Json::Null);
        let mut doc = Map::new();
        doc.insert("fits".into(), Json::from("x".repeat(10)));
        limit.apply(&mut doc).unwrap();
        assert!(!doc.contains_key(OVERSIZED_FIELD));
    }

    #[test]
    fn key_change_deletes_old_id() {
        let m = mapping("");
        let ops = m
            .apply(&change(RowOp::Update, Some(row(1, "a")), Some(row(2, "a"))))
            .unwrap();
        assert_eq!(ops.len(), 2);
        assert!(matches!(ops[0].action, DocAction::Delete) && ops[0].id == "1");
        assert!(matches!(ops[1].action, DocAction::Index(_)) && ops[1].id == "2");
        let ops = m.apply(&change(RowOp::Delete, Some(row(3, "a")), None)).unwrap();
        assert!(matches!(ops[0].action, DocAction::Delete) && ops[0].id == "3");
    }

    #[test]
    fn composite_ids_escape_separators() {
        let m = mapping("id_columns = [\"buyer_name\", \"id\"]");
        assert_eq!(m.doc_id(&table(), &row(5, "a:b\\c")).unwrap(), "a\\:b\\\\c:5");
    }

    #[test]
    fn unrenderable_rows_are_errors() {
        let m = mapping("");
        let mut r = row(1, "a");
        r[4] = text("{not json");
        assert!(matches!(
            m.apply(&change(RowOp::Insert, None, Some(r))),
            Err(TransformError::Json { .. })
        ));
        let mut r = row(1, "a");
        r[1] = Value::Absent;
        assert!(matches!(
            m.apply(&change(RowOp::Insert, None, Some(r))),
            Err(TransformError::PartialImage { .. })
        ));
        let mut r = row(1, "a");
        r[0] = Value::Null;
        assert!(matches!(
            m.apply(&change(RowOp::Insert, None, Some(r))),
            Err(TransformError::NullKey { .. })
        ));
    }

    #[test]
    fn errors_never_carry_values() {
        // A phone inside an unparsable JSON column: the error (dead-lettered, logged) must
        // name the column and the problem, never the text.
        let m = mapping("");
        for bad in [
            "{\"phone\": \"13812345678\" \"x\"}",
            "[13812345678,",
            "{\"13812345678\"}",
        ] {
            let mut r = row(1, "a");
            r[4] = text(bad);
            let e = m.apply(&change(RowOp::Insert, None, Some(r))).unwrap_err().to_string();
            assert!(
                e.contains("`items`") && !e.contains("13812345678") && !e.contains("5678"),
                "{e}"
            );
        }
    }

    #[test]
    fn values_render_exactly() {
        let z = FixedOffset::east_opt(8 * 3600).unwrap();
        let r = |v: Value| render_value(&v, "c", z).unwrap();
        assert_eq!(r(Value::Float(1.1)), serde_json::json!(1.1));
        assert_eq!(r(Value::UInt(u64::MAX)), serde_json::json!(18446744073709551615u64));
        assert_eq!(
            r(Value::Time {
                negative: true,
                hours: 507,
                minutes: 48,
                seconds: 27,
                micros: 0,
                fsp: 0
            }),
            "-507:48:27"
        );
        assert_eq!(
            r(Value::Time {
                negative: true,
                hours: 1,
                minutes: 2,
                seconds: 3,
                micros: 500_000,
                fsp: 3
            }),
            "-01:02:03.500"
        );
        // 2024-06-15 12:34:56 UTC shown in +08:00.
        assert_eq!(
            r(Value::Timestamp {
                seconds: 1_718_454_896,
                micros: 0,
                fsp: 0
            }),
            "2024-06-15T20:34:56+08:00"
        );
        assert_eq!(
            r(Value::Timestamp {
                seconds: 0,
                micros: 0,
                fsp: 0
            }),
            Json::Null
        );
        assert_eq!(
            r(Value::Date {
                year: 0,
                month: 0,
                day: 0
            }),
            Json::Null
        );
        assert_eq!(
            r(Value::DateTime {
                year: 2024,
                month: 6,
                day: 15,
                hour: 0,
                minute: 0,
                second: 0,
                micros: 123456,
                fsp: 6
            }),
            "2024-06-15T00:00:00.123456+08:00"
        );
        assert_eq!(
            r(Value::Text {
                bytes: b"caf\xe9 \xf1".to_vec(),
                charset: 8
            }),
            "café ñ"
        );
        assert_eq!(
            r(Value::Text {
                bytes: vec![0x9f, b' ', 0x80],
                charset: 8
            }),
            "Ÿ €"
        );
        assert_eq!(
            r(Value::Text {
                bytes: vec![0, b'h', 0, 0xe9],
                charset: 35
            }),
            "hé"
        );
        assert_eq!(
            r(Value::Text {
                bytes: vec![0xd5, 0xc5, 0xc8, 0xfd],
                charset: 28
            }),
            "张三"
        );
        assert_eq!(r(Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef])), "3q2+7w==");
        assert_eq!(
            r(Value::Set(vec!["x".into(), "z".into()])),
            serde_json::json!(["x", "z"])
        );
        assert_eq!(r(Value::Bit(vec![0x02, 0x01])), serde_json::json!(513));
        assert!(render_value(
            &Value::Text {
                bytes: vec![0xff],
                charset: 224
            },
            "c",
            z
        )
        .is_err());
        assert!(matches!(
            render_value(
                &Value::Text {
                    bytes: vec![1],
                    charset: 999
                },
                "c",
                z
            ),
            Err(TransformError::Charset { charset: 999, .. })
        ));
    }

    proptest::proptest! {
        // Dates and times are written digit by digit; they must print what `format!` did.
        #[test]
        fn dates_and_times_render_as_format_did(
            (year, month, day) in (0u16..=10_100, 0u8..=13, 0u8..=32),
            (hour, minute, second) in (0u8..=24, 0u8..=60, 0u8..=60),
            (hours, micros, fsp) in (0u32..=1100, 0u32..1_000_000, 0u8..=7),
            (negative, seconds, offset) in (proptest::bool::ANY, 1i64..=i64::from(u32::MAX), -86_399i32..=86_399),
        ) {
            let zone = FixedOffset::east_opt(offset).unwrap();
            let n = usize::from(fsp.min(6));
            let frac = if n == 0 { String::new() } else { format!(".{:0n$}", micros / 10u32.pow(6 - n as u32)) };
            let secs = offset.abs();
            let suffix = format!("{}{:02}:{:02}", if offset < 0 { '-' } else { '+' }, secs / 3600, (secs % 3600) / 60);
            let valid = NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day)).is_some();
            let r = |v: Value| render_value(&v, "c", zone).unwrap();
            let date = r(Value::Date { year, month, day });
            let datetime = r(Value::DateTime { year, month, day, hour, minute, second, micros, fsp });
            if valid {
                proptest::prop_assert_eq!(date, Json::String(format!("{year:04}-{month:02}-{day:02}")));
                proptest::prop_assert_eq!(
                    datetime,
                    Json::String(format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{frac}{suffix}"))
                );
            } else {
                proptest::prop_assert_eq!(date, Json::Null);
                proptest::prop_assert_eq!(datetime, Json::Null);
            }
            proptest::prop_assert_eq!(
                r(Value::Time { negative, hours, minutes: minute, seconds: second, micros, fsp }),
                Json::String(format!("{}{hours:02}:{minute:02}:{second:02}{frac}", if negative { "-" } else { "" }))
            );
            let t = zone.timestamp_opt(seconds, 0).single().unwrap();
            proptest::prop_assert_eq!(
                r(Value::Timestamp { seconds, micros, fsp }),
                Json::String(format!("{}{frac}{suffix}", t.format("%Y-%m-%dT%H:%M:%S")))
            );
        }
    }

    #[test]
    fn hostile_values_and_names_never_panic_and_stay_valid_json() {
        // GIVEN odd table and column names and hostile values of every text flavour
        let names = ["id", "名前", "a.b", "`x`\"'", "ctl\u{1}\u{1b}", " ", "items"];
        let table = Arc::new(TableSchema::new(
            "db-with`tick".into(),
            "t\"able\n".into(),
            names.iter().map(|n| col(n)).collect(),
            vec![0],
        ));
        let m = mapping("");
        let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
        let cases: Vec<Vec<Value>> = vec![
            // control characters, NUL, bidi overrides, lone surrogates are impossible in UTF-8
            vec![
                Value::Int(1),
                text("\u{0}\u{7}\u{1b}[31m\r\n\t\u{202e}"),
                Value::Text {
                    bytes: vec![0xff, 0xe9, 0x00, 0x80],
                    charset: 8,
                }, // latin1: any byte
                Value::Bytes(vec![0, 159, 146, 150, 255]),
                Value::Text {
                    bytes: vec![0xc3, 0x28, 0xa0, 0xa1],
                    charset: 63,
                }, // binary collation
                text(&"x".repeat(5 * 1024 * 1024)), // enormous: cut to max_field_bytes
                text(r#"{"a":"\u0000\u001b","\ud83d\ude00":1}"#),
            ],
            // invalid UTF-8 declared utf8mb4: an error (dead letter), not a panic
            vec![
                Value::Int(2),
                Value::Text {
                    bytes: vec![0xf0, 0x28, 0x8c, 0x28],
                    charset: 224,
                },
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
            // JSON nested 5,000 deep in a JSON column
            vec![
                Value::Int(3),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                text(&deep),
            ],
        ];
        for (i, after) in cases.into_iter().enumerate() {
            let change = RowChange {
                table: table.clone(),
                op: RowOp::Insert,
                before: None,
                after: Some(after),
                version: Version(1),
                source_ts: 0,
            };
            // WHEN it is transformed THEN it is a valid JSON document or a clean error
            match m.apply(&change) {
                Ok(ops) => {
                    for op in ops {
                        if let DocAction::Index(doc) = &op.action {
                            let v: Json = serde_json::from_str(doc).unwrap_or_else(|e| panic!("case {i}: {e}"));
                            assert!(v.is_object(), "case {i}");
                            assert!(doc.len() < 3 * 1024 * 1024, "case {i}: {} bytes", doc.len());
                        }
                    }
                }
                Err(e) => assert!(i > 0, "case {i} must index: {e}"),
            }
        }
    }
}

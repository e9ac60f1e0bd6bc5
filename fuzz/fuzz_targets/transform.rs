//! Row → document (`Mapping::apply`) on hostile column values: any bytes in utf8mb4, latin1
//! and binary columns, text declared JSON, phone and scanned columns, tokenized and pinyin
//! fields. It must never panic; whatever it indexes must be one valid JSON object without the
//! phone column's plaintext field.
#![no_main]

use std::sync::{Arc, OnceLock};

use cdc_indexer::change::{DocAction, RowChange, RowOp};
use cdc_indexer::config::TableMapping;
use cdc_indexer::mask::HashKey;
use cdc_indexer::position::Version;
use cdc_indexer::schema::{ColumnSchema, TableSchema};
use cdc_indexer::tokenize::Tokenizer;
use cdc_indexer::transform::Mapping;
use cdc_indexer::value::Value;
use libfuzzer_sys::fuzz_target;

const COLUMNS: [(&str, Option<u16>); 7] = [
    ("id", None),
    ("buyer_name", Some(224)), // utf8mb4
    ("remark", Some(8)),       // latin1
    ("blob", None),            // binary
    ("items", Some(224)),      // JSON held as text
    ("buyer_phone", Some(224)),
    ("raw", Some(63)), // binary charset
];

fn setup() -> &'static (Mapping, Arc<TableSchema>) {
    static S: OnceLock<(Mapping, Arc<TableSchema>)> = OnceLock::new();
    S.get_or_init(|| {
        let mut cfg: TableMapping = toml::from_str(
            r#"
            source = 'shop\.orders'
            index = "orders"
            mapping = "m.json"
            json_columns = ["items"]
            phone_columns = ["buyer_phone"]
            phone_hash_key_env = "K"
            scan_columns = ["remark", "items", "raw"]
            mask_emails = true
            mask_landlines = true
            mask_id_numbers = true
            token_fields = ["buyer_name", "remark", "items.title"]
            pinyin_fields = ["buyer_name"]
            max_field_bytes = 4096
            "#,
        )
        .expect("mapping");
        cfg.phone_hash_key = Some(HashKey::new(b"fuzz-phone-hash-key-0123", None));
        let tokenizer = Arc::new(Tokenizer::load(None).expect("tokenizer"));
        let zone = chrono::FixedOffset::east_opt(8 * 3600).expect("zone");
        let columns = COLUMNS
            .iter()
            .map(|(name, charset)| ColumnSchema {
                name: name.to_string(),
                column_type: 0,
                meta: vec![],
                unsigned: false,
                nullable: true,
                charset: *charset,
                members: vec![],
            })
            .collect();
        let table = Arc::new(TableSchema::new("shop".into(), "orders".into(), columns, vec![0]));
        (Mapping::new(&cfg, zone, Some(&tokenizer)), table)
    })
}

fuzz_target!(|data: &[u8]| {
    let (mapping, table) = setup();
    // Fields are separated by 0xFF (never valid UTF-8, so it cannot hide inside a value).
    let mut parts = data.split(|b| *b == 0xff);
    let mut next = || parts.next().unwrap_or_default().to_vec();
    let id = next();
    let id = i64::from_le_bytes(id.iter().chain([0u8; 8].iter()).take(8).copied().collect::<Vec<_>>().try_into().expect("8"));
    let text = |bytes: Vec<u8>, charset: u16| Value::Text { bytes, charset };
    let row = vec![
        Value::Int(id),
        text(next(), 224),
        text(next(), 8),
        Value::Bytes(next()),
        text(next(), 224),
        text(next(), 224),
        text(next(), 63),
    ];
    let change = RowChange {
        table: table.clone(),
        op: RowOp::Insert,
        before: None,
        after: Some(row),
        version: Version(1),
        source_ts: 0,
    };
    if let Ok(ops) = mapping.apply(&change) {
        for op in ops {
            if let DocAction::Index(doc) = &op.action {
                let v: serde_json::Value = match serde_json::from_str(doc) {
                    Ok(v) => v,
                    // Nesting deeper than serde_json reads back (128) is still valid JSON.
                    Err(e) if e.to_string().contains("recursion limit") => continue,
                    Err(e) => panic!("the document is not valid JSON ({e}): {doc}"),
                };
                assert!(v.is_object(), "the document is an object");
                assert!(v.get("buyer_phone").is_none(), "the phone column's plaintext is indexed: {doc}");
            }
        }
    }
});

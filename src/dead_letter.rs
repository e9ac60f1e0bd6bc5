//! The dead-letter queue: durable records of changes that can never be indexed as they are.
//!
//! Contract: [`DeadLetters::write`] returns only after the record is appended and fsynced, and
//! the pipeline acknowledges a dead-lettered operation only after that, so a change is always
//! either in the index or in this file (JSON lines, one record per line) with the reason.
//! Documents in records went through the same per-field transforms as indexed ones (masking
//! included), so the file holds nothing the index would not.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One dead-lettered change.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    /// Seconds since the epoch when it was dead-lettered.
    pub at: u64,
    pub table: &'a str,
    pub index: &'a str,
    /// `_id` when it could be derived.
    pub id: Option<&'a str>,
    pub op: &'a str,
    pub version: u64,
    /// HTTP status from Elasticsearch, if the rejection came from there.
    pub status: Option<u16>,
    pub reason: &'a str,
    /// The rendered document, when there is one.
    pub document: Option<&'a serde_json::value::RawValue>,
}

pub struct DeadLetters {
    path: PathBuf,
    file: std::fs::File,
}

impl DeadLetters {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(DeadLetters {
            path: path.into(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` durably.
    pub fn write(&mut self, records: &[DeadLetter<'_>]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq/dead-letter.jsonl");
        let doc = serde_json::value::RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        for _ in 0..2 {
            let mut d = DeadLetters::open(&path).unwrap();
            d.write(&[DeadLetter {
                at: 1,
                table: "shop.orders",
                index: "orders",
                id: Some("7"),
                op: "insert",
                version: 9,
                status: Some(400),
                reason: "strict_dynamic_mapping_exception",
                document: Some(&doc),
            }])
            .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["document"]["a"], 1);
        assert_eq!(lines[1]["status"], 400);
    }
}

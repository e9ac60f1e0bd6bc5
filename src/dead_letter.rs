//! The dead-letter queue: durable records of changes that can never be indexed as they are.
//!
//! Contract: [`DeadLetters::write`] returns only after the record is appended and fsynced, and
//! the pipeline acknowledges a dead-lettered operation only after that, so a change is always
//! either in the index or in this file (JSON lines, one record per line) with the reason.
//! Documents in records went through the same per-field transforms as indexed ones (masking
//! included), so the file holds nothing the index would not.
//!
//! `cdc-indexer dlq replay` re-sends the recorded documents with their original versions once the
//! operator has fixed the cause (e.g. the mapping): a document that has since been superseded
//! is answered 409 and dropped as stale, so a replay can never roll a document back. Only
//! records that were written or found stale leave the file; the file is rewritten atomically.

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

/// A record as read back from the file.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct Record {
    pub at: u64,
    pub table: String,
    pub index: String,
    pub id: Option<String>,
    pub op: String,
    pub version: u64,
    pub status: Option<u16>,
    pub reason: String,
    pub document: Option<Box<serde_json::value::RawValue>>,
}

/// Reads every record of the file (none if it does not exist).
pub fn read_all(path: &Path) -> std::io::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} line {}: {e}", path.display(), n + 1),
                )
            })
        })
        .collect()
}

/// Replaces the file's content with `records`, atomically.
pub fn rewrite(path: &Path, records: &[Record]) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        for r in records {
            serde_json::to_writer(&mut f, r).map_err(std::io::Error::other)?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub written: usize,
    pub stale: usize,
    /// Still failing, kept in the file with the new reason.
    pub kept: usize,
    /// Records without a document (the row could not be rendered): repair them from the
    /// database with a consistency check instead.
    pub need_repair: usize,
}

/// Re-sends the recorded documents (see the module doc). Records without a document, and
/// operations that fail again, stay in the file.
pub async fn replay(
    client: &elasticsearch::Elasticsearch,
    timeout: std::time::Duration,
    path: &Path,
    dry_run: bool,
) -> Result<ReplayReport, crate::sink::SinkError> {
    use crate::bulk::{BulkOutcome, ItemOutcome};
    use crate::change::{DocAction, DocOp, RowOp};
    let io = |e: std::io::Error| crate::sink::SinkError::DeadLetterIo {
        path: path.display().to_string(),
        source: e,
    };
    let records = read_all(path).map_err(io)?;
    let mut report = ReplayReport::default();
    let mut keep = Vec::new();
    let mut ops = Vec::new();
    for r in records {
        match (&r.document, &r.id) {
            (Some(doc), Some(id)) => {
                ops.push((
                    DocOp {
                        index: std::sync::Arc::from(r.index.as_str()),
                        id: id.clone(),
                        version: crate::position::Version(r.version),
                        action: DocAction::Index(doc.get().to_string()),
                        table: std::sync::Arc::from(r.table.as_str()),
                        op: RowOp::Insert,
                    },
                    r,
                ));
            }
            _ => {
                report.need_repair += 1;
                keep.push(r);
            }
        }
    }
    if dry_run || ops.is_empty() {
        report.kept = ops.len();
        return Ok(report);
    }
    for chunk in ops.chunks(500) {
        let mut body = bytes::BytesMut::new();
        for (op, _) in chunk {
            crate::bulk::encode(&mut body, op);
        }
        match crate::sink::post_bulk(client, timeout, body.freeze(), chunk.len()).await {
            BulkOutcome::Items(items) => {
                for ((_, r), item) in chunk.iter().zip(items) {
                    match item {
                        ItemOutcome::Done => report.written += 1,
                        ItemOutcome::Stale => report.stale += 1,
                        ItemOutcome::Retry { status, reason }
                        | ItemOutcome::DeadLetter { status, reason }
                        | ItemOutcome::Fatal { status, reason } => {
                            report.kept += 1;
                            keep.push(Record {
                                status: Some(status),
                                reason,
                                at: now_secs(),
                                ..r.clone()
                            });
                        }
                    }
                }
            }
            BulkOutcome::RetryAll { reason, .. } | BulkOutcome::Fatal { reason } => {
                report.kept += chunk.len();
                keep.extend(chunk.iter().map(|(_, r)| Record {
                    reason: reason.clone(),
                    at: now_secs(),
                    ..r.clone()
                }));
            }
            BulkOutcome::TooLarge => {
                report.kept += chunk.len();
                keep.extend(chunk.iter().map(|(_, r)| r.clone()));
            }
        }
    }
    rewrite(path, &keep).map_err(io)?;
    Ok(report)
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

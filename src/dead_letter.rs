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
//!
//! Rotation: the active file (`dead-letter.jsonl`) is sealed into a segment
//! (`dead-letter-<epoch seconds>-<n>.jsonl` beside it) once it would grow past its size limit, so
//! no single file grows without bound; segments are never deleted by the indexer (a dead letter
//! is data the operator still has to act on). Writer and replay coordinate with an exclusive
//! `flock` on the active file: the writer takes it for every append and, holding it, reopens the
//! path if the file it holds was sealed meanwhile; replay takes it to seal the active file
//! before reading. So a replay running next to a live indexer never reads a file that is still
//! being appended to, and an append never lands in a file that replay is rewriting.

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

/// Reads every record: the sealed segments, oldest first, then the active file at `path`.
pub fn read_all(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for file in segments(path)?.iter().map(PathBuf::as_path).chain([path]) {
        records.extend(read_file(file)?);
    }
    Ok(records)
}

/// The sealed segments of the active file `path`, oldest first.
fn segments(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{stem}-");
    let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    // Names carry zero-padded seconds and a counter: lexical order is age order.
    found.sort();
    Ok(found)
}

/// A new segment name beside `path`.
fn segment_name(path: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("dead-letter");
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(
        "{stem}-{:012}-{:06}-{n:04}.jsonl",
        now_secs(),
        std::process::id()
    ))
}

/// Holds an exclusive `flock` on a file until dropped.
struct Locked<'a>(&'a std::fs::File);

impl<'a> Locked<'a> {
    fn new(file: &'a std::fs::File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; it blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Locked(file))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; unlocking cannot fail in a way we could act on.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Whether `path` still names the file `file` has open.
fn is_current(path: &Path, file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.ino() == held.ino() && m.dev() == held.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Seals the active file into a segment (under its lock), if it has records.
fn seal(path: &Path) -> std::io::Result<()> {
    let file = match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let _lock = Locked::new(&file)?;
    if is_current(path, &file)? && file.metadata()?.len() > 0 {
        std::fs::rename(path, segment_name(path))?;
        sync_dir(path)?;
    }
    Ok(())
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn read_file(path: &Path) -> std::io::Result<Vec<Record>> {
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
    let io = |e: std::io::Error| crate::sink::SinkError::DeadLetterIo {
        path: path.display().to_string(),
        source: e,
    };
    if !dry_run {
        seal(path).map_err(io)?;
    }
    let mut report = ReplayReport::default();
    let files = match dry_run {
        true => segments(path)
            .map_err(io)?
            .into_iter()
            .chain([path.to_owned()])
            .collect(),
        false => segments(path).map_err(io)?,
    };
    for file in files {
        replay_file(client, timeout, &file, dry_run, &mut report).await?;
    }
    Ok(report)
}

/// Replays one sealed segment (or, in a dry run, any file); what still fails stays in it, and
/// a segment left empty is removed.
async fn replay_file(
    client: &elasticsearch::Elasticsearch,
    timeout: std::time::Duration,
    path: &Path,
    dry_run: bool,
    report: &mut ReplayReport,
) -> Result<(), crate::sink::SinkError> {
    use crate::bulk::{BulkOutcome, ItemOutcome};
    use crate::change::{DocAction, DocOp, RowOp};
    let io = |e: std::io::Error| crate::sink::SinkError::DeadLetterIo {
        path: path.display().to_string(),
        source: e,
    };
    let records = read_file(path).map_err(io)?;
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
    if dry_run {
        report.kept += ops.len();
        return Ok(());
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
    if keep.is_empty() {
        std::fs::remove_file(path).map_err(io)?;
        sync_dir(path).map_err(io)?;
    } else {
        rewrite(path, &keep).map_err(io)?;
    }
    Ok(())
}

/// The default size at which the active file is sealed into a segment.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

pub struct DeadLetters {
    path: PathBuf,
    file: std::fs::File,
    segment_bytes: u64,
}

impl DeadLetters {
    /// Opens (creating) the active file; it is sealed once it would pass `segment_bytes`.
    pub fn open(path: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(DeadLetters {
            path: path.into(),
            file: Self::open_active(path)?,
            segment_bytes,
        })
    }

    fn open_active(path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new().create(true).append(true).open(path)
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
        loop {
            let file = self.file.try_clone()?;
            let _lock = Locked::new(&file)?;
            if !is_current(&self.path, &file)? {
                // Sealed by a replay: append to the new active file instead.
                self.file = Self::open_active(&self.path)?;
                continue;
            }
            let len = file.metadata()?.len();
            if len > 0 && len + buf.len() as u64 > self.segment_bytes {
                std::fs::rename(&self.path, segment_name(&self.path))?;
                sync_dir(&self.path)?;
                self.file = Self::open_active(&self.path)?;
                continue;
            }
            self.file.write_all(&buf)?;
            return self.file.sync_data();
        }
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

    fn record(id: &str) -> DeadLetter<'_> {
        DeadLetter {
            at: 1,
            table: "shop.orders",
            index: "orders",
            id: Some(id),
            op: "insert",
            version: 9,
            status: Some(400),
            reason: "strict_dynamic_mapping_exception",
            document: None,
        }
    }

    #[test]
    fn the_active_file_is_sealed_into_segments_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letter.jsonl");
        let mut d = DeadLetters::open(&path, 4096).unwrap();
        let ids: Vec<String> = (0..200).map(|i| format!("{i:05}")).collect();
        for id in &ids {
            d.write(&[record(id)]).unwrap();
        }
        let segs = segments(&path).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        for s in &segs {
            assert!(std::fs::metadata(s).unwrap().len() <= 4096);
        }
        let read: Vec<String> = read_all(&path).unwrap().into_iter().map(|r| r.id.unwrap()).collect();
        assert_eq!(read, ids, "every record, oldest first");
    }

    #[test]
    fn a_writer_follows_a_seal_by_another_process() {
        // GIVEN a writer holding the active file open
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letter.jsonl");
        let mut d = DeadLetters::open(&path, SEGMENT_BYTES).unwrap();
        d.write(&[record("a")]).unwrap();
        // WHEN a replay seals the file, and the writer appends again
        seal(&path).unwrap();
        d.write(&[record("b")]).unwrap();
        // THEN the sealed segment holds only what came before, the new active file the rest
        let segs = segments(&path).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(read_file(&segs[0]).unwrap()[0].id.as_deref(), Some("a"));
        let active = read_file(&path).unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id.as_deref(), Some("b"));
    }

    #[test]
    fn records_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq/dead-letter.jsonl");
        let doc = serde_json::value::RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        for _ in 0..2 {
            let mut d = DeadLetters::open(&path, SEGMENT_BYTES).unwrap();
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

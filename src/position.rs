//! Binlog positions and the document versions derived from them.
//!
//! # Version encoding
//!
//! Every write to Elasticsearch carries `version_type=external_gte` and a version that must grow
//! along the binlog, including across file rotations and between the rows of one event, and must
//! be the same every time the same change is replayed (so a replay after a crash is idempotent).
//! It is a pure function of where the row sits in the binlog:
//!
//! ```text
//! version = file_seq << 43  |  event_start * 2048 + row_index
//!           (20 bits)          (43 bits)
//! ```
//!
//! * `file_seq` is the numeric suffix of the binlog file (`mariadb-bin.000123` → 123, < 2^20);
//! * `event_start` is the byte offset at which the rows event starts (`log_pos - event_size`);
//! * `row_index` counts the row changes inside that event (for a MySQL 8 compressed transaction
//!   payload, inside the whole payload).
//!
//! Why strictly increasing: within a file, a later event starts at least `event_size` bytes
//! later, and an event holds fewer than `2048 × event_size` rows (a row takes at least one byte;
//! a compressed payload would need a compression ratio above 2048 rows per byte), so
//! `event_start * 2048 + row_index` never reaches the next event's range. Across files the
//! `file_seq` field dominates. [`VersionGuard`] checks the property at run time anyway and the
//! source halts rather than write a non-increasing version.
//!
//! A snapshot row read at binlog position P gets `Version::at(P)`, i.e. `row_index` 0 of a
//! virtual event starting at P: every change committed after P starts at or after P and has a
//! higher version, so no snapshot row can overwrite a newer change.

use std::fmt;

use serde::{Deserialize, Serialize};

const ROW_BITS: u32 = 11;
const OFFSET_BITS: u32 = 43;
const MAX_FILE_SEQ: u64 = (1 << (63 - OFFSET_BITS)) - 1;

/// An external document version (fits a signed 64-bit Elasticsearch version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("binlog file name {0:?} has no numeric sequence suffix")]
    NoSequence(String),
    #[error("binlog file sequence {0} exceeds the version encoding's limit of {MAX_FILE_SEQ}; reset the binlog sequence and run a reindex")]
    SequenceTooLarge(u64),
    #[error("row {row_index} of the event at offset {event_start} does not fit the version encoding")]
    OffsetTooLarge { event_start: u64, row_index: u64 },
    #[error("version went backwards or repeated ({previous} then {next}) at {position}; the binlog was probably reset or the source server changed: run a reindex")]
    NotIncreasing { previous: u64, next: u64, position: String },
}

impl Version {
    /// Version of row `row_index` in the event that starts at byte `event_start` of the file
    /// with sequence `file_seq`.
    pub fn of_row(file_seq: u64, event_start: u64, row_index: u64) -> Result<Version, VersionError> {
        if file_seq > MAX_FILE_SEQ {
            return Err(VersionError::SequenceTooLarge(file_seq));
        }
        let offset = event_start
            .checked_mul(1 << ROW_BITS)
            .and_then(|o| o.checked_add(row_index))
            .filter(|o| *o < (1 << OFFSET_BITS))
            .ok_or(VersionError::OffsetTooLarge { event_start, row_index })?;
        Ok(Version((file_seq << OFFSET_BITS) | offset))
    }

    /// Version of a snapshot taken at `position`.
    pub fn at(position: &BinlogPosition) -> Result<Version, VersionError> {
        Version::of_row(file_sequence(&position.file)?, position.pos, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The numeric suffix of a binlog file name: `mysql-bin.000042` → 42.
pub fn file_sequence(file: &str) -> Result<u64, VersionError> {
    let suffix = file.rsplit('.').next().unwrap_or("");
    if suffix.is_empty() || suffix.len() == file.len() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VersionError::NoSequence(file.to_string()));
    }
    suffix.parse().map_err(|_| VersionError::SequenceTooLarge(u64::MAX))
}

/// Run-time check that versions handed out by the source keep increasing.
#[derive(Debug, Default)]
pub struct VersionGuard {
    last: Option<Version>,
}

impl VersionGuard {
    pub fn new(floor: Option<Version>) -> Self {
        VersionGuard { last: floor }
    }

    pub fn check(&mut self, next: Version, position: impl FnOnce() -> String) -> Result<(), VersionError> {
        if let Some(previous) = self.last {
            if next <= previous {
                return Err(VersionError::NotIncreasing {
                    previous: previous.0,
                    next: next.0,
                    position: position(),
                });
            }
        }
        self.last = Some(next);
        Ok(())
    }
}

/// A point in the binlog at which a transaction has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPosition {
    /// Binlog file name.
    pub file: String,
    /// Byte offset in `file` of the first event after the transaction.
    pub pos: u64,
    /// The server's GTID state at this point, when known: a MariaDB GTID list
    /// (`0-1-42,1-2-7`) or a MySQL GTID set (`uuid:1-42`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if let Some(g) = &self.gtid {
            write!(f, " (gtid {g})")?;
        }
        Ok(())
    }
}

impl BinlogPosition {
    /// Orders positions along one server's binlog (file sequence, then offset).
    pub fn key(&self) -> Result<(u64, u64), VersionError> {
        Ok((file_sequence(&self.file)?, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_sequence_parses_suffix() {
        assert_eq!(file_sequence("mariadb-bin.000123"), Ok(123));
        assert_eq!(file_sequence("binlog.1000000"), Ok(1_000_000));
        assert!(file_sequence("nosuffix").is_err());
        assert!(file_sequence("bin.12a").is_err());
    }

    #[test]
    fn rotation_dominates_offset() {
        let end_of_file = Version::of_row(7, u32::MAX as u64, 2047).unwrap();
        let next_file = Version::of_row(8, 4, 0).unwrap();
        assert!(next_file > end_of_file);
    }

    #[test]
    fn limits_are_errors_not_wraps() {
        assert!(matches!(
            Version::of_row(MAX_FILE_SEQ + 1, 4, 0),
            Err(VersionError::SequenceTooLarge(_))
        ));
        assert!(matches!(
            Version::of_row(1, 1 << 40, 0),
            Err(VersionError::OffsetTooLarge { .. })
        ));
        assert!(Version::of_row(MAX_FILE_SEQ, (1 << 32) - 1, 2047).unwrap().0 <= i64::MAX as u64);
    }

    #[test]
    fn guard_rejects_repeats() {
        let mut g = VersionGuard::new(None);
        g.check(Version(5), String::new).unwrap();
        assert!(g.check(Version(5), || "f:1".into()).is_err());
        assert!(g.check(Version(4), || "f:1".into()).is_err());
        g.check(Version(6), String::new).unwrap();
    }

    proptest! {
        // Any sequence of events laid out back to back in rotating files, each holding fewer rows
        // than bytes, yields strictly increasing versions in stream order.
        #[test]
        fn versions_increase_along_the_binlog(
            files in proptest::collection::vec(proptest::collection::vec((19u64..100_000, 1u64..64), 1..40), 1..5),
            first_seq in 1u64..1000,
        ) {
            let mut last: Option<Version> = None;
            for (i, events) in files.iter().enumerate() {
                let mut start = 4u64;
                for &(size, rows) in events {
                    let rows = rows.min(size);
                    for r in 0..rows {
                        let v = Version::of_row(first_seq + i as u64, start, r).unwrap();
                        if let Some(l) = last { prop_assert!(v > l); }
                        last = Some(v);
                    }
                    start += size;
                }
            }
        }

        #[test]
        fn snapshot_version_precedes_later_changes(seq in 1u64..100_000, pos in 4u64..((1u64 << 32) - 1_000_000), later in 1u64..1_000_000) {
            let snap = Version::at(&BinlogPosition { file: format!("bin.{seq:06}"), pos, gtid: None }).unwrap();
            let change = Version::of_row(seq, pos + later, 0).unwrap();
            prop_assert!(change > snap);
        }
    }
}

//! Durable resume points and the bookkeeping that decides when one may be written.
//!
//! Contract:
//! * [`CheckpointStore::save`] replaces the file atomically (write a temp file, fsync, rename,
//!   fsync the directory), so after a crash the file holds either the old or the new checkpoint,
//!   never a torn one; it refuses to move backwards along the binlog.
//! * [`AckTracker`] hands out a sequence number to every document operation, records transaction
//!   boundaries at the sequence reached when they were seen, and releases a boundary only once
//!   every operation numbered before it has been acknowledged (written, skipped as stale, or
//!   dead-lettered). Since the source emits a boundary only after the whole transaction, a
//!   released boundary means every change up to it is in Elasticsearch: resuming there can
//!   replay changes (harmless: versions make writes idempotent) but never skip one.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::position::{BinlogPosition, VersionError};

/// What is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub position: BinlogPosition,
    /// Source commit time of the last transaction included, seconds since the epoch.
    pub source_ts: u32,
    /// Wall-clock time the checkpoint was written, seconds since the epoch.
    pub written_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint file {path} is corrupt ({source}); restore it from a backup or delete it and run a reindex")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("refusing to move the checkpoint backwards from {from} to {to}")]
    Backwards { from: BinlogPosition, to: BinlogPosition },
    #[error(transparent)]
    Position(#[from] VersionError),
}

pub struct CheckpointStore {
    path: PathBuf,
    current: Option<Checkpoint>,
}

impl CheckpointStore {
    /// Opens the store, reading the existing checkpoint if there is one.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let current = match std::fs::read(path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt {
                    path: path.into(),
                    source,
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        Ok(CheckpointStore {
            path: path.into(),
            current,
        })
    }

    pub fn current(&self) -> Option<&Checkpoint> {
        self.current.as_ref()
    }

    /// Durably records `checkpoint`; a position equal to the current one is a no-op.
    pub fn save(&mut self, checkpoint: Checkpoint) -> Result<(), CheckpointError> {
        if let Some(cur) = &self.current {
            let (from, to) = (cur.position.key()?, checkpoint.position.key()?);
            if to < from {
                return Err(CheckpointError::Backwards {
                    from: cur.position.clone(),
                    to: checkpoint.position,
                });
            }
            if to == from && cur.position.gtid == checkpoint.position.gtid {
                return Ok(());
            }
        }
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&serde_json::to_vec_pretty(&checkpoint).expect("serializable"))
                .map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        self.current = Some(checkpoint);
        Ok(())
    }

    /// Removes the checkpoint (used when an operator starts over).
    pub fn clear(&mut self) -> Result<(), CheckpointError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
        self.current = None;
        Ok(())
    }
}

/// A transaction boundary waiting for its operations to be acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Boundary {
    pub position: BinlogPosition,
    pub source_ts: u32,
}

/// Tracks which operations are still unacknowledged.
#[derive(Debug, Default)]
pub struct AckTracker {
    next_seq: u64,
    /// Sequence numbers of unacknowledged operations.
    pending: BTreeSet<u64>,
    boundaries: VecDeque<(u64, Boundary)>,
}

impl AckTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new operation and returns its sequence number.
    pub fn register(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq);
        seq
    }

    /// Records a transaction boundary after every operation registered so far.
    pub fn boundary(&mut self, boundary: Boundary) {
        self.boundaries.push_back((self.next_seq, boundary));
    }

    /// Marks operation `seq` as acknowledged.
    pub fn ack(&mut self, seq: u64) {
        self.pending.remove(&seq);
    }

    /// Number of operations not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The newest boundary whose operations are all acknowledged, removing it and every older
    /// one; `None` if no new boundary became safe.
    pub fn take_safe(&mut self) -> Option<Boundary> {
        let low = self.pending.first().copied().unwrap_or(self.next_seq);
        let mut safe = None;
        while let Some((seq, _)) = self.boundaries.front() {
            if *seq > low {
                break;
            }
            safe = self.boundaries.pop_front().map(|(_, b)| {
                crate::metrics::get().acknowledged(&b);
                b
            });
        }
        safe
    }
}

/// Writes a checkpoint whenever a new boundary becomes safe (at most every `min_interval`),
/// until `stop` turns true; then writes the last safe boundary and returns.
pub async fn commit_loop(
    tracker: &std::sync::Mutex<AckTracker>,
    acked: &tokio::sync::Notify,
    store: &mut CheckpointStore,
    min_interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), CheckpointError> {
    loop {
        let stopping = tokio::select! {
            _ = acked.notified() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let safe = tracker.lock().expect("tracker lock").take_safe();
        if let Some(b) = safe {
            let checkpoint = Checkpoint {
                position: b.position,
                source_ts: b.source_ts,
                written_at: crate::dead_letter::now_secs(),
            };
            crate::metrics::get().checkpointed(&checkpoint);
            store.save(checkpoint)?;
            tracing::debug!(position = %store.current().expect("just saved").position, "checkpoint");
        }
        if stopping {
            return Ok(());
        }
        // Batch fsyncs: acknowledgements arriving meanwhile are folded into the next save.
        tokio::time::sleep(min_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(file: u32, pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: format!("bin.{file:06}"),
            pos,
            gtid: None,
        }
    }

    fn cp(file: u32, p: u64) -> Checkpoint {
        Checkpoint {
            position: pos(file, p),
            source_ts: 1,
            written_at: 2,
        }
    }

    #[test]
    fn store_round_trips_and_refuses_to_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/checkpoint.json");
        let mut s = CheckpointStore::open(&path).unwrap();
        assert!(s.current().is_none());
        s.save(cp(2, 100)).unwrap();
        s.save(cp(3, 4)).unwrap();
        assert!(matches!(s.save(cp(2, 900)), Err(CheckpointError::Backwards { .. })));
        let reopened = CheckpointStore::open(&path).unwrap();
        assert_eq!(reopened.current(), Some(&cp(3, 4)));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let e = CheckpointStore::open(&path).err().unwrap().to_string();
        assert!(e.contains("corrupt") && e.contains("reindex"), "{e}");
    }

    #[test]
    fn boundary_waits_for_every_earlier_ack() {
        let mut t = AckTracker::new();
        let a = t.register();
        let b = t.register();
        t.boundary(Boundary {
            position: pos(1, 10),
            source_ts: 0,
        });
        let c = t.register();
        t.boundary(Boundary {
            position: pos(1, 20),
            source_ts: 0,
        });
        t.ack(b);
        t.ack(c);
        assert_eq!(t.take_safe(), None, "a is still pending");
        t.ack(a);
        assert_eq!(t.take_safe().unwrap().position, pos(1, 20));
        assert_eq!(t.take_safe(), None);
    }

    #[test]
    fn empty_transactions_are_safe_at_once() {
        let mut t = AckTracker::new();
        t.boundary(Boundary {
            position: pos(1, 10),
            source_ts: 0,
        });
        assert_eq!(t.take_safe().unwrap().position, pos(1, 10));
    }

    proptest! {
        // Whatever order acks arrive in, a released boundary never has an unacked op before it,
        // and once everything is acked the last boundary is released.
        #[test]
        fn released_boundaries_are_fully_acked(
            txn_sizes in proptest::collection::vec(0usize..5, 1..30),
            ack_order_seed in any::<u64>(),
        ) {
            let mut t = AckTracker::new();
            let mut boundary_seq = Vec::new();
            for (i, n) in txn_sizes.iter().enumerate() {
                for _ in 0..*n { t.register(); }
                t.boundary(Boundary { position: pos(1, i as u64 + 1), source_ts: 0 });
                boundary_seq.push(t.next_seq);
            }
            let total = t.next_seq;
            let mut order: Vec<u64> = (0..total).collect();
            let mut x = ack_order_seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut acked = std::collections::HashSet::new();
            let mut last = None;
            for s in order {
                t.ack(s);
                acked.insert(s);
                if let Some(b) = t.take_safe() {
                    let idx = b.position.pos as usize - 1;
                    for q in 0..boundary_seq[idx] { prop_assert!(acked.contains(&q)); }
                    last = Some(idx);
                }
            }
            if let Some(b) = t.take_safe() { last = Some(b.position.pos as usize - 1); }
            prop_assert_eq!(last, Some(txn_sizes.len() - 1));
        }
    }
}

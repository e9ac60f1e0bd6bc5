//! `cdc-indexer status`: where the indexer is, where the server is, and how far apart.
//!
//! Contract: read-only. It reads the checkpoint file and asks the source server for its current
//! binlog position and file list; it never writes anything. The lag in bytes is exact (sum of
//! binlog bytes between the two positions); the lag in seconds is the age of the last
//! checkpointed transaction's commit when the checkpoint is behind, else 0.

use serde::Serialize;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::Config;
use crate::position::{file_sequence, BinlogPosition};
use crate::source;

#[derive(Debug, Serialize)]
pub struct Status {
    pub checkpoint: Option<Checkpoint>,
    pub server: BinlogPosition,
    pub server_version: String,
    /// Binlog bytes between the checkpoint and the server's end.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<u64>,
    /// Oldest binlog file still on the server.
    pub oldest_binlog: Option<String>,
}

pub async fn gather(cfg: &Config) -> anyhow::Result<Status> {
    let store = CheckpointStore::open(&cfg.checkpoint_path())?;
    let mut conn = source::connect(&source::Endpoint::main(&cfg.source)).await?;
    let info = source::preflight(&mut conn).await?;
    let checkpoint = store.current().cloned();
    let lag_bytes = checkpoint
        .as_ref()
        .and_then(|c| bytes_between(&info.binlogs, &c.position, &info.position));
    let lag_seconds = checkpoint.as_ref().map(|c| {
        if lag_bytes == Some(0) {
            0
        } else {
            crate::dead_letter::now_secs().saturating_sub(c.source_ts as u64)
        }
    });
    Ok(Status {
        checkpoint,
        server: info.position,
        server_version: info.version,
        lag_bytes,
        lag_seconds,
        oldest_binlog: info.binlogs.first().map(|(f, _)| f.clone()),
    })
}

/// Bytes of binlog from `from` to `to`, given the server's file list with sizes.
pub fn bytes_between(files: &[(String, u64)], from: &BinlogPosition, to: &BinlogPosition) -> Option<u64> {
    let (fs, ts) = (file_sequence(&from.file).ok()?, file_sequence(&to.file).ok()?);
    if (fs, from.pos) >= (ts, to.pos) {
        return Some(0);
    }
    if fs == ts {
        return Some(to.pos - from.pos);
    }
    let mut total = 0;
    for (name, size) in files {
        let s = file_sequence(name).ok()?;
        if s == fs {
            total += size.saturating_sub(from.pos);
        } else if s > fs && s < ts {
            total += size;
        } else if s == ts {
            total += to.pos;
        }
    }
    Some(total)
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    match &s.checkpoint {
        Some(c) => out.push_str(&format!("checkpoint:     {}\n", c.position)),
        None => out.push_str("checkpoint:     none (the indexer has not completed a start yet)\n"),
    }
    out.push_str(&format!("server:         {} ({})\n", s.server, s.server_version));
    if let Some(b) = s.lag_bytes {
        out.push_str(&format!(
            "lag:            {b} bytes, {} s\n",
            s.lag_seconds.unwrap_or(0)
        ));
    }
    if let Some(o) = &s.oldest_binlog {
        out.push_str(&format!("oldest binlog:  {o}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(f: &str, pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: f.into(),
            pos,
            gtid: None,
        }
    }

    #[test]
    fn lag_spans_files() {
        let files = vec![
            ("b.000001".to_string(), 1000),
            ("b.000002".to_string(), 500),
            ("b.000003".to_string(), 300),
        ];
        assert_eq!(
            bytes_between(&files, &p("b.000001", 900), &p("b.000003", 200)),
            Some(100 + 500 + 200)
        );
        assert_eq!(
            bytes_between(&files, &p("b.000002", 100), &p("b.000002", 400)),
            Some(300)
        );
        assert_eq!(bytes_between(&files, &p("b.000003", 300), &p("b.000003", 300)), Some(0));
    }
}

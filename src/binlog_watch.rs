//! Polls the source server for its binlog end and file list, for lag and retention metrics.
//!
//! Contract: every [`POSITION_EVERY`] the server's current end (`SHOW MASTER STATUS`) is
//! reported to [`crate::metrics`], and every [`FILES_EVERY`] its binlog files with sizes
//! (`SHOW BINARY LOGS`); after each poll the derived gauges are refreshed. It needs only
//! `REPLICATION CLIENT`, uses its own connection, and never fails the indexer: errors drop the
//! connection and are retried at the next tick (logged once per failure streak). While it
//! cannot poll, the last known end stays in force, so the lag keeps counting up.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::watch;

use crate::source::{self, SourceError};

pub const POSITION_EVERY: Duration = Duration::from_secs(1);
pub const FILES_EVERY: Duration = Duration::from_secs(30);

/// Polls until `shutdown` turns true.
pub async fn run(endpoint: source::Endpoint, mariadb: bool, mut shutdown: watch::Receiver<bool>) {
    let m = crate::metrics::get();
    let mut conn: Option<mysql_async::Conn> = None;
    let mut tick = tokio::time::interval(POSITION_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_files: Option<tokio::time::Instant> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let poll = async {
            if conn.is_none() {
                conn = Some(source::connect(&endpoint).await?);
            }
            let c = conn.as_mut().expect("just connected");
            if last_files.is_none_or(|t| t.elapsed() >= FILES_EVERY) {
                let files: Vec<(String, u64)> = c
                    .query_map("SHOW BINARY LOGS", |row: mysql_async::Row| {
                        (
                            row.get::<String, _>(0).unwrap_or_default(),
                            row.get::<u64, _>(1).unwrap_or_default(),
                        )
                    })
                    .await?;
                m.server_binlogs(files);
                last_files = Some(tokio::time::Instant::now());
            }
            m.server_end(source::current_position(c, mariadb).await?);
            Ok::<(), SourceError>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), poll).await {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("binlog position polling resumed");
                }
                failing = false;
            }
            outcome => {
                conn = None;
                if !failing {
                    let error = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(%error, "cannot poll the server's binlog position; retrying");
                }
                failing = true;
            }
        }
        m.refresh();
    }
}

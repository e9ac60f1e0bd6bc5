//! The heartbeat table: an end-to-end probe of replication freshness (pt-heartbeat style).
//!
//! Contract:
//! * [`write_loop`] replaces this indexer's row (`id` = its `server_id`) of the configured table
//!   with the current time in milliseconds every second, creating the table first when the
//!   account may. Failures are counted and logged (once per failure streak) and retried; they
//!   never stop the indexer, and a heartbeat that is not written simply lets the heartbeat lag
//!   grow, which is the truth.
//! * [`HeartbeatTable::reading`] recognises this indexer's heartbeat row changes in the stream;
//!   the pipeline consumes them (they are never indexed) and ties each to its transaction's
//!   boundary, so the heartbeat lag moves only when everything before the heartbeat has been
//!   acknowledged by Elasticsearch. A stuck indexer therefore cannot look fresh, and an idle
//!   source keeps producing fresh heartbeats.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::watch;

use crate::change::RowChange;
use crate::value::Value;

/// Heartbeat period.
pub const PERIOD: Duration = Duration::from_secs(1);

/// `database.table` of the heartbeat table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatTable {
    pub database: String,
    pub table: String,
}

impl HeartbeatTable {
    /// Parses `db.table`; both parts must be plain identifiers (letters, digits, `_`, `$`).
    pub fn parse(s: &str) -> Option<Self> {
        let (d, t) = s.split_once('.')?;
        let ok = |p: &str| {
            !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        };
        (ok(d) && ok(t)).then(|| HeartbeatTable {
            database: d.into(),
            table: t.into(),
        })
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// `None`: not the heartbeat table. `Some(None)`: a heartbeat row that is not ours (another
    /// indexer's, or a delete). `Some(Some(ts_ms))`: our heartbeat written at `ts_ms`.
    pub fn reading(&self, change: &RowChange, server_id: u32) -> Option<Option<u64>> {
        if change.table.database != self.database || change.table.table != self.table {
            return None;
        }
        let after = change.after.as_ref()?;
        let col = |name: &str| change.table.column_index(name).and_then(|i| after.get(i));
        let as_u64 = |v: Option<&Value>| match v {
            Some(Value::UInt(n)) => Some(*n),
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        Some(match as_u64(col("id")) {
            Some(id) if id == server_id as u64 => as_u64(col("ts_ms")),
            _ => None,
        })
    }
}

/// Writes the heartbeat row every [`PERIOD`] until `shutdown` turns true.
pub async fn write_loop(
    endpoint: crate::source::Endpoint,
    table: HeartbeatTable,
    server_id: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = format!("`{}`.`{}`", table.database, table.table);
    let mut conn: Option<mysql_async::Conn> = None;
    let mut created = false;
    let mut failing = false;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let result = async {
            if conn.is_none() {
                conn = Some(crate::source::connect(&endpoint).await?);
            }
            let c = conn.as_mut().expect("just connected");
            if !created {
                // Allowed to fail (no CREATE privilege): the table may already exist.
                match c
                    .query_drop(format!(
                        "CREATE TABLE IF NOT EXISTS {name} (id INT UNSIGNED NOT NULL PRIMARY KEY, ts_ms BIGINT UNSIGNED NOT NULL)"
                    ))
                    .await
                {
                    Ok(()) => {}
                    Err(e) => tracing::debug!(error = %e, table = %name, "cannot create the heartbeat table; assuming it exists"),
                }
                created = true;
            }
            let write = c.exec_drop(
                format!("REPLACE INTO {name} (id, ts_ms) VALUES (?, ?)"),
                (server_id, crate::metrics::now_ms()),
            );
            tokio::time::timeout(PERIOD * 5, write)
                .await
                .map_err(|_| crate::source::SourceError::Stalled(PERIOD * 5))??;
            Ok::<(), crate::source::SourceError>(())
        }
        .await;
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(table = %name, "heartbeat writes resumed");
            }
            Ok(()) => {}
            Err(e) => {
                crate::metrics::get().heartbeat_write_failed();
                conn = None;
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, table = %name, "heartbeat write failed; retrying every second (the heartbeat lag grows meanwhile)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        assert_eq!(
            HeartbeatTable::parse("cdc.heartbeat"),
            Some(HeartbeatTable {
                database: "cdc".into(),
                table: "heartbeat".into()
            })
        );
        for bad in ["heartbeat", "a.b.c", ".x", "x.", "a`b.c", "a.b;drop"] {
            assert_eq!(HeartbeatTable::parse(bad), None, "{bad}");
        }
    }
}

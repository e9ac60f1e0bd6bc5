//! The binlog source: connects as a replica, checks the server, and streams row changes.
//!
//! Contract:
//! * Start-up checks fail fast, naming the fix: binary logging on, `binlog_format=ROW`,
//!   `binlog_row_image=FULL`, `binlog_row_metadata=FULL`, MariaDB `log_bin_compress=OFF`, the
//!   replication privileges, and (when resuming) that the checkpoint's binlog file is still on
//!   the server.
//! * Changes of tracked tables are emitted in binlog order, followed by a
//!   [`SourceEvent::Commit`] at every transaction boundary (XID, `COMMIT`, or a standalone
//!   statement such as DDL). Commits are the only positions ever checkpointed, because resuming
//!   inside a transaction is impossible (the table maps would be missing).
//! * Each change's version comes from its binlog coordinates (see [`crate::position`]) and is
//!   checked to increase; replays after a reconnect reproduce the same versions.
//! * A dropped connection, a server restart (the stream simply ends) or a stall (no event nor
//!   heartbeat for three heartbeat periods) leads to a reconnect with jittered backoff from the
//!   last commit emitted; the changes of a transaction cut off mid-way are emitted again, which
//!   is harmless because writes are idempotent.
//! * Events we cannot decode (MariaDB compressed events, encrypted binlogs, partial JSON
//!   updates) halt the source with an error; nothing is skipped silently.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, QueryEvent, RotateEvent, TransactionPayloadEvent};
use mysql_async::binlog::EventType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use tokio::sync::{mpsc, watch};

use crate::change::{RowChange, RowOp, SourceEvent};
use crate::config::{redact_url, SourceConfig, SourceTls, TlsMode};
use crate::decode::{DecodeError, RowDecoder, RowImage};
use crate::position::{file_sequence, BinlogPosition, Version, VersionError, VersionGuard};
use crate::secret::Secret;
use crate::tls::mysql_opts;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: mysql_async::Error },
    #[error("TLS to {url} failed: {reason}; {fix}")]
    Tls {
        url: String,
        reason: String,
        fix: &'static str,
    },
    #[error("{url} refused the login: {message}; check the user in source.url and its password (source.password_env / source.password_file)")]
    Login { url: String, message: String },
    #[error("source server check failed: {0}")]
    Misconfigured(String),
    #[error("binlog file {file} of the checkpoint is no longer on the server (oldest is {oldest}); the changes in between are lost to us: run a reindex (or delete the checkpoint to reload everything)")]
    Purged { file: String, oldest: String },
    #[error("missing privilege: {0}")]
    Privilege(String),
    #[error("cannot decode the binlog at {position}: {source}")]
    Decode { position: String, source: DecodeError },
    #[error("unsupported binlog event {kind} (type {code}) at {position}: {fix}")]
    Unsupported {
        kind: &'static str,
        code: u8,
        position: String,
        fix: &'static str,
    },
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("binlog stream error: {0}")]
    Stream(#[from] mysql_async::Error),
    #[error("the replication connection stalled: no event or heartbeat for {0:?}")]
    Stalled(Duration),
    #[error("the server closed the replication stream")]
    Ended,
}

impl SourceError {
    /// Whether reconnecting can help.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Stalled(_) | SourceError::Ended | SourceError::Connect { .. } => true,
            SourceError::Stream(e) => match e {
                mysql_async::Error::Io(_) => true,
                mysql_async::Error::Driver(_) => true,
                // 1236 = fatal error reading binlog (purged file, bad position, duplicate
                // server id): reconnecting would fail the same way.
                mysql_async::Error::Server(s) => !matches!(s.code, 1236 | 1227 | 1045 | 1044),
                _ => false,
            },
            _ => false,
        }
    }
}

/// What the server is, as learned by [`preflight`].
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub mariadb: bool,
    pub version: String,
    pub checksum: bool,
    /// Current end of the binlog.
    pub position: BinlogPosition,
    /// Binlog files on the server, oldest first, with sizes in bytes.
    pub binlogs: Vec<(String, u64)>,
}

/// Longest wait for a connection and the binlog dump request to be answered.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect: URL, password and TLS settings of one account.
#[derive(Clone)]
pub struct Endpoint {
    url: String,
    password: Option<Secret>,
    tls: SourceTls,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &redact_url(&self.url))
            .field("tls", &self.tls.mode)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The indexer's account (`source.url`).
    pub fn main(cfg: &SourceConfig) -> Self {
        Endpoint {
            url: cfg.url.clone(),
            password: cfg.password.clone(),
            tls: cfg.tls.clone(),
        }
    }

    /// The heartbeat writer's account (`source.heartbeat_url`, default the main one).
    pub fn heartbeat(cfg: &SourceConfig) -> Self {
        match cfg.heartbeat_url.as_str() {
            "" => Self::main(cfg),
            url => Endpoint {
                url: url.to_string(),
                password: cfg.heartbeat_password.clone(),
                tls: cfg.tls.clone(),
            },
        }
    }
}

pub async fn connect(ep: &Endpoint) -> Result<Conn, SourceError> {
    let shown = redact_url(&ep.url);
    let attempt = |plaintext: bool| async move {
        let opts = mysql_opts(&ep.url, ep.password.as_ref(), &ep.tls, plaintext).map_err(|e| SourceError::Connect {
            url: redact_url(&ep.url),
            source: mysql_async::Error::Url(e),
        })?;
        tokio::time::timeout(SETUP_TIMEOUT, Conn::new(opts))
            .await
            .map_err(|_| SourceError::Stalled(SETUP_TIMEOUT))?
            .map_err(|source| classify_connect_error(&ep.url, ep.tls.mode, source))
    };
    match attempt(false).await {
        Err(SourceError::Tls { reason, .. })
            if ep.tls.mode == TlsMode::Preferred && reason.contains("does not have this capability") =>
        {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(url = %shown, "the server offers no TLS; connecting in plaintext (source.tls.mode = \"preferred\")")
            });
            attempt(true).await
        }
        other => other,
    }
}

/// A TLS failure or refused login is fatal, with the fix named; anything else a retryable
/// connection error.
fn classify_connect_error(url: &str, mode: TlsMode, source: mysql_async::Error) -> SourceError {
    let text = crate::tls::chain(&source);
    let tls_error = matches!(&source, mysql_async::Error::Io(mysql_async::IoError::Tls(_)));
    if tls_error || crate::tls::tls_problem(&text).is_some() {
        return SourceError::Tls {
            url: redact_url(url),
            fix: crate::tls::mysql_fix(mode, &text),
            reason: text,
        };
    }
    if let mysql_async::Error::Server(s) = &source {
        if s.code == 1045 {
            return SourceError::Login {
                url: redact_url(url),
                message: s.message.clone(),
            };
        }
    }
    SourceError::Connect {
        url: redact_url(url),
        source,
    }
}

async fn global(conn: &mut Conn, name: &str) -> Result<Option<String>, SourceError> {
    match conn
        .query_first::<Option<String>, _>(format!("SELECT @@GLOBAL.{name}"))
        .await
    {
        Ok(v) => Ok(v.flatten()),
        Err(mysql_async::Error::Server(e)) if e.code == 1193 => Ok(None), // unknown variable
        Err(e) => Err(e.into()),
    }
}

/// The grant `SHOW BINARY LOGS` / `SHOW MASTER STATUS` need.
const MONITOR_GRANT: &str = "REPLICATION CLIENT (called BINLOG MONITOR on MariaDB 10.5 and later)";
/// The grant the binlog dump needs.
const DUMP_GRANT: &str = "REPLICATION SLAVE";

fn privilege_error(e: mysql_async::Error, what: &str, grant: &str) -> SourceError {
    match e {
        mysql_async::Error::Server(s) if matches!(s.code, 1227 | 1142 | 1044) => SourceError::Privilege(format!(
            "{what} was refused ({}): the indexer's user lacks {grant}; GRANT {} ON *.* TO it (README: Security)",
            s.message,
            grant.split(" (").next().unwrap_or(grant)
        )),
        other => other.into(),
    }
}

/// Fails when `SHOW GRANTS` proves the user cannot read the binlog, before anything is
/// loaded. Privileges that may come through a role are not second-guessed (the dump itself
/// still reports a refusal by grant name). The rows are never logged: they can hold a
/// password hash.
async fn check_dump_grant(conn: &mut Conn) -> Result<(), SourceError> {
    let Ok(rows) = conn.query::<String, _>("SHOW GRANTS").await else {
        return Ok(());
    };
    if !has_dump_grant(&rows) {
        return Err(SourceError::Privilege(format!(
            "the indexer's user lacks {DUMP_GRANT}, which reading the binary log needs: GRANT {DUMP_GRANT} ON *.* TO it (README: Security)"
        )));
    }
    Ok(())
}

/// Whether `SHOW GRANTS` rows give `REPLICATION SLAVE` on `*.*` (or may, through a role).
fn has_dump_grant(rows: &[String]) -> bool {
    rows.iter().any(|row| {
        let upper = row.to_ascii_uppercase();
        let Some(privs) = upper.strip_prefix("GRANT ") else {
            return false;
        };
        match privs.split_once(" ON ") {
            Some((privs, rest)) if rest.starts_with("*.* ") => privs.split(',').map(str::trim).any(|p| {
                matches!(
                    p,
                    "ALL PRIVILEGES" | "ALL" | "REPLICATION SLAVE" | "REPLICATION REPLICA"
                )
            }),
            Some(_) => false,
            None => true, // `GRANT role TO user`: the role may carry it
        }
    })
}

/// Checks the server's binlog settings and returns what the source needs to know.
pub async fn preflight(conn: &mut Conn) -> Result<ServerInfo, SourceError> {
    let version: String = conn.query_first("SELECT VERSION()").await?.unwrap_or_default();
    let mariadb = version.contains("MariaDB");
    let need = |name: &str, have: Option<String>, want: &str, fix: &str| -> Result<(), SourceError> {
        match have {
            Some(v) if v.eq_ignore_ascii_case(want) => Ok(()),
            other => Err(SourceError::Misconfigured(format!(
                "{name} is {} but must be {want}: {fix}",
                other.as_deref().unwrap_or("unset")
            ))),
        }
    };
    let log_bin = global(conn, "log_bin").await?;
    need(
        "log_bin",
        log_bin.map(|v| if v == "1" { "ON".into() } else { v }),
        "ON",
        "start the server with --log-bin",
    )?;
    need(
        "binlog_format",
        global(conn, "binlog_format").await?,
        "ROW",
        "set binlog_format=ROW in the server configuration",
    )?;
    need(
        "binlog_row_image",
        global(conn, "binlog_row_image").await?,
        "FULL",
        "set binlog_row_image=FULL (partial images cannot rebuild whole documents)",
    )?;
    need(
        "binlog_row_metadata",
        global(conn, "binlog_row_metadata").await?,
        "FULL",
        "set binlog_row_metadata=FULL (MySQL ≥ 8.0.1, MariaDB ≥ 10.5); column names in the binlog are what keeps ALTER TABLE from mis-mapping columns",
    )?;
    if mariadb {
        let compress = global(conn, "log_bin_compress").await?;
        if compress
            .as_deref()
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON"))
        {
            return Err(SourceError::Misconfigured(
                "log_bin_compress is ON; its compressed events cannot be decoded: set log_bin_compress=OFF".into(),
            ));
        }
    }
    let checksum = global(conn, "binlog_checksum")
        .await?
        .is_some_and(|v| !v.eq_ignore_ascii_case("NONE"));
    let binlogs: Vec<(String, u64)> = conn
        .query_map("SHOW BINARY LOGS", |row: mysql_async::Row| {
            (
                row.get::<String, _>(0).unwrap_or_default(),
                row.get::<u64, _>(1).unwrap_or_default(),
            )
        })
        .await
        .map_err(|e| privilege_error(e, "SHOW BINARY LOGS", MONITOR_GRANT))?;
    let position = current_position(conn, mariadb).await?;
    check_dump_grant(conn).await?;
    Ok(ServerInfo {
        mariadb,
        version,
        checksum,
        position,
        binlogs,
    })
}

/// The server's current binlog end (and GTID state).
pub async fn current_position(conn: &mut Conn, mariadb: bool) -> Result<BinlogPosition, SourceError> {
    let row: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(r) => r,
        // MySQL 8.4 renamed the statement.
        Err(mysql_async::Error::Server(e)) if e.code == 1064 => conn
            .query_first("SHOW BINARY LOG STATUS")
            .await
            .map_err(|e| privilege_error(e, "SHOW BINARY LOG STATUS", MONITOR_GRANT))?,
        Err(e) => return Err(privilege_error(e, "SHOW MASTER STATUS", MONITOR_GRANT)),
    };
    let row = row.ok_or_else(|| {
        SourceError::Misconfigured("SHOW MASTER STATUS returned nothing: binary logging is off".into())
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or_default();
    let gtid = if mariadb {
        global(conn, "gtid_binlog_pos").await?
    } else {
        global(conn, "gtid_executed").await?.map(|g| g.replace('\n', ""))
    }
    .filter(|g| !g.is_empty());
    Ok(BinlogPosition { file, pos, gtid })
}

/// Checks that `resume` can still be read from the server.
pub fn check_retention(info: &ServerInfo, resume: &BinlogPosition) -> Result<(), SourceError> {
    if info.binlogs.iter().any(|(f, _)| *f == resume.file) {
        return Ok(());
    }
    Err(SourceError::Purged {
        file: resume.file.clone(),
        oldest: info
            .binlogs
            .first()
            .map(|(f, _)| f.clone())
            .unwrap_or_else(|| "none".into()),
    })
}

/// The streaming half of the source.
pub struct Source {
    cfg: SourceConfig,
    info: ServerInfo,
    tracked: Box<dyn Fn(&str) -> bool + Send>,
    /// Where the stream (re)starts: the last transaction boundary emitted.
    resume: BinlogPosition,
}

/// Per-connection stream state.
struct StreamState {
    file: String,
    file_seq: u64,
    in_txn: bool,
    /// `Some((start, end))` offsets of the compressed transaction payload event whose inner
    /// events are being read.
    payload: Option<(u64, u64)>,
    payload_rows: u64,
    /// MariaDB GTID state, domain → (server id, sequence number).
    gtids: BTreeMap<u32, (u32, u64)>,
    /// Cache of tracked-or-not per qualified table name.
    tracked: HashMap<std::sync::Arc<str>, bool>,
    guard: VersionGuard,
}

impl Source {
    pub fn new(
        cfg: SourceConfig,
        info: ServerInfo,
        resume: BinlogPosition,
        tracked: Box<dyn Fn(&str) -> bool + Send>,
    ) -> Self {
        Source {
            cfg,
            info,
            tracked,
            resume,
        }
    }

    /// Streams until `shutdown` turns true or a fatal error occurs.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<SourceEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), SourceError> {
        let mut backoff = self.reconnect_backoff();
        loop {
            let result = tokio::select! {
                r = self.stream_once(&tx) => r,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            match result {
                Ok(()) => return Ok(()), // the pipeline hung up
                Err(e) if e.is_transient() => {
                    crate::metrics::get().source_connected(false);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    tracing::warn!(error = %e, resume = %self.resume, delay_ms = delay.as_millis() as u64, "binlog stream interrupted; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn reconnect_backoff(&self) -> impl Iterator<Item = Duration> {
        crate::retry::delays(
            Duration::from_millis(200),
            Duration::from_millis(self.cfg.reconnect_max_ms),
        )
    }

    async fn stream_once(&mut self, tx: &mpsc::Sender<SourceEvent>) -> Result<(), SourceError> {
        let heartbeat = self.cfg.heartbeat();
        // A frozen server accepts TCP connections but never answers: bound the whole set-up.
        let setup = async {
            let mut conn = connect(&Endpoint::main(&self.cfg)).await?;
            conn.query_drop(format!("SET @master_heartbeat_period = {}", heartbeat.as_nanos()))
                .await?;
            if self.info.mariadb {
                // Ask for GTID events and annotate events as MariaDB replicas get them.
                conn.query_drop("SET @mariadb_slave_capability = 4").await?;
            }
            let request = BinlogStreamRequest::new(self.cfg.server_id)
                .with_filename(self.resume.file.as_bytes())
                .with_pos(self.resume.pos);
            conn.get_binlog_stream(request)
                .await
                .map_err(|e| privilege_error(e, "the binlog dump", DUMP_GRANT))
        };
        let mut stream = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| SourceError::Stalled(SETUP_TIMEOUT))??;
        tracing::info!(position = %self.resume, "streaming binlog");
        crate::metrics::get().source_connected(true);

        let file_seq = file_sequence(&self.resume.file)?;
        let mut st = StreamState {
            file: self.resume.file.clone(),
            file_seq,
            in_txn: false,
            payload: None,
            payload_rows: 0,
            gtids: parse_mariadb_gtids(self.resume.gtid.as_deref()),
            tracked: HashMap::new(),
            guard: VersionGuard::new(None),
        };
        let mut decoder = RowDecoder::new();
        let stall = heartbeat * 3;
        loop {
            let event = match tokio::time::timeout(stall, stream.next()).await {
                Err(_) => return Err(SourceError::Stalled(stall)),
                Ok(None) => return Err(SourceError::Ended),
                Ok(Some(e)) => e?,
            };
            let outs = self.handle(&mut st, &mut decoder, &event)?;
            crate::metrics::get().source_read(st.file_seq, event.header().log_pos() as u64);
            for out in outs {
                if let SourceEvent::Commit { position, .. } = &out {
                    self.resume = position.clone();
                }
                if tx.send(out).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Turns one event into what the pipeline must see.
    fn handle(
        &self,
        st: &mut StreamState,
        decoder: &mut RowDecoder,
        event: &Event,
    ) -> Result<Vec<SourceEvent>, SourceError> {
        let header = event.header();
        let code = header.event_type_raw();
        let log_pos = header.log_pos() as u64;
        let at = |st: &StreamState| format!("{}:{}", st.file, log_pos);
        let mut out = Vec::new();
        let commit = |st: &StreamState, end: u64| SourceEvent::Commit {
            position: BinlogPosition {
                file: st.file.clone(),
                pos: end,
                gtid: format_mariadb_gtids(&st.gtids),
            },
            source_ts: header.timestamp(),
        };
        // Inner events of a compressed payload carry no usable position of their own.
        let inner = st.payload.is_some() && code != EventType::TRANSACTION_PAYLOAD_EVENT as u8;
        match code {
            c if c == EventType::ROTATE_EVENT as u8 => {
                let re = event
                    .read_event::<RotateEvent>()
                    .map_err(|e| self.decode_err(st, log_pos, e))?;
                let mut raw = re.name_raw();
                // An artificial ROTATE read before any format description still carries its
                // 4 checksum bytes at the end of the name: strip them when they are its CRC32.
                if log_pos == 0 && has_trailing_crc(event) {
                    raw = &raw[..raw.len() - 4];
                }
                let name = String::from_utf8_lossy(raw).into_owned();
                let seq = file_sequence(&name)?;
                if seq < st.file_seq {
                    return Err(VersionError::NotIncreasing {
                        previous: st.file_seq,
                        next: seq,
                        position: name,
                    }
                    .into());
                }
                if name != st.file {
                    decoder.clear();
                }
                st.file = name;
                st.file_seq = seq;
            }
            c if c == EventType::TRANSACTION_PAYLOAD_EVENT as u8 => {
                let tpe = event
                    .read_event::<TransactionPayloadEvent>()
                    .map_err(|e| self.decode_err(st, log_pos, e))?;
                // The client library decompresses the payload for us but ignores failures;
                // check here so a corrupt payload halts instead of vanishing.
                tpe.decompressed().map_err(|e| self.decode_err(st, log_pos, e))?;
                st.payload = Some((log_pos.saturating_sub(header.event_size() as u64), log_pos));
                st.payload_rows = 0;
            }
            c if c == EventType::QUERY_EVENT as u8 => {
                let q = event
                    .read_event::<QueryEvent>()
                    .map_err(|e| self.decode_err(st, log_pos, e))?;
                let text = q.query();
                let word = text.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" => st.in_txn = true,
                    "COMMIT" | "ROLLBACK" => {
                        st.in_txn = false;
                        self.end_payload(st, &mut out, log_pos, commit);
                    }
                    _ if !st.in_txn => {
                        // A standalone statement (DDL): its own transaction.
                        tracing::info!(position = %at(st), statement = %text.chars().take(200).collect::<String>(), "statement");
                        self.end_payload(st, &mut out, log_pos, commit);
                    }
                    _ => {}
                }
            }
            c if c == EventType::XID_EVENT as u8 => {
                st.in_txn = false;
                self.end_payload(st, &mut out, log_pos, commit);
            }
            c if c == EventType::TABLE_MAP_EVENT as u8 => {
                decoder.table_map(event).map_err(|source| SourceError::Decode {
                    position: at(st),
                    source,
                })?;
            }
            23..=25 | 30..=32 => {
                let table = decoder.rows_table(event).map_err(|source| SourceError::Decode {
                    position: at(st),
                    source,
                })?;
                let tracked = match st.tracked.get(table.qualified_name()) {
                    Some(t) => *t,
                    None => {
                        let t = (self.tracked)(table.qualified_name());
                        st.tracked.insert(table.qualified_arc(), t);
                        t
                    }
                };
                let rows_in_event;
                if tracked {
                    let (table, rows) = decoder.rows(event).map_err(|source| SourceError::Decode {
                        position: at(st),
                        source,
                    })?;
                    rows_in_event = rows.len() as u64;
                    let (event_start, first_row) = match (inner, st.payload) {
                        (true, Some((start, _))) => (start, st.payload_rows),
                        _ => (log_pos.saturating_sub(header.event_size() as u64), 0),
                    };
                    for (i, row) in rows.into_iter().enumerate() {
                        let version = Version::of_row(st.file_seq, event_start, first_row + i as u64)?;
                        let file = &st.file;
                        st.guard.check(version, || format!("{file}:{log_pos}"))?;
                        let (op, before, after) = match row {
                            RowImage::Insert(a) => (RowOp::Insert, None, Some(a)),
                            RowImage::Update { before, after } => (RowOp::Update, Some(before), Some(after)),
                            RowImage::Delete(b) => (RowOp::Delete, Some(b), None),
                        };
                        out.push(SourceEvent::Change(RowChange {
                            table: table.clone(),
                            op,
                            before,
                            after,
                            version,
                            source_ts: header.timestamp(),
                        }));
                    }
                } else {
                    // Rows of untracked tables still occupy version space in a payload.
                    rows_in_event = if inner {
                        decoder.rows(event).map(|(_, r)| r.len() as u64).unwrap_or(1)
                    } else {
                        0
                    };
                }
                if inner {
                    st.payload_rows += rows_in_event.max(1);
                }
            }
            39 => {
                return Err(SourceError::Unsupported {
                    kind: "PARTIAL_UPDATE_ROWS (JSON diff)",
                    code,
                    position: at(st),
                    fix: "set binlog_row_value_options='' (full JSON images)",
                })
            }
            // MariaDB events.
            162 => {
                let (domain, seq, flags) =
                    parse_mariadb_gtid(event.data()).map_err(|e| self.decode_err(st, log_pos, e))?;
                st.gtids.insert(domain, (header.server_id(), seq));
                // Without FL_STANDALONE the GTID event opens a transaction (it replaces BEGIN).
                st.in_txn = flags & 1 == 0;
            }
            163 => {
                if let Ok(list) = parse_mariadb_gtid_list(event.data()) {
                    for (domain, server, seq) in list {
                        st.gtids.insert(domain, (server, seq));
                    }
                }
            }
            164 => {
                return Err(SourceError::Unsupported {
                    kind: "START_ENCRYPTION",
                    code,
                    position: at(st),
                    fix: "binlog encryption is not supported; turn off encrypt_binlog",
                })
            }
            165..=171 => {
                return Err(SourceError::Unsupported {
                    kind: "MariaDB compressed event",
                    code,
                    position: at(st),
                    fix: "set log_bin_compress=OFF, then reindex the affected tables",
                })
            }
            _ => {}
        }
        Ok(out)
    }

    /// Emits the commit for a transaction that just ended, and leaves payload mode.
    fn end_payload(
        &self,
        st: &mut StreamState,
        out: &mut Vec<SourceEvent>,
        log_pos: u64,
        commit: impl Fn(&StreamState, u64) -> SourceEvent,
    ) {
        // Inside a payload the resume point is the end of the payload event.
        let end = match st.payload.take() {
            Some((_, end)) => end,
            None => log_pos,
        };
        out.push(commit(st, end));
    }

    fn decode_err(&self, st: &StreamState, log_pos: u64, e: std::io::Error) -> SourceError {
        SourceError::Decode {
            position: format!("{}:{}", st.file, log_pos),
            source: DecodeError::from(e),
        }
    }
}

/// Whether the last 4 bytes of `event`'s data are the CRC32 of the header and the rest.
fn has_trailing_crc(event: &Event) -> bool {
    let data = event.data();
    let Some(split) = data.len().checked_sub(4).filter(|s| *s > 8) else {
        return false;
    };
    let h = event.header();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h.timestamp().to_le_bytes());
    hasher.update(&[h.event_type_raw()]);
    hasher.update(&h.server_id().to_le_bytes());
    hasher.update(&h.event_size().to_le_bytes());
    hasher.update(&h.log_pos().to_le_bytes());
    hasher.update(&h.flags_raw().to_le_bytes());
    hasher.update(&data[..split]);
    hasher.finalize() == u32::from_le_bytes(data[split..].try_into().expect("4 bytes"))
}

/// MariaDB GTID_EVENT body: seq_no (8), domain_id (4), flags (1).
fn parse_mariadb_gtid(data: &[u8]) -> std::io::Result<(u32, u64, u8)> {
    if data.len() < 13 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "short MariaDB GTID event",
        ));
    }
    let seq = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let domain = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    Ok((domain, seq, data[12]))
}

/// MariaDB GTID_LIST_EVENT body: count (4, low 28 bits), then (domain 4, server 4, seq 8) each.
fn parse_mariadb_gtid_list(data: &[u8]) -> std::io::Result<Vec<(u32, u32, u64)>> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "short MariaDB GTID list event");
    let count = u32::from_le_bytes(data.get(0..4).ok_or_else(bad)?.try_into().expect("4 bytes")) & 0x0fff_ffff;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let b = data.get(4 + i * 16..4 + (i + 1) * 16).ok_or_else(bad)?;
        out.push((
            u32::from_le_bytes(b[0..4].try_into().expect("4")),
            u32::from_le_bytes(b[4..8].try_into().expect("4")),
            u64::from_le_bytes(b[8..16].try_into().expect("8")),
        ));
    }
    Ok(out)
}

fn parse_mariadb_gtids(s: Option<&str>) -> BTreeMap<u32, (u32, u64)> {
    let mut m = BTreeMap::new();
    for part in s.unwrap_or("").split(',') {
        let f: Vec<&str> = part.trim().split('-').collect();
        if let [d, s, n] = f[..] {
            if let (Ok(d), Ok(s), Ok(n)) = (d.parse(), s.parse(), n.parse()) {
                m.insert(d, (s, n));
            }
        }
    }
    m
}

fn format_mariadb_gtids(m: &BTreeMap<u32, (u32, u64)>) -> Option<String> {
    if m.is_empty() {
        return None;
    }
    Some(
        m.iter()
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dump_grant_is_found_in_show_grants() {
        let rows = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(has_dump_grant(&rows(&[
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`%` IDENTIFIED BY PASSWORD '*AB'"
        ])));
        assert!(has_dump_grant(&rows(&[
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"
        ])));
        assert!(has_dump_grant(&rows(&["GRANT `cdc_role` TO `cdc`@`%`"])));
        assert!(!has_dump_grant(&rows(&[
            "GRANT BINLOG MONITOR ON *.* TO `cdc`@`%`",
            "GRANT SELECT ON `shop`.`orders` TO `cdc`@`%`",
            "GRANT REPLICATION SLAVE ON `shop`.* TO `cdc`@`%`",
        ])));
        // MySQL 8.0 lists dynamic privileges on their own row.
        assert!(has_dump_grant(&rows(&[
            "GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `cdc`@`%`"
        ])));
    }

    #[test]
    fn mariadb_gtid_state_round_trips() {
        let m = parse_mariadb_gtids(Some("0-1-42,3-2-7"));
        assert_eq!(m.get(&0), Some(&(1, 42)));
        assert_eq!(format_mariadb_gtids(&m).as_deref(), Some("0-1-42,3-2-7"));
        assert_eq!(format_mariadb_gtids(&parse_mariadb_gtids(None)), None);
    }

    #[test]
    fn mariadb_gtid_events_parse() {
        let mut d = 42u64.to_le_bytes().to_vec();
        d.extend(3u32.to_le_bytes());
        d.push(1);
        assert_eq!(parse_mariadb_gtid(&d).unwrap(), (3, 42, 1));
        assert!(parse_mariadb_gtid(&d[..5]).is_err());
        let mut l = 1u32.to_le_bytes().to_vec();
        l.extend(0u32.to_le_bytes());
        l.extend(1u32.to_le_bytes());
        l.extend(9u64.to_le_bytes());
        assert_eq!(parse_mariadb_gtid_list(&l).unwrap(), vec![(0, 1, 9)]);
        assert!(parse_mariadb_gtid_list(&l[..10]).is_err());
    }
}

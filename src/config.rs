//! Configuration: one TOML file, every key overridable from the environment.
//!
//! Contract: [`Config::load`] either returns a configuration that passed [`Config::validate`] or
//! an error naming the offending key and the constraint it broke. Unknown keys are rejected
//! (`deny_unknown_fields`) so a typo can never silently fall back to a default.
//!
//! Environment overrides: `CDC_<SECTION>__<KEY>` sets `<section>.<key>` (e.g.
//! `CDC_SINK__MAX_IN_FLIGHT=8`; array items by index: `CDC_TABLES__0__INDEX=orders`). Values are
//! read as TOML literals when they parse as one (numbers, booleans, arrays), else as strings.
//! `CDC_MYSQL_URL` and `CDC_ES_URL` are shorthands for `source.url` and `sink.url`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("environment override {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("config key `{key}`: {constraint}")]
    Invalid { key: String, constraint: String },
}

fn invalid(key: impl Into<String>, constraint: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        constraint: constraint.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub sink: SinkConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Which tables feed which index.
    pub tables: Vec<TableMapping>,
    /// Customer-service search: the tokenizer's user dictionary and the indexes queried.
    #[serde(default)]
    pub search: SearchConfig,
    /// Consistency checker: `cdc-indexer check` and the scheduled check inside `run`.
    #[serde(default)]
    pub check: CheckConfig,
    /// The transform stage between source and sink.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `cdc-indexer reindex`: backfill chunking, throttle and how long the old index is kept.
    #[serde(default)]
    pub reindex: ReindexConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Threads rendering, masking and tokenizing row changes in parallel (output stays in binlog
    /// order). Default: the number of available cores.
    #[serde(default = "defaults::transform_workers")]
    pub transform_workers: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            transform_workers: defaults::transform_workers(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `mysql://user:password@host:port` of the primary (never a lagging replica).
    pub url: String,
    /// Replica server id; must be unique among the primary's replicas.
    #[serde(default = "defaults::server_id")]
    pub server_id: u32,
    /// Time zone of DATETIME values at the source, as a fixed offset `+08:00`.
    #[serde(default = "defaults::time_zone")]
    pub time_zone: String,
    /// Heartbeat period the server is asked for, in milliseconds. Three missed periods mean a
    /// stalled connection, which is dropped and re-opened.
    #[serde(default = "defaults::heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Load the existing rows before streaming when the indexer starts without a checkpoint.
    #[serde(default = "defaults::yes")]
    pub initial_load: bool,
    /// Rows per primary-key chunk during the initial load.
    #[serde(default = "defaults::snapshot_chunk_rows")]
    pub snapshot_chunk_rows: u64,
    /// Upper bound for the reconnect backoff, in milliseconds.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// `database.table` the indexer writes a heartbeat row to every second (replication lag
    /// measured end to end); empty disables it.
    #[serde(default)]
    pub heartbeat_table: String,
    /// Account for the heartbeat writes (needs INSERT/DELETE on the table); default: `url`.
    #[serde(default)]
    pub heartbeat_url: String,
    /// Environment variable holding the password of `url`'s user (replaces any password in
    /// the URL). See README "Security".
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding that password (Docker-secret style; trailing whitespace ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password of `heartbeat_url`'s user.
    #[serde(default)]
    pub heartbeat_password_env: Option<String>,
    /// File holding the password of `heartbeat_url`'s user.
    #[serde(default)]
    pub heartbeat_password_file: Option<PathBuf>,
    /// TLS to the server (`[source.tls]`).
    #[serde(default)]
    pub tls: SourceTls,
    /// Read from `password_env` / `password_file` by [`Config::parse`].
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Read from `heartbeat_password_env` / `heartbeat_password_file` by [`Config::parse`].
    #[serde(skip)]
    pub heartbeat_password: Option<Secret>,
}

/// How the connection to MySQL/MariaDB is secured (the names of MySQL's `--ssl-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plaintext.
    Disabled,
    /// TLS without certificate checks when the server offers it, else plaintext (an active
    /// attacker can strip it: use `verify_identity` in production).
    #[default]
    Preferred,
    /// TLS or fail; the certificate is not checked.
    Required,
    /// TLS with the certificate checked against `ca_file` (else the public roots); any host name.
    VerifyCa,
    /// `verify_ca`, and the certificate must name the host of `url`.
    VerifyIdentity,
}

/// `[source.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTls {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the CA(s) that signed the server's certificate (then the only roots trusted).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that `REQUIRE X509`; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `[sink.tls]`; TLS itself is on when `sink.url` is `https://`, always with the certificate
/// and host name verified.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTls {
    /// PEM file of the CA(s) that signed the cluster's certificate (added to the public roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (PKI realm or TLS client authentication); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("url", &redact_url(&self.url))
            .field("server_id", &self.server_id)
            .field("time_zone", &self.time_zone)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("initial_load", &self.initial_load)
            .field("heartbeat_table", &self.heartbeat_table)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Elasticsearch / OpenSearch base URL.
    pub url: String,
    /// Close a bulk request at this many documents.
    #[serde(default = "defaults::batch_max_docs")]
    pub batch_max_docs: usize,
    /// Close a bulk request at this many bytes of NDJSON.
    #[serde(default = "defaults::batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Send a partial batch after this many milliseconds.
    #[serde(default = "defaults::linger_ms")]
    pub linger_ms: u64,
    /// Most bulk requests in flight at once; documents are partitioned by `_id` across this many
    /// lanes. The number actually allowed adapts between `min_in_flight` and this (AIMD).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Fewest bulk requests in flight the adaptive limit may fall to under pushback.
    #[serde(default = "defaults::min_in_flight")]
    pub min_in_flight: usize,
    /// A bulk answer slower than this multiple of the usual latency counts as pushback.
    #[serde(default = "defaults::latency_factor")]
    pub latency_factor: f64,
    /// Timeout of one bulk request, in milliseconds.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// First retry delay, in milliseconds.
    #[serde(default = "defaults::retry_min_ms")]
    pub retry_min_ms: u64,
    /// Retry delay cap, in milliseconds. Transient failures are retried without limit.
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
    /// Row changes buffered between stages (bounds memory).
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
    /// Basic-auth user; its password comes from `password_env` or `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the basic-auth password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the basic-auth password (Docker-secret style).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding an API key: the `encoded` value Elasticsearch returns, or
    /// `id:api_key`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the API key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// TLS settings for an `https://` URL (`[sink.tls]`).
    #[serde(default)]
    pub tls: SinkTls,
    /// Read from `password_env` / `password_file` by [`Config::parse`].
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Read from `api_key_env` / `api_key_file` by [`Config::parse`].
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("url", &redact_url(&self.url))
            .field("batch_max_docs", &self.batch_max_docs)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("linger_ms", &self.linger_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("min_in_flight", &self.min_in_flight)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("api_key", &self.api_key)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for the checkpoint and the dead-letter file.
    #[serde(default = "defaults::state_dir")]
    pub dir: PathBuf,
    /// Size in bytes at which the dead-letter file is sealed into a segment and a new one begun.
    #[serde(default = "defaults::dead_letter_segment_bytes")]
    pub dead_letter_segment_bytes: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: defaults::state_dir(),
            dead_letter_segment_bytes: defaults::dead_letter_segment_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `cdc_indexer=debug`.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default = "defaults::log_format")]
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::log_level(),
            format: defaults::log_format(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// `ip:port` to listen on; `""` disables the endpoint.
    #[serde(default = "defaults::metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: defaults::metrics_listen(),
        }
    }
}

impl MetricsConfig {
    /// The address to serve on, `None` when disabled.
    pub fn address(&self) -> Option<&str> {
        (self.enabled && !self.listen.is_empty()).then_some(self.listen.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// Regex matched against the whole `database.table` name, so sharded tables
    /// (`shop\.orders_\d+`) can feed one index.
    pub source: String,
    /// Target index alias; the indexer creates `<index>_v1` behind it on first start.
    pub index: String,
    /// Index body (settings + mappings) used when the index is created.
    pub mapping: PathBuf,
    /// Columns forming `_id` (joined with `:`); default: the table's primary key.
    #[serde(default)]
    pub id_columns: Vec<String>,
    /// Keep only these columns (default: all).
    #[serde(default)]
    pub include: Vec<String>,
    /// Drop these columns.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Text columns holding JSON (MariaDB stores JSON as LONGTEXT): indexed as JSON objects.
    #[serde(default)]
    pub json_columns: Vec<String>,
    /// Rename columns: `{ column = "field" }`.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Phone columns: replaced by `<col>_masked`, `<col>_last4` and `<col>_hash` (keyed HMAC);
    /// the plaintext is never indexed. Needs `phone_hash_key_env` or `phone_hash_key_file`.
    #[serde(default)]
    pub phone_columns: Vec<String>,
    /// Free-text or JSON columns in which any phone number is replaced by its masked form.
    #[serde(default)]
    pub scan_columns: Vec<String>,
    /// Environment variable holding the phone hash key (at least 16 bytes).
    #[serde(default)]
    pub phone_hash_key_env: Option<String>,
    /// File holding the phone hash key (trailing whitespace ignored; at least 16 bytes).
    #[serde(default)]
    pub phone_hash_key_file: Option<PathBuf>,
    /// Version label of the key, written to `<col>_hash_key_id` (1–32 of `A-Za-z0-9_-`).
    #[serde(default)]
    pub phone_hash_key_id: Option<String>,
    /// In `scan_columns`, also mask landlines with an area code (`0571-****6666`).
    #[serde(default)]
    pub mask_landlines: bool,
    /// In `scan_columns`, also mask 18-digit resident ID numbers (last 4 kept).
    #[serde(default)]
    pub mask_id_numbers: bool,
    /// In `scan_columns`, also mask e-mail local parts (`z***@example.com`).
    #[serde(default)]
    pub mask_emails: bool,
    /// Fields (or dotted paths into JSON, `items.title`) that get `<field>_tokens`: jieba
    /// search-mode words joined by spaces, for a `whitespace`-analyzed field.
    #[serde(default)]
    pub token_fields: Vec<String>,
    /// Fields that get `<field>_pinyin` (`zhang san`) and `<field>_initials` (`zs`).
    #[serde(default)]
    pub pinyin_fields: Vec<String>,
    /// Largest indexed field, in bytes; larger ones are handled per `oversize` and named in
    /// the document's `oversized_fields`.
    #[serde(default = "defaults::max_field_bytes")]
    pub max_field_bytes: usize,
    /// `truncate` (text cut at a character boundary; JSON values dropped) or `drop`.
    #[serde(default)]
    pub oversize: Oversize,
    /// The key read from `phone_hash_key_env` / `phone_hash_key_file` by [`Config::parse`].
    #[serde(skip)]
    pub phone_hash_key: Option<crate::mask::HashKey>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// jieba user dictionary (`word [frequency] [tag]` per line), loaded once at start by the
    /// indexer (for `token_fields`) and by `cdc-indexer search` (for query text).
    #[serde(default)]
    pub user_dict: Option<PathBuf>,
    /// Alias of the orders index `cdc-indexer search` queries.
    #[serde(default = "defaults::orders_index")]
    pub orders_index: String,
    /// Alias of the event index holding each order's timeline (field `order_id`).
    #[serde(default = "defaults::events_index")]
    pub events_index: String,
    /// Fields whose `_tokens` Chinese query text is matched against.
    #[serde(default = "defaults::text_fields")]
    pub text_fields: Vec<String>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            user_dict: None,
            orders_index: defaults::orders_index(),
            events_index: defaults::events_index(),
            text_fields: defaults::text_fields(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// `run` performs a sampling check every this many seconds; 0 disables the scheduled check.
    #[serde(default)]
    pub interval_seconds: u64,
    /// Primary keys sampled per table (scheduled check, and `check` without `--full`).
    #[serde(default = "defaults::check_sample_rows")]
    pub sample_rows: usize,
    /// Whether the scheduled check re-indexes the differences it confirms.
    #[serde(default = "defaults::yes")]
    pub repair: bool,
    /// Rows per primary-key range compared at once in full mode (bounds memory).
    #[serde(default = "defaults::check_range_rows")]
    pub range_rows: u64,
    /// How long, in milliseconds, a re-check waits for the indexer's checkpoint to pass the
    /// position a differing row was read at; differences still waiting are reported unverified.
    #[serde(default = "defaults::check_settle_timeout_ms")]
    pub settle_timeout_ms: u64,
    /// Re-checks of a row that changed again since it was read, before it is reported as
    /// unsettled (still changing) rather than compared.
    #[serde(default = "defaults::check_recheck_rounds")]
    pub recheck_rounds: u32,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            interval_seconds: 0,
            sample_rows: defaults::check_sample_rows(),
            repair: true,
            range_rows: defaults::check_range_rows(),
            settle_timeout_ms: defaults::check_settle_timeout_ms(),
            recheck_rounds: defaults::check_recheck_rounds(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReindexConfig {
    /// Rows per primary-key chunk of the backfill (each chunk is one short consistent snapshot).
    #[serde(default = "defaults::reindex_chunk_rows")]
    pub chunk_rows: u64,
    /// Backfill rate limit in rows per second, to protect the primary; 0 means unlimited.
    #[serde(default)]
    pub rows_per_sec: u64,
    /// `index.gc_deletes` while the reindex job writes an index (an Elasticsearch time value such
    /// as `6h`): delete tombstones must outlive the job's slowest write of an older version.
    #[serde(default = "defaults::reindex_gc_deletes")]
    pub gc_deletes: String,
    /// Hours the previous index is kept for `reindex --rollback` after the swap; a running
    /// indexer deletes it afterwards (as `reindex --finish` does at once).
    #[serde(default = "defaults::reindex_retention_hours")]
    pub retention_hours: u64,
    /// Replica server id of the reindex job's own binlog stream; 0 means `source.server_id + 1`.
    #[serde(default)]
    pub server_id: u32,
}

impl Default for ReindexConfig {
    fn default() -> Self {
        ReindexConfig {
            chunk_rows: defaults::reindex_chunk_rows(),
            rows_per_sec: 0,
            gc_deletes: defaults::reindex_gc_deletes(),
            retention_hours: defaults::reindex_retention_hours(),
            server_id: 0,
        }
    }
}

impl ReindexConfig {
    fn validate(&self, source_server_id: u32) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.chunk_rows) {
            return Err(invalid("reindex.chunk_rows", "must be between 1 and 100000 rows"));
        }
        let time_value = Regex::new(r"^[1-9][0-9]*(ms|s|m|h|d)$").expect("regex");
        if !time_value.is_match(&self.gc_deletes) {
            return Err(invalid(
                "reindex.gc_deletes",
                "must be a positive Elasticsearch time value such as 30m, 6h or 1d",
            ));
        }
        if self.server_id != 0 && self.server_id == source_server_id {
            return Err(invalid(
                "reindex.server_id",
                "must differ from source.server_id (the server drops one of two replicas with the same id)",
            ));
        }
        Ok(())
    }

    /// The replica id of the reindex job's binlog stream.
    pub fn stream_server_id(&self, source_server_id: u32) -> u32 {
        match self.server_id {
            0 => source_server_id.wrapping_add(1).max(1),
            id => id,
        }
    }
}

/// What to do with a field larger than `max_field_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    #[default]
    Truncate,
    Drop,
}

mod defaults {
    use std::path::PathBuf;
    pub fn max_field_bytes() -> usize {
        1024 * 1024
    }
    pub fn server_id() -> u32 {
        4242
    }
    pub fn time_zone() -> String {
        "+08:00".into()
    }
    pub fn heartbeat_ms() -> u64 {
        1_000
    }
    pub fn yes() -> bool {
        true
    }
    pub fn snapshot_chunk_rows() -> u64 {
        5_000
    }
    pub fn reconnect_max_ms() -> u64 {
        30_000
    }
    pub fn batch_max_docs() -> usize {
        2_000
    }
    pub fn batch_max_bytes() -> usize {
        8 * 1024 * 1024
    }
    pub fn linger_ms() -> u64 {
        50
    }
    pub fn max_in_flight() -> usize {
        4
    }
    pub fn min_in_flight() -> usize {
        1
    }
    pub fn latency_factor() -> f64 {
        4.0
    }
    pub fn request_timeout_ms() -> u64 {
        60_000
    }
    pub fn retry_min_ms() -> u64 {
        100
    }
    pub fn retry_max_ms() -> u64 {
        30_000
    }
    pub fn queue_capacity() -> usize {
        10_000
    }
    pub fn dead_letter_segment_bytes() -> u64 {
        crate::dead_letter::SEGMENT_BYTES
    }
    pub fn transform_workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from("state")
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn log_format() -> String {
        "text".into()
    }
    pub fn orders_index() -> String {
        "orders".into()
    }
    pub fn events_index() -> String {
        "event_log".into()
    }
    pub fn text_fields() -> Vec<String> {
        vec!["buyer_name".into(), "address".into()]
    }
    pub fn check_sample_rows() -> usize {
        1_000
    }
    pub fn check_range_rows() -> u64 {
        5_000
    }
    pub fn check_settle_timeout_ms() -> u64 {
        60_000
    }
    pub fn check_recheck_rounds() -> u32 {
        5
    }
    pub fn reindex_chunk_rows() -> u64 {
        2_000
    }
    pub fn reindex_gc_deletes() -> String {
        "6h".into()
    }
    pub fn reindex_retention_hours() -> u64 {
        72
    }
    pub fn metrics_listen() -> String {
        "127.0.0.1:9187".into()
    }
}

impl Config {
    /// Reads `path`, applies environment overrides from `env` and validates the result.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), env)
    }

    /// Parses TOML text (named `origin` in errors), applies overrides and validates.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.into(),
            source,
        })?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        for (var, value) in &env {
            apply_override(&mut tree, var, value)?;
        }
        let mut config: Config = toml::Table::try_into(tree).map_err(|source| ConfigError::Parse {
            path: format!("{origin} (with environment overrides)"),
            source,
        })?;
        config.validate()?;
        config.read_phone_hash_keys(&env)?;
        config.read_secrets(&env)?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.source.url.starts_with("mysql://")) {
            return Err(invalid("source.url", "must be a mysql:// URL"));
        }
        if self.source.server_id == 0 {
            return Err(invalid(
                "source.server_id",
                "must be a non-zero id unique among the server's replicas",
            ));
        }
        parse_offset(&self.source.time_zone)
            .ok_or_else(|| invalid("source.time_zone", "must be a fixed UTC offset like +08:00 or -05:30"))?;
        if !(100..=60_000).contains(&self.source.heartbeat_ms) {
            return Err(invalid(
                "source.heartbeat_ms",
                "must be between 100 and 60000 milliseconds",
            ));
        }
        self.reindex.validate(self.source.server_id)?;
        if self.source.snapshot_chunk_rows == 0 {
            return Err(invalid("source.snapshot_chunk_rows", "must be at least 1"));
        }
        if !(self.sink.url.starts_with("http://") || self.sink.url.starts_with("https://")) {
            return Err(invalid("sink.url", "must be an http:// or https:// URL"));
        }
        if !(1..=100_000).contains(&self.sink.batch_max_docs) {
            return Err(invalid("sink.batch_max_docs", "must be between 1 and 100000"));
        }
        if !(1024..=100 * 1024 * 1024).contains(&self.sink.batch_max_bytes) {
            return Err(invalid("sink.batch_max_bytes", "must be between 1 KiB and 100 MiB"));
        }
        if !(1..=64).contains(&self.sink.max_in_flight) {
            return Err(invalid("sink.max_in_flight", "must be between 1 and 64"));
        }
        if !(1..=self.sink.max_in_flight).contains(&self.sink.min_in_flight) {
            return Err(invalid(
                "sink.min_in_flight",
                "must be between 1 and sink.max_in_flight",
            ));
        }
        if !(self.sink.latency_factor >= 1.5 && self.sink.latency_factor <= 100.0) {
            return Err(invalid("sink.latency_factor", "must be between 1.5 and 100"));
        }
        if self.sink.request_timeout_ms < 100 {
            return Err(invalid("sink.request_timeout_ms", "must be at least 100 milliseconds"));
        }
        if self.sink.retry_min_ms == 0 || self.sink.retry_max_ms < self.sink.retry_min_ms {
            return Err(invalid(
                "sink.retry_max_ms",
                "retry_min_ms must be > 0 and retry_max_ms >= retry_min_ms",
            ));
        }
        if self.state.dead_letter_segment_bytes < 4096 {
            return Err(invalid(
                "state.dead_letter_segment_bytes",
                "must be at least 4096 bytes",
            ));
        }
        if self.sink.queue_capacity == 0 {
            return Err(invalid("sink.queue_capacity", "must be at least 1"));
        }
        if !(1..=256).contains(&self.pipeline.transform_workers) {
            return Err(invalid("pipeline.transform_workers", "must be between 1 and 256"));
        }
        if !self.source.heartbeat_table.is_empty()
            && crate::heartbeat::HeartbeatTable::parse(&self.source.heartbeat_table).is_none()
        {
            return Err(invalid(
                "source.heartbeat_table",
                "must be `database.table` with plain identifiers (letters, digits, _ and $), or \"\" to disable",
            ));
        }
        if !self.source.heartbeat_url.is_empty() && !self.source.heartbeat_url.starts_with("mysql://") {
            return Err(invalid(
                "source.heartbeat_url",
                "must be a mysql:// URL, or \"\" to use source.url",
            ));
        }
        if let Some(addr) = self.metrics.address() {
            addr.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    "must be ip:port like 127.0.0.1:9187, or \"\" to disable the endpoint",
                )
            })?;
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        if self.search.orders_index.is_empty() || self.search.events_index.is_empty() {
            return Err(invalid(
                "search.orders_index",
                "orders_index and events_index must name index aliases",
            ));
        }
        if self.search.text_fields.iter().any(String::is_empty) {
            return Err(invalid("search.text_fields", "field names must be non-empty"));
        }
        self.check.validate()?;
        self.validate_security()?;
        if self.tables.is_empty() {
            return Err(invalid("tables", "at least one table mapping is required"));
        }
        for (i, t) in self.tables.iter().enumerate() {
            let key = |k: &str| format!("tables[{i}].{k}");
            if !(1024..=64 * 1024 * 1024).contains(&t.max_field_bytes) {
                return Err(invalid(key("max_field_bytes"), "must be between 1024 bytes and 64 MiB"));
            }
            Regex::new(&format!("^(?:{})$", t.source))
                .map_err(|e| invalid(key("source"), format!("is not a valid regex: {e}")))?;
            if t.index.is_empty()
                || t.index != t.index.to_lowercase()
                || t.index.starts_with(['_', '-', '+'])
                || t.index
                    .contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':'])
            {
                return Err(invalid(
                    key("index"),
                    "must be a valid lowercase Elasticsearch index name",
                ));
            }
            if !t.include.is_empty() && !t.exclude.is_empty() {
                return Err(invalid(key("include"), "use either include or exclude, not both"));
            }
            t.validate_search_fields(&key)?;
        }
        Ok(())
    }

    /// Reads each table's phone hash key from its environment variable (looked up in `env`,
    /// the same variables the overrides came from) or file. Never puts the key in an error.
    fn read_phone_hash_keys(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        for (i, t) in self.tables.iter_mut().enumerate() {
            if t.phone_columns.is_empty() {
                continue;
            }
            let (k, bytes) = if let Some(var) = &t.phone_hash_key_env {
                let k = format!("tables[{i}].phone_hash_key_env");
                match env.iter().rev().find(|(v, _)| v == var) {
                    Some((_, value)) if !value.is_empty() => (k, value.as_bytes().to_vec()),
                    _ => return Err(invalid(k, format!("environment variable {var} is not set or empty"))),
                }
            } else if let Some(path) = &t.phone_hash_key_file {
                let k = format!("tables[{i}].phone_hash_key_file");
                let mut bytes =
                    std::fs::read(path).map_err(|e| invalid(&k, format!("cannot read {}: {e}", path.display())))?;
                while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                    bytes.pop();
                }
                (k, bytes)
            } else {
                unreachable!("validate() requires a key source when phone_columns is set")
            };
            if bytes.len() < crate::mask::HashKey::MIN_LEN {
                return Err(invalid(
                    k,
                    format!(
                        "the phone hash key must be at least {} bytes",
                        crate::mask::HashKey::MIN_LEN
                    ),
                ));
            }
            t.phone_hash_key = Some(crate::mask::HashKey::new(&bytes, t.phone_hash_key_id.clone()));
        }
        Ok(())
    }

    /// Checks the TLS and credential keys (files are read later, by `read_secrets`).
    fn validate_security(&self) -> Result<(), ConfigError> {
        let tls = &self.source.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(invalid("source.tls.cert_file", "cert_file and key_file go together"));
        }
        match tls.mode {
            TlsMode::Disabled if tls.ca_file.is_some() || tls.cert_file.is_some() => {
                return Err(invalid(
                    "source.tls.mode",
                    "is \"disabled\" but TLS files are set: choose verify_identity (or remove the files)",
                ))
            }
            TlsMode::Preferred | TlsMode::Required if tls.ca_file.is_some() => {
                return Err(invalid(
                    "source.tls.ca_file",
                    "is only used by mode \"verify_ca\" or \"verify_identity\"; set one of them so the certificate is checked",
                ))
            }
            _ => {}
        }
        let sink_tls = &self.sink.tls;
        if sink_tls.cert_file.is_some() != sink_tls.key_file.is_some() {
            return Err(invalid("sink.tls.cert_file", "cert_file and key_file go together"));
        }
        if (sink_tls.ca_file.is_some() || sink_tls.cert_file.is_some()) && !self.sink.url.starts_with("https://") {
            return Err(invalid("sink.tls.ca_file", "TLS files need an https:// sink.url"));
        }
        let sink = &self.sink;
        let has_password = sink.password_env.is_some() || sink.password_file.is_some();
        let has_api_key = sink.api_key_env.is_some() || sink.api_key_file.is_some();
        if has_password && sink.username.as_deref().unwrap_or("").is_empty() {
            return Err(invalid(
                "sink.username",
                "a password is configured, so a user name is needed",
            ));
        }
        if has_api_key && sink.username.is_some() {
            return Err(invalid(
                "sink.api_key_env",
                "use either an API key or username/password, not both",
            ));
        }
        let pairs: [(&str, bool, bool); 4] = [
            (
                "source.password_env",
                self.source.password_env.is_some(),
                self.source.password_file.is_some(),
            ),
            (
                "source.heartbeat_password_env",
                self.source.heartbeat_password_env.is_some(),
                self.source.heartbeat_password_file.is_some(),
            ),
            (
                "sink.password_env",
                sink.password_env.is_some(),
                sink.password_file.is_some(),
            ),
            (
                "sink.api_key_env",
                sink.api_key_env.is_some(),
                sink.api_key_file.is_some(),
            ),
        ];
        if let Some((key, _, _)) = pairs.iter().find(|(_, env, file)| *env && *file) {
            let file_key = key.replace("_env", "_file");
            return Err(invalid(*key, format!("set either {key} or {file_key}, not both")));
        }
        Ok(())
    }

    /// Reads the passwords and API key named by the `…_env` / `…_file` keys (see
    /// [`crate::secret`]) and checks the TLS files are readable; errors never hold a secret.
    fn read_secrets(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        let read = |key: &str, var: &Option<String>, file: &Option<PathBuf>| {
            crate::secret::read(var.as_deref(), file.as_deref(), env).map_err(|c| invalid(key, c))
        };
        let s = &self.source;
        let password = read("source.password_env", &s.password_env, &s.password_file)?;
        let heartbeat_password = read(
            "source.heartbeat_password_env",
            &s.heartbeat_password_env,
            &s.heartbeat_password_file,
        )?;
        let k = &self.sink;
        let sink_password = read("sink.password_env", &k.password_env, &k.password_file)?;
        let api_key = read("sink.api_key_env", &k.api_key_env, &k.api_key_file)?;
        if k.username.is_some() && sink_password.is_none() {
            return Err(invalid(
                "sink.password_env",
                "sink.username is set: give its password through sink.password_env or sink.password_file",
            ));
        }
        let files = [
            ("source.tls.ca_file", &s.tls.ca_file),
            ("source.tls.cert_file", &s.tls.cert_file),
            ("source.tls.key_file", &s.tls.key_file),
            ("sink.tls.ca_file", &k.tls.ca_file),
            ("sink.tls.cert_file", &k.tls.cert_file),
            ("sink.tls.key_file", &k.tls.key_file),
        ];
        for (key, file) in files {
            if let Some(path) = file {
                std::fs::metadata(path)
                    .and_then(|_| std::fs::File::open(path))
                    .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
            }
        }
        self.source.password = password;
        self.source.heartbeat_password = heartbeat_password;
        self.sink.password = sink_password;
        self.sink.api_key = api_key;
        Ok(())
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.state.dir.join("checkpoint.json")
    }

    pub fn dead_letter_path(&self) -> PathBuf {
        self.state.dir.join("dead-letter.jsonl")
    }
}

impl TableMapping {
    /// Checks the masking and search keys; `key` names a key of this table in errors.
    fn validate_search_fields(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let lists: [(&str, &Vec<String>); 4] = [
            ("phone_columns", &self.phone_columns),
            ("scan_columns", &self.scan_columns),
            ("token_fields", &self.token_fields),
            ("pinyin_fields", &self.pinyin_fields),
        ];
        for (name, list) in lists {
            if list
                .iter()
                .any(|c| c.is_empty() || c.starts_with('.') || c.ends_with('.'))
            {
                return Err(invalid(
                    key(name),
                    "names must be non-empty (dotted paths: no empty segment)",
                ));
            }
        }
        if let Some(c) = self
            .pinyin_fields
            .iter()
            .chain(&self.phone_columns)
            .find(|c| c.contains('.'))
        {
            return Err(invalid(
                key("pinyin_fields"),
                format!("`{c}`: phone columns and pinyin fields are top-level fields, not paths"),
            ));
        }
        let field = |c: &String| self.rename.get(c).unwrap_or(c).clone();
        let phones: Vec<String> = self.phone_columns.iter().map(field).collect();
        if let Some(c) = self.id_columns.iter().find(|c| self.phone_columns.contains(c)) {
            return Err(invalid(
                key("id_columns"),
                format!("`{c}` is a phone column: a document _id would carry the plaintext number"),
            ));
        }
        if let Some(f) = self
            .token_fields
            .iter()
            .chain(&self.pinyin_fields)
            .find(|f| phones.contains(&f.split('.').next().unwrap_or_default().to_string()))
        {
            return Err(invalid(
                key("token_fields"),
                format!("`{f}` is a phone column, which is removed before tokens or pinyin are made"),
            ));
        }
        match (&self.phone_hash_key_env, &self.phone_hash_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("phone_hash_key_env"),
                    "set either phone_hash_key_env or phone_hash_key_file, not both",
                ))
            }
            (None, None) if !self.phone_columns.is_empty() => {
                return Err(invalid(
                    key("phone_hash_key_env"),
                    "phone_columns needs a hash key: set phone_hash_key_env (e.g. \"CDC_PHONE_HASH_KEY\") or phone_hash_key_file",
                ))
            }
            (Some(var), _) if var.is_empty() => {
                return Err(invalid(key("phone_hash_key_env"), "must name an environment variable"))
            }
            _ => {}
        }
        if let Some(id) = &self.phone_hash_key_id {
            if id.is_empty()
                || id.len() > 32
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(
                    key("phone_hash_key_id"),
                    "must be 1 to 32 characters of A-Z a-z 0-9 _ -",
                ));
            }
        }
        Ok(())
    }
}

impl CheckConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.sample_rows) {
            return Err(invalid("check.sample_rows", "must be between 1 and 1000000"));
        }
        if !(10..=100_000).contains(&self.range_rows) {
            return Err(invalid("check.range_rows", "must be between 10 and 100000 rows"));
        }
        if !(100..=3_600_000).contains(&self.settle_timeout_ms) {
            return Err(invalid(
                "check.settle_timeout_ms",
                "must be between 100 and 3600000 milliseconds",
            ));
        }
        if !(1..=20).contains(&self.recheck_rounds) {
            return Err(invalid("check.recheck_rounds", "must be between 1 and 20"));
        }
        if self.interval_seconds > 7 * 86_400 {
            return Err(invalid(
                "check.interval_seconds",
                "must be at most 604800 seconds (a week), or 0 to disable the scheduled check",
            ));
        }
        Ok(())
    }
}

impl SourceConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn offset(&self) -> chrono::FixedOffset {
        parse_offset(&self.time_zone).expect("validated")
    }
}

/// Parses `+08:00`, `-05:30`, `Z` or `UTC`.
pub fn parse_offset(s: &str) -> Option<chrono::FixedOffset> {
    if s == "Z" || s.eq_ignore_ascii_case("utc") {
        return chrono::FixedOffset::east_opt(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// Hides the password in a URL for logs and `Debug` output.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

const SHORTHANDS: &[(&str, &str)] = &[("CDC_MYSQL_URL", "source.url"), ("CDC_ES_URL", "sink.url")];

fn apply_override(tree: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = if let Some((_, p)) = SHORTHANDS.iter().find(|(v, _)| *v == var) {
        p.split('.').map(str::to_string).collect()
    } else if let Some(rest) = var.strip_prefix("CDC_") {
        if !rest.contains("__") {
            return Ok(()); // not a config key (e.g. CDC_LOG used by tools)
        }
        rest.split("__").map(|s| s.to_ascii_lowercase()).collect()
    } else {
        return Ok(());
    };
    let env_err = |reason: String| ConfigError::Env {
        var: var.to_string(),
        reason,
    };
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));

    let mut node = toml::Value::Table(std::mem::take(tree));
    let mut cursor = &mut node;
    for (i, part) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        cursor = match cursor {
            toml::Value::Table(t) => {
                if last {
                    // A string-typed key keeps the raw text (e.g. a password that looks like a number).
                    let v = match t.get(part) {
                        Some(toml::Value::String(_)) => toml::Value::String(value.to_string()),
                        _ => parsed.clone(),
                    };
                    t.insert(part.clone(), v);
                    break;
                }
                t.entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => {
                let idx: usize = part
                    .parse()
                    .map_err(|_| env_err(format!("`{part}` is not an array index")))?;
                let len = a.len();
                let slot = a
                    .get_mut(idx)
                    .ok_or_else(|| env_err(format!("index {idx} out of range (0..{len})")))?;
                if last {
                    *slot = parsed.clone();
                    break;
                }
                slot
            }
            _ => return Err(env_err(format!("`{}` is not a table", path[..i].join(".")))),
        };
    }
    if let toml::Value::Table(t) = node {
        *tree = t;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [source]
        url = "mysql://cdc:pw@127.0.0.1:3307"
        [sink]
        url = "http://127.0.0.1:9200"
        [[tables]]
        source = 'shop\.orders(_\d+)?'
        index = "orders"
        mapping = "mappings/orders.json"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(MINIMAL, "t", env(&[])).unwrap();
        assert_eq!(c.source.time_zone, "+08:00");
        assert_eq!(c.sink.max_in_flight, 4);
        assert_eq!(c.source.offset().local_minus_utc(), 8 * 3600);
    }

    #[test]
    fn transform_workers_default_to_the_cores_and_are_validated() {
        let c = Config::parse(MINIMAL, "t", env(&[])).unwrap();
        assert_eq!(c.pipeline.transform_workers, defaults::transform_workers());
        assert!(c.pipeline.transform_workers >= 1);
        let c = Config::parse(MINIMAL, "t", env(&[("CDC_PIPELINE__TRANSFORM_WORKERS", "3")])).unwrap();
        assert_eq!(c.pipeline.transform_workers, 3);
        let e = Config::parse(MINIMAL, "t", env(&[("CDC_PIPELINE__TRANSFORM_WORKERS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pipeline.transform_workers") && e.contains("between 1"),
            "{e}"
        );
    }

    #[test]
    fn env_overrides_win() {
        let c = Config::parse(
            MINIMAL,
            "t",
            env(&[
                ("CDC_MYSQL_URL", "mysql://a:b@h:1"),
                ("CDC_ES_URL", "http://es:9200"),
                ("CDC_SINK__MAX_IN_FLIGHT", "8"),
                ("CDC_TABLES__0__INDEX", "orders2"),
                ("CDC_SOURCE__SERVER_ID", "77"),
                ("CDC_UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.source.url, "mysql://a:b@h:1");
        assert_eq!(c.sink.url, "http://es:9200");
        assert_eq!(c.sink.max_in_flight, 8);
        assert_eq!(c.tables[0].index, "orders2");
        assert_eq!(c.source.server_id, 77);
    }

    #[test]
    fn errors_name_the_key_and_constraint() {
        let e = Config::parse(MINIMAL, "t", env(&[("CDC_SINK__MAX_IN_FLIGHT", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sink.max_in_flight") && e.contains("between 1 and 64"),
            "{e}"
        );
        let e = Config::parse(MINIMAL, "t", env(&[("CDC_SOURCE__TIME_ZONE", "Asia/Shanghai")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.time_zone"), "{e}");
        let e = Config::parse(MINIMAL, "t", env(&[("CDC_TABLES__0__SOURCE", "(")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tables[0].source"), "{e}");
        let e = Config::parse(MINIMAL, "t", env(&[("CDC_TABLES__3__INDEX", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CDC_TABLES__3__INDEX") && e.contains("out of range"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = MINIMAL.replace("[sink]", "[sink]\nbatch_max_dcos = 5");
        let e = Config::parse(&text, "t", env(&[])).unwrap_err().to_string();
        assert!(e.contains("batch_max_dcos"), "{e}");
    }

    #[test]
    fn metrics_and_heartbeat_keys_are_validated() {
        let c = Config::parse(MINIMAL, "t", env(&[])).unwrap();
        assert_eq!(c.metrics.address(), Some("127.0.0.1:9187"));
        assert!(c.source.heartbeat_table.is_empty());
        let c = Config::parse(MINIMAL, "t", env(&[("CDC_METRICS__LISTEN", "")])).unwrap();
        assert_eq!(c.metrics.address(), None);
        let c = Config::parse(MINIMAL, "t", env(&[("CDC_METRICS__ENABLED", "false")])).unwrap();
        assert_eq!(c.metrics.address(), None);
        let e = Config::parse(MINIMAL, "t", env(&[("CDC_METRICS__LISTEN", "localhost")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.listen"), "{e}");
        let e = Config::parse(MINIMAL, "t", env(&[("CDC_SOURCE__HEARTBEAT_TABLE", "heartbeat")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.heartbeat_table"), "{e}");
        let text = format!("{MINIMAL}\n[metrics]\nlisen = \"x\"\n");
        let e = Config::parse(&text, "t", env(&[])).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn masking_keys_are_validated_and_the_key_is_read_but_never_shown() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "mapping = \"mappings/orders.json\"",
                &format!("mapping = \"m\"\n{extra}"),
            )
        };
        let phone = "phone_columns = [\"buyer_phone\"]\nphone_hash_key_env = \"CDC_PHONE_HASH_KEY\"\n";
        let e = Config::parse(&with(phone), "t", env(&[])).unwrap_err().to_string();
        assert!(
            e.contains("tables[0].phone_hash_key_env") && e.contains("CDC_PHONE_HASH_KEY is not set"),
            "{e}"
        );
        let e = Config::parse(&with(phone), "t", env(&[("CDC_PHONE_HASH_KEY", "short")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16 bytes") && !e.contains("short"), "{e}");
        let c = Config::parse(
            &with(phone),
            "t",
            env(&[("CDC_PHONE_HASH_KEY", "a-long-enough-secret")]),
        )
        .unwrap();
        assert!(c.tables[0].phone_hash_key.is_some());
        assert!(!format!("{c:?}").contains("a-long-enough-secret"));
        let e = Config::parse(&with("phone_columns = [\"buyer_phone\"]"), "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tables[0].phone_hash_key_env") && e.contains("needs a hash key"),
            "{e}"
        );
        let e = Config::parse(&with(&format!("{phone}id_columns = [\"buyer_phone\"]")), "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tables[0].id_columns"), "{e}");
        let e = Config::parse(
            &with(&format!("{phone}token_fields = [\"buyer_phone\"]")),
            "t",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tables[0].token_fields"), "{e}");
        let e = Config::parse(&with("token_fields = [\"items.\"]"), "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tables[0].token_fields"), "{e}");
        let e = Config::parse(&with("scan_colums = [\"remark\"]"), "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scan_colums"), "{e}");
        let key_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key_file.path(), "0123456789abcdef\n").unwrap();
        let text = with(&format!(
            "phone_columns = [\"buyer_phone\"]\nphone_hash_key_file = \"{}\"\nphone_hash_key_id = \"k1\"",
            key_file.path().display()
        ));
        let c = Config::parse(&text, "t", env(&[])).unwrap();
        let key = c.tables[0].phone_hash_key.as_ref().unwrap();
        assert_eq!(key.id(), Some("k1"));
        assert_eq!(
            key.hash("x"),
            crate::mask::HashKey::new(b"0123456789abcdef", None).hash("x")
        );
        assert_eq!(c.search.orders_index, "orders");
    }

    #[test]
    fn check_keys_have_defaults_and_are_validated() {
        let c = Config::parse(MINIMAL, "t", env(&[])).unwrap();
        assert_eq!(c.check.interval_seconds, 0);
        assert_eq!(c.check.sample_rows, 1_000);
        assert!(c.check.repair);
        let c = Config::parse(MINIMAL, "t", env(&[("CDC_CHECK__INTERVAL_SECONDS", "600")])).unwrap();
        assert_eq!(c.check.interval_seconds, 600);
        for (var, value, key) in [
            ("CDC_CHECK__SAMPLE_ROWS", "0", "check.sample_rows"),
            ("CDC_CHECK__RANGE_ROWS", "1", "check.range_rows"),
            ("CDC_CHECK__SETTLE_TIMEOUT_MS", "5", "check.settle_timeout_ms"),
            ("CDC_CHECK__RECHECK_ROUNDS", "0", "check.recheck_rounds"),
        ] {
            let e = Config::parse(MINIMAL, "t", env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        let text = format!("{MINIMAL}\n[check]\nintervall_seconds = 5\n");
        let e = Config::parse(&text, "t", env(&[])).unwrap_err().to_string();
        assert!(e.contains("intervall_seconds"), "{e}");
    }

    #[test]
    fn debug_redacts_passwords() {
        let c = Config::parse(MINIMAL, "t", env(&[])).unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains(":pw@") && d.contains("cdc:***@"), "{d}");
    }

    #[test]
    fn tls_and_credential_keys_are_validated() {
        let err = |pairs: &[(&str, &str)]| Config::parse(MINIMAL, "t", env(pairs)).unwrap_err().to_string();
        let e = err(&[("CDC_SOURCE__TLS__MODE", "verify_everything")]);
        assert!(e.contains("verify_everything"), "{e}");
        let e = err(&[("CDC_SOURCE__TLS__CA_FILE", "/nonexistent/ca.pem")]);
        assert!(e.contains("source.tls.ca_file") && e.contains("verify_ca"), "{e}");
        let e = err(&[
            ("CDC_SOURCE__TLS__MODE", "verify_identity"),
            ("CDC_SOURCE__TLS__CA_FILE", "/nonexistent/ca.pem"),
        ]);
        assert!(e.contains("source.tls.ca_file") && e.contains("cannot read"), "{e}");
        let e = err(&[
            ("CDC_SOURCE__TLS__CERT_FILE", "c.pem"),
            ("CDC_SOURCE__TLS__MODE", "required"),
        ]);
        assert!(e.contains("source.tls.cert_file") && e.contains("key_file"), "{e}");
        let e = err(&[("CDC_SINK__TLS__CA_FILE", "ca.pem")]);
        assert!(e.contains("sink.tls.ca_file") && e.contains("https://"), "{e}");
        let e = err(&[("CDC_SINK__PASSWORD_ENV", "ES_PW")]);
        assert!(e.contains("sink.username"), "{e}");
        let e = err(&[("CDC_SINK__USERNAME", "elastic")]);
        assert!(e.contains("sink.password_env"), "{e}");
        let e = err(&[("CDC_SINK__USERNAME", "elastic"), ("CDC_SINK__PASSWORD_ENV", "ES_PW")]);
        assert!(e.contains("sink.password_env") && e.contains("ES_PW is not set"), "{e}");
        let e = err(&[("CDC_SINK__API_KEY_ENV", "K"), ("CDC_SINK__API_KEY_FILE", "k")]);
        assert!(e.contains("sink.api_key_env") && e.contains("not both"), "{e}");
        let c = Config::parse(
            MINIMAL,
            "t",
            env(&[
                ("CDC_SINK__USERNAME", "elastic"),
                ("CDC_SINK__PASSWORD_ENV", "ES_PW"),
                ("ES_PW", "es-password-value"),
                ("CDC_SOURCE__PASSWORD_ENV", "MY_PW"),
                ("MY_PW", "mysql-password-value"),
                ("CDC_SOURCE__TLS__MODE", "disabled"),
            ]),
        )
        .unwrap();
        assert_eq!(c.source.tls.mode, TlsMode::Disabled);
        assert_eq!(c.sink.password.as_ref().unwrap().expose(), "es-password-value");
        assert_eq!(c.source.password.as_ref().unwrap().expose(), "mysql-password-value");
        let d = format!("{c:?}");
        assert!(
            !d.contains("es-password-value") && !d.contains("mysql-password-value"),
            "{d}"
        );
        assert_eq!(
            Config::parse(MINIMAL, "t", env(&[])).unwrap().source.tls.mode,
            TlsMode::Preferred
        );
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("+08:00").unwrap().local_minus_utc(), 28_800);
        assert_eq!(parse_offset("-05:30").unwrap().local_minus_utc(), -19_800);
        assert_eq!(parse_offset("UTC").unwrap().local_minus_utc(), 0);
        assert!(parse_offset("+8").is_none());
        assert!(parse_offset("+15:00").is_none());
    }
}

//! End to end with a real Prometheus: the indexer's `/metrics` is scraped every second, the
//! shipped alert rules (with test-speed thresholds) are evaluated every second, and a blocked
//! Elasticsearch index makes the replication-lag alert fire and then resolve. The lag figures
//! are checked against the known blocking time.

#[path = "e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use cdc_indexer::metrics::names;
use cdc_indexer::testkit::sample::{create_shop_schema, Sample};
use cdc_indexer::testkit::{shared_es, shared_mysql, unique_name, wait_until};
use elasticsearch::http::Method;
use harness::{settle, Indexer};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lag threshold of the test copy of `CdcReplicationLagHigh` (production: 300 s).
const TEST_LAG_THRESHOLD_S: u64 = 5;
/// How far a reported lag may be from the injected one: the heartbeat period (1 s) plus
/// scheduling slack above, a little clock/rounding slack below.
const LAG_TOLERANCE_ABOVE_S: f64 = 2.0;
const LAG_TOLERANCE_BELOW_S: f64 = 0.5;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// `GET` over HTTP/1.0 (so the answer is never chunked); returns status and body.
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_string()))
}

/// The value of an unlabelled metric in a text exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The shipped rules with test-speed durations and lag threshold (same expressions otherwise).
fn test_rules() -> Result<String> {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts/cdc-indexer.rules.yml"))?;
    let lag_expr = "cdc_heartbeat_lag_seconds\", job=\"cdc-indexer\"}) > 300";
    ensure!(
        shipped.contains(lag_expr),
        "the lag rule changed shape; update this test"
    );
    let fast = shipped.replace(
        lag_expr,
        &format!("cdc_heartbeat_lag_seconds\", job=\"cdc-indexer\"}}) > {TEST_LAG_THRESHOLD_S}"),
    );
    let re = regex::Regex::new(r"for: \d+[smh]").unwrap();
    ensure!(re.is_match(&fast));
    Ok(re.replace_all(&fast, "for: 2s").into_owned())
}

/// A `prometheus` server of this test's own: free port, own data directory, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16, rules: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("rules.yml"), rules)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: cdc-indexer\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        );
        let config_path: PathBuf = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Dies with the test process even if it is killed.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("starting prometheus (scripts/setup installs Debian's prometheus package)")?;
        Ok(Prometheus { child, port, _dir: dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// State (`pending`/`firing`) of the named alert, `None` if inactive.
    async fn alert_state(&self, name: &str) -> Result<Option<String>> {
        let (status, body) = http_get(self.port, "/api/v1/alerts").await?;
        ensure!(status == 200, "alerts API answered {status}: {body}");
        let v: Value = serde_json::from_str(&body)?;
        let alerts = v["data"]["alerts"].as_array().context("no alerts array")?;
        Ok(alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .and_then(|a| a["state"].as_str().map(str::to_owned)))
    }

    /// Instant query; the first sample's value.
    async fn query(&self, promql: &str) -> Result<Option<f64>> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={q}")).await?;
        ensure!(status == 200, "query API answered {status}: {body}");
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse().ok()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_alert_fires_while_elasticsearch_blocks_writes_and_resolves_after() -> Result<()> {
    // GIVEN a database with a few orders, an indexer with a heartbeat table and a metrics port,
    // and a real Prometheus scraping it every second with the (test-speed) shipped rules
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("metrics");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    Sample::generate(7, 20).load(&mut conn, &db).await?;
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, "")?;
    let metrics_port = free_port()?;
    let config = std::fs::read_to_string(indexer.config_path())?;
    ensure!(config.contains("listen = \"127.0.0.1:0\"") && config.contains("[source]\n"));
    // The indexer's own account may only read; heartbeats are written as root.
    let config = config
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{metrics_port}\""),
        )
        .replacen(
            "[source]\n",
            &format!(
                "[source]\nheartbeat_table = \"{db}.heartbeat\"\nheartbeat_url = \"{}\"\n",
                mysql.root_url()
            ),
            1,
        );
    std::fs::write(indexer.config_path(), config)?;
    indexer.start()?;
    let prometheus = Prometheus::start(metrics_port, &test_rules()?)?;

    let orders = format!("{prefix}orders");
    settle(&mut indexer, Duration::from_secs(60), || async {
        ensure!(es.count(&orders).await? == 20, "initial load not indexed yet");
        let (status, body) = http_get(metrics_port, "/readyz").await?;
        ensure!(status == 200, "readyz: {status} {body}");
        let (_, m) = http_get(metrics_port, "/metrics").await?;
        let hb = sample(&m, names::HEARTBEAT_LAG_SECONDS).context("no heartbeat lag")?;
        ensure!(hb < 2.0, "heartbeat lag still {hb}");
        ensure!(
            prometheus.query("up{job=\"cdc-indexer\"}").await? == Some(1.0),
            "Prometheus does not scrape the indexer yet:\n{}",
            prometheus.log()
        );
        Ok(())
    })
    .await?;
    ensure!(prometheus.alert_state("CdcReplicationLagHigh").await?.is_none());

    // WHEN Elasticsearch blocks writes to the orders index (every bulk item gets 429) and an
    // order changes
    let (status, body) = es
        .request(
            Method::Put,
            &format!("/{orders}/_settings"),
            Some(&json!({"index.blocks.read_only_allow_delete": true})),
        )
        .await?;
    ensure!(status == 200, "blocking the index: {status} {body}");
    conn.query_drop(format!(
        "UPDATE `{db}`.orders SET remark = 'while blocked' ORDER BY id LIMIT 1"
    ))
    .await?;
    let blocked_at = now_s();
    let blocked = Instant::now();

    // THEN the lag alert goes to firing
    wait_until(Duration::from_secs(60), Duration::from_millis(250), || async {
        let state = prometheus.alert_state("CdcReplicationLagHigh").await?;
        ensure!(state.as_deref() == Some("firing"), "alert state {state:?}");
        Ok(())
    })
    .await
    .with_context(|| format!("indexer log:\n{}", indexer.log()))?;
    let fired_after = blocked.elapsed();

    // AND both lag figures match the time the change has been waiting
    let (_, m) = http_get(metrics_port, "/metrics").await?;
    let injected = now_s() - blocked_at;
    let heartbeat_lag = sample(&m, names::HEARTBEAT_LAG_SECONDS).context("heartbeat lag")?;
    let binlog_lag = sample(&m, names::REPLICATION_LAG_SECONDS).context("replication lag")?;
    eprintln!(
        "alert fired {:.1}s after blocking; injected delay {injected:.2}s; heartbeat lag {heartbeat_lag:.2}s; \
         binlog-timestamp lag {binlog_lag:.2}s",
        fired_after.as_secs_f64()
    );
    for (what, lag) in [("heartbeat", heartbeat_lag), ("binlog timestamp", binlog_lag)] {
        ensure!(
            lag >= injected - LAG_TOLERANCE_BELOW_S && lag <= injected + LAG_TOLERANCE_ABOVE_S,
            "{what} lag {lag:.2}s is not within -{LAG_TOLERANCE_BELOW_S}/+{LAG_TOLERANCE_ABOVE_S}s of the injected {injected:.2}s"
        );
    }
    ensure!(
        sample(&m, names::BULK_THROTTLED_DOCS_TOTAL).unwrap_or(0.0) >= 1.0
            && sample(&m, names::BULK_RETRIES_TOTAL).unwrap_or(0.0) >= 1.0,
        "429s and retries must be counted:\n{m}"
    );
    // Heartbeat rows are consumed, never counted as (or turned into) indexed changes.
    ensure!(
        !m.contains(&format!("table=\"{db}.heartbeat\"")),
        "heartbeat rows leaked:\n{m}"
    );

    // WHEN the block is lifted
    let (status, body) = es
        .request(
            Method::Put,
            &format!("/{orders}/_settings"),
            Some(&json!({"index.blocks.read_only_allow_delete": false})),
        )
        .await?;
    ensure!(status == 200, "unblocking the index: {status} {body}");
    let unblocked = Instant::now();

    // THEN the change is indexed, the lag returns to near zero and the alert resolves
    settle(&mut indexer, Duration::from_secs(60), || async {
        let state = prometheus.alert_state("CdcReplicationLagHigh").await?;
        ensure!(state.is_none(), "alert still {state:?}");
        let (_, m) = http_get(metrics_port, "/metrics").await?;
        let hb = sample(&m, names::HEARTBEAT_LAG_SECONDS).unwrap_or(f64::MAX);
        ensure!(hb < 2.0, "heartbeat lag still {hb}");
        Ok(())
    })
    .await?;
    eprintln!(
        "alert resolved {:.1}s after unblocking",
        unblocked.elapsed().as_secs_f64()
    );
    let docs = es.all_docs(&orders).await?;
    ensure!(
        docs.values().any(|d| d["remark"] == "while blocked"),
        "the change made while blocked is missing"
    );
    let (status, _) = http_get(metrics_port, "/readyz").await?;
    ensure!(status == 200, "readyz after recovery: {status}");
    let status = indexer.stop()?;
    if !status.success() {
        bail!("indexer exit {status}: {}", indexer.log());
    }
    Ok(())
}

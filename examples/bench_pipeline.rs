//! End-to-end pipeline benchmark: the release `cdc-indexer` binary between a MariaDB of its own
//! and (a) a null bulk endpoint (the test kit's proxy answering valid bulk responses itself),
//! (b) the osmem stand-in for reference. Prints one markdown table.
//!
//! Scenarios, each with the indexer's peak RSS:
//! 1. catch-up: a backlog of ≥ 1,000,000 row changes (inserts, updates, deletes over both shop
//!    tables) written while the indexer is stopped, drained into the null endpoint;
//! 2. the same kind of backlog (smaller: the stand-in holds everything in memory) into osmem;
//! 3. memory under a slow sink: the same backlog through an endpoint throttled to 300 docs/s,
//!    RSS sampled every second for a minute (it must stay flat: bounded stages);
//! 4. commit → acknowledgement latency (p50/p99/max) at a steady 500 and 5,000 changes/s,
//!    timed from the writer's COMMIT to the endpoint's answer for that document.
//!
//! Run with `bash bench/run.sh` (builds release first). Sizes: `BENCH_ORDERS` (default 200000
//! orders ≈ 1.0 M changes), `BENCH_REF_ORDERS` (default 20000), `BENCH_THROTTLE_SECS` (60),
//! `BENCH_LATENCY_SECS` (10). To see where latency goes: `BENCH_INDEXER_LOG=debug` sets the
//! indexer's log level and `BENCH_LATENCY_DUMP=DIR` writes each row's commit offset and latency
//! (`lat-<rate>.csv`, milliseconds) and the indexer's log to DIR.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cdc_indexer::testkit::sample::{create_shop_schema, order_insert, Sample};
use cdc_indexer::testkit::{EsProxy, Faults, MariaDbServer, OsmemServer};
use mysql_async::prelude::Queryable;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A `cdc-indexer run` child with its own config and state directory.
struct Indexer {
    dir: PathBuf,
    child: Option<Child>,
}

impl Indexer {
    fn new(dir: &Path, mysql_url: &str, es_url: &str, db: &str) -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("phone.key"), "bench-phone-hash-key-0123456789\n")?;
        let config = format!(
            r#"
[source]
url = "{mysql_url}"
server_id = 7001
time_zone = "+08:00"

[sink]
url = "{es_url}"

[state]
dir = "{state}"

[search]
user_dict = "{dict}"

[log]
level = "{log_level}"

[metrics]
listen = ""

[[tables]]
source = '{db}\.orders'
index = "{db}_orders"
mapping = "{orders}"
json_columns = ["items"]
phone_columns = ["buyer_phone"]
phone_hash_key_file = "{key}"
scan_columns = ["address", "remark", "items"]
token_fields = ["buyer_name", "address", "remark", "items.title"]
pinyin_fields = ["buyer_name"]

[[tables]]
source = '{db}\.event_log'
index = "{db}_event_log"
mapping = "{events}"
json_columns = ["payload"]
scan_columns = ["payload"]
"#,
            state = dir.join("state").display(),
            dict = root.join("dict/shop.dict").display(),
            orders = root.join("mappings/orders.json").display(),
            events = root.join("mappings/event_log.json").display(),
            key = dir.join("phone.key").display(),
            log_level = std::env::var("BENCH_INDEXER_LOG").unwrap_or_else(|_| "warn".into()),
        );
        std::fs::write(dir.join("cdc-indexer.toml"), config)?;
        Ok(Indexer {
            dir: dir.to_owned(),
            child: None,
        })
    }

    fn start(&mut self) -> Result<u32> {
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("cdc-indexer"))
            .context("locating the cdc-indexer binary")?;
        let log = std::fs::File::create(self.dir.join("indexer.log"))?;
        let child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(self.dir.join("cdc-indexer.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    /// SIGTERM and wait: the indexer flushes and writes its last checkpoint.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait()?;
            if !status.success() {
                bail!("indexer exited with {status}: {}", self.log());
            }
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("indexer.log")).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// (binlog file, position) of the checkpoint, if any.
    fn checkpoint(&self) -> Option<(String, u64)> {
        let text = std::fs::read_to_string(self.dir.join("state/checkpoint.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some((
            v["position"]["file"].as_str()?.to_owned(),
            v["position"]["pos"].as_u64()?,
        ))
    }

    fn save_state(&self, name: &str) -> Result<()> {
        copy_dir(&self.dir.join("state"), &self.dir.join(name))
    }

    fn restore_state(&self, name: &str) -> Result<()> {
        let state = self.dir.join("state");
        let _ = std::fs::remove_dir_all(&state);
        copy_dir(&self.dir.join(name), &state)
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

async fn master_position(conn: &mut mysql_async::Conn) -> Result<(String, u64)> {
    let row: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await?
        .context("binary logging is off")?;
    Ok((row.get(0).context("file")?, row.get(1).context("position")?))
}

fn reached(cp: &Option<(String, u64)>, end: &(String, u64)) -> bool {
    cp.as_ref()
        .is_some_and(|(f, p)| (f.as_str(), *p) >= (end.0.as_str(), end.1))
}

/// Writes the backlog into `db`: the sample's inserts, one update of every order, and deletes
/// of a tenth of the events. Returns the number of row changes.
async fn write_backlog(conn: &mut mysql_async::Conn, db: &str, orders: usize, seed: u64) -> Result<u64> {
    let sample = Sample::generate(seed, orders);
    let mut changes = 0u64;
    for sql in sample.insert_statements(db, 1000) {
        conn.query_drop(&sql).await?;
        changes += conn.affected_rows();
    }
    for start in (1..=orders as u64).step_by(1000) {
        conn.query_drop(format!(
            "UPDATE `{db}`.orders SET status = 'completed', updated_at = updated_at + INTERVAL 1 DAY \
             WHERE id BETWEEN {start} AND {}",
            start + 999
        ))
        .await?;
        changes += conn.affected_rows();
    }
    let events = sample.events.len() as u64;
    for start in (1..=events).step_by(10_000) {
        conn.query_drop(format!(
            "DELETE FROM `{db}`.event_log WHERE id BETWEEN {start} AND {} AND id % 10 = 0",
            start + 9_999
        ))
        .await?;
        changes += conn.affected_rows();
    }
    Ok(changes)
}

/// Starts the indexer from the saved pre-backlog checkpoint and waits until it has checkpointed
/// `end`.
async fn drain(indexer: &mut Indexer, end: &(String, u64)) -> Result<Drained> {
    indexer.restore_state("state-before-backlog")?;
    let started = Instant::now();
    let machine_before = machine_cpu_secs();
    let pid = indexer.start()?;
    let mut peak = 0.0f64;
    loop {
        if let Some((_, hwm)) = rss_mib(pid) {
            peak = peak.max(hwm);
        }
        if reached(&indexer.checkpoint(), end) {
            break;
        }
        if !indexer.alive() {
            bail!("indexer died while draining: {}", indexer.log());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("not drained within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let machine = machine_cpu_secs() - machine_before;
    // Read while the process still exists (it has caught up, so it is idle now).
    let cpu = process_cpu_secs(pid).context("reading the indexer's CPU time")?;
    indexer.stop()?;
    Ok(Drained {
        secs,
        peak_mib: peak,
        indexer_cpu: cpu,
        others_cpu: (machine - cpu).max(0.0),
    })
}

/// One drained backlog: wall time, the indexer's peak RSS, and CPU seconds used by the indexer
/// and by everything else on the machine meanwhile (MariaDB, the endpoint, this program).
struct Drained {
    secs: f64,
    peak_mib: f64,
    indexer_cpu: f64,
    others_cpu: f64,
}

impl Drained {
    fn cpu_note(&self, changes: u64) -> String {
        format!(
            "indexer {:.2} cores on average = {:.0} changes per indexer CPU-second; MariaDB, the endpoint and the bench used {:.2} cores",
            self.indexer_cpu / self.secs,
            changes as f64 / self.indexer_cpu.max(1e-9),
            self.others_cpu / self.secs
        )
    }
}

/// Clock ticks per second of `/proc`'s CPU times (asked once).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of a process (and its finished threads).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Busy CPU seconds of the whole machine since boot (all but idle and iowait).
fn machine_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / clock_ticks()
}

/// Waits until a first checkpoint exists (the initial load of empty tables is done).
async fn first_checkpoint(indexer: &mut Indexer) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while indexer.checkpoint().is_none() {
        if Instant::now() > deadline || !indexer.alive() {
            bail!("no first checkpoint: {}", indexer.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

struct Row {
    what: String,
    conditions: String,
    result: String,
    rss: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let orders = env_usize("BENCH_ORDERS", 200_000);
    let ref_orders = env_usize("BENCH_REF_ORDERS", 20_000);
    let throttle_secs = env_usize("BENCH_THROTTLE_SECS", 60);
    let latency_secs = env_usize("BENCH_LATENCY_SECS", 10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();

    eprintln!("bench: starting MariaDB, osmem and the null endpoint");
    let mysql = MariaDbServer::start()?;
    let osmem = OsmemServer::start()?;
    // Non-bulk calls (index creation) reach osmem; bulk answers come from the proxy itself.
    let null = EsProxy::start(osmem.url(), 1)?;
    null.set(Faults {
        null_sink: true,
        ..Faults::default()
    });
    let work = tempfile::tempdir()?;
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, "bench").await?;
    create_shop_schema(&mut conn, "bench_ref").await?;
    let mut fast = Indexer::new(&work.path().join("null"), &mysql.url(), null.url(), "bench")?;
    let mut reference = Indexer::new(&work.path().join("ref"), &mysql.url(), osmem.url(), "bench_ref")?;
    for ix in [&mut fast, &mut reference] {
        ix.start()?;
        first_checkpoint(ix).await?;
        ix.stop()?;
        ix.save_state("state-before-backlog")?;
    }

    eprintln!("bench: writing the backlogs ({orders} + {ref_orders} orders with events, updates, deletes)");
    let t = Instant::now();
    let changes = write_backlog(&mut conn, "bench", orders, 1).await?;
    let ref_changes = write_backlog(&mut conn, "bench_ref", ref_orders, 2).await?;
    let end = master_position(&mut conn).await?;
    eprintln!(
        "bench: {changes} + {ref_changes} changes written in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // 3. Flat memory under a slow sink (first, while the whole backlog is still ahead).
    null.set(Faults {
        null_sink: true,
        docs_per_sec: Some(300),
        ..Faults::default()
    });
    fast.restore_state("state-before-backlog")?;
    let pid = fast.start()?;
    let mut samples = Vec::new();
    for _ in 0..throttle_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((rss, _)) = rss_mib(pid) {
            samples.push(rss);
        }
    }
    let hwm = rss_mib(pid).map_or(0.0, |r| r.1);
    fast.stop()?;
    let half = samples.len() / 2;
    let max_of = |s: &[f64]| s.iter().cloned().fold(0.0, f64::max);
    rows.push(Row {
        what: "RSS while a backlog drains through a slow sink".into(),
        conditions: format!(
            "{changes} changes pending, endpoint throttled to 300 docs/s, RSS sampled 1/s for {throttle_secs} s"
        ),
        result: format!(
            "RSS max {:.0} MiB in the first half, {:.0} MiB in the second ({:+.0} MiB)",
            max_of(&samples[..half]),
            max_of(&samples[half..]),
            max_of(&samples[half..]) - max_of(&samples[..half])
        ),
        rss: format!("{hwm:.0} MiB"),
    });

    // 1. Catch-up into the null endpoint.
    null.set(Faults {
        null_sink: true,
        ..Faults::default()
    });
    eprintln!("bench: catch-up into the null endpoint");
    let acked_before = null.stats().bulk_docs_answered_ok.load(Ordering::Relaxed);
    let d = drain(&mut fast, &end).await?;
    // Every row change is one bulk operation: fewer acknowledged would mean changes skipped.
    let acked = null.stats().bulk_docs_answered_ok.load(Ordering::Relaxed) - acked_before;
    if acked < changes {
        bail!("the null endpoint acknowledged {acked} operations for {changes} changes");
    }
    let null_rate = changes as f64 / d.secs;
    rows.push(Row {
        what: "catch-up into a null bulk endpoint".into(),
        conditions: format!(
            "{changes} changes (orders + event_log: insert/update/delete), masking + jieba + pinyin on, {cores} cores, start-up included"
        ),
        result: format!(
            "{null_rate:.0} changes/s ({:.1} s, {acked} operations acknowledged); {}",
            d.secs,
            d.cpu_note(changes)
        ),
        rss: format!("{:.0} MiB", d.peak_mib),
    });

    // 2. Catch-up into the osmem stand-in, for reference.
    eprintln!("bench: catch-up into osmem");
    let d = drain(&mut reference, &end).await?;
    let (secs, peak) = (d.secs, d.peak_mib);
    let ref_rate = ref_changes as f64 / secs;
    rows.push(Row {
        what: "catch-up into osmem (reference)".into(),
        conditions: format!("{ref_changes} changes, same mix; osmem is single-threaded and in-memory"),
        result: format!(
            "{ref_rate:.0} changes/s ({secs:.1} s) = {:.3}× the null endpoint",
            ref_rate / null_rate
        ),
        rss: format!("{peak:.0} MiB"),
    });

    // 4. Commit → acknowledgement latency at steady rates.
    // The drained checkpoint is kept: the indexer starts caught up. A second of writes first,
    // so that what is measured is the steady state, not the ~0.1 s the process needs to connect
    // and start streaming (the checkpoint already matches the binlog end before it streams).
    let pid = fast.start()?;
    let mut next_id = 10_000_000u64;
    steady_writer(&mut conn, 500, 1, &mut next_id).await?;
    wait_caught_up(&mut fast, &mut conn).await?;
    for rate in [500u64, 5_000] {
        null.set(Faults {
            null_sink: true,
            record_answers: true,
            ..Faults::default()
        });
        let _ = null.take_answered();
        let committed = steady_writer(&mut conn, rate, latency_secs as u64, &mut next_id).await?;
        wait_caught_up(&mut fast, &mut conn).await?;
        let answered: HashMap<String, Instant> = null
            .take_answered()
            .into_iter()
            .filter(|(index, _, _)| index.ends_with("orders"))
            .map(|(_, id, t)| (id, t))
            .collect();
        let mut lat: Vec<f64> = committed
            .iter()
            .filter_map(|(id, c)| {
                answered
                    .get(id)
                    .map(|a| a.saturating_duration_since(*c).as_secs_f64() * 1e3)
            })
            .collect();
        if lat.len() != committed.len() {
            bail!(
                "{} of {} committed rows were never acknowledged",
                committed.len() - lat.len(),
                committed.len()
            );
        }
        if let Ok(dir) = std::env::var("BENCH_LATENCY_DUMP") {
            let t0 = committed.iter().map(|(_, c)| *c).min().unwrap();
            let mut out = String::new();
            // `lat` is still in commit order here, one entry per committed row.
            for ((_, c), l) in committed.iter().zip(&lat) {
                out.push_str(&format!("{:.1},{l:.1}\n", c.duration_since(t0).as_secs_f64() * 1e3));
            }
            std::fs::write(format!("{dir}/lat-{rate}.csv"), out)?;
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        let achieved = committed.len() as f64 / latency_secs as f64;
        rows.push(Row {
            what: format!("commit → ack latency at {rate} changes/s"),
            conditions: format!(
                "{} single-table inserts over {latency_secs} s ({achieved:.0}/s achieved) after a 1 s warm-up, null endpoint, default sink settings (linger_ms = 50)",
                committed.len()
            ),
            result: format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                pct(0.5),
                pct(0.99),
                lat[lat.len() - 1]
            ),
            rss: format!("{:.0} MiB", rss_mib(pid).map_or(0.0, |r| r.1)),
        });
    }
    fast.stop()?;
    if let Ok(dir) = std::env::var("BENCH_LATENCY_DUMP") {
        std::fs::write(format!("{dir}/indexer.log"), fast.log())?;
    }

    println!("| pipeline benchmark | conditions | result | indexer peak RSS |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.conditions, r.result, r.rss);
    }
    Ok(())
}

/// Waits until the indexer has checkpointed the server's current end.
async fn wait_caught_up(indexer: &mut Indexer, conn: &mut mysql_async::Conn) -> Result<()> {
    let end = master_position(conn).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while !reached(&indexer.checkpoint(), &end) {
        if Instant::now() > deadline || !indexer.alive() {
            bail!("indexer did not catch up: {}", indexer.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Inserts orders at `rate` rows/s for `secs` seconds, in transactions of `rate / 500` rows
/// (at most 500 commits/s), returning each row's `_id` with its commit time.
async fn steady_writer(
    conn: &mut mysql_async::Conn,
    rate: u64,
    secs: u64,
    next_id: &mut u64,
) -> Result<Vec<(String, Instant)>> {
    let per_txn = (rate / 500).max(1) as usize;
    let period = Duration::from_secs_f64(per_txn as f64 / rate as f64);
    let template = Sample::generate(*next_id, 64).orders;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committed = Vec::new();
    let stop = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < stop {
        ticker.tick().await;
        let batch: Vec<_> = (0..per_txn)
            .map(|i| {
                let mut o = template[i % template.len()].clone();
                o.id = *next_id + i as u64;
                o.order_no = format!("B{}", o.id);
                o
            })
            .collect();
        conn.query_drop(order_insert("bench", &batch)).await?;
        let at = Instant::now();
        committed.extend(batch.iter().map(|o| (o.id.to_string(), at)));
        *next_id += per_txn as u64;
    }
    Ok(committed)
}

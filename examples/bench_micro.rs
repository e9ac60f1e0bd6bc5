//! Micro-benchmarks of the CPU stages (issue #7), printed as rows of one markdown table:
//!
//! * binlog decode rows/s with our decoder (`decode::read_binlog_file` + `RowDecoder`), and as
//!   a ratio to `mariadb-binlog --verbose --base64-output=decode-rows` on the same files, timed
//!   in the same run;
//! * transform rows/s (render + phone masking + free-text masking + jieba + pinyin + JSON), the
//!   shipped `cdc-indexer.example.toml` mappings, on one thread;
//! * the same through the parallel transform stage (`transform_pool`) with 1 and 2 workers.
//!
//! The binlog is real: a private MariaDB (testkit) is loaded with the sample `shop` data by
//! multi-row INSERTs, then some UPDATEs and DELETEs, then `FLUSH BINARY LOGS`. Each measurement
//! runs in a child process of this binary, so its peak RSS (`VmHWM`) is its own.
//!
//! Run with `bench/micro.sh` (release build). Options: `--rows N` row changes in the binlog
//! (default 1,000,000), `--working-set N` distinct changes the transform cycles through
//! (default 100,000), `--passes N` (default 10), `--reps N` timing repetitions of the decode
//! measurements, best kept (default 3), `--no-header`, `--save DIR` (keep the binlog files).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cdc_indexer::change::{DocOp, RowChange, SourceEvent};
use cdc_indexer::checkpoint::Boundary;
use cdc_indexer::config::Config;
use cdc_indexer::dead_letter::DeadLetter;
use cdc_indexer::decode::{is_rows_event, read_binlog_file, RowDecoder};
use cdc_indexer::position::{BinlogPosition, Version};
use cdc_indexer::sink::SinkError;
use cdc_indexer::testkit::sample::{create_shop_schema, Sample};
use cdc_indexer::testkit::MariaDbServer;
use cdc_indexer::transform::{Mapping, Router};
use cdc_indexer::transform_pool::{self, Output};
use mysql_async::prelude::Queryable;

/// The same allocator as the `cdc-indexer` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const TABLE_MAP: u8 = 19;
const XID: u8 = 16;
const ORDERS_PER_CHUNK: usize = 10_000;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::args().skip_while(|a| a != name).nth(1) {
        Some(v) => v.parse().ok().with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2..]);
    }
    let rows: u64 = arg("--rows", 1_000_000)?;
    let working_set: usize = arg("--working-set", 100_000)?;
    let passes: usize = arg("--passes", 10)?;
    let reps: usize = arg("--reps", 3)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    eprintln!("bench: starting MariaDB and writing a binlog of ≥ {rows} row changes …");
    let server = MariaDbServer::start()?;
    let files = tokio::runtime::Runtime::new()?.block_on(make_binlog(&server, rows))?;
    let mut files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    // `--save DIR`: keep a copy of the binlog (for profiling a child: `--child decode -- FILES`).
    if let Some(dir) = std::env::args().skip_while(|a| a != "--save").nth(1) {
        std::fs::create_dir_all(&dir)?;
        for f in &mut files {
            let to = Path::new(&dir).join(Path::new(f.as_str()).file_name().context("file name")?);
            std::fs::copy(&*f, &to)?;
            *f = to.display().to_string();
        }
    }

    if !args.iter().any(|a| a == "--no-header") {
        println!("| benchmark | figure | conditions | peak RSS |");
        println!("|---|---|---|---|");
    }
    // Decode: ours vs mariadb-binlog, best of `reps`, alternating.
    let mut ours: Option<ChildResult> = None;
    let mut theirs = Duration::MAX;
    for _ in 0..reps {
        let r = run_child(&["decode"], &files)?;
        if ours.as_ref().is_none_or(|o| r.secs < o.secs) {
            ours = Some(r);
        }
        let start = Instant::now();
        let status = Command::new("mariadb-binlog")
            .args(["--verbose", "--base64-output=decode-rows"])
            .args(&files)
            .stdout(Stdio::null())
            .status()
            .context("running mariadb-binlog")?;
        ensure!(status.success(), "mariadb-binlog failed: {status}");
        theirs = theirs.min(start.elapsed());
    }
    let ours = ours.expect("reps >= 1");
    // Other processes competing for the cores skew every figure: say how busy the machine was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let mine_rate = ours.rows as f64 / ours.secs;
    let their_rate = ours.rows as f64 / theirs.as_secs_f64();
    let size = format!(
        "{} row changes ({} files, {} MB), avg {} B/row in the binlog",
        thousands(ours.rows),
        files.len(),
        ours.bytes / 1_000_000,
        ours.bytes / ours.rows.max(1)
    );
    println!(
        "| decode, our decoder | {} rows/s ({} per CPU-second) | {size}; 1 thread, best of {reps} | {} MB |",
        thousands(mine_rate as u64),
        thousands((ours.rows as f64 / ours.cpu) as u64),
        ours.hwm_kb / 1024
    );
    println!(
        "| decode, `mariadb-binlog -v --base64-output=decode-rows` | {} rows/s | same files, output to /dev/null, best of {reps} | — |",
        thousands(their_rate as u64)
    );
    println!(
        "| decode ratio (ours / mariadb-binlog) | {:.2}× | target ≥ 1.0× | — |",
        mine_rate / their_rate
    );

    let ws = working_set.to_string();
    let ps = passes.to_string();
    let single = run_child(&["transform", &ws, &ps, "0"], &files)?;
    let cond = |r: &ChildResult, how: &str| {
        format!(
            "{} changes ({} distinct × {passes} passes), avg doc {} B; masking + jieba + pinyin on (example config); {how}; {cores} cores",
            thousands(r.rows),
            thousands(r.rows / passes as u64),
            r.bytes / r.ops.max(1),
        )
    };
    println!(
        "| transform, 1 thread (per core) | {} changes/s ({} per CPU-second) | {} | {} MB |",
        thousands((single.rows as f64 / single.secs) as u64),
        thousands((single.rows as f64 / single.cpu) as u64),
        cond(&single, "Mapping::apply in a loop"),
        single.hwm_kb / 1024
    );
    let mut one_worker = 0.0;
    for workers in [1usize, 2] {
        let r = run_child(&["transform", &ws, &ps, &workers.to_string()], &files)?;
        let rate = r.rows as f64 / r.secs;
        let scaling = if workers == 1 {
            one_worker = rate;
            String::new()
        } else {
            format!(" = {:.2}× 1 worker", rate / one_worker)
        };
        println!(
            "| transform stage, {workers} worker{} | {} changes/s{scaling} ({} per CPU-second) | {} | {} MB |",
            if workers == 1 { "" } else { "s" },
            thousands(rate as u64),
            thousands((r.rows as f64 / r.cpu) as u64),
            cond(&r, "transform_pool (ordered) into a null sink"),
            r.hwm_kb / 1024
        );
    }
    println!("| machine load (1-min load average, decode step) | {load} | /proc/loadavg; figures are lower while other processes compete for the {cores} cores | — |");
    drop(server);
    Ok(())
}

/// Loads the sample data and returns the closed binlog files holding it.
async fn make_binlog(server: &MariaDbServer, target: u64) -> Result<Vec<PathBuf>> {
    let mut conn = server.root_conn().await?;
    create_shop_schema(&mut conn, "shop").await?;
    let mut changes = 0u64;
    let (mut orders, mut events) = (0u64, 0u64);
    let mut chunk = 0u64;
    // ~80% inserts …
    while changes < target * 8 / 10 {
        let mut s = Sample::generate(20_260_125 + chunk, ORDERS_PER_CHUNK);
        for o in &mut s.orders {
            o.id += orders;
            o.order_no = format!("SO{}{:09}", o.created_at.format("%Y%m%d"), o.id);
        }
        for e in &mut s.events {
            e.id += events;
            e.order_id += orders;
        }
        for sql in s.insert_statements("shop", 500) {
            conn.query_drop(&sql).await?;
        }
        orders += s.orders.len() as u64;
        events += s.events.len() as u64;
        changes += (s.orders.len() + s.events.len()) as u64;
        chunk += 1;
    }
    // … ~12% updates of 500 orders per statement …
    let mut id = 1;
    while changes < target * 92 / 100 && id <= orders {
        conn.query_drop(format!(
            "UPDATE shop.orders SET status = 'completed', updated_at = updated_at + INTERVAL 1 SECOND, \
             remark = CONCAT(COALESCE(remark, ''), ' 已完成') WHERE id BETWEEN {id} AND {}",
            id + 499
        ))
        .await?;
        changes += conn.affected_rows();
        id += 500;
    }
    // … and deletes of old events.
    let mut id = 1;
    while changes < target && id <= events {
        conn.query_drop(format!(
            "DELETE FROM shop.event_log WHERE id BETWEEN {id} AND {}",
            id + 499
        ))
        .await?;
        changes += conn.affected_rows();
        id += 500;
    }
    ensure!(changes >= target, "only {changes} row changes written");
    conn.query_drop("FLUSH BINARY LOGS").await?;
    let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").await?;
    let closed = &logs[..logs.len() - 1];
    Ok(closed.iter().map(|(name, _)| server.datadir().join(name)).collect())
}

/// What a child measurement reports on its single stdout line.
#[derive(Debug)]
struct ChildResult {
    rows: u64,
    ops: u64,
    bytes: u64,
    secs: f64,
    hwm_kb: u64,
    /// CPU seconds (user + system, all threads) of the timed sections.
    cpu: f64,
}

fn run_child(what: &[&str], files: &[String]) -> Result<ChildResult> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--child")
        .args(what)
        .arg("--")
        .args(files)
        .stderr(Stdio::inherit())
        .output()
        .context("running a measurement child")?;
    ensure!(out.status.success(), "measurement {what:?} failed: {}", out.status);
    let text = String::from_utf8(out.stdout)?;
    let f: Vec<f64> = text.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    ensure!(f.len() == 6, "bad child output {text:?}");
    Ok(ChildResult {
        rows: f[0] as u64,
        ops: f[1] as u64,
        bytes: f[2] as u64,
        secs: f[3],
        hwm_kb: f[4] as u64,
        cpu: f[5],
    })
}

fn child(args: &[String]) -> Result<()> {
    let sep = args.iter().position(|a| a == "--").context("missing --")?;
    let files: Vec<PathBuf> = args[sep + 1..].iter().map(PathBuf::from).collect();
    let (rows, ops, bytes, secs, cpu) = match args[0].as_str() {
        "decode" => decode_all(&files)?,
        "transform" => {
            let n: usize = args[1].parse()?;
            let passes: usize = args[2].parse()?;
            let workers: usize = args[3].parse()?;
            transform(&files, n, passes, workers)?
        }
        other => bail!("unknown measurement {other}"),
    };
    println!("{rows} {ops} {bytes} {secs} {} {cpu}", vm_hwm_kb()?);
    Ok(())
}

/// Decodes every rows event of `files`; returns (rows, 0, rows-event bytes, seconds, CPU seconds).
fn decode_all(files: &[PathBuf]) -> Result<(u64, u64, u64, f64, f64)> {
    let start = Instant::now();
    let cpu = cpu_secs();
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let mut decoder = RowDecoder::new();
    for f in files {
        decoder.clear();
        for e in read_binlog_file(f)? {
            let e = e?;
            let t = e.event.header().event_type_raw();
            if t == TABLE_MAP {
                decoder.table_map(&e.event)?;
            } else if is_rows_event(&e.event) {
                let (_, images) = decoder.rows(&e.event)?;
                rows += images.len() as u64;
                bytes += u64::from(e.event.header().event_size());
                std::hint::black_box(images);
            }
        }
    }
    Ok((rows, 0, bytes, start.elapsed().as_secs_f64(), cpu_secs() - cpu))
}

/// The first `n` tracked row changes of `files` as the source emits them (a commit at each XID).
fn changes(files: &[PathBuf], n: usize) -> Result<Vec<SourceEvent>> {
    let mut out = Vec::with_capacity(n + n / 100);
    let mut decoder = RowDecoder::new();
    let mut count = 0;
    for (seq, f) in files.iter().enumerate() {
        decoder.clear();
        let file = f.file_name().unwrap().to_string_lossy().to_string();
        for e in read_binlog_file(f)? {
            let e = e?;
            let t = e.event.header().event_type_raw();
            if t == TABLE_MAP {
                decoder.table_map(&e.event)?;
            } else if t == XID {
                out.push(SourceEvent::Commit {
                    position: BinlogPosition {
                        file: file.clone(),
                        pos: e.offset + u64::from(e.event.header().event_size()),
                        gtid: None,
                    },
                    source_ts: e.event.header().timestamp(),
                });
                if count >= n {
                    return Ok(out);
                }
            } else if is_rows_event(&e.event) {
                let (table, images) = decoder.rows(&e.event)?;
                for (i, image) in images.into_iter().enumerate() {
                    let op = image.op();
                    let (before, after) = image.into_images();
                    out.push(SourceEvent::Change(RowChange {
                        table: table.clone(),
                        op,
                        before,
                        after,
                        version: Version::of_row(seq as u64 + 1, e.offset, i as u64)?,
                        source_ts: e.event.header().timestamp(),
                    }));
                    count += 1;
                }
            }
        }
    }
    Ok(out)
}

fn clone_events(events: &[SourceEvent]) -> Vec<SourceEvent> {
    events
        .iter()
        .map(|e| match e {
            SourceEvent::Change(c) => SourceEvent::Change(c.clone()),
            SourceEvent::Commit { position, source_ts } => SourceEvent::Commit {
                position: position.clone(),
                source_ts: *source_ts,
            },
        })
        .collect()
}

fn router() -> Result<Router> {
    let dir = Path::new(MANIFEST_DIR);
    let text = std::fs::read_to_string(dir.join("cdc-indexer.example.toml"))?;
    let key = [(
        "CDC_PHONE_HASH_KEY".to_string(),
        "bench-key-0123456789abcdef".to_string(),
    )];
    let cfg = Config::parse(&text, "cdc-indexer.example.toml", key)?;
    let tokenizer = std::sync::Arc::new(cdc_indexer::tokenize::Tokenizer::load(Some(
        &dir.join(
            cfg.search
                .user_dict
                .as_deref()
                .context("example config has a user dictionary")?,
        ),
    ))?);
    let zone = cfg.source.offset();
    Ok(Router::new(
        cfg.tables
            .iter()
            .map(|t| Mapping::new(t, zone, Some(&tokenizer)))
            .collect(),
    ))
}

/// Transforms `passes` copies of the first `n` changes; `workers == 0` means a plain loop on
/// this thread. Returns (changes, ops, document bytes, seconds, CPU seconds).
fn transform(files: &[PathBuf], n: usize, passes: usize, workers: usize) -> Result<(u64, u64, u64, f64, f64)> {
    let events = changes(files, n)?;
    let rows = events.iter().filter(|e| matches!(e, SourceEvent::Change(_))).count() as u64;
    let mut router = router()?;
    let mut total = Duration::ZERO;
    let mut cpu = 0.0;
    let mut null = NullSink::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for _ in 0..passes {
        let input = clone_events(&events);
        // Shares the compiled mappings (one jieba), as the pipeline does.
        let pool_router = router.clone();
        let start = Instant::now();
        let cpu_start = cpu_secs();
        if workers == 0 {
            for e in &input {
                if let SourceEvent::Change(c) = e {
                    let m = router.route(&c.table).context("every bench table is mapped")?;
                    for op in m.apply(c)? {
                        null.count(op);
                    }
                }
            }
            drop(input);
        } else {
            let sink = &mut null;
            runtime.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(10_000);
                let feeder = tokio::spawn(async move {
                    for e in input {
                        if tx.send(e).await.is_err() {
                            break;
                        }
                    }
                });
                transform_pool::run(rx, pool_router, None, workers, sink).await?;
                feeder.await?;
                anyhow::Ok(())
            })?;
        }
        total += start.elapsed();
        cpu += cpu_secs() - cpu_start;
    }
    Ok((rows * passes as u64, null.ops, null.bytes, total.as_secs_f64(), cpu))
}

#[derive(Default)]
struct NullSink {
    ops: u64,
    bytes: u64,
}

impl NullSink {
    fn count(&mut self, op: DocOp) {
        self.ops += 1;
        if let cdc_indexer::change::DocAction::Index(doc) = &op.action {
            self.bytes += doc.len() as u64;
        }
    }
}

impl Output for &mut NullSink {
    fn submit(&mut self, op: DocOp) -> impl std::future::Future<Output = Result<(), SinkError>> + Send {
        self.count(op);
        std::future::ready(Ok(()))
    }
    fn boundary(&mut self, _: Boundary) {}
    fn dead_letter(&mut self, r: &DeadLetter<'_>) -> Result<(), SinkError> {
        panic!("bench rows must transform cleanly: {}", r.reason)
    }
}

/// User + system CPU seconds this process used so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn vm_hwm_kb() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

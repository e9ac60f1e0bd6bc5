//! `cdc-indexer reindex`: a zero-downtime rebuild under concurrent writes, killed and resumed,
//! then rolled back; and `--finish`.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_indexer::testkit::sample::create_shop_schema;
use cdc_indexer::testkit::{shared_es, shared_mysql, unique_name, wait_until, EsClient, EsTarget, OsmemServer};
use elasticsearch::http::Method;
use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};

use crate::harness::{diff, expected_events, settle, Indexer};

/// Rows that exist before the reindex starts: 100,000, or `CDC_REINDEX_TEST_ROWS` (at least
/// 10,000) on a machine too slow for that.
fn base() -> u64 {
    std::env::var("CDC_REINDEX_TEST_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .map_or(100_000, |n: u64| n.max(10_000))
}

/// A `[reindex]` section with a replica id no other test's indexer uses.
fn reindex_section(chunk_rows: u64) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = 700_000 + (std::process::id() % 1000) * 50 + N.fetch_add(1, Ordering::Relaxed) as u32;
    format!("[reindex]\nserver_id = {id}\nchunk_rows = {chunk_rows}\nretention_hours = 1\n")
}

/// Loads `event_log` rows `1..=n` with multi-row INSERTs.
async fn load_events(conn: &mut mysql_async::Conn, db: &str, n: u64) -> Result<()> {
    let mut id = 1;
    while id <= n {
        let end = (id + 5_000).min(n + 1);
        let rows: Vec<String> = (id..end)
            .map(|i| {
                format!(
                    "({i}, {}, 'created', '{{\"n\": {i}, \"note\": \"event {i}\"}}', {}, '2026-01-01 00:00:00.000' + INTERVAL {i} SECOND)",
                    i % 7_000 + 1,
                    if i % 3 == 0 { "NULL".to_string() } else { (i % 50).to_string() }
                )
            })
            .collect();
        conn.query_drop(format!(
            "INSERT INTO `{db}`.event_log (id, order_id, event_type, payload, operator_id, occurred_at) VALUES {}",
            rows.join(", ")
        ))
        .await?;
        id = end;
    }
    Ok(())
}

/// Concurrent writer on `event_log`: inserts, updates (of loaded rows too), deletes, delete and
/// re-insert, primary-key moves. `base_deleted` counts loaded rows it may have removed; it is
/// raised before the transaction is sent, so it never lags what an index can show.
struct Writer {
    stop: Arc<AtomicBool>,
    transactions: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<Result<()>>,
}

impl Writer {
    fn start(
        url: String,
        db: String,
        seed: u64,
        pause_ms: std::ops::Range<u64>,
        base_deleted: Arc<AtomicU64>,
        next_id: Arc<AtomicU64>,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let transactions = Arc::new(AtomicU64::new(0));
        let (s, b, t) = (stop.clone(), base_deleted.clone(), transactions.clone());
        let handle = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut conn = cdc_indexer::testkit::connect(&url).await?;
            let t_name = format!("`{db}`.event_log");
            let mut own: Vec<u64> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let roll = rng.gen_range(0..100);
                let mut sql = Vec::new();
                let base_id = rng.gen_range(1..=base());
                if roll < 35 {
                    for _ in 0..rng.gen_range(1..=3) {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        own.push(id);
                        sql.push(format!(
                            "INSERT INTO {t_name} (id, order_id, event_type, payload, operator_id, occurred_at) \
                             VALUES ({id}, 1, 'created', '{{\"w\": {id}}}', 7, '2026-02-01 10:00:00.123')"
                        ));
                    }
                } else if roll < 70 {
                    let id = match own.is_empty() || rng.gen_bool(0.7) {
                        true => base_id,
                        false => own[rng.gen_range(0..own.len())],
                    };
                    sql.push(format!(
                        "UPDATE {t_name} SET event_type = 'updated', payload = JSON_OBJECT('v', {}), operator_id = NULL WHERE id = {id}",
                        rng.gen::<u32>()
                    ));
                } else if roll < 85 {
                    if !own.is_empty() && rng.gen_bool(0.5) {
                        let id = own.swap_remove(rng.gen_range(0..own.len()));
                        sql.push(format!("DELETE FROM {t_name} WHERE id = {id}"));
                    } else {
                        b.fetch_add(1, Ordering::SeqCst);
                        sql.push(format!("DELETE FROM {t_name} WHERE id = {base_id}"));
                    }
                } else if roll < 93 {
                    // Deleted and inserted again in one transaction: the row must stay.
                    b.fetch_add(1, Ordering::SeqCst);
                    sql.push(format!("DELETE FROM {t_name} WHERE id = {base_id}"));
                    sql.push(format!(
                        "INSERT INTO {t_name} (id, order_id, event_type, payload, operator_id, occurred_at) \
                         VALUES ({base_id}, 2, 'reinserted', '{{\"r\": 1}}', NULL, '2026-03-01 00:00:00.000')"
                    ));
                } else {
                    // The primary key moves: a delete and an insert under the new key.
                    b.fetch_add(1, Ordering::SeqCst);
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    own.push(id);
                    sql.push(format!("UPDATE {t_name} SET id = {id} WHERE id = {base_id}"));
                }
                conn.query_drop("BEGIN").await?;
                for q in &sql {
                    conn.query_drop(q).await?;
                }
                conn.query_drop("COMMIT").await?;
                t.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(pause_ms.clone()))).await;
            }
            Ok(())
        });
        Writer {
            stop,
            transactions,
            handle,
        }
    }

    async fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await??;
        Ok(self.transactions.load(Ordering::Relaxed))
    }
}

/// Polls the alias's `_count` and a search on it; records every failure and every count below
/// what the index must hold at least (the loaded rows minus those the writer may have removed).
struct Reader {
    stop: Arc<AtomicBool>,
    problems: Arc<Mutex<Vec<String>>>,
    polls: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(es: EsClient, alias: String, base_deleted: Arc<AtomicU64>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(AtomicU64::new(0));
        let (s, p, n) = (stop.clone(), problems.clone(), polls.clone());
        let handle = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let count = es.request(Method::Get, &format!("{alias}/_count"), None).await;
                let floor = base() - base_deleted.load(Ordering::SeqCst);
                // A cheap query: the stand-in scores matches one by one, so a broad one would
                // slow down every other request.
                let id = n.load(Ordering::Relaxed) % base() + 1;
                let search = es
                    .request(
                        Method::Post,
                        &format!("{alias}/_search"),
                        Some(&serde_json::json!({"size": 1, "query": {"term": {"id": id}}})),
                    )
                    .await;
                {
                    let mut problems = p.lock().unwrap();
                    match count {
                        Ok((200, body)) => match body["count"].as_u64() {
                            Some(c) if c >= floor => {}
                            other => problems.push(format!("count {other:?} below the floor {floor}")),
                        },
                        other => problems.push(format!("_count failed: {other:?}")),
                    }
                    if !matches!(search, Ok((200, _))) {
                        problems.push(format!("search failed: {search:?}"));
                    }
                }
                n.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        });
        Reader {
            stop,
            problems,
            polls,
            handle,
        }
    }

    async fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await?;
        let problems = self.problems.lock().unwrap();
        ensure!(
            problems.is_empty(),
            "the alias reader saw {} problem(s), first: {:?}",
            problems.len(),
            problems.iter().take(5).collect::<Vec<_>>()
        );
        Ok(self.polls.load(Ordering::Relaxed))
    }
}

/// One `cdc-indexer reindex` child process, logging to a file in the indexer's directory.
struct ReindexRun {
    child: Child,
    log: std::path::PathBuf,
}

impl ReindexRun {
    fn start(indexer: &Indexer, table: &str, args: &[&str], name: &str) -> Result<ReindexRun> {
        let log = indexer.dir.path().join(format!("reindex-{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_cdc-indexer"))
            .args(["reindex", table, "--config"])
            .arg(indexer.config_path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawning cdc-indexer reindex")?;
        Ok(ReindexRun { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn success(mut self, timeout: Duration) -> Result<String> {
        let child = &mut self.child;
        let status = wait_until(timeout, Duration::from_millis(200), || {
            let r = child.try_wait();
            async move { r?.context("still running") }
        })
        .await
        .with_context(|| format!("reindex log:\n{}", self.log()))?;
        ensure!(status.success(), "reindex failed ({status}):\n{}", self.log());
        Ok(self.log())
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ReindexRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn job_state(indexer: &Indexer, alias: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(indexer.dir.path().join(format!("state/reindex-{alias}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

async fn wait_events_exact(
    indexer: &mut Indexer,
    conn: &mut mysql_async::Conn,
    es: &EsClient,
    db: &str,
    alias: &str,
) -> Result<()> {
    let expected = expected_events(conn, db).await?;
    settle(indexer, Duration::from_secs(600), || async {
        diff(alias, &expected, &es.all_docs(alias).await?)
    })
    .await
}

/// The acceptance test: reindex of 100,000 rows under a concurrent writer, with a
/// reader on the alias throughout; killed mid-way and resumed; exact after the swap; then
/// rolled back under writes and exact again on the old index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_under_writes_is_exact_survives_a_kill_and_rolls_back() -> Result<()> {
    // GIVEN 100,000 event_log rows, indexed by a running indexer (initial load into _v1)
    let seed = crate::seed();
    let mysql = shared_mysql();
    // A stand-in of its own: this test keeps one busy for minutes, which would slow every
    // other test sharing it (an external cluster, `ES_URL`, is used as it is).
    let own_es;
    let external = std::env::var("ES_URL").is_ok_and(|u| !u.is_empty());
    let es_target: &EsTarget = match external {
        true => shared_es(),
        false => {
            own_es = EsTarget::from_server(OsmemServer::start()?);
            &own_es
        }
    };
    // The writer's pause between transactions. The in-memory stand-in rewrites a whole column
    // of every numeric field on each update of an existing document (measured: 100 updates
    // take 5 s at 20,000 documents of this mapping, twice that at 40,000; inserts and deletes
    // stay cheap), so on it the writer runs at about 2 transactions/s instead of about 30,
    // which still interleaves hundreds of transactions with every phase of the job.
    let pause_ms = match external {
        true => 10..50,
        false => 300..700,
    };
    let es = es_target.client()?;
    let db = unique_name("e2e_reindex");
    let prefix = format!("{db}_");
    let alias = format!("{prefix}event_log");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    load_events(&mut conn, &db, base()).await?;
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, &reindex_section(2_000))?;
    indexer.start()?;
    settle(&mut indexer, Duration::from_secs(900), || async {
        let n = es.count(&alias).await.unwrap_or(0);
        ensure!(n == base(), "{alias} has {n} of {} documents", base());
        Ok(())
    })
    .await?;
    ensure!(es.get_alias(&alias).await? == [format!("{alias}_v1")]);

    // WHEN a writer changes the table and a reader polls the alias while the reindex runs,
    // is SIGKILLed after some chunks, and is run again
    let base_deleted = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(1_000_000));
    let reader = Reader::start(es_target.client()?, alias.clone(), base_deleted.clone());
    let writer = Writer::start(
        mysql.root_url().into(),
        db.clone(),
        seed,
        pause_ms.clone(),
        base_deleted.clone(),
        next_id.clone(),
    );
    let started = std::time::Instant::now();
    // (throttled, as an operator would, so the backfill leaves the live indexer room)
    let throttle = ["--rows-per-sec", "2000"];
    let first = ReindexRun::start(&indexer, &alias, &throttle, "first")?;
    let before_kill = wait_until(Duration::from_secs(900), Duration::from_millis(100), || {
        let rows = job_state(&indexer, &alias)
            .and_then(|s| s["rows"].as_u64())
            .unwrap_or(0);
        async move {
            ensure!(rows >= base() * 3 / 10, "{rows} rows backfilled");
            Ok(rows)
        }
    })
    .await
    .with_context(|| first.log())?;
    first.kill();
    ensure!(
        es.get_alias(&alias).await? == [format!("{alias}_v1")],
        "the alias moved before the job finished"
    );
    let log = ReindexRun::start(&indexer, &alias, &throttle, "resumed")?
        .success(Duration::from_secs(1200))
        .await?;
    let took = started.elapsed();
    let transactions = writer.stop().await?;

    // THEN the resumed job continued from its last finished chunk, not from scratch
    ensure!(log.contains("resuming the reindex"), "no resume in:\n{log}");
    let state = job_state(&indexer, &alias).context("no job state after the swap")?;
    ensure!(state["phase"]["name"] == "swapped", "{state}");
    ensure!(before_kill < base(), "killed only after the backfill ended");
    // AND the alias points to the new index, which equals the database row by row
    ensure!(es.get_alias(&alias).await? == [format!("{alias}_v2")]);
    wait_events_exact(&mut indexer, &mut conn, &es, &db, &alias).await?;
    eprintln!(
        "reindex of {} rows with {transactions} concurrent transactions took {:.1}s (killed at {before_kill} rows)",
        base(),
        took.as_secs_f64()
    );

    // WHEN the reindex is rolled back while the writer keeps writing
    let writer = Writer::start(
        mysql.root_url().into(),
        db.clone(),
        seed ^ 1,
        pause_ms,
        base_deleted.clone(),
        next_id.clone(),
    );
    ReindexRun::start(&indexer, &alias, &["--rollback"], "rollback")?
        .success(Duration::from_secs(900))
        .await?;
    writer.stop().await?;
    let polls = reader.stop().await?;

    // THEN the alias is back on the old index, which equals the database; the new one is gone
    ensure!(es.get_alias(&alias).await? == [format!("{alias}_v1")]);
    ensure!(es
        .get_alias(&format!("{alias}_v2"))
        .await
        .map(|v| v.is_empty())
        .unwrap_or(true));
    ensure!(
        job_state(&indexer, &alias).is_none(),
        "job state left after the rollback"
    );
    wait_events_exact(&mut indexer, &mut conn, &es, &db, &alias).await?;
    // AND the reader never saw a failed query or a count below what the index must hold
    ensure!(polls > 30, "the reader polled only {polls} times");
    Ok(())
}

/// `--finish` drops the old index and the job alias and restores `gc_deletes`; a second
/// reindex then builds `_v3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_finish_drops_the_old_index() -> Result<()> {
    // GIVEN a small table indexed by a running indexer, reindexed once
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_reindex_fin");
    let prefix = format!("{db}_");
    let alias = format!("{prefix}event_log");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    load_events(&mut conn, &db, 3_000).await?;
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, &reindex_section(500))?;
    indexer.start()?;
    settle(&mut indexer, Duration::from_secs(120), || async {
        let n = es.count(&alias).await.unwrap_or(0);
        ensure!(n == 3_000, "{n} documents");
        Ok(())
    })
    .await?;
    ReindexRun::start(&indexer, &alias, &[], "first")?
        .success(Duration::from_secs(120))
        .await?;
    let v2 = format!("{alias}_v2");
    let (_, settings) = es.request(Method::Get, &format!("{v2}/_settings"), None).await?;
    ensure!(
        settings[&v2]["settings"]["index"]["gc_deletes"].is_null(),
        "gc_deletes not restored: {settings}"
    );

    // AND the retention check keeps the old index while its retention lasts
    let cfg = cdc_indexer::config::Config::load(&indexer.config_path(), Vec::<(String, String)>::new())?;
    ensure!(cdc_indexer::reindex::expire(&cfg).await?.is_empty());

    // WHEN a second reindex starts before the first is finished, THEN it is refused
    let refused = ReindexRun::start(&indexer, &alias, &[], "refused")?;
    ensure!(refused.success(Duration::from_secs(60)).await.is_err());

    // WHEN the first is finished
    let out = ReindexRun::start(&indexer, &alias, &["--finish"], "finish")?
        .success(Duration::from_secs(60))
        .await?;

    // THEN the old index and the job alias are gone and the alias stays on _v2
    ensure!(out.contains("deleted"), "{out}");
    let (status, _) = es.request(Method::Head, &format!("{alias}_v1"), None).await?;
    ensure!(status == 404, "{alias}_v1 still exists ({status})");
    ensure!(es.get_alias(&format!("{alias}_reindex")).await?.is_empty());
    ensure!(es.get_alias(&alias).await? == std::slice::from_ref(&v2));

    // AND a later change still reaches the index through the alias, and a new reindex makes _v3
    conn.query_drop(format!("DELETE FROM `{db}`.event_log WHERE id <= 10"))
        .await?;
    ReindexRun::start(&indexer, &alias, &[], "second")?
        .success(Duration::from_secs(120))
        .await?;
    ensure!(es.get_alias(&alias).await? == [format!("{alias}_v3")]);
    wait_events_exact(&mut indexer, &mut conn, &es, &db, &alias).await?;
    // AND once the retention is over, the previous index is deleted by the retention check
    let expired = vec![("CDC_REINDEX__RETENTION_HOURS".to_string(), "0".to_string())];
    let cfg = cdc_indexer::config::Config::load(&indexer.config_path(), expired)?;
    ensure!(cdc_indexer::reindex::expire(&cfg).await? == std::slice::from_ref(&v2));
    let (status, _) = es.request(Method::Head, &v2, None).await?;
    ensure!(status == 404, "{v2} still exists ({status})");
    let seen: BTreeSet<String> = es.all_docs(&alias).await?.into_keys().collect();
    ensure!(!seen.contains("1") && seen.len() == 2_990, "{} docs", seen.len());
    Ok(())
}

/// `--where` and `--keys` re-snapshot part of a table in place: wrong, missing and orphaned
/// documents are repaired without a new index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_where_and_keys_repair_in_place() -> Result<()> {
    // GIVEN 2,000 rows indexed by a running indexer, and an index damaged behind its back: a
    // wrong document in and one out of the range, a missing one, and one without a row
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_reindex_part");
    let prefix = format!("{db}_");
    let alias = format!("{prefix}event_log");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    load_events(&mut conn, &db, 2_000).await?;
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, &reindex_section(300))?;
    indexer.start()?;
    settle(&mut indexer, Duration::from_secs(120), || async {
        let n = es.count(&alias).await.unwrap_or(0);
        ensure!(n == 2_000, "{n} documents");
        Ok(())
    })
    .await?;
    let wrong = |id: u64| {
        serde_json::json!({"id": id, "order_id": 1, "event_type": "corrupt", "payload": {},
            "operator_id": null, "occurred_at": "2020-01-01T00:00:00.000+08:00"})
    };
    es.put_doc(&alias, "5", &wrong(5)).await?;
    es.put_doc(&alias, "1500", &wrong(1500)).await?;
    es.put_doc(&alias, "999999", &wrong(999_999)).await?;
    let (status, _) = es.request(Method::Delete, &format!("{alias}/_doc/7"), None).await?;
    ensure!(status == 200, "delete of doc 7: {status}");
    // (damage by hand bumps the internal version by one; the live system moves the binlog on
    // meanwhile, so the repair's snapshot version is higher)
    conn.query_drop(format!("UPDATE `{db}`.event_log SET operator_id = 1 WHERE id = 2000"))
        .await?;

    // WHEN rows with id <= 10 are re-snapshotted
    ReindexRun::start(&indexer, &alias, &["--where", "id <= 10"], "where")?
        .success(Duration::from_secs(60))
        .await?;

    // THEN the range is repaired, the rest untouched
    let expected = expected_events(&mut conn, &db).await?;
    ensure!(
        es.get_doc(&alias, "5").await?.as_ref() == expected.get("5"),
        "doc 5 not repaired"
    );
    ensure!(
        es.get_doc(&alias, "7").await?.as_ref() == expected.get("7"),
        "doc 7 not restored"
    );
    ensure!(es.get_doc(&alias, "1500").await? == Some(wrong(1500)));

    // WHEN the remaining bad ids are re-snapshotted by key
    let out = ReindexRun::start(&indexer, &alias, &["--keys", "1500,999999"], "keys")?
        .success(Duration::from_secs(60))
        .await?;

    // THEN the index equals the database, still in _v1, with gc_deletes back at its default
    ensure!(out.contains("deleted 1 document"), "{out}");
    wait_events_exact(&mut indexer, &mut conn, &es, &db, &alias).await?;
    ensure!(es.get_alias(&alias).await? == [format!("{alias}_v1")]);
    let v1 = format!("{alias}_v1");
    let (_, settings) = es.request(Method::Get, &format!("{v1}/_settings"), None).await?;
    ensure!(settings[&v1]["settings"]["index"]["gc_deletes"].is_null(), "{settings}");
    Ok(())
}

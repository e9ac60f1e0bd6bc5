//! `cdc-indexer check`: drift injected behind the indexer's back is found and repaired, sampling
//! finds it at the expected rate, and concurrent writes are never reported as drift.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use cdc_indexer::testkit::sample::{create_shop_schema, run_transaction, Sample};
use cdc_indexer::testkit::workload::Workload;
use cdc_indexer::testkit::{shared_es, shared_mysql, unique_name, wait_until, EsClient};
use elasticsearch::http::Method;
use mysql_async::prelude::Queryable;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use crate::harness::{wait_exact, Indexer};
use crate::{seed, CATCH_UP};

/// Runs `cdc-indexer check --json <args>` against the indexer's config: (exit code, report).
async fn check(indexer: &Indexer, args: &[&str]) -> Result<(i32, Value)> {
    check_env(indexer, args, &[]).await
}

/// [`check`] with extra environment variables (config overrides).
async fn check_env(indexer: &Indexer, args: &[&str], env: &[(&str, &str)]) -> Result<(i32, Value)> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdc-indexer"))
        .args(["check", "--json", "--config"])
        .arg(indexer.config_path())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await?;
    let code = out.status.code().context("killed by a signal")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "check {args:?} exited {code} without a JSON report:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, report))
}

/// The report of one index.
fn table<'a>(report: &'a Value, index: &str) -> Result<&'a Value> {
    report["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["index"] == index))
        .with_context(|| format!("no report for {index}: {report}"))
}

/// The ids reported for `kind` (`missing`, `extra`, `stale`, …), sorted.
fn ids(report: &Value, index: &str, kind: &str) -> Result<Vec<String>> {
    let mut v: Vec<String> = table(report, index)?[kind]["ids"]
        .as_array()
        .with_context(|| format!("{kind} of {index}: {report}"))?
        .iter()
        .filter_map(|i| i.as_str().map(str::to_string))
        .collect();
    v.sort();
    Ok(v)
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Deletes a document behind the indexer's back.
async fn delete_doc(es: &EsClient, index: &str, id: &str) -> Result<()> {
    let (status, body) = es.request(Method::Delete, &format!("{index}/_doc/{id}"), None).await?;
    ensure!(status == 200, "delete {index}/{id}: {status} {body}");
    Ok(())
}

/// Starts an indexer on a fresh database holding `orders` sample orders and waits until the
/// indexes equal the database.
async fn indexed_sample(name: &str, seed: u64, orders: usize, extra: &str) -> Result<(Indexer, String, String)> {
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name(name);
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    Sample::generate(seed, orders).load(&mut conn, &db).await?;
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, extra)?;
    indexer.start()?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    Ok((indexer, db, prefix))
}

/// Every kind of drift is found by full mode, `--repair` fixes exactly it, and the index then
/// equals the database by the independent SQL oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_check_finds_and_repairs_every_kind_of_drift() -> Result<()> {
    // GIVEN an indexer that has indexed 120 orders and their events, and a clean check
    let (mut indexer, db, prefix) = indexed_sample("e2e_check_full", 11, 120, "").await?;
    let es = shared_es().client()?;
    let mut conn = shared_mysql().root_conn().await?;
    let (orders, events) = (format!("{prefix}orders"), format!("{prefix}event_log"));
    let (code, report) = check(&indexer, &["--full"]).await?;
    ensure!(code == 0, "a fresh index must check clean, got {code}: {report}");

    // WHEN documents are deleted, edited and added directly in the index, and rows are changed
    // and deleted with the binlog off
    delete_doc(&es, &orders, "3").await?;
    delete_doc(&es, &events, "2").await?;
    let mut edited = es.get_doc(&orders, "5").await?.context("doc 5")?;
    edited["buyer_name"] = Value::from("被改过");
    es.put_doc(&orders, "5", &edited).await?;
    let mut extra = es.get_doc(&orders, "7").await?.context("doc 7")?;
    extra["id"] = Value::from(999_999);
    extra["order_no"] = Value::from("NOT-IN-DB");
    es.put_doc(&orders, "999999", &extra).await?;
    conn.query_drop("SET SESSION sql_log_bin = 0").await?;
    conn.query_drop(format!(
        "UPDATE `{db}`.orders SET remark = '没有进 binlog' WHERE id = 9"
    ))
    .await?;
    conn.query_drop(format!("DELETE FROM `{db}`.orders WHERE id = 11"))
        .await?;
    conn.query_drop("SET SESSION sql_log_bin = 1").await?;
    es.refresh(&orders).await?;
    es.refresh(&events).await?;

    // THEN full mode reports exactly these differences, with exit code 1
    let (code, report) = check(&indexer, &["--full"]).await?;
    ensure!(code == 1, "drift must exit 1, got {code}: {report}");
    ensure!(ids(&report, &orders, "missing")? == sorted(&["3"]), "{report}");
    ensure!(ids(&report, &orders, "extra")? == sorted(&["11", "999999"]), "{report}");
    ensure!(ids(&report, &orders, "stale")? == sorted(&["5", "9"]), "{report}");
    ensure!(ids(&report, &events, "missing")? == sorted(&["2"]), "{report}");
    ensure!(
        table(&report, &events)?["extra"]["count"] == 0 && table(&report, &events)?["stale"]["count"] == 0,
        "{report}"
    );

    // WHEN it runs with --repair (and writes its metrics to a file)
    let metrics_file = indexer.dir.path().join("check.prom");
    let metrics_arg = metrics_file.display().to_string();
    let (code, report) = check(&indexer, &["--full", "--repair", "--metrics-file", &metrics_arg]).await?;
    ensure!(code == 1, "drift found (and repaired) exits 1, got {code}: {report}");
    ensure!(table(&report, &orders)?["repaired"] == 5, "{report}");
    ensure!(table(&report, &events)?["repaired"] == 1, "{report}");
    let metrics = std::fs::read_to_string(&metrics_file)?;
    for line in [
        format!("cdc_check_drift_rows{{index=\"{orders}\",kind=\"stale\"}} 2"),
        format!("cdc_check_drift_rows{{index=\"{orders}\",kind=\"extra\"}} 2"),
        format!("cdc_check_repaired_docs_total{{index=\"{events}\"}} 1"),
        r#"cdc_check_runs_total{mode="full",result="drift"} 1"#.to_string(),
    ] {
        ensure!(metrics.contains(&line), "{line} not in\n{metrics}");
    }

    // THEN the next check is clean, and the index equals the database row by row
    let (code, report) = check(&indexer, &["--full"]).await?;
    ensure!(code == 0, "after repair the check must be clean, got {code}: {report}");
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;

    // AND the repaired documents still follow live changes (repair versions do not block them)
    run_transaction(
        &mut conn,
        &[format!(
            "UPDATE `{db}`.orders SET remark = '修复后又改了' WHERE id IN (3, 5, 9)"
        )],
    )
    .await?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;

    // WHEN the indexer is stopped and a row changes (through the binlog) meanwhile
    ensure!(indexer.stop()?.success(), "clean stop: {}", indexer.log());
    run_transaction(
        &mut conn,
        &[format!("UPDATE `{db}`.orders SET remark = '还在路上' WHERE id = 20")],
    )
    .await?;
    // THEN the difference is a change in flight, reported unverified (exit 3), never drift
    let (code, report) = check_env(
        &indexer,
        &["--full", "--index", &orders],
        &[("CDC_CHECK__SETTLE_TIMEOUT_MS", "1000")],
    )
    .await?;
    ensure!(code == 3, "an unapplied change must exit 3, got {code}: {report}");
    ensure!(ids(&report, &orders, "unverified")? == sorted(&["20"]), "{report}");
    ensure!(table(&report, &orders)?["stale"]["count"] == 0, "{report}");
    // AND once the indexer runs again the check waits for it and is clean
    indexer.start()?;
    let (code, report) = check(&indexer, &["--full"]).await?;
    ensure!(
        code == 0,
        "must be clean once the indexer caught up, got {code}: {report}"
    );
    Ok(())
}

/// Sampling finds drift at the rate its sample size implies, and only real drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_finds_drift_at_the_expected_rate() -> Result<()> {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // GIVEN 400 indexed orders, 40 of which (10 %) then drift: 20 documents deleted in the
    // index, 20 rows changed with the binlog off
    let (indexer, db, prefix) = indexed_sample("e2e_check_sample", seed, 400, "").await?;
    let es = shared_es().client()?;
    let mut conn = shared_mysql().root_conn().await?;
    let orders = format!("{prefix}orders");
    let mut all: Vec<u64> = (1..=400).collect();
    all.shuffle(&mut rng);
    let drifted: BTreeSet<String> = all[..40].iter().map(u64::to_string).collect();
    for id in &all[..20] {
        delete_doc(&es, &orders, &id.to_string()).await?;
    }
    conn.query_drop("SET SESSION sql_log_bin = 0").await?;
    for id in &all[20..40] {
        conn.query_drop(format!(
            "UPDATE `{db}`.orders SET remark = 'silent {id}' WHERE id = {id}"
        ))
        .await?;
    }
    conn.query_drop("SET SESSION sql_log_bin = 1").await?;
    es.refresh(&orders).await?;

    // WHEN 200 keys are sampled
    let sample_seed = seed.to_string();
    let (code, report) = check(
        &indexer,
        &["--sample", "200", "--seed", &sample_seed, "--index", &orders],
    )
    .await?;

    // THEN the drift found is within 4 standard deviations of the hypergeometric mean
    // (N = 400, K = 40, n = 200: mean 20, sd 3.0), and every key reported really drifted
    let t = table(&report, &orders)?;
    ensure!(t["rows"] == 200, "200 sampled rows expected: {report}");
    let found: Vec<String> = ["missing", "stale"]
        .iter()
        .map(|k| ids(&report, &orders, k))
        .collect::<Result<Vec<_>>>()?
        .concat();
    ensure!(
        (8..=32).contains(&found.len()),
        "found {} drifted rows in a sample of 200; expected 20 ± 12: {report}",
        found.len()
    );
    ensure!(
        found.iter().all(|id| drifted.contains(id)),
        "false positive: {found:?} vs {drifted:?}"
    );
    ensure!(code == 1, "drift must exit 1, got {code}");

    // AND a sample as large as the table finds all of it
    let (_, report) = check(&indexer, &["--sample", "1000", "--index", &orders]).await?;
    let all_found: BTreeSet<String> = ["missing", "stale"]
        .iter()
        .map(|k| ids(&report, &orders, k))
        .collect::<Result<Vec<_>>>()?
        .concat()
        .into_iter()
        .collect();
    ensure!(all_found == drifted, "{all_found:?} vs {drifted:?}");
    Ok(())
}

/// Rows changing while the check runs are never reported as drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_not_drift() -> Result<()> {
    let seed = seed();
    // GIVEN 300 indexed orders and a writer changing orders and events all the time
    let (mut indexer, db, prefix) = indexed_sample("e2e_check_busy", seed, 300, "").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let db = db.clone();
        tokio::spawn(async move {
            let mut conn = shared_mysql().root_conn().await?;
            let mut workload = Workload::new(&db, seed).with_existing(&Sample::generate(seed, 300));
            // About 25 transactions a second: a steady load a debug-build indexer keeps up with
            // on a shared CI machine, so the check runs against changes in flight, not a backlog.
            let mut pace = tokio::time::interval(std::time::Duration::from_millis(40));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                run_transaction(&mut conn, &workload.next_transaction()).await?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    };

    // WHEN full and sampling checks run during the writes
    let full = check(&indexer, &["--full"]).await;
    let sampled = check(&indexer, &["--sample", "300"]).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await??;

    // THEN neither reports drift, and nothing is left unverified
    for (what, result) in [("full", full), ("sample", sampled)] {
        let (code, report) = result?;
        let rechecked: u64 = report["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["rechecked"].as_u64())
            .sum();
        eprintln!("{what} check: {rechecked} in-flight differences re-checked and settled");
        ensure!(
            code == 0,
            "{what} check under {transactions} concurrent transactions exited {code}: {report}"
        );
    }
    ensure!(transactions > 20, "the writer should have been busy: {transactions}");
    // AND the index still converges to the database (the check wrote nothing)
    let es = shared_es().client()?;
    let mut conn = shared_mysql().root_conn().await?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    Ok(())
}

/// The scheduled check inside `run` repairs drift by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_check_repairs_drift() -> Result<()> {
    // GIVEN an indexer running a sampling check with repair every second, over 60 orders
    let extra = "[check]\ninterval_seconds = 1\nsample_rows = 1000\nrepair = true\n";
    let (mut indexer, db, prefix) = indexed_sample("e2e_check_sched", 5, 60, extra).await?;
    let es = shared_es().client()?;
    let mut conn = shared_mysql().root_conn().await?;
    let orders = format!("{prefix}orders");

    // WHEN a document is deleted and another edited in the index
    delete_doc(&es, &orders, "4").await?;
    let mut edited = es.get_doc(&orders, "6").await?.context("doc 6")?;
    edited["address"] = Value::from("篡改的地址");
    es.put_doc(&orders, "6", &edited).await?;

    // THEN the index comes back to exactly the database, and the log says why
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    // (the run ends, and logs, after it has also checked the other index)
    let log = wait_until(CATCH_UP, std::time::Duration::from_millis(200), || {
        let log = indexer.log();
        async move {
            ensure!(
                log.contains("scheduled consistency check found drift"),
                "no scheduled repair logged:\n{log}"
            );
            Ok(log)
        }
    })
    .await?;
    // AND the indexer's /metrics shows the runs and the repairs
    let addr = log
        .split("metrics endpoint listening addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("no metrics address in the log")?
        .to_string();
    let metrics = http_get(&addr, "/metrics").await?;
    ensure!(
        metrics.contains(&format!("cdc_check_repaired_docs_total{{index=\"{orders}\"}} 2")),
        "{metrics}"
    );
    ensure!(
        metrics.contains(r#"cdc_check_runs_total{mode="sample",result="drift"}"#),
        "{metrics}"
    );
    Ok(())
}

/// The body of `GET path` over HTTP/1.0 (never chunked).
async fn http_get(addr: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    ensure!(head.contains(" 200 "), "GET {path}: {head}");
    Ok(body.to_string())
}

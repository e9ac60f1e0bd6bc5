//! Chaos on the Elasticsearch side: a fault-injecting proxy between the indexer and the
//! stand-in throws 429 storms, 503s, connection resets (before and after the write), slow
//! answers and per-item rejections at a random workload; afterwards the index must equal the
//! database row by row. And a wiped index must stop the indexer loudly, never be papered over.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{ensure, Result};
use cdc_indexer::testkit::sample::{create_shop_schema, Sample};
use cdc_indexer::testkit::workload::Workload;
use cdc_indexer::testkit::{shared_es, shared_mysql, unique_name, wait_until, EsProxy, EsTarget, Faults, OsmemServer};

use crate::harness::{wait_exact, Indexer};
use crate::{changed_rows, seed, CATCH_UP};

/// The fault phases, each applied while a slice of the workload is written.
fn phases() -> Vec<(&'static str, Faults)> {
    vec![
        (
            "429 storm with Retry-After",
            Faults {
                reject: Some((429, 0.8)),
                retry_after_secs: Some(1),
                ..Faults::default()
            },
        ),
        (
            "503s",
            Faults {
                reject: Some((503, 0.5)),
                ..Faults::default()
            },
        ),
        (
            "resets before the write",
            Faults {
                reset_before: 0.4,
                ..Faults::default()
            },
        ),
        (
            "resets after the write (answer lost)",
            Faults {
                reset_after: 0.4,
                ..Faults::default()
            },
        ),
        (
            "slow answers and per-item 429s",
            Faults {
                delay: Duration::from_millis(400),
                item_reject: 0.3,
                ..Faults::default()
            },
        ),
        (
            "everything at once",
            Faults {
                reject: Some((429, 0.2)),
                reset_before: 0.1,
                reset_after: 0.1,
                delay: Duration::from_millis(100),
                item_reject: 0.2,
                ..Faults::default()
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_faults_lose_nothing() -> Result<()> {
    let seed = seed();
    // GIVEN 200 existing orders, and an indexer writing through a fault proxy to the stand-in
    let mysql = shared_mysql();
    let es_target: &EsTarget = shared_es();
    let es = es_target.client()?;
    let proxy = EsProxy::start(es_target.url(), seed)?;
    let db = unique_name("e2e_esfault");
    let prefix = format!("{db}_");
    let mut conn = cdc_indexer::testkit::connect(mysql.root_url()).await?;
    create_shop_schema(&mut conn, &db).await?;
    let sample = Sample::generate(seed, 200);
    sample.load(&mut conn, &db).await?;
    let mut workload = Workload::new(&db, seed).with_existing(&sample);
    let mut indexer = Indexer::new(mysql.url(), proxy.url(), &db, &prefix, "")?;
    indexer.start()?;

    // WHEN each fault phase in turn meets a slice of the random workload
    let mut changes = 0;
    for (name, faults) in phases() {
        proxy.set(faults);
        let before = proxy.stats().bulk_requests.load(Ordering::Relaxed);
        let mut phase_changes = 0;
        for txn in workload.transactions(120) {
            phase_changes += changed_rows(&mut conn, &txn).await?;
        }
        // The phase lasts until the indexer has sent it a few requests, so each fault is met.
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || async {
            let n = proxy.stats().bulk_requests.load(Ordering::Relaxed) - before;
            ensure!(n >= 8, "{n} bulk requests in this phase so far");
            Ok(())
        })
        .await?;
        ensure!(indexer.is_running(), "indexer died in phase {name}:\n{}", indexer.log());
        eprintln!("phase {name}: {phase_changes} row changes");
        changes += phase_changes;
    }
    proxy.set(Faults::default());

    // THEN the index equals the database row by row, with nothing dead-lettered
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    let s = proxy.stats();
    let (rejected, resets, items) = (
        s.rejected_requests.load(Ordering::Relaxed),
        s.resets.load(Ordering::Relaxed),
        s.rejected_items.load(Ordering::Relaxed),
    );
    eprintln!(
        "{changes} changes; proxy: {rejected} requests rejected, {resets} connections reset, {items} items rejected"
    );
    ensure!(
        rejected > 0 && resets > 0 && items > 0,
        "every kind of fault must have been injected"
    );
    // AND the sink reacted to the pushback by lowering its concurrency, and said so
    let log = indexer.log();
    ensure!(
        log.contains("fewer bulk requests in flight"),
        "no concurrency decrease logged:\n{log}"
    );
    let status = indexer.stop()?;
    ensure!(status.success(), "clean exit expected, got {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_index_stops_the_indexer_loudly() -> Result<()> {
    // GIVEN an indexer streaming through a proxy into a stand-in of this test's own
    let seed = seed();
    let mysql = shared_mysql();
    if std::env::var("ES_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped against an external cluster: the test restarts its own stand-in");
        return Ok(());
    }
    let first = EsTarget::from_server(OsmemServer::start()?);
    let proxy = EsProxy::start(first.url(), seed)?;
    let db = unique_name("e2e_wiped");
    let prefix = format!("{db}_");
    let mut conn = cdc_indexer::testkit::connect(mysql.root_url()).await?;
    create_shop_schema(&mut conn, &db).await?;
    let sample = Sample::generate(seed, 50);
    sample.load(&mut conn, &db).await?;
    let mut workload = Workload::new(&db, seed).with_existing(&sample);
    let mut indexer = Indexer::new(mysql.url(), proxy.url(), &db, &prefix, "")?;
    indexer.start()?;
    let es = first.client()?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;

    // WHEN the stand-in is replaced by an empty one (a wiped cluster) and writes go on
    let second = EsTarget::from_server(OsmemServer::start()?);
    proxy.set_upstream(second.url());
    drop(first);
    for txn in workload.transactions(20) {
        changed_rows(&mut conn, &txn).await?;
    }

    // THEN the indexer exits with an error naming the vanished index and the fix
    let status = indexer.exit_status(Duration::from_secs(60)).await?;
    let log = indexer.log();
    ensure!(!status.success(), "must fail, got {status}:\n{log}");
    ensure!(
        log.contains(&format!("{prefix}orders")) || log.contains(&format!("{prefix}event_log")),
        "the error must name the index:\n{log}"
    );
    ensure!(log.contains("reindex"), "the error must name the fix:\n{log}");
    // AND a restart refuses to resume into an empty index instead of silently re-creating it.
    // (The stand-in auto-creates an index for a bulk delete despite `require_alias`, which
    // Elasticsearch would refuse; start-up then finds a concrete index instead of no alias.)
    indexer.start()?;
    let status = indexer.exit_status(Duration::from_secs(60)).await?;
    let log = indexer.log();
    ensure!(!status.success(), "a restart must refuse, got {status}:\n{log}");
    ensure!(
        log.contains("does not exist although a checkpoint does")
            || log.contains("exists as a concrete index, not an alias"),
        "start-up must explain what happened to the alias:\n{log}"
    );
    Ok(())
}

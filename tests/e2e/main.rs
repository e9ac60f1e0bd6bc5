//! End-to-end tests: the real `cdc-indexer` binary between a real MariaDB (binary log on) and
//! an Elasticsearch-compatible server, compared row by row with an SQL-only oracle.

mod check;
mod harness;
mod reindex;
mod security;
mod sink_chaos;

use std::time::Duration;

use anyhow::{ensure, Result};
use cdc_indexer::testkit::sample::{create_shop_schema, run_transaction, Sample};
use cdc_indexer::testkit::workload::Workload;
use cdc_indexer::testkit::{shared_es, shared_mysql, unique_name, EsTarget, MariaDbServer};
use harness::{diff, settle, wait_exact, Indexer};
use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};

const CATCH_UP: Duration = Duration::from_secs(180);

pub(crate) fn seed() -> u64 {
    let s = std::env::var("CDC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {s} (replay with CDC_TEST_SEED={s})");
    s
}

/// The headline guarantee: a random workload over both tables, with the indexer SIGKILLed at
/// random moments and MariaDB restarted mid-stream, ends with the index exactly equal to the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_survives_kills_and_server_restart() -> Result<()> {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // GIVEN a MariaDB of this test's own (it will be restarted), 300 existing orders, and an
    // indexer started on them (initial load)
    let external = std::env::var("CDC_MYSQL_URL").is_ok_and(|u| !u.is_empty());
    let mut own = if external { None } else { Some(MariaDbServer::start()?) };
    let (url, root_url) = match &own {
        Some(s) => (s.url(), s.root_url()),
        None => (shared_mysql().url().to_string(), shared_mysql().root_url().to_string()),
    };
    let es_target: &EsTarget = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_chaos");
    let prefix = format!("{db}_");
    let mut conn = cdc_indexer::testkit::connect(&root_url).await?;
    create_shop_schema(&mut conn, &db).await?;
    let sample = Sample::generate(seed, 300);
    sample.load(&mut conn, &db).await?;
    let mut workload = Workload::new(&db, seed).with_existing(&sample);
    let mut indexer = Indexer::new(&url, es_target.url(), &db, &prefix, "")?;
    indexer.start()?;

    // WHEN ≥ 10,000 row changes are written in transactions, while the indexer is killed at
    // random points and restarted, and MariaDB is restarted once half-way
    let started = std::time::Instant::now();
    let mut changes = 0usize;
    let mut kills = 0;
    let mut restarted_server = false;
    let mut batch = 0;
    while changes < 10_000 {
        batch += 1;
        for txn in workload.transactions(50) {
            changes += changed_rows(&mut conn, &txn).await?;
        }
        let chaos = std::env::var("CDC_TEST_NO_CHAOS").is_err();
        if chaos && rng.gen_bool(0.25) && indexer.is_running() {
            indexer.kill();
            kills += 1;
            indexer.start()?;
        }
        if chaos && !restarted_server && changes >= 5_000 {
            if let Some(server) = own.as_mut() {
                drop(conn);
                server.restart()?;
                conn = cdc_indexer::testkit::connect(&root_url).await?;
                restarted_server = true;
            }
        }
        ensure!(
            indexer.is_running(),
            "indexer died in batch {batch}:\n{}",
            indexer.log()
        );
    }
    let written = started.elapsed();

    // THEN the index equals the database, row by row
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    let total = started.elapsed();
    eprintln!(
        "{changes} row changes in {:.1}s ({:.0}/s written); index exact after {:.1}s total; {kills} kills; server restarted: {restarted_server}",
        written.as_secs_f64(),
        changes as f64 / written.as_secs_f64(),
        total.as_secs_f64()
    );
    ensure!(
        kills > 0 || batch < 4,
        "the run should have killed the indexer at least once"
    );

    // AND a graceful stop leaves a checkpoint at the server's end of the binlog
    let status = indexer.stop()?;
    ensure!(status.success(), "clean exit expected, got {status}: {}", indexer.log());
    ensure!(indexer.checkpoint().is_some(), "no checkpoint written");
    Ok(())
}

/// Runs one transaction and returns the rows it changed.
pub(crate) async fn changed_rows(conn: &mut mysql_async::Conn, statements: &[String]) -> Result<usize> {
    let mut tx = conn.start_transaction(Default::default()).await?;
    let mut n = 0;
    for s in statements {
        tx.query_drop(s).await?;
        n += tx.affected_rows() as usize;
    }
    tx.commit().await?;
    Ok(n.max(1))
}

/// DDL mid-stream: later rows carry a new column, earlier documents are untouched, and a
/// dropped or modified column maps correctly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_mid_stream_maps_columns_by_name() -> Result<()> {
    // GIVEN a tracked table with a permissive mapping and an indexer streaming it
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_ddl");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    conn.query_drop(format!(
        "CREATE TABLE `{db}`.notes (id INT PRIMARY KEY, a VARCHAR(20), b INT) CHARSET utf8mb4"
    ))
    .await?;
    let mapping = tempfile::NamedTempFile::new()?;
    std::fs::write(mapping.path(), r#"{"mappings":{"dynamic":true}}"#)?;
    let extra = format!(
        "[[tables]]\nsource = '{db}\\.notes'\nindex = \"{prefix}notes\"\nmapping = \"{}\"\n",
        mapping.path().display()
    );
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, &extra)?;
    indexer.start()?;
    conn.query_drop(format!(
        "INSERT INTO `{db}`.notes VALUES (1, '前', 10), (2, 'before', 20)"
    ))
    .await?;
    let notes = format!("{prefix}notes");
    settle(&mut indexer, CATCH_UP, || async {
        ensure!(es.count(&notes).await? == 2, "not yet");
        Ok(())
    })
    .await?;

    // WHEN columns are added in the middle, dropped and modified while rows keep changing
    conn.query_drop(format!(
        "ALTER TABLE `{db}`.notes ADD COLUMN c VARCHAR(10) NULL AFTER a"
    ))
    .await?;
    conn.query_drop(format!("INSERT INTO `{db}`.notes VALUES (3, 'after', '新列', 30)"))
        .await?;
    conn.query_drop(format!("UPDATE `{db}`.notes SET b = 21 WHERE id = 2"))
        .await?;
    conn.query_drop(format!(
        "ALTER TABLE `{db}`.notes DROP COLUMN a, MODIFY COLUMN b BIGINT"
    ))
    .await?;
    conn.query_drop(format!("INSERT INTO `{db}`.notes VALUES (4, 'x', 9000000000)"))
        .await?;

    // THEN every document reflects its row as of its last change, fields mapped by name
    let expected: std::collections::BTreeMap<String, serde_json::Value> = [
        ("1", serde_json::json!({"id": 1, "a": "前", "b": 10})),
        ("2", serde_json::json!({"id": 2, "a": "before", "c": null, "b": 21})),
        ("3", serde_json::json!({"id": 3, "a": "after", "c": "新列", "b": 30})),
        ("4", serde_json::json!({"id": 4, "c": "x", "b": 9000000000u64})),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    settle(&mut indexer, CATCH_UP, || async {
        diff("notes", &expected, &es.all_docs(&notes).await?)
    })
    .await?;
    Ok(())
}

/// Every column type decodes to its exact value on a live server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_types_are_exact_on_live_mariadb() -> Result<()> {
    // GIVEN a table with every column type and an indexer streaming it
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_types");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    conn.query_drop(format!(
        "CREATE TABLE `{db}`.types (id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED, \
         mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, \
         d1 DECIMAL(18,2), d2 DECIMAL(65,30), f FLOAT, db DOUBLE, dt DATE, t0 DATETIME, t3 DATETIME(3), t6 DATETIME(6), \
         tm TIME, tm6 TIME(6), ts TIMESTAMP(3) NULL, y YEAR, c CHAR(5), vc VARCHAR(50), tx TEXT, l1 VARCHAR(20) CHARACTER SET latin1, \
         bn BINARY(4), vb VARBINARY(8), bl BLOB, e ENUM('a','b','c'), s SET('x','y','z'), bt BIT(10), js JSON) CHARSET utf8mb4"
    ))
    .await?;
    let mapping = tempfile::NamedTempFile::new()?;
    std::fs::write(
        mapping.path(),
        r#"{"mappings":{"dynamic":true,"date_detection":false,"numeric_detection":false,"properties":{"bu":{"type":"unsigned_long"},"js":{"type":"object","enabled":false}}}}"#,
    )?;
    let extra = format!(
        "[[tables]]\nsource = '{db}\\.types'\nindex = \"{prefix}types\"\nmapping = \"{}\"\njson_columns = [\"js\"]\n",
        mapping.path().display()
    );
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, &extra)?;
    indexer.start()?;

    // WHEN rows with extreme and ordinary values are written (the session zone is UTC so the
    // TIMESTAMP literal is an unambiguous instant)
    conn.query_drop("SET time_zone = '+00:00'").await?;
    conn.query_drop(format!(
        "INSERT INTO `{db}`.types VALUES \
         (1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615, \
          -1234567890123456.78, 0.000000000000000000000000000001, 1.1, -2.5e-300, '2026-01-25', '2026-01-25 23:59:59', \
          '2026-01-25 08:00:00.123', '1999-12-31 23:59:59.999999', '-838:59:59', '-00:00:01.500000', '2026-01-25 00:00:00.250', \
          2155, 'ab', '张三 🎉', 'long text ✓', 'café ñ', x'deadbeef', x'0102', x'cafe', 'b', 'x,z', b'1000000001', \
          '{{\"a\": 1, \"big\": 9223372036854775807, \"arr\": [\"x\", true, null], \"d\": 1.5}}'), \
         (2, -1, 0, NULL, NULL, -1, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          0, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, '', b'0', NULL)"
    ))
    .await?;

    // THEN the documents hold exactly these values
    let expected: std::collections::BTreeMap<String, serde_json::Value> = [
        (
            "1",
            serde_json::json!({
                "id": 1, "ti": -128, "tu": 255, "si": -32768, "su": 65535, "mi": -8388608, "mu": 16777215,
                "i": -2147483648i64, "iu": 4294967295u64, "bi": i64::MIN, "bu": u64::MAX,
                "d1": "-1234567890123456.78", "d2": "0.000000000000000000000000000001", "f": 1.1, "db": -2.5e-300,
                "dt": "2026-01-25", "t0": "2026-01-25T23:59:59+08:00", "t3": "2026-01-25T08:00:00.123+08:00",
                "t6": "1999-12-31T23:59:59.999999+08:00", "tm": "-838:59:59", "tm6": "-00:00:01.500000",
                "ts": "2026-01-25T08:00:00.250+08:00", "y": 2155, "c": "ab", "vc": "张三 🎉", "tx": "long text ✓",
                "l1": "café ñ", "bn": "3q2+7w==", "vb": "AQI=", "bl": "yv4=", "e": "b", "s": ["x", "z"], "bt": 513,
                "js": {"a": 1, "big": 9223372036854775807i64, "arr": ["x", true, null], "d": 1.5}
            }),
        ),
        (
            "2",
            serde_json::json!({
                "id": 2, "ti": -1, "tu": 0, "si": null, "su": null, "mi": -1, "mu": 0, "i": null, "iu": null, "bi": null,
                "bu": null, "d1": null, "d2": null, "f": null, "db": null, "dt": null, "t0": null, "t3": null, "t6": null,
                "tm": null, "tm6": null, "ts": null, "y": 0, "c": null, "vc": "", "tx": null, "l1": null, "bn": null,
                "vb": null, "bl": null, "e": null, "s": [], "bt": 0, "js": null
            }),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let types = format!("{prefix}types");
    settle(&mut indexer, CATCH_UP, || async {
        diff("types", &expected, &es.all_docs(&types).await?)
    })
    .await?;
    Ok(())
}

/// Start-up refuses a server whose binlog cannot give full rows, and a checkpoint whose binlog
/// was purged, naming the fix; a graceful stop and restart resumes without reloading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_checks_and_resume() -> Result<()> {
    if std::env::var("CDC_MYSQL_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped: changes global server settings, needs a server of its own");
        return Ok(());
    }
    // GIVEN a server of this test's own with a partial row image configured
    let server = MariaDbServer::start()?;
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_checks");
    let prefix = format!("{db}_");
    let mut conn = server.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    Sample::generate(7, 50).load(&mut conn, &db).await?;
    conn.query_drop("SET GLOBAL binlog_row_image = 'MINIMAL'").await?;
    let mut indexer = Indexer::new(&server.url(), es_target.url(), &db, &prefix, "")?;

    // WHEN the indexer starts THEN it exits with an error naming the setting and the fix
    indexer.start()?;
    let status = indexer.exit_status(Duration::from_secs(60)).await?;
    ensure!(!status.success(), "must refuse to start");
    let log = indexer.log();
    ensure!(
        log.contains("binlog_row_image is MINIMAL but must be FULL"),
        "unexpected message:\n{log}"
    );

    // GIVEN the setting fixed, WHEN it starts THEN it loads and indexes the existing rows
    conn.query_drop("SET GLOBAL binlog_row_image = 'FULL'").await?;
    indexer.start()?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;

    // WHEN it is stopped gracefully, rows change meanwhile, and it starts again
    ensure!(indexer.stop()?.success(), "clean stop: {}", indexer.log());
    let checkpoint = indexer.checkpoint().expect("checkpoint after a clean stop");
    run_transaction(
        &mut conn,
        &[format!(
            "UPDATE `{db}`.orders SET status = 'paid', remark = '已付款' WHERE id <= 10"
        )],
    )
    .await?;
    indexer.start()?;
    // THEN it resumes from the checkpoint (no reload) and catches up exactly
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    ensure!(
        !indexer.log().contains("initial load"),
        "must resume, not reload:\n{}",
        indexer.log()
    );
    // AND `status` reports the checkpoint caught up with the server
    let config = indexer.config_path();
    settle(&mut indexer, CATCH_UP, || {
        let config = config.clone();
        async move {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-indexer"))
                .args(["status", "--json", "--config"])
                .arg(&config)
                .output()?;
            ensure!(
                out.status.success(),
                "status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            ensure!(s["lag_bytes"] == 0 && s["lag_seconds"] == 0, "status: {s}");
            ensure!(
                s["checkpoint"]["position"]["file"] == s["server"]["file"],
                "status: {s}"
            );
            Ok(())
        }
    })
    .await?;
    ensure!(indexer.stop()?.success(), "clean stop");
    ensure!(indexer.checkpoint() != Some(checkpoint), "checkpoint must advance");

    // GIVEN the checkpoint's binlog purged from the server
    conn.query_drop("FLUSH BINARY LOGS").await?;
    let row: mysql_async::Row = conn.query_first("SHOW MASTER STATUS").await?.expect("binlog on");
    let last: String = row.get(0).expect("file");
    // MariaDB keeps a file until its binlog checkpoint has passed it: repeat until it is gone.
    let cp_file = indexer.checkpoint().expect("checkpoint")["position"]["file"]
        .as_str()
        .expect("file")
        .to_string();
    let root_url = server.root_url();
    cdc_indexer::testkit::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let (root_url, last, cp_file) = (root_url.clone(), last.clone(), cp_file.clone());
        async move {
            let mut c = cdc_indexer::testkit::connect(&root_url).await?;
            c.query_drop(format!("PURGE BINARY LOGS TO '{last}'")).await?;
            let files: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await?;
            let names: Vec<String> = files.iter().filter_map(|r| r.get(0)).collect();
            ensure!(!names.contains(&cp_file), "{cp_file} still listed in {names:?}");
            Ok(())
        }
    })
    .await?;
    // WHEN it starts THEN it refuses, saying to reindex
    indexer.start()?;
    let status = indexer.exit_status(Duration::from_secs(60)).await?;
    ensure!(!status.success(), "must refuse a purged checkpoint");
    let log = indexer.log();
    ensure!(
        log.contains("is no longer on the server") && log.contains("reindex"),
        "unexpected message (purged up to {last}, checkpoint {:?}):\n{log}",
        indexer.checkpoint()
    );
    Ok(())
}

/// A frozen server (SIGSTOP) is detected by the missing heartbeats, and streaming carries on
/// once it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_is_detected_and_survived() -> Result<()> {
    if std::env::var("CDC_MYSQL_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped: freezes the server, needs a server of its own");
        return Ok(());
    }
    // GIVEN an indexer streaming from a server of this test's own
    let mut server = MariaDbServer::start()?;
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_stall");
    let prefix = format!("{db}_");
    let mut conn = server.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    Sample::generate(11, 20).load(&mut conn, &db).await?;
    let mut indexer = Indexer::new(&server.url(), es_target.url(), &db, &prefix, "")?;
    indexer.start()?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await?;
    drop(conn);
    let indexer_log = indexer.log_path();

    // WHEN the server is frozen for longer than three heartbeat periods (3 × 500 ms)
    server.pause()?;
    let stalled = settle(&mut indexer, Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&indexer_log).unwrap_or_default();
        async move {
            ensure!(log.contains("stalled"), "no stall reported yet");
            Ok(())
        }
    })
    .await;
    server.resume()?;
    stalled?;

    // THEN the stall was reported (above), and changes made after the thaw are indexed
    let mut conn = server.root_conn().await?;
    run_transaction(
        &mut conn,
        &[format!("UPDATE `{db}`.orders SET remark = '解冻后' WHERE id <= 5")],
    )
    .await?;
    wait_exact(&mut indexer, &mut conn, &es, &db, &prefix, CATCH_UP).await
}

/// A document the index rejects goes to the dead-letter file with its reason, does not block
/// the stream, and `dlq replay` indexes it once the mapping is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_documents_are_dead_lettered_and_replayed() -> Result<()> {
    // GIVEN a tracked table whose strict mapping lacks column `b`
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_dlq");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    conn.query_drop(format!("CREATE TABLE `{db}`.notes (id INT PRIMARY KEY, a VARCHAR(20))"))
        .await?;
    let mapping = tempfile::NamedTempFile::new()?;
    std::fs::write(
        mapping.path(),
        r#"{"mappings":{"dynamic":"strict","properties":{"id":{"type":"long"},"a":{"type":"keyword"}}}}"#,
    )?;
    let extra = format!(
        "[[tables]]\nsource = '{db}\\.notes'\nindex = \"{prefix}notes\"\nmapping = \"{}\"\n",
        mapping.path().display()
    );
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, &extra)?;
    indexer.start()?;

    // (the initial load is over once a first checkpoint exists: from then on rows are streamed)
    let state = indexer.dir.path().join("state/checkpoint.json");
    cdc_indexer::testkit::wait_until(CATCH_UP, Duration::from_millis(100), || {
        let exists = state.exists();
        async move {
            ensure!(exists, "no checkpoint yet");
            Ok(())
        }
    })
    .await?;

    // WHEN rows fit the mapping, then a column it lacks is added and a row uses it, and other
    // changes keep coming after that
    conn.query_drop(format!("INSERT INTO `{db}`.notes VALUES (1, 'fits'), (3, 'fits too')"))
        .await?;
    conn.query_drop(format!("ALTER TABLE `{db}`.notes ADD COLUMN b INT NULL"))
        .await?;
    conn.query_drop(format!("INSERT INTO `{db}`.notes VALUES (2, 'rejected', 7)"))
        .await?;
    Sample::generate(3, 1).load(&mut conn, &db).await?;

    // THEN the rejected row is dead-lettered with its reason and everything else is indexed
    let notes = format!("{prefix}notes");
    let orders = format!("{prefix}orders");
    let dlq = indexer.dir.path().join("state/dead-letter.jsonl");
    cdc_indexer::testkit::wait_until(Duration::from_secs(60), Duration::from_millis(200), || async {
        ensure!(es.count(&notes).await? == 2, "notes not yet indexed");
        ensure!(
            es.count(&orders).await? == 1,
            "the order after the rejection is not indexed"
        );
        let text = std::fs::read_to_string(&dlq).unwrap_or_default();
        ensure!(
            text.contains("strict_dynamic_mapping_exception") && text.contains("\"id\":\"2\""),
            "dlq: {text}"
        );
        Ok(())
    })
    .await
    .map_err(|e| e.context(indexer.log()))?;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cdc-indexer"))
            .args(args)
            .arg("--config")
            .arg(indexer.config_path())
            .output()
    };
    let listed = cli(&["dlq", "list", "--json"])?;
    ensure!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).lines().count() == 1,
        "{listed:?}"
    );

    // WHEN the operator adds the field to the mapping and replays
    let (status, body) = es
        .request(
            elasticsearch::http::Method::Put,
            &format!("/{notes}/_mapping"),
            Some(&serde_json::json!({"properties": {"b": {"type": "integer"}}})),
        )
        .await?;
    ensure!(status == 200, "mapping update: {body}");
    let replayed = cli(&["dlq", "replay"])?;
    ensure!(
        replayed.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&replayed.stdout)
    );

    // THEN the row is indexed as it was and no dead letter is left
    let doc = es.get_doc(&notes, "2").await?;
    ensure!(
        doc == Some(serde_json::json!({"id": 2, "a": "rejected", "b": 7})),
        "{doc:?}"
    );
    let listed = cli(&["dlq", "list", "--json"])?;
    ensure!(
        listed.status.success() && listed.stdout.is_empty(),
        "dlq not emptied: {listed:?}"
    );
    Ok(())
}

/// A 21 MB row (the seeds' base64 image in a description) neither stops the stream nor reaches
/// the index whole: the field is cut to `max_field_bytes` and named in `oversized_fields`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_rows_are_cut_not_fatal() -> Result<()> {
    // GIVEN a tracked table with a LONGTEXT column and an indexer streaming it
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("e2e_big");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    conn.query_drop(format!(
        "CREATE TABLE `{db}`.big (id INT PRIMARY KEY, body LONGTEXT) CHARSET utf8mb4"
    ))
    .await?;
    let mapping = tempfile::NamedTempFile::new()?;
    std::fs::write(mapping.path(), r#"{"mappings":{"dynamic":true}}"#)?;
    let extra = format!(
        "[[tables]]\nsource = '{db}\\.big'\nindex = \"{prefix}big\"\nmapping = \"{}\"\n",
        mapping.path().display()
    );
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, &extra)?;
    indexer.start()?;

    // WHEN a row of 7 million 3-byte characters (21 MB) is written, then a small one
    conn.query_drop(format!("INSERT INTO `{db}`.big VALUES (1, REPEAT('图', 7000000))"))
        .await?;
    conn.query_drop(format!("INSERT INTO `{db}`.big VALUES (2, 'small')"))
        .await?;

    // THEN the big field is cut at a character boundary below 1 MiB and named; the next row is whole
    let big = format!("{prefix}big");
    settle(&mut indexer, CATCH_UP, || async {
        let one = es
            .get_doc(&big, "1")
            .await?
            .ok_or_else(|| anyhow::anyhow!("row 1 not indexed"))?;
        let two = es
            .get_doc(&big, "2")
            .await?
            .ok_or_else(|| anyhow::anyhow!("row 2 not indexed"))?;
        let body = one["body"].as_str().unwrap_or_default();
        ensure!(
            body.len() == 1_048_575 && body.chars().all(|c| c == '图'),
            "body of {} bytes",
            body.len()
        );
        ensure!(
            one["oversized_fields"] == serde_json::json!(["body"]),
            "{}",
            one["oversized_fields"]
        );
        ensure!(two == serde_json::json!({"id": 2, "body": "small"}), "{two}");
        Ok(())
    })
    .await
}

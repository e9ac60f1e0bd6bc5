//! Smoke tests of the test kit itself: the servers start with the settings the indexer depends
//! on, sample data and workloads load intact, both index bodies are accepted, and the
//! Elasticsearch helpers read back exactly what was written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdc_indexer::testkit::sample::{self, Event, Order, Sample};
use cdc_indexer::testkit::workload::Workload;
use cdc_indexer::testkit::{
    self, shared_es, shared_mysql, unique_name, wait_until, EsClient, MariaDbServer, EVENT_LOG_INDEX_BODY,
    ORDERS_INDEX_BODY,
};
use elasticsearch::http::Method;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

async fn variable(conn: &mut mysql_async::Conn, name: &str) -> String {
    let row: Option<(String, String)> = conn.query_first(format!("SHOW VARIABLES LIKE '{name}'")).await.unwrap();
    row.unwrap_or_else(|| panic!("no variable {name}")).1
}

async fn count(conn: &mut mysql_async::Conn, table: &str) -> usize {
    let n: Option<usize> = conn.query_first(format!("SELECT COUNT(*) FROM {table}")).await.unwrap();
    n.unwrap()
}

fn iso(t: chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// The document the indexer is expected to write for an `orders` row.
fn order_doc(o: &Order) -> Value {
    json!({
        "id": o.id, "order_no": o.order_no, "buyer_name": o.buyer_name,
        // Phone columns are indexed masked and hashed only (src/mask.rs).
        "buyer_phone_masked": cdc_indexer::mask::mask_mobile(&o.buyer_phone), "buyer_phone_last4": o.buyer_phone[7..],
        "buyer_phone_hash": cdc_indexer::mask::HashKey::new(b"smoke-test-key-0123", None).hash(&o.buyer_phone),
        "address": o.address, "amount": o.amount, "status": o.status, "created_at": iso(o.created_at),
        "paid_at": o.paid_at.map(iso), "shipped_at": o.shipped_at.map(iso), "updated_at": iso(o.updated_at),
        "remark": o.remark, "items": o.items,
    })
}

fn event_doc(e: &Event) -> Value {
    json!({
        "id": e.id, "order_id": e.order_id, "event_type": e.event_type, "payload": e.payload,
        "operator_id": e.operator_id, "occurred_at": iso(e.occurred_at),
    })
}

#[tokio::test]
async fn shared_mysql_has_a_row_binlog_and_the_sample_loads_intact() {
    // GIVEN the shared server and a database of this test's own
    let mysql = shared_mysql();
    let db = unique_name("smoke_sample");
    let mut root = mysql.root_conn().await.unwrap();

    // THEN the binlog is on, row-based, with full images and full metadata
    assert_eq!(variable(&mut root, "log_bin").await, "ON");
    assert_eq!(variable(&mut root, "binlog_format").await, "ROW");
    assert_eq!(variable(&mut root, "binlog_row_image").await, "FULL");
    assert_eq!(variable(&mut root, "binlog_row_metadata").await, "FULL");

    // WHEN the shop schema is created and 200 sample orders are loaded
    sample::create_shop_schema(&mut root, &db).await.unwrap();
    let data = Sample::generate(2024, 200);
    data.load(&mut root, &db).await.unwrap();

    // THEN the row counts match the sample
    assert_eq!(count(&mut root, &format!("{db}.orders")).await, 200);
    assert_eq!(count(&mut root, &format!("{db}.event_log")).await, data.events.len());

    // AND every order reads back exactly as generated (escaping, 4-byte characters, NULL vs '')
    let rows: Vec<mysql_async::Row> = root
        .query(format!(
            "SELECT id, order_no, buyer_name, buyer_phone, address, CAST(amount AS CHAR), status, \
             CAST(created_at AS CHAR), CAST(paid_at AS CHAR), CAST(shipped_at AS CHAR), \
             CAST(updated_at AS CHAR), remark, items FROM {db}.orders ORDER BY id"
        ))
        .await
        .unwrap();
    let sql_time = |t: chrono::NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
    for (row, o) in rows.iter().zip(&data.orders) {
        let s = |i: usize| row.get::<Option<String>, _>(i).unwrap();
        assert_eq!(row.get::<u64, _>(0), Some(o.id));
        assert_eq!(s(1).as_deref(), Some(o.order_no.as_str()));
        assert_eq!(s(2).as_deref(), Some(o.buyer_name.as_str()));
        assert_eq!(s(3).as_deref(), Some(o.buyer_phone.as_str()));
        assert_eq!(s(4).as_deref(), Some(o.address.as_str()));
        assert_eq!(s(5).as_deref(), Some(o.amount.as_str()));
        assert_eq!(s(6).as_deref(), Some(o.status));
        assert_eq!(s(7), Some(sql_time(o.created_at)));
        assert_eq!(s(8), o.paid_at.map(sql_time));
        assert_eq!(s(9), o.shipped_at.map(sql_time));
        assert_eq!(s(10), Some(o.updated_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()));
        assert_eq!(s(11), o.remark, "order {}", o.id);
        assert_eq!(s(12).map(|j| serde_json::from_str::<Value>(&j).unwrap()), o.items);
    }
    assert_eq!(rows.len(), 200);

    // AND the indexer's user can read the tables and the binlog position
    let mut cdc = testkit::connect(mysql.url()).await.unwrap();
    assert_eq!(count(&mut cdc, &format!("{db}.orders")).await, 200);
    let status: Vec<mysql_async::Row> = cdc.query("SHOW MASTER STATUS").await.unwrap();
    assert_eq!(status.len(), 1, "binlog position visible to the cdc user");

    root.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
}

#[tokio::test]
async fn workload_applies_cleanly_and_leaves_the_predicted_row_counts() {
    // GIVEN a sample of 100 orders
    let mysql = shared_mysql();
    let db = unique_name("smoke_workload");
    let mut root = mysql.root_conn().await.unwrap();
    sample::create_shop_schema(&mut root, &db).await.unwrap();
    let data = Sample::generate(11, 100);
    data.load(&mut root, &db).await.unwrap();

    // WHEN 400 workload transactions run, each in BEGIN … COMMIT
    let mut workload = Workload::new(&db, 11).with_existing(&data);
    for tx in workload.transactions(400) {
        sample::run_transaction(&mut root, &tx).await.unwrap();
    }

    // THEN every statement succeeded and the tables hold as many rows as the model predicts
    let (orders, events) = workload.row_counts();
    assert_eq!(count(&mut root, &format!("{db}.orders")).await, orders);
    assert_eq!(count(&mut root, &format!("{db}.event_log")).await, events);

    root.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_server_keeps_its_data_across_crash_and_clean_restarts() {
    // GIVEN a server of our own holding one committed row
    let started = Instant::now();
    let mut server = MariaDbServer::start().unwrap();
    eprintln!("MariaDbServer::start took {:?}", started.elapsed());
    let port = server.port();
    let datadir = server.datadir().to_owned();
    let mut conn = server.root_conn().await.unwrap();
    conn.query_drop(
        "CREATE DATABASE t; CREATE TABLE t.kv (k INT PRIMARY KEY, v VARCHAR(8)); INSERT INTO t.kv VALUES (1, '一')",
    )
    .await
    .unwrap();
    drop(conn);

    // WHEN it is killed with SIGKILL
    server.kill();
    // THEN nothing answers on its port
    assert!(server.pid().is_none());
    assert!(testkit::connect(&server.root_url()).await.is_err());

    // WHEN it is restarted
    let started = Instant::now();
    server.restart().unwrap();
    eprintln!("MariaDbServer::restart after kill took {:?}", started.elapsed());
    // THEN it is back on the same port with the committed row
    assert_eq!(server.port(), port);
    let mut conn = server.root_conn().await.unwrap();
    let v: Option<String> = conn.query_first("SELECT v FROM t.kv WHERE k = 1").await.unwrap();
    assert_eq!(v.as_deref(), Some("一"));
    conn.query_drop("INSERT INTO t.kv VALUES (2, '二')").await.unwrap();
    drop(conn);

    // WHEN it is stopped gracefully and restarted
    let started = Instant::now();
    server.stop().unwrap();
    eprintln!("MariaDbServer::stop took {:?}", started.elapsed());
    server.restart().unwrap();
    // THEN both rows are there, and each start opened a new binlog file
    let mut conn = server.root_conn().await.unwrap();
    assert_eq!(count(&mut conn, "t.kv").await, 2);
    let logs: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await.unwrap();
    assert_eq!(logs.len(), 3);

    // WHEN it is paused
    server.pause().unwrap();
    // THEN a query on an open connection gets no answer
    let frozen = tokio::time::timeout(Duration::from_millis(300), conn.query_drop("SELECT 1")).await;
    assert!(frozen.is_err(), "a paused server answered");
    drop(conn);
    // AND after resuming, it answers again
    server.resume().unwrap();
    let mut conn = server.root_conn().await.unwrap();
    assert_eq!(count(&mut conn, "t.kv").await, 2);
    conn.disconnect().await.unwrap();

    // WHEN dropped, THEN its data directory is gone
    drop(server);
    assert!(!datadir.exists(), "{} survived drop", datadir.display());
}

#[tokio::test]
async fn both_index_bodies_are_accepted_and_sample_documents_round_trip() {
    // GIVEN the shared cluster and indexes created from both index bodies
    let started = Instant::now();
    let es: EsClient = shared_es().client().unwrap();
    eprintln!("shared_es ready after {:?}", started.elapsed());
    let prefix = unique_name("smoke_map");
    let (orders, events) = (format!("{prefix}_orders_v1"), format!("{prefix}_event_log_v1"));
    es.create_index(&orders, &serde_json::from_str(ORDERS_INDEX_BODY).unwrap())
        .await
        .unwrap();
    es.create_index(&events, &serde_json::from_str(EVENT_LOG_INDEX_BODY).unwrap())
        .await
        .unwrap();

    // WHEN every sample row is indexed as the indexer would write it
    let data = Sample::generate(99, 200);
    let order_docs: BTreeMap<String, Value> = data.orders.iter().map(|o| (o.id.to_string(), order_doc(o))).collect();
    let event_docs: BTreeMap<String, Value> = data.events.iter().map(|e| (e.id.to_string(), event_doc(e))).collect();
    es.bulk_index(&orders, order_docs.clone()).await.unwrap();
    es.bulk_index(&events, event_docs.clone()).await.unwrap();

    // THEN the strict mappings accepted all of them and they read back unchanged
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || async {
        let n = es.count(&orders).await?;
        anyhow::ensure!(n == 200, "count is {n}");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(es.all_docs(&orders).await.unwrap(), order_docs);
    assert_eq!(es.all_docs(&events).await.unwrap(), event_docs);
    assert_eq!(es.get_doc(&orders, "1").await.unwrap().as_ref(), order_docs.get("1"));
    assert_eq!(es.get_doc(&orders, "100000").await.unwrap(), None);

    // AND a field outside the mapping is rejected (dynamic: strict)
    let (status, body) = es
        .request(Method::Put, &format!("{orders}/_doc/x"), Some(&json!({ "nope": 1 })))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");

    // AND aliases are reported by index name
    let alias = format!("{prefix}_orders");
    let add = json!({ "actions": [{ "add": { "index": orders, "alias": alias } }] });
    let (status, body) = es.request(Method::Post, "_aliases", Some(&add)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(es.get_alias(&alias).await.unwrap(), vec![orders.clone()]);
    assert_eq!(es.all_docs(&alias).await.unwrap().len(), 200);
    assert!(es.get_alias(&format!("{prefix}_missing")).await.unwrap().is_empty());

    es.delete_index(&orders).await.unwrap();
    es.delete_index(&events).await.unwrap();
    assert!(es.get_alias(&alias).await.unwrap().is_empty());
}

#[tokio::test]
async fn all_docs_pages_through_more_than_one_scroll_page() {
    // GIVEN an index holding 12,001 documents (three scroll pages)
    let es = shared_es().client().unwrap();
    let index = unique_name("smoke_scroll");
    es.create_index(&index, &serde_json::from_str(EVENT_LOG_INDEX_BODY).unwrap())
        .await
        .unwrap();
    let docs: BTreeMap<String, Value> = (1..=12_001u64)
        .map(|id| {
            let doc = json!({ "id": id, "order_id": id % 97, "event_type": "note", "payload": { "n": id },
                              "operator_id": null, "occurred_at": "2025-01-01T00:00:00.000" });
            (id.to_string(), doc)
        })
        .collect();
    let started = Instant::now();
    es.bulk_index(&index, docs.clone()).await.unwrap();
    eprintln!("bulk-indexed 12,001 docs in {:?}", started.elapsed());

    // WHEN all documents are read back
    let started = Instant::now();
    let read = es.all_docs(&index).await.unwrap();
    eprintln!("all_docs read 12,001 docs in {:?}", started.elapsed());

    // THEN every one is there exactly once, and count agrees
    assert_eq!(read.len(), docs.len());
    assert_eq!(read, docs);
    assert_eq!(es.count(&index).await.unwrap(), 12_001);
    es.delete_index(&index).await.unwrap();
}

//! The demo: starts MariaDB (binary log on) and the Elasticsearch stand-in, loads sample orders,
//! runs the indexer (initial load, then live changes), and shows a few customer-service
//! searches. Run it with `scripts/demo [--orders N]`; `CDC_MYSQL_URL`/`CDC_MYSQL_ROOT_URL` and
//! `ES_URL` point it at servers of your own instead.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cdc_indexer::config::Config;
use cdc_indexer::testkit::sample::{create_shop_schema, run_transaction, Sample};
use cdc_indexer::testkit::{wait_until, EsClient, EsTarget, MySqlTarget};
use elasticsearch::http::Method;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<()> {
    let orders: usize = std::env::args()
        .skip_while(|a| a != "--orders")
        .nth(1)
        .map(|n| n.parse().context("--orders takes a number"))
        .transpose()?
        .unwrap_or(2_000);
    tracing_subscriber::fmt()
        .with_env_filter("warn,cdc_indexer=info")
        .init();

    println!("== starting MariaDB (binary log on) and the Elasticsearch stand-in");
    let mysql = tokio::task::spawn_blocking(MySqlTarget::from_env_or_start).await??;
    let es_target = tokio::task::spawn_blocking(EsTarget::from_env_or_start).await??;
    let es = es_target.client()?;
    let mut conn = mysql.root_conn().await?;
    let db = "shop";
    conn.query_drop(format!("DROP DATABASE IF EXISTS {db}")).await?;
    create_shop_schema(&mut conn, db).await?;
    let sample = Sample::generate(20260125, orders);
    sample.load(&mut conn, db).await?;
    println!(
        "   loaded {} orders and {} events into MariaDB",
        sample.orders.len(),
        sample.events.len()
    );

    let state = tempfile::tempdir()?;
    let manifest = env!("CARGO_MANIFEST_DIR");
    let config_text = std::fs::read_to_string(format!("{manifest}/cdc-indexer.example.toml"))?;
    let env = vec![
        ("CDC_MYSQL_URL".to_string(), mysql.url().to_string()),
        ("CDC_ES_URL".to_string(), es_target.url().to_string()),
        ("CDC_STATE__DIR".to_string(), state.path().display().to_string()),
        (
            "CDC_TABLES__0__MAPPING".to_string(),
            format!("{manifest}/mappings/orders.json"),
        ),
        (
            "CDC_TABLES__1__MAPPING".to_string(),
            format!("{manifest}/mappings/event_log.json"),
        ),
        (
            "CDC_SEARCH__USER_DICT".to_string(),
            format!("{manifest}/dict/shop.dict"),
        ),
        (
            "CDC_PHONE_HASH_KEY".to_string(),
            std::env::var("CDC_PHONE_HASH_KEY").unwrap_or_else(|_| "demo-only-phone-hash-key".into()),
        ),
    ];
    let cfg = Config::parse(&config_text, "cdc-indexer.example.toml", env)?;

    println!("== running the indexer: initial load, then the live binlog");
    let started = Instant::now();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let indexer = tokio::spawn(cdc_indexer::pipeline::run(cfg, stop_rx));
    let total = (sample.orders.len() + sample.events.len()) as u64;
    wait_until(Duration::from_secs(600), Duration::from_millis(250), || async {
        let n = es.count("orders").await? + es.count("event_log").await?;
        ensure!(n == total, "{n} of {total} indexed");
        Ok(())
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "   indexed {total} documents in {secs:.1}s ({:.0} docs/s into the stand-in)",
        total as f64 / secs
    );

    println!("== live changes: order 1 is paid, order 2 is deleted");
    let live = Instant::now();
    run_transaction(
        &mut conn,
        &[
            format!("UPDATE {db}.orders SET status = 'paid', paid_at = NOW(), updated_at = NOW(3) WHERE id = 1"),
            format!("DELETE FROM {db}.orders WHERE id = 2"),
        ],
    )
    .await?;
    wait_until(Duration::from_secs(30), Duration::from_millis(20), || async {
        let one = es.get_doc("orders", "1").await?.context("order 1 missing")?;
        ensure!(one["status"] == "paid", "order 1 is still {}", one["status"]);
        ensure!(es.get_doc("orders", "2").await?.is_none(), "order 2 still indexed");
        Ok(())
    })
    .await?;
    println!(
        "   visible in the index {:.0} ms after the commit",
        live.elapsed().as_secs_f64() * 1000.0
    );

    let first = &sample.orders[0];
    let day = first.created_at.format("%Y-%m-%d").to_string();
    println!("== customer-service searches");
    search(
        &es,
        &format!("order number {}", first.order_no),
        json!({"term": {"order_no": first.order_no}}),
    )
    .await?;
    search(
        &es,
        &format!("buyer name {}", first.buyer_name),
        json!({"match_phrase": {"buyer_name": first.buyer_name}}),
    )
    .await?;
    search(
        &es,
        &format!("orders created on {day} (source time zone +08:00)"),
        json!({"range": {"created_at": {"gte": day, "lte": day, "format": "yyyy-MM-dd", "time_zone": "+08:00"}}}),
    )
    .await?;
    search(&es, "paid orders", json!({"term": {"status": "paid"}})).await?;

    let _ = stop.send(true);
    indexer.await??;
    println!(
        "== stopped cleanly; checkpoint: {}",
        std::fs::read_to_string(state.path().join("checkpoint.json"))?
    );
    Ok(())
}

async fn search(es: &EsClient, what: &str, query: Value) -> Result<()> {
    let body = json!({"query": query, "size": 3, "sort": [{"id": "asc"}], "track_total_hits": true});
    let (status, resp) = es.request(Method::Post, "/orders/_search", Some(&body)).await?;
    ensure!(status == 200, "search failed: {resp}");
    let hits = resp["hits"]["hits"].as_array().cloned().unwrap_or_default();
    println!("-- {what}: {} hits", resp["hits"]["total"]["value"]);
    for h in hits {
        let d = &h["_source"];
        println!(
            "   #{} {} {} {} {} ¥{} {}",
            d["id"], d["order_no"], d["buyer_name"], d["buyer_phone_masked"], d["status"], d["amount"], d["created_at"]
        );
    }
    Ok(())
}

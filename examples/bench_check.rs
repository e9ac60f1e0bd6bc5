//! Benchmark of `cdc-indexer check`: loads N sample orders (and their events) into MariaDB,
//! indexes them with the real pipeline, then times a clean full check, a sampling check, and a
//! full check with repair after 1 % of the order documents were deleted behind the indexer's
//! back. Prints one table. Run with `bench/check.sh [--orders N]` (release build);
//! `CDC_MYSQL_URL`/`CDC_MYSQL_ROOT_URL` and `ES_URL` point it at servers of your own.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cdc_indexer::checker::{self, Mode, Options};
use cdc_indexer::config::Config;
use cdc_indexer::testkit::sample::{create_shop_schema, Sample};
use cdc_indexer::testkit::{wait_until, EsTarget, MySqlTarget};
use elasticsearch::http::Method;
use mysql_async::prelude::Queryable;

#[tokio::main]
async fn main() -> Result<()> {
    let orders: usize = std::env::args()
        .skip_while(|a| a != "--orders")
        .nth(1)
        .map(|n| n.parse().context("--orders takes a number"))
        .transpose()?
        .unwrap_or(20_000);
    let filter = std::env::var("CDC_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let mysql = tokio::task::spawn_blocking(MySqlTarget::from_env_or_start).await??;
    let es_target = tokio::task::spawn_blocking(EsTarget::from_env_or_start).await??;
    let es = es_target.client()?;
    let mut conn = mysql.root_conn().await?;
    let db = "bench_check";
    conn.query_drop(format!("DROP DATABASE IF EXISTS {db}")).await?;
    create_shop_schema(&mut conn, db).await?;
    let sample = Sample::generate(42, orders);
    sample.load(&mut conn, db).await?;

    let state = tempfile::tempdir()?;
    let manifest = env!("CARGO_MANIFEST_DIR");
    let config_text = std::fs::read_to_string(format!("{manifest}/cdc-indexer.example.toml"))?;
    let (orders_index, events_index) = ("bench_check_orders", "bench_check_event_log");
    for i in [orders_index, events_index] {
        es.delete_index(&format!("{i}_v1")).await?;
    }
    let env: Vec<(String, String)> = [
        ("CDC_MYSQL_URL", mysql.url().to_string()),
        ("CDC_ES_URL", es_target.url().to_string()),
        ("CDC_STATE__DIR", state.path().display().to_string()),
        ("CDC_METRICS__LISTEN", String::new()),
        ("CDC_TABLES__0__SOURCE", format!("{db}\\.orders")),
        ("CDC_TABLES__0__INDEX", orders_index.to_string()),
        ("CDC_TABLES__0__MAPPING", format!("{manifest}/mappings/orders.json")),
        ("CDC_TABLES__1__SOURCE", format!("{db}\\.event_log")),
        ("CDC_TABLES__1__INDEX", events_index.to_string()),
        ("CDC_TABLES__1__MAPPING", format!("{manifest}/mappings/event_log.json")),
        ("CDC_SEARCH__USER_DICT", format!("{manifest}/dict/shop.dict")),
        ("CDC_PHONE_HASH_KEY", "bench-only-phone-hash-key".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = Config::parse(&config_text, "cdc-indexer.example.toml", env)?;

    // Index everything with the real pipeline, which keeps running (the checker waits for its
    // checkpoint when re-checking differences).
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let indexer = tokio::spawn(cdc_indexer::pipeline::run(cfg.clone(), stop_rx));
    let total = (sample.orders.len() + sample.events.len()) as u64;
    let load = Instant::now();
    wait_until(Duration::from_secs(3_600), Duration::from_millis(500), || async {
        let n = es.count(orders_index).await? + es.count(events_index).await?;
        ensure!(n == total, "{n} of {total} indexed");
        ensure!(cfg.checkpoint_path().exists(), "no checkpoint yet");
        Ok(())
    })
    .await?;
    let load_secs = load.elapsed().as_secs_f64();

    let mut rows = Vec::new();
    let run = |name: &'static str, mode: Mode, repair: bool| {
        let cfg = cfg.clone();
        async move {
            let started = Instant::now();
            let report = checker::run(
                &cfg,
                None,
                &Options {
                    mode,
                    repair,
                    index: None,
                },
            )
            .await?;
            let secs = started.elapsed().as_secs_f64();
            let compared: u64 = report.tables.iter().map(|t| t.rows + t.docs).sum();
            let repaired: u64 = report.tables.iter().map(|t| t.repaired).sum();
            anyhow::Ok((name, secs, compared, report.drift(), repaired, report.result))
        }
    };
    rows.push(run("full, clean", Mode::Full, false).await?);
    rows.push(run("sample 1000, clean", Mode::Sample { rows: 1_000, seed: 1 }, false).await?);
    // 1 % of the order documents deleted behind the indexer's back.
    let drifted = (orders / 100).max(1);
    for id in (1..=orders).step_by(orders / drifted).take(drifted) {
        es.request(Method::Delete, &format!("{orders_index}/_doc/{id}"), None)
            .await?;
    }
    es.refresh(orders_index).await?;
    rows.push(run("sample 1000, 1 % drift", Mode::Sample { rows: 1_000, seed: 2 }, false).await?);
    rows.push(run("full --repair, 1 % drift", Mode::Full, true).await?);
    rows.push(run("full, after repair", Mode::Full, false).await?);

    let _ = stop.send(true);
    indexer.await??;

    println!(
        "check benchmark: {} orders + {} events (initial load by the indexer {load_secs:.1} s); build: {}",
        sample.orders.len(),
        sample.events.len(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!(
        "| {:<24} | {:>9} | {:>15} | {:>12} | {:>6} | {:>8} | {:<7} |",
        "run", "seconds", "rows+docs read", "per second", "drift", "repaired", "result"
    );
    println!(
        "|{:-<26}|{:->11}|{:->17}|{:->14}|{:->8}|{:->10}|{:-<9}|",
        "", "", "", "", "", "", ""
    );
    for (name, secs, compared, drift, repaired, result) in rows {
        println!(
            "| {name:<24} | {secs:>9.2} | {compared:>15} | {:>12.0} | {drift:>6} | {repaired:>8} | {result:<7} |",
            compared as f64 / secs
        );
    }
    Ok(())
}

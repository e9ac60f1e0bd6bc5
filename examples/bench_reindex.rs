//! Reindex throughput: backfills `event_log` tables of N rows through `cdc-indexer reindex`'s
//! code path (consistent-snapshot chunks, bulk sink, count check, alias swap) and prints a
//! table of rows/s per chunk size. Run it with `bench/reindex.sh [--rows N] [--chunks 1000,5000]`;
//! `CDC_MYSQL_URL`/`CDC_MYSQL_ROOT_URL` and `ES_URL` point it at servers of your own instead of
//! a fresh MariaDB and the in-memory stand-in (which indexes only ~3,000 small docs/s on one
//! core, so against it this measures the stand-in more than the indexer). Each row also shows a
//! plain `_bulk` load of the same documents into the same server, and the ratio of the two.

use std::time::Instant;

use anyhow::{Context, Result};
use cdc_indexer::config::Config;
use cdc_indexer::reindex::{self, Action, Options};
use cdc_indexer::testkit::sample::create_shop_schema;
use cdc_indexer::testkit::{EsTarget, MySqlTarget};
use mysql_async::prelude::Queryable;

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() -> Result<()> {
    let rows: u64 = arg("--rows").map(|n| n.parse()).transpose()?.unwrap_or(50_000);
    let chunks: Vec<u64> = arg("--chunks")
        .unwrap_or_else(|| "1000,5000".into())
        .split(',')
        .map(|c| c.trim().parse().context("--chunks takes numbers separated by commas"))
        .collect::<Result<_>>()?;
    tracing_subscriber::fmt().with_env_filter("warn").init();

    let mysql = tokio::task::spawn_blocking(MySqlTarget::from_env_or_start).await??;
    let es_target = tokio::task::spawn_blocking(EsTarget::from_env_or_start).await??;
    let mut conn = mysql.root_conn().await?;
    let manifest = env!("CARGO_MANIFEST_DIR");

    println!(
        "| rows | chunk rows | seconds | rows/s | plain `_bulk` of the same docs (2,000/request), rows/s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let es = es_target.client()?;
    for (n, chunk) in chunks.iter().enumerate() {
        let db = format!("bench_reindex_{}_{n}", std::process::id());
        create_shop_schema(&mut conn, &db).await?;
        load(&mut conn, &db, rows).await?;
        let state = tempfile::tempdir()?;
        let alias = format!("{db}_event_log");
        let text = format!(
            r#"
[source]
url = "{url}"
server_id = {server_id}
[sink]
url = "{es}"
[state]
dir = "{state}"
[metrics]
enabled = false
[[tables]]
source = '{db}\.event_log'
index = "{alias}"
mapping = "{manifest}/mappings/event_log.json"
json_columns = ["payload"]
"#,
            url = mysql.url(),
            server_id = 5000 + n,
            es = es_target.url(),
            state = state.path().display(),
        );
        let cfg = Config::parse(&text, "bench", Vec::<(String, String)>::new())?;
        let client = cdc_indexer::sink::client(&cfg.sink)?;
        let mapping = std::path::Path::new(manifest).join("mappings/event_log.json");
        cdc_indexer::indexes::ensure(&client, &alias, &mapping, None).await?;
        let opts = Options {
            table: alias.clone(),
            action: Action::Run,
            rows_per_sec: None,
            chunk_rows: Some(*chunk),
            progress_bar: false,
        };
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        reindex::run(&cfg, &opts, shutdown).await?;
        let secs = started.elapsed().as_secs_f64();
        // Baseline, same run and server: the rebuilt documents sent again with plain `_bulk`
        // requests (no versions, no snapshot, no stream, no count check) into a fresh index
        // of the same mapping. It is what the server alone allows.
        let docs = es.all_docs(&alias).await?;
        let plain = format!("{alias}_plain");
        es.create_index(
            &plain,
            &serde_json::from_str(cdc_indexer::testkit::EVENT_LOG_INDEX_BODY)?,
        )
        .await?;
        let started = Instant::now();
        es.bulk_index(&plain, docs).await?;
        let plain_secs = started.elapsed().as_secs_f64();
        es.delete_index(&plain).await?;
        println!(
            "| {rows} | {chunk} | {secs:.1} | {:.0} | {:.0} | {:.2}× |",
            rows as f64 / secs,
            rows as f64 / plain_secs,
            plain_secs / secs
        );
        for index in [format!("{alias}_v1"), format!("{alias}_v2")] {
            cdc_indexer::indexes::delete(&client, &index).await?;
        }
        conn.query_drop(format!("DROP DATABASE `{db}`")).await?;
    }
    Ok(())
}

async fn load(conn: &mut mysql_async::Conn, db: &str, n: u64) -> Result<()> {
    let mut id = 1;
    while id <= n {
        let end = (id + 5_000).min(n + 1);
        let values: Vec<String> = (id..end)
            .map(|i| {
                format!(
                    "({i}, {}, 'created', '{{\"n\": {i}}}', NULL, '2026-01-01 00:00:00.000' + INTERVAL {i} SECOND)",
                    i % 7_000 + 1
                )
            })
            .collect();
        conn.query_drop(format!(
            "INSERT INTO `{db}`.event_log (id, order_id, event_type, payload, operator_id, occurred_at) VALUES {}",
            values.join(", ")
        ))
        .await?;
        id = end;
    }
    Ok(())
}

//! Customer-service search end to end: 10,000 sample orders (colliding names and phone
//! suffixes) go through the real `cdc-indexer` binary into the Elasticsearch stand-in, and every
//! query style must return exactly the orders the sample data says it should. The expected sets
//! are computed here from `Sample`, never from the index. A full scan then proves no plaintext
//! mobile number reached either index.

#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cdc_indexer::config::Config;
use cdc_indexer::search::Searcher;
use cdc_indexer::testkit::sample::{create_shop_schema, Order, Sample};
use cdc_indexer::testkit::{shared_es, shared_mysql, unique_name};
use cdc_indexer::tokenize::Tokenizer;
use harness::{oracle_pinyin, settle, Indexer};
use serde_json::Value;

const ORDERS: usize = 10_000;
const SEED: u64 = 20_260_125;
const CATCH_UP: Duration = Duration::from_secs(300);

/// Runs `input` and checks it returns exactly `expected` (order ids); returns the result.
async fn expect(
    searcher: &Searcher,
    what: &str,
    input: &str,
    expected: &BTreeSet<u64>,
) -> Result<cdc_indexer::search::SearchResult> {
    ensure!(!expected.is_empty(), "{what}: the test must expect at least one order");
    let r = searcher.search(input, ORDERS).await.with_context(|| what.to_string())?;
    let got: BTreeSet<u64> = r.orders.iter().filter_map(|o| o["id"].as_u64()).collect();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(expected).take(5).collect();
    ensure!(
        r.total == expected.len() as u64 && missing.is_empty() && extra.is_empty(),
        "{what} ({:?}): {} expected, total {}, {} returned; missing {missing:?}; extra {extra:?}",
        r.parts,
        expected.len(),
        r.total,
        got.len()
    );
    eprintln!("{what:<34} {:>5} orders  {:?}", expected.len(), r.parts);
    Ok(r)
}

fn ids<'a>(orders: impl Iterator<Item = &'a Order>) -> BTreeSet<u64> {
    orders.map(|o| o.id).collect()
}

/// The name that occurs most often, with its orders.
fn most_common_name(sample: &Sample) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &sample.orders {
        *counts.entry(&o.buyer_name).or_default() += 1;
    }
    let (name, _) = counts
        .into_iter()
        .max_by_key(|(n, c)| (*c, n.chars().count()))
        .expect("orders");
    name.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_style_finds_exactly_the_expected_orders_and_no_phone_is_indexed() -> Result<()> {
    // GIVEN 10,000 sample orders with their events in MariaDB, indexed by the real indexer
    // (phones masked and hashed, tokens and pinyin derived) until both indexes hold every row
    let mysql = shared_mysql();
    let es_target = shared_es();
    let es = es_target.client()?;
    let db = unique_name("search");
    let prefix = format!("{db}_");
    let mut conn = mysql.root_conn().await?;
    create_shop_schema(&mut conn, &db).await?;
    let sample = Sample::generate(SEED, ORDERS);
    sample.load(&mut conn, &db).await?;
    let mut indexer = Indexer::new(mysql.url(), es_target.url(), &db, &prefix, "")?;
    let started = Instant::now();
    indexer.start()?;
    let (orders_index, events_index) = (format!("{prefix}orders"), format!("{prefix}event_log"));
    settle(&mut indexer, CATCH_UP, || async {
        let (o, e) = (es.count(&orders_index).await?, es.count(&events_index).await?);
        ensure!(
            o == sample.orders.len() as u64 && e == sample.events.len() as u64,
            "{o} orders and {e} events indexed"
        );
        Ok(())
    })
    .await?;
    eprintln!(
        "indexed {} orders and {} events in {:.1}s",
        sample.orders.len(),
        sample.events.len(),
        started.elapsed().as_secs_f64()
    );
    let env = vec![
        ("CDC_SEARCH__ORDERS_INDEX".to_string(), orders_index.clone()),
        ("CDC_SEARCH__EVENTS_INDEX".to_string(), events_index.clone()),
    ];
    let cfg = Config::load(&indexer.config_path(), env.clone())?;
    let tokenizer = Arc::new(Tokenizer::load(cfg.search.user_dict.as_deref())?);
    let searcher = Searcher::new(cdc_indexer::sink::client(&cfg.sink)?, &cfg, tokenizer)?;
    let orders = &sample.orders;

    // WHEN an exact order number is searched THEN that order comes back, with its whole timeline
    // in time order
    let o = &orders[1233];
    let r = expect(
        &searcher,
        "order number",
        &o.order_no.to_lowercase(),
        &BTreeSet::from([o.id]),
    )
    .await?;
    let mut timeline: Vec<_> = sample.events.iter().filter(|e| e.order_id == o.id).collect();
    timeline.sort_by_key(|e| (e.occurred_at, e.id));
    let got: Vec<u64> = r.orders[0]["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    ensure!(
        got == timeline.iter().map(|e| e.id).collect::<Vec<_>>(),
        "timeline of order {}: {got:?}",
        o.id
    );

    // WHEN an order number prefix is searched THEN every order number starting with it
    let p = &o.order_no[..o.order_no.len() - 1];
    expect(
        &searcher,
        "order number prefix",
        p,
        &ids(orders.iter().filter(|x| x.order_no.starts_with(p))),
    )
    .await?;

    // WHEN a full phone number is searched, in any format a caller reads it out in, THEN exactly
    // that buyer's orders (a returning customer: several)
    let phone = {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for x in orders {
            *counts.entry(&x.buyer_phone).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, c)| *c)
            .expect("orders")
            .0
            .to_string()
    };
    let same_phone = ids(orders.iter().filter(|x| x.buyer_phone == phone));
    let (a, b, c) = (&phone[..3], &phone[3..7], &phone[7..]);
    for input in [
        phone.clone(),
        format!("+86 {a}-{b}-{c}"),
        format!("0086 {a} {b} {c}"),
        format!("{a}-{b}-{c}"),
    ] {
        expect(&searcher, "full phone, any format", &input, &same_phone).await?;
    }

    // WHEN only the last four digits are given THEN every order whose phone ends in them
    expect(
        &searcher,
        "last 4 digits",
        "5678",
        &ids(orders.iter().filter(|x| x.buyer_phone.ends_with("5678"))),
    )
    .await?;

    // WHEN a name, the last four digits and a date are combined (both date spellings) THEN the
    // orders matching all three, the day taken in the source zone
    let name = most_common_name(&sample);
    let o = orders.iter().find(|x| x.buyer_name == name).expect("name");
    let (last4, day) = (&o.buyer_phone[7..], o.created_at.date());
    let expected = ids(orders
        .iter()
        .filter(|x| x.buyer_name == name && x.buyer_phone.ends_with(last4) && x.created_at.date() == day));
    expect(
        &searcher,
        "name + last 4 + date",
        &format!("{name} {last4} {}", day.format("%Y%m%d")),
        &expected,
    )
    .await?;
    expect(
        &searcher,
        "name + last 4 + date (dashed)",
        &format!("{last4} {} {name}", day),
        &expected,
    )
    .await?;

    // WHEN a date alone is given THEN that day's orders
    expect(
        &searcher,
        "date",
        &day.format("%Y%m%d").to_string(),
        &ids(orders.iter().filter(|x| x.created_at.date() == day)),
    )
    .await?;

    // WHEN a Chinese name alone is given THEN every order of that name
    expect(
        &searcher,
        "name",
        &name,
        &ids(orders.iter().filter(|x| x.buyer_name == name)),
    )
    .await?;

    // WHEN part of an address is given THEN every order delivered there
    expect(
        &searcher,
        "address part",
        "文三路",
        &ids(orders.iter().filter(|x| x.address.contains("文三路"))),
    )
    .await?;
    expect(
        &searcher,
        "name + address part",
        &format!("{name} 文三路"),
        &ids(orders
            .iter()
            .filter(|x| x.buyer_name == name && x.address.contains("文三路"))),
    )
    .await?;

    // WHEN pinyin initials or full pinyin of a name are typed THEN the orders whose name reads so
    let (words, initials) = oracle_pinyin(&name);
    let pinyin_of = |x: &Order| oracle_pinyin(&x.buyer_name);
    expect(
        &searcher,
        "pinyin initials",
        &initials.to_uppercase(),
        &ids(orders.iter().filter(|x| {
            let (w, i) = pinyin_of(x);
            i == initials || format!(" {w} ").contains(&format!(" {initials} "))
        })),
    )
    .await?;
    expect(
        &searcher,
        "full pinyin",
        &words,
        &ids(orders
            .iter()
            .filter(|x| format!(" {} ", pinyin_of(x).0).contains(&format!(" {words} ")))),
    )
    .await?;

    // AND the CLI gives the same answer for a phone, without echoing the number anywhere
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-indexer"))
        .args(["search", "--json", "--size", "100", "--config"])
        .arg(indexer.config_path())
        .arg(format!("+86 {a}-{b}-{c}"))
        .envs(env.iter().cloned())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "search CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(&stdout)?;
    ensure!(json["total"] == same_phone.len() as u64, "CLI total: {}", json["total"]);
    ensure!(
        !stdout.contains(&phone) && !stdout.contains(&format!("{a}-{b}-{c}")),
        "CLI output leaks the phone"
    );

    // THEN a full scan of both indexes finds no 11-digit mobile number in any field (the hex
    // hash fields excepted, where digit runs are chance), and no plaintext phone column
    let mobile = regex::Regex::new(r"(?:^|[^0-9])1[3-9][0-9]{9}(?:[^0-9]|$)")?;
    let hex = regex::Regex::new(r"^[0-9a-f]{64}$")?;
    for index in [&orders_index, &events_index] {
        let docs = es.all_docs(index).await?;
        ensure!(!docs.is_empty(), "{index} is empty");
        for (id, doc) in docs {
            let mut doc = doc;
            let obj = doc.as_object_mut().context("object")?;
            ensure!(!obj.contains_key("buyer_phone"), "{index}/{id} has buyer_phone");
            let hashes: Vec<String> = obj.keys().filter(|k| k.ends_with("_hash")).cloned().collect();
            for k in hashes {
                let h = obj.remove(&k).unwrap_or_default();
                ensure!(
                    h.as_str().is_some_and(|h| hex.is_match(h)),
                    "{index}/{id} {k} is not a hex hash"
                );
            }
            let text = doc.to_string();
            ensure!(!mobile.is_match(&text), "{index}/{id} holds a mobile number: {text}");
        }
    }

    // AND (informational) query latency per style against the stand-in, 20 runs each, 20 hits
    eprintln!("{:<28} {:>8} {:>8}", "query (20 hits)", "p50 ms", "p99 ms");
    for (what, input) in [
        ("order number", orders[1233].order_no.clone()),
        ("full phone", format!("+86 {a}-{b}-{c}")),
        ("last 4", "5678".to_string()),
        (
            "name + last 4 + date",
            format!("{name} {last4} {}", day.format("%Y%m%d")),
        ),
        ("address part", "文三路".to_string()),
        ("pinyin initials", initials.clone()),
    ] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            searcher.search(&input, 20).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{what:<28} {:>8.1} {:>8.1}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    ensure!(indexer.stop()?.success(), "clean stop: {}", indexer.log());
    Ok(())
}

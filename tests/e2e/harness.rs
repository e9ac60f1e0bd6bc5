//! Shared pieces of the end-to-end tests: running the real `cdc-indexer` binary, and an
//! oracle that renders the database's rows with SQL alone (independent of the indexer's
//! decoder and transform) so the index can be compared with the database row by row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_indexer::testkit::{wait_until, EsClient};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

/// One `cdc-indexer run` child process with its own config and state directory.
pub struct Indexer {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
    /// Extra environment of the indexer process (config overrides, secrets).
    pub env: Vec<(String, String)>,
}

impl Indexer {
    /// Writes a config streaming `db`'s `orders`/`event_log` into `<prefix>orders`/`<prefix>event_log`.
    pub fn new(mysql_url: &str, es_url: &str, db: &str, prefix: &str, extra_tables: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let config = format!(
            r#"
[source]
url = "{mysql_url}"
server_id = {server_id}
heartbeat_ms = 500
reconnect_max_ms = 2000

[sink]
url = "{es_url}"
batch_max_docs = 500
linger_ms = 20
retry_max_ms = 2000

[state]
dir = "{state}"

[search]
user_dict = "{user_dict}"

[log]
level = "info,cdc_indexer=debug"

# Any free port: parallel indexers must not collide on the default one.
[metrics]
listen = "127.0.0.1:0"

[[tables]]
source = '{db}\.orders'
index = "{prefix}orders"
mapping = "{orders}"
json_columns = ["items"]
phone_columns = ["buyer_phone"]
phone_hash_key_file = "{key_file}"
scan_columns = ["address", "remark", "items"]
token_fields = ["buyer_name", "address", "remark", "items.title"]
pinyin_fields = ["buyer_name"]

[[tables]]
source = '{db}\.event_log'
index = "{prefix}event_log"
mapping = "{events}"
json_columns = ["payload"]
scan_columns = ["payload"]
{extra_tables}
"#,
            server_id = 1000 + (std::process::id() % 1000) * 50 + next_id(),
            state = dir.path().join("state").display(),
            orders = mappings.join("orders.json").display(),
            events = mappings.join("event_log.json").display(),
            user_dict = user_dict().display(),
            key_file = dir.path().join("phone-hash.key").display(),
        );
        std::fs::write(dir.path().join("phone-hash.key"), format!("{PHONE_HASH_KEY}\n"))?;
        std::fs::write(dir.path().join("cdc-indexer.toml"), config)?;
        Ok(Indexer {
            dir,
            child: None,
            starts: 0,
            env: Vec::new(),
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cdc-indexer.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("indexer-{}.log", self.starts))
    }

    pub fn start(&mut self) -> Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path())?;
        let child = Command::new(env!("CARGO_BIN_EXE_cdc-indexer"))
            .args(["run", "--config"])
            .arg(self.config_path())
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning cdc-indexer")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        Ok(c.wait()?)
    }

    /// Waits for the process to exit by itself (e.g. after a fatal error).
    pub async fn exit_status(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("not running")?;
        let status = wait_until(timeout, Duration::from_millis(100), || {
            let r = child.try_wait();
            async move { r?.context("still running") }
        })
        .await
        .with_context(|| format!("indexer log:\n{}", self.log()))?;
        self.child = None;
        Ok(status)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn checkpoint(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("state/checkpoint.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn next_id() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

const ZONE: &str = "+08:00";

/// The phone hash key the test indexers are configured with (through a key file).
pub const PHONE_HASH_KEY: &str = "e2e-phone-hash-key-0123456789";

pub fn user_dict() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dict/shop.dict")
}

/// The oracle's own masking of free text, simpler than the indexer's: sample data writes
/// phones as plain 11-digit runs, so a maximal run of exactly 11 ASCII digits starting with
/// 1[3-9] is a phone.
pub fn oracle_mask(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let run: String = chars[start..i].iter().collect();
        if run.len() == 11 && run.starts_with('1') && ('3'..='9').contains(&chars[start + 1]) {
            out.push_str(&format!("{}****{}", &run[..3], &run[7..]));
        } else {
            out.push_str(&run);
        }
    }
    out
}

fn oracle_mask_json(v: &mut Value) {
    match v {
        Value::String(s) => *s = oracle_mask(s),
        Value::Array(a) => a.iter_mut().for_each(oracle_mask_json),
        Value::Object(o) => o.values_mut().for_each(oracle_mask_json),
        _ => {}
    }
}

/// Hex HMAC-SHA256 of an 11-digit phone under [`PHONE_HASH_KEY`].
pub fn oracle_hash(phone: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(PHONE_HASH_KEY.as_bytes()).expect("key");
    mac.update(phone.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// jieba (default + shop dictionary), straight from the crate.
pub fn oracle_jieba() -> &'static jieba_rs::Jieba {
    static J: std::sync::OnceLock<jieba_rs::Jieba> = std::sync::OnceLock::new();
    J.get_or_init(|| {
        let mut j = jieba_rs::Jieba::new();
        let dict = std::fs::read(user_dict()).expect("dict/shop.dict");
        j.load_dict(&mut std::io::BufReader::new(dict.as_slice()))
            .expect("dictionary");
        j
    })
}

/// Search-mode words, lowercased, punctuation dropped, joined by spaces.
pub fn oracle_tokens(text: &str) -> String {
    let mut words = Vec::new();
    for t in oracle_jieba().cut_for_search(text, true) {
        if t.word.chars().any(char::is_alphanumeric) {
            words.extend(t.word.split_whitespace().map(str::to_lowercase));
        }
    }
    words.join(" ")
}

/// Toneless pinyin words and initials of a name; characters without a reading are skipped.
pub fn oracle_pinyin(name: &str) -> (String, String) {
    use pinyin::ToPinyin;
    let words: Vec<&str> = name.chars().filter_map(|c| c.to_pinyin()).map(|p| p.plain()).collect();
    let initials = words.iter().filter_map(|w| w.chars().next()).collect();
    (words.join(" "), initials)
}

/// The derived search fields of an order document, from its (already masked) text fields.
fn add_search_fields(doc: &mut Value, phone: &str) {
    let text = |v: &Value| v.as_str().map_or(Value::Null, |s| Value::String(oracle_tokens(s)));
    let titles = match &doc["items"] {
        Value::Array(items) => Value::String(
            items
                .iter()
                .filter_map(|i| i["title"].as_str())
                .map(oracle_tokens)
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => Value::Null,
    };
    let (pinyin, initials) = oracle_pinyin(doc["buyer_name"].as_str().unwrap_or_default());
    let derived = json!({
        "buyer_phone_masked": format!("{}****{}", &phone[..3], &phone[7..]),
        "buyer_phone_last4": &phone[7..],
        "buyer_phone_hash": oracle_hash(phone),
        "buyer_name_tokens": text(&doc["buyer_name"]),
        "address_tokens": text(&doc["address"]),
        "remark_tokens": text(&doc["remark"]),
        "items_title_tokens": titles,
        "buyer_name_pinyin": pinyin,
        "buyer_name_initials": initials,
    });
    let obj = doc.as_object_mut().expect("object");
    obj.extend(derived.as_object().expect("object").clone());
}

/// `shop.orders` rows rendered by SQL as the documents the indexer must produce.
pub async fn expected_orders(conn: &mut mysql_async::Conn, db: &str) -> Result<BTreeMap<String, Value>> {
    let sql = format!(
        "SELECT id, order_no, buyer_name, buyer_phone, address, CAST(amount AS CHAR), CAST(status AS CHAR), \
         DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s'), DATE_FORMAT(paid_at, '%Y-%m-%dT%H:%i:%s'), \
         DATE_FORMAT(shipped_at, '%Y-%m-%dT%H:%i:%s'), LEFT(DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%f'), 23), \
         remark, CAST(items AS CHAR) FROM `{db}`.orders"
    );
    let rows: Vec<mysql_async::Row> = conn.query(sql).await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let id: u64 = r.get(0).context("id")?;
        let s = |i: usize| -> Value {
            r.get::<Option<String>, _>(i)
                .flatten()
                .map(Value::String)
                .unwrap_or(Value::Null)
        };
        let t = |i: usize| -> Value {
            r.get::<Option<String>, _>(i)
                .flatten()
                .map(|v| Value::String(format!("{v}{ZONE}")))
                .unwrap_or(Value::Null)
        };
        let mut items = match r.get::<Option<String>, _>(12).flatten() {
            Some(j) => serde_json::from_str(&j)?,
            None => Value::Null,
        };
        // The indexer masks phones in address, remark and items, and replaces buyer_phone by
        // masked / last-4 / hash fields; tokens and pinyin are made from the masked text.
        oracle_mask_json(&mut items);
        let masked = |i: usize| -> Value {
            match s(i) {
                Value::String(v) => Value::String(oracle_mask(&v)),
                other => other,
            }
        };
        let phone: String = r.get::<Option<String>, _>(3).flatten().context("buyer_phone")?;
        let mut doc = json!({
            "id": id, "order_no": s(1), "buyer_name": s(2), "address": masked(4),
            "amount": s(5), "status": s(6), "created_at": t(7), "paid_at": t(8), "shipped_at": t(9),
            "updated_at": t(10), "remark": masked(11), "items": items,
        });
        add_search_fields(&mut doc, &phone);
        out.insert(id.to_string(), doc);
    }
    Ok(out)
}

/// `shop.event_log` rows rendered by SQL.
pub async fn expected_events(conn: &mut mysql_async::Conn, db: &str) -> Result<BTreeMap<String, Value>> {
    let sql = format!(
        "SELECT id, order_id, event_type, CAST(payload AS CHAR), operator_id, \
         LEFT(DATE_FORMAT(occurred_at, '%Y-%m-%dT%H:%i:%s.%f'), 23) FROM `{db}`.event_log"
    );
    let rows: Vec<mysql_async::Row> = conn.query(sql).await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let id: u64 = r.get(0).context("id")?;
        let order_id: u64 = r.get(1).context("order_id")?;
        let payload: String = r.get(3).context("payload")?;
        let mut payload: Value = serde_json::from_str(&payload)?;
        oracle_mask_json(&mut payload);
        let operator: Option<i64> = r.get::<Option<i64>, _>(4).flatten();
        let at: String = r.get(5).context("occurred_at")?;
        out.insert(
            id.to_string(),
            json!({
                "id": id, "order_id": order_id, "event_type": r.get::<String, _>(2),
                "payload": payload, "operator_id": operator,
                "occurred_at": format!("{at}{ZONE}"),
            }),
        );
    }
    Ok(out)
}

/// Polls `condition` until it holds; fails at once (with the indexer's log) if the indexer
/// exits, or after `timeout` with the last observation.
pub async fn settle<F, Fut>(indexer: &mut Indexer, timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match condition().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !indexer.is_running() {
            return Err(last.context(format!("the indexer exited:\n{}", indexer.log())));
        }
        let dead = std::fs::read_to_string(indexer.dir.path().join("state/dead-letter.jsonl")).unwrap_or_default();
        if !dead.is_empty() {
            return Err(last.context(format!("unexpected dead letters:\n{dead}")));
        }
        if std::time::Instant::now() > deadline {
            return Err(last.context(format!(
                "not reached within {timeout:?}; indexer log:\n{}",
                indexer.log()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Compares two keyed document sets and describes the first differences.
pub fn diff(what: &str, expected: &BTreeMap<String, Value>, actual: &BTreeMap<String, Value>) -> Result<()> {
    let missing: Vec<&String> = expected.keys().filter(|k| !actual.contains_key(*k)).take(5).collect();
    let extra: Vec<&String> = actual.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
    let changed: Vec<(&String, &Value, &Value)> = expected
        .iter()
        .filter_map(|(k, v)| actual.get(k).filter(|a| *a != v).map(|a| (k, v, a)))
        .take(3)
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty() && changed.is_empty(),
        "{what}: {} expected, {} indexed; missing {missing:?}; extra {extra:?}; differing (id, expected, indexed) {changed:?}",
        expected.len(),
        actual.len()
    );
    Ok(())
}

/// Waits until both indexes equal the database exactly.
pub async fn wait_exact(
    indexer: &mut Indexer,
    conn: &mut mysql_async::Conn,
    es: &EsClient,
    db: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<()> {
    let orders = expected_orders(conn, db).await?;
    let events = expected_events(conn, db).await?;
    settle(indexer, timeout, || async {
        diff("orders", &orders, &es.all_docs(&format!("{prefix}orders")).await?)?;
        diff("event_log", &events, &es.all_docs(&format!("{prefix}event_log")).await?)
    })
    .await
}

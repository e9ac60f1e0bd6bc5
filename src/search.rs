//! Customer-service search: free text such as `张三 5678 20260125` → one Elasticsearch query.
//!
//! Contract:
//! * [`classify`] is a pure function from the input to [`Part`]s: an order number (letters then
//!   ≥ 6 digits, `SO2024…`) → exact-or-prefix match on `order_no`; a full mainland mobile in
//!   any format the masker accepts → lookup by keyed hash; exactly 4 digits → the last four
//!   phone digits; `20260125` or `2026-01-25` → that day of `created_at` in the source zone;
//!   latin letters → pinyin or initials of the name; Chinese text → all its words in the
//!   `_tokens` of one of the configured text fields (name or address; separate a name from an
//!   address with a space). Other input is reported as ignored, never guessed at.
//! * [`QueryBuilder::build`] ANDs one clause per part, so every part must match. It only uses
//!   fields the indexer derives (`<phone>_hash`, `<phone>_last4`, `<field>_tokens`,
//!   `<name>_pinyin`, `<name>_initials`), so no plaintext phone number is ever sent to the
//!   cluster: a phone in the input is hashed here with the indexer's key.
//! * [`Searcher::search`] runs the query, then fetches the timelines of all hits with one
//!   `terms` query on the event index's `order_id`, sorted by `occurred_at`.
//!
//! The README's "Customer-service queries" section shows the equivalent raw queries.

use std::sync::Arc;
use std::time::Duration;

use chrono::{FixedOffset, NaiveDate};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use regex::Regex;
use serde_json::{json, Value as Json};

use crate::config::Config;
use crate::mask::{self, HashKey};
use crate::tokenize::Tokenizer;

/// Field names of the shop schema the queries use.
const ORDER_NO: &str = "order_no";
const CREATED_AT: &str = "created_at";
const ORDER_ID: &str = "id";
const EVENT_ORDER_ID: &str = "order_id";
const OCCURRED_AT: &str = "occurred_at";
/// Most events fetched for one page of orders.
const MAX_EVENTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("no [[tables]] entry writes to the orders index `{0}` (config key search.orders_index)")]
    NoOrdersTable(String),
    #[error("nothing searchable in the input (ignored: {0})")]
    Nothing(String),
    #[error("the input holds a full phone number, but the orders table has no phone_columns to look it up by")]
    NoPhoneFields,
    #[error("the input holds latin letters, but the orders table has no pinyin_fields")]
    NoPinyinFields,
    #[error("cannot reach Elasticsearch: {0}")]
    Unreachable(String),
    #[error("Elasticsearch refused the {what} query: HTTP {status}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: String,
    },
}

/// One classified piece of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Upper-cased order number or prefix of one.
    OrderNo(String),
    /// A full mobile number's 11 digits (shown masked by `Display`).
    Phone(String),
    Last4(String),
    Day(NaiveDate),
    /// Lowercase latin words, matched as pinyin (`zhang san`) or initials (`zs`).
    Pinyin(String),
    Chinese(String),
    Ignored(String),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::OrderNo(s) => write!(f, "order number {s}"),
            Part::Phone(n) => write!(f, "phone {}", mask::mask_mobile(n)),
            Part::Last4(s) => write!(f, "phone ending {s}"),
            Part::Day(d) => write!(f, "created on {d}"),
            Part::Pinyin(s) => write!(f, "pinyin \"{s}\""),
            Part::Chinese(s) => write!(f, "text \"{s}\""),
            Part::Ignored(s) => write!(f, "ignored \"{s}\""),
        }
    }
}

fn order_no_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[A-Za-z]{1,4}[0-9]{6,}$").expect("order number regex"))
}

fn is_han(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' | '\u{20000}'..='\u{3134F}' | '·')
}

fn parse_day(s: &str) -> Option<NaiveDate> {
    match s.len() {
        8 if s.bytes().all(|b| b.is_ascii_digit()) => NaiveDate::parse_from_str(s, "%Y%m%d").ok(),
        10 => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
        _ => None,
    }
}

/// Splits customer-service input into [`Part`]s (see the module doc). Pure.
pub fn classify(input: &str) -> Vec<Part> {
    // Full-width digits (typed by Chinese input methods) mean the same numbers.
    let input = &*mask::fold_width(input);
    let mut parts = Vec::new();
    // Order numbers first: their digit runs must not be read as phones or dates.
    let mut rest = String::with_capacity(input.len());
    for word in input.split_whitespace() {
        if order_no_regex().is_match(word) {
            parts.push(Part::OrderNo(word.to_ascii_uppercase()));
        } else {
            rest.push_str(word);
            rest.push(' ');
        }
    }
    // Phones next, on the whole remaining text: their formats contain spaces and dashes.
    let mut text = String::with_capacity(rest.len());
    let mut last = 0;
    for (range, digits) in mask::find_mobiles(&rest) {
        text.push_str(&rest[last..range.start]);
        text.push(' ');
        last = range.end;
        parts.push(Part::Phone(digits));
    }
    text.push_str(&rest[last..]);

    let mut pinyin: Vec<String> = Vec::new();
    let flush_pinyin = |pinyin: &mut Vec<String>, parts: &mut Vec<Part>| {
        if !pinyin.is_empty() {
            parts.push(Part::Pinyin(pinyin.join(" ")));
            pinyin.clear();
        }
    };
    for chunk in text.split(|c: char| c.is_whitespace() || ",，、;；/|".contains(c)) {
        if chunk.is_empty() {
            continue;
        }
        if let Some(day) = parse_day(chunk) {
            flush_pinyin(&mut pinyin, &mut parts);
            parts.push(Part::Day(day));
            continue;
        }
        // Mixed chunks like `张三5678` split where the script changes.
        for run in script_runs(chunk) {
            if run.chars().all(|c| c.is_ascii_alphabetic()) {
                pinyin.push(run.to_ascii_lowercase());
                continue;
            }
            flush_pinyin(&mut pinyin, &mut parts);
            let part = if run.chars().all(|c| c.is_ascii_digit()) {
                match (run.len(), parse_day(run)) {
                    (4, _) => Part::Last4(run.to_string()),
                    (8, Some(day)) => Part::Day(day),
                    _ => Part::Ignored(run.to_string()),
                }
            } else if run.chars().all(is_han) {
                Part::Chinese(run.to_string())
            } else {
                Part::Ignored(run.to_string())
            };
            parts.push(part);
        }
    }
    flush_pinyin(&mut pinyin, &mut parts);
    parts
}

/// Maximal runs of one script: Chinese, ASCII digits, ASCII letters, anything else.
fn script_runs(chunk: &str) -> Vec<&str> {
    fn class(c: char) -> u8 {
        match c {
            c if is_han(c) => 0,
            c if c.is_ascii_digit() => 1,
            c if c.is_ascii_alphabetic() => 2,
            _ => 3,
        }
    }
    let mut runs = Vec::new();
    let mut start = 0;
    let mut current = None;
    for (i, c) in chunk.char_indices() {
        let k = class(c);
        if current.is_some_and(|p| p != k) {
            runs.push(&chunk[start..i]);
            start = i;
        }
        current = Some(k);
    }
    if start < chunk.len() {
        runs.push(&chunk[start..]);
    }
    // Punctuation runs carry nothing searchable.
    runs.retain(|r| r.chars().any(char::is_alphanumeric));
    runs
}

/// Turns [`Part`]s into one `bool` query over the derived fields.
pub struct QueryBuilder {
    phone_fields: Vec<String>,
    pinyin_fields: Vec<String>,
    text_fields: Vec<String>,
    key: Option<HashKey>,
    tokenizer: Arc<Tokenizer>,
    zone: String,
}

impl QueryBuilder {
    /// Field names and the hash key from the table mapping that writes `search.orders_index`.
    pub fn from_config(cfg: &Config, tokenizer: Arc<Tokenizer>) -> Result<Self, SearchError> {
        let table = cfg
            .tables
            .iter()
            .find(|t| t.index == cfg.search.orders_index)
            .ok_or_else(|| SearchError::NoOrdersTable(cfg.search.orders_index.clone()))?;
        let field = |c: &String| table.rename.get(c).unwrap_or(c).clone();
        Ok(QueryBuilder {
            phone_fields: table.phone_columns.iter().map(field).collect(),
            pinyin_fields: table.pinyin_fields.iter().map(field).collect(),
            text_fields: cfg.search.text_fields.clone(),
            key: table.phone_hash_key.clone(),
            tokenizer,
            zone: offset_string(cfg.source.offset()),
        })
    }

    /// The `query` object for `parts`; every part must match.
    pub fn build(&self, parts: &[Part]) -> Result<Json, SearchError> {
        let any = |clauses: Vec<Json>| json!({"bool": {"should": clauses, "minimum_should_match": 1}});
        let mut must = Vec::new();
        for part in parts {
            match part {
                Part::OrderNo(no) => must.push(any(vec![
                    json!({"term": {ORDER_NO: {"value": no, "boost": 2.0}}}),
                    json!({"prefix": {ORDER_NO: no}}),
                ])),
                Part::Phone(digits) => {
                    let key = self.key.as_ref().filter(|_| !self.phone_fields.is_empty());
                    let key = key.ok_or(SearchError::NoPhoneFields)?;
                    let hash = key.hash(digits);
                    must.push(any(self
                        .phone_fields
                        .iter()
                        .map(|f| json!({"term": {format!("{f}_hash"): hash}}))
                        .collect()));
                }
                Part::Last4(d) => {
                    if self.phone_fields.is_empty() {
                        return Err(SearchError::NoPhoneFields);
                    }
                    must.push(any(self
                        .phone_fields
                        .iter()
                        .map(|f| json!({"term": {format!("{f}_last4"): d}}))
                        .collect()));
                }
                Part::Day(day) => {
                    let next = day.succ_opt().unwrap_or(*day);
                    must.push(json!({"range": {CREATED_AT: {
                        "gte": day.to_string(), "lt": next.to_string(),
                        "format": "yyyy-MM-dd", "time_zone": self.zone}}}));
                }
                Part::Pinyin(words) => {
                    if self.pinyin_fields.is_empty() {
                        return Err(SearchError::NoPinyinFields);
                    }
                    let joined = words.replace(' ', "");
                    let mut clauses = Vec::new();
                    for f in &self.pinyin_fields {
                        clauses.push(json!({"match_phrase": {format!("{f}_pinyin"): words}}));
                        clauses.push(json!({"term": {format!("{f}_initials"): joined}}));
                    }
                    must.push(any(clauses));
                }
                Part::Chinese(text) => {
                    let words = self.tokenizer.query_tokens(text);
                    if words.is_empty() {
                        continue;
                    }
                    // All words of one part in one field: `李建国` must not match a 李 whose
                    // address is on 建国路. Separate parts (`张三 文三路`) match separately.
                    let query = words.join(" ");
                    must.push(any(self
                        .text_fields
                        .iter()
                        .map(|f| json!({"match": {format!("{f}_tokens"): {"query": query, "operator": "and"}}}))
                        .collect()));
                }
                Part::Ignored(_) => {}
            }
        }
        if must.is_empty() {
            let ignored: Vec<String> = parts.iter().map(Part::to_string).collect();
            return Err(SearchError::Nothing(ignored.join(", ")));
        }
        Ok(json!({"bool": {"must": must}}))
    }
}

fn offset_string(zone: FixedOffset) -> String {
    let secs = zone.local_minus_utc();
    let sign = if secs < 0 { '-' } else { '+' };
    let secs = secs.abs();
    format!("{sign}{:02}:{:02}", secs / 3600, (secs % 3600) / 60)
}

/// Matching orders, best first, each with its timeline.
#[derive(Debug, serde::Serialize)]
pub struct SearchResult {
    /// How the input was read (phones masked).
    pub parts: Vec<String>,
    pub total: u64,
    pub took_ms: u64,
    pub orders: Vec<Json>,
}

/// Runs customer-service searches against the configured cluster.
pub struct Searcher {
    client: Elasticsearch,
    builder: QueryBuilder,
    orders_index: String,
    events_index: String,
}

impl Searcher {
    pub fn new(client: Elasticsearch, cfg: &Config, tokenizer: Arc<Tokenizer>) -> Result<Self, SearchError> {
        Ok(Searcher {
            client,
            builder: QueryBuilder::from_config(cfg, tokenizer)?,
            orders_index: cfg.search.orders_index.clone(),
            events_index: cfg.search.events_index.clone(),
        })
    }

    pub fn builder(&self) -> &QueryBuilder {
        &self.builder
    }

    /// Up to `size` orders matching `input`, each with an `events` array (its timeline).
    pub async fn search(&self, input: &str, size: usize) -> Result<SearchResult, SearchError> {
        let started = std::time::Instant::now();
        let parts = classify(input);
        let query = self.builder.build(&parts)?;
        let body = json!({"query": query, "size": size, "track_total_hits": true,
            "sort": ["_score", {CREATED_AT: "desc"}, {ORDER_ID: "asc"}]});
        let resp = self.post(&self.orders_index, "orders", &body).await?;
        let total = resp["hits"]["total"]["value"].as_u64().unwrap_or(0);
        let mut orders: Vec<Json> = resp["hits"]["hits"]
            .as_array()
            .map(|hits| hits.iter().map(|h| h["_source"].clone()).collect())
            .unwrap_or_default();
        let ids: Vec<Json> = orders
            .iter()
            .map(|o| o[ORDER_ID].clone())
            .filter(|v| !v.is_null())
            .collect();
        if !ids.is_empty() {
            let body = json!({"query": {"terms": {EVENT_ORDER_ID: ids}}, "size": MAX_EVENTS,
                "sort": [{OCCURRED_AT: "asc"}, {"id": "asc"}]});
            let resp = self.post(&self.events_index, "timeline", &body).await?;
            let mut by_order: std::collections::HashMap<String, Vec<Json>> = Default::default();
            for h in resp["hits"]["hits"].as_array().into_iter().flatten() {
                let e = &h["_source"];
                by_order
                    .entry(e[EVENT_ORDER_ID].to_string())
                    .or_default()
                    .push(e.clone());
            }
            for o in &mut orders {
                let events = by_order.remove(&o[ORDER_ID].to_string()).unwrap_or_default();
                o["events"] = Json::Array(events);
            }
        }
        Ok(SearchResult {
            parts: parts.iter().map(Part::to_string).collect(),
            total,
            took_ms: started.elapsed().as_millis() as u64,
            orders,
        })
    }

    async fn post(&self, index: &str, what: &'static str, body: &Json) -> Result<Json, SearchError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let resp = self
            .client
            .send(
                Method::Post,
                &format!("/{index}/_search"),
                headers,
                None::<&()>,
                Some(serde_json::to_vec(body).expect("json")),
                Some(Duration::from_secs(30)),
            )
            .await
            .map_err(|e| SearchError::Unreachable(e.to_string()))?;
        let status = resp.status_code().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SearchError::Unreachable(e.to_string()))?;
        if status != 200 {
            return Err(SearchError::Refused {
                what,
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(2_000).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| SearchError::Unreachable(format!("invalid response: {e}")))
    }
}

/// Human-readable listing of a result.
pub fn render(result: &SearchResult, phone_fields: &[String]) -> String {
    use std::fmt::Write;
    let s = |v: &Json| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({} match{}, {} ms)",
        result.parts.join("; "),
        result.total,
        if result.total == 1 { "" } else { "es" },
        result.took_ms
    );
    for o in &result.orders {
        let phones: Vec<String> = phone_fields.iter().map(|f| s(&o[format!("{f}_masked")])).collect();
        let _ = writeln!(
            out,
            "#{} {} {} {} {} ¥{} {}\n    {}",
            s(&o[ORDER_ID]),
            s(&o[ORDER_NO]),
            s(&o["buyer_name"]),
            phones.join(" "),
            s(&o["status"]),
            s(&o["amount"]),
            s(&o[CREATED_AT]),
            s(&o["address"]),
        );
        for e in o["events"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "    {}  {}", s(&e[OCCURRED_AT]), s(&e["event_type"]));
        }
    }
    out
}

impl QueryBuilder {
    /// The phone columns (document field prefixes) the builder looks phones up by.
    pub fn phone_fields(&self) -> &[String] {
        &self.phone_fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> Part {
        Part::Day(NaiveDate::from_ymd_opt(y, m, d).unwrap())
    }

    #[test]
    fn name_last4_and_date() {
        assert_eq!(
            classify("张三 5678 20260125"),
            vec![
                Part::Chinese("张三".into()),
                Part::Last4("5678".into()),
                day(2026, 1, 25)
            ]
        );
        assert_eq!(classify("2026-01-25"), vec![day(2026, 1, 25)]);
        assert_eq!(
            classify("张三5678"),
            vec![Part::Chinese("张三".into()), Part::Last4("5678".into())]
        );
        assert_eq!(
            classify("张三 ５６７８"),
            vec![Part::Chinese("张三".into()), Part::Last4("5678".into())]
        );
    }

    #[test]
    fn phones_in_any_format_are_one_part() {
        for input in [
            "+86 138-1234-5678",
            "13812345678",
            "0086 138 1234 5678",
            "138-1234-5678",
            "１３８１２３４５６７８",
        ] {
            assert_eq!(classify(input), vec![Part::Phone("13812345678".into())], "{input}");
        }
        assert_eq!(
            classify("李四 +86 138 1234 5678"),
            vec![Part::Phone("13812345678".into()), Part::Chinese("李四".into())]
        );
        assert_eq!(Part::Phone("13812345678".into()).to_string(), "phone 138****5678");
    }

    #[test]
    fn order_numbers_addresses_and_pinyin() {
        assert_eq!(
            classify("so2024030100000123"),
            vec![Part::OrderNo("SO2024030100000123".into())]
        );
        assert_eq!(classify("SO20240301"), vec![Part::OrderNo("SO20240301".into())]);
        assert_eq!(classify("文三路"), vec![Part::Chinese("文三路".into())]);
        assert_eq!(classify("Zhang San"), vec![Part::Pinyin("zhang san".into())]);
        assert_eq!(
            classify("zs 5678"),
            vec![Part::Pinyin("zs".into()), Part::Last4("5678".into())]
        );
    }

    #[test]
    fn render_lists_orders_with_masked_phones_and_timelines() {
        let r = SearchResult {
            parts: vec![Part::Phone("13812345678".into()).to_string()],
            total: 1,
            took_ms: 3,
            orders: vec![
                json!({"id": 7, "order_no": "SO1", "buyer_name": "张三", "buyer_phone_masked": "138****5678",
                "status": "paid", "amount": "12.50", "created_at": "2026-01-25T09:00:00+08:00", "address": "文三路1号",
                "events": [{"occurred_at": "2026-01-25T09:00:00.000+08:00", "event_type": "created"}]}),
            ],
        };
        let text = render(&r, &["buyer_phone".into()]);
        assert!(text.starts_with("phone 138****5678 (1 match, 3 ms)"), "{text}");
        assert!(
            text.contains("#7 SO1 张三 138****5678 paid ¥12.50") && text.contains("created"),
            "{text}"
        );
        assert!(!text.contains("13812345678"));
    }

    #[test]
    fn unusable_input_is_ignored_not_guessed() {
        assert_eq!(
            classify("123 20261399 12345678901 ！"),
            vec![
                Part::Ignored("123".into()),
                Part::Ignored("20261399".into()),
                Part::Ignored("12345678901".into())
            ]
        );
        assert!(classify("").is_empty());
    }
}

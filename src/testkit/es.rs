//! A small Elasticsearch client for test assertions, over the `elasticsearch` crate's transport.
//!
//! Contract: every method speaks the documented Elasticsearch 8 / OpenSearch 2 REST API and turns
//! a non-2xx answer into an error carrying the status and body (except where a 404 is an answer:
//! [`EsClient::get_doc`], [`EsClient::get_alias`], [`EsClient::delete_index`]).
//! [`EsClient::all_docs`] reads every document of an index or alias through the scroll API and
//! checks it got as many as the search reported, so a result is complete or an error.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};

use super::EsTarget;

/// Index body (settings and mappings) of the `orders` indexes.
pub const ORDERS_INDEX_BODY: &str = include_str!("../../mappings/orders.json");
/// Index body (settings and mappings) of the `event_log` indexes.
pub const EVENT_LOG_INDEX_BODY: &str = include_str!("../../mappings/event_log.json");

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const SCROLL_PAGE: usize = 5_000;
const BULK_CHUNK: usize = 2_000;

/// Test-side Elasticsearch client. Create one per test: it belongs to the caller's runtime.
#[derive(Debug, Clone)]
pub struct EsClient {
    client: Elasticsearch,
}

impl EsClient {
    pub fn new(target: &EsTarget) -> Result<Self> {
        let url = Url::parse(target.url()).with_context(|| format!("bad ES URL {:?}", target.url()))?;
        // Tests only talk to loopback or explicitly configured clusters: never via a proxy.
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .disable_proxy()
            .timeout(REQUEST_TIMEOUT);
        if let Some((user, password)) = target.credentials() {
            builder = builder.auth(Credentials::Basic(user.to_owned(), password.to_owned()));
        }
        Ok(Self {
            client: Elasticsearch::new(builder.build()?),
        })
    }

    /// Any request; returns the status and the body (JSON, or a JSON string if not JSON, or
    /// `null` if empty) whatever the status.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        self.raw(method, path, &[], body.map(Value::to_string), None).await
    }

    /// Creates `index` with `body` (settings and mappings, e.g. [`ORDERS_INDEX_BODY`] parsed).
    pub async fn create_index(&self, index: &str, body: &Value) -> Result<()> {
        self.ok(Method::Put, &seg(index), &[], Some(body)).await.map(drop)
    }

    /// Deletes `index`; a missing index is not an error.
    pub async fn delete_index(&self, index: &str) -> Result<()> {
        let (status, body) = self.raw(Method::Delete, &seg(index), &[], None, None).await?;
        if status == 404 || (200..300).contains(&status) {
            return Ok(());
        }
        bail!("DELETE {index}: {status} {body}")
    }

    /// Indexes one document and refreshes, so it is searchable on return.
    pub async fn put_doc(&self, index: &str, id: &str, doc: &Value) -> Result<()> {
        let path = format!("{}/_doc/{}", seg(index), seg(id));
        self.ok(Method::Put, &path, &[("refresh", "true")], Some(doc))
            .await
            .map(drop)
    }

    /// `_source` of document `id`, `None` if absent.
    pub async fn get_doc(&self, index: &str, id: &str) -> Result<Option<Value>> {
        let path = format!("{}/_doc/{}", seg(index), seg(id));
        let (status, body) = self.raw(Method::Get, &path, &[], None, None).await?;
        match status {
            404 => Ok(None),
            200..=299 if body["found"] == json!(true) => Ok(Some(body["_source"].clone())),
            200..=299 => Ok(None),
            _ => bail!("GET {path}: {status} {body}"),
        }
    }

    /// Indexes `(id, source)` pairs with the bulk API (in chunks) and refreshes.
    pub async fn bulk_index(&self, index: &str, docs: impl IntoIterator<Item = (String, Value)>) -> Result<()> {
        let path = format!("{}/_bulk", seg(index));
        let mut lines = String::new();
        let mut in_chunk = 0;
        let mut docs = docs.into_iter().peekable();
        while let Some((id, source)) = docs.next() {
            lines.push_str(&json!({ "index": { "_id": id } }).to_string());
            lines.push('\n');
            lines.push_str(&source.to_string());
            lines.push('\n');
            in_chunk += 1;
            if in_chunk == BULK_CHUNK || docs.peek().is_none() {
                let body = std::mem::take(&mut lines);
                let (status, reply) = self
                    .raw(Method::Post, &path, &[], Some(body), Some("application/x-ndjson"))
                    .await?;
                if !(200..300).contains(&status) || reply["errors"] != json!(false) {
                    bail!("bulk into {index}: {status} {}", truncate(&reply.to_string(), 2_000));
                }
                in_chunk = 0;
            }
        }
        self.refresh(index).await
    }

    /// Every document of `index` (an index, alias or pattern) as `_id → _source`.
    /// Fails if two documents share an `_id` (possible only across several indexes).
    pub async fn all_docs(&self, index: &str) -> Result<BTreeMap<String, Value>> {
        let mut scroll_ids = Vec::new();
        let result = self.scroll_all(index, &mut scroll_ids).await;
        if !scroll_ids.is_empty() {
            // Frees the server-side contexts now rather than at their timeout; best effort.
            let body = json!({ "scroll_id": scroll_ids });
            let _ = self.request(Method::Delete, "_search/scroll", Some(&body)).await;
        }
        result
    }

    async fn scroll_all(&self, index: &str, scroll_ids: &mut Vec<String>) -> Result<BTreeMap<String, Value>> {
        let query = json!({
            "size": SCROLL_PAGE,
            "sort": ["_doc"],
            "track_total_hits": true,
            "query": { "match_all": {} }
        });
        let path = format!("{}/_search", seg(index));
        let mut page = self.ok(Method::Post, &path, &[("scroll", "1m")], Some(&query)).await?;
        let total = page["hits"]["total"]["value"]
            .as_u64()
            .context("search reply has no hits.total")?;
        let mut docs = BTreeMap::new();
        loop {
            let scroll_id = page["_scroll_id"].as_str().map(str::to_owned);
            if let Some(id) = &scroll_id {
                if scroll_ids.last() != Some(id) {
                    scroll_ids.push(id.clone());
                }
            }
            let Some(hits) = page["hits"]["hits"].as_array_mut().filter(|h| !h.is_empty()) else {
                break;
            };
            for hit in hits {
                let id = hit["_id"].as_str().context("hit without _id")?.to_owned();
                if docs.insert(id.clone(), hit["_source"].take()).is_some() {
                    bail!("{index}: _id {id:?} appears in more than one index");
                }
            }
            if docs.len() as u64 >= total {
                break;
            }
            let scroll_id = scroll_id.context("search reply has no _scroll_id")?;
            let next = json!({ "scroll": "1m", "scroll_id": scroll_id });
            page = self.ok(Method::Post, "_search/scroll", &[], Some(&next)).await?;
        }
        if docs.len() as u64 != total {
            bail!("{index}: read {} documents but the search reported {total}", docs.len());
        }
        Ok(docs)
    }

    /// Number of documents in `index` (index, alias or pattern).
    pub async fn count(&self, index: &str) -> Result<u64> {
        let body = self
            .ok(Method::Get, &format!("{}/_count", seg(index)), &[], None)
            .await?;
        body["count"]
            .as_u64()
            .with_context(|| format!("_count reply without count: {body}"))
    }

    /// Makes everything indexed so far searchable.
    pub async fn refresh(&self, index: &str) -> Result<()> {
        self.ok(Method::Post, &format!("{}/_refresh", seg(index)), &[], None)
            .await
            .map(drop)
    }

    /// Names of the indexes `alias` points to, sorted; empty if the alias does not exist.
    pub async fn get_alias(&self, alias: &str) -> Result<Vec<String>> {
        let path = format!("_alias/{}", seg(alias));
        let (status, body) = self.raw(Method::Get, &path, &[], None, None).await?;
        match status {
            404 => Ok(Vec::new()),
            200..=299 => {
                let mut names: Vec<String> = body
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                names.sort();
                Ok(names)
            }
            _ => bail!("GET {path}: {status} {body}"),
        }
    }

    /// A request that must succeed; returns the body.
    async fn ok(&self, method: Method, path: &str, query: &[(&str, &str)], body: Option<&Value>) -> Result<Value> {
        let (status, reply) = self.raw(method, path, query, body.map(Value::to_string), None).await?;
        if !(200..300).contains(&status) {
            bail!(
                "{} {path}: {status} {}",
                method_name(method),
                truncate(&reply.to_string(), 2_000)
            );
        }
        Ok(reply)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        content_type: Option<&'static str>,
    ) -> Result<(u16, Value)> {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        let query = (!query.is_empty()).then_some(query);
        let response = self
            .client
            .send(method, path, headers, query, body, None)
            .await
            .with_context(|| format!("{} {path}", method_name(method)))?;
        let status = response.status_code().as_u16();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, body))
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        Method::Head => "HEAD",
    }
}

/// Percent-encodes one path segment (document ids may contain `/`, `?`, `#`, …).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        // `,` and `*` stay literal: they are part of multi-index and pattern syntax.
        if b.is_ascii_alphanumeric() || b"-_.~,*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_bodies_are_strict_json() {
        for body in [ORDERS_INDEX_BODY, EVENT_LOG_INDEX_BODY] {
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["mappings"]["dynamic"], "strict");
            assert_eq!(v["settings"]["number_of_shards"], 1);
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("orders_v1"), "orders_v1");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(seg("订"), "%E8%AE%A2");
        assert_eq!(seg("t_*"), "t_*");
    }
}

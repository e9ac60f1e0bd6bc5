//! A fault-injecting HTTP proxy in front of an Elasticsearch-compatible server, for chaos tests
//! and benchmarks.
//!
//! Contract:
//! * Every request is forwarded unchanged (method, path, query, body, `Authorization` and
//!   `Content-Type`), and its answer returned unchanged, except `_bulk` requests, to which the
//!   current [`Faults`] apply: a whole-request status (429, 503, …, optionally with
//!   `Retry-After`) answered without forwarding; a connection reset before forwarding (nothing
//!   written) or after it (written, answer lost); an added delay; per-item 429s for a share of
//!   the items, which are then left out of the forwarded request (so they are really not
//!   written, as with a full write queue on a real cluster); a documents-per-second throttle;
//!   or a null sink that answers a valid success response without forwarding at all.
//! * Fault decisions come from one seeded RNG, so a failing run can be replayed with its seed.
//! * The proxy runs on its own thread and runtime, like the other test servers, so it is not
//!   tied to a test's runtime; it stops on `Drop`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What the proxy does to `_bulk` requests. The default forwards everything untouched.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer this share (0–1) of bulk requests with this HTTP status, unforwarded.
    pub reject: Option<(u16, f64)>,
    /// `Retry-After` seconds sent with those rejections.
    pub retry_after_secs: Option<u64>,
    /// Share of bulk requests whose connection is dropped before forwarding.
    pub reset_before: f64,
    /// Share of bulk requests whose connection is dropped after forwarding (answer lost).
    pub reset_after: f64,
    /// Added to every bulk answer.
    pub delay: Duration,
    /// Share of the items of each forwarded request answered with a per-item 429, unwritten.
    pub item_reject: f64,
    /// At most this many bulk documents per second; answers are held back to keep the pace.
    pub docs_per_sec: Option<u32>,
    /// Answer bulk requests with success here, without forwarding (a null endpoint).
    pub null_sink: bool,
    /// Record when each document was answered with success (see [`EsProxy::take_answered`]).
    pub record_answers: bool,
}

/// Counters of what the proxy saw and did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub bulk_requests: AtomicU64,
    pub bulk_docs_answered_ok: AtomicU64,
    pub rejected_requests: AtomicU64,
    pub resets: AtomicU64,
    pub rejected_items: AtomicU64,
}

struct State {
    upstream: Mutex<String>,
    http: reqwest::Client,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    /// Throttle: when the next bulk document may be answered.
    next_slot: tokio::sync::Mutex<Instant>,
    stats: ProxyStats,
    /// (index, `_id`, when answered) of successful items, while `record_answers` is on.
    answered: Mutex<Vec<(String, String, std::time::Instant)>>,
}

/// A running proxy; stops on `Drop`.
pub struct EsProxy {
    url: String,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EsProxy {
    /// Starts a proxy to `upstream` on a free loopback port, with fault decisions drawn from
    /// `seed`. Blocking.
    pub fn start(upstream: &str, seed: u64) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()
            .context("building the proxy's HTTP client")?;
        let state = Arc::new(State {
            upstream: Mutex::new(upstream.trim_end_matches('/').to_owned()),
            http,
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            next_slot: tokio::sync::Mutex::new(Instant::now()),
            stats: ProxyStats::default(),
            answered: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let served = state.clone();
        let thread = std::thread::Builder::new().name("es-proxy".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(serve(listener, served, stop_rx));
        })?;
        Ok(Self {
            url: format!("http://{addr}"),
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Base URL of the proxy (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Replaces the faults applied to the following bulk requests.
    pub fn set(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults lock") = faults;
    }

    /// Points the proxy at another server (e.g. a restarted, empty one).
    pub fn set_upstream(&self, upstream: &str) {
        *self.state.upstream.lock().expect("upstream lock") = upstream.trim_end_matches('/').to_owned();
    }

    /// Takes the recorded (index, `_id`, answer time) triples.
    pub fn take_answered(&self) -> Vec<(String, String, std::time::Instant)> {
        std::mem::take(&mut *self.state.answered.lock().expect("answered lock"))
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.state.stats
    }
}

impl Drop for EsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listener");
    loop {
        let (stream, _): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            // A service error closes the connection without an answer: that is the reset.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An injected connection reset (the service error makes hyper drop the connection).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for Reset {}

type Answer = Response<Full<Bytes>>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, Reset> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Reset),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let is_bulk = parts.uri.path().ends_with("/_bulk");
    if !is_bulk {
        return Ok(forward(&state, &parts, &path_and_query, body).await.into_response());
    }
    state.stats.bulk_requests.fetch_add(1, Ordering::Relaxed);
    let faults = state.faults.lock().expect("faults lock").clone();
    let (reject, reset_before, reset_after) = {
        let mut rng = state.rng.lock().expect("rng lock");
        (
            faults.reject.filter(|(_, p)| rng.gen_bool(p.clamp(0.0, 1.0))),
            rng.gen_bool(faults.reset_before.clamp(0.0, 1.0)),
            rng.gen_bool(faults.reset_after.clamp(0.0, 1.0)),
        )
    };
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    if reset_before {
        state.stats.resets.fetch_add(1, Ordering::Relaxed);
        return Err(Reset);
    }
    if let Some((status, _)) = reject {
        state.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
        let mut reply = Reply::json(
            status,
            &json!({"error": {"type": "es_rejected_execution_exception", "reason": "injected by the test proxy"}, "status": status}),
        );
        reply.retry_after = faults.retry_after_secs;
        return Ok(reply.into_response());
    }
    let ops = split_ops(&body);
    if let Some(rate) = faults.docs_per_sec {
        throttle(&state, ops.len(), rate).await;
    }
    let rejected: Vec<bool> = {
        let mut rng = state.rng.lock().expect("rng lock");
        let p = faults.item_reject.clamp(0.0, 1.0);
        ops.iter().map(|_| rng.gen_bool(p)).collect()
    };
    let answer = if faults.null_sink {
        let items: Vec<Value> = ops
            .iter()
            .map(|op| json!({ op.action.clone(): {"_id": op.id, "status": if op.action == "delete" { 200 } else { 201 }} }))
            .collect();
        Reply::json(200, &json!({"took": 1, "errors": false, "items": items}))
    } else if rejected.iter().any(|r| *r) {
        let mut kept = Vec::with_capacity(body.len());
        for (op, r) in ops.iter().zip(&rejected) {
            if !r {
                kept.extend_from_slice(&body[op.range.clone()]);
            }
        }
        state
            .stats
            .rejected_items
            .fetch_add(rejected.iter().filter(|r| **r).count() as u64, Ordering::Relaxed);
        let upstream = if kept.is_empty() {
            Reply::json(200, &json!({"took": 0, "errors": false, "items": []}))
        } else {
            forward(&state, &parts, &path_and_query, Bytes::from(kept)).await
        };
        merge_rejections(upstream, &ops, &rejected)
    } else {
        forward(&state, &parts, &path_and_query, body).await
    };
    if answer.status == 200 {
        state
            .stats
            .bulk_docs_answered_ok
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        if faults.record_answers {
            let now = std::time::Instant::now();
            let mut answered = state.answered.lock().expect("answered lock");
            for (op, r) in ops.iter().zip(&rejected) {
                if !r {
                    let id = op.id.as_str().map_or_else(|| op.id.to_string(), str::to_owned);
                    answered.push((op.index.clone(), id, now));
                }
            }
        }
    }
    if reset_after {
        state.stats.resets.fetch_add(1, Ordering::Relaxed);
        return Err(Reset);
    }
    Ok(answer.into_response())
}

async fn throttle(state: &State, docs: usize, rate: u32) {
    let cost = Duration::from_secs_f64(docs as f64 / f64::from(rate.max(1)));
    let done_at = {
        let mut next = state.next_slot.lock().await;
        let start = (*next).max(Instant::now());
        *next = start + cost;
        *next
    };
    tokio::time::sleep_until(done_at).await;
}

/// One operation of a bulk body: its action, `_id` and byte range (action and source lines).
struct BulkOp {
    action: String,
    index: String,
    id: Value,
    range: std::ops::Range<usize>,
}

fn split_ops(body: &[u8]) -> Vec<BulkOp> {
    let mut ops = Vec::new();
    let mut pos = 0;
    let line_end = |from: usize| {
        body[from..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(body.len(), |i| from + i + 1)
    };
    while pos < body.len() {
        let start = pos;
        let end = line_end(pos);
        let action: Value = serde_json::from_slice(&body[start..end]).unwrap_or(Value::Null);
        let (name, meta) = match action.as_object().and_then(|o| o.iter().next()) {
            Some((k, v)) => (k.clone(), v.clone()),
            None => {
                pos = end;
                continue;
            }
        };
        pos = if name == "delete" { end } else { line_end(end) };
        ops.push(BulkOp {
            action: name,
            index: meta
                .get("_index")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            id: meta.get("_id").cloned().unwrap_or(Value::Null),
            range: start..pos,
        });
    }
    ops
}

/// Puts per-item 429s for the rejected operations between the upstream's items.
fn merge_rejections(upstream: Reply, ops: &[BulkOp], rejected: &[bool]) -> Reply {
    if upstream.status != 200 {
        return upstream;
    }
    let parsed: Value = serde_json::from_slice(&upstream.body).unwrap_or(Value::Null);
    let mut forwarded = parsed["items"].as_array().cloned().unwrap_or_default().into_iter();
    let items: Vec<Value> = ops
        .iter()
        .zip(rejected)
        .map(|(op, r)| match r {
            true => json!({ op.action.clone(): {"_id": op.id, "status": 429, "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution (injected by the test proxy)"}}}),
            false => forwarded.next().unwrap_or(Value::Null),
        })
        .collect();
    Reply::json(200, &json!({"took": parsed["took"], "errors": true, "items": items}))
}

async fn forward(state: &State, parts: &hyper::http::request::Parts, path_and_query: &str, body: Bytes) -> Reply {
    let url = format!("{}{path_and_query}", state.upstream.lock().expect("upstream lock"));
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = state.http.request(method, url).body(body);
    for name in ["content-type", "authorization", "accept"] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            req = req.header(name, v);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match resp.bytes().await {
                Ok(body) => Reply {
                    status,
                    content_type,
                    retry_after: None,
                    body,
                },
                Err(e) => Reply::json(502, &json!({"error": format!("proxy: upstream answer cut: {e}")})),
            }
        }
        Err(e) => Reply::json(502, &json!({"error": format!("proxy: upstream unreachable: {e}")})),
    }
}

/// An answer before it becomes an HTTP response.
struct Reply {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<u64>,
    body: Bytes,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            content_type: Some("application/json".into()),
            retry_after: None,
            body: Bytes::from(body.to_string()),
        }
    }

    fn into_response(self) -> Answer {
        let mut out = Response::new(Full::new(self.body));
        *out.status_mut() = hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
        if let Some(ct) = self
            .content_type
            .and_then(|c| hyper::header::HeaderValue::from_str(&c).ok())
        {
            out.headers_mut().insert("content-type", ct);
        }
        if let Some(secs) = self.retry_after {
            out.headers_mut().insert("retry-after", secs.into());
        }
        out
    }
}

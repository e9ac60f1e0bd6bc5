//! The Elasticsearch sink: bounded lanes of bulk requests with retry and dead-lettering.
//!
//! Contract:
//! * Every operation submitted gets a sequence number from the [`AckTracker`] and is acknowledged
//!   there exactly when it is resolved: written, found stale (409: a newer version is already
//!   indexed), or durably dead-lettered. Transient failures (429, 5xx, timeouts, connection
//!   errors) are retried with capped, jittered exponential backoff for as long as it takes;
//!   nothing is dropped. Fatal conditions (missing index, authentication) stop the lane with an
//!   error that names the fix.
//! * Operations are partitioned by `_id` over `max_in_flight` lanes, and a lane sends its batches
//!   one at a time, resolving each completely (including retries) before the next. So all
//!   changes of one document reach Elasticsearch in binlog order; external versions would make
//!   reordering harmless anyway, but ordering also keeps deletes from relying on tombstones.
//! * Backpressure: lane queues are bounded, so when Elasticsearch slows down `submit` waits,
//!   the pipeline stops pulling from the source, and the source stops reading the binlog.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bulk::{self, BulkOutcome, ItemOutcome};
use crate::change::{DocAction, DocOp};
use crate::checkpoint::{AckTracker, Boundary};
use crate::config::SinkConfig;
use crate::congestion::{Limiter, Signal};
use crate::dead_letter::{now_secs, DeadLetter, DeadLetters};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid Elasticsearch URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("Elasticsearch rejected a write in a way retrying cannot fix: {0}")]
    Fatal(String),
    #[error("cannot write the dead-letter file {path}: {source}; free disk space or fix permissions, then restart")]
    DeadLetterIo { path: String, source: std::io::Error },
    #[error("the sink stopped unexpectedly")]
    Closed,
}

/// Builds the Elasticsearch client.
pub fn client(cfg: &SinkConfig) -> Result<Elasticsearch, SinkError> {
    let url = Url::parse(&cfg.url).map_err(|e| SinkError::Url {
        url: crate::config::redact_url(&cfg.url),
        reason: e.to_string(),
    })?;
    let builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .disable_proxy()
        .timeout(Duration::from_millis(cfg.request_timeout_ms));
    let builder = crate::tls::es_transport(builder, cfg).map_err(|reason| SinkError::Url {
        url: crate::config::redact_url(&cfg.url),
        reason,
    })?;
    let transport = builder.build().map_err(|e| SinkError::Url {
        url: crate::config::redact_url(&cfg.url),
        reason: e.to_string(),
    })?;
    Ok(Elasticsearch::new(transport))
}

/// State shared by the lanes and the checkpoint committer.
pub struct Shared {
    pub tracker: Mutex<AckTracker>,
    /// Signalled whenever operations are acknowledged.
    pub acked: Notify,
    dead_letters: Mutex<DeadLetters>,
}

impl Shared {
    pub fn new(dead_letters: DeadLetters) -> Arc<Self> {
        Arc::new(Shared {
            tracker: Mutex::new(AckTracker::new()),
            acked: Notify::new(),
            dead_letters: Mutex::new(dead_letters),
        })
    }

    fn ack(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut t = self.tracker.lock().expect("tracker lock");
        for s in seqs {
            t.ack(s);
        }
        drop(t);
        crate::metrics::get().acked();
        self.acked.notify_one();
    }

    /// Durably dead-letters records.
    pub fn dead_letter(&self, records: &[DeadLetter<'_>]) -> Result<(), SinkError> {
        let mut d = self.dead_letters.lock().expect("dead-letter lock");
        d.write(records).map_err(|source| SinkError::DeadLetterIo {
            path: d.path().display().to_string(),
            source,
        })?;
        for r in records {
            crate::metrics::get().change_dead_lettered(r.table, r.op);
        }
        if !records.is_empty() {
            tracing::warn!(count = records.len(), file = %d.path().display(), reason = records[0].reason, "dead-lettered changes");
        }
        Ok(())
    }
}

/// Handle used by the pipeline to feed the lanes.
pub struct Sink {
    lanes: Vec<mpsc::Sender<(u64, DocOp)>>,
    shared: Arc<Shared>,
}

impl Sink {
    /// Starts `cfg.max_in_flight` lanes on `tasks`.
    pub fn start(
        client: Elasticsearch,
        cfg: &SinkConfig,
        shared: Arc<Shared>,
        tasks: &mut JoinSet<Result<(), crate::pipeline::PipelineError>>,
    ) -> Sink {
        let mut lanes = Vec::with_capacity(cfg.max_in_flight);
        let limiter = Arc::new(Limiter::new(cfg.min_in_flight, cfg.max_in_flight, cfg.latency_factor));
        crate::metrics::get().concurrency_limit(limiter.limit());
        for lane_no in 0..cfg.max_in_flight {
            let (tx, rx) = mpsc::channel(cfg.batch_max_docs.max(64));
            let lane = Lane {
                no: lane_no,
                client: client.clone(),
                cfg: cfg.clone(),
                shared: shared.clone(),
                limiter: limiter.clone(),
            };
            tasks.spawn(async move { lane.run(rx).await.map_err(Into::into) });
            lanes.push(tx);
        }
        Sink { lanes, shared }
    }

    /// Queues one operation; waits while the lane is full (backpressure).
    pub async fn submit(&self, op: DocOp) -> Result<(), SinkError> {
        let seq = self.shared.tracker.lock().expect("tracker lock").register();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&*op.index, &op.id).hash(&mut h);
        let lane = (h.finish() % self.lanes.len() as u64) as usize;
        self.lanes[lane].send((seq, op)).await.map_err(|_| SinkError::Closed)
    }

    /// Records a transaction boundary after everything submitted so far.
    pub fn boundary(&self, boundary: Boundary) {
        self.shared.tracker.lock().expect("tracker lock").boundary(boundary);
        self.shared.acked.notify_one();
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

struct Lane {
    no: usize,
    client: Elasticsearch,
    cfg: SinkConfig,
    shared: Arc<Shared>,
    /// Shared by all lanes: how many of them may have a request in flight now.
    limiter: Arc<Limiter>,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<(u64, DocOp)>) -> Result<(), SinkError> {
        let linger = Duration::from_millis(self.cfg.linger_ms);
        let mut batch: Vec<(u64, DocOp)> = Vec::new();
        let mut bytes = 0usize;
        let mut deadline: Option<Instant> = None;
        loop {
            let msg = match deadline {
                Some(d) => tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(d) => {
                        self.send(std::mem::take(&mut batch)).await?;
                        bytes = 0;
                        deadline = None;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some((seq, op)) = msg else {
                return self.send(batch).await;
            };
            bytes += bulk::encoded_len(&op);
            batch.push((seq, op));
            deadline.get_or_insert_with(|| Instant::now() + linger);
            if batch.len() >= self.cfg.batch_max_docs || bytes >= self.cfg.batch_max_bytes {
                self.send(std::mem::take(&mut batch)).await?;
                bytes = 0;
                deadline = None;
            }
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        crate::retry::delays(
            Duration::from_millis(self.cfg.retry_min_ms),
            Duration::from_millis(self.cfg.retry_max_ms),
        )
    }

    /// Resolves every operation of `ops`, retrying as long as needed.
    async fn send(&self, ops: Vec<(u64, DocOp)>) -> Result<(), SinkError> {
        let mut stack = vec![ops];
        while let Some(mut pending) = stack.pop() {
            let mut backoff = self.backoff();
            let mut attempt = 0u32;
            while !pending.is_empty() {
                attempt += 1;
                let mut buf = BytesMut::with_capacity(pending.iter().map(|(_, o)| bulk::encoded_len(o)).sum());
                for (_, op) in &pending {
                    bulk::encode(&mut buf, op);
                }
                let permit = self.limiter.acquire().await;
                let started = Instant::now();
                let timer = crate::metrics::get().bulk_started(pending.len(), buf.len());
                let outcome = self.post(buf.freeze(), pending.len()).await;
                drop(timer);
                permit.done(congestion_signal(&outcome, started.elapsed()));
                tracing::debug!(
                    lane = self.no,
                    docs = pending.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "bulk request"
                );
                match outcome {
                    BulkOutcome::Items(items) => {
                        pending = self.resolve(pending, items)?;
                        if !pending.is_empty() {
                            crate::metrics::get().bulk_retry();
                            let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                            tracing::warn!(
                                lane = self.no,
                                retrying = pending.len(),
                                attempt,
                                delay_ms = delay.as_millis() as u64,
                                "bulk items rejected transiently; retrying them"
                            );
                            tokio::time::sleep(delay).await;
                        }
                    }
                    BulkOutcome::RetryAll { reason, retry_after } => {
                        crate::metrics::get().bulk_retry();
                        let delay = backoff
                            .next()
                            .unwrap_or(Duration::from_secs(1))
                            .max(retry_after.unwrap_or_default());
                        tracing::warn!(lane = self.no, docs = pending.len(), attempt, delay_ms = delay.as_millis() as u64, %reason, "bulk request failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    BulkOutcome::TooLarge if pending.len() > 1 => {
                        let second = pending.split_off(pending.len() / 2);
                        stack.push(second);
                        stack.push(pending);
                        break;
                    }
                    BulkOutcome::TooLarge => {
                        let (seq, op) = pending.pop().expect("one op");
                        self.dead_letter_ops(&[(
                            &op,
                            Some(413),
                            "document exceeds the cluster's http.max_content_length",
                        )])?;
                        self.shared.ack([seq]);
                    }
                    BulkOutcome::Fatal { reason } => return Err(SinkError::Fatal(reason)),
                }
            }
        }
        Ok(())
    }

    async fn post(&self, body: bytes::Bytes, n_ops: usize) -> BulkOutcome {
        post_bulk(
            &self.client,
            Duration::from_millis(self.cfg.request_timeout_ms),
            body,
            n_ops,
        )
        .await
    }

    /// Applies per-item outcomes; returns the operations to send again.
    fn resolve(&self, pending: Vec<(u64, DocOp)>, items: Vec<ItemOutcome>) -> Result<Vec<(u64, DocOp)>, SinkError> {
        // Newest version written per document in this round: an older op of the same document
        // that must be retried is obsolete and must not be re-sent after it.
        let mut written: HashMap<(&str, &str), u64> = HashMap::new();
        for ((_, op), item) in pending.iter().zip(&items) {
            if matches!(item, ItemOutcome::Done | ItemOutcome::Stale) {
                let v = written.entry((&op.index, &op.id)).or_default();
                *v = (*v).max(op.version.0);
            }
        }
        let mut acked = Vec::new();
        let mut dead = Vec::new();
        let mut retry_idx = Vec::new();
        for (i, ((seq, op), item)) in pending.iter().zip(items).enumerate() {
            match item {
                ItemOutcome::Done | ItemOutcome::Stale => {
                    crate::metrics::get().change_indexed(&op.table, op.op);
                    acked.push(*seq)
                }
                ItemOutcome::Retry { .. }
                    if written
                        .get(&(&*op.index, op.id.as_str()))
                        .is_some_and(|v| *v > op.version.0) =>
                {
                    crate::metrics::get().change_indexed(&op.table, op.op);
                    acked.push(*seq)
                }
                ItemOutcome::Retry { status, .. } => {
                    if status == 429 {
                        crate::metrics::get().bulk_throttled(1);
                    }
                    retry_idx.push(i)
                }
                ItemOutcome::DeadLetter { status, reason } => dead.push((i, status, reason)),
                ItemOutcome::Fatal { status, reason } => {
                    return Err(SinkError::Fatal(format!(
                        "{reason} (HTTP {status} for index {}); if the index or alias was deleted, \
                         recreate it by running a reindex, or delete the checkpoint to start over",
                        op.index
                    )));
                }
            }
        }
        let records: Vec<(&DocOp, Option<u16>, &str)> = dead
            .iter()
            .map(|(i, status, reason)| (&pending[*i].1, Some(*status), reason.as_str()))
            .collect();
        self.dead_letter_ops(&records)?;
        acked.extend(dead.iter().map(|(i, _, _)| pending[*i].0));
        self.shared.ack(acked);
        let mut keep = vec![false; pending.len()];
        for i in retry_idx {
            keep[i] = true;
        }
        Ok(pending
            .into_iter()
            .zip(keep)
            .filter_map(|(p, k)| k.then_some(p))
            .collect())
    }

    fn dead_letter_ops(&self, ops: &[(&DocOp, Option<u16>, &str)]) -> Result<(), SinkError> {
        let docs: Vec<Option<Box<serde_json::value::RawValue>>> = ops
            .iter()
            .map(|(op, _, _)| match &op.action {
                DocAction::Index(s) => serde_json::value::RawValue::from_string(s.clone()).ok(),
                DocAction::Delete => None,
            })
            .collect();
        let records: Vec<DeadLetter<'_>> = ops
            .iter()
            .zip(&docs)
            .map(|((op, status, reason), doc)| DeadLetter {
                at: now_secs(),
                table: &op.table,
                index: &op.index,
                id: Some(&op.id),
                op: op.op.as_str(),
                version: op.version.0,
                status: *status,
                reason,
                document: doc.as_deref(),
            })
            .collect();
        self.shared.dead_letter(&records)
    }
}

/// What a bulk answer says about the cluster's load: any 429 (whole request or item), 5xx,
/// timeout or connection failure is pushback; a full success reports its latency.
fn congestion_signal(outcome: &BulkOutcome, latency: Duration) -> Signal {
    match outcome {
        BulkOutcome::Items(items) if items.iter().any(|i| matches!(i, ItemOutcome::Retry { .. })) => Signal::Pushback,
        BulkOutcome::Items(_) => Signal::Ok(latency),
        BulkOutcome::RetryAll { .. } => Signal::Pushback,
        BulkOutcome::TooLarge | BulkOutcome::Fatal { .. } => Signal::Neutral,
    }
}

/// Sends one `_bulk` request of `n_ops` operations and classifies the answer; transport errors
/// become [`BulkOutcome::RetryAll`].
pub async fn post_bulk(client: &Elasticsearch, timeout: Duration, body: bytes::Bytes, n_ops: usize) -> BulkOutcome {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    let resp = match client
        .send(
            Method::Post,
            "/_bulk",
            headers,
            Some(bulk::QUERY),
            Some(body),
            Some(timeout),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let text = crate::tls::chain(&e);
            // An untrusted certificate stays untrusted: halt instead of retrying forever.
            if let Some(problem) = crate::tls::tls_problem(&text) {
                return BulkOutcome::Fatal {
                    reason: format!(
                        "TLS to Elasticsearch failed: {problem}; {}",
                        crate::tls::es_fix(problem)
                    ),
                };
            }
            return BulkOutcome::RetryAll {
                reason: format!("request failed: {text}"),
                retry_after: None,
            };
        }
    };
    let status = resp.status_code().as_u16();
    let cap = bulk::response_cap(n_ops);
    // The client offers no streaming read, so the cap is enforced on the declared length; a
    // chunked answer is bounded by the request timeout only.
    if let Some(len) = resp.content_length().filter(|l| *l > cap) {
        return BulkOutcome::Fatal {
            reason: format!(
                "the _bulk answer declares {len} bytes, more than the {cap} bytes {n_ops} operations can need: \
                 is sink.url an Elasticsearch/OpenSearch endpoint (and not a proxy rewriting answers)?"
            ),
        };
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match resp.bytes().await {
        Ok(body) => bulk::classify(status, retry_after.as_deref(), &body, n_ops),
        Err(e) => BulkOutcome::RetryAll {
            reason: format!("reading the response failed: {e}"),
            retry_after: None,
        },
    }
}

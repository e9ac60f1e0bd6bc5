//! The `_bulk` wire format: request encoding and response classification, both pure.
//!
//! Contract:
//! * [`encode`] appends one operation as NDJSON (action line + source line, each ending in `\n`)
//!   carrying `version` and `version_type=external_gte`, so a replayed or reordered write can
//!   never replace a newer document state (Elasticsearch answers 409, which we count as done).
//! * [`classify`] maps an HTTP status and body to exactly one decision per operation: done,
//!   retry, dead-letter, or fatal; and whole-request decisions (retry all, split, fatal). It
//!   never drops an item silently: an unparseable body or an item count that does not match the
//!   request is a whole-request retry, because bulk writes are idempotent.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;

use crate::change::{DocAction, DocOp};

/// The `filter_path` that keeps only what [`classify`] reads (cuts the response about 4×).
pub const FILTER_PATH: &str = "errors,took,items.*.error,items.*.status,items.*._id";

/// Query parameters of every bulk request. `require_alias` makes a write to a vanished alias
/// fail (404) instead of auto-creating a fresh index with guessed mappings.
pub const QUERY: &[(&str, &str)] = &[("filter_path", FILTER_PATH), ("require_alias", "true")];

/// Appends `op` to `buf` as NDJSON.
pub fn encode(buf: &mut BytesMut, op: &DocOp) {
    let action = match op.action {
        DocAction::Index(_) => "index",
        DocAction::Delete => "delete",
    };
    buf.put_slice(b"{\"");
    buf.put_slice(action.as_bytes());
    buf.put_slice(b"\":{\"_index\":");
    put_json_str(buf, &op.index);
    buf.put_slice(b",\"_id\":");
    put_json_str(buf, &op.id);
    buf.put_slice(b",\"version\":");
    buf.put_slice(op.version.0.to_string().as_bytes());
    buf.put_slice(b",\"version_type\":\"external_gte\"}}\n");
    if let DocAction::Index(source) = &op.action {
        buf.put_slice(source.as_bytes());
        buf.put_u8(b'\n');
    }
}

/// Bytes [`encode`] will append for `op` (for batch sizing without encoding twice).
pub fn encoded_len(op: &DocOp) -> usize {
    let source = match &op.action {
        DocAction::Index(s) => s.len() + 1,
        DocAction::Delete => 0,
    };
    80 + op.index.len() + op.id.len() + source
}

fn put_json_str(buf: &mut BytesMut, s: &str) {
    // serde_json escapes exactly as JSON requires; ids and index names are short.
    let mut w = buf.writer();
    serde_json::to_writer(&mut w, s).expect("writing to memory");
}

/// What to do with one operation of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Written (or deleted, or already absent).
    Done,
    /// A newer version is already indexed: this write is obsolete.
    Stale,
    /// Failed for a passing reason (429, 5xx): send it again.
    Retry { status: u16, reason: String },
    /// Can never succeed as it is (mapping rejection, malformed document): dead-letter it.
    DeadLetter { status: u16, reason: String },
    /// The cluster is not in a state we can write to (index missing, no privilege): halt.
    Fatal { status: u16, reason: String },
}

/// The decision for a whole bulk request.
#[derive(Debug, Clone, PartialEq)]
pub enum BulkOutcome {
    /// One outcome per operation, in request order.
    Items(Vec<ItemOutcome>),
    /// Send the whole request again after a delay (at least `retry_after` when given).
    RetryAll {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 413: the request is too large; split it.
    TooLarge,
    /// Halt: the request can never succeed (authentication, missing endpoint).
    Fatal { reason: String },
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, Item>>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Classifies a `_bulk` response for a request of `n_ops` operations.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8], n_ops: usize) -> BulkOutcome {
    let retry_after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match status {
        200 => {}
        413 => return BulkOutcome::TooLarge,
        408 | 429 | 500 | 502 | 503 | 504 => {
            return BulkOutcome::RetryAll {
                reason: format!("HTTP {status}: {}", snippet(body)),
                retry_after,
            };
        }
        401 | 403 => {
            return BulkOutcome::Fatal {
                reason: format!(
                    "HTTP {status} from _bulk: the credentials are missing or lack write privileges on the target indexes ({})",
                    snippet(body)
                ),
            };
        }
        s if s >= 500 => {
            return BulkOutcome::RetryAll {
                reason: format!("HTTP {status}: {}", snippet(body)),
                retry_after,
            };
        }
        s => {
            return BulkOutcome::Fatal {
                reason: format!("HTTP {s} from _bulk: {}", snippet(body)),
            }
        }
    }
    let parsed: Response = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return BulkOutcome::RetryAll {
                reason: format!("unreadable bulk response: {e}"),
                retry_after,
            }
        }
    };
    if parsed.items.len() != n_ops {
        return BulkOutcome::RetryAll {
            reason: format!("bulk response has {} items for {n_ops} operations", parsed.items.len()),
            retry_after,
        };
    }
    let outcomes = parsed
        .items
        .into_iter()
        .map(|mut entry| match entry.drain().next() {
            Some((action, item)) => classify_item(&action, item),
            None => ItemOutcome::Retry {
                status: 0,
                reason: "empty bulk item".into(),
            },
        })
        .collect();
    BulkOutcome::Items(outcomes)
}

/// Largest `_bulk` response body read for `n_ops` operations: with [`FILTER_PATH`] a genuine
/// answer is ~100 bytes per item, error reasons a few KiB. A larger one is refused unread, so
/// a hostile or broken endpoint cannot make the indexer buffer without bound.
pub fn response_cap(n_ops: usize) -> u64 {
    1024 * 1024 + 16 * 1024 * n_ops as u64
}

/// Longest error reason kept from a response (it goes to logs and dead-letter records).
const MAX_REASON: usize = 2048;

fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

fn classify_item(action: &str, item: Item) -> ItemOutcome {
    let status = item.status;
    let Some(error) = item.error else {
        return match status {
            200..=299 => ItemOutcome::Done,
            // Deleting a document that is not there leaves the index as wanted.
            404 if action == "delete" => ItemOutcome::Done,
            409 => ItemOutcome::Stale,
            429 | 500..=599 => ItemOutcome::Retry {
                status,
                reason: format!("status {status}"),
            },
            _ => ItemOutcome::DeadLetter {
                status,
                reason: format!("status {status} without error details"),
            },
        };
    };
    let kind = error
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("unknown")
        .to_string();
    let reason = bounded(match error.get("reason").and_then(|r| r.as_str()) {
        Some(r) => format!("{kind}: {r}"),
        None => kind.clone(),
    });
    match (status, kind.as_str()) {
        (409, _) | (_, "version_conflict_engine_exception") => ItemOutcome::Stale,
        (404, "index_not_found_exception") => ItemOutcome::Fatal { status, reason },
        (404, _) if action == "delete" => ItemOutcome::Done,
        (429, _) | (500..=599, _) => ItemOutcome::Retry { status, reason },
        // A write block (disk flood stage, read-only index) is lifted by an operator: wait.
        (403, "cluster_block_exception") => ItemOutcome::Retry { status, reason },
        (401 | 403, _) => ItemOutcome::Fatal { status, reason },
        _ => ItemOutcome::DeadLetter { status, reason },
    }
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::RowOp;
    use crate::position::Version;
    use std::sync::Arc;

    fn op(id: &str, action: DocAction) -> DocOp {
        DocOp {
            index: Arc::from("orders"),
            id: id.into(),
            version: Version(42),
            action,
            table: Arc::from("shop.orders"),
            op: RowOp::Insert,
        }
    }

    #[test]
    fn encodes_ndjson_with_external_versions() {
        let mut buf = BytesMut::new();
        encode(&mut buf, &op("1", DocAction::Index(r#"{"a":"张三"}"#.into())));
        encode(&mut buf, &op("a\"b", DocAction::Delete));
        let text = std::str::from_utf8(&buf).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 3);
        assert!(text.ends_with('\n'));
        let a: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(a["index"]["_id"], "1");
        assert_eq!(a["index"]["version"], 42);
        assert_eq!(a["index"]["version_type"], "external_gte");
        assert_eq!(lines[1], r#"{"a":"张三"}"#);
        let d: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(d["delete"]["_id"], "a\"b");
        assert!(
            encoded_len(&op("1", DocAction::Index(r#"{"a":"张三"}"#.into()))) >= lines[0].len() + lines[1].len() + 2
        );
    }

    // Captured from osmem-server 0.1.6 with the filter_path above: a mix of success, a stale
    // external version, a strict-mapping rejection and a delete of a missing document.
    const MIXED: &str = r#"{"errors":true,"items":[{"index":{"_id":"1","status":201}},{"index":{"_id":"2","error":{"index":"t1","index_uuid":"_na_","reason":"[2]: version conflict, current version [9] is higher than the one provided [5]","shard":"0","type":"version_conflict_engine_exception"},"status":409}},{"index":{"_id":"3","error":{"reason":"mapping set to strict, dynamic introduction of [bogus] within [_doc] is not allowed","type":"strict_dynamic_mapping_exception"},"status":400}},{"delete":{"_id":"4","status":404}}],"took":1}"#;

    // Captured likewise after `index.blocks.read_only_allow_delete: true` (what Elasticsearch 8
    // does at the disk flood stage): every item 429 cluster_block_exception.
    const BLOCKED: &str = r#"{"errors":true,"items":[{"index":{"_id":"1","error":{"reason":"index [t1] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];","type":"cluster_block_exception"},"status":429}},{"index":{"_id":"2","error":{"reason":"index [t1] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];","type":"cluster_block_exception"},"status":429}},{"index":{"_id":"3","error":{"reason":"index [t1] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];","type":"cluster_block_exception"},"status":429}},{"delete":{"_id":"4","error":{"reason":"index [t1] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];","type":"cluster_block_exception"},"status":429}}],"took":1}"#;

    // Captured likewise with `require_alias=true` after the alias was removed.
    const INDEX_GONE: &str = r#"{"errors":true,"items":[{"index":{"_id":"1","error":{"index":"nope_v1","index_uuid":"_na_","reason":"no such index [nope_v1] and [require_alias] request flag is [true] and [nope_v1] is not an alias","type":"index_not_found_exception"},"status":404}}],"took":1}"#;

    // The thread-pool rejection shape documented for Elasticsearch (not producible by osmem).
    const REJECTED: &str = r#"{"errors":true,"took":0,"items":[{"index":{"_id":"9","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}}]}"#;

    #[test]
    fn classifies_mixed_items() {
        let BulkOutcome::Items(items) = classify(200, None, MIXED.as_bytes(), 4) else {
            panic!()
        };
        assert_eq!(items[0], ItemOutcome::Done);
        assert_eq!(items[1], ItemOutcome::Stale);
        assert!(
            matches!(&items[2], ItemOutcome::DeadLetter { status: 400, reason } if reason.contains("strict_dynamic_mapping_exception"))
        );
        assert_eq!(items[3], ItemOutcome::Done);
    }

    #[test]
    fn per_item_pushback_is_retried() {
        let BulkOutcome::Items(items) = classify(200, None, BLOCKED.as_bytes(), 4) else {
            panic!()
        };
        assert!(
            items
                .iter()
                .all(|i| matches!(i, ItemOutcome::Retry { status: 429, .. })),
            "{items:?}"
        );
        let BulkOutcome::Items(items) = classify(200, None, REJECTED.as_bytes(), 1) else {
            panic!()
        };
        assert!(matches!(items[0], ItemOutcome::Retry { status: 429, .. }));
    }

    #[test]
    fn missing_index_is_fatal() {
        let BulkOutcome::Items(items) = classify(200, None, INDEX_GONE.as_bytes(), 1) else {
            panic!()
        };
        assert!(matches!(items[0], ItemOutcome::Fatal { status: 404, .. }));
    }

    #[test]
    fn whole_request_statuses() {
        let body = br#"{"error":{"type":"es_rejected_execution_exception"},"status":429}"#;
        assert_eq!(
            classify(429, Some("7"), body, 3),
            BulkOutcome::RetryAll {
                reason: format!("HTTP 429: {}", std::str::from_utf8(body).unwrap()),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        for s in [502, 503, 504, 500] {
            assert!(
                matches!(
                    classify(s, None, b"<html>bad gateway</html>", 3),
                    BulkOutcome::RetryAll { .. }
                ),
                "{s}"
            );
        }
        assert_eq!(classify(413, None, b"", 3), BulkOutcome::TooLarge);
        assert!(
            matches!(classify(401, None, b"{}", 3), BulkOutcome::Fatal { reason } if reason.contains("credentials"))
        );
        assert!(matches!(classify(400, None, b"{}", 3), BulkOutcome::Fatal { .. }));
    }

    #[test]
    fn malformed_or_short_bodies_are_retried_not_dropped() {
        assert!(matches!(
            classify(200, None, b"{\"errors\":fal", 1),
            BulkOutcome::RetryAll { .. }
        ));
        assert!(matches!(
            classify(200, None, MIXED.as_bytes(), 5),
            BulkOutcome::RetryAll { .. }
        ));
        assert!(matches!(
            classify(200, None, b"{\"errors\":false}", 1),
            BulkOutcome::RetryAll { .. }
        ));
    }

    #[test]
    fn hostile_responses_are_bounded_and_never_panic() {
        // Deeply nested JSON: serde_json's recursion limit makes it unreadable, so retried.
        let deep = format!("{{\"items\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            classify(200, None, deep.as_bytes(), 1),
            BulkOutcome::RetryAll { .. }
        ));
        // Invalid UTF-8 and control characters.
        assert!(matches!(
            classify(200, Some("\u{0}"), b"\xff\xfe{\x00\x1b[31m", 1),
            BulkOutcome::RetryAll { .. }
        ));
        // A 4 MB error reason is cut to a bounded length for logs and dead letters.
        let huge = format!(
            r#"{{"items":[{{"index":{{"status":400,"error":{{"type":"mapper_parsing_exception","reason":"{}"}}}}}}]}}"#,
            "é".repeat(2 * 1024 * 1024)
        );
        match classify(200, None, huge.as_bytes(), 1) {
            BulkOutcome::Items(items) => match &items[0] {
                ItemOutcome::DeadLetter { reason, .. } => {
                    assert!(
                        reason.len() <= MAX_REASON + 4 && reason.ends_with('…'),
                        "{}",
                        reason.len()
                    )
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // The whole-request snippet is bounded too, whatever the body.
        match classify(502, None, &vec![b'x'; 10_000_000], 3) {
            BulkOutcome::RetryAll { reason, .. } => assert!(reason.len() < 400),
            other => panic!("{other:?}"),
        }
        assert_eq!(response_cap(0), 1024 * 1024);
        assert!(response_cap(2_000) < 64 * 1024 * 1024);
    }
}

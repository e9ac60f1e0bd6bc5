//! `bulk::classify` on arbitrary status, Retry-After and body: it must never panic, and an
//! `Items` answer must have exactly one outcome per operation (nothing dropped silently).
#![no_main]

use cdc_indexer::bulk::{classify, BulkOutcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: status (2 bytes), operation count (1 byte), Retry-After length (1 byte) and
    // text, then the body.
    if data.len() < 4 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 600;
    let n_ops = data[2] as usize;
    let ra_len = (data[3] as usize).min(data.len() - 4);
    let retry_after = std::str::from_utf8(&data[4..4 + ra_len]).ok();
    let body = &data[4 + ra_len..];
    if let BulkOutcome::Items(items) = classify(status, retry_after, body, n_ops) {
        assert_eq!(items.len(), n_ops, "one outcome per operation");
    }
});

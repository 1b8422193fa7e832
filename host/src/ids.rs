//! Identifiers: random UUIDs for indices and nodes, and cheap time-based ids for documents.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A URL-safe random identifier like Elasticsearch's UUIDs (22 characters).
pub fn new_uuid() -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

/// A 20-character document id: 6 bytes of milliseconds, 3 of a per-process sequence, 6 random
/// per process. Unique within a process and practically across nodes, and much cheaper than a
/// random UUID per document (no syscall), which matters for bulk ingest.
pub fn new_document_id() -> String {
    static NODE_PART: OnceLock<[u8; 6]> = OnceLock::new();
    static SEQUENCE: OnceLock<AtomicU64> = OnceLock::new();
    let node_part = NODE_PART.get_or_init(|| {
        let random = uuid::Uuid::new_v4();
        let mut part = [0u8; 6];
        part.copy_from_slice(&random.as_bytes()[..6]);
        part
    });
    let sequence = SEQUENCE
        .get_or_init(|| AtomicU64::new(u64::from(uuid::Uuid::new_v4().as_bytes()[7])))
        .fetch_add(1, Ordering::Relaxed);
    let millis = chrono::Utc::now().timestamp_millis() as u64;
    let mut bytes = [0u8; 15];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..9].copy_from_slice(&sequence.to_be_bytes()[5..]);
    bytes[9..].copy_from_slice(node_part);
    // Time first keeps ids of one node roughly in creation order.
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_are_unique_and_short() {
        let ids: std::collections::HashSet<String> =
            (0..100_000).map(|_| new_document_id()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids.iter().all(|id| id.len() == 20));
    }
}

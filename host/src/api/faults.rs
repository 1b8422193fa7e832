//! Test-only fault injection (cargo feature `fault-injection`, never in release builds):
//! `PUT /_test/faults {"blocked": ["127.0.0.1:9301", ...]}` cuts this node's transport links
//! to those peers in both directions; `{"blocked": []}` heals them.

use serde_json::json;

use super::{Reply, Request, ok};
use crate::error::{Result, illegal};

pub(super) fn get(request: &Request) -> Result<Reply> {
    let blocked: Vec<String> = request
        .node
        .cluster
        .transport
        .faults()
        .blocked()
        .iter()
        .map(ToString::to_string)
        .collect();
    ok(json!({ "blocked": blocked }))
}

pub(super) fn set(request: &Request) -> Result<Reply> {
    let body = request.json()?;
    let Some(list) = body.get("blocked").and_then(|v| v.as_array()) else {
        return Err(illegal("expected {\"blocked\": [\"ip:port\", ...]}"));
    };
    let mut peers = Vec::with_capacity(list.len());
    for entry in list {
        let text = entry.as_str().unwrap_or_default();
        let addr = text
            .parse()
            .map_err(|_| illegal(format!("[{text}] is not a transport address")))?;
        peers.push(addr);
    }
    tracing::warn!(blocked = ?peers, "fault injection: transport links cut");
    request.node.cluster.transport.faults().set_blocked(peers);
    get(request)
}

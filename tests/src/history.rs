//! A history checker for fault tests: a writer that keeps sending bulk requests while the test
//! breaks nodes and records exactly which documents the cluster acknowledged, and a check that
//! the final state holds every acknowledged document exactly once (and nothing never sent).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Node;

/// What the writer saw.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Ids the cluster acknowledged (item status 200/201).
    pub acked: BTreeSet<String>,
    /// Every id sent, acknowledged or not.
    pub attempted: BTreeSet<String>,
    /// When each bulk whose every item was acknowledged was sent, and when it returned.
    pub clean_bulks: Vec<(Instant, Instant)>,
    /// Items refused or lost with their request.
    pub failed_items: u64,
    /// How each acknowledged id was acknowledged, to explain a loss.
    pub receipts: BTreeMap<String, Receipt>,
}

/// Where and when the cluster acknowledged one document.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The node that coordinated the bulk.
    pub via: String,
    /// When the bulk was sent and when it returned, in ms since the writer started.
    pub sent_ms: u128,
    pub returned_ms: u128,
    pub seq_no: i64,
    pub primary_term: u64,
}

impl History {
    /// When the first fully acknowledged bulk sent after `moment` returned.
    pub fn first_clean_bulk_after(&self, moment: Instant) -> Option<Instant> {
        self.clean_bulks
            .iter()
            .find(|(sent, _)| *sent > moment)
            .map(|(_, returned)| *returned)
    }
}

/// A background writer. Targets can be changed while it runs (to stop sending to a node the
/// test has paused, as a client with a timeout would).
pub struct Writer {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    pub targets: Arc<Mutex<Vec<String>>>,
    /// The target of the request in flight, if any.
    sending_to: Arc<Mutex<Option<String>>>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts writing `batch`-document bulks to `index` through `targets` (base URLs), in turn.
    pub fn start(targets: Vec<String>, index: &str, batch: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let targets = Arc::new(Mutex::new(targets));
        let sending_to = Arc::new(Mutex::new(None));
        let handle = {
            let shared = Shared {
                stop: stop.clone(),
                history: history.clone(),
                targets: targets.clone(),
                sending_to: sending_to.clone(),
            };
            let index = index.to_string();
            std::thread::spawn(move || write_loop(&shared, &index, batch))
        };
        Writer {
            stop,
            history,
            targets,
            sending_to,
            handle: Some(handle),
        }
    }

    pub fn history(&self) -> History {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Stops sending to `base_url`, and waits until no request to it is in flight (so a test
    /// can then hang that node without hanging the writer).
    pub fn avoid(&self, base_url: &str) {
        if let Ok(mut targets) = self.targets.lock() {
            targets.retain(|t| t != base_url);
        }
        crate::wait_for(
            Duration::from_secs(60),
            "the writer's request to finish",
            || {
                let sending = self.sending_to.lock().ok()?.clone();
                (sending.as_deref() != Some(base_url)).then_some(())
            },
        );
    }

    pub fn include(&self, base_url: &str) {
        if let Ok(mut targets) = self.targets.lock()
            && !targets.iter().any(|t| t == base_url)
        {
            targets.push(base_url.to_string());
        }
    }

    /// Waits until a bulk sent after `moment` was fully acknowledged; returns when it returned.
    pub fn wait_for_clean_bulk_after(&self, moment: Instant, limit: Duration) -> Instant {
        crate::wait_for(limit, "a fully acknowledged bulk", || {
            self.history().first_clean_bulk_after(moment)
        })
    }

    /// Stops the writer and returns what it saw.
    pub fn finish(mut self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.history()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What the writer thread shares with the test.
struct Shared {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    targets: Arc<Mutex<Vec<String>>>,
    sending_to: Arc<Mutex<Option<String>>>,
}

fn write_loop(shared: &Shared, index: &str, batch: usize) {
    let Shared {
        stop,
        history,
        targets,
        sending_to,
    } = shared;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap_or_else(|_| reqwest::blocking::Client::new());
    let mut next_id = 0u64;
    let mut turn = 0usize;
    let begun = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let target = {
            let Ok(targets) = targets.lock() else { return };
            if targets.is_empty() {
                drop(targets);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            turn += 1;
            let target = targets[turn % targets.len()].clone();
            // Claimed while the target list is held, so `avoid` cannot miss it.
            if let Ok(mut sending) = sending_to.lock() {
                *sending = Some(target.clone());
            }
            target
        };
        let ids: Vec<String> = (0..batch)
            .map(|_| {
                next_id += 1;
                format!("w-{next_id}")
            })
            .collect();
        let mut body = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            body.extend(json!({"index": {"_id": id}}).to_string().into_bytes());
            body.push(b'\n');
            body.extend(
                json!({"seq": next_id - batch as u64 + i as u64 + 1, "body": "history"})
                    .to_string()
                    .into_bytes(),
            );
            body.push(b'\n');
        }
        if let Ok(mut h) = history.lock() {
            h.attempted.extend(ids.iter().cloned());
        }
        let sent = Instant::now();
        let answer = client
            .post(format!("{target}/{index}/_bulk"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .and_then(|response| response.json::<Value>());
        if let Ok(mut sending) = sending_to.lock() {
            *sending = None;
        }
        let Ok(mut h) = history.lock() else { return };
        match answer {
            Ok(reply) => {
                let items = reply["items"].as_array().cloned().unwrap_or_default();
                let mut clean = items.len() == ids.len();
                for (id, item) in ids.iter().zip(&items) {
                    let status = item["index"]["status"].as_u64().unwrap_or(0);
                    if status == 200 || status == 201 {
                        h.acked.insert(id.clone());
                        let receipt = Receipt {
                            via: target.clone(),
                            sent_ms: sent.duration_since(begun).as_millis(),
                            returned_ms: begun.elapsed().as_millis(),
                            seq_no: item["index"]["_seq_no"].as_i64().unwrap_or(-1),
                            primary_term: item["index"]["_primary_term"].as_u64().unwrap_or(0),
                        };
                        h.receipts.insert(id.clone(), receipt);
                    } else {
                        clean = false;
                        h.failed_items += 1;
                    }
                }
                if clean {
                    h.clean_bulks.push((sent, Instant::now()));
                }
            }
            Err(_) => {
                h.failed_items += ids.len() as u64;
                drop(h);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Checks the final state through `node`: every acknowledged id is present, no id is present
/// twice, and nothing is present that was never sent.
pub fn check(node: &Node, index: &str, history: &History) -> Result<(), String> {
    let refreshed = node.post(&format!("/{index}/_refresh"), &json!({}));
    if refreshed.status != 200 {
        return Err(format!("refresh failed: {:?}", refreshed.body));
    }
    let mut found = BTreeSet::new();
    let attempted: Vec<&String> = history.attempted.iter().collect();
    for chunk in attempted.chunks(1000) {
        let started = Instant::now();
        let reply = node.post(
            &format!("/{index}/_mget?_source=false"),
            &json!({ "ids": chunk }),
        );
        let docs = reply.body["docs"].as_array().ok_or_else(|| {
            format!(
                "_mget failed after {:?} (status {}, node answering: {}): {:?}",
                started.elapsed(),
                reply.status,
                node.get("/").status == 200,
                reply.body
            )
        })?;
        for doc in docs {
            if doc.get("error").is_some() {
                return Err(format!("_mget item failed: {doc}"));
            }
            if doc["found"] == true
                && let Some(id) = doc["_id"].as_str()
            {
                found.insert(id.to_string());
            }
        }
    }
    let lost: Vec<&String> = history.acked.difference(&found).collect();
    if !lost.is_empty() {
        return Err(explain_loss(node, index, history, &lost));
    }
    // A copy that started moments ago (a relocation) may not have refreshed yet: counts
    // converge within a refresh interval, so the comparison is retried briefly.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        node.post(&format!("/{index}/_refresh"), &json!({}));
        let count = node.get(&format!("/{index}/_count"));
        let total = count.body["count"]
            .as_u64()
            .ok_or_else(|| format!("_count failed: {:?}", count.body))?;
        let complete = count.body["_shards"]["failed"] == 0;
        if complete && total == found.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{total} documents counted (shards: {}) but {} distinct ids found: a document is duplicated or foreign",
                count.body["_shards"],
                found.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// A loss report that helps find its cause: how the first missing documents were acknowledged
/// (in the order they were sent) and where the shards' copies are now.
fn explain_loss(node: &Node, index: &str, history: &History, lost: &[&String]) -> String {
    let mut receipts: Vec<(&String, Option<&Receipt>)> = lost
        .iter()
        .map(|id| (*id, history.receipts.get(*id)))
        .collect();
    receipts.sort_by_key(|(_, receipt)| receipt.map(|r| r.sent_ms));
    let mut report = format!(
        "{} acknowledged documents are missing; the first sent:\n",
        lost.len()
    );
    for (id, receipt) in receipts.iter().take(12) {
        report.push_str(&format!("  {id}: {receipt:?}\n"));
    }
    report.push_str("shards now:\n");
    let shards = node.get(&format!("/_cat/shards/{index}?format=json"));
    for row in shards.body.as_array().into_iter().flatten() {
        report.push_str(&format!("  {row}\n"));
    }
    report
}

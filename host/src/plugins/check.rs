//! The conformance kit behind `shoal plugin check FILE.wasm`: loads a component the way a node
//! would, detects its kind, runs that kind's contract tests (including invalid inputs) and
//! returns a report a plugin author can act on.

use std::time::{Duration, Instant};

use super::isolation::{self, Admission, Completion, Progress, QueryProfile, Verdict};
use super::pruning::{PruneCandidate, PruneQuery, ShardTimeStats, select_shards};
use super::switchover::{self, NodeHealth, NodeState};
use super::{InstallRequest, LimitsOverride, PluginHost, PluginKind};

/// One contract test's outcome.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Everything `shoal plugin check` prints.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub file: String,
    pub size_bytes: usize,
    pub kind: Option<PluginKind>,
    pub sha256: Option<String>,
    pub compile: Duration,
    pub load_error: Option<String>,
    pub results: Vec<CheckResult>,
    /// Contract runs redone because a call missed its deadline.
    pub deadline_reruns: usize,
}

/// The results of one kind's contract tests, in the order they ran.
#[derive(Default)]
struct Contract(Vec<CheckResult>);

impl Contract {
    fn record(&mut self, name: &'static str, outcome: Result<(), String>) {
        self.0.push(CheckResult {
            name,
            passed: outcome.is_ok(),
            detail: outcome.err().unwrap_or_default(),
        });
    }
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.load_error.is_none()
            && !self.results.is_empty()
            && self.results.iter().all(|r| r.passed)
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = format!("plugin check: {}\n", self.file);
        out.push_str(&format!("  size:    {} bytes\n", self.size_bytes));
        if let Some(sha256) = &self.sha256 {
            out.push_str(&format!("  sha256:  {sha256}\n"));
        }
        match (&self.kind, &self.load_error) {
            (_, Some(error)) => out.push_str(&format!(
                "  FAIL  loads as a shoal:plugin@1 component: {error}\n"
            )),
            (Some(kind), None) => {
                out.push_str(&format!(
                    "  kind:    {kind:?} (compiled in {} ms)\n",
                    self.compile.as_millis()
                ));
            }
            (None, None) => {}
        }
        if self.deadline_reruns > 0 {
            out.push_str(&format!(
                "  note:    reran {} time(s) after a call missed its deadline; is the machine busy?\n",
                self.deadline_reruns
            ));
        }
        for result in &self.results {
            let verdict = if result.passed { "PASS" } else { "FAIL" };
            out.push_str(&format!("  {verdict}  {}", result.name));
            if !result.detail.is_empty() {
                out.push_str(&format!(": {}", result.detail));
            }
            out.push('\n');
        }
        let failed = self.results.iter().filter(|r| !r.passed).count()
            + usize::from(self.load_error.is_some());
        if self.passed() {
            out.push_str(&format!("result: PASS ({} checks)\n", self.results.len()));
        } else {
            out.push_str(&format!("result: FAIL ({failed} failed)\n"));
        }
        out
    }
}

/// Runs the kit on a component's bytes.
pub fn check(file: &str, bytes: &[u8]) -> CheckReport {
    let mut report = CheckReport {
        file: file.to_string(),
        size_bytes: bytes.len(),
        kind: None,
        sha256: None,
        compile: Duration::ZERO,
        load_error: None,
        results: Vec::new(),
        deadline_reruns: 0,
    };
    let host = match PluginHost::new(None) {
        Ok(host) => host,
        Err(err) => {
            report.load_error = Some(err.to_string());
            return report;
        }
    };
    let started = Instant::now();
    let name = std::path::Path::new(file)
        .file_stem()
        .map(|stem| stem.to_string_lossy().to_string())
        .unwrap_or_else(|| "plugin".into());
    let install = InstallRequest {
        name: &name,
        version: "0.0.0",
        bytes,
        shipped: false,
        expected: None,
        limits: LimitsOverride::default(),
    };
    let plugin = match host.install(install) {
        Ok(plugin) => plugin,
        Err(err) => {
            report.load_error = Some(err.to_string());
            return report;
        }
    };
    report.compile = started.elapsed();
    report.kind = Some(plugin.kind);
    report.sha256 = plugin.describe()["sha256"].as_str().map(str::to_string);
    // A policy's deadline is a few milliseconds of wall clock, which a busy machine can steal
    // from a fast plugin; a plugin that is really too slow misses it on every attempt.
    for attempt in 1..=DEADLINE_ATTEMPTS {
        report.deadline_reruns = attempt - 1;
        report.results = match plugin.kind {
            PluginKind::Pruning => pruning_contract(&plugin),
            PluginKind::QueryIsolation => query_isolation_contract(&plugin),
            PluginKind::Switchover => switchover_contract(&plugin),
            PluginKind::Repository => repository_contract(plugin.clone()),
        };
        let missed = report
            .results
            .iter()
            .any(|result| result.detail.contains(DEADLINE_MISSED));
        if !missed || plugin.kind == PluginKind::Repository {
            break;
        }
    }
    report
}

/// How often the contract runs while a call misses its deadline.
const DEADLINE_ATTEMPTS: usize = 3;
/// What a deadline miss says (`PluginError::Deadline`).
const DEADLINE_MISSED: &str = "ms deadline";

/// Shard `shard` of index `logs-{shard}`.
fn shard(shard: u32, min: Option<i64>, max: Option<i64>) -> PruneCandidate {
    PruneCandidate {
        index: shard,
        shard,
        stats: ShardTimeStats {
            doc_count: 100,
            min,
            max,
        },
    }
}

fn pruning_contract(plugin: &super::Plugin) -> Vec<CheckResult> {
    let mut report = Contract::default();
    let shards = vec![
        shard(0, Some(0), Some(99)),
        shard(1, Some(100), Some(199)),
        shard(2, Some(200), Some(299)),
    ];
    let ask = |range: (Option<i64>, Option<i64>), candidates: &[PruneCandidate]| {
        let names: Vec<String> = (0..candidates.len()).map(|i| format!("logs-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let query = PruneQuery {
            index_pattern: "logs-*",
            timestamp_field: "@timestamp",
            range,
        };
        select_shards(plugin, query, &names, candidates).map_err(|err| err.to_string())
    };

    let first = ask((Some(120), Some(180)), &shards);
    report.record(
        "answers a well-formed request within its deadline",
        first.as_ref().map(|_| ()).map_err(Clone::clone),
    );
    report.record(
        "keeps every shard that can match (pruning must never change results)",
        first.clone().and_then(|kept| {
            if kept.contains(&1) {
                Ok(())
            } else {
                Err(format!(
                    "dropped shard 1 (100..199) for range 120..180; kept {kept:?}"
                ))
            }
        }),
    );
    let boundaries = ask((Some(99), Some(200)), &shards);
    report.record(
        "keeps shards that touch the range at its bounds",
        boundaries.and_then(|kept| {
            if kept == vec![0, 1, 2] {
                Ok(())
            } else {
                Err(format!(
                    "range 99..200 touches all three shards; kept {kept:?}"
                ))
            }
        }),
    );
    let open = ask((None, None), &shards);
    report.record(
        "keeps every shard for an unbounded range",
        open.and_then(|kept| {
            if kept.len() == 3 {
                Ok(())
            } else {
                Err(format!("kept {kept:?}"))
            }
        }),
    );
    let again = ask((Some(120), Some(180)), &shards);
    report.record(
        "is deterministic",
        match (&first, &again) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (a, b) => Err(format!("first {a:?}, then {b:?}")),
        },
    );
    report.record(
        "accepts an empty shard list",
        ask((Some(0), Some(10)), &[]).map(|_| ()),
    );
    let inverted = ask((Some(500), Some(10)), &shards);
    report.record(
        "handles an inverted (empty) range without trapping",
        match inverted {
            Ok(_) => Ok(()),
            Err(message) if message.contains("returned an error") => Ok(()),
            Err(message) => Err(message),
        },
    );
    let missing = vec![
        shard(0, None, None),
        shard(1, Some(i64::MIN), Some(i64::MAX)),
    ];
    report.record(
        "handles shards without timestamps and extreme bounds",
        ask((Some(0), Some(1)), &missing).and_then(|kept| {
            if kept.contains(&1) {
                Ok(())
            } else {
                Err(format!(
                    "dropped the shard spanning all time; kept {kept:?}"
                ))
            }
        }),
    );
    // A thousand shards is a large search; the deadline leaves room for a busy machine.
    let many: Vec<PruneCandidate> = (0..1_000)
        .map(|i| shard(i, Some(i64::from(i) * 10), Some(i64::from(i) * 10 + 9)))
        .collect();
    report.record(
        "decides over 1,000 shards within its deadline",
        ask((Some(5_000), Some(5_100)), &many).map(|_| ()),
    );
    report.0
}

fn profile(estimated_cost: f64, node_load: f64) -> QueryProfile {
    QueryProfile {
        index: "logs-*".into(),
        shard_count: 30,
        fingerprint: "bool(filter(range(@timestamp)))".into(),
        estimated_cost,
        node_load,
    }
}

fn query_isolation_contract(plugin: &super::Plugin) -> Vec<CheckResult> {
    let mut report = Contract::default();
    let ask = |query: &QueryProfile| isolation::classify(plugin, query).map_err(|e| e.to_string());
    let light = ask(&profile(10.0, 0.1));
    report.record(
        "admits a light query on an idle node into a pool",
        match &light {
            Ok(Admission::Pool(_)) => Ok(()),
            Ok(Admission::Reject(reason)) => Err(format!("rejected it: {reason}")),
            Err(err) => Err(err.clone()),
        },
    );
    report.record(
        "classifies an expensive query on a busy node (a pool, or a rejection with a reason)",
        ask(&profile(1e12, 0.9)).map(|_| ()),
    );
    report.record(
        "is deterministic",
        match (&light, &ask(&profile(10.0, 0.1))) {
            (Ok(a), Ok(b)) if format!("{a:?}") == format!("{b:?}") => Ok(()),
            (a, b) => Err(format!("first {a:?}, then {b:?}")),
        },
    );
    let extremes = [
        profile(f64::NAN, f64::NAN),
        profile(f64::INFINITY, f64::INFINITY),
        profile(-1.0, -1.0),
        QueryProfile {
            index: String::new(),
            shard_count: 0,
            fingerprint: "x".repeat(64 * 1024),
            estimated_cost: 0.0,
            node_load: 0.0,
        },
    ];
    report.record(
        "handles NaN, infinite, negative and empty inputs without trapping",
        extremes
            .iter()
            .map(|query| match ask(query) {
                // Refusing nonsense with its own error is fine; trapping or a bad answer is not.
                Ok(_) => Ok(()),
                Err(message) if message.contains("returned an error: invalid input") => Ok(()),
                Err(message) => Err(message),
            })
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ()),
    );
    let fresh = Progress {
        elapsed_ms: 0,
        docs_visited: 0,
        memory_bytes: 0,
    };
    report.record(
        "lets a query that has just started go on",
        match isolation::on_progress(plugin, "bool(filter(range(@timestamp)))", fresh) {
            Ok(Verdict::Proceed) => Ok(()),
            Ok(Verdict::Cancel) => Err("cancelled a query at 0 ms".into()),
            Err(err) => Err(err.to_string()),
        },
    );
    let runaway = Progress {
        elapsed_ms: u64::MAX,
        docs_visited: u64::MAX,
        memory_bytes: u64::MAX,
    };
    report.record(
        "answers progress of any size, for a fingerprint it never classified",
        isolation::on_progress(plugin, "never-seen", runaway)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    report.record(
        "accepts completion stats, failed or not",
        [false, true]
            .into_iter()
            .map(|failed| {
                let stats = Completion {
                    fingerprint: "bool(filter(range(@timestamp)))".into(),
                    elapsed_ms: 12,
                    docs_visited: 3_000,
                    failed,
                };
                isolation::on_complete(plugin, &stats).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ()),
    );
    report.0
}

fn node(name: &str, ewma_latency_ms: f64, error_rate: f64, last_seen_ms: u64) -> NodeHealth {
    NodeHealth {
        node: name.into(),
        ewma_latency_ms,
        p99_latency_ms: ewma_latency_ms * 3.0,
        error_rate,
        in_flight: 2,
        queue_depth: 0,
        last_seen_ms,
    }
}

fn switchover_contract(plugin: &super::Plugin) -> Vec<CheckResult> {
    let mut report = Contract::default();
    let nodes = [
        node("node-a", 2.0, 0.0, 10),
        node("node-b", 40.0, 0.0, 20),
        node("node-c", 2.0, 0.0, 60_000),
    ];
    let judged = switchover::judge(plugin, &nodes).map_err(|e| e.to_string());
    report.record(
        "judges every node it is asked about, in order",
        judged.as_ref().map(|_| ()).map_err(Clone::clone),
    );
    report.record(
        "does not call a node silent for a minute healthy",
        judged.and_then(|states| match states.get(2) {
            Some(NodeState::Healthy) => Err(format!("judged {states:?}")),
            _ => Ok(()),
        }),
    );
    let ranked = switchover::rank_copies(plugin, "logs[0]", &nodes).map_err(|e| e.to_string());
    report.record(
        "ranks only copies it was offered, each at most once",
        ranked.as_ref().map(|_| ()).map_err(Clone::clone),
    );
    report.record(
        "keeps a healthy copy and ranks it before a silent one",
        ranked.clone().and_then(|routing| {
            let at = |copy: u32| routing.order.iter().position(|&c| c == copy);
            match (at(0), at(2)) {
                (Some(healthy), Some(silent)) if healthy < silent => Ok(()),
                (Some(_), None) => Ok(()),
                _ => Err(format!("order {:?}", routing.order)),
            }
        }),
    );
    report.record(
        "is deterministic",
        match (
            &ranked,
            &switchover::rank_copies(plugin, "logs[0]", &nodes).map_err(|e| e.to_string()),
        ) {
            (Ok(a), Ok(b)) if a.order == b.order && a.hedge_after_ms == b.hedge_after_ms => Ok(()),
            (a, b) => Err(format!("first {a:?}, then {b:?}")),
        },
    );
    report.record(
        "handles no nodes and no copies",
        switchover::judge(plugin, &[])
            .and_then(|_| switchover::rank_copies(plugin, "logs[0]", &[]))
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    let odd = [
        node("", f64::NAN, f64::NAN, u64::MAX),
        node("node-inf", f64::INFINITY, f64::INFINITY, 0),
        node("node-neg", -1.0, -1.0, 0),
    ];
    report.record(
        "handles NaN, infinite and negative metrics without trapping",
        switchover::judge(plugin, &odd)
            .and_then(|_| switchover::rank_copies(plugin, "logs[0]", &odd))
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    let many: Vec<NodeHealth> = (0..1_000)
        .map(|i| node(&format!("node-{i}"), f64::from(i % 50), 0.0, 5))
        .collect();
    report.record(
        "judges and ranks 1,000 nodes within its deadline",
        switchover::judge(plugin, &many)
            .and_then(|_| switchover::rank_copies(plugin, "logs[0]", &many))
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    report.0
}

/// The repository contract, against a scratch directory granted as a node would grant it.
fn repository_contract(plugin: std::sync::Arc<super::Plugin>) -> Vec<CheckResult> {
    use super::grants::{Grants, grant_repository_dir};
    use super::repository::{RepositoryError, RepositorySession};
    use sha2::{Digest, Sha256};

    let mut report = Contract::default();
    let scratch =
        std::env::temp_dir().join(format!("shoal-plugin-check-{}", crate::ids::new_uuid()));
    let granted = std::fs::create_dir_all(&scratch)
        .map_err(|err| err.to_string())
        .and_then(|()| {
            grant_repository_dir("repo", std::slice::from_ref(&scratch), false)
                .map_err(|err| err.to_string())
        });
    let granted = match granted {
        Ok(granted) => granted,
        Err(err) => {
            report.record("a scratch repository directory can be granted", Err(err));
            return report.0;
        }
    };
    let mut repo = RepositorySession::new(plugin, Grants::directory(granted));
    let sha = |data: &[u8]| -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let fail = |err: RepositoryError| err.to_string();

    report.record(
        "verify succeeds on a writable directory",
        repo.verify().map_err(fail),
    );
    report.record(
        "a blob put whole reads back, exists, and reads by range",
        (|| {
            repo.put("check/a", b"0123456789").map_err(fail)?;
            let whole = repo.get("check/a", 0, None).map_err(fail)?;
            let range = repo.get("check/a", 3, Some(4)).map_err(fail)?;
            let exists = repo.exists("check/a").map_err(fail)?;
            match (whole.as_slice(), range.as_slice(), exists) {
                (b"0123456789", b"3456", true) => Ok(()),
                _ => Err(format!("read {whole:?}, range {range:?}, exists {exists}")),
            }
        })(),
    );
    let big: Vec<u8> = (0..(super::repository::CHUNK_BYTES * 2 + 12_345))
        .map(|i| (i % 253) as u8)
        .collect();
    report.record(
        "a streamed blob over several chunks reads back identical",
        (|| {
            repo.put_streamed("check/big", big.len() as u64, &sha(&big), &big[..])
                .map_err(fail)?;
            let read = repo.get("check/big", 0, None).map_err(fail)?;
            if read == big {
                Ok(())
            } else {
                Err(format!(
                    "read back {} bytes, wrote {}",
                    read.len(),
                    big.len()
                ))
            }
        })(),
    );
    report.record(
        "a wrong checksum is refused as invalid and leaves no blob",
        match repo.put_streamed("check/bad", 3, &sha(b"xyz"), &b"abc"[..]) {
            Err(RepositoryError::Invalid { .. }) => match repo.exists("check/bad") {
                Ok(false) => Ok(()),
                other => Err(format!("after a refused upload, exists answered {other:?}")),
            },
            other => Err(format!("expected an invalid error, got {other:?}")),
        },
    );
    report.record(
        "a wrong length is refused as invalid",
        match repo.put_streamed("check/short", 10, &sha(b"abc"), &b"abc"[..]) {
            Err(RepositoryError::Invalid { .. }) => Ok(()),
            other => Err(format!("expected an invalid error, got {other:?}")),
        },
    );
    report.record(
        "listing by prefix returns exactly the complete blobs, with sizes, in name order",
        (|| {
            let listed: Vec<(String, u64)> = repo
                .list("check/")
                .map_err(fail)?
                .into_iter()
                .map(|blob| (blob.name, blob.size))
                .collect();
            let expected = vec![
                ("check/a".to_string(), 10),
                ("check/big".to_string(), big.len() as u64),
            ];
            if listed == expected {
                Ok(())
            } else {
                Err(format!("listed {listed:?}"))
            }
        })(),
    );
    report.record(
        "a missing blob reads as not-found",
        match repo.get("check/missing", 0, None) {
            Err(RepositoryError::NotFound { .. }) => Ok(()),
            other => Err(format!(
                "expected not-found, got {:?}",
                other.map(|data| data.len())
            )),
        },
    );
    report.record(
        "names escaping the repository are refused as invalid",
        ["../escape", "/etc/passwd", ""]
            .iter()
            .map(|name| match repo.get(name, 0, None) {
                Err(RepositoryError::Invalid { .. }) => Ok(()),
                other => Err(format!(
                    "[{name}]: expected an invalid error, got {:?}",
                    other.map(|d| d.len())
                )),
            })
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ()),
    );
    report.record(
        "delete removes a blob, and deleting a missing blob succeeds",
        (|| {
            repo.delete("check/a").map_err(fail)?;
            repo.delete("check/a").map_err(fail)?;
            match repo.exists("check/a").map_err(fail)? {
                false => Ok(()),
                true => Err("the blob still exists".into()),
            }
        })(),
    );
    drop(repo);
    let _ = std::fs::remove_dir_all(&scratch);
    report.0
}

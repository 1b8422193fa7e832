//! The master's second opinion before it fails the copies of a node gossip declared down.
//!
//! Gossip can declare a healthy node down: a node cut off from the others declares them all
//! down, and when the network heals it spreads that verdict, so each of them rejoins under a
//! new generation. Failing their copies in that moment would promote replicas and rebuild
//! copies for nothing, and a shard whose only in-sync copy sat there would go without a
//! primary for seconds. So the master asks such a node itself, once, with a short timeout, and
//! leaves its copies alone while the node answers and rejoins. A node whose process is known
//! to be gone (its port refused) is not asked, a question to one whose port refuses meanwhile
//! ends at once, and a node that does not answer is failed as before: a hung or cut-off node
//! costs at most [`ASK_TIMEOUT`] more.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cluster::node_meta::NodeMeta;

/// How long the master waits for a node gossip lost to answer.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(300);

/// How long a node that answered may take to rejoin gossip before its copies are failed.
pub const REJOIN_GRACE: Duration = Duration::from_secs(5);

/// How long a node that did not answer counts as gone before, still holding copies and still
/// lost to gossip, it is asked again (a node back from a cut may offer its copy to the master
/// before gossip has found it).
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    Asking,
    Answered(Instant),
    Silent(Instant),
}

/// What the master learned of the nodes gossip lost, until they are live again.
#[derive(Debug, Default)]
pub struct DownChecks {
    /// The last life of every node seen live: where to ask it, and which life was lost.
    last_seen: HashMap<String, NodeMeta>,
    checks: HashMap<String, Check>,
}

impl DownChecks {
    /// Takes in the live view and returns the nodes to ask: those that hold a copy
    /// (`holders`), are no longer live and were not asked since they were last live.
    /// `crashed` tells a life whose process is certainly gone.
    pub fn update<'a>(
        &mut self,
        live: &[NodeMeta],
        holders: impl IntoIterator<Item = &'a str>,
        crashed: impl Fn(&NodeMeta) -> bool,
        now: Instant,
    ) -> Vec<NodeMeta> {
        for meta in live {
            self.checks.remove(&meta.node_id);
            self.last_seen.insert(meta.node_id.clone(), meta.clone());
        }
        let mut to_ask = Vec::new();
        for node_id in holders {
            let settled = match self.checks.get(node_id) {
                None => false,
                Some(Check::Silent(at)) => now.duration_since(*at) < ASK_AGAIN_AFTER,
                Some(Check::Asking | Check::Answered(_)) => true,
            };
            if settled || live.iter().any(|m| m.node_id == node_id) {
                continue;
            }
            let Some(meta) = self.last_seen.get(node_id) else {
                continue;
            };
            if crashed(meta) {
                self.checks.insert(node_id.to_string(), Check::Silent(now));
            } else {
                self.checks.insert(node_id.to_string(), Check::Asking);
                to_ask.push(meta.clone());
            }
        }
        to_ask
    }

    /// Records the answer (or the silence) of a node that was asked.
    pub fn record(&mut self, node_id: &str, answered: bool, now: Instant) {
        if let Some(check) = self.checks.get_mut(node_id)
            && *check == Check::Asking
        {
            *check = if answered {
                Check::Answered(now)
            } else {
                Check::Silent(now)
            };
        }
    }

    /// Whether the master should keep `node_id`'s copies although gossip lost the node: it is
    /// being asked, or it answered a moment ago.
    pub fn vouches_for(&self, node_id: &str, now: Instant) -> bool {
        match self.checks.get(node_id) {
            Some(Check::Asking) => true,
            Some(Check::Answered(at)) => now.duration_since(*at) < REJOIN_GRACE,
            Some(Check::Silent(_)) | None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(node_id: &str, generation: u64) -> NodeMeta {
        NodeMeta {
            node_id: node_id.into(),
            name: node_id.into(),
            zone: None,
            roles: Vec::new(),
            http_addr: "127.0.0.1:9200".parse().expect("address"),
            transport_addr: "127.0.0.1:9300".parse().expect("address"),
            version: String::new(),
            generation,
            revision: 0,
        }
    }

    #[test]
    fn a_lost_node_is_asked_once_and_kept_only_while_it_answers() {
        let mut checks = DownChecks::default();
        let never_crashed = |_: &NodeMeta| false;
        let now = Instant::now();
        let both = [meta("a", 1), meta("b", 1)];
        assert!(
            checks
                .update(&both, ["a", "b"], never_crashed, now)
                .is_empty()
        );
        let asked = checks.update(&[meta("a", 1)], ["a", "b"], never_crashed, now);
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].node_id, "b");
        assert!(checks.vouches_for("b", now), "kept while being asked");
        let later = now + ASK_AGAIN_AFTER * 2;
        assert!(
            checks
                .update(&[meta("a", 1)], ["a", "b"], never_crashed, later)
                .is_empty(),
            "asked once while the question is open"
        );
        checks.record("b", true, now);
        assert!(checks.vouches_for("b", now + Duration::from_secs(1)));
        assert!(
            !checks.vouches_for("b", now + REJOIN_GRACE),
            "an answer does not keep a node gossip never finds again"
        );

        // Back under a new generation, then lost again: asked again, and failed when silent.
        checks.update(
            &[meta("a", 1), meta("b", 2)],
            ["a", "b"],
            never_crashed,
            now,
        );
        assert!(!checks.vouches_for("b", now));
        let asked = checks.update(&[meta("a", 1)], ["a", "b"], never_crashed, now);
        assert_eq!(asked.len(), 1);
        checks.record("b", false, now);
        assert!(!checks.vouches_for("b", now));
        assert!(
            checks
                .update(&[meta("a", 1)], ["a", "b"], never_crashed, now)
                .is_empty(),
            "a silent node is not asked again at once"
        );
        let asked = checks.update(&[meta("a", 1)], ["a", "b"], never_crashed, later);
        assert_eq!(
            asked.len(),
            1,
            "a silent node still holding copies is asked again a moment later"
        );
        assert!(checks.vouches_for("b", later));
    }

    #[test]
    fn a_crashed_or_unknown_node_is_not_asked() {
        let mut checks = DownChecks::default();
        let now = Instant::now();
        checks.update(&[meta("a", 1), meta("b", 7)], ["a", "b"], |_| false, now);
        let crashed = |m: &NodeMeta| m.node_id == "b" && m.generation == 7;
        let asked = checks.update(&[meta("a", 1)], ["a", "b", "c"], crashed, now);
        assert!(asked.is_empty(), "{asked:?}");
        assert!(!checks.vouches_for("b", now));
        assert!(!checks.vouches_for("c", now));
        checks.record("b", true, now);
        assert!(
            !checks.vouches_for("b", now),
            "an answer nobody asked for counts for nothing"
        );
    }
}

//! Which master-eligible nodes vote on the cluster state. An odd number (a fourth or sixth
//! voter adds no failure tolerance, only latency), at most five, spread over zones round-robin,
//! so that losing one zone, or any minority of the voters, keeps a quorum whenever the nodes
//! allow it. The whole set changes in one joint-consensus step, never through an even set.
//! As in Elasticsearch, dead voters are removed only while three voters remain: with three
//! voters and one dead, the other two plus the dead one's return still make a quorum.

use std::collections::{BTreeMap, BTreeSet};

/// More voters make every commit wait for more acknowledgements; five survive two failures.
pub const MAX_VOTERS: usize = 5;

/// A live master-eligible node that already receives the cluster state.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: u64,
    /// `None` counts as a zone of its own.
    pub zone: Option<String>,
}

/// The voters the master should set, given the current voters and the live candidates. The
/// master always votes (it proposes the change); current voters are kept where the spread
/// allows, so a healthy configuration is left alone.
pub fn target_voters(
    leader: u64,
    current: &BTreeSet<u64>,
    candidates: &[Candidate],
) -> BTreeSet<u64> {
    let mut by_zone: BTreeMap<Option<&str>, Vec<u64>> = BTreeMap::new();
    let mut leader_zone = None;
    for candidate in candidates {
        let zone = candidate.zone.as_deref();
        if candidate.id == leader {
            leader_zone = Some(zone);
        }
        by_zone.entry(zone).or_default().push(candidate.id);
    }
    let Some(leader_zone) = leader_zone else {
        // The master cannot see itself among the candidates: change nothing.
        return current.clone();
    };
    let eligible = candidates.len();
    if eligible < 3 && current.len() >= 3 {
        return current.clone();
    }
    let size = match eligible.min(MAX_VOTERS) {
        0 => 1,
        n if n % 2 == 0 => n - 1,
        n => n,
    };
    // Within a zone: the master, then current voters, then by id (stable choices).
    for ids in by_zone.values_mut() {
        ids.sort_by_key(|id| (*id != leader, !current.contains(id), *id));
    }
    // The master's zone first, then the zones with the most candidates: with five voters over
    // zones of 2, 2 and 1 candidates, each zone gets its share.
    let mut zones: Vec<(Option<&str>, Vec<u64>)> = by_zone.into_iter().collect();
    zones.sort_by_key(|(zone, ids)| (*zone != leader_zone, std::cmp::Reverse(ids.len())));
    let mut chosen = BTreeSet::new();
    let mut round = 0;
    while chosen.len() < size {
        let before = chosen.len();
        for (_, ids) in &zones {
            if chosen.len() == size {
                break;
            }
            if let Some(&id) = ids.get(round) {
                chosen.insert(id);
            }
        }
        if chosen.len() == before {
            break;
        }
        round += 1;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(zones: &[&str]) -> Vec<Candidate> {
        zones
            .iter()
            .enumerate()
            .map(|(id, zone)| Candidate {
                id: id as u64,
                zone: (!zone.is_empty()).then(|| zone.to_string()),
            })
            .collect()
    }

    fn voters(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn per_zone(chosen: &BTreeSet<u64>, zones: &[&str]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for &id in chosen {
            *counts.entry(zones[id as usize].to_string()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn the_voter_count_is_odd_and_capped() {
        for (nodes, expected) in [(1, 1), (2, 1), (3, 3), (4, 3), (5, 5), (6, 5), (9, 5)] {
            let zones = vec![""; nodes];
            let chosen = target_voters(0, &voters(&[0]), &candidates(&zones));
            assert_eq!(chosen.len(), expected, "{nodes} nodes");
            assert!(chosen.contains(&0), "the master votes");
        }
    }

    #[test]
    fn voters_spread_over_zones_so_that_no_zone_holds_a_majority() {
        // Two zones of two data nodes and a master-only tiebreaker in a third zone.
        let zones = ["a", "a", "b", "b", "c"];
        let chosen = target_voters(0, &voters(&[0]), &candidates(&zones));
        assert_eq!(chosen.len(), 5);
        // Four nodes up (the tiebreaker not yet): three voters, never four.
        let chosen = target_voters(0, &voters(&[0, 1]), &candidates(&zones[..4]));
        assert_eq!(chosen.len(), 3);
        assert_eq!(
            per_zone(&chosen, &zones),
            BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
        );
        // Three zones of three: one voter each first, then a second in two zones.
        let zones = ["a", "a", "a", "b", "b", "b", "c", "c", "c"];
        let chosen = target_voters(4, &voters(&[4]), &candidates(&zones));
        let counts = per_zone(&chosen, &zones);
        assert_eq!(chosen.len(), 5);
        assert!(counts.values().all(|&n| n <= 2), "{counts:?}");
        assert!(chosen.contains(&4));
    }

    #[test]
    fn a_healthy_configuration_is_kept_and_a_dead_voter_replaced() {
        let zones = ["a", "b", "c", "a", "b", "c"];
        let current = voters(&[0, 1, 2]);
        let all = candidates(&zones);
        // Six candidates: five voters, the current three among them.
        let chosen = target_voters(0, &current, &all);
        assert!(current.is_subset(&chosen), "{chosen:?}");
        // Only three candidates, the current voters: nothing changes.
        let three: Vec<Candidate> = all.iter().take(3).cloned().collect();
        assert_eq!(target_voters(0, &current, &three), current);
        // One of three voters dead and no replacement: the configuration keeps three.
        assert_eq!(target_voters(0, &current, &three[..2]), current);
        // Voter 2 (zone c) died; node 5 (zone c) replaces it.
        let survivors: Vec<Candidate> = [0, 1, 5].iter().map(|&i| all[i].clone()).collect();
        assert_eq!(target_voters(0, &current, &survivors), voters(&[0, 1, 5]));
    }

    #[test]
    fn a_master_missing_from_the_candidates_changes_nothing() {
        let current = voters(&[1, 2, 3]);
        assert_eq!(
            target_voters(9, &current, &candidates(&["a", "b"])),
            current
        );
    }
}

//! Sequence-number checkpoints. A copy's local checkpoint is the highest `_seq_no` at or below
//! which it has processed every operation (a replica may receive batches out of order); a
//! primary's global checkpoint is the lowest local checkpoint among the in-sync copies, so
//! every operation at or below it is on all of them.

use std::collections::{BTreeSet, HashMap};

/// This copy's local checkpoint and the processed operations above it.
#[derive(Debug, Clone, Default)]
pub struct LocalCheckpoint {
    checkpoint: i64,
    above: BTreeSet<i64>,
}

impl LocalCheckpoint {
    /// A copy that holds every operation up to `checkpoint` (-1: none).
    pub fn starting_at(checkpoint: i64) -> LocalCheckpoint {
        LocalCheckpoint {
            checkpoint,
            above: BTreeSet::new(),
        }
    }

    /// A copy restored from a commit that holds every operation up to `checkpoint` and
    /// these above it.
    pub fn restored(checkpoint: i64, above: &[i64]) -> LocalCheckpoint {
        let mut local = LocalCheckpoint::starting_at(checkpoint);
        for seq_no in above {
            local.processed(*seq_no);
        }
        local
    }

    pub fn get(&self) -> i64 {
        self.checkpoint
    }

    /// Processed operations above the checkpoint (beyond a gap), oldest first.
    pub fn above(&self) -> Vec<i64> {
        self.above.iter().copied().collect()
    }

    /// Whether operation `seq_no` has been processed.
    pub fn contains(&self, seq_no: i64) -> bool {
        seq_no <= self.checkpoint || self.above.contains(&seq_no)
    }

    pub fn processed(&mut self, seq_no: i64) {
        if seq_no <= self.checkpoint {
            return;
        }
        if seq_no != self.checkpoint + 1 {
            self.above.insert(seq_no);
            return;
        }
        self.checkpoint = seq_no;
        while self.above.remove(&(self.checkpoint + 1)) {
            self.checkpoint += 1;
        }
    }

    /// Counts every operation up to `seq_no` as processed. A new primary does this: an
    /// operation it never received was never acknowledged (acknowledgement needs every
    /// in-sync copy, and it was one), so the gap can never be filled and must not hold the
    /// checkpoints back.
    pub fn fill_to(&mut self, seq_no: i64) {
        if seq_no > self.checkpoint {
            self.checkpoint = seq_no;
            self.above.retain(|above| *above > seq_no);
            while self.above.remove(&(self.checkpoint + 1)) {
                self.checkpoint += 1;
            }
        }
    }
}

/// On a primary: the local checkpoints its in-sync replicas last reported.
#[derive(Debug, Clone, Default)]
pub struct CopyCheckpoints {
    by_allocation_id: HashMap<String, i64>,
}

impl CopyCheckpoints {
    /// Tracks exactly `in_sync` (a copy not heard from yet counts as -1).
    pub fn track(&mut self, in_sync: impl IntoIterator<Item = String>) {
        let mut tracked = HashMap::new();
        for id in in_sync {
            let known = self.by_allocation_id.get(&id).copied().unwrap_or(-1);
            tracked.insert(id, known);
        }
        self.by_allocation_id = tracked;
    }

    pub fn forget(&mut self, allocation_id: &str) {
        self.by_allocation_id.remove(allocation_id);
    }

    /// Records what a copy reported, if it is tracked; checkpoints only move forward.
    pub fn reported(&mut self, allocation_id: &str, local_checkpoint: i64) {
        if let Some(known) = self.by_allocation_id.get_mut(allocation_id) {
            *known = (*known).max(local_checkpoint);
        }
    }

    /// The global checkpoint given the primary's own local checkpoint.
    pub fn global(&self, own: i64) -> i64 {
        self.by_allocation_id.values().copied().fold(own, i64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_checkpoint_waits_for_gaps_to_close() {
        let mut local = LocalCheckpoint::starting_at(-1);
        for seq_no in [0, 2, 3, 5] {
            local.processed(seq_no);
        }
        assert_eq!(local.get(), 0, "1 is missing");
        local.processed(1);
        assert_eq!(local.get(), 3, "4 is missing");
        local.processed(3);
        local.processed(0);
        assert_eq!(local.get(), 3, "repeats change nothing");
        local.processed(4);
        assert_eq!(local.get(), 5);
    }

    #[test]
    fn a_new_primary_fills_gaps_it_can_never_receive() {
        let mut local = LocalCheckpoint::starting_at(4);
        local.processed(7);
        local.processed(9);
        local.fill_to(7);
        assert_eq!(local.get(), 7);
        local.processed(8);
        assert_eq!(local.get(), 9, "what was above the gap still counts");
    }

    #[test]
    fn the_global_checkpoint_is_the_slowest_in_sync_copy() {
        let mut copies = CopyCheckpoints::default();
        copies.track(["a".to_string(), "b".to_string()]);
        assert_eq!(copies.global(10), -1, "copies not heard from hold it back");
        copies.reported("a", 8);
        copies.reported("b", 10);
        copies.reported("c", 2);
        assert_eq!(copies.global(10), 8, "an untracked copy does not count");
        copies.reported("a", 5);
        assert_eq!(copies.global(10), 8, "reports never move a copy back");
        copies.forget("a");
        assert_eq!(copies.global(10), 10, "a failed copy stops holding it back");
        copies.track(["b".to_string(), "d".to_string()]);
        assert_eq!(copies.global(12), -1);
        copies.reported("d", 12);
        assert_eq!(copies.global(12), 10, "b kept what it reported");
    }
}

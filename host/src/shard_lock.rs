//! Elasticsearch's shard lock: a copy taken out of service keeps its shard number locked until
//! every holder (search, write, recovery) has let it go, its writer has stopped and, when it is
//! deleted, its files are gone, so a new copy never opens a directory an old one still uses.
//!
//! Closing happens on a background thread: whoever takes a copy out of service (the cluster
//! state applier above all) moves on at once instead of waiting for a long search to finish.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::shard::Shard;

/// How often a closer checks whether the last holder has let its copy go.
const RELEASE_POLL: Duration = Duration::from_millis(10);
/// How often a closer still waiting says so in the log.
const STILL_HELD_WARNING: Duration = Duration::from_secs(30);

/// The shard numbers of one index whose copies are still closing.
#[derive(Clone, Default)]
pub struct ShardLocks {
    /// Closers per shard number (a second close may start while the first still waits).
    closing: Arc<(Mutex<BTreeMap<u32, usize>>, Condvar)>,
}

impl ShardLocks {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, usize>> {
        self.closing.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a copy of shard `number` is still closing.
    pub fn is_locked(&self, number: u32) -> bool {
        self.lock().contains_key(&number)
    }

    /// Locks `numbers`, then on a background thread waits until every one of `copies` is
    /// released and dropped, runs `then` (deleting files, say) and unlocks them.
    pub fn close_in_background(
        &self,
        label: String,
        numbers: Vec<u32>,
        copies: Vec<Arc<Shard>>,
        then: impl FnOnce() + Send + 'static,
    ) {
        {
            let mut closing = self.lock();
            for number in &numbers {
                *closing.entry(*number).or_default() += 1;
            }
        }
        let locks = self.clone();
        let close = move || {
            for copy in copies {
                release(copy, &label);
            }
            then();
            locks.unlock(&numbers);
        };
        // A spawn failure (threads exhausted) must not leave the numbers locked for good: the
        // caller's thread closes instead.
        let job = Arc::new(Mutex::new(Some(close)));
        let spawned = {
            let job = job.clone();
            std::thread::Builder::new()
                .name("shoal-close".into())
                .spawn(move || take_job(&job).map(|close| close()))
        };
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "no thread to close a shard copy on; closing inline");
            if let Some(close) = take_job(&job) {
                close();
            }
        }
    }

    fn unlock(&self, numbers: &[u32]) {
        let mut closing = self.lock();
        for number in numbers {
            if let Some(count) = closing.get_mut(number) {
                *count -= 1;
                if *count == 0 {
                    closing.remove(number);
                }
            }
        }
        self.closing.1.notify_all();
    }

    /// Waits up to `limit` until no copy of shard `number` is closing; returns whether none is.
    pub fn wait_unlocked(&self, number: u32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut closing = self.lock();
        while closing.contains_key(&number) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            closing = match self.closing.1.wait_timeout(closing, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

fn take_job<F>(job: &Mutex<Option<F>>) -> Option<F> {
    job.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Waits until this is the last reference to `copy`, then drops it (its writer waits for its
/// merges as it drops).
fn release(mut copy: Arc<Shard>, label: &str) {
    let started = Instant::now();
    let mut warned_at = started;
    loop {
        match Arc::try_unwrap(copy) {
            Ok(closed) => {
                drop(closed);
                return;
            }
            Err(held) => {
                copy = held;
                if warned_at.elapsed() >= STILL_HELD_WARNING {
                    warned_at = Instant::now();
                    tracing::warn!(
                        copy = label,
                        waited_s = started.elapsed().as_secs(),
                        "a closed shard copy is still in use; its shard stays locked"
                    );
                }
                std::thread::sleep(RELEASE_POLL);
            }
        }
    }
}

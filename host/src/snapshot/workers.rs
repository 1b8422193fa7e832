//! The threads of a snapshot or restore: shards side by side, and files within each shard.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cluster::state::RepositoryMeta;
use crate::error::Result;
use crate::node::NodeState;
use crate::plugins::repository::RepositorySession;

/// Shards handled at once by one coordinator: half the cores, at least 2, at most 4
/// (Elasticsearch's snapshot pool is similar), so queries keep cores while a snapshot runs.
pub fn shard_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |cores| cores.get() / 2)
        .clamp(2, 4)
}

/// Files of one shard copied at once: while one waits for its `fsync`, the other hashes or
/// copies, and an index of one shard (the default) is not copied by one thread alone.
pub const FILE_WORKERS_PER_SHARD: usize = 2;

/// Runs `work` on every job with up to `threads` threads, each with its own `state` made by
/// `per_thread`; the outcomes come back in job order.
pub fn on_threads<J: Sync, S, T: Send>(
    jobs: &[J],
    threads: usize,
    per_thread: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &J) -> T + Sync,
) -> Vec<T> {
    let next_job = AtomicUsize::new(0);
    let outcomes: Mutex<BTreeMap<usize, T>> = Mutex::default();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(jobs.len()) {
            scope.spawn(|| {
                let mut state = per_thread();
                loop {
                    let position = next_job.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(position) else {
                        return;
                    };
                    let outcome = work(&mut state, job);
                    outcomes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(position, outcome);
                }
            });
        }
    });
    outcomes
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_values()
        .collect()
}

/// A session on a repository (an instance of its plugin), opened when first needed: a
/// thread that finds nothing to upload, or hands its shard to another node, never pays for
/// an instance.
pub struct LazySession<'a> {
    node: &'a NodeState,
    repository: &'a str,
    meta: &'a RepositoryMeta,
    session: Option<RepositorySession>,
}

impl<'a> LazySession<'a> {
    pub fn new(node: &'a NodeState, repository: &'a str, meta: &'a RepositoryMeta) -> Self {
        LazySession {
            node,
            repository,
            meta,
            session: None,
        }
    }

    pub fn get(&mut self) -> Result<&mut RepositorySession> {
        let session = match self.session.take() {
            Some(session) => session,
            None => super::open(self.node, self.repository, self.meta)?,
        };
        Ok(self.session.insert(session))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::on_threads;

    #[test]
    fn outcomes_come_back_in_job_order_from_at_most_the_threads_asked_for() {
        let jobs: Vec<u64> = (0..40).collect();
        let threads_seen = Mutex::new(HashSet::new());
        let outcomes = on_threads(
            &jobs,
            3,
            || std::thread::current().id(),
            |thread, job| {
                threads_seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*thread);
                // Later jobs finish sooner, so completion order differs from job order.
                std::thread::sleep(std::time::Duration::from_micros(40 - job));
                job * 2
            },
        );
        assert_eq!(outcomes, jobs.iter().map(|job| job * 2).collect::<Vec<_>>());
        let threads = threads_seen.into_inner().unwrap_or_default().len();
        assert!((1..=3).contains(&threads), "{threads} threads");
    }

    #[test]
    fn no_jobs_start_no_threads() {
        let started = Mutex::new(0);
        let outcomes: Vec<()> = on_threads(
            &[] as &[u8],
            4,
            || *started.lock().unwrap_or_else(|p| p.into_inner()) += 1,
            |_, _| (),
        );
        assert!(outcomes.is_empty());
        assert_eq!(*started.lock().unwrap_or_else(|p| p.into_inner()), 0);
    }
}

//! The node's registry of indices: creation, deletion, start-up loading and the resolution of
//! index expressions (`logs-*,metrics`, `_all`, `-excluded`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::cluster::state::IndexMetadata;
use crate::error::{Error, Result};
use crate::index::{INDEX_METADATA, IndexService};
use crate::mapping::Mapping;

/// All indices this node holds.
pub struct Indices {
    dir: PathBuf,
    indices: RwLock<BTreeMap<String, Arc<IndexService>>>,
    /// Serializes create and delete so two requests cannot race on one name.
    admin_lock: Mutex<()>,
    /// The cluster-state version whose index metadata this node has laid out.
    metadata_version: tokio::sync::watch::Sender<u64>,
}

impl Indices {
    /// Opens every index under `data_dir/indices`, replaying translogs.
    pub fn load(data_dir: &std::path::Path) -> Result<Indices> {
        let dir = data_dir.join("indices");
        crate::durable::create_dir(&dir)?;
        let mut indices = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if !path.join(INDEX_METADATA).exists() {
                // A crash during creation, or during a deletion, leaves a directory without
                // metadata: nothing was acknowledged for it, or its deletion was, so it goes.
                tracing::warn!(path = %path.display(), "removing half-created index directory");
                std::fs::remove_dir_all(&path)?;
                continue;
            }
            let index = IndexService::open(&path)?;
            tracing::info!(
                index = index.name(),
                copies = index.local_shards().len(),
                "opened index"
            );
            indices.insert(index.name().to_string(), Arc::new(index));
        }
        Ok(Indices {
            dir,
            indices: RwLock::new(indices),
            admin_lock: Mutex::new(()),
            metadata_version: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Records that the index metadata of cluster-state `version` is laid out here.
    pub fn metadata_applied(&self, version: u64) {
        self.metadata_version.send_if_modified(|applied| {
            let newer = version > *applied;
            *applied = (*applied).max(version);
            newer
        });
    }

    /// The cluster-state version whose index metadata this node has laid out.
    pub fn metadata_version(&self) -> u64 {
        *self.metadata_version.borrow()
    }

    /// Waits (up to `timeout`) until the index metadata of cluster-state `version` is laid
    /// out here.
    pub async fn wait_for_metadata(&self, version: u64, timeout: std::time::Duration) {
        let mut applied = self.metadata_version.subscribe();
        let _ = tokio::time::timeout(timeout, applied.wait_for(|v| *v >= version)).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<IndexService>>> {
        // A poisoned lock only means a panic elsewhere; the map itself is always consistent.
        self.indices
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn all(&self) -> Vec<Arc<IndexService>> {
        self.read().values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Result<Arc<IndexService>> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::IndexNotFound(name.to_string()))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Makes sure the index the cluster state describes is laid out here (metadata only;
    /// copies open as they are allocated). An older index of the same name is replaced.
    /// `version` is the cluster-state version `meta` comes from.
    pub fn ensure(
        &self,
        name: &str,
        meta: &IndexMetadata,
        version: u64,
    ) -> Result<Arc<IndexService>> {
        if let Some(existing) = self.read().get(name)
            && existing.meta.uuid == meta.uuid
        {
            let index = existing.clone();
            index.adopt_cluster_metadata(meta, version)?;
            return Ok(index);
        }
        let guard = self
            .admin_lock
            .lock()
            .map_err(|_| Error::Internal("index admin lock poisoned".into()))?;
        // Checked again under the lock: a concurrent caller may have laid it out meanwhile.
        if let Some(existing) = self.read().get(name).cloned() {
            if existing.meta.uuid == meta.uuid {
                return Ok(existing);
            }
            drop(guard);
            self.delete(name)?;
            return self.ensure(name, meta, version);
        }
        let dir = self.dir.join(&meta.uuid);
        let index = if dir.join(INDEX_METADATA).exists() {
            // Laid out before (a restore, or a restart that raced the state): open it.
            IndexService::open(&dir)?
        } else {
            let mapping = Mapping::parse(&meta.mappings)?;
            IndexService::create(
                &dir,
                name,
                meta.creation_date,
                meta.settings.clone(),
                mapping,
            )?
        };
        // An index opened from disk may hold older settings than the cluster's.
        index.adopt_cluster_metadata(meta, version)?;
        let index = Arc::new(index);
        tracing::info!(index = name, uuid = %meta.uuid, "laid out index");
        self.indices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), index.clone());
        Ok(index)
    }

    /// Where a new index directory `uuid` goes.
    pub fn index_dir(&self, uuid: &str) -> PathBuf {
        self.dir.join(uuid)
    }

    /// Deletes an index and its data.
    pub fn delete(&self, name: &str) -> Result<()> {
        let _guard = self
            .admin_lock
            .lock()
            .map_err(|_| Error::Internal("index admin lock poisoned".into()))?;
        let removed = self
            .indices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| Error::IndexNotFound(name.to_string()))?;
        // Searches still running on the index finish first; the files go after them, in the
        // background (the index directory is never reused: it is named by the index's uuid).
        // Its metadata goes at once, so a restart meanwhile finds a directory to clear, not an
        // index to open.
        let dir = self.dir.join(&removed.meta.uuid);
        let unlisted = std::fs::remove_file(dir.join(INDEX_METADATA))
            .and_then(|()| crate::durable::sync_dir(&dir));
        if let Err(err) = unlisted {
            tracing::warn!(index = name, error = %err, "could not remove a deleted index's metadata first");
        }
        removed.close_all_copies_in_background(move || crate::index::remove_dir_logged(&dir));
        tracing::info!(index = name, "deleted index");
        Ok(())
    }

    /// Resolves a comma-separated index expression. Concrete names must exist (unless
    /// `ignore_unavailable`); wildcards may match nothing.
    pub fn resolve(
        &self,
        expression: &str,
        ignore_unavailable: bool,
    ) -> Result<Vec<Arc<IndexService>>> {
        let indices = self.read();
        let single = expression.trim();
        if !single.contains(',') && (single == "_all" || single.contains('*')) {
            // One pattern (`logs-*`, the usual time-series search): names come out in order
            // already, with nothing to merge or exclude.
            let pattern = if single == "_all" { "*" } else { single };
            return Ok(indices
                .iter()
                .filter(|(name, _)| wildcard_match(pattern, name))
                .map(|(_, index)| index.clone())
                .collect());
        }
        let mut selected: BTreeMap<&str, Arc<IndexService>> = BTreeMap::new();
        for part in expression
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            if let Some(excluded) = part.strip_prefix('-').filter(|_| !selected.is_empty()) {
                selected.retain(|name, _| !wildcard_match(excluded, name));
                continue;
            }
            if part == "_all" || part.contains('*') {
                let pattern = if part == "_all" { "*" } else { part };
                for (name, index) in indices.iter() {
                    if wildcard_match(pattern, name) {
                        selected.insert(name, index.clone());
                    }
                }
                continue;
            }
            match indices.get_key_value(part) {
                Some((name, index)) => {
                    selected.insert(name, index.clone());
                }
                None if ignore_unavailable => {}
                None => return Err(Error::IndexNotFound(part.to_string())),
            }
        }
        Ok(selected.into_values().collect())
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let Some((first, after_first)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let (middle, last) = after_first.rsplit_once('*').unwrap_or(("", after_first));
    for part in middle.split('*').filter(|part| !part.is_empty()) {
        match rest.find(part) {
            Some(pos) => rest = &rest[pos + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("logs-*", "logs-2024"));
        assert!(wildcard_match("*-2024", "logs-2024"));
        assert!(wildcard_match("l*s*4", "logs-2024"));
        assert!(!wildcard_match("logs-*", "metrics"));
        assert!(wildcard_match("exact", "exact"));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a**b", "ab"));
        assert!(
            !wildcard_match("a*a", "a"),
            "prefix and suffix may not overlap"
        );
        assert!(!wildcard_match("*ab*b", "ab"));
    }

    #[test]
    fn a_deleted_index_still_in_use_stays_deleted_across_a_restart() {
        let data = tempfile::tempdir().expect("tempdir");
        let indices = Indices::load(data.path()).expect("load");
        let meta = IndexMetadata {
            uuid: "deleted-uuid".into(),
            creation_date: 0,
            settings: Default::default(),
            mappings: serde_json::json!({}),
        };
        let index = indices.ensure("gone", &meta, 1).expect("laid out");
        let held = index.open_copy(0).expect("copy opens");
        drop(index);
        indices.delete("gone").expect("deleted");
        assert!(matches!(indices.get("gone"), Err(Error::IndexNotFound(_))));
        let dir = data.path().join("indices").join("deleted-uuid");
        assert!(dir.exists(), "files stay while a search holds the copy");

        // A restart before the search lets go: the index does not come back.
        let restarted = Indices::load(data.path()).expect("reload");
        assert!(matches!(
            restarted.get("gone"),
            Err(Error::IndexNotFound(_))
        ));
        assert!(!dir.exists(), "the half-deleted directory is cleared");
        drop(held);
    }
}

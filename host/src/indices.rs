//! The node's registry of indices: creation, deletion, start-up loading and the resolution of
//! index expressions (`logs-*,metrics`, `_all`, `-excluded`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::ids::new_uuid;
use crate::index::{IndexService, parse_create_body, validate_index_name};

/// All indices this node holds.
pub struct Indices {
    dir: PathBuf,
    indices: RwLock<BTreeMap<String, Arc<IndexService>>>,
    /// Serializes create and delete so two requests cannot race on one name.
    admin_lock: Mutex<()>,
}

impl Indices {
    /// Opens every index under `data_dir/indices`, replaying translogs.
    pub fn load(data_dir: &std::path::Path) -> Result<Indices> {
        let dir = data_dir.join("indices");
        std::fs::create_dir_all(&dir)?;
        let mut indices = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if !path.join("_meta.json").exists() {
                // A crash during creation leaves a directory without metadata: nothing was
                // acknowledged for it, so it is removed.
                tracing::warn!(path = %path.display(), "removing half-created index directory");
                std::fs::remove_dir_all(&path)?;
                continue;
            }
            let index = IndexService::open(&path)?;
            tracing::info!(
                index = index.name(),
                shards = index.shards.len(),
                "opened index"
            );
            indices.insert(index.name().to_string(), Arc::new(index));
        }
        Ok(Indices {
            dir,
            indices: RwLock::new(indices),
            admin_lock: Mutex::new(()),
        })
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

    /// Creates an index from a `PUT /{index}` body.
    pub fn create(&self, name: &str, body: &Value) -> Result<Arc<IndexService>> {
        validate_index_name(name)?;
        let (settings, mapping) = parse_create_body(body)?;
        let _guard = self
            .admin_lock
            .lock()
            .map_err(|_| Error::Internal("index admin lock poisoned".into()))?;
        if let Some(existing) = self.read().get(name) {
            return Err(Error::IndexAlreadyExists {
                name: name.to_string(),
                uuid: existing.meta.uuid.clone(),
            });
        }
        let uuid = new_uuid();
        let index = Arc::new(IndexService::create(
            &self.dir.join(&uuid),
            name,
            settings,
            mapping,
        )?);
        tracing::info!(
            index = name,
            uuid,
            shards = index.shards.len(),
            "created index"
        );
        self.indices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), index.clone());
        Ok(index)
    }

    /// Registers an index whose files were laid out under `indices/{uuid}` by a restore.
    pub fn adopt(&self, uuid: &str) -> Result<Arc<IndexService>> {
        let _guard = self
            .admin_lock
            .lock()
            .map_err(|_| Error::Internal("index admin lock poisoned".into()))?;
        let index = Arc::new(IndexService::open(&self.dir.join(uuid))?);
        let name = index.name().to_string();
        if let Some(existing) = self.read().get(&name) {
            return Err(Error::IndexAlreadyExists {
                name,
                uuid: existing.meta.uuid.clone(),
            });
        }
        self.indices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, index.clone());
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
        let dir = self.dir.join(&removed.meta.uuid);
        drop(removed);
        std::fs::remove_dir_all(&dir)?;
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
        let mut selected: BTreeMap<String, Arc<IndexService>> = BTreeMap::new();
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
                        selected.insert(name.clone(), index.clone());
                    }
                }
                continue;
            }
            match indices.get(part) {
                Some(index) => {
                    selected.insert(part.to_string(), index.clone());
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
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(tail) => rest = tail,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
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
    }
}

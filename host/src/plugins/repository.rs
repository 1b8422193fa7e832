//! The repository call site. A session holds one plugin instance with its granted directory,
//! so the calls of a streamed upload land on the same instance. Every call runs under the
//! plugin's deadline; a call that traps or times out throws the instance away, and the next
//! call builds a fresh one. Repository errors name the plugin and keep the plugin's kind of
//! failure, so callers can retry what is retryable.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::bindings::repository::exports::shoal::plugin::repository::{
    BlobMeta, RepositoryError as WitError,
};
use super::grants::Grants;
use super::{Instance, InstanceExports, Plugin, PluginError, hex};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("repository plugin [{plugin}]: not found: {message}")]
    NotFound { plugin: String, message: String },
    #[error("repository plugin [{plugin}]: access denied: {message}")]
    AccessDenied { plugin: String, message: String },
    #[error("repository plugin [{plugin}]: unavailable: {message}")]
    Unavailable { plugin: String, message: String },
    #[error("repository plugin [{plugin}]: invalid request: {message}")]
    Invalid { plugin: String, message: String },
}

impl RepositoryError {
    /// Transient failures the caller may retry with backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RepositoryError::Unavailable { .. })
    }
}

/// Bytes per streamed call: large enough to amortise a call, small enough for plugin memory.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Fills `buffer` unless the reader ends first; returns the bytes read.
fn read_full(reader: &mut impl std::io::Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// One blob in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub name: String,
    pub size: u64,
}

/// A connection to one repository through its plugin.
pub struct RepositorySession {
    plugin: Arc<Plugin>,
    grants: Grants,
    /// The JSON the instance reads through `host.config()`: the repository's settings.
    settings: Option<String>,
    instance: Option<Instance>,
}

impl RepositorySession {
    pub fn new(plugin: Arc<Plugin>, grants: Grants) -> RepositorySession {
        RepositorySession {
            plugin,
            grants,
            settings: None,
            instance: None,
        }
    }

    /// Hands the plugin `settings` (a JSON object) as its config instead of its own.
    pub fn with_settings(mut self, settings: String) -> RepositorySession {
        self.settings = Some(settings);
        self
    }

    fn invoke<R>(
        &mut self,
        call: impl FnOnce(
            &super::bindings::repository::RepositoryPlugin,
            &mut wasmtime::Store<super::state::PluginState>,
        ) -> wasmtime::Result<Result<R, WitError>>,
    ) -> Result<R, RepositoryError> {
        let instance = match self.instance.as_mut() {
            Some(instance) => instance,
            None => self.instance.insert(
                self.plugin
                    .instantiate_granted(&self.grants, self.settings.as_deref())?,
            ),
        };
        let outcome = self
            .plugin
            .run_on(instance, |instance| match &instance.exports {
                InstanceExports::Repository(exports) => call(exports, &mut instance.store),
                _ => Err(wasmtime::Error::msg("instance is not a repository plugin")),
            });
        let answer = match outcome {
            Ok(answer) => answer,
            Err(err) => {
                self.instance = None;
                return Err(err.into());
            }
        };
        answer.map_err(|err| {
            self.plugin.count_returned_error();
            let plugin = self.plugin.name.clone();
            match err {
                WitError::NotFound(message) => RepositoryError::NotFound { plugin, message },
                WitError::AccessDenied(message) => {
                    RepositoryError::AccessDenied { plugin, message }
                }
                WitError::Unavailable(message) => RepositoryError::Unavailable { plugin, message },
                WitError::Invalid(message) => RepositoryError::Invalid { plugin, message },
            }
        })
    }

    /// Stores a small blob whole, with its checksum.
    pub fn put(&mut self, name: &str, data: &[u8]) -> Result<(), RepositoryError> {
        let sha = hex(&Sha256::digest(data));
        self.invoke(|exports, store| {
            exports
                .shoal_plugin_repository()
                .call_put(store, name, data, &sha)
        })
    }

    /// Streams a blob of `length` bytes with SHA-256 `sha256_hex` from `reader`, in chunks of
    /// [`CHUNK_BYTES`]; nothing is visible unless every byte arrived and matched.
    pub fn put_streamed(
        &mut self,
        name: &str,
        length: u64,
        sha256_hex: &str,
        mut reader: impl std::io::Read,
    ) -> Result<(), RepositoryError> {
        let upload = self.invoke(|exports, store| {
            exports
                .shoal_plugin_repository()
                .call_put_start(store, name, length, sha256_hex)
        })?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let read = read_full(&mut reader, &mut buffer).map_err(|err| {
                RepositoryError::Unavailable {
                    plugin: self.plugin.name.clone(),
                    message: format!("reading the data for blob [{name}]: {err}"),
                }
            })?;
            if read == 0 {
                break;
            }
            let chunk = &buffer[..read];
            self.invoke(|exports, store| {
                exports
                    .shoal_plugin_repository()
                    .call_put_chunk(store, upload, chunk)
            })?;
        }
        self.invoke(|exports, store| {
            exports
                .shoal_plugin_repository()
                .call_put_finish(store, upload)
        })
    }

    /// Reads `length` bytes (all when `None`) from `offset`.
    pub fn get(
        &mut self,
        name: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Vec<u8>, RepositoryError> {
        self.invoke(|exports, store| {
            exports
                .shoal_plugin_repository()
                .call_get(store, name, offset, length)
        })
    }

    pub fn exists(&mut self, name: &str) -> Result<bool, RepositoryError> {
        self.invoke(|exports, store| exports.shoal_plugin_repository().call_exists(store, name))
    }

    pub fn list(&mut self, prefix: &str) -> Result<Vec<Blob>, RepositoryError> {
        let blobs: Vec<BlobMeta> = self.invoke(|exports, store| {
            exports
                .shoal_plugin_repository()
                .call_list_blobs(store, prefix)
        })?;
        Ok(blobs
            .into_iter()
            .map(|blob| Blob {
                name: blob.name,
                size: blob.size,
            })
            .collect())
    }

    pub fn delete(&mut self, name: &str) -> Result<(), RepositoryError> {
        self.invoke(|exports, store| exports.shoal_plugin_repository().call_delete(store, name))
    }

    /// Writes, reads back and deletes a test blob.
    pub fn verify(&mut self) -> Result<(), RepositoryError> {
        self.invoke(|exports, store| exports.shoal_plugin_repository().call_verify(store))
    }
}

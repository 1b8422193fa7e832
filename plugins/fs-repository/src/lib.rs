//! A snapshot repository on a filesystem directory. The host grants the plugin exactly one
//! preopened directory, seen inside the plugin as `/repo`; the plugin can reach nothing else.
//!
//! Blobs become visible atomically: data is written to a temporary file, checked against the
//! expected length and SHA-256, synced, then renamed into place. A failed or abandoned upload
//! leaves only a `.part` file, which listings skip.

mod store;

use store::FsRepository;

shoal_plugin_sdk::export_repository_plugin!(FsRepository);

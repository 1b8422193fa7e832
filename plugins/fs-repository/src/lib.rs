//! A snapshot repository on a filesystem directory. The host grants the plugin exactly one
//! preopened directory, seen inside the plugin as `/repo`; the plugin can reach nothing else.
//!
//! Blobs become visible atomically: data is written to a temporary file, checked against the
//! expected length and SHA-256, synced, then renamed into place. A failed upload removes its
//! `.part` file; one cut short by a crash leaves it behind, and listings (which `_cleanup` and
//! every deletion run) remove it once it has not been written for an hour.

mod store;

use store::FsRepository;

shoal_plugin_sdk::export_repository_plugin!(FsRepository);

//! The `checksum` import (WIT 1.1): SHA-256 computed natively for plugins, so a repository
//! plugin verifying each blob it stores does not hash at wasm speed.

use sha2::{Digest, Sha256};
use wasmtime::component::Resource;

use super::bindings::repository::shoal::plugin::checksum::{Host, HostSha256};
use super::state::PluginState;

/// The host side of a plugin's `sha256` resource.
#[derive(Default)]
pub struct Sha256Hasher(Sha256);

impl Host for PluginState {}

impl HostSha256 for PluginState {
    fn new(&mut self) -> wasmtime::Result<Resource<Sha256Hasher>> {
        Ok(self.table.push(Sha256Hasher::default())?)
    }

    fn update(&mut self, hasher: Resource<Sha256Hasher>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.table.get_mut(&hasher)?.0.update(&data);
        Ok(())
    }

    fn hex_digest(&mut self, hasher: Resource<Sha256Hasher>) -> wasmtime::Result<String> {
        let digest = self.table.get(&hasher)?.0.clone().finalize();
        Ok(super::hex(&digest))
    }

    fn drop(&mut self, hasher: Resource<Sha256Hasher>) -> wasmtime::Result<()> {
        self.table.delete(hasher)?;
        Ok(())
    }
}

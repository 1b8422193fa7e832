//! Shoal plugin SDK: the guest-side API for Shoal WebAssembly plugins (built out in the plugin-platform work).

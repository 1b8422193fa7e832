//! A snapshot repository on any S3-compatible service (AWS S3, MinIO, Ceph, s3s, ...).
//!
//! Requests go out over `wasi:http`, which the host limits to the host of the repository's
//! `endpoint`, and are signed with AWS Signature Version 4. Blobs larger than `buffer_size`
//! are sent as multipart uploads; a blob becomes visible only once every byte arrived and its
//! SHA-256 matched (a multipart upload is completed only then, and aborted otherwise).
//! Throttling, server errors and broken connections are retried with exponential backoff.
//!
//! The host hands the plugin its repository's settings (and the credentials it resolved from
//! the node's secure settings) through `host.config()`; see [`settings`].

mod http;
mod settings;
mod sigv4;
mod store;
mod xml;

use store::S3Repository;

shoal_plugin_sdk::export_repository_plugin!(S3Repository);

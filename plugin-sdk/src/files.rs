//! Files in a plugin's granted directory, written and read one whole chunk per host call.
//!
//! `std::fs` works in a plugin, but on `wasm32-wasip2` it writes through WASI output streams:
//! the host takes each write in pieces of at most 64 KiB and performs every piece on a
//! thread pool, handing the result back. For a repository storing hundreds of MiB that
//! hand-off, not the disk, set the pace (the snapshots bench spent more time waiting on it
//! than in `fsync`). [`ChunkedFile`] calls `wasi:filesystem` directly, so a 4 MiB chunk is
//! one host call and one `pwrite`, done on the plugin's own thread. Use `std::fs` for
//! everything else (directories, renames, listings).
//!
//! ```no_run
//! use shoal_plugin_sdk::files::ChunkedFile;
//!
//! let mut file = ChunkedFile::create("/repo/blob.part")?;
//! file.write_all(b"a chunk")?;
//! file.sync_all()?;
//! let back = ChunkedFile::open("/repo/blob.part")?.read(0, None)?;
//! assert_eq!(back, b"a chunk");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{Error, ErrorKind, Result};

use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};

/// A file opened through `wasi:filesystem`, with its own write position.
pub struct ChunkedFile {
    descriptor: Descriptor,
    position: u64,
}

impl ChunkedFile {
    /// Creates (or truncates) the file at `path`, an absolute guest path under a preopened
    /// directory, for writing.
    pub fn create(path: &str) -> Result<ChunkedFile> {
        open(
            path,
            OpenFlags::CREATE | OpenFlags::TRUNCATE,
            DescriptorFlags::WRITE,
        )
    }

    /// Opens the file at `path` for reading.
    pub fn open(path: &str) -> Result<ChunkedFile> {
        open(path, OpenFlags::empty(), DescriptorFlags::READ)
    }

    /// Appends all of `data` at the write position.
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let written = self.descriptor.write(data, self.position).map_err(to_io)?;
            if written == 0 {
                return Err(Error::new(ErrorKind::WriteZero, "the file took no bytes"));
            }
            self.position += written;
            data = &data[written as usize..];
        }
        Ok(())
    }

    /// Reads `length` bytes (up to the end of the file when `None`, or when the file is
    /// shorter) from `offset`.
    pub fn read(&self, offset: u64, length: Option<u64>) -> Result<Vec<u8>> {
        let end = match length {
            Some(length) => offset.saturating_add(length),
            None => self.descriptor.stat().map_err(to_io)?.size,
        };
        let mut data = Vec::with_capacity(end.saturating_sub(offset).min(1 << 30) as usize);
        let mut position = offset;
        while position < end {
            let (chunk, at_end) = self
                .descriptor
                .read(end - position, position)
                .map_err(to_io)?;
            position += chunk.len() as u64;
            data.extend_from_slice(&chunk);
            if at_end || chunk.is_empty() {
                break;
            }
        }
        Ok(data)
    }

    /// Makes the file's data and metadata durable.
    pub fn sync_all(&self) -> Result<()> {
        self.descriptor.sync().map_err(to_io)
    }
}

fn open(path: &str, open_flags: OpenFlags, flags: DescriptorFlags) -> Result<ChunkedFile> {
    let (directory, relative) = preopened(path)?;
    let descriptor = directory
        .open_at(PathFlags::empty(), &relative, open_flags, flags)
        .map_err(to_io)?;
    Ok(ChunkedFile {
        descriptor,
        position: 0,
    })
}

/// The preopened directory holding `path`, and the path relative to it.
fn preopened(path: &str) -> Result<(Descriptor, String)> {
    get_directories()
        .into_iter()
        .find_map(|(directory, guest_path)| {
            let root = guest_path.trim_end_matches('/');
            let relative = path.strip_prefix(root)?.strip_prefix('/')?;
            Some((directory, relative.to_string()))
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::PermissionDenied,
                format!("[{path}] is not under a directory granted to the plugin"),
            )
        })
}

fn to_io(code: ErrorCode) -> Error {
    let kind = match code {
        ErrorCode::NoEntry => ErrorKind::NotFound,
        ErrorCode::Access | ErrorCode::NotPermitted | ErrorCode::ReadOnly => {
            ErrorKind::PermissionDenied
        }
        ErrorCode::Exist => ErrorKind::AlreadyExists,
        ErrorCode::InsufficientSpace => ErrorKind::StorageFull,
        _ => ErrorKind::Other,
    };
    Error::new(kind, code.name())
}

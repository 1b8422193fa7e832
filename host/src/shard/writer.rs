//! The copy's tantivy writer, shut down for good when the copy drops.

use std::ops::{Deref, DerefMut};

use tantivy::{IndexWriter, TantivyDocument};

/// Owns a copy's [`IndexWriter`]. Dropping a plain writer stops its indexing threads but not
/// the merges in flight, which go on writing segment files into the copy's directory; a copy
/// that is closed so that its directory can be deleted or handed to a new copy must be done
/// with it. This wrapper waits for those merges when it drops.
pub(super) struct ShardWriter(Option<IndexWriter<TantivyDocument>>);

impl ShardWriter {
    pub(super) fn new(writer: IndexWriter<TantivyDocument>) -> Self {
        Self(Some(writer))
    }
}

impl Deref for ShardWriter {
    type Target = IndexWriter<TantivyDocument>;

    fn deref(&self) -> &Self::Target {
        // Only `drop` takes the writer out.
        self.0
            .as_ref()
            .expect("the writer lives as long as its copy")
    }
}

impl DerefMut for ShardWriter {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_mut()
            .expect("the writer lives as long as its copy")
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take()
            && let Err(err) = writer.wait_merging_threads()
        {
            tracing::warn!(error = %err, "a merge failed while the copy closed");
        }
    }
}

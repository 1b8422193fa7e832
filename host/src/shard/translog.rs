//! The write-ahead log of a shard copy: every operation is framed with its length and a CRC32C
//! checksum and appended to the current generation file; a torn or corrupt tail found at
//! start-up is cut, never replayed. Generations a commit covers are kept up to a size budget
//! as the copy's history, from which a returning copy catches up by operations.
//!
//! Frame: `[len: u32 LE][crc32c(payload): u32 LE][payload]`; payload:
//! `[kind: u8][seq_no: i64][primary_term: u64][version: i64][id_len: u32][id][source_len: u32][source]`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

const FILE_MAGIC: &[u8; 8] = b"SHTLOG01";
const MAX_FRAME_LEN: usize = 1 << 30;

/// One logged operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TranslogOp {
    pub kind: OpKind,
    pub seq_no: i64,
    pub primary_term: u64,
    pub version: i64,
    pub id: String,
    #[serde(with = "serde_bytes")]
    pub source: Vec<u8>,
}

/// A borrowed operation to append (no copy of the source).
#[derive(Debug, Clone, Copy)]
pub struct OpRecord<'a> {
    pub kind: OpKind,
    pub seq_no: i64,
    pub primary_term: u64,
    pub version: i64,
    pub id: &'a str,
    pub source: &'a [u8],
}

impl OpRecord<'_> {
    pub fn to_owned_op(&self) -> TranslogOp {
        TranslogOp {
            kind: self.kind,
            seq_no: self.seq_no,
            primary_term: self.primary_term,
            version: self.version,
            id: self.id.to_string(),
            source: self.source.to_vec(),
        }
    }
}

impl TranslogOp {
    pub fn record(&self) -> OpRecord<'_> {
        OpRecord {
            kind: self.kind,
            seq_no: self.seq_no,
            primary_term: self.primary_term,
            version: self.version,
            id: &self.id,
            source: &self.source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OpKind {
    Index = 1,
    Delete = 2,
}

/// What start-up found in the log.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Operations read from the retained generations, in log order.
    pub operations: Vec<TranslogOp>,
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
}

/// Where a batch's bytes end; durability means "synced up to here".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    pub generation: u64,
    pub offset: u64,
}

/// The appending side; owned by the shard's write state.
pub struct Translog {
    dir: PathBuf,
    generation: u64,
    writer: BufWriter<File>,
    offset: u64,
    operations: u64,
    sync: std::sync::Arc<TranslogSync>,
}

/// The fsync side, shared so that many writers' batches are made durable by one `fsync`
/// (group commit) without holding the shard's write lock.
pub struct TranslogSync {
    state: Mutex<SyncState>,
    written_generation: AtomicU64,
    written_offset: AtomicU64,
}

struct SyncState {
    file: File,
    synced: LogPosition,
}

impl TranslogSync {
    /// Makes everything up to `target` durable; returns at once when it already is.
    pub fn sync_to(&self, target: LogPosition) -> Result<(), Error> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::Internal("translog sync lock poisoned".into()))?;
        if state.synced >= target {
            return Ok(());
        }
        let written = LogPosition {
            generation: self.written_generation.load(Ordering::Acquire),
            offset: self.written_offset.load(Ordering::Acquire),
        };
        state.file.sync_data()?;
        state.synced = written;
        Ok(())
    }
}

fn generation_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("translog-{generation:020}.tlog"))
}

fn list_generations(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut generations = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(number) = name
            .strip_prefix("translog-")
            .and_then(|rest| rest.strip_suffix(".tlog"))
            && let Ok(generation) = number.parse()
        {
            generations.push(generation);
        }
    }
    generations.sort_unstable();
    Ok(generations)
}

impl Translog {
    /// Opens the log in `dir`, reading every generation from `first_generation` on. Older
    /// generations are already covered by a tantivy commit: kept as history, not replayed.
    pub fn open(
        dir: &Path,
        first_generation: u64,
        shard: &str,
    ) -> Result<(Translog, RecoveryReport), Error> {
        crate::durable::create_dir(dir)?;
        let generations = list_generations(dir)?;
        let mut report = RecoveryReport::default();
        let retained: Vec<u64> = generations
            .into_iter()
            .filter(|g| *g >= first_generation)
            .collect();
        let last = retained.last().copied();
        for generation in &retained {
            let path = generation_path(dir, *generation);
            let is_last = Some(*generation) == last;
            let (ops, valid_len, file_len) = read_generation(&path)?;
            if valid_len < file_len {
                if !is_last {
                    return Err(Error::TranslogCorrupted {
                        shard: shard.to_string(),
                        reason: format!(
                            "generation {generation} is damaged at byte {valid_len} and later generations exist"
                        ),
                    });
                }
                tracing::warn!(
                    shard,
                    generation,
                    offset = valid_len,
                    cut_bytes = file_len - valid_len,
                    "translog tail is torn or corrupt; cutting it"
                );
                report.truncated_bytes += file_len - valid_len;
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(valid_len)?;
                file.sync_all()?;
            }
            report.operations.extend(ops);
        }
        let generation = last.unwrap_or(first_generation.max(1));
        let path = generation_path(dir, generation);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut offset = file.seek(SeekFrom::End(0))?;
        if offset < FILE_MAGIC.len() as u64 {
            file.set_len(0)?;
            file.write_all(FILE_MAGIC)?;
            file.sync_all()?;
            crate::durable::sync_dir(dir)?;
            offset = FILE_MAGIC.len() as u64;
        }
        let operations = report.operations.len() as u64;
        let sync = std::sync::Arc::new(TranslogSync {
            state: Mutex::new(SyncState {
                file: file.try_clone()?,
                synced: LogPosition { generation, offset },
            }),
            written_generation: AtomicU64::new(generation),
            written_offset: AtomicU64::new(offset),
        });
        let translog = Translog {
            dir: dir.to_path_buf(),
            generation,
            writer: BufWriter::with_capacity(1 << 16, file),
            offset,
            operations,
            sync,
        };
        Ok((translog, report))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn sync_handle(&self) -> std::sync::Arc<TranslogSync> {
        self.sync.clone()
    }

    /// Number of operations in the retained generations.
    pub fn operations(&self) -> u64 {
        self.operations
    }

    /// Bytes in the retained generations.
    pub fn size_in_bytes(&self) -> u64 {
        list_generations(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|g| std::fs::metadata(generation_path(&self.dir, g)).ok())
            .map(|meta| meta.len())
            .sum::<u64>()
            .max(self.offset)
    }

    /// Buffers one operation; [`Translog::flush_buffer`] hands it to the OS.
    pub fn append(&mut self, op: OpRecord<'_>) -> Result<(), Error> {
        let kind = [op.kind as u8];
        let seq_no = op.seq_no.to_le_bytes();
        let primary_term = op.primary_term.to_le_bytes();
        let version = op.version.to_le_bytes();
        let id_len = (op.id.len() as u32).to_le_bytes();
        let source_len = (op.source.len() as u32).to_le_bytes();
        let parts: [&[u8]; 8] = [
            &kind,
            &seq_no,
            &primary_term,
            &version,
            &id_len,
            op.id.as_bytes(),
            &source_len,
            op.source,
        ];
        let payload_len: usize = parts.iter().map(|part| part.len()).sum();
        let crc = parts
            .iter()
            .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
        self.writer.write_all(&(payload_len as u32).to_le_bytes())?;
        self.writer.write_all(&crc.to_le_bytes())?;
        for part in parts {
            self.writer.write_all(part)?;
        }
        self.offset += (8 + payload_len) as u64;
        self.operations += 1;
        Ok(())
    }

    /// Writes buffered frames to the file and returns the position a sync must reach.
    pub fn flush_buffer(&mut self) -> Result<LogPosition, Error> {
        self.writer.flush()?;
        self.sync
            .written_offset
            .store(self.offset, Ordering::Release);
        Ok(LogPosition {
            generation: self.generation,
            offset: self.offset,
        })
    }

    /// Starts a new generation and deletes the older ones beyond the newest `retain_bytes`
    /// of them (the history): called after a tantivy commit that covers every operation
    /// logged so far.
    pub fn roll_and_trim(&mut self, retain_bytes: u64) -> Result<(), Error> {
        let position = self.flush_buffer()?;
        self.sync.sync_to(position)?;
        let next = self.generation + 1;
        let path = generation_path(&self.dir, next);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        file.write_all(FILE_MAGIC)?;
        file.sync_all()?;
        crate::durable::sync_dir(&self.dir)?;
        {
            let mut state = self
                .sync
                .state
                .lock()
                .map_err(|_| Error::Internal("translog sync lock poisoned".into()))?;
            state.file = file.try_clone()?;
            state.synced = LogPosition {
                generation: next,
                offset: FILE_MAGIC.len() as u64,
            };
            self.sync.written_generation.store(next, Ordering::Release);
            self.sync
                .written_offset
                .store(FILE_MAGIC.len() as u64, Ordering::Release);
        }
        self.writer = BufWriter::with_capacity(1 << 16, file);
        self.generation = next;
        self.offset = FILE_MAGIC.len() as u64;
        self.operations = 0;
        // Newest first; once one does not fit, the older ones go too: the history stays one
        // contiguous run of generations.
        let mut budget = Some(retain_bytes);
        for generation in list_generations(&self.dir)?.into_iter().rev() {
            if generation >= next {
                continue;
            }
            let path = generation_path(&self.dir, generation);
            let size = std::fs::metadata(&path)?.len();
            budget = budget.and_then(|left| left.checked_sub(size));
            if budget.is_none() {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    /// Hard-links every generation into `into` (a point-in-time view the writer's later
    /// trims cannot take away) and returns the links' names and sizes.
    pub fn link_generations(&mut self, into: &Path) -> Result<Vec<(String, u64)>, Error> {
        self.flush_buffer()?;
        std::fs::create_dir_all(into)?;
        let mut linked = Vec::new();
        for generation in list_generations(&self.dir)? {
            let source = generation_path(&self.dir, generation);
            let name = source
                .file_name()
                .map(|name| name.to_string_lossy().to_string())
                .ok_or_else(|| Error::Internal("a translog generation without a name".into()))?;
            std::fs::hard_link(&source, into.join(&name))?;
            linked.push((name, std::fs::metadata(&source)?.len()));
        }
        Ok(linked)
    }
}

/// The operations of one generation file, up to its first damaged frame.
pub fn read_operations(path: &Path) -> Result<Vec<TranslogOp>, Error> {
    read_generation(path).map(|(ops, _, _)| ops)
}

/// Which operations of the range `(after, up_to]` a history holds; complete when it holds
/// every one (a returning copy can then catch up by operations). A copy ahead of the history
/// (`after > up_to`) holds operations the history lacks: never complete.
pub struct Coverage {
    after: i64,
    up_to: i64,
    seen: Vec<u64>,
    missing: u64,
}

/// Ranges wider than this are never covered (no history holds that many operations), so a
/// peer's checkpoint cannot size an allocation.
const MAX_COVERED_RANGE: u64 = 1 << 28;

impl Coverage {
    pub fn new(after: i64, up_to: i64) -> Coverage {
        let missing = u64::try_from(up_to.saturating_sub(after)).unwrap_or(u64::MAX);
        if missing > MAX_COVERED_RANGE {
            return Coverage {
                after,
                up_to: after,
                seen: Vec::new(),
                missing,
            };
        }
        Coverage {
            after,
            up_to,
            seen: vec![0; missing.div_ceil(64) as usize],
            missing,
        }
    }

    /// Whether `seq_no` lies in the range.
    pub fn wants(&self, seq_no: i64) -> bool {
        seq_no > self.after && seq_no <= self.up_to
    }

    pub fn note(&mut self, seq_no: i64) {
        if !self.wants(seq_no) {
            return;
        }
        let bit = (seq_no - self.after - 1) as u64;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if self.seen[word] & mask == 0 {
            self.seen[word] |= mask;
            self.missing -= 1;
        }
    }

    pub fn complete(&self) -> bool {
        self.missing == 0
    }
}

fn decode(payload: &[u8]) -> Option<TranslogOp> {
    let mut cursor = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        if cursor.len() < n {
            return None;
        }
        let (head, tail) = cursor.split_at(n);
        cursor = tail;
        Some(head)
    };
    let kind = match take(1)?[0] {
        1 => OpKind::Index,
        2 => OpKind::Delete,
        _ => return None,
    };
    let seq_no = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let primary_term = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let version = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let id_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let id = String::from_utf8(take(id_len)?.to_vec()).ok()?;
    let source_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let source = take(source_len)?.to_vec();
    Some(TranslogOp {
        kind,
        seq_no,
        primary_term,
        version,
        id,
        source,
    })
}

/// Reads the valid prefix of one generation: its operations, the byte length of that prefix,
/// and the file's length.
fn read_generation(path: &Path) -> Result<(Vec<TranslogOp>, u64, u64), Error> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let file_len = bytes.len() as u64;
    if bytes.len() < FILE_MAGIC.len() || &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
        return Ok((Vec::new(), 0, file_len));
    }
    let mut ops = Vec::new();
    let mut offset = FILE_MAGIC.len();
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes([
            bytes[offset],
            bytes[offset + 1],
            bytes[offset + 2],
            bytes[offset + 3],
        ]) as usize;
        let crc = u32::from_le_bytes([
            bytes[offset + 4],
            bytes[offset + 5],
            bytes[offset + 6],
            bytes[offset + 7],
        ]);
        let end = offset + 8 + len;
        if len > MAX_FRAME_LEN || end > bytes.len() {
            break;
        }
        let payload = &bytes[offset + 8..end];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(op) = decode(payload) else { break };
        ops.push(op);
        offset = end;
    }
    Ok((ops, offset as u64, file_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seq_no: i64) -> TranslogOp {
        TranslogOp {
            kind: OpKind::Index,
            seq_no,
            primary_term: 1,
            version: 1,
            id: format!("doc-{seq_no}"),
            source: br#"{"a":1}"#.to_vec(),
        }
    }

    #[test]
    fn appended_operations_are_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, report) = Translog::open(dir.path(), 1, "t[0]").expect("open");
        assert!(report.operations.is_empty());
        for seq_no in 0..5 {
            log.append(op(seq_no).record()).expect("append");
        }
        let position = log.flush_buffer().expect("flush");
        log.sync_handle().sync_to(position).expect("sync");
        drop(log);
        let (_, report) = Translog::open(dir.path(), 1, "t[0]").expect("reopen");
        assert_eq!(report.operations, (0..5).map(op).collect::<Vec<_>>());
        assert_eq!(report.truncated_bytes, 0);
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Translog::open(dir.path(), 1, "t[0]").expect("open");
        for seq_no in 0..3 {
            log.append(op(seq_no).record()).expect("append");
        }
        log.flush_buffer().expect("flush");
        drop(log);
        let path = generation_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        let len = bytes.len();
        bytes[len - 3] ^= 0xff; // flip a byte inside the last frame
        bytes.extend_from_slice(&[7, 0, 0]); // and leave half a header after it
        std::fs::write(&path, &bytes).expect("write");
        let (mut log, report) = Translog::open(dir.path(), 1, "t[0]").expect("reopen");
        assert_eq!(report.operations, vec![op(0), op(1)]);
        assert!(report.truncated_bytes > 3);
        log.append(op(2).record()).expect("append after cut");
        log.flush_buffer().expect("flush");
        drop(log);
        let (_, report) = Translog::open(dir.path(), 1, "t[0]").expect("reopen");
        assert_eq!(report.operations, vec![op(0), op(1), op(2)]);
    }

    #[test]
    fn roll_and_trim_drops_covered_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Translog::open(dir.path(), 1, "t[0]").expect("open");
        log.append(op(0).record()).expect("append");
        log.roll_and_trim(0).expect("roll");
        log.append(op(1).record()).expect("append");
        log.flush_buffer().expect("flush");
        assert_eq!(log.generation(), 2);
        assert_eq!(list_generations(dir.path()).expect("list"), vec![2]);
        drop(log);
        let (_, report) = Translog::open(dir.path(), 2, "t[0]").expect("reopen");
        assert_eq!(report.operations, vec![op(1)]);
    }

    #[test]
    fn covered_generations_are_kept_as_history_within_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Translog::open(dir.path(), 1, "t[0]").expect("open");
        for seq_no in 0..3 {
            log.append(op(seq_no).record()).expect("append");
            log.roll_and_trim(1 << 20).expect("roll");
        }
        log.append(op(3).record()).expect("append");
        assert_eq!(
            list_generations(dir.path()).expect("list"),
            vec![1, 2, 3, 4]
        );
        // Reopening after a commit at generation 4 replays only generation 4.
        drop(log);
        let (mut log, report) = Translog::open(dir.path(), 4, "t[0]").expect("reopen");
        assert_eq!(report.operations, vec![op(3)]);
        let covers = |dir: &Path, names: &[String]| {
            let mut coverage = Coverage::new(0, 3);
            for name in names {
                for op in read_operations(&dir.join(name)).expect("read") {
                    coverage.note(op.seq_no);
                }
            }
            coverage.complete()
        };
        let history = tempfile::tempdir().expect("tempdir");
        let linked = log.link_generations(history.path()).expect("link");
        let names: Vec<String> = linked.into_iter().map(|(name, _)| name).collect();
        assert!(covers(history.path(), &names));
        // A budget of one generation keeps only the newest covered one.
        let one = std::fs::metadata(generation_path(dir.path(), 1))
            .expect("size")
            .len();
        log.roll_and_trim(one).expect("roll");
        assert_eq!(list_generations(dir.path()).expect("list"), vec![4, 5]);
        let names = [4, 5].map(|generation| {
            let path = generation_path(dir.path(), generation);
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .to_string()
        });
        assert!(!covers(dir.path(), &names), "operations 1 and 2 are gone");
    }

    #[test]
    fn coverage_needs_every_operation_in_its_range() {
        let coverage = |after, up_to| {
            let mut coverage = Coverage::new(after, up_to);
            for seq_no in [3, 1, 2, 2, 5] {
                coverage.note(seq_no);
            }
            coverage.complete()
        };
        assert!(coverage(0, 3));
        assert!(coverage(2, 3));
        assert!(coverage(3, 3), "an empty range");
        assert!(!coverage(0, 5), "4 is missing");
        assert!(!coverage(-1, 3), "0 is missing");
        assert!(!coverage(i64::MIN, 3), "too wide to hold");
        assert!(!coverage(4, 3), "the copy is ahead of the history");
    }
}

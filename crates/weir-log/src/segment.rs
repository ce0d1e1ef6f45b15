//! One segment: a `.log` file of consecutive batches, plus its `.index` and `.timeindex`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use weir_batch::{BatchError, HEADER_LEN};

use crate::error::{LogError, Result};
use crate::index::SegIndex;
use crate::storage::{Storage, StorageFile, read_exact_at};

pub(crate) const LOG_EXT: &str = "log";
pub(crate) const INDEX_EXT: &str = "index";
pub(crate) const TIME_EXT: &str = "timeindex";

/// File name of a segment file: the base offset, zero-padded to 20 digits.
pub(crate) fn file_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

/// Parses `00000000000000000042.log` into `(42, "log")`.
pub(crate) fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if ![LOG_EXT, INDEX_EXT, TIME_EXT].contains(&ext) {
        return None;
    }
    let base: u64 = stem.parse().ok()?;
    // Offsets are i64 in record batches.
    (base <= i64::MAX as u64).then_some((base, ext))
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub time_path: PathBuf,
    pub log: Arc<dyn StorageFile>,
    storage: Arc<dyn Storage>,
    /// Open index files, while they are written. The indexes live in memory; their files are
    /// written at a checkpoint or a roll and closed after (`release_index_files`), so a log
    /// holds one file descriptor per segment, not three.
    index_files: Mutex<Option<IndexFiles>>,
    /// Bytes readers may read (committed data).
    pub visible_len: AtomicU64,
    /// Where this process's appends to the segment began: every batch from here to the end
    /// was CRC-checked as it was appended. `u64::MAX`: none appended yet.
    appended_from: AtomicU64,
    /// Every batch before this position was CRC-checked by a read in this process.
    read_verified: AtomicU64,
    pub index: RwLock<SegIndex>,
    /// An index file did not exist when the segment was opened.
    pub index_missing: bool,
    /// The index files exist (a new segment's are created by its first flush).
    index_files_exist: std::sync::atomic::AtomicBool,
}

/// The two index files of a segment.
#[derive(Debug, Clone)]
pub(crate) struct IndexFiles {
    pub offsets: Arc<dyn StorageFile>,
    pub times: Arc<dyn StorageFile>,
}

impl Segment {
    /// Opens (or creates) the three files of the segment at `base`.
    pub fn open(storage: &Arc<dyn Storage>, dir: &Path, base: u64, create: bool) -> Result<Self> {
        let log_path = dir.join(file_name(base, LOG_EXT));
        let index_path = dir.join(file_name(base, INDEX_EXT));
        let time_path = dir.join(file_name(base, TIME_EXT));
        let open = |p: &Path, create: bool| {
            storage
                .open_file(p, create)
                .map_err(|e| LogError::io("open", p, e))
        };
        let log = open(&log_path, create)?;
        if create {
            // A new segment's index files are created by its first flush (a checkpoint, a
            // roll, a close): creating a partition costs the file system two inodes fewer,
            // and an empty index has nothing to sync. Files left by an earlier segment at
            // this base are not its own.
            for p in [&index_path, &time_path] {
                match storage.remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io("remove", p, e)),
                }
            }
            let mut index = SegIndex::new();
            let generation = index.generation();
            index.mark_synced(generation);
            return Ok(Self::new(
                base, log_path, index_path, time_path, log, storage, index, true,
            ));
        }
        // Index files are derived data: when one is missing, recovery rebuilds the index
        // and the next flush creates the files.
        let mut missing = false;
        for p in [&index_path, &time_path] {
            match storage.open_file(p, false) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing = true,
                Err(e) => return Err(LogError::io("open", p, e)),
            }
        }
        let segment = Self::new(
            base,
            log_path,
            index_path,
            time_path,
            log,
            storage,
            SegIndex::new(),
            missing,
        );
        Ok(segment)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        base: u64,
        log_path: PathBuf,
        index_path: PathBuf,
        time_path: PathBuf,
        log: Arc<dyn StorageFile>,
        storage: &Arc<dyn Storage>,
        index: SegIndex,
        index_missing: bool,
    ) -> Self {
        Self {
            base,
            log_path,
            index_path,
            time_path,
            log,
            storage: storage.clone(),
            index_files: Mutex::new(None),
            visible_len: AtomicU64::new(0),
            appended_from: AtomicU64::new(u64::MAX),
            read_verified: AtomicU64::new(0),
            index: RwLock::new(index),
            index_missing,
            index_files_exist: std::sync::atomic::AtomicBool::new(!index_missing),
        }
    }

    pub fn visible_len(&self) -> u64 {
        self.visible_len.load(Ordering::Acquire)
    }

    pub fn set_visible_len(&self, len: u64) {
        self.visible_len.store(len, Ordering::Release);
    }

    /// A batch checked at append was written at `pos`, the end of the file.
    pub fn appended_at(&self, pos: u64) {
        self.appended_from.fetch_min(pos, Ordering::AcqRel);
    }

    /// The file was cut back to `len`: what reads verified beyond it is gone.
    pub fn truncated_to(&self, len: u64) {
        self.read_verified.fetch_min(len, Ordering::AcqRel);
    }

    /// A read checked every batch of `pos..end`.
    pub fn read_checked(&self, pos: u64, end: u64) {
        if pos <= self.read_verified.load(Ordering::Acquire) {
            self.read_verified.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// Whether every batch in `pos..end` was CRC-checked in this process already, as it was
    /// appended or by an earlier read: reading it again from the page cache skips the CRC.
    /// A segment opened from disk is checked on its first read; what a client checks itself
    /// (the native client, Java clients) is checked again there.
    pub fn checked(&self, pos: u64, end: u64) -> bool {
        end <= self.read_verified.load(Ordering::Acquire)
            || pos >= self.appended_from.load(Ordering::Acquire)
    }

    pub fn paths(&self) -> [&Path; 3] {
        [&self.log_path, &self.index_path, &self.time_path]
    }

    /// The index files, opened again if they were let go of.
    pub fn index_files(&self) -> Result<IndexFiles> {
        let mut files = self.index_files.lock();
        if let Some(f) = &*files {
            return Ok(f.clone());
        }
        let open = |p: &Path| {
            self.storage
                .open_file(p, true)
                .map_err(|e| LogError::io("open", p, e))
        };
        let f = IndexFiles {
            offsets: open(&self.index_path)?,
            times: open(&self.time_path)?,
        };
        *files = Some(f.clone());
        Ok(f)
    }

    /// Closes the index files of a sealed segment (they are opened again when needed).
    pub fn release_index_files(&self) {
        *self.index_files.lock() = None;
    }

    /// Writes index entries not yet in the index files, trims the files to the entries held in
    /// memory, and syncs them when `sync` is set.
    pub fn flush_indexes(&self, sync: bool) -> Result<()> {
        let (generation, offsets, off_from, off_len, times, time_from, time_len) = {
            let idx = self.index.read();
            if idx.files_synced() {
                drop(idx);
                if !self.index_files_exist.load(Ordering::Acquire) {
                    // Empty, matching an empty index. Not made durable by a directory sync:
                    // if a power loss takes them, recovery rebuilds the index (only time is
                    // at stake).
                    self.index_files()?;
                    self.index_files_exist.store(true, Ordering::Release);
                }
                return Ok(());
            }
            (
                idx.generation(),
                SegIndex::encode_offsets(&idx.offsets[idx.offsets_flushed..]),
                idx.offsets_flushed,
                idx.offsets.len(),
                SegIndex::encode_times(&idx.times[idx.times_flushed..]),
                idx.times_flushed,
                idx.times.len(),
            )
        };
        let write =
            |f: &dyn StorageFile, p: &Path, bytes: &[u8], from: usize, len: usize, entry: usize| {
                f.write_all_at(bytes, (from * entry) as u64)
                    .and_then(|()| f.set_len((len * entry) as u64))
                    .and_then(|()| if sync { f.sync_data() } else { Ok(()) })
                    .map_err(|e| LogError::io("write index", p, e))
            };
        let files = self.index_files()?;
        write(
            &*files.offsets,
            &self.index_path,
            &offsets,
            off_from,
            off_len,
            crate::index::OFFSET_ENTRY,
        )?;
        write(
            &*files.times,
            &self.time_path,
            &times,
            time_from,
            time_len,
            crate::index::TIME_ENTRY,
        )?;
        let mut idx = self.index.write();
        // Entries may have been dropped by a rollback meanwhile; never claim more than exist.
        idx.offsets_flushed = off_len.min(idx.offsets.len());
        idx.times_flushed = time_len.min(idx.times.len());
        if sync {
            idx.mark_synced(generation);
        }
        self.index_files_exist.store(true, Ordering::Release);
        Ok(())
    }

    /// The header `head` read at `pos`, which must be a batch starting at offset `expected` or
    /// later (a walk from batch to batch, checking that the offsets go up; compaction leaves
    /// gaps between batches).
    pub fn header_at(
        &self,
        pos: u64,
        head: &[u8],
        expected: u64,
    ) -> Result<weir_batch::BatchHeader> {
        let h = weir_batch::peek(head).map_err(|e| self.corrupt(pos, e.to_string()))?;
        if h.base_offset < expected as i64 || h.last_offset_delta < 0 {
            return Err(self.corrupt(
                pos,
                format!(
                    "batch base offset {} where {expected} or more was expected",
                    h.base_offset
                ),
            ));
        }
        Ok(h)
    }

    pub fn corrupt(&self, position: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            segment: self.base,
            position,
            reason: reason.into(),
        }
    }
}

/// A moving read window over a file, so that scans issue few large reads.
pub(crate) struct Window<'a> {
    file: &'a dyn StorageFile,
    file_len: u64,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW: usize = 1 << 20;

impl<'a> Window<'a> {
    pub fn new(file: &'a dyn StorageFile, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Bytes `[pos, pos + len)`, or `None` if the file ends before.
    pub fn get(&mut self, pos: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        if pos + len as u64 > self.file_len {
            return Ok(None);
        }
        let have = pos >= self.start && pos + len as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let n = (len.max(WINDOW) as u64).min(self.file_len - pos) as usize;
            self.buf.resize(n, 0);
            read_exact_at(self.file, &mut self.buf, pos)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }
}

/// Where a scan stopped.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Position after the last good batch.
    pub pos: u64,
    /// Offset after the last good batch.
    pub next_offset: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub fault: Option<String>,
    /// Bytes of zeros from `pos` to the end of the file, where the scan stopped without a
    /// fault: space a log at durability `always` filled with zeros ahead of its writes (see
    /// `Log::reserve`), not records.
    pub zero_tail: u64,
}

/// Whether `[pos, file_len)` holds only zero bytes.
fn zeros_to_end(window: &mut Window<'_>, mut pos: u64, file_len: u64) -> std::io::Result<bool> {
    while pos < file_len {
        let n = (file_len - pos).min(WINDOW as u64) as usize;
        match window.get(pos, n)? {
            Some(bytes) if bytes.iter().all(|&b| b == 0) => pos += n as u64,
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Walks batches from `pos` (whose first batch must have base offset `expected`) to the end of
/// the file, adding index entries to `idx`. With `verify`, checks every batch's CRC; without,
/// only headers and offset continuity. With `gaps` (a sealed segment, which compaction may
/// have rewritten), a batch may start past the offset the one before implies; without, a
/// base offset other than the implied one is a fault (a torn write may have damaged it: it
/// lies outside the CRC). Stops at the first fault.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan(
    seg: &Segment,
    file_len: u64,
    mut pos: u64,
    mut expected: u64,
    verify: bool,
    gaps: bool,
    idx: &mut SegIndex,
    interval: u32,
) -> Result<ScanEnd> {
    let mut window = Window::new(&*seg.log, file_len);
    let io = |e| LogError::io("read", &seg.log_path, e);
    let mut zero_tail = 0;
    let fault = loop {
        if pos == file_len {
            break None;
        }
        let head = window
            .get(pos, HEADER_LEN.min((file_len - pos) as usize))
            .map_err(io)?
            .unwrap_or_default();
        if head.iter().all(|&b| b == 0) && zeros_to_end(&mut window, pos, file_len).map_err(io)? {
            zero_tail = file_len - pos;
            break None;
        }
        let Some(head) = window.get(pos, HEADER_LEN).map_err(io)? else {
            break Some(format!(
                "{} trailing bytes are shorter than a batch header",
                file_len - pos
            ));
        };
        let h = match weir_batch::peek(head) {
            Ok(h) => h,
            Err(e) => break Some(e.to_string()),
        };
        let misplaced = if gaps {
            (h.base_offset as u64) < expected
        } else {
            h.base_offset as u64 != expected
        };
        if h.base_offset < 0 || misplaced {
            break Some(format!(
                "batch base offset {} where {}{expected} was expected",
                h.base_offset,
                if gaps { "at least " } else { "" }
            ));
        }
        if h.last_offset_delta < 0 {
            break Some(
                BatchError::BadRecordCount {
                    count: h.record_count,
                    last_offset_delta: h.last_offset_delta,
                }
                .to_string(),
            );
        }
        let len = h.total_len();
        let rel = h.base_offset as u64 - seg.base;
        let Ok(rel) = u32::try_from(rel) else {
            break Some("relative offset exceeds 32 bits".into());
        };
        if verify {
            let Some(bytes) = window.get(pos, len).map_err(io)? else {
                break Some(format!(
                    "batch of {len} bytes is cut short by the end of the file"
                ));
            };
            if let Err(e) = weir_batch::validate(bytes) {
                break Some(e.to_string());
            }
        } else if pos + len as u64 > file_len {
            break Some(format!(
                "batch of {len} bytes is cut short by the end of the file"
            ));
        }
        idx.on_batch(rel, pos as u32, len as u64, h.max_timestamp, interval);
        pos += len as u64;
        expected = h.next_offset() as u64;
    };
    Ok(ScanEnd {
        pos,
        next_offset: expected,
        fault,
        zero_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranges_checked_in_this_process_skip_the_crc() {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::MemStorage::new());
        storage.create_dir_all(Path::new("/d")).unwrap();
        let seg = Segment::open(&storage, Path::new("/d"), 0, true).unwrap();
        // Opened from disk: nothing is trusted.
        assert!(!seg.checked(0, 100));
        // Appends from 1000 on were checked as they were written.
        seg.appended_at(1000);
        seg.appended_at(1500);
        assert!(seg.checked(1000, 2000) && seg.checked(1200, 1300));
        assert!(!seg.checked(900, 1100), "straddles data from before");
        // Reads check a prefix from the start of the file, contiguously.
        seg.read_checked(200, 400);
        assert!(!seg.checked(0, 100), "not from the start: not counted");
        seg.read_checked(0, 300);
        seg.read_checked(300, 700);
        assert!(seg.checked(0, 700) && !seg.checked(0, 701));
        // Cut back (a failed write or sync): what lay beyond is no longer vouched for.
        seg.truncated_to(500);
        assert!(seg.checked(0, 500) && !seg.checked(400, 600));
    }

    #[test]
    fn names_round_trip_and_reject_strangers() {
        assert_eq!(file_name(42, LOG_EXT), "00000000000000000042.log");
        assert_eq!(parse_name("00000000000000000042.log"), Some((42, "log")));
        assert_eq!(
            parse_name("00000000000000000042.timeindex"),
            Some((42, "timeindex"))
        );
        assert_eq!(parse_name("42.log"), None);
        assert_eq!(parse_name("checkpoint"), None);
        assert_eq!(parse_name("0000000000000000004x.log"), None);
        assert_eq!(
            parse_name("00000000000000000042.log.bak"),
            None,
            "not ours: left alone"
        );
        assert_eq!(
            parse_name("99999999999999999999.log"),
            None,
            "beyond i64::MAX"
        );
    }
}

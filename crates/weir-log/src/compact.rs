//! Compaction: the sealed segments of a log keep only the latest record of each key.
//!
//! A pass ([`Log::compact`]):
//! 1. Takes the *cleanable* segments: sealed, wholly below the segment of the stored recovery
//!    point (so recovery's strict check of the unsynced tail never meets a gap), and old enough
//!    (`min_lag_ms`, by each segment's largest timestamp). The rest is left alone.
//! 2. Builds a key map over the *dirty* part, from the clean point (where the last pass
//!    stopped) to the end of the cleanable segments: for each key (an xxh3 128-bit hash of
//!    it, as Kafka keeps an MD5), the offset of its last record there. The map has a memory
//!    budget; when it is full the pass maps only up to there.
//! 3. Rewrites each cleanable segment below the mapped end that has something to drop, oldest
//!    first, into `NNN.log.cleaned`: a record goes when a later record of its key is in the
//!    map, and a tombstone (null value) goes when it lies in the part cleaned before and its
//!    batch is older than `delete_retention_ms`. Batches keep their base offset and last
//!    offset delta (the offsets of what is left do not change; gaps appear, as in Kafka); an
//!    emptied batch goes; keyless records and control batches stay.
//! 4. Swaps each rewritten segment in: its index files are removed (directory synced), the
//!    cleaned file is renamed over the segment (directory synced), new index files written. A
//!    crash before the rename leaves the old segment (its indexes are rebuilt on open), after
//!    it the new one (likewise); a leftover `.cleaned` file is removed on open. A segment left
//!    empty is removed whole, except the first: it stays, empty, so the log start never moves.
//! 5. Stores the new clean point in the `compaction` file (written aside, synced, renamed).
//!    A crash before that only means the next pass redoes work: a clean segment is rewritten
//!    only if it has something to drop.
//!
//! Older records go before newer ones (segments are rewritten in order), so a reader never sees
//! a key come back: a tombstone is dropped only after every older record of its key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use weir_batch::{HEADER_LEN, Retained};

use crate::error::{LogError, Result};
use crate::index::SegIndex;
use crate::log::Log;
use crate::segment::{self, Segment, Window};

/// The file holding the clean point.
pub(crate) const FILE: &str = "compaction";
const TMP_FILE: &str = "compaction.tmp";
/// Suffix of a segment being rewritten.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
const MAGIC: &[u8; 4] = b"WCMP";
const VERSION: u16 = 1;
const LEN: usize = 20;
/// Bytes a key takes in the map: its 16-byte hash, an 8-byte offset, the table's control
/// byte, with room for the table's load factor.
pub const KEY_MAP_ENTRY_BYTES: usize = 32;
/// Bytes written to the cleaned file at a time.
const WRITE_CHUNK: usize = 1 << 20;
/// The cleaned file is synced each time this much more was written, so that its data goes to
/// the disk at the pass's pace, not in one burst at the end: a burst of a whole segment queued
/// ahead of producers' own syncs is what raised their latency while a pass ran.
const SYNC_EVERY: u64 = 4 << 20;

/// The settings of a pass; Kafka's topic configurations of the same names.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Now, in ms since the Unix epoch.
    pub now_ms: i64,
    /// `delete.retention.ms`: how long a tombstone stays after its batch's timestamp, once it
    /// lies in the cleaned part of the log.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: a segment is compacted only once its newest timestamp is at
    /// least this old.
    pub min_lag_ms: i64,
    /// Memory for the key map, in bytes ([`KEY_MAP_ENTRY_BYTES`] per key).
    pub key_map_bytes: usize,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub segments_rewritten: usize,
    pub segments_removed: usize,
    /// Bytes of the rewritten and removed segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Bytes read and written by the pass.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// The clean point after the pass: every record below it was compacted against every
    /// later record below it.
    pub clean_to: u64,
}

/// How much of a log is cleaned and how much is dirty, for deciding when a pass is due
/// (`min.cleanable.dirty.ratio`, `max.compaction.lag.ms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionState {
    pub clean_to: u64,
    /// Bytes of sealed segments below the clean point.
    pub clean_bytes: u64,
    /// Bytes of cleanable segments at or above it.
    pub dirty_bytes: u64,
    /// The largest timestamp of the first dirty segment's first indexed batches (about when
    /// the oldest dirty record was written), if there is a dirty segment.
    pub first_dirty_timestamp: Option<i64>,
}

impl CompactionState {
    /// `dirty / (clean + dirty)`; 0 for an empty log.
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

fn key_hash(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

fn encode_clean_point(offset: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(LEN);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&offset.to_be_bytes());
    let crc = crc_fast::crc32_iscsi(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    b
}

fn decode_clean_point(b: &[u8]) -> Option<u64> {
    if b.len() != LEN || &b[..4] != MAGIC || b[4..6] != VERSION.to_be_bytes() {
        return None;
    }
    let crc = u32::from_be_bytes(b[16..20].try_into().ok()?);
    (crc_fast::crc32_iscsi(&b[..16]) == crc)
        .then(|| u64::from_be_bytes(b[8..16].try_into().expect("8")))
}

impl Log {
    /// The clean point stored by the last pass (0 when none was, or the file is damaged: the
    /// next pass then maps the whole log).
    fn clean_point(&self) -> Result<u64> {
        let path = self.dir.join(FILE);
        let file = match self.storage.open_file(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(LogError::io("open", &path, e)),
        };
        let len = file.len().map_err(|e| LogError::io("stat", &path, e))?;
        if len != LEN as u64 {
            tracing::warn!(path = %path.display(), len, "compaction file damaged; the next pass maps the whole log");
            return Ok(0);
        }
        let bytes = file
            .read_vec_at(LEN, 0)
            .map_err(|e| LogError::io("read", &path, e))?;
        Ok(decode_clean_point(&bytes).unwrap_or_else(|| {
            tracing::warn!(path = %path.display(), "compaction file damaged; the next pass maps the whole log");
            0
        }))
    }

    fn store_clean_point(&self, offset: u64) -> Result<()> {
        let tmp = self.dir.join(TMP_FILE);
        let io = |op, e| LogError::io(op, &tmp, e);
        let f = self
            .storage
            .open_file(&tmp, true)
            .map_err(|e| io("open", e))?;
        f.set_len(0).map_err(|e| io("truncate", e))?;
        f.write_all_at(&encode_clean_point(offset), 0)
            .map_err(|e| io("write", e))?;
        f.sync_data().map_err(|e| io("fdatasync", e))?;
        drop(f);
        self.storage
            .rename(&tmp, &self.dir.join(FILE))
            .map_err(|e| io("rename", e))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("sync directory", &self.dir, e))
    }

    /// The segments a pass may rewrite (oldest first), and the offset where they end.
    fn cleanable(&self, now_ms: i64, min_lag_ms: i64) -> Result<(Vec<Arc<Segment>>, u64, u64)> {
        let v = self.view.read();
        if v.closed {
            return Err(LogError::Closed);
        }
        let recovery_segment = self
            .checkpoint_segment
            .load(std::sync::atomic::Ordering::Acquire);
        let mut out = Vec::new();
        let mut end = v.segments.first().map_or(0, |s| s.base);
        for pair in v.segments.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            let young = seg.index.read().max_timestamp > now_ms.saturating_sub(min_lag_ms);
            if next.base > recovery_segment || young {
                break;
            }
            out.push(seg.clone());
            end = next.base;
        }
        Ok((out, end, v.log_start))
    }

    /// How much of the log is clean and how much dirty, for deciding whether a pass is due.
    pub fn compaction_state(&self, now_ms: i64, min_lag_ms: i64) -> Result<CompactionState> {
        let clean_to = self.clean_point()?;
        let (segments, cleanable_end, _) = self.cleanable(now_ms, min_lag_ms)?;
        let mut s = CompactionState {
            clean_to,
            ..CompactionState::default()
        };
        for (i, seg) in segments.iter().enumerate() {
            let end = segments.get(i + 1).map_or(cleanable_end, |n| n.base);
            if end <= clean_to {
                s.clean_bytes += seg.visible_len();
            } else {
                s.dirty_bytes += seg.visible_len();
                if s.first_dirty_timestamp.is_none() {
                    s.first_dirty_timestamp = seg.index.read().times.first().map(|t| t.ts);
                }
            }
        }
        Ok(s)
    }

    /// One compaction pass (see the module documentation). Blocks on disk I/O; `throttle` is
    /// called with the bytes read or written as the pass goes, and may sleep to bound the
    /// pass's I/O rate. One pass at a time runs on a log; appends and reads go on meanwhile.
    pub fn compact(
        &self,
        opts: &CompactOptions,
        throttle: &mut dyn FnMut(u64),
    ) -> Result<CompactReport> {
        let _pass = self.compaction.lock();
        let clean_to = self.clean_point()?;
        let (segments, cleanable_end, log_start) = self.cleanable(opts.now_ms, opts.min_lag_ms)?;
        let dirty_start = clean_to.max(log_start);
        let mut report = CompactReport {
            clean_to,
            ..CompactReport::default()
        };
        if dirty_start >= cleanable_end {
            return Ok(report);
        }
        let (map, map_end) = self.map_keys(
            &segments,
            dirty_start,
            cleanable_end,
            opts,
            throttle,
            &mut report,
        )?;
        if map_end <= dirty_start {
            return Ok(report);
        }
        for (i, seg) in segments.iter().enumerate() {
            if seg.base >= map_end {
                break;
            }
            let seg_end = segments.get(i + 1).map_or(cleanable_end, |n| n.base);
            if seg_end <= log_start {
                continue;
            }
            let cut = Cut {
                dirty_start,
                map_end,
                seg_end,
            };
            if let Err(e) = self.clean_segment(seg, &map, cut, opts, throttle, &mut report) {
                // Not renamed yet, or never: nothing refers to it.
                let _ = self.storage.remove_file(&cleaned_path(seg));
                return Err(e);
            }
        }
        self.store_clean_point(map_end)?;
        report.clean_to = map_end;
        Ok(report)
    }

    /// The last offset of each key in `[from, to)`, and where the map stops (before `to` when
    /// the budget ran out; always after at least one batch).
    fn map_keys(
        &self,
        segments: &[Arc<Segment>],
        from: u64,
        to: u64,
        opts: &CompactOptions,
        throttle: &mut dyn FnMut(u64),
        report: &mut CompactReport,
    ) -> Result<(HashMap<u128, u64, foldhash::fast::FixedState>, u64)> {
        let capacity = (opts.key_map_bytes / KEY_MAP_ENTRY_BYTES).max(1);
        let mut map: HashMap<u128, u64, foldhash::fast::FixedState> = HashMap::default();
        for seg in segments {
            let mut full_at = None;
            let mut mapped_any = false;
            let seg_end_reached = for_each_batch(self, seg, throttle, report, |batch, h| {
                if (h.next_offset() as u64) <= from {
                    return Ok(true);
                }
                if h.base_offset as u64 >= to {
                    return Ok(false);
                }
                if h.is_control() {
                    return Ok(true);
                }
                let (header, section) =
                    weir_batch::payload(batch).map_err(|e| LogError::Corrupt {
                        segment: seg.base,
                        position: 0,
                        reason: e.to_string(),
                    })?;
                // New keys of this batch, counted before any is added, so that a batch is
                // mapped whole or not at all.
                let records: Vec<_> = weir_batch::Records::with_payload(header, &section)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| LogError::Corrupt {
                        segment: seg.base,
                        position: 0,
                        reason: e.to_string(),
                    })?;
                let new_keys = records
                    .iter()
                    .filter_map(|r| r.key)
                    .filter(|k| !map.contains_key(&key_hash(k)))
                    .count();
                if map.len() + new_keys > capacity && (mapped_any || !map.is_empty()) {
                    full_at = Some(h.base_offset as u64);
                    return Ok(false);
                }
                for r in &records {
                    if let Some(k) = r.key
                        && r.offset as u64 >= from
                    {
                        map.insert(key_hash(k), r.offset as u64);
                    }
                }
                mapped_any = true;
                Ok(true)
            })?;
            if let Some(at) = full_at {
                tracing::debug!(dir = %self.dir.display(), keys = map.len(), at, "compaction key map full; mapping up to there");
                return Ok((map, at.max(from)));
            }
            if !seg_end_reached {
                break;
            }
        }
        Ok((map, to))
    }

    /// Rewrites `seg` without what the pass drops, and swaps it in; leaves it be when nothing
    /// would go.
    #[allow(clippy::too_many_arguments)]
    fn clean_segment(
        &self,
        seg: &Arc<Segment>,
        map: &HashMap<u128, u64, foldhash::fast::FixedState>,
        cut: Cut,
        opts: &CompactOptions,
        throttle: &mut dyn FnMut(u64),
        report: &mut CompactReport,
    ) -> Result<()> {
        let Cut {
            dirty_start,
            map_end,
            seg_end,
        } = cut;
        let keep = |r: &weir_batch::Record<'_>, batch_ts: i64, tombstones: &mut u64| -> bool {
            let offset = r.offset as u64;
            if offset >= map_end {
                return true;
            }
            let Some(key) = r.key else { return true };
            if map.get(&key_hash(key)).is_some_and(|&last| last > offset) {
                return false;
            }
            let expired = offset < dirty_start
                && batch_ts.saturating_add(opts.delete_retention_ms) < opts.now_ms;
            if r.value.is_none() && expired {
                *tombstones += 1;
                return false;
            }
            true
        };
        // A first walk says whether anything goes, without writing.
        let mut drops = false;
        let mut counted = 0u64;
        for_each_batch(self, seg, throttle, report, |batch, h| {
            if h.is_control() || (h.base_offset as u64) >= map_end {
                return Ok(true);
            }
            let kept = weir_batch::retain(batch, |r| keep(r, h.max_timestamp, &mut counted))
                .map_err(|e| seg.corrupt(0, e.to_string()))?;
            drops = kept != Retained::All;
            Ok(!drops)
        })?;
        if !drops {
            return Ok(());
        }
        let cleaned_path = cleaned_path(seg);
        let io = |op: &'static str, e| LogError::io(op, &cleaned_path, e);
        let out = self
            .storage
            .open_file(&cleaned_path, true)
            .map_err(|e| io("create", e))?;
        out.set_len(0).map_err(|e| io("truncate", e))?;
        let mut idx = SegIndex::new();
        let mut pending: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
        let mut written = 0u64;
        let (mut removed, mut tombstones) = (0u64, 0u64);
        let interval = self.config.index_interval_bytes;
        let flush = |pending: &mut Vec<u8>, written: &mut u64, throttle: &mut dyn FnMut(u64)| {
            if pending.is_empty() {
                return Ok(());
            }
            throttle(pending.len() as u64);
            out.write_all_at(pending, *written)
                .map_err(|e| LogError::io("write", &cleaned_path, e))?;
            *written += pending.len() as u64;
            pending.clear();
            Ok::<_, LogError>(())
        };
        let mut bytes_written = 0u64;
        let mut bytes_read = 0u64;
        let mut synced = 0u64;
        for_each_batch(
            self,
            seg,
            &mut |_| {},
            &mut CompactReport::default(),
            |batch, h| {
                throttle(batch.len() as u64);
                bytes_read += batch.len() as u64;
                let kept = if h.is_control() || (h.base_offset as u64) >= map_end {
                    Retained::All
                } else {
                    let before = h.record_count.max(0) as u64;
                    let r =
                        weir_batch::retain(batch, |r| keep(r, h.max_timestamp, &mut tombstones))
                            .map_err(|e| seg.corrupt(0, e.to_string()))?;
                    removed += match &r {
                        Retained::All => 0,
                        Retained::Nothing => before,
                        Retained::Some(b) => {
                            before - weir_batch::peek(b).map_or(0, |h| h.record_count.max(0) as u64)
                        }
                    };
                    r
                };
                let bytes: &[u8] = match &kept {
                    Retained::All => batch,
                    Retained::Nothing => return Ok(true),
                    Retained::Some(b) => b,
                };
                let pos = written + pending.len() as u64;
                let rel = u32::try_from(h.base_offset as u64 - seg.base)
                    .map_err(|_| seg.corrupt(0, "relative offset exceeds 32 bits"))?;
                idx.on_batch(
                    rel,
                    pos as u32,
                    bytes.len() as u64,
                    h.max_timestamp,
                    interval,
                );
                pending.extend_from_slice(bytes);
                bytes_written += bytes.len() as u64;
                if pending.len() >= WRITE_CHUNK {
                    flush(&mut pending, &mut written, throttle)?;
                    if written - synced >= SYNC_EVERY {
                        out.sync_data().map_err(|e| io("fdatasync", e))?;
                        synced = written;
                    }
                }
                Ok(true)
            },
        )?;
        flush(&mut pending, &mut written, throttle)?;
        out.sync_data().map_err(|e| io("fdatasync", e))?;
        drop(out);
        idx.seal();
        report.bytes_written += bytes_written;
        report.bytes_read += bytes_read;

        // The swap, under leadership: retention, delete-records and close wait meanwhile.
        let leader = self.lead();
        let (present, first) = {
            let v = self.view.read();
            let present = !v.closed && v.segments.iter().any(|s| Arc::ptr_eq(s, seg));
            (
                present,
                v.segments.first().is_some_and(|s| Arc::ptr_eq(s, seg)),
            )
        };
        if !present {
            drop(leader);
            let _ = self.storage.remove_file(&cleaned_path);
            return Ok(());
        }
        let before = seg.visible_len();
        seg.release_index_files();
        for p in [&seg.index_path, &seg.time_path] {
            match self.storage.remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("remove", p, e)),
            }
        }
        self.sync_dir()?;
        if written == 0 && !first {
            // Nothing left: the segment goes whole. Not the first one: it stays, empty, so
            // that the log start does not move (as in Kafka, compaction never moves it): a
            // consumer positioned in what was compacted away reads on from the next record
            // instead of being told its offset is out of range (and resetting).
            self.storage
                .remove_file(&cleaned_path)
                .map_err(|e| io("remove", e))?;
            self.storage
                .remove_file(&seg.log_path)
                .map_err(|e| LogError::io("remove", &seg.log_path, e))?;
            self.sync_dir()?;
            let mut v = self.view.write();
            v.hot.drop_before(seg_end);
            v.segments.retain(|s| !Arc::ptr_eq(s, seg));
            report.segments_removed += 1;
        } else {
            self.storage
                .rename(&cleaned_path, &seg.log_path)
                .map_err(|e| io("rename", e))?;
            self.sync_dir()?;
            let fresh = Segment::open(&self.storage, &self.dir, seg.base, false)?;
            fresh.set_visible_len(written);
            *fresh.index.write() = idx;
            fresh.flush_indexes(true)?;
            fresh.release_index_files();
            let fresh = Arc::new(fresh);
            let mut v = self.view.write();
            v.hot.drop_before(seg_end);
            if let Some(slot) = v.segments.iter_mut().find(|s| Arc::ptr_eq(s, seg)) {
                *slot = fresh;
            }
            report.segments_rewritten += 1;
        }
        drop(leader);
        report.bytes_before += before;
        report.bytes_after += written;
        report.records_removed += removed;
        report.tombstones_removed += tombstones;
        Ok(())
    }
}

/// Where a pass cuts the log: the part cleaned before (below `dirty_start`), the part mapped
/// (below `map_end`), and where the segment being rewritten ends.
#[derive(Debug, Clone, Copy)]
struct Cut {
    dirty_start: u64,
    map_end: u64,
    seg_end: u64,
}

/// Where `seg` is rewritten before it is swapped in.
fn cleaned_path(seg: &Segment) -> PathBuf {
    let mut p = seg.log_path.clone().into_os_string();
    p.push(CLEANED_SUFFIX);
    PathBuf::from(p)
}

/// Calls `f` with each whole batch of `seg` and its header, in order, until it returns
/// `Ok(false)`. Returns whether the walk reached the end of the segment.
fn for_each_batch(
    log: &Log,
    seg: &Segment,
    throttle: &mut dyn FnMut(u64),
    report: &mut CompactReport,
    mut f: impl FnMut(&[u8], &weir_batch::BatchHeader) -> Result<bool>,
) -> Result<bool> {
    let len = seg.visible_len();
    let mut window = Window::new(&*seg.log, len);
    let io = |e| LogError::io("read", &seg.log_path, e);
    let mut pos = 0u64;
    let mut expected = seg.base;
    while pos < len {
        // A pass stops when the log closes (at shutdown) rather than hold it up.
        if log.view.read().closed {
            return Err(LogError::Closed);
        }
        let head = window
            .get(pos, HEADER_LEN)
            .map_err(io)?
            .ok_or_else(|| seg.corrupt(pos, "a batch header overruns the segment"))?;
        let h = seg.header_at(pos, head, expected)?;
        let total = h.total_len();
        let batch = window
            .get(pos, total)
            .map_err(io)?
            .ok_or_else(|| seg.corrupt(pos, "a batch overruns the segment"))?;
        throttle(total as u64);
        report.bytes_read += total as u64;
        if !f(batch, &h)? {
            return Ok(false);
        }
        pos += total as u64;
        expected = h.next_offset() as u64;
    }
    Ok(true)
}

/// Removes `NNN.log.cleaned` files a crash left (recovery calls it with each file name).
pub(crate) fn is_leftover(name: &str) -> bool {
    name.strip_suffix(CLEANED_SUFFIX)
        .and_then(segment::parse_name)
        .is_some()
        || name == TMP_FILE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clean_point_round_trips_and_damage_reads_as_none() {
        let b = encode_clean_point(12_345);
        assert_eq!(decode_clean_point(&b), Some(12_345));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert_eq!(decode_clean_point(&bad), None, "byte {i}");
        }
        assert_eq!(decode_clean_point(&b[..10]), None);
        assert!(is_leftover("00000000000000000042.log.cleaned"));
        assert!(is_leftover("compaction.tmp"));
        assert!(!is_leftover("00000000000000000042.log"));
        assert!(!is_leftover("notes.cleaned"));
    }
}

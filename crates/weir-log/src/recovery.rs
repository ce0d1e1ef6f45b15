//! Opening a log: finding segments, trusting what the checkpoint vouches for, verifying the
//! rest, truncating at the first torn or corrupt byte and rebuilding indexes.
//!
//! Cost: segments wholly before the recovery point are not read beyond a sanity check of their
//! index (one header read each). Only bytes after the recovery point are read and checksummed,
//! and the recovery point trails the synced end of the log by at most
//! `checkpoint_interval_bytes` (or one segment under `Durability::Never`).

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use weir_batch::HEADER_LEN;

use crate::checkpoint::{self, Checkpoint};
use crate::config::LogConfig;
use crate::error::{LogError, Result};
use crate::hot::HotTail;
use crate::index::{OFFSET_ENTRY, SegIndex, TIME_ENTRY};
use crate::log::{CheckpointFile, Limits, Log, Point, RecoveryReport, View, Writer};
use crate::segment::{self, LOG_EXT, Segment, scan};
use crate::storage::{FileStorage, Storage, StorageFile, read_exact_at};

impl Log {
    /// Opens (creating if needed) the log in `dir` on the real file system, recovering from a
    /// crash if the previous run did not close it.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Self::open_with(Arc::new(FileStorage), dir, config)
    }

    /// Like [`Log::open`], on the given storage.
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<Log> {
        config.validate()?;
        let started = Instant::now();
        let dir = dir.as_ref().to_path_buf();
        let (segments, report, log_start, end, ckpt_file) = recover(&storage, &dir, &config)?;
        let active = segments
            .last()
            .expect("recovery leaves at least one segment")
            .clone();
        let end_point = Point {
            offset: end.0,
            segment: active.base,
            pos: end.1,
        };
        let log = Log {
            dir,
            storage,
            config: config.clone(),
            writer: Mutex::new(Writer {
                active: active.clone(),
                write_pos: end.1,
                next_offset: end.0,
                created: Instant::now(),
                synced: end_point,
                pending: Default::default(),
                needs_repair: false,
                reserved_to: end.1,
                // What the checkpoint on disk does not cover yet counts towards the next.
                bytes_since_checkpoint: if ckpt_file.current {
                    report.scanned_bytes
                } else {
                    0
                },
                last_sync: Instant::now(),
                closed: false,
            }),
            view: RwLock::new(View {
                segments,
                hwm: end.0,
                log_start,
                hot: HotTail::new(config.hot_tail_bytes),
                closed: false,
            }),
            syncs: Arc::default(),
            recovery: report,
            truncation_count: std::sync::atomic::AtomicU64::new(0),
            limits: Mutex::new(Limits::of(&config)),
            compaction: Mutex::new(()),
            // The checkpoint on disk, when it stays, names the active segment (or is absent,
            // and the log has one segment).
            checkpoint_segment: std::sync::atomic::AtomicU64::new(if ckpt_file.current {
                active.base
            } else {
                0
            }),
            checkpoint_file: Mutex::new(ckpt_file),
        };
        // A log created just now has no checkpoint and nothing to vouch for: without one,
        // recovery verifies it from its start, which is where it begins anyway. After an
        // unclean stop the checkpoint may still hold (`CheckpointFile::current`).
        if !log.recovery.created && !ckpt_file.current {
            let leader = log.lead();
            // From here on the previous clean-shutdown flag must not be trusted.
            let log_start = log.view.read().log_start;
            log.write_checkpoint(&leader, &active, end_point, false, log_start)?;
            drop(leader);
        }
        let r = &log.recovery;
        if r.truncated_bytes == 0 && r.removed_segments == 0 {
            // An unclean stop that cut nothing is the common case after a kill; the broker
            // counts them in one line rather than one per partition.
            tracing::debug!(dir = %log.dir.display(), clean = r.clean_shutdown, scanned_bytes = r.scanned_bytes, high_watermark = end.0, "log opened");
        } else {
            tracing::warn!(
                dir = %log.dir.display(),
                clean = r.clean_shutdown,
                scanned_bytes = r.scanned_bytes,
                truncated_bytes = r.truncated_bytes,
                removed_segments = r.removed_segments,
                rebuilt_indexes = r.rebuilt_indexes,
                reason = r.truncation_reason.as_deref().unwrap_or(""),
                elapsed_ms = started.elapsed().as_millis() as u64,
                high_watermark = end.0,
                "log recovered"
            );
        }
        Ok(log)
    }
}

/// The current checkpoint, the largest sequence number of a slot that is intact (whether
/// or not its checkpoint makes sense: the next one must go past it), and whether the file
/// exists.
fn read_checkpoint(storage: &dyn Storage, dir: &Path) -> Result<(Option<Checkpoint>, u64, bool)> {
    let path = dir.join(checkpoint::FILE);
    let file = match storage.open_file(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, 0, false)),
        Err(e) => return Err(LogError::io("open", &path, e)),
    };
    let len = file.len().map_err(|e| LogError::io("stat", &path, e))?;
    if len > checkpoint::MAX_FILE {
        // Rewritten in place it would stay too large and be ignored at every open: remove
        // it, and the next checkpoint starts a new file.
        tracing::warn!(path = %path.display(), len, "checkpoint is too large; removing it and verifying the whole log");
        drop(file);
        remove(storage, &path)?;
        return Ok((None, 0, false));
    }
    let mut buf = vec![0u8; len as usize];
    if let Err(e) = read_exact_at(&*file, &mut buf, 0) {
        tracing::warn!(path = %path.display(), error = %e, "checkpoint cannot be read; verifying the whole log");
        return Ok((None, 0, true));
    }
    match Checkpoint::decode_file(&buf) {
        Ok((c, seq))
            if c.recovery_offset >= c.recovery_segment
                && c.recovery_offset <= i64::MAX as u64
                && c.log_start <= i64::MAX as u64 =>
        {
            Ok((Some(c), seq, true))
        }
        Ok((c, seq)) => {
            tracing::warn!(path = %path.display(), checkpoint = ?c, "checkpoint is inconsistent; verifying the whole log");
            Ok((None, seq, true))
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "checkpoint is damaged; verifying the whole log");
            Ok((None, 0, true))
        }
    }
}

fn remove(storage: &dyn Storage, path: &Path) -> Result<()> {
    match storage.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io("remove", path, e)),
    }
}

fn read_all(file: &dyn StorageFile, path: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    let len = file.len().map_err(|e| LogError::io("stat", path, e))?;
    if len > cap {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    read_exact_at(file, &mut buf, 0).map_err(|e| LogError::io("read", path, e))?;
    Ok(Some(buf))
}

/// Loads the index files of `seg` if they are sane, keeping only entries for batches that
/// start before byte `limit`. Also says whether entries had to be dropped.
fn load_index(seg: &Segment, limit: u64) -> Result<Option<(SegIndex, bool)>> {
    if seg.index_missing {
        return Ok(None);
    }
    let file_len = seg
        .log
        .len()
        .map_err(|e| LogError::io("stat", &seg.log_path, e))?;
    // A batch takes at least HEADER_LEN bytes, which bounds the number of entries.
    let max_entries = file_len / HEADER_LEN as u64 + 1;
    let files = seg.index_files()?;
    let Some(offsets) = read_all(
        &*files.offsets,
        &seg.index_path,
        max_entries * OFFSET_ENTRY as u64,
    )?
    else {
        return Ok(None);
    };
    let Some(times) = read_all(
        &*files.times,
        &seg.time_path,
        max_entries * TIME_ENTRY as u64,
    )?
    else {
        return Ok(None);
    };
    let (Some(mut offsets), Some(times)) = (
        SegIndex::decode_offsets(&offsets, u64::MAX),
        SegIndex::decode_times(&times),
    ) else {
        return Ok(None);
    };
    let before = offsets.len();
    offsets.retain(|e| u64::from(e.pos) < limit);
    let dropped = offsets.len() != before;
    // The last entry must point at a batch header with the offset it names.
    if let Some(last) = offsets.last() {
        let mut head = [0u8; HEADER_LEN];
        if u64::from(last.pos) + HEADER_LEN as u64 > file_len {
            return Ok(None);
        }
        read_exact_at(&*seg.log, &mut head, u64::from(last.pos))
            .map_err(|e| LogError::io("read", &seg.log_path, e))?;
        match weir_batch::peek(&head) {
            Ok(h) if h.base_offset == (seg.base + u64::from(last.rel)) as i64 => {}
            _ => return Ok(None),
        }
    }
    let mut idx = SegIndex::new();
    idx.max_timestamp = times.last().map_or(i64::MIN, |t| t.ts);
    idx.offsets_flushed = offsets.len();
    idx.times_flushed = times.len();
    idx.offsets = offsets;
    idx.times = times;
    Ok(Some((idx, dropped)))
}

/// Cuts the zeros a log at durability `always` wrote ahead of its writes off the end of a
/// segment file of `len` bytes (not a truncation: they were never records); returns the
/// length left. Not synced: zeros that come back after a power loss are cut again.
fn cut_zero_tail(seg: &Segment, len: u64, zeros: u64) -> Result<u64> {
    if zeros == 0 {
        return Ok(len);
    }
    seg.log
        .set_len(len - zeros)
        .map_err(|e| LogError::io("truncate", &seg.log_path, e))?;
    tracing::debug!(segment = %seg.log_path.display(), zeros, "cut the zeros written ahead of the last batch");
    Ok(len - zeros)
}

type Recovered = (
    Vec<Arc<Segment>>,
    RecoveryReport,
    u64,
    (u64, u64),
    CheckpointFile,
);

fn recover(storage_arc: &Arc<dyn Storage>, dir: &Path, config: &LogConfig) -> Result<Recovered> {
    let storage: &dyn Storage = &**storage_arc;
    storage
        .create_dir_all(dir)
        .map_err(|e| LogError::io("create directory", dir, e))?;
    let names = storage
        .list_dir(dir)
        .map_err(|e| LogError::io("list directory", dir, e))?;
    let mut bases = BTreeSet::new();
    let mut others = Vec::new();
    for name in &names {
        match segment::parse_name(name) {
            Some((base, LOG_EXT)) => {
                bases.insert(base);
            }
            Some((base, ext)) => others.push((base, dir.join(name), ext)),
            None if name == checkpoint::TMP_FILE || crate::compact::is_leftover(name) => {
                remove(storage, &dir.join(name))?;
            }
            None => {}
        }
    }
    // Index files without their segment are leftovers of a deletion.
    for (base, path, _) in &others {
        if !bases.contains(base) {
            remove(storage, path)?;
        }
    }
    let (ckpt, seq, exists) = read_checkpoint(storage, dir)?;
    let mut ckpt_file = CheckpointFile {
        exists,
        seq,
        current: false,
    };
    let mut report = RecoveryReport {
        clean_shutdown: ckpt.is_some_and(|c| c.clean),
        ..RecoveryReport::default()
    };
    let log_start = ckpt.map_or(0, |c| c.log_start);
    let interval = config.index_interval_bytes;

    if bases.is_empty() {
        report.created = ckpt.is_none();
        let base = ckpt.map_or(0, |c| c.recovery_offset.max(c.log_start));
        if ckpt.is_some() {
            tracing::warn!(dir = %dir.display(), base, "checkpoint present but no segment files; starting empty");
        }
        let seg = Segment::open(storage_arc, dir, base, true)?;
        storage
            .sync_dir(dir)
            .map_err(|e| LogError::io("sync directory", dir, e))?;
        let seg = Arc::new(seg);
        return Ok((vec![seg], report, base, (base, 0), ckpt_file));
    }

    // Segments that hold only records below the log start are leftovers of a deletion.
    let ordered: Vec<u64> = bases.iter().copied().collect();
    let mut kept = Vec::new();
    for (i, &base) in ordered.iter().enumerate() {
        let wholly_below = ordered.get(i + 1).is_some_and(|&next| next <= log_start);
        if wholly_below {
            for ext in [LOG_EXT, crate::segment::INDEX_EXT, crate::segment::TIME_EXT] {
                remove(storage, &dir.join(segment::file_name(base, ext)))?;
            }
            report.removed_segments += 1;
        } else {
            kept.push(base);
        }
    }
    let mut segments = Vec::with_capacity(kept.len());
    for &base in &kept {
        segments.push(Segment::open(storage_arc, dir, base, false)?);
    }
    // An empty segment between two others is left over from a roll that failed half-way (a
    // roll only happens after the active segment received data). It claims offsets that live
    // in the segment before it: remove it. An empty first segment stays: compaction leaves the
    // first segment empty rather than removing it, so that the log start does not move.
    let mut i = 1;
    while i + 1 < segments.len() {
        let len = segments[i]
            .log
            .len()
            .map_err(|e| LogError::io("stat", &segments[i].log_path, e))?;
        if len == 0 {
            let stray = segments.remove(i);
            tracing::warn!(segment = %stray.log_path.display(), "removing empty segment left by an interrupted roll");
            for p in stray.paths() {
                remove(storage, p)?;
            }
            report.removed_segments += 1;
        } else {
            i += 1;
        }
    }

    // Where verification starts.
    let from_checkpoint =
        ckpt.is_some_and(|c| segments.iter().any(|s| s.base == c.recovery_segment));
    let (start_idx, start_pos, start_offset) = match ckpt.and_then(|c| {
        segments
            .iter()
            .position(|s| s.base == c.recovery_segment)
            .map(|i| (i, c))
    }) {
        Some((i, c)) => (i, c.recovery_position, c.recovery_offset),
        None => {
            if ckpt.is_some() {
                tracing::warn!(dir = %dir.display(), "recovery point names a missing segment; verifying the whole log");
            }
            (0, 0, segments[0].base)
        }
    };

    // Trusted segments: the checkpoint vouches for their data. Check their indexes, and hop the
    // few batch headers after the last index entry: that finds the segment's true end offset and
    // max timestamp, and proves the index reaches the end of the file.
    for (i, seg) in segments[..start_idx].iter().enumerate() {
        let len = seg
            .log
            .len()
            .map_err(|e| LogError::io("stat", &seg.log_path, e))?;
        let mut zeros = 0;
        let checked = match load_index(seg, len)? {
            Some((mut idx, false)) => {
                let floor = idx
                    .offsets
                    .last()
                    .copied()
                    .unwrap_or(crate::index::OffsetEntry { rel: 0, pos: 0 });
                let mut tail = SegIndex::new();
                let hop = scan(
                    seg,
                    len,
                    u64::from(floor.pos),
                    seg.base + u64::from(floor.rel),
                    false,
                    true,
                    &mut tail,
                    u32::MAX,
                )?;
                zeros = hop.zero_tail;
                let times_fit = idx
                    .times
                    .last()
                    .is_none_or(|t| tail.last_rel.is_some_and(|last| t.rel <= last));
                (hop.fault.is_none() && times_fit).then(|| {
                    idx.max_timestamp = idx.max_timestamp.max(tail.max_timestamp);
                    idx.last_rel = tail.last_rel;
                    (idx, hop.next_offset)
                })
            }
            _ => None,
        };
        let (idx, end_offset) = match checked {
            Some(ok) => ok,
            None => {
                report.rebuilt_indexes += 1;
                let mut idx = SegIndex::new();
                let end = scan(seg, len, 0, seg.base, false, true, &mut idx, interval)?;
                if let Some(fault) = &end.fault {
                    tracing::error!(segment = %seg.log_path.display(), position = end.pos, %fault, "sealed segment is damaged; records from here on are unreadable");
                }
                idx.seal();
                *seg.index.write() = idx;
                seg.flush_indexes(true)?;
                seg.set_visible_len(cut_zero_tail(seg, len, end.zero_tail)?);
                continue;
            }
        };
        *seg.index.write() = idx;
        seg.set_visible_len(cut_zero_tail(seg, len, zeros)?);
        let next_base = segments[i + 1].base;
        if end_offset > next_base {
            tracing::error!(segment = %seg.log_path.display(), end_offset, next_base, "sealed segment ends after the next one starts");
        } else if zeros > 0 && end_offset < next_base {
            // Zeros where records should be (durable data lost outside weir), not space a
            // roll left reserved: say so, as a damaged segment is.
            tracing::error!(segment = %seg.log_path.display(), end_offset, next_base, zeros, "sealed segment ends in zeros before the next one starts: records are missing");
        }
    }

    // The segment holding the recovery point, and every later one, are verified batch by batch.
    let mut expected = start_offset;
    let mut end: Option<(usize, u64)> = None; // (segment index, position) where the log ends
    let mut truncated_at: Option<(usize, u64)> = None;
    for (i, seg) in segments.iter().enumerate().skip(start_idx) {
        let len = seg
            .log
            .len()
            .map_err(|e| LogError::io("stat", &seg.log_path, e))?;
        if truncated_at.is_some() {
            break;
        }
        // Compaction never touches the recovery point's segment or later ones, so from there
        // on each segment starts where the one before ended. Without a checkpoint, earlier,
        // compacted segments are verified too: one may end before the next starts.
        let misplaced = if from_checkpoint {
            seg.base != expected
        } else {
            seg.base < expected
        };
        if i > start_idx && misplaced {
            report.truncation_reason = Some(format!(
                "segment {} starts at offset {} where {expected} was expected",
                seg.base, seg.base
            ));
            truncated_at = Some((i, 0));
            break;
        }
        let (mut from_pos, mut from_offset) = if i == start_idx {
            (start_pos, start_offset)
        } else {
            (0, seg.base)
        };
        let mut idx = SegIndex::new();
        if from_pos > 0 {
            match (from_pos <= len)
                .then(|| load_index(seg, from_pos))
                .transpose()?
            {
                Some(Some((loaded, _))) => {
                    idx = loaded;
                    let rel = (from_offset - seg.base) as u32;
                    idx.truncate(from_pos as u32, rel);
                    // Batches between the last index entry and the recovery point may hold a
                    // newer max timestamp than the time index: read their headers.
                    let floor = idx.lookup(rel);
                    let mut gap = SegIndex::new();
                    let hop = scan(
                        seg,
                        from_pos,
                        u64::from(floor.pos),
                        seg.base + u64::from(floor.rel),
                        false,
                        false,
                        &mut gap,
                        u32::MAX,
                    )?;
                    if hop.fault.is_some() || hop.next_offset != from_offset {
                        idx = SegIndex::new();
                        from_pos = 0;
                        from_offset = seg.base;
                        report.rebuilt_indexes += 1;
                    } else {
                        idx.max_timestamp = idx.max_timestamp.max(gap.max_timestamp);
                        idx.last_rel = gap.last_rel;
                    }
                }
                _ => {
                    if from_pos > len {
                        tracing::error!(segment = %seg.log_path.display(), len, recovery_position = from_pos, "segment is shorter than its recovery point: durable data was lost outside weir");
                    }
                    report.rebuilt_indexes += 1;
                    from_pos = 0;
                    from_offset = seg.base;
                }
            }
        }
        report.scanned_bytes += len.saturating_sub(from_pos);
        // The last segment (where torn writes happen) never has gaps.
        let gaps = !from_checkpoint && i + 1 < segments.len();
        let stop = scan(
            seg,
            len,
            from_pos,
            from_offset,
            true,
            gaps,
            &mut idx,
            interval,
        )?;
        *seg.index.write() = idx;
        cut_zero_tail(seg, len, stop.zero_tail)?;
        expected = stop.next_offset;
        end = Some((i, stop.pos));
        if let Some(fault) = stop.fault {
            report.truncation_reason = Some(format!(
                "segment {} at byte {}: {fault}",
                seg.base, stop.pos
            ));
            truncated_at = Some((i, stop.pos));
        }
    }

    // Cut the log at the fault: truncate that segment, remove every later one.
    let mut dir_changed = false;
    let keep_until = match truncated_at {
        Some((i, 0)) if i > start_idx && end.is_none_or(|(e, _)| e < i) => i, // whole segment bad
        Some((i, _)) => i + 1,
        None => segments.len(),
    };
    for seg in segments.drain(keep_until..) {
        report.removed_segments += 1;
        report.truncated_bytes += seg.log.len().unwrap_or(0);
        for p in seg.paths() {
            remove(storage, p)?;
        }
        dir_changed = true;
    }
    let (last_idx, end_pos) = end.filter(|(i, _)| *i < segments.len()).unwrap_or_else(|| {
        let last = segments.len() - 1;
        (last, segments[last].visible_len())
    });
    let active = &segments[last_idx];
    let len = active
        .log
        .len()
        .map_err(|e| LogError::io("stat", &active.log_path, e))?;
    if len > end_pos {
        report.truncated_bytes += len - end_pos;
        active
            .log
            .set_len(end_pos)
            .map_err(|e| LogError::io("truncate", &active.log_path, e))?;
        active
            .log
            .sync_data()
            .map_err(|e| LogError::io("fdatasync", &active.log_path, e))?;
    } else if let Err(e) = active.log.set_len(end_pos) {
        // Cutting to the same length gives back disk space reserved past the end before an
        // unclean stop (`LogConfig::preallocate_bytes`); only space is at stake.
        tracing::warn!(path = %active.log_path.display(), error = %e, "could not release disk space reserved past the end of a segment");
    }
    let next_offset = expected;
    let first_base = segments[0].base;
    let mut log_start = log_start.max(first_base);
    if log_start > next_offset {
        tracing::error!(dir = %dir.display(), log_start, next_offset, "log start offset beyond the end of the recovered log; lowering it");
        log_start = next_offset.max(first_base);
    }
    // After an unclean stop that cut nothing, the checkpoint on disk (or its absence, which
    // means "verify from the start") still tells the truth: leave it, and the indexes
    // rebuilt past it, for the next checkpoint to write and vouch for. Recovery then writes
    // no index and no checkpoint, which is what brings a server of thousands of partitions
    // back fast.
    // Only when recovery began in the active segment: compaction stays below the checkpoint's
    // segment, and should not wait for the next checkpoint to reach the sealed ones.
    // Nor when an index had to be rebuilt: verification may then have started before the
    // checkpoint's position, which no longer described the files.
    ckpt_file.current = !report.clean_shutdown
        && start_idx == last_idx
        && report.rebuilt_indexes == 0
        && report.truncated_bytes == 0
        && report.removed_segments == 0
        && !dir_changed
        && log_start == ckpt.map_or(0, |c| c.log_start);
    // What was read back from the page cache may never have reached the disk (a process
    // crash loses no page cache). It is published now, and readers may act on it: sync it.
    for seg in &segments[start_idx..] {
        seg.log
            .sync_data()
            .map_err(|e| LogError::io("fdatasync", &seg.log_path, e))?;
    }
    for seg in &segments[start_idx..] {
        let l = if seg.base == active.base {
            end_pos
        } else {
            seg.log
                .len()
                .map_err(|e| LogError::io("stat", &seg.log_path, e))?
        };
        seg.set_visible_len(l);
        if seg.base != active.base {
            seg.index.write().seal();
        }
        if !ckpt_file.current {
            seg.flush_indexes(true)?;
        }
    }
    if dir_changed || report.removed_segments > 0 {
        storage
            .sync_dir(dir)
            .map_err(|e| LogError::io("sync directory", dir, e))?;
    }
    // Indexes live in memory; their files are opened again when written (loading them for
    // recovery opened them).
    for seg in &segments {
        seg.release_index_files();
    }
    let segments: Vec<Arc<Segment>> = segments.into_iter().map(Arc::new).collect();
    Ok((
        segments,
        report,
        log_start,
        (next_offset, end_pos),
        ckpt_file,
    ))
}

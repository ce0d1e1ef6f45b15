//! The log: appends, group commit, reads, retention.
//!
//! Locks, and the order in which they may be taken:
//! 1. *leadership* (`sync.syncing`, a flag guarded by `sync` and waited on with `sync_cond`):
//!    held by whoever syncs, rolls, checkpoints, deletes segments or closes. One at a time.
//! 2. `writer`: the single writer's state. Held while a batch is written to the page cache.
//! 3. `view`: what readers see. Held only for short, non-blocking updates and snapshots.
//!
//! A thread holding a later lock never waits for an earlier one. The writer lock is never held
//! across an fsync of data (only across the rare roll, which holds leadership too).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::{Condvar, Mutex, RwLock};
use weir_batch::HEADER_LEN;

use crate::checkpoint::{self, Checkpoint};
use crate::config::{Durability, LogConfig};
use crate::error::{LogError, Result};
use crate::hot::HotTail;
use crate::segment::{self, Segment};
use crate::storage::{Storage, read_exact_at};

/// A position in the log: the offset of the next record, and where it would start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    pub offset: u64,
    pub segment: u64,
    pub pos: u64,
}

/// What `append` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset given to the first record of the batch.
    pub base_offset: u64,
    /// Offset given to the last record of the batch.
    pub last_offset: u64,
}

/// A batch written by [`Log::append_start`] and perhaps not yet durable.
#[derive(Debug)]
#[must_use = "an append is acknowledged only after append_wait"]
pub struct Appended {
    info: AppendInfo,
    slot: Option<Arc<Slot>>,
    truncations: u64,
}

impl Appended {
    /// The offsets the batch was given.
    pub fn info(&self) -> AppendInfo {
        self.info
    }

    /// How many times the log had dropped written data (after a failed write or sync) when
    /// this batch was written: pass it to [`Log::append_start_unless_truncated`] to write a
    /// later batch only if this one cannot have been dropped meanwhile.
    pub fn truncations(&self) -> u64 {
        self.truncations
    }

    /// Whether [`Log::append_wait`] has to wait for a sync (false: already acknowledged).
    pub fn needs_wait(&self) -> bool {
        self.slot.is_some()
    }
}

/// What [`Log::append_start_in_place`] did.
#[derive(Debug)]
#[must_use = "an append is acknowledged only after append_wait"]
pub enum InPlace {
    /// Written.
    Appended(Appended),
    /// Not written, since it would have blocked: the batch, to append off the async thread.
    WouldBlock(Bytes),
}

/// What `read` returns.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Whole record batches in offset order; each chunk holds one or more batches. Empty when
    /// the offset read is the high watermark.
    pub chunks: Vec<Bytes>,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// Oldest offset still in the log.
    pub log_start_offset: u64,
    /// Whether the data came from the in-memory hot tail.
    pub from_memory: bool,
}

impl ReadResult {
    /// Total bytes returned.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Whether nothing was returned.
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }
}

/// What opening a log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The log did not exist: opening created it.
    pub created: bool,
    /// The previous run closed the log cleanly.
    pub clean_shutdown: bool,
    /// Bytes whose batches were verified (CRC) during recovery.
    pub scanned_bytes: u64,
    /// Bytes removed from the end of the log because they were torn or corrupt.
    pub truncated_bytes: u64,
    /// Segments removed because they followed a truncation or lay below the log start.
    pub removed_segments: usize,
    /// Segments whose index files were rebuilt.
    pub rebuilt_indexes: usize,
    /// What was wrong where the log was truncated, if it was.
    pub truncation_reason: Option<String>,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start_offset: u64,
}

/// What a read found in one segment.
enum Found {
    Chunk(Bytes),
    /// The first batch is larger than the read's cap.
    TooLarge,
    /// Every batch of the segment ends before the offset.
    Beyond,
}

#[derive(Debug, Default)]
struct Slot(Mutex<Option<Result<()>>>);

#[derive(Debug)]
pub(crate) struct Pending {
    segment: Arc<Segment>,
    base: u64,
    next: u64,
    end_pos: u64,
    bytes: Bytes,
    slot: Arc<Slot>,
}

#[derive(Debug)]
pub(crate) struct Writer {
    pub active: Arc<Segment>,
    pub write_pos: u64,
    pub next_offset: u64,
    pub created: Instant,
    pub synced: Point,
    pub pending: VecDeque<Pending>,
    pub needs_repair: bool,
    /// The active segment has disk space reserved up to here (`LogConfig::preallocate_bytes`).
    pub reserved_to: u64,
    pub bytes_since_checkpoint: u64,
    pub last_sync: Instant,
    pub closed: bool,
}

#[derive(Debug)]
pub(crate) struct View {
    pub segments: Vec<Arc<Segment>>,
    pub hwm: u64,
    pub log_start: u64,
    pub hot: HotTail,
    pub closed: bool,
}

impl View {
    /// The segment that holds `offset` (the last one whose base is ≤ offset).
    fn segment_for(&self, offset: u64) -> Option<&Arc<Segment>> {
        let i = self.segments.partition_point(|s| s.base <= offset);
        i.checked_sub(1).map(|i| &self.segments[i])
    }
}

#[derive(Debug, Default)]
pub(crate) struct SyncState {
    syncing: bool,
    /// Tasks [`Log::poll_durable`] left waiting for the leader to finish: woken when it
    /// does, as the threads waiting on `cond` are.
    wakers: Vec<Waker>,
}

/// Leadership of the log's syncs. Shared (not a plain field) so that a [`Claim`] moved to
/// another thread can give leadership back if it is dropped unused.
#[derive(Debug, Default)]
pub(crate) struct Syncs {
    pub(crate) state: Mutex<SyncState>,
    pub(crate) cond: Condvar,
}

impl Syncs {
    /// Ends a leadership: wakes the threads and tasks that wait for it.
    fn release(&self) {
        let wakers = {
            let mut st = self.state.lock();
            st.syncing = false;
            self.cond.notify_all();
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// Leadership of the next sync, claimed by [`Log::poll_durable`] for a caller that runs the
/// sync elsewhere (a thread that may block): hand it to [`Log::lead_wait`]. Claiming it
/// there, not on that thread, keeps the other tasks woken with this one from each taking a
/// thread to lead. Dropped unused, it gives the leadership back.
#[derive(Debug)]
#[must_use = "the partition's syncs wait for this claim until it is used or dropped"]
pub struct Claim {
    appended: Option<Appended>,
    syncs: Option<Arc<Syncs>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(syncs) = self.syncs.take() {
            syncs.release();
        }
    }
}

/// What [`Log::poll_durable`] found.
#[derive(Debug)]
pub enum Durable {
    /// The batch is as durable as the policy promises, or failed to become so.
    Done(Result<AppendInfo>),
    /// Nobody was syncing: the caller now leads the next sync, with [`Log::lead_wait`]
    /// (which blocks).
    Lead(Claim),
    /// Another caller is syncing: the waker is woken when it is done; poll again then.
    Pending(Appended),
}

/// Segment bytes written before space is reserved ahead of writes: a partition written
/// rarely (thousands of them on one server, a batch each now and then) then appends on the
/// runtime's thread instead of handing each write to the blocking pool to reserve space.
const RESERVE_FROM: u64 = 64 << 10;

/// Most bytes a log at durability `always` fills with zeros ahead of its writes at a time
/// (see `Log::zero_fill`): the write that reserves waits for them.
const ZERO_FILL_BYTES: u64 = 1 << 20;

/// A partition's durable, append-only log of record batches.
///
/// One writer at a time appends (concurrent `append` calls are serialized internally and share
/// syncs); any number of threads read concurrently. All methods take `&self`; share a log
/// between threads with `Arc<Log>`. Methods block on disk I/O: call them from a blocking
/// context (`tokio::task::spawn_blocking` in async code).
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: LogConfig,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) view: RwLock<View>,
    pub(crate) syncs: Arc<Syncs>,
    pub(crate) recovery: RecoveryReport,
    /// Times written data was dropped after a failed write or sync. Changed only under the
    /// writer's lock; read without it (a segment roll holds that lock through fsyncs).
    pub(crate) truncation_count: AtomicU64,
    /// What of the configuration may change while the log is open ([`Log::set_limits`]).
    pub(crate) limits: Mutex<Limits>,
    /// Held by a compaction pass ([`Log::compact`]): one at a time. Taken before leadership.
    pub(crate) compaction: Mutex<()>,
    /// The segment of the recovery point last stored in the checkpoint file: compaction stays
    /// below it.
    pub(crate) checkpoint_segment: AtomicU64,
    /// The checkpoint file: whether it exists and the sequence number of its current slot.
    pub(crate) checkpoint_file: Mutex<CheckpointFile>,
}

/// What a log knows of its checkpoint file (see `checkpoint`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CheckpointFile {
    pub exists: bool,
    pub seq: u64,
    /// Recovery found that the checkpoint on disk still holds: opening writes none.
    pub current: bool,
}

/// The limits a topic's configuration may change on an open log: the largest batch accepted
/// and retention. (Durability, segment size and the rest are fixed at opening.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_batch_bytes: usize,
    pub retention_age: Option<Duration>,
    pub retention_bytes: Option<u64>,
}

impl Limits {
    pub fn of(config: &LogConfig) -> Self {
        Self {
            max_batch_bytes: config.max_batch_bytes,
            retention_age: config.retention_age,
            retention_bytes: config.retention_bytes,
        }
    }
}

/// Proof of leadership; released on drop.
pub(crate) struct Leader<'a>(pub(crate) &'a Log);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.0.syncs.release();
    }
}

impl Log {
    /// The directory holding this log's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration: the one the log was opened with, and the limits as they are now.
    pub fn config(&self) -> LogConfig {
        let limits = *self.limits.lock();
        LogConfig {
            max_batch_bytes: limits.max_batch_bytes,
            retention_age: limits.retention_age,
            retention_bytes: limits.retention_bytes,
            ..self.config.clone()
        }
    }

    /// Changes the limits of an open log: the next append is checked against the new largest
    /// batch size, the next retention pass applies the new retention.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock() = limits;
    }

    /// Changes how many bytes of its newest batches the log keeps in memory (its
    /// `hot_tail_bytes`); a smaller cap drops the oldest at once.
    pub fn set_hot_tail_cap(&self, bytes: usize) {
        self.view.write().hot.set_cap(bytes);
    }

    /// Bytes of batches the hot tail holds now.
    pub fn hot_tail_bytes(&self) -> usize {
        self.view.read().hot.bytes()
    }

    /// What opening the log found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Offset after the last committed (readable) record.
    pub fn high_watermark(&self) -> u64 {
        self.view.read().hwm
    }

    /// Oldest offset still readable.
    pub fn log_start_offset(&self) -> u64 {
        self.view.read().log_start
    }

    /// How many times the log has dropped written data (after a failed write or sync). A
    /// reader that kept what it read can tell by this whether the offsets it holds may since
    /// have been written again with other records.
    pub fn truncations(&self) -> u64 {
        self.truncation_count.load(Ordering::Acquire)
    }

    /// Bytes of all segment files (visible data).
    pub fn size_bytes(&self) -> u64 {
        self.view
            .read()
            .segments
            .iter()
            .map(|s| s.visible_len())
            .sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.view.read().segments.len()
    }

    pub(crate) fn lead(&self) -> Leader<'_> {
        let mut st = self.syncs.state.lock();
        while st.syncing {
            self.syncs.cond.wait(&mut st);
        }
        st.syncing = true;
        Leader(self)
    }

    /// Appends one record batch (Kafka record batch v2, uncompressed or compressed) and returns
    /// the offsets it was given. The batch is validated first (length, magic, CRC32C, record
    /// count); a malformed batch is rejected and nothing is written. The log writes the base
    /// offset into the batch; no other byte changes.
    ///
    /// Returns once the batch is as durable as the policy promises: after fdatasync for
    /// [`Durability::Always`] (shared with concurrent appenders), after the write otherwise.
    ///
    /// The batch is taken by value: a `Vec<u8>` or an unshared `Bytes` is not copied.
    pub fn append(&self, batch: impl Into<Bytes>) -> Result<AppendInfo> {
        let started = self.append_start(batch)?;
        self.append_wait(started)
    }

    /// The first half of [`Log::append`]: validates the batch, assigns its offsets and writes
    /// it, in the order calls arrive. Durability is awaited separately with
    /// [`Log::append_wait`], so a caller that pipelines appends (a connection with several
    /// produce requests in flight) can write the next batch while the previous one waits for
    /// its sync, and both share one fdatasync.
    pub fn append_start(&self, batch: impl Into<Bytes>) -> Result<Appended> {
        self.append_start_unless_truncated(batch, None)
    }

    /// [`Log::append_start`], refused with [`LogError::TruncatedSince`] (nothing written) when
    /// `since` is given and the log has dropped written data since the append that reported it
    /// as its [`Appended::truncations`]. A writer whose batches must follow each other with no
    /// hole (an idempotent producer's) uses it: when an earlier batch's sync fails, the log
    /// drops that batch, and a later one must not take its place.
    pub fn append_start_unless_truncated(
        &self,
        batch: impl Into<Bytes>,
        since: Option<u64>,
    ) -> Result<Appended> {
        match self.append_inner(batch.into(), since, false)? {
            InPlace::Appended(a) => Ok(a),
            InPlace::WouldBlock(_) => unreachable!("only an in-place append is turned back"),
        }
    }

    /// [`Log::append_start_unless_truncated`] for a caller that must not block (an async
    /// runtime's thread): the batch is written only if that takes no more than a write to the
    /// page cache. If the writer is busy, or the append would roll the segment (which syncs
    /// the sealed one), sync under an interval policy, reserve disk space, or repair a failed
    /// truncation, nothing is written and the batch comes back, to append off that thread.
    pub fn append_start_in_place(&self, batch: Bytes, since: Option<u64>) -> Result<InPlace> {
        self.append_inner(batch, since, true)
    }

    fn append_inner(&self, batch: Bytes, since: Option<u64>, in_place: bool) -> Result<InPlace> {
        let mut buf: BytesMut = batch
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let max_batch_bytes = self.limits.lock().max_batch_bytes;
        if buf.len() > max_batch_bytes {
            return Err(LogError::BatchTooLarge {
                size: buf.len(),
                max: max_batch_bytes,
            });
        }
        let header = weir_batch::validate(&buf)?;
        header.check_producer_batch()?;
        let len = buf.len() as u64;
        let count = u64::from(header.last_offset_delta as u32) + 1;

        let mut w = if in_place {
            match self.writer.try_lock() {
                Some(w) => w,
                None => return Ok(InPlace::WouldBlock(buf.freeze())),
            }
        } else {
            self.writer.lock()
        };
        if w.closed {
            return Err(LogError::Closed);
        }
        let interval_due = matches!(self.config.durability,
            Durability::Interval(every) if w.last_sync.elapsed() >= every);
        if in_place
            && (w.needs_repair
                || interval_due
                || self.should_roll(&w, len, count)
                || self.reserve_due(&w, w.write_pos + len))
        {
            return Ok(InPlace::WouldBlock(buf.freeze()));
        }
        if w.needs_repair {
            self.repair(&mut w)?;
        }
        if since.is_some_and(|t| t != self.truncations()) {
            return Err(LogError::TruncatedSince);
        }
        if w.next_offset + count > i64::MAX as u64 {
            return Err(LogError::OffsetOverflow);
        }
        if self.should_roll(&w, len, count) {
            drop(w);
            let leader = self.lead();
            w = self.writer.lock();
            if w.closed {
                return Err(LogError::Closed);
            }
            if self.should_roll(&w, len, count) {
                self.roll(&mut w, &leader)?;
            }
            drop(leader);
        }
        let base = w.next_offset;
        weir_batch::set_base_offset(&mut buf, base as i64);
        let bytes = buf.freeze();
        let pos = w.write_pos;
        let segment = w.active.clone();
        self.reserve(&mut w, pos + len);
        if let Err(e) = segment.log.write_all_at(&bytes, pos) {
            let err = LogError::io("write", &segment.log_path, e);
            let at = Point {
                offset: base,
                segment: segment.base,
                pos,
            };
            self.truncate_writer(&mut w, at);
            return Err(err);
        }
        segment.appended_at(pos);
        let next = base + count;
        w.write_pos = pos + len;
        w.next_offset = next;
        segment.index.write().on_batch(
            (base - segment.base) as u32,
            pos as u32,
            len,
            header.max_timestamp,
            self.config.index_interval_bytes,
        );
        let info = AppendInfo {
            base_offset: base,
            last_offset: next - 1,
        };
        let truncations = self.truncations();
        let mut pending_slot = None;
        match self.config.durability {
            Durability::Always => {
                let slot = Arc::new(Slot::default());
                w.pending.push_back(Pending {
                    segment,
                    base,
                    next,
                    end_pos: pos + len,
                    bytes,
                    slot: slot.clone(),
                });
                pending_slot = Some(slot);
            }
            Durability::Never => {
                self.publish(&segment, base, next, pos + len, bytes);
            }
            Durability::Interval(every) => {
                self.publish(&segment, base, next, pos + len, bytes);
                // Not by an in-place append (it must not block): the next append, or the
                // log's periodic tick, syncs instead.
                let due = !in_place && w.last_sync.elapsed() >= every;
                drop(w);
                if due {
                    // The append is acknowledged whatever the sync does: under this policy an
                    // acknowledgement never promised durability. The failure is logged.
                    if let Err(e) = self.sync_round(&self.lead(), false) {
                        tracing::error!(dir = %self.dir.display(), error = %e, "interval sync failed");
                    }
                }
            }
        }
        Ok(InPlace::Appended(Appended {
            info,
            slot: pending_slot,
            truncations,
        }))
    }

    /// The second half of [`Log::append`]: waits until the batch is as durable as the policy
    /// promises (and visible to readers), then returns its offsets.
    pub fn append_wait(&self, appended: Appended) -> Result<AppendInfo> {
        if let Some(slot) = &appended.slot {
            self.wait_durable(slot)?;
        }
        Ok(appended.info)
    }

    /// [`Log::append_wait`] for a caller that must not block a thread while another caller
    /// syncs (an async task, many of which may wait on one partition's sync at once): never
    /// blocks. While a sync is under way the batch's durability is awaited with `waker`;
    /// when nobody syncs, the caller is given the leadership of the next one
    /// ([`Durable::Lead`]), to run with [`Log::lead_wait`].
    pub fn poll_durable(&self, appended: Appended, waker: &Waker) -> Durable {
        let Some(slot) = &appended.slot else {
            return Durable::Done(Ok(appended.info));
        };
        let mut st = self.syncs.state.lock();
        if let Some(result) = slot.0.lock().take() {
            return Durable::Done(result.map(|()| appended.info));
        }
        if !st.syncing {
            st.syncing = true;
            return Durable::Lead(Claim {
                appended: Some(appended),
                syncs: Some(self.syncs.clone()),
            });
        }
        // Slots are filled only under leadership, so the leader's release (which takes the
        // lock held here) comes after this and wakes it.
        st.wakers.push(waker.clone());
        Durable::Pending(appended)
    }

    /// Runs the sync `claim` leads (the batch it holds is in it), then returns that batch's
    /// offsets as [`Log::append_wait`] does. Blocks.
    ///
    /// # Panics
    /// If `claim` came from another log.
    pub fn lead_wait(&self, mut claim: Claim) -> Result<AppendInfo> {
        let syncs = claim.syncs.take().expect("a claim is used once");
        assert!(Arc::ptr_eq(&syncs, &self.syncs), "a claim on another log");
        let appended = claim.appended.take().expect("a claim holds its batch");
        let leader = Leader(self);
        // Failures reach every affected append through its slot.
        let _ = self.sync_round(&leader, false);
        drop(leader);
        self.append_wait(appended)
    }

    fn should_roll(&self, w: &Writer, len: u64, count: u64) -> bool {
        if w.write_pos == 0 {
            return false;
        }
        w.write_pos + len > self.config.segment_bytes
            || w.next_offset + count - w.active.base > u64::from(u32::MAX)
            || w.created.elapsed() >= self.config.segment_age
    }

    /// Makes one committed batch visible to readers.
    fn publish(&self, segment: &Segment, base: u64, next: u64, end_pos: u64, bytes: Bytes) {
        let mut v = self.view.write();
        segment.set_visible_len(end_pos);
        v.hot.push(base, next, bytes);
        v.hwm = next;
    }

    fn publish_all(&self, pending: impl IntoIterator<Item = Pending>) {
        let mut v = self.view.write();
        for p in pending {
            p.segment.set_visible_len(p.end_pos);
            v.hot.push(p.base, p.next, p.bytes);
            v.hwm = p.next;
            *p.slot.0.lock() = Some(Ok(()));
        }
    }

    fn fail_all(pending: impl IntoIterator<Item = Pending>, err: &LogError) {
        for p in pending {
            *p.slot.0.lock() = Some(Err(err.clone()));
        }
    }

    fn wait_durable(&self, slot: &Slot) -> Result<()> {
        let mut st = self.syncs.state.lock();
        loop {
            if let Some(result) = slot.0.lock().take() {
                return result;
            }
            if !st.syncing {
                st.syncing = true;
                drop(st);
                let leader = Leader(self);
                // Failures reach every affected append through its slot.
                let _ = self.sync_round(&leader, false);
                drop(leader);
                st = self.syncs.state.lock();
                continue;
            }
            self.syncs.cond.wait(&mut st);
        }
    }

    /// Syncs everything written so far, publishes what became durable, and writes a checkpoint
    /// when due (or when `force_checkpoint`).
    fn sync_round(&self, _leader: &Leader<'_>, force_checkpoint: bool) -> Result<()> {
        let (pending, segment, target, already) = {
            let mut w = self.writer.lock();
            let pending: Vec<Pending> = w.pending.drain(..).collect();
            let target = Point {
                offset: w.next_offset,
                segment: w.active.base,
                pos: w.write_pos,
            };
            (pending, w.active.clone(), target, w.synced)
        };
        if target == already && pending.is_empty() && !force_checkpoint {
            return Ok(());
        }
        if target != already {
            if let Err(e) = segment.log.sync_data() {
                let err = LogError::io("fdatasync", &segment.log_path, e);
                let mut w = self.writer.lock();
                let synced = w.synced;
                if self.config.durability == Durability::Always {
                    // Batches of segments already sealed (synced when rolled) are durable.
                    let (ok, failed): (Vec<_>, Vec<_>) =
                        pending.into_iter().partition(|p| p.next <= synced.offset);
                    self.publish_all(ok);
                    Self::fail_all(failed, &err);
                    let later: Vec<_> = w.pending.drain(..).collect();
                    Self::fail_all(later, &err);
                    self.truncate_writer(&mut w, synced);
                }
                return Err(err);
            }
        }
        self.publish_all(pending);
        let due = {
            let mut w = self.writer.lock();
            if target.offset >= w.synced.offset {
                let grown = if target.segment == w.synced.segment {
                    target.pos - w.synced.pos
                } else {
                    target.pos
                };
                w.bytes_since_checkpoint += grown;
                w.synced = target;
            }
            w.last_sync = Instant::now();
            force_checkpoint || w.bytes_since_checkpoint >= self.config.checkpoint_interval_bytes
        };
        if due {
            let log_start = self.view.read().log_start;
            self.write_checkpoint(_leader, &segment, target, false, log_start)?;
            self.writer.lock().bytes_since_checkpoint = 0;
        }
        Ok(())
    }

    /// Reserves disk space past `end` in the active segment before a write reaches it: at most
    /// `preallocate_bytes` and at most what the segment holds once the write is done (`end`),
    /// so that a partition written rarely reserves little. Best effort: a file system that
    /// cannot reserve still takes the write, and one that is full fails the write itself.
    fn reserve(&self, w: &mut Writer, end: u64) {
        if !self.reserve_due(w, end) {
            return;
        }
        let step = self.config.preallocate_bytes;
        let mut to = (end + step.min(end)).min(self.config.segment_bytes.max(end));
        let from = w.reserved_to.max(w.write_pos);
        let reserved = if self.config.durability == Durability::Always {
            to = to.min(from.max(end) + ZERO_FILL_BYTES);
            Self::zero_fill(&w.active, from, to)
        } else {
            w.active.log.preallocate(from, to - from)
        };
        if let Err(e) = reserved {
            tracing::debug!(path = %w.active.log_path.display(), error = %e, "could not reserve disk space ahead of writes");
        }
        w.reserved_to = to;
    }

    /// Reserves `from..to` of a segment at durability `always` by writing zeros there. The
    /// sync of the write that reserved makes them durable with it; a record written over
    /// them later then changes no file-system metadata (no block to allocate, no extent to
    /// mark written, no file size to grow), so the fdatasync that acknowledges it writes the
    /// record's pages and nothing else: 108 µs against 158 µs appending and 131 µs into
    /// `fallocate`d space, median for 1,000-byte writes on this machine's disk
    /// (BENCHMARKS.md). Not synced here: a sync outside `sync_round` could take a writeback
    /// error of records waiting for their sync (Linux reports it once per open file), and
    /// `sync_round` must see it to fail them. The zeros sit past the last batch until records
    /// replace them; a roll or a close cuts what is left, and so does recovery
    /// (`segment::scan` tells a tail of zeros from damage).
    fn zero_fill(segment: &Segment, from: u64, to: u64) -> std::io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(ZEROS.len() as u64) as usize;
            segment.log.write_all_at(&ZEROS[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Whether a write ending at `end` goes past the reserved space (and so reserves more: a
    /// file-system metadata operation, not for a runtime thread). Nothing is reserved in the
    /// first [`RESERVE_FROM`] bytes of a segment.
    fn reserve_due(&self, w: &Writer, end: u64) -> bool {
        self.config.preallocate_bytes > 0 && end > w.reserved_to && end > RESERVE_FROM
    }

    /// Gives back the disk space reserved past the active segment's end (it is sealed or the
    /// log closes). Only space is at stake, so a failure is logged and ignored.
    fn release_reserve(&self, w: &mut Writer) {
        if w.reserved_to <= w.write_pos {
            return;
        }
        match w.active.log.set_len(w.write_pos) {
            Ok(()) => w.reserved_to = w.write_pos,
            Err(e) => {
                tracing::warn!(path = %w.active.log_path.display(), error = %e, "could not release disk space reserved past the end of a segment");
            }
        }
    }

    /// Drops everything written after `to` (which lies in the active segment): a failed write,
    /// or unsynced data after a failed sync. If the truncation itself fails, the next append
    /// retries it before writing.
    fn truncate_writer(&self, w: &mut Writer, to: Point) {
        debug_assert_eq!(to.segment, w.active.base);
        self.truncation_count.fetch_add(1, Ordering::AcqRel);
        if to.pos < w.write_pos {
            w.active
                .index
                .write()
                .truncate(to.pos as u32, (to.offset - w.active.base) as u32);
        }
        w.write_pos = to.pos;
        w.reserved_to = to.pos; // the truncation releases what was reserved
        w.next_offset = to.offset;
        w.active.truncated_to(to.pos);
        if let Err(e) = w.active.log.set_len(to.pos) {
            tracing::error!(path = %w.active.log_path.display(), error = %e, "could not truncate after a failed write; will retry");
            w.needs_repair = true;
        }
    }

    fn repair(&self, w: &mut Writer) -> Result<()> {
        w.active
            .log
            .set_len(w.write_pos)
            .map_err(|e| LogError::io("truncate", &w.active.log_path, e))?;
        w.needs_repair = false;
        Ok(())
    }

    /// Seals the active segment and starts a new one. Requires leadership, so no sync round
    /// runs meanwhile.
    fn roll(&self, w: &mut Writer, leader: &Leader<'_>) -> Result<()> {
        let old = w.active.clone();
        if let Err(e) = old.log.sync_data() {
            let err = LogError::io("fdatasync", &old.log_path, e);
            if self.config.durability == Durability::Always {
                let pending: Vec<_> = w.pending.drain(..).collect();
                Self::fail_all(pending, &err);
                let synced = w.synced;
                self.truncate_writer(w, synced);
            }
            return Err(err);
        }
        // Everything in the old segment is durable now: record that before anything else can
        // fail, and publish it, in order, before the new segment exists.
        w.synced = Point {
            offset: w.next_offset,
            segment: old.base,
            pos: w.write_pos,
        };
        let pending: Vec<_> = w.pending.drain(..).collect();
        self.publish_all(pending);
        self.release_reserve(w);
        old.index.write().seal();
        old.flush_indexes(true)?;
        old.release_index_files();
        let new =
            match Segment::open(&self.storage, &self.dir, w.next_offset, true).and_then(|seg| {
                self.storage
                    .sync_dir(&self.dir)
                    .map_err(|e| LogError::io("sync directory", &self.dir, e))
                    .map(|()| seg)
            }) {
                Ok(seg) => Arc::new(seg),
                Err(e) => {
                    // Leave no stray segment behind: it would claim offsets the old segment keeps
                    // receiving. Recovery also drops empty segments that are not the last.
                    for ext in [segment::LOG_EXT, segment::INDEX_EXT, segment::TIME_EXT] {
                        let _ = self
                            .storage
                            .remove_file(&self.dir.join(segment::file_name(w.next_offset, ext)));
                    }
                    return Err(e);
                }
            };
        let start = Point {
            offset: w.next_offset,
            segment: new.base,
            pos: 0,
        };
        w.synced = start;
        w.active = new.clone();
        w.write_pos = 0;
        w.reserved_to = 0;
        w.created = Instant::now();
        w.bytes_since_checkpoint = 0;
        self.view.write().segments.push(new.clone());
        let log_start = self.view.read().log_start;
        if let Err(e) = self.write_checkpoint(leader, &new, start, false, log_start) {
            // Not fatal: recovery starts from the older checkpoint and scans a little more.
            tracing::warn!(dir = %self.dir.display(), error = %e, "checkpoint after roll failed");
        }
        Ok(())
    }

    /// Records `point` as the recovery point. Flushes and syncs the indexes of its segment
    /// first, so that recovery may trust them up to the point, and closes the index files:
    /// they are written only here and at a roll (every `checkpoint_interval_bytes` at most),
    /// so a partition holds one file open between checkpoints, not three.
    pub(crate) fn write_checkpoint(
        &self,
        _leader: &Leader<'_>,
        segment: &Segment,
        point: Point,
        clean: bool,
        log_start: u64,
    ) -> Result<()> {
        segment.flush_indexes(true)?;
        segment.release_index_files();
        self.store_checkpoint(&Checkpoint {
            clean,
            recovery_offset: point.offset,
            recovery_segment: point.segment,
            recovery_position: point.pos,
            log_start,
        })
    }

    /// Writes `c` over the older slot of the checkpoint file and syncs it (and, when this
    /// created the file, the directory).
    pub(crate) fn store_checkpoint(&self, c: &Checkpoint) -> Result<()> {
        let path = self.dir.join(checkpoint::FILE);
        let io = |op, e| LogError::io(op, &path, e);
        let mut file = self.checkpoint_file.lock();
        if file.exists && file.seq >= u64::MAX / 2 {
            // Only a crafted file numbers its slots so far: start a new one.
            match self.storage.remove_file(&path) {
                Ok(()) => file.exists = false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => file.exists = false,
                Err(e) => return Err(io("remove", e)),
            }
        }
        let f = self
            .storage
            .open_file(&path, true)
            .map_err(|e| io("open", e))?;
        // A new file starts in slot 0 (sequence 2), so that it holds 52 bytes until its
        // second checkpoint; an existing one goes on from its current slot.
        let seq = if file.exists { file.seq + 1 } else { 2 };
        let (at, bytes) = c.encode(seq);
        f.write_all_at(&bytes, at).map_err(|e| io("write", e))?;
        f.sync_data().map_err(|e| io("fdatasync", e))?;
        drop(f);
        if !file.exists {
            self.storage
                .sync_dir(&self.dir)
                .map_err(|e| LogError::io("sync directory", &self.dir, e))?;
            file.exists = true;
        }
        file.seq = seq;
        self.checkpoint_segment
            .store(c.recovery_segment, Ordering::Release);
        Ok(())
    }

    /// Makes everything appended so far durable and writes a recovery checkpoint, whatever the
    /// policy.
    pub fn flush(&self) -> Result<()> {
        let leader = self.lead();
        self.sync_round(&leader, true)
    }

    /// Syncs if the [`Durability::Interval`] period has passed since the last sync. Call it
    /// periodically so that data appended just before the producers went quiet is synced too.
    pub fn tick(&self) -> Result<()> {
        let Durability::Interval(every) = self.config.durability else {
            return Ok(());
        };
        let due = {
            let w = self.writer.lock();
            w.last_sync.elapsed() >= every && w.synced.offset < w.next_offset
        };
        if due {
            let leader = self.lead();
            self.sync_round(&leader, false)?;
        }
        Ok(())
    }

    /// Syncs everything, writes the indexes and a clean-shutdown checkpoint. Later calls of any
    /// method fail with [`LogError::Closed`].
    pub fn close(&self) -> Result<()> {
        let leader = self.lead();
        {
            let mut w = self.writer.lock();
            if w.closed {
                return Ok(());
            }
            // No append starts after this; those already written are synced below.
            w.closed = true;
        }
        self.sync_round(&leader, false)?;
        let (segment, point) = {
            let w = self.writer.lock();
            (
                w.active.clone(),
                Point {
                    offset: w.next_offset,
                    segment: w.active.base,
                    pos: w.write_pos,
                },
            )
        };
        let log_start = self.view.read().log_start;
        self.write_checkpoint(&leader, &segment, point, true, log_start)?;
        self.release_reserve(&mut self.writer.lock());
        self.view.write().closed = true;
        Ok(())
    }

    /// Reads whole batches starting with the one that contains `offset`, up to about
    /// `max_bytes` (always at least one whole batch, however large). Reading at the high
    /// watermark returns no data; outside `[log start, high watermark]` is an error.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult> {
        Ok(self
            .read_within(offset, max_bytes, usize::MAX)?
            .expect("no batch is larger than usize::MAX"))
    }

    /// Like [`Log::read`], but `Ok(None)` rather than read from disk a first batch larger
    /// than `cap` bytes (known from its header before anything is allocated): for reads on
    /// a memory budget, such as read-ahead.
    pub fn read_within(
        &self,
        offset: u64,
        max_bytes: usize,
        cap: usize,
    ) -> Result<Option<ReadResult>> {
        let (mut segment, hwm, log_start) = match self.read_or_locate(offset, max_bytes)? {
            Ok(result) => return Ok(Some(result)),
            Err(located) => located,
        };
        let chunk = loop {
            match self.read_segment(&segment, offset, max_bytes.min(cap), cap)? {
                Found::Chunk(chunk) => break chunk,
                Found::TooLarge => return Ok(None),
                // Compaction removed the rest of this segment: the next one holds the offset.
                Found::Beyond => {
                    let v = self.view.read();
                    let next = v.segments.partition_point(|s| s.base <= segment.base);
                    match v.segments.get(next) {
                        Some(s) => segment = s.clone(),
                        None => {
                            return Err(LogError::OffsetOutOfRange {
                                offset,
                                log_start: v.log_start,
                                high_watermark: v.hwm,
                            });
                        }
                    }
                }
            }
        };
        Ok(Some(ReadResult {
            chunks: vec![chunk],
            high_watermark: hwm,
            log_start_offset: log_start,
            from_memory: false,
        }))
    }

    /// Like [`Log::read`], but only when the answer needs no I/O: the offset is the high
    /// watermark, or the hot tail holds it. `Ok(None)` means the data is on disk: call `read`
    /// from a blocking context. Lets async callers skip a thread hop for tailing reads.
    pub fn read_cached(&self, offset: u64, max_bytes: usize) -> Result<Option<ReadResult>> {
        Ok(self.read_or_locate(offset, max_bytes)?.ok())
    }

    /// The answer from memory, or the segment to read from disk.
    #[allow(clippy::type_complexity)]
    fn read_or_locate(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<std::result::Result<ReadResult, (Arc<Segment>, u64, u64)>> {
        let v = self.view.read();
        if v.closed {
            return Err(LogError::Closed);
        }
        let out_of_range = LogError::OffsetOutOfRange {
            offset,
            log_start: v.log_start,
            high_watermark: v.hwm,
        };
        if offset < v.log_start || offset > v.hwm {
            return Err(out_of_range);
        }
        let mut result = ReadResult {
            chunks: Vec::new(),
            high_watermark: v.hwm,
            log_start_offset: v.log_start,
            from_memory: true,
        };
        if offset == v.hwm {
            return Ok(Ok(result));
        }
        if let Some(chunks) = v.hot.read(offset, max_bytes) {
            result.chunks = chunks;
            return Ok(Ok(result));
        }
        let segment = v.segment_for(offset).cloned().ok_or(out_of_range)?;
        Ok(Err((segment, v.hwm, v.log_start)))
    }

    /// Finds the position of the first batch in `segment` that holds `offset` or comes after
    /// it (compaction leaves gaps) by hopping headers from the nearest index entry; `None`
    /// when every batch of the segment ends before `offset`.
    fn locate(
        &self,
        segment: &Segment,
        offset: u64,
        limit: u64,
    ) -> Result<Option<(u64, weir_batch::BatchHeader)>> {
        let entry = segment
            .index
            .read()
            .lookup(offset.saturating_sub(segment.base).min(u64::from(u32::MAX)) as u32);
        let mut pos = u64::from(entry.pos);
        let mut expected = segment.base + u64::from(entry.rel);
        let mut head = [0u8; HEADER_LEN];
        loop {
            if pos == limit {
                return Ok(None);
            }
            if pos + HEADER_LEN as u64 > limit {
                return Err(segment.corrupt(
                    pos,
                    format!("offset {offset} not found before the end of the segment"),
                ));
            }
            read_exact_at(&*segment.log, &mut head, pos)
                .map_err(|e| LogError::io("read", &segment.log_path, e))?;
            let h = segment.header_at(pos, &head, expected)?;
            if pos + h.total_len() as u64 > limit {
                return Err(segment.corrupt(
                    pos,
                    format!("batch of {} bytes overruns the segment", h.total_len()),
                ));
            }
            if h.next_offset() as u64 > offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_len() as u64;
            expected = h.next_offset() as u64;
        }
    }

    fn read_segment(
        &self,
        segment: &Segment,
        offset: u64,
        max_bytes: usize,
        cap: usize,
    ) -> Result<Found> {
        let limit = segment.visible_len();
        let Some((pos, first)) = self.locate(segment, offset, limit)? else {
            return Ok(Found::Beyond);
        };
        if first.total_len() > cap {
            return Ok(Found::TooLarge);
        }
        let want = (max_bytes as u64)
            .min(limit - pos)
            .max(first.total_len() as u64) as usize;
        let mut buf = segment
            .log
            .read_vec_at(want, pos)
            .map_err(|e| LogError::io("read", &segment.log_path, e))?;
        // Keep whole, verified batches only. Batches this process checked already (appended
        // here, or read before) are not CRC-checked again.
        let trusted = segment.checked(pos, pos + buf.len() as u64);
        let mut end = 0usize;
        let mut expected = first.base_offset;
        while end < buf.len() {
            let rest = &buf[end..];
            let Ok(h) = weir_batch::peek(rest) else {
                if end == 0 {
                    let e = weir_batch::peek(rest).unwrap_err();
                    return Err(segment.corrupt(pos, e.to_string()));
                }
                break;
            };
            if h.total_len() > rest.len() {
                break;
            }
            let check = if trusted {
                Ok(h)
            } else {
                weir_batch::validate(&rest[..h.total_len()]).map_err(|e| e.to_string())
            };
            let check = check.and_then(|h| {
                if h.base_offset >= expected {
                    Ok(h)
                } else {
                    Err(format!(
                        "batch base offset {} where {expected} or more was expected",
                        h.base_offset
                    ))
                }
            });
            match check {
                Ok(h) => {
                    end += h.total_len();
                    expected = h.next_offset();
                }
                Err(reason) if end == 0 => return Err(segment.corrupt(pos, reason)),
                Err(_) => break,
            }
        }
        buf.truncate(end);
        if !trusted {
            segment.read_checked(pos, pos + end as u64);
        }
        Ok(Found::Chunk(Bytes::from(buf)))
    }

    /// The offset of the first record whose timestamp is ≥ `timestamp` (ms since the epoch),
    /// or `None` if every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        Ok(self
            .record_at_or_after(timestamp)?
            .map(|(offset, _)| offset))
    }

    /// The largest record timestamp in the log as its indexes know it (batches' max
    /// timestamps, readable or not yet), or `None` for a log with no batch.
    pub fn max_timestamp(&self) -> Result<Option<i64>> {
        let v = self.view.read();
        if v.closed {
            return Err(LogError::Closed);
        }
        let max = v
            .segments
            .iter()
            .map(|s| s.index.read().max_timestamp)
            .max()
            .unwrap_or(i64::MIN);
        Ok((max != i64::MIN).then_some(max))
    }

    /// The offset and timestamp of the first record whose timestamp is ≥ `timestamp` (ms
    /// since the epoch), or `None` if every readable record is older. A compressed batch is
    /// decompressed to find the record.
    pub fn record_at_or_after(&self, timestamp: i64) -> Result<Option<(u64, i64)>> {
        let (segments, hwm, log_start) = {
            let v = self.view.read();
            if v.closed {
                return Err(LogError::Closed);
            }
            (v.segments.clone(), v.hwm, v.log_start)
        };
        for segment in segments {
            let (max_ts, start_rel) = {
                let idx = segment.index.read();
                (idx.max_timestamp, idx.time_lookup(timestamp))
            };
            let limit = segment.visible_len();
            if max_ts < timestamp || limit == 0 {
                continue;
            }
            // Records below the log start were deleted: they are not searched.
            let start = (segment.base + u64::from(start_rel)).max(log_start);
            if start >= hwm {
                // The index already knows a batch readers may not see yet.
                return Ok(None);
            }
            let Some((mut pos, _)) = self.locate(&segment, start, limit)? else {
                continue;
            };
            while pos < limit {
                let mut head = [0u8; HEADER_LEN];
                read_exact_at(&*segment.log, &mut head, pos)
                    .map_err(|e| LogError::io("read", &segment.log_path, e))?;
                let h = weir_batch::peek(&head).map_err(|e| segment.corrupt(pos, e.to_string()))?;
                if h.next_offset() as u64 > hwm {
                    break;
                }
                if h.max_timestamp >= timestamp
                    && h.next_offset() as u64 > log_start
                    && let Some(found) =
                        self.first_record_at_or_after(&segment, pos, &h, timestamp, log_start)?
                {
                    return Ok(Some(found));
                }
                pos += h.total_len() as u64;
            }
        }
        Ok(None)
    }

    /// Hands `f` the header of each batch that reaches into the last `max_bytes` of the log,
    /// oldest first: for rebuilding, after a restart, what is kept in batch headers, such as
    /// idempotent producers' sequence numbers. Each of those batches is CRC-checked; a damaged
    /// one ends the walk of its segment, and the later segments are still walked. Returns how
    /// many segments were cut short so. Reads from disk (about `max_bytes`, plus up to 1 MiB
    /// at a time): call it from a blocking context.
    pub fn tail_headers(
        &self,
        max_bytes: u64,
        mut f: impl FnMut(&weir_batch::BatchHeader),
    ) -> Result<usize> {
        let (segments, hwm) = {
            let v = self.view.read();
            if v.closed {
                return Err(LogError::Closed);
            }
            (v.segments.clone(), v.hwm)
        };
        // The oldest segment the tail reaches into, and where in it the tail begins.
        let (mut first, mut from, mut left) = (segments.len(), 0, max_bytes.max(1));
        while first > 0 {
            first -= 1;
            let len = segments[first].visible_len();
            if len >= left {
                from = len - left;
                break;
            }
            left -= len;
        }
        let mut cut = 0;
        for (i, segment) in segments.iter().enumerate().skip(first) {
            let from = if i == first { from } else { 0 };
            match Self::tail_of_segment(segment, from, hwm, &mut f) {
                Ok(()) => {}
                Err(LogError::Corrupt { .. }) => cut += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(cut)
    }

    /// [`Log::tail_headers`] within one segment, from position `from`.
    fn tail_of_segment(
        segment: &Segment,
        from: u64,
        hwm: u64,
        f: &mut impl FnMut(&weir_batch::BatchHeader),
    ) -> Result<()> {
        let limit = segment.visible_len();
        let entry = segment.index.read().lookup_pos(from);
        let (mut pos, mut expected) = (u64::from(entry.pos), segment.base + u64::from(entry.rel));
        let mut window = segment::Window::new(&*segment.log, limit);
        let io = |e| LogError::io("read", &segment.log_path, e);
        while pos < limit {
            let head = window
                .get(pos, HEADER_LEN)
                .map_err(io)?
                .ok_or_else(|| segment.corrupt(pos, "a batch header overruns the segment"))?;
            let h = segment.header_at(pos, head, expected)?;
            let len = h.total_len();
            if h.next_offset() as u64 > hwm {
                break;
            }
            if pos + len as u64 > from {
                let batch = window
                    .get(pos, len)
                    .map_err(io)?
                    .ok_or_else(|| segment.corrupt(pos, "a batch overruns the segment"))?;
                let h =
                    weir_batch::validate(batch).map_err(|e| segment.corrupt(pos, e.to_string()))?;
                f(&h);
            }
            pos += len as u64;
            expected = h.next_offset() as u64;
        }
        Ok(())
    }

    fn first_record_at_or_after(
        &self,
        segment: &Segment,
        pos: u64,
        h: &weir_batch::BatchHeader,
        timestamp: i64,
        log_start: u64,
    ) -> Result<Option<(u64, i64)>> {
        let mut buf = vec![0u8; h.total_len()];
        read_exact_at(&*segment.log, &mut buf, pos)
            .map_err(|e| LogError::io("read", &segment.log_path, e))?;
        let (header, section) =
            weir_batch::payload(&buf).map_err(|e| segment.corrupt(pos, e.to_string()))?;
        for record in weir_batch::Records::with_payload(header, &section) {
            let record = record.map_err(|e| segment.corrupt(pos, e.to_string()))?;
            if record.offset as u64 >= log_start && record.timestamp >= timestamp {
                return Ok(Some((record.offset as u64, record.timestamp)));
            }
        }
        // The records that qualify were deleted (below the log start), or the header's
        // max_timestamp disagrees with its records: the search goes on past this batch.
        Ok(None)
    }

    /// Makes records before `offset` unreadable and deletes segments that hold only such
    /// records. `offset` may be at most the high watermark. Returns the new log start offset.
    pub fn delete_records_before(&self, offset: u64) -> Result<u64> {
        let leader = self.lead();
        let (hwm, log_start) = {
            let v = self.view.read();
            if v.closed {
                return Err(LogError::Closed);
            }
            (v.hwm, v.log_start)
        };
        if offset > hwm {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                high_watermark: hwm,
            });
        }
        if offset <= log_start {
            return Ok(log_start);
        }
        self.set_log_start(&leader, offset)?;
        Ok(offset)
    }

    /// Raises the log start offset durably, then deletes the segments wholly below it.
    fn set_log_start(&self, leader: &Leader<'_>, offset: u64) -> Result<usize> {
        let (active, synced) = {
            let w = self.writer.lock();
            (w.active.clone(), w.synced)
        };
        // Durable first, visible second: readers never see a log start a crash could undo.
        self.write_checkpoint(leader, &active, synced, false, offset)?;
        self.view.write().log_start = offset;
        let doomed: Vec<Arc<Segment>> = {
            let mut v = self.view.write();
            let keep_from = v
                .segments
                .iter()
                .rposition(|s| s.base <= offset)
                .unwrap_or(0)
                .min(v.segments.len() - 1);
            v.segments.drain(..keep_from).collect()
        };
        for s in &doomed {
            for p in s.paths() {
                // A segment's index files exist once they were first written.
                if let Err(e) = self.storage.remove_file(p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove deleted segment file");
                }
            }
        }
        if !doomed.is_empty() {
            self.storage
                .sync_dir(&self.dir)
                .map_err(|e| LogError::io("sync directory", &self.dir, e))?;
        }
        Ok(doomed.len())
    }

    /// Deletes the oldest sealed segments that the retention settings no longer keep: whole
    /// segments whose newest record is older than `retention_age` (measured against `now_ms`),
    /// and while the log exceeds `retention_bytes`. The active segment is never deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        let leader = self.lead();
        let (segments, log_start) = {
            let v = self.view.read();
            if v.closed {
                return Err(LogError::Closed);
            }
            (v.segments.clone(), v.log_start)
        };
        let mut total: u64 = segments.iter().map(|s| s.visible_len()).sum();
        let mut report = RetentionReport {
            log_start_offset: log_start,
            ..RetentionReport::default()
        };
        let sealed = segments.len().saturating_sub(1);
        let mut new_start = None;
        let limits = *self.limits.lock();
        for (i, s) in segments.iter().take(sealed).enumerate() {
            let size = s.visible_len();
            if size == 0 {
                // An empty segment (the first one, left by compaction to hold the log start)
                // has no records to expire and no timestamp: it goes only with the expired
                // segments after it, else the log start would move for nothing.
                continue;
            }
            let expired = limits.retention_age.is_some_and(|age| {
                let max_ts = s.index.read().max_timestamp;
                let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                max_ts < now_ms.saturating_sub(age_ms)
            });
            let oversized = limits.retention_bytes.is_some_and(|cap| total > cap);
            if !(expired || oversized) {
                break;
            }
            total -= size;
            report.deleted_segments = i + 1;
            report.deleted_bytes += size;
            new_start = Some(segments[i + 1].base);
        }
        if let Some(start) = new_start {
            if start > log_start {
                self.set_log_start(&leader, start)?;
                report.log_start_offset = start;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use weir_batch::{BatchBuilder, RecordSpec};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn one(value: &[u8]) -> Bytes {
        let mut b = BatchBuilder::with_capacity(0, 128);
        b.push(RecordSpec::value(value));
        Bytes::from(b.build())
    }

    /// An appender that finds another syncing waits without a thread and is woken when the
    /// leader is done; one that finds nobody syncing is told to lead.
    #[test]
    fn poll_durable_waits_for_the_leader_or_asks_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability: Durability::Always,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config).unwrap();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());

        // Nobody syncs: the caller is made the leader, and its sync makes the batch durable.
        let a = log.append_start(one(b"a")).unwrap();
        let claim = match log.poll_durable(a, &waker) {
            Durable::Lead(claim) => claim,
            other => panic!("expected Lead, got {other:?}"),
        };
        assert_eq!(log.high_watermark(), 0, "not durable before its sync");
        // While the claim is held, another appender waits rather than leading too.
        let b = log.append_start(one(b"b")).unwrap();
        let b = match log.poll_durable(b, &waker) {
            Durable::Pending(b) => b,
            other => panic!("expected Pending while a claim is held, got {other:?}"),
        };
        assert_eq!(log.lead_wait(claim).unwrap().base_offset, 0);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the waiter is woken");
        // The claim's sync covered everything written before it: b as well.
        assert_eq!(log.high_watermark(), 2);
        match log.poll_durable(b, &waker) {
            Durable::Done(Ok(info)) => assert_eq!(info.base_offset, 1),
            other => panic!("expected Done, got {other:?}"),
        }

        // Someone else syncs: the caller waits, and is woken only when the leader is done.
        let c = log.append_start(one(b"c")).unwrap();
        let leader = log.lead();
        let c = match log.poll_durable(c, &waker) {
            Durable::Pending(c) => c,
            other => panic!("expected Pending, got {other:?}"),
        };
        log.sync_round(&leader, false).unwrap();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken before the leader let go"
        );
        drop(leader);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        match log.poll_durable(c, &waker) {
            Durable::Done(Ok(info)) => assert_eq!(info.base_offset, 2),
            other => panic!("expected Done, got {other:?}"),
        }

        // A claim dropped unused gives the leadership back: the next appender leads, and a
        // blocking wait does not hang.
        let d = log.append_start(one(b"d")).unwrap();
        let e = log.append_start(one(b"e")).unwrap();
        let Durable::Lead(claim) = log.poll_durable(d, &waker) else {
            panic!("expected Lead");
        };
        drop(claim);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "nobody waited on it");
        assert_eq!(log.append_wait(e).unwrap().base_offset, 4);
        assert_eq!(log.high_watermark(), 5);
    }
}

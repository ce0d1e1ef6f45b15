//! Committed offsets of consumer groups, kept durably.
//!
//! An [`OffsetStore`] owns one directory:
//!
//! - `commits/`: a weir-log [`Log`] under [`Durability::Always`], the *commit log*. Each commit
//!   request is one record batch with one record per partition, so a multi-partition commit is
//!   atomic: after a crash either all of its offsets are there or none.
//! - `offsets.snapshot`: every committed offset as of some commit-log offset (the snapshot's
//!   *covered* offset: every record below it is reflected). Written to `offsets.snapshot.tmp`,
//!   fsynced, renamed into place, then the directory is fsynced.
//! - `offsets.snapshot.old`: the snapshot before that one. The commit log keeps every record
//!   from the old snapshot's covered offset on, so a damaged `offsets.snapshot` costs nothing:
//!   opening falls back to the old snapshot and replays the log from there. Only when both
//!   are unusable does opening replay the whole (remaining) log, and it says so.
//!
//! The in-memory state is always "snapshot + commit-log records in log order": a commit
//! appends its batch, then applies every record up to the log's high watermark in offset order
//! (its own and those of concurrent committers), exactly as opening replays them. Concurrent
//! commits therefore share fsyncs (the log's group commit) and never disagree with a replay.
//!
//! # Commit-log records
//!
//! Key (big-endian, every string length-prefixed, so no name can be mistaken for another):
//!
//! ```text
//! kind: u8 = 1 | group_len: u16 | group: UTF-8 | topic_len: u16 | topic: UTF-8 | partition: u32
//! ```
//!
//! Value: the committed offset as a `u64` (8 bytes), then the commit's metadata string
//! (UTF-8, at most [`MAX_METADATA_BYTES`], absent when empty), or null: a tombstone that
//! forgets the group's offset for that partition.
//!
//! # Snapshot file (version 2)
//!
//! ```text
//! magic: "WEIROFFS" | version: u32 = 2 | covered: u64 | count: u64
//! count × (key as above | offset: u64 | metadata_len: u16 | metadata: UTF-8)
//! crc32c: u32 (Castagnoli, over every byte before it)
//! ```
//!
//! Version 1, written before commits kept metadata, is the same without the metadata; it is
//! still read.
//!
//! Every method blocks on disk I/O; async callers use `spawn_blocking`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use weir_batch::cursor::Cursor;

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use weir_batch::{BatchBuilder, Batches, RecordSpec, Records};
use weir_log::storage::read_exact_at;
use weir_log::{Durability, FileStorage, Log, LogConfig, Storage};

use crate::error::{BrokerError, Result};

/// Commit-log records after which a snapshot is written automatically (default of
/// [`OffsetStore::open`]).
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 10_000;

const COMMITS_DIR: &str = "commits";
const SNAPSHOT_FILE: &str = "offsets.snapshot";
const OLD_SNAPSHOT_FILE: &str = "offsets.snapshot.old";
const TMP_SNAPSHOT_FILE: &str = "offsets.snapshot.tmp";

const SNAPSHOT_MAGIC: [u8; 8] = *b"WEIROFFS";
const SNAPSHOT_VERSION: u32 = 2;

/// Longest metadata string a commit may carry (Kafka's `offset.metadata.max.bytes` default).
pub const MAX_METADATA_BYTES: usize = 4096;
/// magic + version + covered + count.
const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8 + 8;
const SNAPSHOT_CRC_LEN: usize = 4;
/// The smallest encoded snapshot entry: kind, two one-byte names, partition, offset.
const MIN_SNAPSHOT_ENTRY: usize = 1 + 2 + 1 + 2 + 1 + 4 + 8;

/// Record key kind: a committed offset.
const KEY_KIND_OFFSET: u8 = 1;

/// Bytes of commit-log data read per log read while applying records.
const READ_CHUNK: usize = 1 << 20;
/// Tombstone batches of `delete_topic` are cut at about this size.
const TOMBSTONE_BATCH_BYTES: usize = 1 << 20;

/// The commit log's configuration: small segments so that `delete_records_before` frees disk
/// space soon after a snapshot, no retention (snapshots decide what may go).
fn commit_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 20,
        max_batch_bytes: 8 << 20,
        durability: Durability::Always,
        hot_tail_bytes: 4 << 20,
        retention_age: None,
        retention_bytes: None,
        checkpoint_interval_bytes: 4 << 20,
        // Small batches into small segments: reserving space ahead would gain nothing.
        preallocate_bytes: 0,
        ..LogConfig::default()
    }
}

/// group → topic → partition → committed offset.
type Offsets = BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>;

/// (group, topic, partition) → the metadata of its latest commit, for commits that carried
/// any (most carry none: this stays apart so the offsets stay plain numbers).
type Metadata = BTreeMap<(String, String, u32), Box<str>>;

#[derive(Debug, Default)]
struct State {
    offsets: Offsets,
    metadata: Metadata,
    /// Commit-log offset of the next record to apply: every record below it is reflected in
    /// `offsets`.
    applied: u64,
    /// `applied` when the last snapshot was written or attempted; an automatic snapshot is due
    /// once more than the threshold of records were applied since.
    snapshot_base: u64,
}

/// Covered offsets of the snapshot files known to be intact (`None`: missing or damaged).
#[derive(Debug, Default, Clone, Copy)]
struct SnapshotFiles {
    current: Option<u64>,
    old: Option<u64>,
}

/// Durable committed offsets of every consumer group. See the [module docs](self).
///
/// Thread-safe: share it with `Arc`; all methods take `&self`.
pub struct OffsetStore {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    log: Log,
    threshold: u64,
    /// Lock order: `files` (held for a whole snapshot) before `state`.
    files: Mutex<SnapshotFiles>,
    /// A snapshot is claimed ([`OffsetStore::claim_snapshot`]) and not yet written: commits
    /// that find one due meanwhile leave it to its claimant.
    snapshot_claimed: AtomicBool,
    state: RwLock<State>,
}

impl fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.read();
        f.debug_struct("OffsetStore")
            .field("dir", &self.dir)
            .field("groups", &st.offsets.len())
            .field("applied", &st.applied)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl OffsetStore {
    /// Opens (creating if needed) the store in `dir` on the real file system, snapshotting
    /// every [`DEFAULT_SNAPSHOT_THRESHOLD`] commit records.
    pub fn open(dir: &Path) -> Result<OffsetStore> {
        Self::open_with(Arc::new(FileStorage), dir, DEFAULT_SNAPSHOT_THRESHOLD)
    }

    /// Like [`OffsetStore::open`], snapshotting once more than `threshold` commit records
    /// accumulated since the last snapshot. `threshold` must be positive.
    pub fn open_with_threshold(dir: &Path, threshold: u64) -> Result<OffsetStore> {
        Self::open_with(Arc::new(FileStorage), dir, threshold)
    }

    /// Like [`OffsetStore::open`], on the given storage (tests use
    /// [`weir_log::MemStorage`] to simulate crashes).
    pub fn open_with_storage(storage: Arc<dyn Storage>, dir: &Path) -> Result<OffsetStore> {
        Self::open_with(storage, dir, DEFAULT_SNAPSHOT_THRESHOLD)
    }

    /// Opens the store in `dir` on `storage` with the given snapshot threshold: loads the
    /// newest intact snapshot, then replays the commit-log records after it.
    pub fn open_with(storage: Arc<dyn Storage>, dir: &Path, threshold: u64) -> Result<OffsetStore> {
        if threshold == 0 {
            return Err(BrokerError::InvalidConfig(
                "offset snapshot threshold must be positive".into(),
            ));
        }
        storage
            .create_dir_all(dir)
            .map_err(|e| io_error("create directory", dir, e))?;
        let log = Log::open_with(storage.clone(), dir.join(COMMITS_DIR), commit_log_config())?;
        let tmp = dir.join(TMP_SNAPSHOT_FILE);
        match storage.remove_file(&tmp) {
            Ok(()) => {
                tracing::info!(path = %tmp.display(), "removed a snapshot left unfinished by a crash")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %tmp.display(), error = %e, "could not remove an unfinished snapshot")
            }
        }

        let log_start = log.log_start_offset();
        let hwm = log.high_watermark();
        let current_path = dir.join(SNAPSHOT_FILE);
        let old_path = dir.join(OLD_SNAPSHOT_FILE);
        let current = read_snapshot(&*storage, &current_path);
        let old = read_snapshot(&*storage, &old_path);
        let mut files = SnapshotFiles::default();
        for (read, slot, path) in [
            (&current, &mut files.current, &current_path),
            (&old, &mut files.old, &old_path),
        ] {
            match read {
                SnapshotRead::Intact(s) if s.covered <= hwm => *slot = Some(s.covered),
                SnapshotRead::Intact(s) => tracing::warn!(
                    path = %path.display(),
                    covered = s.covered,
                    high_watermark = hwm,
                    "snapshot covers commit-log records the log no longer has; it will be replaced"
                ),
                SnapshotRead::Damaged(why) => tracing::warn!(
                    path = %path.display(),
                    reason = %why,
                    "offset snapshot is damaged; not using it"
                ),
                SnapshotRead::Missing => {}
            }
        }
        let loaded = match (current, old) {
            (SnapshotRead::Intact(s), _) => Some(s),
            (current, SnapshotRead::Intact(s)) => {
                if matches!(current, SnapshotRead::Damaged(_)) {
                    tracing::warn!(
                        covered = s.covered,
                        "using the previous offset snapshot and replaying the commit log from \
                         its covered offset"
                    );
                }
                Some(s)
            }
            (current, old) => {
                if matches!(current, SnapshotRead::Damaged(_))
                    || matches!(old, SnapshotRead::Damaged(_))
                {
                    tracing::warn!(
                        log_start,
                        high_watermark = hwm,
                        "no intact offset snapshot; replaying the whole commit log"
                    );
                }
                None
            }
        };

        // Without a snapshot, replay from offset 0: if the log no longer starts there, the
        // check below says what was lost.
        let (offsets, metadata, mut start) = match loaded {
            Some(s) => (s.offsets, s.metadata, s.covered),
            None => (Offsets::new(), Metadata::new(), 0),
        };
        let mut rewrite = false;
        if start > hwm {
            // The log lost records the snapshot covers (it was damaged or removed). New commits
            // will get offsets below `start`; a snapshot claiming `start` would hide them from
            // the next replay, so replace it before accepting commits.
            start = hwm;
            rewrite = true;
        }
        if start < log_start {
            tracing::warn!(
                from = start,
                to = log_start,
                "commit-log records are gone and no intact snapshot covers them; offsets \
                 committed only there are lost"
            );
            start = log_start;
        }
        let store = OffsetStore {
            dir: dir.to_path_buf(),
            storage,
            log,
            threshold,
            files: Mutex::new(files),
            snapshot_claimed: AtomicBool::new(false),
            state: RwLock::new(State {
                offsets,
                metadata,
                applied: start,
                snapshot_base: start,
            }),
        };
        store.catch_up(&mut store.state.write())?;
        tracing::debug!(
            dir = %dir.display(),
            replayed_from = start,
            high_watermark = hwm,
            "opened the offset store"
        );
        if rewrite {
            store.snapshot()?;
        }
        Ok(store)
    }

    /// Commits `offsets` (topic, partition, offset) for `group`, atomically: after a crash
    /// either all of them are committed or none. Durable when it returns `Ok`. An empty list
    /// does nothing. A partition listed twice keeps the later offset.
    pub fn commit(&self, group: &str, offsets: &[(String, u32, u64)]) -> Result<()> {
        let with: Vec<(String, u32, u64, String)> = offsets
            .iter()
            .map(|(t, p, o)| (t.clone(), *p, *o, String::new()))
            .collect();
        self.commit_with_metadata(group, &with)
    }

    /// [`OffsetStore::commit`], each offset with the metadata string its committer gave (at
    /// most [`MAX_METADATA_BYTES`]; empty for none), returned with it by
    /// [`OffsetStore::metadata`].
    pub fn commit_with_metadata(
        &self,
        group: &str,
        offsets: &[(String, u32, u64, String)],
    ) -> Result<()> {
        let Some(batch) = self.commit_batch(group, offsets)? else {
            return Ok(());
        };
        self.log.append(batch)?;
        self.apply_committed()?;
        self.snapshot_if_due();
        Ok(())
    }

    /// The commit-log batch that commits `offsets` for `group`, checked (names, metadata and
    /// batch sizes); `None` for an empty list. [`OffsetStore::commit_with_metadata`] in three
    /// steps, for a caller that awaits durability without holding a thread: append this
    /// batch to [`OffsetStore::log`], wait until it is durable, then
    /// [`OffsetStore::apply_committed`] (and [`OffsetStore::snapshot_if_due`]).
    pub fn commit_batch(
        &self,
        group: &str,
        offsets: &[(String, u32, u64, String)],
    ) -> Result<Option<Bytes>> {
        if offsets.is_empty() {
            return Ok(None);
        }
        check_name("group", group)?;
        let mut builder = BatchBuilder::new(now_ms());
        for (topic, partition, offset, metadata) in offsets {
            check_name("topic", topic)?;
            if metadata.len() > MAX_METADATA_BYTES {
                return Err(BrokerError::InvalidRequest(format!(
                    "offset metadata of {} bytes, over the {MAX_METADATA_BYTES} kept",
                    metadata.len()
                )));
            }
            let key = encode_key(group, topic, *partition);
            builder.push(RecordSpec::keyed(&key, &encode_value(*offset, metadata)));
        }
        let batch = builder.build();
        self.check_size(batch.len())?;
        Ok(Some(Bytes::from(batch)))
    }

    /// The commit log, for [`OffsetStore::commit_batch`]'s batches.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// After a commit batch is durable: applies it, and whatever other commits became
    /// durable with it. Reads them back from the log's in-memory tail.
    pub fn apply_committed(&self) -> Result<()> {
        self.catch_up(&mut self.state.write())
    }

    fn snapshot_due(&self) -> bool {
        let st = self.state.read();
        st.applied - st.snapshot_base > self.threshold
    }

    /// Whether a snapshot is due and this caller is the one to take it, with
    /// [`OffsetStore::take_claimed_snapshot`] (which writes and syncs a file). One caller at
    /// a time is told so: thousands of commits may find the same snapshot due.
    pub fn claim_snapshot(&self) -> bool {
        self.snapshot_due()
            && self
                .snapshot_claimed
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Takes the snapshot [`OffsetStore::claim_snapshot`] gave this caller. A failure is
    /// logged, not returned (the commits it would cover are durable anyway), and tried again
    /// when one is next due.
    pub fn take_claimed_snapshot(&self) {
        if let Some(mut files) = self.files.try_lock()
            && let Err(e) = self.snapshot_locked(&mut files)
        {
            tracing::warn!(
                dir = %self.dir.display(),
                error = %e,
                "automatic offset snapshot failed; the commit log grows until one succeeds"
            );
        }
        self.snapshot_claimed.store(false, Ordering::Release);
    }

    /// The offset `group` committed for `topic`/`partition`, if any.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let st = self.state.read();
        st.offsets.get(group)?.get(topic)?.get(&partition).copied()
    }

    /// The metadata string of `group`'s latest commit for `topic`/`partition` (empty for none).
    pub fn metadata(&self, group: &str, topic: &str, partition: u32) -> String {
        let st = self.state.read();
        st.metadata
            .get(&(group.to_string(), topic.to_string(), partition))
            .map_or_else(String::new, |m| m.to_string())
    }

    /// Every offset `group` committed, as (topic, partition, offset), sorted.
    pub fn group_offsets(&self, group: &str) -> Vec<(String, u32, u64)> {
        let st = self.state.read();
        let Some(topics) = st.offsets.get(group) else {
            return Vec::new();
        };
        topics
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, o)| (t.clone(), *p, *o)))
            .collect()
    }

    /// Groups with at least one committed offset, sorted.
    pub fn groups(&self) -> Vec<String> {
        self.state.read().offsets.keys().cloned().collect()
    }

    /// Forgets every group's offsets of `topic` (durably, with tombstones). Tombstones are
    /// written in batches of about 1 MiB; if this fails midway, calling it again finishes the
    /// job. Offsets committed for `topic` concurrently with this call may survive it: the
    /// broker refuses commits for a topic it is deleting.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let victims: Vec<(String, String, u32)> = {
            let st = self.state.read();
            st.offsets
                .iter()
                .filter_map(|(g, topics)| topics.get(topic).map(|parts| (g, parts)))
                .flat_map(|(g, parts)| {
                    parts
                        .keys()
                        .map(move |p| (g.clone(), topic.to_string(), *p))
                })
                .collect()
        };
        self.forget(&victims)
    }

    /// Forgets `group`'s offsets: all of them (`None`), or those of the (topic, partition)
    /// pairs listed. Durable when it returns `Ok`; as [`OffsetStore::delete_topic`], a failure
    /// midway is finished by calling it again.
    pub fn delete_group(&self, group: &str, partitions: Option<&[(String, u32)]>) -> Result<()> {
        let victims: Vec<(String, String, u32)> = match partitions {
            Some(listed) => {
                let st = self.state.read();
                let Some(topics) = st.offsets.get(group) else {
                    return Ok(());
                };
                listed
                    .iter()
                    .filter(|(t, p)| topics.get(t).is_some_and(|parts| parts.contains_key(p)))
                    .map(|(t, p)| (group.to_string(), t.clone(), *p))
                    .collect()
            }
            None => self
                .group_offsets(group)
                .into_iter()
                .map(|(t, p, _)| (group.to_string(), t, p))
                .collect(),
        };
        self.forget(&victims)
    }

    /// Writes a tombstone for each (group, topic, partition), in batches of about 1 MiB.
    fn forget(&self, victims: &[(String, String, u32)]) -> Result<()> {
        let mut builder = BatchBuilder::new(now_ms());
        for (group, topic, partition) in victims {
            let key = encode_key(group, topic, *partition);
            builder.push(RecordSpec {
                key: Some(&key),
                value: None,
                ..RecordSpec::default()
            });
            if builder.size() >= TOMBSTONE_BATCH_BYTES {
                let full = std::mem::replace(&mut builder, BatchBuilder::new(now_ms()));
                self.append(full.build())?;
            }
        }
        if !builder.is_empty() {
            self.append(builder.build())?;
        }
        self.snapshot_if_due();
        Ok(())
    }

    /// Writes a snapshot of every committed offset, then lets the commit log drop the records
    /// the previous snapshot covers (the log keeps the records after it, so either snapshot
    /// file alone is enough to recover).
    pub fn snapshot(&self) -> Result<()> {
        let mut files = self.files.lock();
        self.snapshot_locked(&mut files)
    }

    /// Closes the commit log. Reads keep working; commits fail afterwards.
    pub fn close(&self) -> Result<()> {
        self.log.close()?;
        Ok(())
    }

    /// Appends one batch, then applies everything up to the log's high watermark.
    fn append(&self, batch: Vec<u8>) -> Result<()> {
        self.check_size(batch.len())?;
        self.log.append(batch)?;
        self.catch_up(&mut self.state.write())
    }

    fn check_size(&self, len: usize) -> Result<()> {
        let max = self.log.config().max_batch_bytes;
        if len > max {
            return Err(BrokerError::InvalidRequest(format!(
                "offset commit of {len} bytes exceeds the limit of {max} bytes; commit fewer \
                 partitions at once"
            )));
        }
        Ok(())
    }

    /// Applies commit-log records from `st.applied` up to the high watermark, in offset order.
    fn catch_up(&self, st: &mut State) -> Result<()> {
        loop {
            let hwm = self.log.high_watermark();
            if st.applied >= hwm {
                return Ok(());
            }
            let read = self.log.read(st.applied, READ_CHUNK)?;
            let before = st.applied;
            for chunk in &read.chunks {
                for batch in Batches::new(chunk) {
                    let (_, bytes) = batch.map_err(|e| corrupt_record(st.applied, &e))?;
                    let records =
                        Records::new(bytes).map_err(|e| corrupt_record(st.applied, &e))?;
                    for record in records {
                        let record = record.map_err(|e| corrupt_record(st.applied, &e))?;
                        let offset = record.offset as u64;
                        if offset < st.applied {
                            continue; // the start of a batch that was partly applied
                        }
                        apply_record(&mut st.offsets, &mut st.metadata, record.key, record.value)
                            .map_err(|why| corrupt_record(offset, &why))?;
                        st.applied = offset + 1;
                    }
                }
            }
            if st.applied == before {
                return Err(corrupt_record(
                    before,
                    &"the log returned no record at this offset",
                ));
            }
        }
    }

    /// Takes a snapshot if enough was committed since the last one (unless one is under way):
    /// writes and syncs a file. A failure is logged, not returned (the commit that triggered
    /// it is durable anyway), and tried again after the next commit.
    pub fn snapshot_if_due(&self) {
        if self.claim_snapshot() {
            self.take_claimed_snapshot();
        }
    }

    fn snapshot_locked(&self, files: &mut SnapshotFiles) -> Result<()> {
        let (covered, image) = {
            let mut st = self.state.write();
            self.catch_up(&mut st)?;
            // Set before writing, so that a failing disk is not retried on every commit.
            st.snapshot_base = st.applied;
            let st = RwLockWriteGuard::downgrade(st);
            (
                st.applied,
                encode_snapshot(st.applied, &st.offsets, &st.metadata),
            )
        };
        if files.current == Some(covered) {
            return Ok(());
        }
        let tmp = self.dir.join(TMP_SNAPSHOT_FILE);
        let current = self.dir.join(SNAPSHOT_FILE);
        let old = self.dir.join(OLD_SNAPSHOT_FILE);
        self.write_synced(&tmp, &image)?;
        if let Some(c) = files.current {
            // Keep the intact snapshot as the fallback. A damaged or missing one is simply
            // replaced below, leaving the old fallback as it is.
            self.storage
                .rename(&current, &old)
                .map_err(|e| io_error("rename", &current, e))?;
            files.old = Some(c);
            files.current = None;
        }
        self.storage
            .rename(&tmp, &current)
            .map_err(|e| io_error("rename", &tmp, e))?;
        files.current = Some(covered);
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| io_error("sync directory", &self.dir, e))?;
        // Only now, with both snapshots durable, may the log forget what the older one covers.
        if let Some(floor) = files.old {
            let floor = floor.min(covered);
            if floor > self.log.log_start_offset() {
                self.log.delete_records_before(floor)?;
            }
        }
        tracing::debug!(covered, bytes = image.len(), "wrote an offset snapshot");
        Ok(())
    }

    fn write_synced(&self, path: &Path, content: &[u8]) -> Result<()> {
        let file = self
            .storage
            .open_file(path, true)
            .map_err(|e| io_error("create", path, e))?;
        file.set_len(0).map_err(|e| io_error("truncate", path, e))?;
        file.write_all_at(content, 0)
            .map_err(|e| io_error("write", path, e))?;
        file.sync_data().map_err(|e| io_error("sync", path, e))?;
        Ok(())
    }
}

fn io_error(op: &'static str, path: &Path, e: io::Error) -> BrokerError {
    BrokerError::storage(op, path, e)
}

fn corrupt_record(offset: u64, why: &dyn fmt::Display) -> BrokerError {
    BrokerError::CorruptMetadata {
        what: format!("the committed-offsets log's record at offset {offset}"),
        reason: why.to_string(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(BrokerError::InvalidRequest(format!("{what} name is empty")));
    }
    if name.len() > usize::from(u16::MAX) {
        return Err(BrokerError::InvalidRequest(format!(
            "{what} name is {} bytes long, longer than {}",
            name.len(),
            u16::MAX
        )));
    }
    Ok(())
}

/// Applies one commit-log record: an offset (and its metadata), or a tombstone (null value).
fn apply_record(
    offsets: &mut Offsets,
    metadata: &mut Metadata,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> std::result::Result<(), String> {
    let key = key.ok_or("record has no key")?;
    let mut cur = Cursor(key);
    let (group, topic, partition) = decode_key(&mut cur)?;
    if !cur.0.is_empty() {
        return Err(format!("{} stray bytes after the key", cur.0.len()));
    }
    match value {
        Some(v) => {
            let (offset, meta) = decode_value(v)?;
            let slot = (group, topic, partition);
            match meta {
                Some(m) => metadata.insert(slot.clone(), m),
                None => metadata.remove(&slot),
            };
            let (group, topic, partition) = slot;
            offsets
                .entry(group)
                .or_default()
                .entry(topic)
                .or_default()
                .insert(partition, offset);
        }
        None => {
            metadata.remove(&(group.clone(), topic.clone(), partition));
            if let Some(topics) = offsets.get_mut(&group) {
                if let Some(parts) = topics.get_mut(&topic) {
                    parts.remove(&partition);
                    if parts.is_empty() {
                        topics.remove(&topic);
                    }
                }
                if topics.is_empty() {
                    offsets.remove(&group);
                }
            }
        }
    }
    Ok(())
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    // Names are checked to fit by `check_name` (commits) or were decoded from a u16 length.
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

fn put_key(out: &mut Vec<u8>, group: &str, topic: &str, partition: u32) {
    out.push(KEY_KIND_OFFSET);
    put_name(out, group);
    put_name(out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
}

fn encode_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 2 + group.len() + 2 + topic.len() + 4);
    put_key(&mut key, group, topic, partition);
    key
}

/// Names as the commit log stores them: a length, then UTF-8, never empty.
trait ReadName {
    fn name(&mut self, what: &str) -> std::result::Result<String, String>;
}

impl ReadName for Cursor<'_> {
    fn name(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self
            .u16()
            .ok_or_else(|| format!("{what} length cut short"))?;
        let bytes = self
            .take(usize::from(len))
            .ok_or_else(|| format!("{what} name cut short"))?;
        if bytes.is_empty() {
            return Err(format!("{what} name is empty"));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} name is not UTF-8"))
    }
}

fn decode_key(cur: &mut Cursor<'_>) -> std::result::Result<(String, String, u32), String> {
    match cur.u8() {
        Some(KEY_KIND_OFFSET) => {}
        Some(kind) => return Err(format!("unknown key kind {kind}")),
        None => return Err("empty key".into()),
    }
    let group = cur.name("group")?;
    let topic = cur.name("topic")?;
    let partition = cur.u32().ok_or("partition cut short")?;
    Ok((group, topic, partition))
}

/// A commit record's value: the offset, then the metadata (absent when empty).
fn encode_value(offset: u64, metadata: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + metadata.len());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(metadata.as_bytes());
    v
}

fn decode_value(v: &[u8]) -> std::result::Result<(u64, Option<Box<str>>), String> {
    let Some((offset, meta)) = v.split_first_chunk::<8>() else {
        return Err(format!("offset value is {} bytes, fewer than 8", v.len()));
    };
    if meta.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "{} bytes of metadata, over {MAX_METADATA_BYTES}",
            meta.len()
        ));
    }
    let meta = std::str::from_utf8(meta).map_err(|_| "metadata is not UTF-8".to_string())?;
    Ok((
        u64::from_be_bytes(*offset),
        (!meta.is_empty()).then(|| meta.into()),
    ))
}

/// A snapshot as read from disk.
#[derive(Debug)]
struct Snapshot {
    covered: u64,
    offsets: Offsets,
    metadata: Metadata,
}

#[derive(Debug)]
enum SnapshotRead {
    Missing,
    Damaged(String),
    Intact(Snapshot),
}

fn encode_snapshot(covered: u64, offsets: &Offsets, metadata: &Metadata) -> Vec<u8> {
    let count: u64 = offsets
        .values()
        .flat_map(|topics| topics.values())
        .map(|parts| parts.len() as u64)
        .sum();
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + count as usize * 32);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    out.extend_from_slice(&covered.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for (group, topics) in offsets {
        for (topic, parts) in topics {
            for (partition, offset) in parts {
                put_key(&mut out, group, topic, *partition);
                out.extend_from_slice(&offset.to_be_bytes());
                // Metadata is at most MAX_METADATA_BYTES, checked when committed.
                let meta = metadata
                    .get(&(group.clone(), topic.clone(), *partition))
                    .map_or("", |m| m);
                out.extend_from_slice(&(meta.len() as u16).to_be_bytes());
                out.extend_from_slice(meta.as_bytes());
            }
        }
    }
    let crc = crc_fast::crc32_iscsi(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode_snapshot(buf: &[u8]) -> std::result::Result<Snapshot, String> {
    if buf.len() < SNAPSHOT_HEADER_LEN + SNAPSHOT_CRC_LEN {
        return Err(format!("{} bytes is too short for a snapshot", buf.len()));
    }
    let (body, crc) = buf.split_at(buf.len() - SNAPSHOT_CRC_LEN);
    let mut cur = Cursor(body);
    if cur.array::<8>() != Some(SNAPSHOT_MAGIC) {
        return Err("bad magic".into());
    }
    let version = cur.u32().ok_or("cut short")?;
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(format!(
            "unsupported version {version} (this build reads 1 to {SNAPSHOT_VERSION})"
        ));
    }
    let stored = u32::from_be_bytes(crc.try_into().map_err(|_| "cut short")?);
    let actual = crc_fast::crc32_iscsi(body);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let covered = cur.u64().ok_or("cut short")?;
    let count = cur.u64().ok_or("cut short")?;
    if count > (cur.0.len() / MIN_SNAPSHOT_ENTRY) as u64 {
        return Err(format!("claims {count} entries in {} bytes", cur.0.len()));
    }
    let mut offsets = Offsets::new();
    let mut metadata = Metadata::new();
    for i in 0..count {
        let (group, topic, partition) =
            decode_key(&mut cur).map_err(|why| format!("entry {i}: {why}"))?;
        let offset = cur
            .u64()
            .ok_or_else(|| format!("entry {i}: offset cut short"))?;
        if version >= 2 {
            let len = cur
                .u16()
                .ok_or_else(|| format!("entry {i}: metadata length cut short"))?;
            if usize::from(len) > MAX_METADATA_BYTES {
                return Err(format!("entry {i}: {len} bytes of metadata"));
            }
            let meta = cur
                .take(usize::from(len))
                .ok_or_else(|| format!("entry {i}: metadata cut short"))?;
            let meta = std::str::from_utf8(meta)
                .map_err(|_| format!("entry {i}: metadata is not UTF-8"))?;
            if !meta.is_empty() {
                metadata.insert((group.clone(), topic.clone(), partition), meta.into());
            }
        }
        offsets
            .entry(group)
            .or_default()
            .entry(topic)
            .or_default()
            .insert(partition, offset);
    }
    if !cur.0.is_empty() {
        return Err(format!("{} stray bytes after the entries", cur.0.len()));
    }
    Ok(Snapshot {
        covered,
        offsets,
        metadata,
    })
}

fn read_snapshot(storage: &dyn Storage, path: &Path) -> SnapshotRead {
    let file = match storage.open_file(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return SnapshotRead::Missing,
        Err(e) => return SnapshotRead::Damaged(format!("cannot open: {e}")),
    };
    let len = match file.len() {
        Ok(len) => len,
        Err(e) => return SnapshotRead::Damaged(format!("cannot read its length: {e}")),
    };
    let Ok(len) = usize::try_from(len) else {
        return SnapshotRead::Damaged(format!("{len} bytes is too large"));
    };
    let mut buf = vec![0; len];
    if let Err(e) = read_exact_at(&*file, &mut buf, 0) {
        return SnapshotRead::Damaged(format!("cannot read: {e}"));
    }
    match decode_snapshot(&buf) {
        Ok(s) => SnapshotRead::Intact(s),
        Err(why) => SnapshotRead::Damaged(why),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use weir_log::{CrashMode, FaultKind, MemStorage};

    use super::*;

    /// (group, topic, partition) → offset: what the store should hold.
    type Model = BTreeMap<(String, String, u32), u64>;

    /// The offsets of one commit request: (topic, partition, offset).
    type Commit = Vec<(String, u32, u64)>;

    fn dir() -> &'static Path {
        Path::new("/broker/offsets")
    }

    fn open_mem(s: &MemStorage, threshold: u64) -> OffsetStore {
        OffsetStore::open_with(Arc::new(s.clone()), dir(), threshold).unwrap()
    }

    /// Everything the store holds, read through the public API (and cross-checked).
    fn dump(store: &OffsetStore) -> Model {
        let mut m = Model::new();
        for g in store.groups() {
            let offsets = store.group_offsets(&g);
            assert!(!offsets.is_empty(), "group {g} is listed without offsets");
            for (t, p, o) in offsets {
                assert_eq!(store.committed(&g, &t, p), Some(o));
                m.insert((g.clone(), t, p), o);
            }
        }
        m
    }

    fn c(topic: &str, partition: u32, offset: u64) -> (String, u32, u64) {
        (topic.to_string(), partition, offset)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Commit(String, Commit),
        DeleteTopic(String),
        Snapshot,
    }

    fn apply_model(m: &mut Model, op: &Op) {
        match op {
            Op::Commit(g, offsets) => {
                for (t, p, o) in offsets {
                    m.insert((g.clone(), t.clone(), *p), *o);
                }
            }
            Op::DeleteTopic(t) => m.retain(|(_, topic, _), _| topic != t),
            Op::Snapshot => {}
        }
    }

    fn exec(store: &OffsetStore, op: &Op) -> Result<()> {
        match op {
            Op::Commit(g, offsets) => store.commit(g, offsets),
            Op::DeleteTopic(t) => store.delete_topic(t),
            Op::Snapshot => store.snapshot(),
        }
    }

    /// A fixed mix of commits (one to three partitions), topic deletions and snapshots.
    fn script() -> Vec<Op> {
        let mut ops = Vec::new();
        for i in 0..40u64 {
            let g = format!("g{}", i % 3);
            let t = |k: u64| format!("t{}", (i + k) % 4);
            let op = match i % 9 {
                4 => Op::DeleteTopic(t(0)),
                7 => Op::Snapshot,
                n => Op::Commit(
                    g,
                    (0..=(n % 3))
                        .map(|k| (t(k), (i % 2) as u32, 100 * i + k))
                        .collect(),
                ),
            };
            ops.push(op);
        }
        ops
    }

    #[test]
    fn commits_survive_close_and_reopen_on_the_real_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(tmp.path()).unwrap();
        assert!(store.groups().is_empty());
        store
            .commit("g1", &[c("orders", 0, 10), c("orders", 1, 20)])
            .unwrap();
        store.commit("g2", &[c("orders", 0, 5)]).unwrap();
        store.commit("g1", &[c("orders", 0, 11)]).unwrap();
        store.commit("g1", &[]).unwrap();
        assert_eq!(store.committed("g1", "orders", 0), Some(11));
        assert_eq!(store.committed("g1", "orders", 2), None);
        assert_eq!(store.committed("g3", "orders", 0), None);
        assert_eq!(
            store.group_offsets("g1"),
            vec![c("orders", 0, 11), c("orders", 1, 20)]
        );
        assert_eq!(store.groups(), ["g1", "g2"]);
        let before = dump(&store);
        store.close().unwrap();
        assert!(matches!(
            store.commit("g1", &[c("orders", 0, 12)]),
            Err(BrokerError::Log(weir_log::LogError::Closed))
        ));

        let store = OffsetStore::open(tmp.path()).unwrap();
        assert_eq!(dump(&store), before);
        store.snapshot().unwrap();
        store.commit("g2", &[c("orders", 3, 7)]).unwrap();
        store.close().unwrap();
        let store = OffsetStore::open(tmp.path()).unwrap();
        assert_eq!(store.committed("g2", "orders", 3), Some(7));
        assert_eq!(store.committed("g1", "orders", 1), Some(20));
        assert!(tmp.path().join(SNAPSHOT_FILE).is_file());
    }

    #[test]
    fn a_crash_keeps_every_acknowledged_commit() {
        let s = MemStorage::new();
        let store = open_mem(&s, 4);
        let mut model = Model::new();
        for (i, op) in script().iter().enumerate() {
            exec(&store, op).unwrap();
            apply_model(&mut model, op);
            // Crash (power loss: only synced bytes survive) after every step.
            let image = s.crash_image(CrashMode::SyncedOnly);
            let reopened = open_mem(&image, 4);
            assert_eq!(dump(&reopened), model, "after step {i}: {op:?}");
        }
    }

    #[test]
    fn a_crash_at_any_io_operation_keeps_acknowledged_commits_and_loses_no_atomicity() {
        let threshold = 3;
        let clean = MemStorage::new();
        let store = open_mem(&clean, threshold);
        let first = clean.op_count();
        for op in &script() {
            exec(&store, op).unwrap();
        }
        let total = clean.op_count() - first;
        assert!(
            total > 100,
            "the script should exercise the disk ({total} ops)"
        );

        for fault_at in 0..total {
            for mode in [CrashMode::SyncedOnly, CrashMode::TornTail(fault_at)] {
                let s = MemStorage::new();
                let store = open_mem(&s, threshold);
                s.inject_faults(s.op_count() + fault_at, u64::MAX, FaultKind::Dead);
                let mut acked = Model::new();
                let mut in_flight = None;
                for op in &script() {
                    let mut next = acked.clone();
                    apply_model(&mut next, op);
                    match exec(&store, op) {
                        Ok(()) => acked = next,
                        Err(_) => {
                            in_flight = Some(next);
                            break;
                        }
                    }
                }
                let image = s.crash_image(mode);
                let reopened = open_mem(&image, threshold);
                let got = dump(&reopened);
                assert!(
                    got == acked || Some(&got) == in_flight.as_ref(),
                    "fault at op {fault_at} ({mode:?}): recovered {got:?}\nacknowledged {acked:?}\n\
                     in flight {in_flight:?}"
                );
                // The recovered store works.
                reopened.commit("after", &[c("t0", 0, 1)]).unwrap();
                assert_eq!(reopened.committed("after", "t0", 0), Some(1));
            }
        }
    }

    #[test]
    fn concurrent_commits_are_applied_in_log_order() {
        let s = MemStorage::new();
        let store = Arc::new(open_mem(&s, 25));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        let own = format!("own{t}");
                        store
                            .commit("g", &[c("shared", 0, t * 1000 + i), c(&own, 0, i)])
                            .unwrap();
                        assert_eq!(store.committed("g", &own, 0), Some(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let live = dump(&store);
        assert_eq!(live.len(), 9);
        for t in 0..8 {
            assert_eq!(live[&("g".into(), format!("own{t}"), 0)], 49);
        }
        // Whichever commit won the shared partition in memory also wins the replay.
        store.close().unwrap();
        assert_eq!(dump(&open_mem(&s, 25)), live);
    }

    #[test]
    fn snapshots_are_taken_automatically_and_bound_the_commit_log() {
        let threshold = 10;
        let s = MemStorage::new();
        let store = open_mem(&s, threshold);
        for i in 0..200u32 {
            store.commit("g", &[c("t", i % 7, u64::from(i))]).unwrap();
        }
        let (start, end) = (store.log.log_start_offset(), store.log.high_watermark());
        assert_eq!(end, 200);
        assert!(start > 0, "the commit log was never trimmed");
        assert!(
            end - start <= 2 * (threshold + 1),
            "the log keeps [{start}, {end}): more than two snapshot intervals"
        );
        assert!(s.read_file(&dir().join(SNAPSHOT_FILE)).is_some());
        assert!(s.read_file(&dir().join(OLD_SNAPSHOT_FILE)).is_some());
        let live = dump(&store);
        assert_eq!(live.len(), 7);
        assert_eq!(live[&("g".into(), "t".into(), 199 % 7)], 199);
        // Reopening replays only the records after the snapshot.
        drop(store);
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert_eq!(dump(&open_mem(&image, threshold)), live);
    }

    #[test]
    fn tombstones_forget_a_topic_for_every_group() {
        let s = MemStorage::new();
        let store = open_mem(&s, 1000);
        store
            .commit("g1", &[c("t", 0, 1), c("t", 1, 2), c("u", 0, 3)])
            .unwrap();
        store.commit("g2", &[c("t", 0, 4)]).unwrap();
        store.commit("g3", &[c("tt", 0, 5)]).unwrap();
        store.delete_topic("t").unwrap();
        store.delete_topic("missing").unwrap();
        let want = Model::from([
            (("g1".into(), "u".into(), 0), 3),
            (("g3".into(), "tt".into(), 0), 5),
        ]);
        assert_eq!(dump(&store), want);
        assert_eq!(store.groups(), ["g1", "g3"], "g2 had only offsets of t");
        assert_eq!(store.committed("g1", "t", 0), None);

        // Replay applies the tombstones; so does a snapshot taken after them.
        assert_eq!(
            dump(&open_mem(&s.crash_image(CrashMode::SyncedOnly), 1000)),
            want
        );
        store.snapshot().unwrap();
        store.commit("g2", &[c("t", 0, 9)]).unwrap();
        store.close().unwrap();
        let store = open_mem(&s, 1000);
        let mut want = want;
        want.insert(("g2".into(), "t".into(), 0), 9);
        assert_eq!(dump(&store), want, "a recreated topic starts afresh");
    }

    const FLIP_MIDDLE: fn(&mut Vec<u8>) = |b| {
        let i = b.len() / 2;
        b[i] ^= 0x10;
    };

    type Damage = (&'static str, fn(&mut Vec<u8>));

    const DAMAGES: [Damage; 6] = [
        ("flipped bit", FLIP_MIDDLE),
        ("cut in half", |b| b.truncate(b.len() / 2)),
        ("empty", |b| b.clear()),
        ("garbage appended", |b| b.extend_from_slice(b"junk")),
        ("future version", |b| {
            b[8..12].copy_from_slice(&2u32.to_be_bytes())
        }),
        ("wrong magic", |b| b[0] = b'X'),
    ];

    fn damage(s: &MemStorage, name: &str, how: fn(&mut Vec<u8>)) {
        let path = dir().join(name);
        let mut bytes = s.read_file(&path).unwrap();
        how(&mut bytes);
        s.write_file(&path, bytes);
    }

    #[test]
    fn a_damaged_snapshot_falls_back_to_the_previous_snapshot() {
        let s = MemStorage::new();
        let store = open_mem(&s, 1000);
        store.commit("g", &[c("a", 0, 1), c("a", 1, 2)]).unwrap();
        store.snapshot().unwrap();
        store.commit("g", &[c("b", 0, 3)]).unwrap();
        store.commit("h", &[c("a", 0, 4)]).unwrap();
        store.snapshot().unwrap();
        store.commit("g", &[c("a", 0, 5)]).unwrap();
        store.delete_topic("b").unwrap();
        assert_eq!(
            store.log.log_start_offset(),
            2,
            "the log dropped what the first snapshot covers"
        );
        let want = dump(&store);
        store.close().unwrap();

        for (what, how) in DAMAGES {
            let image = s.crash_image(CrashMode::SyncedOnly);
            damage(&image, SNAPSHOT_FILE, how);
            let reopened = open_mem(&image, 1000);
            assert_eq!(dump(&reopened), want, "current snapshot {what}");
            // The next snapshot replaces the damaged file and keeps the intact fallback.
            reopened.commit("g", &[c("z", 0, 6)]).unwrap();
            reopened.snapshot().unwrap();
            reopened.close().unwrap();
            damage(&image, SNAPSHOT_FILE, FLIP_MIDDLE);
            let mut want = want.clone();
            want.insert(("g".into(), "z".into(), 0), 6);
            assert_eq!(dump(&open_mem(&image, 1000)), want, "then damaged again");
        }

        // A damaged fallback alone does not matter either.
        let image = s.crash_image(CrashMode::SyncedOnly);
        damage(&image, OLD_SNAPSHOT_FILE, FLIP_MIDDLE);
        assert_eq!(dump(&open_mem(&image, 1000)), want);

        // A snapshot lost to a crash between its renames: the fallback is used.
        let image = s.crash_image(CrashMode::SyncedOnly);
        image.remove_file(&dir().join(SNAPSHOT_FILE)).unwrap();
        image.sync_dir(dir()).unwrap();
        assert_eq!(dump(&open_mem(&image, 1000)), want);
    }

    #[test]
    fn without_an_intact_snapshot_the_whole_commit_log_is_replayed() {
        let s = MemStorage::new();
        let store = open_mem(&s, 1000);
        store.commit("g", &[c("a", 0, 1)]).unwrap();
        store.snapshot().unwrap();
        store.commit("g", &[c("a", 1, 2)]).unwrap();
        store.delete_topic("a").unwrap();
        store.commit("g", &[c("a", 2, 3)]).unwrap();
        assert_eq!(store.log.log_start_offset(), 0, "nothing trimmed yet");
        let want = dump(&store);
        store.close().unwrap();
        for (what, how) in DAMAGES {
            let image = s.crash_image(CrashMode::SyncedOnly);
            damage(&image, SNAPSHOT_FILE, how);
            assert_eq!(dump(&open_mem(&image, 1000)), want, "snapshot {what}");
        }
    }

    #[test]
    fn with_both_snapshots_damaged_the_store_still_opens() {
        let s = MemStorage::new();
        let store = open_mem(&s, 1000);
        store.commit("g", &[c("a", 0, 1)]).unwrap();
        store.snapshot().unwrap();
        store.commit("g", &[c("a", 1, 2)]).unwrap();
        store.snapshot().unwrap();
        store.commit("g", &[c("a", 2, 3)]).unwrap();
        store.close().unwrap();
        damage(&s, SNAPSHOT_FILE, FLIP_MIDDLE);
        damage(&s, OLD_SNAPSHOT_FILE, FLIP_MIDDLE);
        let store = open_mem(&s, 1000);
        // What the log still holds is back; what only the snapshots held is lost, with a
        // warning, instead of refusing to start.
        assert_eq!(store.committed("g", "a", 1), Some(2));
        assert_eq!(store.committed("g", "a", 2), Some(3));
        assert_eq!(store.committed("g", "a", 0), None);
    }

    #[test]
    fn a_snapshot_ahead_of_the_log_is_rewritten_before_commits_are_accepted() {
        let s = MemStorage::new();
        let store = open_mem(&s, 1000);
        for i in 0..5 {
            store.commit("g", &[c("old", i, 10)]).unwrap();
        }
        store.snapshot().unwrap();
        store.close().unwrap();
        // The commit log is lost; only the snapshot (covering 5 records) is left.
        let lost = MemStorage::new();
        lost.create_dir_all(dir()).unwrap();
        let path = dir().join(SNAPSHOT_FILE);
        lost.write_file(&path, s.read_file(&path).unwrap());

        let store = open_mem(&lost, 1000);
        assert_eq!(store.group_offsets("g").len(), 5);
        // This lands at commit-log offset 0, below what the old snapshot claimed to cover.
        store.commit("g", &[c("new", 0, 7)]).unwrap();
        drop(store);
        let store = open_mem(&lost.crash_image(CrashMode::SyncedOnly), 1000);
        assert_eq!(store.committed("g", "new", 0), Some(7));
        assert_eq!(store.group_offsets("g").len(), 6);
    }

    #[test]
    fn bad_requests_are_refused_and_store_nothing() {
        let s = MemStorage::new();
        let store = open_mem(&s, 1000);
        let long = "x".repeat(usize::from(u16::MAX) + 1);
        let near_limit = "y".repeat(60_000);
        let huge: Vec<_> = (0..200).map(|p| c(&near_limit, p, 1)).collect();
        let cases: [(&str, &str, Commit); 4] = [
            ("empty group", "", vec![c("t", 0, 1)]),
            ("empty topic", "g", vec![c("t", 0, 1), c("", 0, 1)]),
            ("topic too long", "g", vec![c(&long, 0, 1)]),
            ("batch too large", "g", huge),
        ];
        for (what, group, offsets) in cases {
            let result = store.commit(group, &offsets);
            assert!(
                matches!(result, Err(BrokerError::InvalidRequest(_))),
                "{what}: {result:?}"
            );
        }
        assert!(store.groups().is_empty());
        assert_eq!(store.log.high_watermark(), 0);
        assert!(matches!(
            OffsetStore::open_with(Arc::new(MemStorage::new()), dir(), 0),
            Err(BrokerError::InvalidConfig(_))
        ));
    }

    /// A snapshot written before commits kept metadata (version 1: no metadata after each
    /// offset) still reads, its offsets without metadata.
    #[test]
    fn a_version_one_snapshot_still_reads() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(&SNAPSHOT_MAGIC);
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&77u64.to_be_bytes());
        v1.extend_from_slice(&2u64.to_be_bytes());
        for (p, o) in [(0u32, 5u64), (1, 9)] {
            put_key(&mut v1, "g", "t", p);
            v1.extend_from_slice(&o.to_be_bytes());
        }
        let crc = crc_fast::crc32_iscsi(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        let snap = decode_snapshot(&v1).unwrap();
        assert_eq!(snap.covered, 77);
        assert_eq!(snap.offsets["g"]["t"], BTreeMap::from([(0, 5), (1, 9)]));
        assert!(snap.metadata.is_empty());
    }

    #[test]
    fn keys_are_unambiguous() {
        let a = encode_key("a", "bc", 1);
        let b = encode_key("ab", "c", 1);
        let d = encode_key("a/b", "c", 1);
        let e = encode_key("a", "b/c", 1);
        assert_ne!(a, b);
        assert_ne!(d, e);
        let mut offsets = Offsets::new();
        let mut metadata = Metadata::new();
        for key in [&a, &b, &d, &e] {
            apply_record(
                &mut offsets,
                &mut metadata,
                Some(key),
                Some(&7u64.to_be_bytes()),
            )
            .unwrap();
        }
        assert_eq!(offsets.len(), 3);
        assert_eq!(offsets["a"].len(), 2);
        // Malformed records are errors, never panics or silent guesses.
        let short = &a[..a.len() - 1];
        for (key, value) in [
            (None, Some(&[0u8; 8][..])),
            (Some(short), Some(&[0u8; 8][..])),
            (Some(&a[..]), Some(&[0u8; 7][..])),
            (Some(&a[..]), Some(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff][..])),
            (Some(&[2u8, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 0][..]), None),
        ] {
            assert!(apply_record(&mut offsets, &mut metadata, key, value).is_err());
        }
    }

    fn arb_name() -> impl Strategy<Value = String> {
        // Separators, NULs and multi-byte characters included: only lengths delimit names.
        "[a-c/:\\x00é]{1,6}"
    }

    proptest! {
        #[test]
        fn key_encoding_round_trips(g in arb_name(), t in arb_name(), p in any::<u32>()) {
            let key = encode_key(&g, &t, p);
            let mut cur = Cursor(&key);
            prop_assert_eq!(decode_key(&mut cur).unwrap(), (g, t, p));
            prop_assert!(cur.0.is_empty());
        }

        #[test]
        fn snapshot_decoding_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            cut in any::<usize>(),
            flip in any::<(usize, u8)>(),
        ) {
            let _ = decode_snapshot(&bytes);
            // Damaged real snapshots: cut short, one byte changed.
            let mut offsets = Offsets::new();
            let mut metadata = Metadata::new();
            for (i, b) in bytes.iter().take(20).enumerate() {
                let (g, t) = (format!("g{}", b % 3), format!("t{}", b % 5));
                if b % 2 == 0 {
                    metadata.insert((g.clone(), t.clone(), i as u32), format!("m{b}").into());
                }
                offsets
                    .entry(g)
                    .or_default()
                    .entry(t)
                    .or_default()
                    .insert(i as u32, u64::from(*b));
            }
            let good = encode_snapshot(42, &offsets, &metadata);
            let decoded = decode_snapshot(&good).unwrap();
            prop_assert_eq!(decoded.covered, 42);
            prop_assert_eq!(&decoded.offsets, &offsets);
            prop_assert_eq!(&decoded.metadata, &metadata);
            prop_assert!(decode_snapshot(&good[..cut % good.len()]).is_err());
            let mut bad = good.clone();
            let at = flip.0 % bad.len();
            bad[at] ^= flip.1 | 1;
            prop_assert!(decode_snapshot(&bad).is_err());
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Op(Op),
        Reopen,
        Crash,
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        let topic = (0..4u8).prop_map(|t| format!("t{t}"));
        let commit = (
            0..3u8,
            proptest::collection::vec((topic.clone(), 0..3u32, any::<u64>()), 1..4),
        )
            .prop_map(|(g, offsets)| Step::Op(Op::Commit(format!("g{g}"), offsets)));
        prop_oneof![
            6 => commit,
            1 => topic.prop_map(|t| Step::Op(Op::DeleteTopic(t))),
            1 => Just(Step::Op(Op::Snapshot)),
            1 => Just(Step::Reopen),
            1 => Just(Step::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever mix of commits, deletions, snapshots (manual and automatic), clean
        /// reopens and crashes: the store always equals the model.
        #[test]
        fn snapshot_plus_replay_equals_the_model(
            threshold in 1..6u64,
            steps in proptest::collection::vec(arb_step(), 1..60),
        ) {
            let mut s = MemStorage::new();
            let mut store = open_mem(&s, threshold);
            let mut model = Model::new();
            for step in &steps {
                match step {
                    Step::Op(op) => {
                        exec(&store, op).unwrap();
                        apply_model(&mut model, op);
                    }
                    Step::Reopen => {
                        store.close().unwrap();
                        store = open_mem(&s, threshold);
                    }
                    Step::Crash => {
                        s = s.crash_image(CrashMode::SyncedOnly);
                        store = open_mem(&s, threshold);
                    }
                }
                prop_assert_eq!(&dump(&store), &model, "after {:?}", step);
            }
        }
    }
}

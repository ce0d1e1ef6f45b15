//! Files: a source that tails the files matching glob patterns, one event per line, and a
//! sink that writes one event per line with rotation by size and age.
//!
//! The source follows a file by identity (device and inode, plus a hash of its first bytes,
//! so a reused inode is a new file), not by name: a file renamed away by a rotation is read to
//! its end through the handle already open, and the new file at the old name is read from its
//! start. A file that shrinks (copy-truncate) is read again from its start. The position of
//! each file (the byte after the last acknowledged line) and its CSV header are checkpointed
//! once a second and at stop, through the log's storage seam (written aside, synced, renamed,
//! directory synced), so a restart resumes at the right byte: after a clean stop with neither
//! gap nor duplicate, after a crash with at most the lines in flight again.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use weir_log::Storage;

use crate::codec::{Decoding, Encoding};
use crate::connect::topic::{Batching, gather};
use crate::edge::BATCH_EVENTS;
use crate::event::{AckBatch, Event, Origin, Record};
use crate::pipeline::{ComponentError, Sink, SinkContext, Source, SourceContext};
use crate::tracker::Tracker;

/// Most bytes in one line; a longer line is cut into dead letters of this size.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Bytes read from a file at a time.
const READ_BYTES: usize = 256 << 10;
/// Bytes hashed to tell a file from another on the same inode.
const HEAD_BYTES: usize = 256;

/// Where a file never seen before starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

/// Tails files.
#[derive(Clone)]
pub struct FileSource {
    /// Glob patterns of the files to read.
    pub include: Vec<String>,
    /// Glob patterns of files not to read.
    pub exclude: Vec<String>,
    pub decoding: Decoding,
    pub read_from: ReadFrom,
    /// The checkpoint file.
    pub checkpoints: PathBuf,
    pub storage: Arc<dyn Storage>,
    /// How often the patterns are matched again and files checked for more lines.
    pub poll: Duration,
    /// When it last saved its checkpoint.
    pub progress: Arc<super::ProgressCell>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("include", &self.include)
            .field("checkpoints", &self.checkpoints)
            .finish()
    }
}

/// One file's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    path: PathBuf,
    position: u64,
    head: u64,
    header: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    files: BTreeMap<String, Checkpoint>,
}

/// A file being read.
struct Tail {
    path: PathBuf,
    file: std::fs::File,
    head: u64,
    /// Where the next read starts (after the last whole line read).
    read_at: u64,
    tracker: Tracker,
    header: Option<Vec<String>>,
    /// Not matched by the patterns any more (renamed away or deleted).
    gone: bool,
    stream: Arc<str>,
}

fn identity(m: &std::fs::Metadata) -> String {
    format!("{}:{}", m.dev(), m.ino())
}

fn head_hash(file: &mut std::fs::File) -> std::io::Result<(u64, usize)> {
    let mut buf = [0u8; HEAD_BYTES];
    let mut n = 0;
    file.seek(SeekFrom::Start(0))?;
    while n < HEAD_BYTES {
        let k = file.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok((xxhash(&buf[..n]), n))
}

/// FNV-1a: a stable hash for telling files apart (not for security).
fn xxhash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Source for FileSource {
    fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.clone().tail(ctx))
    }

    fn progress(&self) -> super::Progress {
        self.progress.get()
    }
}

impl FileSource {
    fn load(&self) -> Result<BTreeMap<String, Checkpoint>, ComponentError> {
        let path = &self.checkpoints;
        let f = match self.storage.open_file(path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(ComponentError(format!("opening {}: {e}", path.display()))),
        };
        let len = f
            .len()
            .map_err(|e| ComponentError(format!("{}: {e}", path.display())))?;
        if len > 64 << 20 {
            return Err(ComponentError(format!("{} is over 64 MiB", path.display())));
        }
        let bytes = f
            .read_vec_at(len as usize, 0)
            .map_err(|e| ComponentError(format!("reading {}: {e}", path.display())))?;
        let file: CheckpointFile = serde_json::from_slice(&bytes).map_err(|e| {
            ComponentError(format!("{} is not a checkpoint file: {e}", path.display()))
        })?;
        Ok(file.files)
    }

    fn store(&self, files: &BTreeMap<String, Checkpoint>) -> Result<(), ComponentError> {
        let path = &self.checkpoints;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension("tmp");
        let fail =
            |op: &str, e: std::io::Error| ComponentError(format!("{op} {}: {e}", tmp.display()));
        let text = serde_json::to_vec(&CheckpointFile {
            version: 1,
            files: files.clone(),
        })
        .map_err(|e| ComponentError(e.to_string()))?;
        self.storage
            .create_dir_all(dir)
            .map_err(|e| fail("creating the directory of", e))?;
        let f = self
            .storage
            .open_file(&tmp, true)
            .map_err(|e| fail("creating", e))?;
        f.set_len(0).map_err(|e| fail("truncating", e))?;
        f.write_all_at(&text, 0).map_err(|e| fail("writing", e))?;
        f.sync_data().map_err(|e| fail("syncing", e))?;
        self.storage
            .rename(&tmp, path)
            .map_err(|e| fail("renaming", e))?;
        self.storage
            .sync_dir(dir)
            .map_err(|e| fail("syncing the directory of", e))
    }

    fn matches(&self) -> Vec<PathBuf> {
        let excluded: Vec<glob::Pattern> = self
            .exclude
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect();
        let mut out: Vec<PathBuf> = self
            .include
            .iter()
            .filter_map(|p| glob::glob(p).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter(|p| p.is_file() && !excluded.iter().any(|x| x.matches_path(p)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    async fn tail(self, ctx: SourceContext) -> Result<(), ComponentError> {
        let me = self.clone();
        let mut saved = tokio::task::spawn_blocking(move || me.load())
            .await
            .map_err(ComponentError::new)??;
        let mut tails: HashMap<String, Tail> = HashMap::new();
        let mut last_store = Instant::now();
        let mut result = Ok(());
        'run: while !ctx.stop.is_cancelled() && !ctx.kill.is_cancelled() {
            // Match the patterns: new files, rotations, truncations.
            let found = self.matches();
            let mut seen = Vec::new();
            for path in found {
                let Ok(mut file) = std::fs::File::open(&path) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else { continue };
                let id = identity(&meta);
                let Ok((head, head_len)) = head_hash(&mut file) else {
                    continue;
                };
                seen.push(id.clone());
                if let Some(t) = tails.get_mut(&id) {
                    // A file may still be growing its first bytes: compare what was hashed.
                    if head_len >= HEAD_BYTES && t.head != head && t.read_at >= HEAD_BYTES as u64 {
                        // The same inode holds another file now.
                        tails.remove(&id);
                    } else {
                        t.path = path.clone();
                        t.head = head;
                        if meta.len() < t.read_at {
                            tracing::info!(file = %path.display(), "file truncated; reading it from its start");
                            t.read_at = 0;
                            t.tracker = Tracker::new(0);
                            t.header = None;
                        }
                        continue;
                    }
                }
                let resume = saved.get(&id).filter(|c| {
                    c.head == head || head_len < HEAD_BYTES && c.position <= meta.len()
                });
                let (position, header) = match resume {
                    Some(c) if c.position <= meta.len() => (c.position, c.header.clone()),
                    _ if self.read_from == ReadFrom::End => (meta.len(), None),
                    _ => (0, None),
                };
                tails.insert(
                    id,
                    Tail {
                        stream: path.to_string_lossy().as_ref().into(),
                        path,
                        file,
                        head,
                        read_at: position,
                        tracker: Tracker::new(position),
                        header,
                        gone: false,
                    },
                );
            }
            for (id, t) in tails.iter_mut() {
                t.gone = !seen.contains(id);
            }
            // Read what is new in each file.
            let mut idle = true;
            for (id, t) in tails.iter_mut() {
                match self.read_more(t, &ctx).await {
                    Ok(more) => idle &= !more,
                    Err(e) => {
                        result = Err(ComponentError(format!("{} ({id}): {e}", t.path.display())));
                        break 'run;
                    }
                }
            }
            // Acknowledged positions; files gone and fully read and acknowledged are done.
            for t in tails.values_mut() {
                if let Err(lost) = t.tracker.advance() {
                    result = Err(ComponentError(format!(
                        "lines of {} from byte {} were not delivered; restarting from the checkpoint",
                        t.path.display(),
                        lost.position
                    )));
                    break 'run;
                }
            }
            tails.retain(|_, t| {
                !(t.gone
                    && t.tracker.is_idle()
                    && t.file.metadata().is_ok_and(|m| m.len() <= t.read_at))
            });
            if last_store.elapsed() >= Duration::from_secs(1) {
                last_store = Instant::now();
                if let Err(e) = self.checkpoint(&tails, &mut saved).await {
                    result = Err(e);
                    break 'run;
                }
            }
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(self.poll) => {}
                    _ = ctx.stop.cancelled() => {}
                    _ = ctx.kill.cancelled() => {}
                }
            }
        }
        // Wait for what was read to be acknowledged (until killed), then checkpoint it.
        while !ctx.kill.is_cancelled() && tails.values().any(|t| !t.tracker.is_idle()) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = ctx.kill.cancelled() => {}
            }
            for t in tails.values_mut() {
                let _ = t.tracker.advance();
            }
        }
        let stored = self.checkpoint(&tails, &mut saved).await;
        result.and(stored)
    }

    /// Writes the acknowledged position of every file, when one moved.
    async fn checkpoint(
        &self,
        tails: &HashMap<String, Tail>,
        saved: &mut BTreeMap<String, Checkpoint>,
    ) -> Result<(), ComponentError> {
        let mut next = saved.clone();
        for (id, t) in tails {
            if let Some(position) = t.tracker.acked() {
                next.insert(
                    id.clone(),
                    Checkpoint {
                        path: t.path.clone(),
                        position,
                        head: t.head,
                        header: t.header.clone(),
                    },
                );
            }
        }
        // Files no longer followed nor matched are forgotten.
        next.retain(|id, c| tails.contains_key(id) || c.path.exists());
        if next == *saved {
            self.progress.checkpointed();
            return Ok(());
        }
        let me = self.clone();
        let files = next.clone();
        tokio::task::spawn_blocking(move || me.store(&files))
            .await
            .map_err(ComponentError::new)??;
        *saved = next;
        self.progress.checkpointed();
        Ok(())
    }

    /// Reads the whole lines after `t.read_at` (up to a batch's worth) and sends them on.
    /// True when there may be more to read now.
    async fn read_more(&self, t: &mut Tail, ctx: &SourceContext) -> std::io::Result<bool> {
        let mut buf = vec![0u8; READ_BYTES];
        t.file.seek(SeekFrom::Start(t.read_at))?;
        let mut n = 0;
        while n < buf.len() {
            let k = t.file.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        buf.truncate(n);
        let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
            if n >= MAX_LINE_BYTES.min(READ_BYTES) {
                // A line longer than a read: its first part goes to the dead letters, and the
                // reading goes on after it.
                let ack = AckBatch::new();
                let record = Record {
                    value: Some(Bytes::from(buf)),
                    origin: Some(Origin {
                        stream: t.stream.clone(),
                        partition: 0,
                        offset: t.read_at,
                    }),
                    ..Record::default()
                };
                let e = Event::new(record, vrl::value::Value::Null, ack.share());
                t.read_at += n as u64;
                t.tracker.push(t.read_at, ack);
                ctx.stats.errors(1);
                ctx.dead
                    .send_all(
                        vec![(e, format!("a line longer than {READ_BYTES} bytes"))],
                        &ctx.component,
                    )
                    .await;
                return Ok(true);
            }
            return Ok(false);
        };
        let data = Bytes::from(buf).slice(..=last_nl);
        let now = crate::event::now_ms();
        let mut events = Vec::with_capacity(BATCH_EVENTS);
        let mut failed = Vec::new();
        let mut ack = AckBatch::new();
        let mut at = 0usize;
        while at < data.len() {
            let end = data[at..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(data.len(), |i| at + i);
            let line_start = t.read_at + at as u64;
            let mut line = data.slice(at..end);
            at = end + 1;
            if line.ends_with(b"\r") {
                line.truncate(line.len() - 1);
            }
            if line.is_empty() {
                continue;
            }
            if self.decoding.needs_header() && t.header.is_none() {
                match self.decoding.header(&line) {
                    Ok(h) => t.header = Some(h),
                    Err(e) => {
                        let record = Record {
                            value: Some(line),
                            origin: Some(Origin {
                                stream: t.stream.clone(),
                                partition: 0,
                                offset: line_start,
                            }),
                            ..Record::default()
                        };
                        failed.push((
                            Event::new(record, vrl::value::Value::Null, ack.share()),
                            format!("CSV header: {}", e.0),
                        ));
                    }
                }
                continue;
            }
            let record = Record {
                value: Some(line),
                timestamp: now,
                origin: Some(Origin {
                    stream: t.stream.clone(),
                    partition: 0,
                    offset: line_start,
                }),
                ..Record::default()
            };
            let share = ack.share();
            match self
                .decoding
                .decode_with(record.value.as_ref(), t.header.as_deref())
            {
                Ok(v) => events.push(Event::new(record, v, share)),
                Err(e) => failed.push((Event::new(record, vrl::value::Value::Null, share), e.0)),
            }
            if events.len() + failed.len() >= BATCH_EVENTS {
                let pos = t.read_at + at as u64;
                t.tracker
                    .push(pos, std::mem::replace(&mut ack, AckBatch::new()));
                ctx.emit(&mut events, &mut failed).await;
            }
        }
        t.read_at += data.len() as u64;
        t.tracker.push(t.read_at, ack);
        ctx.emit(&mut events, &mut failed).await;
        Ok(n == READ_BYTES)
    }
}

/// Writes one event per line to a file, rotated by size and age: the full file is renamed
/// to `PATH.<ms since the epoch>` and a new one started. Events are acknowledged once their
/// lines are synced to disk.
#[derive(Debug, Clone)]
pub struct FileSink {
    pub path: PathBuf,
    pub encoding: Encoding,
    /// Rotate once the file holds this many bytes. Default 100 MiB.
    pub max_bytes: u64,
    /// Rotate once the file is this old (since its first line). Default none.
    pub max_age: Option<Duration>,
    pub batching: Batching,
    /// Writes each record's original value (a dead-letter output).
    pub raw: bool,
}

impl Sink for FileSink {
    fn run(&self, ctx: SinkContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.clone().write(ctx))
    }
}

struct Open {
    file: std::fs::File,
    len: u64,
    opened: Instant,
    /// A line was written (a header row alone does not count).
    has_lines: bool,
}

impl FileSink {
    fn open(&self) -> std::io::Result<Open> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut len = file.metadata()?.len();
        if len == 0
            && let Some(h) = self.encoding.header().filter(|_| !self.raw)
        {
            file.write_all(&h)?;
            len = h.len() as u64;
        }
        let has_lines = len > self.encoding.header().map_or(0, |h| h.len() as u64);
        Ok(Open {
            file,
            len,
            opened: Instant::now(),
            has_lines,
        })
    }

    fn rotate(&self, open: Open) -> std::io::Result<Open> {
        open.file.sync_all()?;
        drop(open);
        // `PATH.MS`, or `PATH.MS.N` when a file rotated in the same millisecond already has
        // that name: a rename must never replace an earlier file (it would lose its lines).
        let ms = crate::event::now_ms();
        let rotated = (0u32..)
            .map(|n| {
                let mut name = self.path.clone().into_os_string();
                name.push(if n == 0 {
                    format!(".{ms}")
                } else {
                    format!(".{ms}.{n}")
                });
                PathBuf::from(name)
            })
            .find(|p| !p.exists())
            .expect("some suffix is free");
        std::fs::rename(&self.path, rotated)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.open()
    }

    /// Appends the lines of `buf` and syncs them, rotating whenever the next line would
    /// take the file past `max_bytes` (a line larger than that gets a file of its own) or the
    /// file is older than `max_age`.
    fn append(&self, mut o: Open, buf: &[u8]) -> std::io::Result<Open> {
        if o.has_lines && self.max_age.is_some_and(|a| o.opened.elapsed() >= a) {
            o = self.rotate(o)?;
        }
        let mut rest = buf;
        while !rest.is_empty() {
            // The longest run of whole lines that fits.
            let room = self.max_bytes.saturating_sub(o.len) as usize;
            let mut take = 0;
            for (i, b) in rest.iter().enumerate() {
                if *b == b'\n' {
                    if i + 1 > room && (take > 0 || o.has_lines) {
                        break;
                    }
                    take = i + 1;
                    if i + 1 >= room {
                        break;
                    }
                }
            }
            if take == 0 {
                o.file.sync_data()?;
                o = self.rotate(o)?;
                continue;
            }
            o.file.write_all(&rest[..take])?;
            o.len += take as u64;
            o.has_lines = true;
            rest = &rest[take..];
            if !rest.is_empty() {
                o.file.sync_data()?;
                o = self.rotate(o)?;
            }
        }
        o.file.sync_data()?;
        Ok(o)
    }

    async fn write(self, ctx: SinkContext) -> Result<(), ComponentError> {
        let fail = |e: std::io::Error| ComponentError(format!("{}: {e}", self.path.display()));
        let mut open = Some(self.open().map_err(fail)?);
        while let Some(events) = gather(&ctx, &self.batching).await {
            let mut buf = Vec::with_capacity(64 << 10);
            let (written, failed) =
                crate::connect::stdio::encode_lines(events, &self.encoding, self.raw, &mut buf);
            let me = self.clone();
            let o = open.take().expect("the file is open between batches");
            let o = tokio::task::spawn_blocking(move || me.append(o, &buf))
                .await
                .map_err(ComponentError::new)?
                .map_err(fail)?;
            open = Some(o);
            ctx.stats.sent(written.len() as u64);
            written.into_iter().for_each(Event::ack);
            if !failed.is_empty() {
                ctx.stats.errors(failed.len() as u64);
                ctx.dead.send_all(failed, &ctx.component).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_log::{CrashMode, MemStorage};

    fn source(storage: Arc<dyn Storage>) -> FileSource {
        FileSource {
            include: Vec::new(),
            exclude: Vec::new(),
            decoding: Decoding::Text,
            read_from: ReadFrom::Beginning,
            checkpoints: PathBuf::from("/cp/pipe.json"),
            storage,
            poll: Duration::from_millis(10),
            progress: Default::default(),
        }
    }

    fn cp(position: u64) -> BTreeMap<String, Checkpoint> {
        BTreeMap::from([(
            "1:2".to_string(),
            Checkpoint {
                path: "/x".into(),
                position,
                head: 9,
                header: None,
            },
        )])
    }

    /// Rotations within one millisecond get distinct names: no rotated file is replaced.
    #[test]
    fn rotations_in_the_same_millisecond_keep_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink {
            path: dir.path().join("out.jsonl"),
            encoding: Encoding::default(),
            max_bytes: 8,
            max_age: None,
            batching: crate::connect::topic::Batching::default(),
            raw: false,
        };
        let mut open = sink.open().unwrap();
        let lines: String = (0..200).map(|i| format!("{i:07}\n")).collect();
        open = sink.append(open, lines.as_bytes()).unwrap();
        drop(open);
        let mut seen: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flat_map(|f| {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                text.lines().map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        seen.sort();
        assert_eq!(seen.len(), 200, "every line in some file");
        assert_eq!(seen.concat(), lines.replace('\n', ""));
    }

    /// A crash at any I/O step of a checkpoint write leaves the previous checkpoint or the
    /// new one, never a damaged or missing file.
    #[test]
    fn a_checkpoint_survives_a_crash_at_every_step() {
        let probe = Arc::new(MemStorage::new());
        source(probe.clone()).store(&cp(10)).unwrap();
        let before = probe.op_count();
        source(probe.clone()).store(&cp(20)).unwrap();
        let steps = probe.op_count() - before;
        assert!(steps >= 4);
        for cut in 0..=steps {
            let mem = Arc::new(MemStorage::new());
            source(mem.clone()).store(&cp(10)).unwrap();
            mem.inject_faults(mem.op_count() + cut, u64::MAX, weir_log::FaultKind::Dead);
            let _ = source(mem.clone()).store(&cp(20));
            for mode in [
                CrashMode::SyncedOnly,
                CrashMode::TornTail(cut),
                CrashMode::ProcessOnly,
            ] {
                let image: Arc<dyn Storage> = Arc::new(mem.crash_image(mode));
                mem.heal();
                let got = source(image).load().unwrap();
                let pos = got["1:2"].position;
                assert!(pos == 10 || pos == 20, "cut {cut}: {pos}");
            }
        }
    }
}

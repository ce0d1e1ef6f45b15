//! The one narrow door through which the log touches files.
//!
//! Every byte the log reads or writes, every file it creates, renames or removes, and every
//! sync goes through [`Storage`] and [`StorageFile`]. Production uses [`FileStorage`]; tests use
//! [`MemStorage`], which remembers what was synced so that a test can take the image a crash
//! would leave behind ([`MemStorage::crash_image`]) and make operations fail after N calls
//! ([`MemStorage::inject_faults`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// A file system as the log needs it.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files directly inside `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for reading and writing, creating it (empty) when `create` is set.
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory entries of `dir` (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the directories directly inside `dir`.
    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames the directory `from`, with all it holds, to `to` (in the same parent); durable
    /// once the parent is synced. Needs no free space.
    fn rename_dir(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `dir` and all it holds (the space is free at once); durable once the parent is
    /// synced.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // a file's emptiness is `len()? == 0`; `len` can fail
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `pos`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Reads exactly `len` bytes at `pos` into a new buffer, failing with `UnexpectedEof` if
    /// the file ends first. The real file reads into uninitialized memory: zeroing a buffer
    /// that the read then overwrites cost 7% of a fetch's CPU.
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        read_exact_at(self, &mut buf, pos)?;
        Ok(buf)
    }
    /// Writes all of `buf` at `pos`. On error, any prefix of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes. Space reserved beyond `len` is released.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk space for `[pos, pos + len)` without changing the file's length. A hint:
    /// where it is not supported it does nothing.
    fn preallocate(&self, _pos: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes at `pos`, failing with `UnexpectedEof` if the file ends first.
pub fn read_exact_at<F: StorageFile + ?Sized>(
    file: &F,
    mut buf: &mut [u8],
    mut pos: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, pos) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

#[derive(Debug)]
struct RealFile(File);

impl StorageFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        // pread(2) into the vector's spare capacity (rustix extends its length by what was
        // read): no zeroing first, no unsafe here.
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = pos + buf.len() as u64;
            let want = len - buf.len();
            let before = buf.len();
            match rustix::io::pread(&self.0, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(_) if buf.len() == before => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            debug_assert!(buf.len() - before <= want);
        }
        Ok(buf)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        // ftruncate(2) to the current length still releases blocks reserved past it (ext4,
        // xfs): rolling a segment relies on that.
        self.0.set_len(len)
    }
    fn preallocate(&self, pos: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(&self.0, FallocateFlags::KEEP_SIZE, pos, len) {
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            r => r.map_err(io::Error::from),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Storage for FileStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }
    fn rename_dir(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }
}

/// Which operations an injected fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Writes fail with `StorageFull` after writing half their bytes; syncs and creations
    /// fail with `StorageFull`; reads keep working. Models a full disk.
    DiskFull,
    /// Every operation, reads included, fails with a generic I/O error. Models a dying process
    /// or device: combine with [`MemStorage::crash_image`] to simulate a crash at that point.
    Dead,
}

#[derive(Debug, Default)]
struct Faults {
    ops: AtomicU64,
    /// Fail operations numbered in `[start, end)`; `u64::MAX` start disables.
    window: Mutex<Option<(u64, u64, FaultKind)>>,
    /// The disk's size (`None`: unbounded) and the bytes its live files hold.
    space: Mutex<(Option<u64>, u64)>,
}

impl Faults {
    /// Counts one operation and says whether it must fail, and how.
    fn check(&self, is_read: bool) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::Relaxed);
        let window = *self.window.lock();
        if let Some((start, end, kind)) = window {
            if n >= start && n < end {
                match kind {
                    FaultKind::DiskFull if is_read => {}
                    FaultKind::DiskFull => {
                        return Err(io::Error::new(
                            io::ErrorKind::StorageFull,
                            "injected: no space left on device",
                        ));
                    }
                    FaultKind::Dead => return Err(io::Error::other("injected: device is dead")),
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct MemData {
    data: Vec<u8>,
    synced: Vec<u8>,
    /// Lowest byte changed since the last sync (`None`: nothing changed).
    dirty_from: Option<usize>,
}

#[derive(Debug)]
struct MemFile {
    state: Mutex<MemData>,
    faults: Arc<Faults>,
}

impl MemFile {
    fn new(faults: Arc<Faults>, content: Vec<u8>) -> Self {
        Self {
            state: Mutex::new(MemData {
                synced: content.clone(),
                data: content,
                dirty_from: None,
            }),
            faults,
        }
    }
}

fn mark_dirty(d: &mut MemData, from: usize) {
    d.dirty_from = Some(d.dirty_from.map_or(from, |x| x.min(from)));
}

impl StorageFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        self.faults.check(true)?;
        Ok(self.state.lock().data.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.faults.check(true)?;
        let d = self.state.lock();
        let pos = pos as usize;
        if pos >= d.data.len() {
            return Ok(0);
        }
        let n = buf.len().min(d.data.len() - pos);
        buf[..n].copy_from_slice(&d.data[pos..pos + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let result = self.faults.check(false);
        // A failing write may still have written a prefix: write half, like a disk filling up.
        let len = if result.is_ok() {
            buf.len()
        } else {
            buf.len() / 2
        };
        let mut d = self.state.lock();
        let pos = pos as usize;
        {
            // Past the disk's size nothing is written.
            let grows = (pos + len).saturating_sub(d.data.len()) as u64;
            let mut space = self.faults.space.lock();
            if space.0.is_some_and(|size| space.1 + grows > size) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on the in-memory disk",
                ));
            }
            space.1 += grows;
        }
        if d.data.len() < pos + len {
            d.data.resize(pos + len, 0);
        }
        d.data[pos..pos + len].copy_from_slice(&buf[..len]);
        mark_dirty(&mut d, pos);
        result
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check(false)?;
        let mut d = self.state.lock();
        {
            let mut space = self.faults.space.lock();
            let old = d.data.len() as u64;
            if len > old && space.0.is_some_and(|size| space.1 + (len - old) > size) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on the in-memory disk",
                ));
            }
            space.1 = (space.1 + len).saturating_sub(old);
        }
        let len = len as usize;
        let from = len.min(d.data.len());
        d.data.resize(len, 0);
        mark_dirty(&mut d, from);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.check(false)?;
        let mut d = self.state.lock();
        if let Some(from) = d.dirty_from.take() {
            let keep = from.min(d.synced.len()).min(d.data.len());
            d.synced.truncate(keep);
            let tail = d.data[keep..].to_vec();
            d.synced.extend_from_slice(&tail);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct MemState {
    dirs: BTreeSet<PathBuf>,
    /// Directory entries as the running process sees them.
    live: BTreeMap<PathBuf, Arc<MemFile>>,
    /// Directory entries as a crash would leave them (updated by `sync_dir`).
    durable: BTreeMap<PathBuf, Arc<MemFile>>,
    /// Directory renames and removals not yet durable: each becomes durable when its parent
    /// is synced.
    pending: Vec<DirChange>,
}

#[derive(Debug, Clone)]
enum DirChange {
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

impl DirChange {
    fn parent(&self) -> Option<&Path> {
        match self {
            DirChange::Rename(from, _) => from.parent(),
            DirChange::Remove(dir) => dir.parent(),
        }
    }
}

/// `path` moved from under `from` to under `to`, if it is under `from`.
fn moved(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    path.strip_prefix(from).ok().map(|rest| to.join(rest))
}

fn rename_under(map: &mut BTreeMap<PathBuf, Arc<MemFile>>, from: &Path, to: &Path) {
    let inside: Vec<PathBuf> = map
        .keys()
        .filter(|p| p.starts_with(from))
        .cloned()
        .collect();
    for p in inside {
        let f = map.remove(&p).expect("listed");
        map.insert(moved(&p, from, to).expect("under from"), f);
    }
}

/// An in-memory file system that knows what a crash would keep.
///
/// File contents survive a crash only up to their last `sync_data`; a file's existence (its
/// creation, removal or rename) survives only once its directory was synced. That is stricter
/// than most real file systems, so code that passes here does not rely on luck.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
    faults: Arc<Faults>,
}

/// How [`MemStorage::crash_image`] treats bytes written but not synced.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Keep only synced bytes.
    SyncedOnly,
    /// Keep synced bytes plus a prefix of the unsynced tail, whose length comes from the seed,
    /// with one of its bytes possibly flipped: a torn write.
    TornTail(u64),
    /// A process crash (kill -9): the kernel keeps every write, synced or not. The image still
    /// knows what is unsynced, so a later `SyncedOnly` image models a power loss after it.
    ProcessOnly,
}

impl MemStorage {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of operations performed so far (for choosing fault points).
    pub fn op_count(&self) -> u64 {
        self.faults.ops.load(Ordering::Relaxed)
    }

    /// Makes operations numbered `after..after + count` (counting from the start) fail with
    /// `kind`. `count = u64::MAX` fails everything from `after` on.
    pub fn inject_faults(&self, after: u64, count: u64, kind: FaultKind) {
        *self.faults.window.lock() = Some((after, after.saturating_add(count), kind));
    }

    /// Stops failing operations.
    pub fn heal(&self) {
        *self.faults.window.lock() = None;
    }

    /// Gives the disk a size: a write that would make the live files hold more fails with
    /// `StorageFull` (and writes nothing) until removals free space. `None`: unbounded.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.faults.space.lock().0 = bytes;
    }

    /// Bytes the live files hold.
    pub fn used_bytes(&self) -> u64 {
        self.faults.space.lock().1
    }

    fn release(&self, file: &MemFile) {
        let len = file.state.lock().data.len() as u64;
        let mut space = self.faults.space.lock();
        space.1 = space.1.saturating_sub(len);
    }

    /// The file system a crash at this instant would leave behind, as a new, healthy storage.
    pub fn crash_image(&self, mode: CrashMode) -> MemStorage {
        let state = self.state.lock();
        if let CrashMode::ProcessOnly = mode {
            return Self::process_crash_image(&state);
        }
        let faults = Arc::new(Faults::default());
        // Directories hold what a crash keeps in them, whatever became of their names since.
        let mut dirs = state.dirs.clone();
        for path in state.durable.keys() {
            dirs.extend(path.ancestors().skip(1).map(Path::to_path_buf));
        }
        let mut image = MemState {
            dirs,
            ..MemState::default()
        };
        let mut seed = match mode {
            CrashMode::SyncedOnly | CrashMode::ProcessOnly => None,
            CrashMode::TornTail(s) => Some(s),
        };
        for (path, file) in &state.durable {
            let d = file.state.lock();
            let mut content = d.synced.clone();
            if let Some(s) = seed.as_mut() {
                *s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unsynced_tail = d.data.len() > content.len()
                    && d.data[..content.len()] == content[..]
                    && d.dirty_from.is_some();
                if unsynced_tail {
                    let extra = d.data.len() - content.len();
                    let keep = ((*s >> 33) as usize) % (extra + 1);
                    content.extend_from_slice(&d.data[d.synced.len()..d.synced.len() + keep]);
                    if keep > 0 && (*s & 1) == 1 {
                        // A sector that never made it: one damaged byte in the kept tail.
                        let at = d.synced.len() + ((*s >> 7) as usize) % keep;
                        content[at] ^= 0x5a;
                    }
                }
            }
            let f = Arc::new(MemFile::new(faults.clone(), content));
            image.live.insert(path.clone(), f.clone());
            image.durable.insert(path.clone(), f);
        }
        MemStorage {
            state: Arc::new(Mutex::new(image)),
            faults,
        }
    }

    /// After a process crash the kernel still holds every write: copy everything, and keep
    /// track of what is synced so that a later power loss can still take unsynced bytes back.
    fn process_crash_image(state: &MemState) -> MemStorage {
        let faults = Arc::new(Faults::default());
        let mut copies: Vec<(*const MemFile, Arc<MemFile>)> = Vec::new();
        let mut copy = |f: &Arc<MemFile>| {
            let key = Arc::as_ptr(f);
            if let Some((_, c)) = copies.iter().find(|(k, _)| *k == key) {
                return c.clone();
            }
            let d = f.state.lock();
            let c = Arc::new(MemFile {
                state: Mutex::new(MemData {
                    data: d.data.clone(),
                    synced: d.synced.clone(),
                    dirty_from: d.dirty_from,
                }),
                faults: faults.clone(),
            });
            copies.push((key, c.clone()));
            c
        };
        let live = state
            .live
            .iter()
            .map(|(p, f)| (p.clone(), copy(f)))
            .collect();
        let durable = state
            .durable
            .iter()
            .map(|(p, f)| (p.clone(), copy(f)))
            .collect();
        MemStorage {
            state: Arc::new(Mutex::new(MemState {
                dirs: state.dirs.clone(),
                live,
                durable,
                pending: state.pending.clone(),
            })),
            faults,
        }
    }

    /// The current content of a file (for tests that damage files on purpose).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.lock();
        state.live.get(path).map(|f| f.state.lock().data.clone())
    }

    /// Replaces a file's content, durably (for tests that damage files on purpose).
    pub fn write_file(&self, path: &Path, content: Vec<u8>) {
        let mut state = self.state.lock();
        let file = Arc::new(MemFile::new(self.faults.clone(), content));
        state.live.insert(path.to_path_buf(), file.clone());
        state.durable.insert(path.to_path_buf(), file);
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.faults.check(false)?;
        let mut state = self.state.lock();
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.faults.check(true)?;
        let state = self.state.lock();
        if !state.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        self.faults.check(!create)?;
        let mut state = self.state.lock();
        if let Some(f) = state.live.get(path) {
            return Ok(f.clone());
        }
        if !create {
            return Err(io::ErrorKind::NotFound.into());
        }
        if !path.parent().is_some_and(|p| state.dirs.contains(p)) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let file = Arc::new(MemFile::new(self.faults.clone(), Vec::new()));
        state.live.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults.check(false)?;
        let mut state = self.state.lock();
        let file = state
            .live
            .remove(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        self.release(&file);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check(false)?;
        let mut state = self.state.lock();
        let file = state
            .live
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if let Some(replaced) = state.live.insert(to.to_path_buf(), file) {
            self.release(&replaced);
        }
        Ok(())
    }
    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.faults.check(true)?;
        let state = self.state.lock();
        if !state.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(state
            .dirs
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn rename_dir(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check(false)?;
        let mut state = self.state.lock();
        if !state.dirs.contains(from) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if state.dirs.contains(to) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let inside: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for d in inside {
            state.dirs.remove(&d);
            state.dirs.insert(moved(&d, from, to).expect("under from"));
        }
        rename_under(&mut state.live, from, to);
        state
            .pending
            .push(DirChange::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.faults.check(false)?;
        let mut state = self.state.lock();
        if !state.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        state.dirs.retain(|p| !p.starts_with(dir));
        let inside: Vec<PathBuf> = state
            .live
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for p in inside {
            let f = state.live.remove(&p).expect("listed");
            self.release(&f);
        }
        state.pending.push(DirChange::Remove(dir.to_path_buf()));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.check(false)?;
        let mut state = self.state.lock();
        let pending = std::mem::take(&mut state.pending);
        for change in pending {
            if change.parent() != Some(dir) {
                state.pending.push(change);
                continue;
            }
            match change {
                DirChange::Rename(from, to) => rename_under(&mut state.durable, &from, &to),
                DirChange::Remove(gone) => state.durable.retain(|p, _| !p.starts_with(&gone)),
            }
        }
        state.durable.retain(|p, _| p.parent() != Some(dir));
        let entries: Vec<_> = state
            .live
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        state.durable.extend(entries);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_files_read_exact_ranges_into_new_buffers_and_refuse_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileStorage.open_file(&dir.path().join("f"), true).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        for (len, pos) in [(0, 0), (1, 0), (4096, 100), (200_000, 99_999), (300_000, 0)] {
            let got = f.read_vec_at(len, pos as u64).unwrap();
            assert_eq!(got, data[pos..pos + len], "{len} at {pos}");
        }
        let past = f.read_vec_at(10, 299_995).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        // The in-memory file (the default implementation) agrees.
        let m = MemStorage::new();
        m.create_dir_all(Path::new("/d")).unwrap();
        let g = m.open_file(Path::new("/d/g"), true).unwrap();
        g.write_all_at(&data, 0).unwrap();
        assert_eq!(g.read_vec_at(4096, 100).unwrap(), data[100..4196]);
        assert_eq!(
            g.read_vec_at(10, 299_995).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn crash_keeps_only_synced_bytes_and_synced_entries() {
        let s = MemStorage::new();
        let dir = Path::new("/d");
        s.create_dir_all(dir).unwrap();
        let a = s.open_file(&dir.join("a"), true).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        // Not yet in a synced directory: a crash loses the file.
        assert!(
            s.crash_image(CrashMode::SyncedOnly)
                .list_dir(dir)
                .unwrap()
                .is_empty()
        );
        s.sync_dir(dir).unwrap();
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert_eq!(image.read_file(&dir.join("a")).unwrap(), b"");
        a.sync_data().unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert_eq!(image.read_file(&dir.join("a")).unwrap(), b"hello");
        // A removal is not durable until the directory is synced.
        s.remove_file(&dir.join("a")).unwrap();
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert_eq!(image.read_file(&dir.join("a")).unwrap(), b"hello");
        s.sync_dir(dir).unwrap();
        assert!(
            s.crash_image(CrashMode::SyncedOnly)
                .read_file(&dir.join("a"))
                .is_none()
        );
    }

    #[test]
    fn truncation_after_sync_is_undone_by_a_crash() {
        let s = MemStorage::new();
        let dir = Path::new("/d");
        s.create_dir_all(dir).unwrap();
        let a = s.open_file(&dir.join("a"), true).unwrap();
        s.sync_dir(dir).unwrap();
        a.write_all_at(b"0123456789", 0).unwrap();
        a.sync_data().unwrap();
        a.set_len(4).unwrap();
        a.write_all_at(b"xy", 4).unwrap();
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert_eq!(image.read_file(&dir.join("a")).unwrap(), b"0123456789");
        a.sync_data().unwrap();
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert_eq!(image.read_file(&dir.join("a")).unwrap(), b"0123xy");
    }

    #[test]
    fn directory_renames_and_removals_are_durable_once_the_parent_is_synced() {
        let s = MemStorage::new();
        let top = Path::new("/t");
        s.create_dir_all(&top.join("a/0")).unwrap();
        let f = s.open_file(&top.join("a/0/f"), true).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        s.sync_dir(&top.join("a/0")).unwrap();
        s.rename_dir(&top.join("a"), &top.join("a.1.deleted"))
            .unwrap();
        assert_eq!(s.list_subdirs(top).unwrap(), ["a.1.deleted"]);
        assert_eq!(s.read_file(&top.join("a.1.deleted/0/f")).unwrap(), b"data");
        // Not durable yet: a crash finds the old name.
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert_eq!(image.read_file(&top.join("a/0/f")).unwrap(), b"data");
        assert!(image.list_subdirs(top).unwrap().contains(&"a".to_string()));
        s.sync_dir(top).unwrap();
        let image = s.crash_image(CrashMode::SyncedOnly);
        assert!(image.read_file(&top.join("a/0/f")).is_none());
        assert_eq!(
            image.read_file(&top.join("a.1.deleted/0/f")).unwrap(),
            b"data"
        );
        // Removal frees the space at once, and is durable once the parent is synced.
        s.set_capacity(Some(6));
        let g = s.open_file(&top.join("g"), true).unwrap();
        let err = g.write_all_at(b"more", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "4 + 4 bytes > 6");
        assert_eq!(s.used_bytes(), 4);
        s.remove_dir_all(&top.join("a.1.deleted")).unwrap();
        assert_eq!(s.used_bytes(), 0);
        g.write_all_at(b"more", 0).unwrap();
        assert!(
            s.crash_image(CrashMode::SyncedOnly)
                .read_file(&top.join("a.1.deleted/0/f"))
                .is_some()
        );
        s.sync_dir(top).unwrap();
        assert!(
            s.crash_image(CrashMode::SyncedOnly)
                .read_file(&top.join("a.1.deleted/0/f"))
                .is_none()
        );
    }

    #[test]
    fn faults_hit_the_chosen_window_then_heal() {
        let s = MemStorage::new();
        let dir = Path::new("/d");
        s.create_dir_all(dir).unwrap();
        let a = s.open_file(&dir.join("a"), true).unwrap();
        let now = s.op_count();
        s.inject_faults(now, 3, FaultKind::DiskFull);
        let err = a.write_all_at(b"abcd", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(s.read_file(&dir.join("a")).unwrap(), b"ab", "half written");
        assert!(a.read_at(&mut [0; 2], 0).is_ok(), "reads still work");
        assert!(a.sync_data().is_err());
        a.write_all_at(b"abcd", 0).unwrap();
        s.inject_faults(s.op_count(), u64::MAX, FaultKind::Dead);
        assert!(a.len().is_err());
        s.heal();
        assert_eq!(a.len().unwrap(), 4);
    }
}

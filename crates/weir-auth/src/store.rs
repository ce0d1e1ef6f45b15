//! The JSON files authentication keeps (users, ACLs): read whole with a size cap and checked,
//! edited under a lock file and replaced atomically, so that the server, which only reads
//! them, sees the old file or the new one, never half of one, and two editors never lose each
//! other's change.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest file read (checked before reading): about 100,000 users.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// What went wrong with a file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{0}")]
    Refused(String),
}

/// A file kept this way.
pub(crate) trait JsonFile: Serialize + DeserializeOwned {
    /// What the file is, for messages.
    const WHAT: &'static str;
    /// The file when there is none yet.
    fn empty() -> Self;
    /// Checks what was read (versions, bounds).
    fn check(&self) -> Result<(), String>;
}

/// Reads the file at `path`; a missing file is an empty one.
pub(crate) fn load<F: JsonFile>(path: &Path) -> Result<F, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(F::empty()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let invalid = |why: String| StoreError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    if len > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "{len} bytes, more than the {MAX_FILE_BYTES} a {} may have",
            F::WHAT
        )));
    }
    let parsed: F = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| invalid(e.to_string()))?;
    parsed.check().map_err(invalid)?;
    Ok(parsed)
}

/// Applies `change` to the file at `path` under its lock file (`<path>.lock`), then writes it
/// whole: a temporary file (mode 0600), synced, renamed over, the directory synced.
pub(crate) fn edit<F: JsonFile, T>(
    path: &Path,
    change: impl FnOnce(&mut F) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sibling(path, ".lock"))
        .map_err(io)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(e.into()))?;
    let mut file: F = load(path)?;
    let out = change(&mut file)?;
    file.check().map_err(StoreError::Refused)?;
    let tmp = sibling(path, ".tmp");
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut json = serde_json::to_vec_pretty(&file).expect("the file serializes");
        json.push(b'\n');
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A full disk, say: the file in force stays as it was, and no half-written copy is
        // left beside it.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Some(dir) = dir {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    drop(lock);
    Ok(out)
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// What tells a changed file: size, modification time and inode (a rename makes a new one).
pub(crate) type Stamp = Option<(u64, std::time::SystemTime, u64)>;

pub(crate) fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

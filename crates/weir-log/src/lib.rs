//! weir's durable log: one partition's append-only sequence of Kafka v2 record batches.
//!
//! Layout:
//! - [`log`]: [`Log`] — append with group commit, reads (hot tail or disk), high watermark,
//!   log start, offset by timestamp, delete-records, retention, flush, close.
//! - [`recovery`] (private): `Log::open`, which trusts what the checkpoint vouches for and
//!   verifies the rest, truncating at the first torn or corrupt byte.
//! - [`segment`] (private): one `.log` file with its `.index` and `.timeindex`; scanning.
//! - [`index`] (private): sparse offset and time indexes.
//! - [`checkpoint`] (private): the recovery point / log start / clean-shutdown file.
//! - [`hot`] (private): the in-memory tail.
//! - [`compact`]: compaction, the latest record of each key kept in the sealed segments.
//! - [`storage`]: the narrow I/O trait all file access goes through; [`FileStorage`] for real
//!   files and [`MemStorage`] for crash simulation and fault injection.
//! - [`config`]: [`LogConfig`], [`Durability`].
//!
//! The on-disk format is documented byte by byte in `docs/log-format.md` at the repository
//! root.

mod checkpoint;
pub mod compact;
pub mod config;
pub mod error;
mod hot;
mod index;
pub mod log;
mod recovery;
mod segment;
pub mod storage;

pub use compact::{CompactOptions, CompactReport, CompactionState};
pub use config::{Durability, LogConfig};
pub use error::{LogError, Result};
pub use log::{
    AppendInfo, Appended, Claim, Durable, InPlace, Limits, Log, ReadResult, RecoveryReport,
    RetentionReport,
};
pub use storage::{CrashMode, FaultKind, FileStorage, MemStorage, Storage, StorageFile};

//! Per-log configuration. Every default is documented on its field.

use std::time::Duration;

use crate::error::{LogError, Result};

/// When an append is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge after fdatasync. Concurrent appenders share one sync (group commit). Readers
    /// see a record only once it is durable, so no consumer can see a record a crash takes back.
    Always,
    /// Acknowledge after the write to the page cache; sync when this much time has passed since
    /// the last sync (checked on append and by [`crate::Log::tick`]).
    Interval(Duration),
    /// Acknowledge after the write to the page cache; sync only when a segment rolls and on
    /// close.
    Never,
}

/// Configuration of one log (one partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this size. Default 1 GiB; at
    /// most 2 GiB (index positions are 32-bit).
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one is older than this (wall clock since it was
    /// created or, after a restart, since the log was opened). Default 7 days.
    pub segment_age: Duration,
    /// Bytes of batches between two sparse index entries. Default 4096.
    pub index_interval_bytes: u32,
    /// Largest batch `append` accepts. Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Durability policy. Default [`Durability::Always`].
    pub durability: Durability,
    /// Bytes of the newest batches kept in memory for tailing readers. Default 32 MiB.
    pub hot_tail_bytes: usize,
    /// Delete sealed segments whose newest record is older than this. Default 7 days;
    /// `None` keeps data forever (as far as time goes).
    pub retention_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this. Default `None`.
    pub retention_bytes: Option<u64>,
    /// Rewrite the recovery checkpoint after this many synced bytes. Recovery after a crash
    /// scans at most about this much (plus what was written but not synced). Default 128 MiB.
    pub checkpoint_interval_bytes: u64,
    /// Disk space reserved ahead of the active segment's end, at most this much and at most as
    /// much as the segment already holds (`fallocate` keeping the file's size, where the file
    /// system supports it). The file system then allocates blocks once per reservation
    /// instead of on every write: produce takes 15–20% less CPU (BENCHMARKS.md). A rolled
    /// segment gives back what it did not use. Nothing is reserved in a segment's first 64 KiB.
    /// Default 8 MiB; 0 reserves nothing.
    pub preallocate_bytes: u64,
}

/// Hard ceiling on `segment_bytes`: positions in the index are u32.
pub const MAX_SEGMENT_BYTES: u64 = 2 << 30;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_age: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            max_batch_bytes: 8 << 20,
            durability: Durability::Always,
            hot_tail_bytes: 32 << 20,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            checkpoint_interval_bytes: 128 << 20,
            preallocate_bytes: 8 << 20,
        }
    }
}

impl LogConfig {
    /// The part of this configuration an open log can take on ([`crate::Log::set_limits`]).
    pub fn limits(&self) -> crate::Limits {
        crate::Limits::of(self)
    }

    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(LogError::Config(m));
        if self.segment_bytes < 1024 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return fail(format!(
                "segment_bytes is {}, must be between 1024 and {MAX_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        if self.max_batch_bytes < weir_batch::HEADER_LEN {
            return fail(format!(
                "max_batch_bytes is {}, must be at least {}",
                self.max_batch_bytes,
                weir_batch::HEADER_LEN
            ));
        }
        if self.max_batch_bytes as u64 > self.segment_bytes {
            return fail(format!(
                "max_batch_bytes ({}) must not exceed segment_bytes ({})",
                self.max_batch_bytes, self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        if self.segment_age.is_zero() {
            return fail("segment_age must be positive".into());
        }
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return fail("durability interval must be positive (use Always)".into());
            }
        }
        if self.checkpoint_interval_bytes == 0 {
            return fail("checkpoint_interval_bytes must be positive".into());
        }
        Ok(())
    }
}

//! Topic configuration and the durable topic metadata file.
//!
//! `topics.json` in the data directory lists every topic and its configuration. It is
//! replaced atomically (temporary file, fsync, rename, directory fsync), so after a crash it
//! holds either the old or the new list, never a mix.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use weir_log::Storage;

use serde::{Deserialize, Serialize};
use weir_log::{Durability, LogConfig};

use crate::error::{BrokerError, Result};

/// Durability policy of a topic, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilitySetting {
    /// fdatasync before acknowledging (group commit).
    Always,
    /// fdatasync at most this many milliseconds after a write.
    Interval { ms: u64 },
    /// Page cache only; synced when segments roll and on shutdown.
    Never,
}

/// Configuration of one topic. Every default is documented on its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    /// Number of partitions. Default 1; at most 10,000.
    pub partitions: u32,
    /// Delete whole segments older than this. Default 7 days; `None` keeps data forever.
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while a partition is larger. Default `None`.
    pub retention_bytes: Option<u64>,
    /// Default `always`.
    pub durability: DurabilitySetting,
    /// Largest record batch accepted. Default 8 MiB.
    pub max_batch_bytes: u32,
    /// Segment file size. Default 1 GiB (at most 2 GiB).
    pub segment_bytes: u64,
    /// Whose clock timestamps records: the producer's (`create_time`, the default) or the
    /// broker's at append (`log_append_time`; the batch is restamped and its CRC recomputed).
    pub timestamp_type: TimestampType,
}

/// Where record timestamps come from (Kafka's `message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampType {
    /// The producer's timestamps are kept.
    #[default]
    CreateTime,
    /// The broker stamps each batch with its clock when appending it.
    LogAppendTime,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            durability: DurabilitySetting::Always,
            max_batch_bytes: 8 << 20,
            segment_bytes: 1 << 30,
            timestamp_type: TimestampType::CreateTime,
        }
    }
}

impl TopicConfig {
    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(BrokerError::InvalidConfig(m));
        if self.partitions == 0 || self.partitions > 10_000 {
            return bad(format!(
                "partitions is {}, must be 1 to 10000",
                self.partitions
            ));
        }
        if let DurabilitySetting::Interval { ms: 0 } = self.durability {
            return bad("durability interval must be at least 1 ms".into());
        }
        if self.retention_ms == Some(0) {
            return bad("retention_ms must be positive (omit it to keep data forever)".into());
        }
        self.log_config(0, 0)
            .validate()
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))
    }

    /// The configuration of each partition's log.
    pub fn log_config(&self, hot_tail_bytes: usize, preallocate_bytes: u64) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            max_batch_bytes: self.max_batch_bytes as usize,
            durability: match self.durability {
                DurabilitySetting::Always => Durability::Always,
                DurabilitySetting::Interval { ms } => {
                    Durability::Interval(Duration::from_millis(ms))
                }
                DurabilitySetting::Never => Durability::Never,
            },
            hot_tail_bytes,
            preallocate_bytes,
            retention_age: self.retention_ms.map(Duration::from_millis),
            retention_bytes: self.retention_bytes,
            ..LogConfig::default()
        }
    }
}

/// A topic as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionInfo>,
}

/// A partition as reported to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub size_bytes: u64,
}

/// Checks a topic name: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`, and not
/// starting with `__` (reserved for weir's internal topics).
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(BrokerError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 249 {
        return bad("must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return bad("must not be '.' or '..'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    if name.starts_with("__") {
        return bad("names starting with '__' are reserved");
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaFile {
    version: u32,
    topics: BTreeMap<String, TopicConfig>,
}

const META_FILE: &str = "topics.json";
const META_VERSION: u32 = 1;

/// `topics.json` is the broker's own small file; a larger one is not read.
const MAX_META_BYTES: u64 = 64 << 20;

/// Reads `topics.json`; an absent file is an empty broker.
pub(crate) fn load_meta(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<BTreeMap<String, TopicConfig>> {
    let path = dir.join(META_FILE);
    let file = match storage.open_file(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(BrokerError::storage("opening", path, e)),
    };
    let len = file
        .len()
        .map_err(|e| BrokerError::storage("reading", &path, e))?;
    if len > MAX_META_BYTES {
        return Err(BrokerError::CorruptMetadata {
            what: path.display().to_string(),
            reason: format!("{len} bytes, over the {MAX_META_BYTES} this build reads"),
        });
    }
    let text = file
        .read_vec_at(len as usize, 0)
        .map_err(|e| BrokerError::storage("reading", &path, e))?;
    let meta: MetaFile =
        serde_json::from_slice(&text).map_err(|e| BrokerError::CorruptMetadata {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if meta.version != META_VERSION {
        return Err(BrokerError::CorruptMetadata {
            reason: format!(
                "version {}, where this build reads version {META_VERSION}",
                meta.version
            ),
            what: path.display().to_string(),
        });
    }
    Ok(meta.topics)
}

/// Replaces `topics.json` atomically and durably: a new file written and synced beside it,
/// renamed over it, the directory synced. A crash at any step leaves the old file or the new.
pub(crate) fn store_meta(
    storage: &dyn Storage,
    dir: &Path,
    topics: &BTreeMap<String, TopicConfig>,
) -> Result<()> {
    let tmp = dir.join("topics.json.tmp");
    let err = |op: &'static str, e: std::io::Error| BrokerError::storage(op, &tmp, e);
    let meta = MetaFile {
        version: META_VERSION,
        topics: topics.clone(),
    };
    let text = serde_json::to_vec_pretty(&meta)
        .map_err(|e| BrokerError::Internal(format!("encoding topics.json: {e}")))?;
    let f = storage
        .open_file(&tmp, true)
        .map_err(|e| err("creating", e))?;
    f.set_len(0).map_err(|e| err("truncating", e))?;
    f.write_all_at(&text, 0).map_err(|e| err("writing", e))?;
    f.sync_data().map_err(|e| err("syncing", e))?;
    storage
        .rename(&tmp, &dir.join(META_FILE))
        .map_err(|e| err("renaming", e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| BrokerError::storage("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["orders", "a", "quotes.v2", "log_2026-11", &"x".repeat(249)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/y",
            "__internal",
            "é",
            &"x".repeat(250),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        let err = TopicConfig {
            partitions: 0,
            ..TopicConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("partitions"), "{err}");
        let err = TopicConfig {
            segment_bytes: 10,
            ..TopicConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("segment_bytes"), "{err}");
        TopicConfig::default().validate().unwrap();
    }

    #[test]
    fn metadata_round_trips_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let fs = weir_log::FileStorage;
        assert!(load_meta(&fs, dir.path()).unwrap().is_empty());
        let mut topics = BTreeMap::new();
        topics.insert(
            "a".to_string(),
            TopicConfig {
                partitions: 3,
                durability: DurabilitySetting::Interval { ms: 50 },
                ..TopicConfig::default()
            },
        );
        store_meta(&fs, dir.path(), &topics).unwrap();
        assert_eq!(load_meta(&fs, dir.path()).unwrap(), topics);
        std::fs::write(
            dir.path().join(META_FILE),
            r#"{"version":1,"topics":{"a":{"partitions":1,"colour":"red"}}}"#,
        )
        .unwrap();
        let err = load_meta(&fs, dir.path()).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}

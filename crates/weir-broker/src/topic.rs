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
    /// What becomes of old records (Kafka's `cleanup.policy`): `delete` (the default: retention
    /// deletes whole old segments), `compact` (the latest record of each key is kept for ever,
    /// older ones are compacted away, retention does not apply, every record needs a key) or
    /// `compact_delete` (both).
    pub cleanup_policy: CleanupPolicy,
    /// Compacted topics: how long a tombstone (a record with a null value) stays once it lies
    /// in the compacted part, counted from its batch's timestamp. Default 1 day.
    pub delete_retention_ms: u64,
    /// Compacted topics: a segment is compacted only once its newest record is at least this
    /// old. Default 0.
    pub min_compaction_lag_ms: u64,
    /// Compacted topics: the longest a record waits for compaction, however little of the log
    /// is dirty. Default `None`: no limit (the dirty ratio decides).
    pub max_compaction_lag_ms: Option<u64>,
    /// Compacted topics: compaction runs once at least this share of the log's bytes is dirty
    /// (written since the last pass). Default 0.5.
    pub min_cleanable_dirty_ratio: DirtyRatio,
}

/// What becomes of old records (Kafka's `cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Retention deletes whole old segments.
    #[default]
    Delete,
    /// The latest record of each key is kept; older ones are compacted away.
    Compact,
    /// Compaction, and retention too.
    CompactDelete,
}

impl CleanupPolicy {
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
}

/// A share between 0 and 1 (a float that compares by value; configurations are never NaN).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DirtyRatio(pub f64);

impl PartialEq for DirtyRatio {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for DirtyRatio {}

impl Default for DirtyRatio {
    fn default() -> Self {
        Self(0.5)
    }
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
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: None,
            min_cleanable_dirty_ratio: DirtyRatio::default(),
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
        let ratio = self.min_cleanable_dirty_ratio.0;
        if !(0.0..=1.0).contains(&ratio) {
            return bad(format!(
                "min_cleanable_dirty_ratio is {ratio}, must be from 0 to 1"
            ));
        }
        let too_long = |v: u64| v > i64::MAX as u64;
        if too_long(self.delete_retention_ms) || too_long(self.min_compaction_lag_ms) {
            return bad("delete_retention_ms and min_compaction_lag_ms must fit in an i64".into());
        }
        if let Some(max) = self.max_compaction_lag_ms
            && (max == 0 || max < self.min_compaction_lag_ms || too_long(max))
        {
            return bad(format!(
                "max_compaction_lag_ms is {max}, must be positive and at least min_compaction_lag_ms ({})",
                self.min_compaction_lag_ms
            ));
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
            // A compact-only topic keeps its latest records for ever.
            retention_age: self
                .retention_ms
                .filter(|_| self.cleanup_policy.deletes())
                .map(Duration::from_millis),
            retention_bytes: self
                .retention_bytes
                .filter(|_| self.cleanup_policy.deletes()),
            ..LogConfig::default()
        }
    }
}

/// A topic's identity, Kafka's topic id (KIP-516): a random (version 4) UUID given when the
/// topic is created and kept in `topics.json`. A topic deleted and created again under the same
/// name gets a new one, so a client holding the old id learns that its topic is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    pub fn random() -> Self {
        let mut b: [u8; 16] = rand::random();
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        Self(b)
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads [`TopicId::to_hex`]'s form back.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(b))
    }
}

impl std::fmt::Display for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What `topics.json` keeps of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredTopic {
    pub(crate) config: TopicConfig,
    pub(crate) id: TopicId,
}

/// A topic as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub id: TopicId,
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
    /// Each topic's id (hex); version 2 on. A version 1 file's topics are given ids when it is
    /// read, and the file is written again as version 2.
    #[serde(default)]
    ids: BTreeMap<String, String>,
}

const META_FILE: &str = "topics.json";
const META_VERSION: u32 = 2;

/// `topics.json` is the broker's own small file; a larger one is not read.
const MAX_META_BYTES: u64 = 64 << 20;

/// Reads `topics.json`; an absent file is an empty broker. Also says whether the file must be
/// written again (a version 1 file, whose topics were just given ids).
pub(crate) fn load_meta(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<(BTreeMap<String, StoredTopic>, bool)> {
    let path = dir.join(META_FILE);
    let file = match storage.open_file(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((BTreeMap::new(), false)),
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
    let corrupt = |reason: String| BrokerError::CorruptMetadata {
        what: path.display().to_string(),
        reason,
    };
    if !(1..=META_VERSION).contains(&meta.version) {
        return Err(corrupt(format!(
            "version {}, where this build reads versions 1 to {META_VERSION}",
            meta.version
        )));
    }
    let mut ids = meta.ids;
    let mut topics = BTreeMap::new();
    for (name, config) in meta.topics {
        let id = match ids.remove(&name) {
            Some(hex) => TopicId::from_hex(&hex).ok_or_else(|| {
                corrupt(format!("topic {name:?} has id {hex:?}, not 32 hex digits"))
            })?,
            None if meta.version == 1 => TopicId::random(),
            None => return Err(corrupt(format!("topic {name:?} has no id"))),
        };
        topics.insert(name, StoredTopic { config, id });
    }
    if let Some(name) = ids.keys().next() {
        return Err(corrupt(format!("an id for {name:?}, which is not a topic")));
    }
    Ok((topics, meta.version < META_VERSION))
}

/// Replaces `topics.json` atomically and durably: a new file written and synced beside it,
/// renamed over it, the directory synced. A crash at any step leaves the old file or the new.
pub(crate) fn store_meta(
    storage: &dyn Storage,
    dir: &Path,
    topics: &BTreeMap<String, StoredTopic>,
) -> Result<()> {
    let tmp = dir.join("topics.json.tmp");
    let err = |op: &'static str, e: std::io::Error| BrokerError::storage(op, &tmp, e);
    let meta = MetaFile {
        version: META_VERSION,
        topics: topics
            .iter()
            .map(|(name, t)| (name.clone(), t.config.clone()))
            .collect(),
        ids: topics
            .iter()
            .map(|(name, t)| (name.clone(), t.id.to_hex()))
            .collect(),
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
        assert!(load_meta(&fs, dir.path()).unwrap().0.is_empty());
        let mut topics = BTreeMap::new();
        topics.insert(
            "a".to_string(),
            StoredTopic {
                config: TopicConfig {
                    partitions: 3,
                    durability: DurabilitySetting::Interval { ms: 50 },
                    ..TopicConfig::default()
                },
                id: TopicId::random(),
            },
        );
        store_meta(&fs, dir.path(), &topics).unwrap();
        assert_eq!(load_meta(&fs, dir.path()).unwrap(), (topics, false));
        std::fs::write(
            dir.path().join(META_FILE),
            r#"{"version":1,"topics":{"a":{"partitions":1,"colour":"red"}}}"#,
        )
        .unwrap();
        let err = load_meta(&fs, dir.path()).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn a_version_one_file_gets_topic_ids_once_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fs = weir_log::FileStorage;
        let path = dir.path().join(META_FILE);
        std::fs::write(&path, r#"{"version":1,"topics":{"a":{},"b":{}}}"#).unwrap();
        let (topics, rewrite) = load_meta(&fs, dir.path()).unwrap();
        assert!(rewrite, "a version 1 file is written again with its ids");
        assert_ne!(topics["a"].id, topics["b"].id);
        assert_eq!(topics["a"].id.0[6] >> 4, 4, "a version 4 UUID");
        store_meta(&fs, dir.path(), &topics).unwrap();
        assert_eq!(load_meta(&fs, dir.path()).unwrap(), (topics, false));
        for (bad, says) in [
            (r#"{"version":2,"topics":{"a":{}}}"#, "no id"),
            (
                r#"{"version":2,"topics":{"a":{}},"ids":{"a":"xyz"}}"#,
                "32 hex digits",
            ),
            (
                r#"{"version":2,"topics":{},"ids":{"a":"00000000000000000000000000000000"}}"#,
                "not a topic",
            ),
            (r#"{"version":3,"topics":{}}"#, "versions 1 to 2"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = load_meta(&fs, dir.path()).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}

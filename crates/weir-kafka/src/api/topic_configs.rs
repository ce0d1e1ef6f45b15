//! Topic configurations under Kafka's names: the one table CreateTopics, DescribeConfigs,
//! AlterConfigs and IncrementalAlterConfigs all read. A key not listed is refused by name,
//! never silently ignored.
//!
//! | Kafka key | weir setting | may change after creation |
//! |---|---|---|
//! | `cleanup.policy` | `cleanup_policy`: `delete`, `compact` or `compact,delete` | yes |
//! | `retention.ms` | `retention_ms` (-1: forever) | yes |
//! | `retention.bytes` | `retention_bytes` (-1: no limit) | yes |
//! | `max.message.bytes` | `max_batch_bytes` | yes |
//! | `message.timestamp.type` | `timestamp_type` | yes |
//! | `segment.bytes` | `segment_bytes` | no |
//! | `delete.retention.ms` | `delete_retention_ms` | yes |
//! | `min.compaction.lag.ms` | `min_compaction_lag_ms` | yes |
//! | `max.compaction.lag.ms` | `max_compaction_lag_ms` (Long.MAX_VALUE: no limit) | yes |
//! | `min.cleanable.dirty.ratio` | `min_cleanable_dirty_ratio` | yes |

use weir_broker::TopicConfig;
use weir_broker::topic::{CleanupPolicy, DirtyRatio, TimestampType};

use crate::code;

/// DescribeConfigs config sources.
pub(crate) const SOURCE_TOPIC: i8 = 1;
pub(crate) const SOURCE_STATIC_BROKER: i8 = 4;
pub(crate) const SOURCE_DEFAULT: i8 = 5;

/// DescribeConfigs config types (v3+).
pub(crate) const TYPE_STRING: i8 = 2;
pub(crate) const TYPE_INT: i8 = 3;
pub(crate) const TYPE_LONG: i8 = 5;
pub(crate) const TYPE_DOUBLE: i8 = 6;
pub(crate) const TYPE_BOOLEAN: i8 = 1;
pub(crate) const TYPE_LIST: i8 = 7;

/// A refusal: a Kafka error code and the reason.
pub(crate) type Refusal = (i16, String);

/// One topic config as DescribeConfigs reports it.
pub(crate) struct Entry {
    pub(crate) name: &'static str,
    pub(crate) value: String,
    pub(crate) read_only: bool,
    pub(crate) config_type: i8,
}

/// The keys served, in the order they are reported.
pub(crate) const KEYS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "segment.bytes",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "min.cleanable.dirty.ratio",
];

/// `c`'s configs under Kafka's names.
pub(crate) fn entries(c: &TopicConfig) -> Vec<Entry> {
    KEYS.iter()
        .map(|&name| Entry {
            name,
            value: value(c, name),
            read_only: name == "segment.bytes",
            config_type: match name {
                "cleanup.policy" => TYPE_LIST,
                "message.timestamp.type" => TYPE_STRING,
                "max.message.bytes" => TYPE_INT,
                "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
                _ => TYPE_LONG,
            },
        })
        .collect()
}

/// The value of key `name` (one of [`KEYS`]) in `c`.
fn value(c: &TopicConfig, name: &str) -> String {
    let or_minus_one = |v: Option<u64>| v.map_or(-1, |v| v as i64).to_string();
    match name {
        "cleanup.policy" => match c.cleanup_policy {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
        .into(),
        "delete.retention.ms" => c.delete_retention_ms.to_string(),
        "min.compaction.lag.ms" => c.min_compaction_lag_ms.to_string(),
        "max.compaction.lag.ms" => c
            .max_compaction_lag_ms
            .map_or(i64::MAX, |v| v as i64)
            .to_string(),
        "min.cleanable.dirty.ratio" => c.min_cleanable_dirty_ratio.0.to_string(),
        "retention.ms" => or_minus_one(c.retention_ms),
        "retention.bytes" => or_minus_one(c.retention_bytes),
        "max.message.bytes" => c.max_batch_bytes.to_string(),
        "message.timestamp.type" => match c.timestamp_type {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        }
        .into(),
        "segment.bytes" => c.segment_bytes.to_string(),
        _ => String::new(),
    }
}

/// Sets key `name` of `c` to `value` (null: the default, `defaults`' value).
pub(crate) fn set(
    c: &mut TopicConfig,
    name: &str,
    value: Option<&str>,
    defaults: &TopicConfig,
) -> Result<(), Refusal> {
    let Some(value) = value else {
        return reset(c, name, defaults);
    };
    let invalid = |why: String| Err((code::INVALID_CONFIG, format!("{name} = {value:?}: {why}")));
    let number = || value.trim().parse::<i64>();
    match name {
        "cleanup.policy" => {
            let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
            parts.sort_unstable();
            parts.dedup();
            c.cleanup_policy = match parts.as_slice() {
                ["delete"] => CleanupPolicy::Delete,
                ["compact"] => CleanupPolicy::Compact,
                ["compact", "delete"] => CleanupPolicy::CompactDelete,
                _ => return invalid("delete, compact, or compact,delete".into()),
            };
        }
        "delete.retention.ms" | "min.compaction.lag.ms" => {
            let Ok(v) = u64::try_from(number().unwrap_or(-1)) else {
                return invalid("a number of milliseconds, 0 or more".into());
            };
            if name == "delete.retention.ms" {
                c.delete_retention_ms = v;
            } else {
                c.min_compaction_lag_ms = v;
            }
        }
        "max.compaction.lag.ms" => {
            c.max_compaction_lag_ms = match number() {
                Ok(i64::MAX) | Ok(-1) => None,
                Ok(v) if v > 0 => Some(v as u64),
                _ => return invalid("a positive number of milliseconds".into()),
            }
        }
        "min.cleanable.dirty.ratio" => match value.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => c.min_cleanable_dirty_ratio = DirtyRatio(v),
            _ => return invalid("a number from 0 to 1".into()),
        },
        "retention.ms" | "retention.bytes" => {
            let v = match number() {
                Ok(-1) => None,
                Ok(v) if v > 0 => Some(v as u64),
                Ok(0) if name == "retention.bytes" => Some(0),
                _ => return invalid("a positive number, or -1 for no limit".into()),
            };
            if name == "retention.ms" {
                c.retention_ms = v;
            } else {
                c.retention_bytes = v;
            }
        }
        "max.message.bytes" => match number().ok().and_then(|v| u32::try_from(v).ok()) {
            Some(v) if v > 0 => c.max_batch_bytes = v,
            _ => return invalid("a positive number of bytes".into()),
        },
        "message.timestamp.type" => {
            c.timestamp_type = match value {
                "CreateTime" => TimestampType::CreateTime,
                "LogAppendTime" => TimestampType::LogAppendTime,
                _ => return invalid("CreateTime or LogAppendTime".into()),
            }
        }
        "segment.bytes" => match number().ok().and_then(|v| u64::try_from(v).ok()) {
            Some(v) if v > 0 => c.segment_bytes = v,
            _ => return invalid("a positive number of bytes".into()),
        },
        other => return Err(unknown(other)),
    }
    Ok(())
}

/// Puts key `name` of `c` back to `defaults`' value.
pub(crate) fn reset(
    c: &mut TopicConfig,
    name: &str,
    defaults: &TopicConfig,
) -> Result<(), Refusal> {
    match name {
        "cleanup.policy" => c.cleanup_policy = defaults.cleanup_policy,
        "delete.retention.ms" => c.delete_retention_ms = defaults.delete_retention_ms,
        "min.compaction.lag.ms" => c.min_compaction_lag_ms = defaults.min_compaction_lag_ms,
        "max.compaction.lag.ms" => c.max_compaction_lag_ms = defaults.max_compaction_lag_ms,
        "min.cleanable.dirty.ratio" => {
            c.min_cleanable_dirty_ratio = defaults.min_cleanable_dirty_ratio;
        }
        "retention.ms" => c.retention_ms = defaults.retention_ms,
        "retention.bytes" => c.retention_bytes = defaults.retention_bytes,
        "max.message.bytes" => c.max_batch_bytes = defaults.max_batch_bytes,
        "message.timestamp.type" => c.timestamp_type = defaults.timestamp_type,
        "segment.bytes" => c.segment_bytes = defaults.segment_bytes,
        other => return Err(unknown(other)),
    }
    Ok(())
}

fn unknown(name: &str) -> Refusal {
    (
        code::INVALID_CONFIG,
        format!(
            "topic config {name:?} is not supported; weir serves {}",
            KEYS.join(", ")
        ),
    )
}

/// The broker setting a topic key defaults to, as Kafka names it (DescribeConfigs synonyms).
pub(crate) fn broker_key(name: &str) -> &'static str {
    match name {
        "cleanup.policy" => "log.cleanup.policy",
        "retention.ms" => "log.retention.ms",
        "retention.bytes" => "log.retention.bytes",
        "max.message.bytes" => "message.max.bytes",
        "message.timestamp.type" => "log.message.timestamp.type",
        "delete.retention.ms" => "log.cleaner.delete.retention.ms",
        "min.compaction.lag.ms" => "log.cleaner.min.compaction.lag.ms",
        "max.compaction.lag.ms" => "log.cleaner.max.compaction.lag.ms",
        "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio",
        _ => "log.segment.bytes",
    }
}

/// A broker error's message with weir's setting names as Kafka's keys, for Kafka clients
/// (`max_batch_bytes must not exceed segment_bytes` reads as the keys they set).
pub(crate) fn kafka_message(message: &str) -> String {
    [
        ("delete_retention_ms", "delete.retention.ms"),
        ("min_compaction_lag_ms", "min.compaction.lag.ms"),
        ("max_compaction_lag_ms", "max.compaction.lag.ms"),
        ("min_cleanable_dirty_ratio", "min.cleanable.dirty.ratio"),
        ("max_batch_bytes", "max.message.bytes"),
        ("segment_bytes", "segment.bytes"),
        ("retention_ms", "retention.ms"),
        ("retention_bytes", "retention.bytes"),
        ("timestamp_type", "message.timestamp.type"),
    ]
    .iter()
    .fold(message.to_string(), |m, (ours, theirs)| {
        m.replace(ours, theirs)
    })
}

/// Where `entry`'s value comes from: the topic's own (it differs from the broker's default)
/// or the default.
pub(crate) fn source(entry: &Entry, defaults: &TopicConfig) -> i8 {
    if value(defaults, entry.name) == entry.value {
        SOURCE_DEFAULT
    } else {
        SOURCE_TOPIC
    }
}

/// The broker's own settings that Kafka tools ask for, under Kafka's names, read-only (they
/// come from weir.toml).
pub(crate) fn broker_entries(
    broker: &weir_broker::BrokerConfig,
) -> Vec<(&'static str, String, i8)> {
    let d = &broker.default_topic;
    vec![
        ("num.partitions", d.partitions.to_string(), TYPE_INT),
        ("log.retention.ms", value(d, "retention.ms"), TYPE_LONG),
        (
            "log.retention.bytes",
            value(d, "retention.bytes"),
            TYPE_LONG,
        ),
        ("log.segment.bytes", value(d, "segment.bytes"), TYPE_LONG),
        ("message.max.bytes", value(d, "max.message.bytes"), TYPE_INT),
        (
            "log.message.timestamp.type",
            value(d, "message.timestamp.type"),
            TYPE_STRING,
        ),
        (
            "auto.create.topics.enable",
            broker.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        ("default.replication.factor", "1".into(), TYPE_INT),
        ("log.cleanup.policy", value(d, "cleanup.policy"), TYPE_LIST),
        (
            "log.cleaner.delete.retention.ms",
            value(d, "delete.retention.ms"),
            TYPE_LONG,
        ),
        (
            "log.cleaner.min.compaction.lag.ms",
            value(d, "min.compaction.lag.ms"),
            TYPE_LONG,
        ),
        (
            "log.cleaner.max.compaction.lag.ms",
            value(d, "max.compaction.lag.ms"),
            TYPE_LONG,
        ),
        (
            "log.cleaner.min.cleanable.ratio",
            value(d, "min.cleanable.dirty.ratio"),
            TYPE_DOUBLE,
        ),
    ]
}

//! `weir topic …` and `weir group …`.

use anyhow::Result;
use clap::Subcommand;
use weir_client::messages as msg;

use crate::Conn;

#[derive(Subcommand)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        name: String,
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Keep data this long (ms); -1 forever; default: the server's.
        #[arg(long)]
        retention_ms: Option<i64>,
        /// Keep at most this many bytes per partition; -1 unlimited.
        #[arg(long)]
        retention_bytes: Option<i64>,
        /// always, interval:<ms> or never; default: the server's.
        #[arg(long)]
        durability: Option<String>,
        #[arg(long)]
        max_batch_bytes: Option<u32>,
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Record timestamps: create-time (the producer's) or log-append-time (the broker's
        /// clock at append); default: the server's.
        #[arg(long, value_parser = ["create-time", "log-append-time"])]
        timestamp_type: Option<String>,
        /// What becomes of old records: delete (retention), compact (the latest record of
        /// each key is kept; every record needs a key) or compact,delete; default: the
        /// server's.
        #[arg(long, value_parser = ["delete", "compact", "compact,delete", "delete,compact"])]
        cleanup_policy: Option<String>,
        /// Compacted topics: how long a tombstone stays (ms).
        #[arg(long)]
        delete_retention_ms: Option<u64>,
        /// Compacted topics: the least time before a record is compacted (ms).
        #[arg(long)]
        min_compaction_lag_ms: Option<u64>,
        /// Compacted topics: the most time before a record is compacted (ms); -1 no limit.
        #[arg(long, allow_hyphen_values = true)]
        max_compaction_lag_ms: Option<i64>,
        /// Compacted topics: compact once this share of the log is dirty (0 to 1).
        #[arg(long)]
        min_cleanable_dirty_ratio: Option<f64>,
    },
    /// List topics.
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Show a topic's configuration and partitions.
    Describe {
        name: String,
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// List consumer groups.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a group's members, assignment and lag.
    Describe {
        group: String,
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
}

fn durability(s: &str) -> Result<(msg::Durability, u32)> {
    Ok(match s {
        "always" => (msg::Durability::Always, 0),
        "never" => (msg::Durability::Never, 0),
        other => match other
            .strip_prefix("interval:")
            .and_then(|ms| ms.parse().ok())
        {
            Some(ms) => (msg::Durability::Interval, ms),
            None => {
                anyhow::bail!("--durability must be always, never or interval:<ms>, not {other:?}")
            }
        },
    })
}

fn config_json(c: &msg::TopicConfig) -> serde_json::Value {
    serde_json::json!({
        "partitions": c.partitions,
        "retention_ms": c.retention_ms,
        "retention_bytes": c.retention_bytes,
        "durability": match c.durability() {
            msg::Durability::Interval => format!("interval:{}", c.durability_interval_ms),
            d => d.as_str_name().trim_start_matches("DURABILITY_").to_ascii_lowercase(),
        },
        "max_batch_bytes": c.max_batch_bytes,
        "segment_bytes": c.segment_bytes,
        "timestamp_type": match c.timestamp_type() {
            msg::TimestampType::LogAppendTime => "log-append-time",
            _ => "create-time",
        },
        "cleanup_policy": match c.cleanup_policy() {
            msg::CleanupPolicy::Compact => "compact",
            msg::CleanupPolicy::CompactDelete => "compact,delete",
            _ => "delete",
        },
        "delete_retention_ms": c.delete_retention_ms,
        "min_compaction_lag_ms": c.min_compaction_lag_ms,
        "max_compaction_lag_ms": c.max_compaction_lag_ms,
        "min_cleanable_dirty_ratio": c.min_cleanable_dirty_ratio,
    })
}

fn topic_json(t: &msg::TopicMetadata) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "config": t.config.as_ref().map(config_json),
        "partitions": t.partitions.iter().map(|p| serde_json::json!({
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
        })).collect::<Vec<_>>(),
    })
}

pub async fn topic(cmd: TopicCmd) -> Result<()> {
    match cmd {
        TopicCmd::Create {
            name,
            conn,
            partitions,
            retention_ms,
            retention_bytes,
            durability: d,
            max_batch_bytes,
            segment_bytes,
            timestamp_type,
            cleanup_policy,
            delete_retention_ms,
            min_compaction_lag_ms,
            max_compaction_lag_ms,
            min_cleanable_dirty_ratio,
        } => {
            let client = conn.connect("weir-cli").await?;
            let (dur, interval) = match d.as_deref() {
                Some(s) => durability(s)?,
                None => (msg::Durability::Default, 0),
            };
            let config = msg::TopicConfig {
                partitions,
                retention_ms: retention_ms.unwrap_or(0),
                retention_bytes: retention_bytes.unwrap_or(0),
                durability: dur as i32,
                durability_interval_ms: interval,
                max_batch_bytes: max_batch_bytes.unwrap_or(0),
                segment_bytes: segment_bytes.unwrap_or(0),
                timestamp_type: match timestamp_type.as_deref() {
                    Some("create-time") => msg::TimestampType::CreateTime,
                    Some(_) => msg::TimestampType::LogAppendTime,
                    None => msg::TimestampType::Default,
                } as i32,
                cleanup_policy: match cleanup_policy.as_deref() {
                    None => msg::CleanupPolicy::Default,
                    Some("delete") => msg::CleanupPolicy::Delete,
                    Some("compact") => msg::CleanupPolicy::Compact,
                    Some(_) => msg::CleanupPolicy::CompactDelete,
                } as i32,
                delete_retention_ms,
                min_compaction_lag_ms,
                max_compaction_lag_ms,
                min_cleanable_dirty_ratio,
            };
            let applied = client.create_topic(&name, config).await?;
            println!("created topic {name} {}", config_json(&applied));
        }
        TopicCmd::List { conn, json } => {
            let client = conn.connect("weir-cli").await?;
            let topics = client.metadata(&[]).await?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(topics.iter().map(topic_json).collect())
                );
            } else {
                for t in topics {
                    let records: u64 = t
                        .partitions
                        .iter()
                        .map(|p| p.high_watermark - p.log_start_offset)
                        .sum();
                    println!(
                        "{}\tpartitions={}\trecords={records}",
                        t.name,
                        t.partitions.len()
                    );
                }
            }
        }
        TopicCmd::Describe { name, conn, json } => {
            let client = conn.connect("weir-cli").await?;
            let topics = client.metadata(&[&name]).await?;
            for t in &topics {
                if json {
                    println!("{}", topic_json(t));
                    continue;
                }
                println!(
                    "topic {} {}",
                    t.name,
                    t.config.as_ref().map(config_json).unwrap_or_default()
                );
                println!("partition\tlog_start\thigh_watermark\tsize_bytes");
                for p in &t.partitions {
                    println!(
                        "{}\t{}\t{}\t{}",
                        p.partition, p.log_start_offset, p.high_watermark, p.size_bytes
                    );
                }
            }
        }
        TopicCmd::Delete { name, conn } => {
            let client = conn.connect("weir-cli").await?;
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

pub async fn group(cmd: GroupCmd) -> Result<()> {
    match cmd {
        GroupCmd::List { conn } => {
            let client = conn.connect("weir-cli").await?;
            for g in client.list_groups().await? {
                println!("{g}");
            }
        }
        GroupCmd::Describe { group, conn, json } => {
            let client = conn.connect("weir-cli").await?;
            let d = client.describe_group(&group).await?;
            if json {
                let v = serde_json::json!({
                    "group": d.group,
                    "generation": d.generation,
                    "members": d.members.iter().map(|m| serde_json::json!({
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        "assignment": m.assignment.iter().map(|a| serde_json::json!({"topic": a.topic, "partitions": a.partitions})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "lag": d.lag.iter().map(|l| serde_json::json!({
                        "topic": l.topic, "partition": l.partition, "committed": l.committed,
                        "high_watermark": l.high_watermark, "lag": l.lag,
                    })).collect::<Vec<_>>(),
                });
                println!("{v}");
                return Ok(());
            }
            println!(
                "group {} generation {} members {}",
                d.group,
                d.generation,
                d.members.len()
            );
            for m in &d.members {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|a| format!("{}:{:?}", a.topic, a.partitions))
                    .collect();
                println!(
                    "  member {} ({}) {}",
                    m.member_id,
                    m.client_id,
                    parts.join(" ")
                );
            }
            println!("topic\tpartition\tcommitted\thigh_watermark\tlag");
            for l in &d.lag {
                let committed = l.committed.map_or("-".to_string(), |c| c.to_string());
                println!(
                    "{}\t{}\t{committed}\t{}\t{}",
                    l.topic, l.partition, l.high_watermark, l.lag
                );
            }
        }
    }
    Ok(())
}

//! Pipelines declared in TOML, in Vector's shape: `sources`, `transforms` and `sinks` tables,
//! each component naming its `inputs`, plus an optional `dead_letter` output.
//!
//! A pipeline is checked as a whole before anything runs: every key known, every VRL program
//! compiled, every input an existing output, no cycle, each component's kind allowed where it
//! runs. An error names the pipeline, the component and the key. The same declaration is
//! [`check`]ed without a broker (`weir pipeline check`) and [`build`]t onto one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use weir_broker::Broker;

use crate::codec::{Decoding, Encoding};
use crate::connect::file::{FileSink, FileSource, ReadFrom};
use crate::connect::stdio::{StdinSource, StdoutSink};
use crate::connect::topic::{Batching, Start, TopicSink, TopicSource};
use crate::edge::BufferConfig;
use crate::ops;
use crate::pipeline::{
    Builder, ComponentError, Pipeline, Sink, SinkContext, SinkOptions, Source, SourceContext,
};
use crate::vrl::{self as v, Compiled};

/// A declaration that cannot run, with where: the pipeline, the component, the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pipeline `{pipeline}`: {message}")]
pub struct ConfigError {
    pub pipeline: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum SourceConfig {
    /// A weir topic, read as a member of a consumer group.
    Topic {
        topic: String,
        /// Default `pipeline.PIPELINE.COMPONENT`.
        group: Option<String>,
        #[serde(default)]
        start: Start,
        #[serde(default)]
        decoding: Decoding,
        /// Default 1,000 ms.
        commit_interval_ms: Option<u64>,
    },
    /// `POST /pipelines/NAME/ingest` on the server's HTTP door (`weir serve` only): one
    /// event per line of the body, answered once delivered.
    Http {
        #[serde(default)]
        decoding: Decoding,
    },
    /// Lines of the files matching `include` (glob patterns), followed across rotations,
    /// positions checkpointed in the data directory.
    File {
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
        #[serde(default)]
        read_from: ReadFrom,
        #[serde(default)]
        decoding: Decoding,
        /// How often files are checked for new lines and the patterns matched again.
        /// Default 250 ms.
        poll_ms: Option<u64>,
    },
    /// Lines from stdin (`weir pipeline run` only).
    Stdin {
        #[serde(default)]
        decoding: Decoding,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum TransformConfig {
    /// A VRL program that reshapes each event.
    Remap {
        inputs: Vec<String>,
        /// The program.
        source: Option<String>,
        /// Or a file holding it, relative to the declaring file.
        file: Option<PathBuf>,
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// Keeps the events a VRL condition holds for.
    Filter {
        inputs: Vec<String>,
        condition: String,
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// One event in `rate` (by a hash of `key_fields` when given: whole keys).
    Sample {
        inputs: Vec<String>,
        rate: u64,
        #[serde(default)]
        key_fields: Vec<String>,
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// Drops events whose `fields` repeat those of one of the last `cache_size` events.
    Dedupe {
        inputs: Vec<String>,
        fields: Vec<String>,
        /// Default 10,000.
        cache_size: Option<usize>,
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// At most `threshold` events per `window_secs` per key.
    Throttle {
        inputs: Vec<String>,
        threshold: u32,
        window_secs: f64,
        #[serde(default)]
        key_fields: Vec<String>,
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// One event per element of the array at `field`.
    Split {
        inputs: Vec<String>,
        field: String,
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// Named outputs by VRL condition (`NAME.ROUTE`), and `NAME._unmatched`.
    Route {
        inputs: Vec<String>,
        route: BTreeMap<String, String>,
        #[serde(default)]
        buffer: BufferConfig,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum SinkConfig {
    Topic {
        inputs: Vec<String>,
        topic: String,
        #[serde(default)]
        encoding: Encoding,
        #[serde(default)]
        batch: Batching,
        #[serde(default)]
        buffer: BufferConfig,
        #[serde(default)]
        best_effort: bool,
    },
    /// One event per line in a file, rotated by size and age.
    File {
        inputs: Vec<String>,
        path: PathBuf,
        #[serde(default)]
        encoding: Encoding,
        /// Default 100 MiB.
        max_bytes: Option<u64>,
        /// Default none.
        max_age_secs: Option<u64>,
        #[serde(default)]
        batch: Batching,
        #[serde(default)]
        buffer: BufferConfig,
        #[serde(default)]
        best_effort: bool,
    },
    /// One event per line on stdout (`weir pipeline run` only).
    Stdout {
        inputs: Vec<String>,
        #[serde(default)]
        encoding: Encoding,
        #[serde(default)]
        buffer: BufferConfig,
        #[serde(default)]
        best_effort: bool,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum DeadLetterConfig {
    /// Failed records as read, with the error in headers.
    Topic {
        topic: String,
        #[serde(default)]
        batch: Batching,
    },
    Stdout {},
    /// Failed records as read, one per line (their headers are not kept).
    File {
        path: PathBuf,
    },
}

/// Where a pipeline runs: what its components may be.
#[derive(Debug, Clone)]
pub enum Host {
    /// Only checked (`weir pipeline check`): nothing is connected.
    Check,
    /// Inside `weir serve`, on its broker: stdin and stdout are not available.
    Server(Broker),
    /// `weir pipeline run`: on a broker of its own (when it uses topics), stdin and stdout
    /// available; file checkpoints under `data_dir`.
    Standalone {
        broker: Option<Broker>,
        data_dir: PathBuf,
    },
}

impl Host {
    fn stdio(&self) -> bool {
        !matches!(self, Host::Server(_))
    }

    /// Where file positions are checkpointed, and through which storage.
    fn checkpoints(
        &self,
        pipeline: &str,
        component: &str,
    ) -> (PathBuf, Arc<dyn weir_log::Storage>) {
        let (dir, storage): (PathBuf, Arc<dyn weir_log::Storage>) = match self {
            Host::Server(b) => (b.config().data_dir.clone(), b.config().storage.clone()),
            Host::Standalone { data_dir, .. } => {
                (data_dir.clone(), Arc::new(weir_log::FileStorage))
            }
            Host::Check => (PathBuf::from("."), Arc::new(weir_log::FileStorage)),
        };
        (
            dir.join("pipelines")
                .join(pipeline)
                .join(format!("{component}.checkpoints.json")),
            storage,
        )
    }
}

/// A pipeline's declaration: the TOML table under `[pipelines.NAME]`, or a whole file.
#[derive(Debug, Clone)]
pub struct Declaration {
    pub name: String,
    table: toml::Table,
    /// Where relative paths (a remap's `file`) start.
    base: PathBuf,
}

impl Declaration {
    pub fn new(name: &str, table: toml::Table, base: &Path) -> Self {
        Self {
            name: name.to_string(),
            table,
            base: base.to_path_buf(),
        }
    }

    /// Reads one pipeline from a file (its name is the file's stem).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("pipeline")
            .to_string();
        let fail = |message: String| ConfigError {
            pipeline: name.clone(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Self::new(&name, table, base))
    }
}

impl Declaration {
    /// Whether any component reads or writes a weir topic (and so needs a broker).
    pub fn uses_topics(&self) -> bool {
        let is_topic = |v: &toml::Value| v.get("type").and_then(|t| t.as_str()) == Some("topic");
        ["sources", "sinks"].iter().any(|s| {
            self.table
                .get(*s)
                .and_then(|t| t.as_table())
                .is_some_and(|t| t.values().any(is_topic))
        }) || self.table.get("dead_letter").is_some_and(is_topic)
    }
}

/// Reads every `*.toml` in `dir`, one pipeline each, in name order.
pub fn from_dir(dir: &Path) -> Result<Vec<Declaration>, ConfigError> {
    let fail = |message: String| ConfigError {
        pipeline: "*".into(),
        message,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fail(format!("reading {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| Declaration::from_file(p)).collect()
}

/// Checks a declaration without running or connecting anything.
pub fn check(d: &Declaration) -> Result<Pipeline, ConfigError> {
    build(d, &Host::Check)
}

/// Builds a declaration for `host`.
pub fn build(d: &Declaration, host: &Host) -> Result<Pipeline, ConfigError> {
    let fail = |message: String| ConfigError {
        pipeline: d.name.clone(),
        message,
    };
    let mut sources = BTreeMap::new();
    let mut transforms = BTreeMap::new();
    let mut sinks = BTreeMap::new();
    let mut dead_letter = None;
    let mut workers: BTreeMap<String, usize> = BTreeMap::new();
    let mut grace = Duration::from_secs(10);
    for (key, value) in &d.table {
        match key.as_str() {
            "sources" => sources = section::<SourceConfig>(value, "source").map_err(fail)?,
            "transforms" => {
                let (stripped, w) = take_workers(value).map_err(fail)?;
                transforms = section::<TransformConfig>(&stripped, "transform").map_err(fail)?;
                workers = w;
            }
            "sinks" => sinks = section::<SinkConfig>(value, "sink").map_err(fail)?,
            "dead_letter" => {
                dead_letter = Some(
                    value
                        .clone()
                        .try_into::<DeadLetterConfig>()
                        .map_err(|e| fail(format!("dead_letter: {}", de_message(&e))))?,
                )
            }
            "grace_ms" => {
                let ms = value
                    .as_integer()
                    .filter(|ms| *ms >= 0)
                    .ok_or_else(|| fail("grace_ms: a number of milliseconds".into()))?;
                grace = Duration::from_millis(ms as u64);
            }
            other => {
                return Err(fail(format!(
                    "unknown key `{other}` (expected sources, transforms, sinks, dead_letter, grace_ms)"
                )));
            }
        }
    }
    let mut b = Builder::new(&d.name).grace(grace);
    // `Ok(None)`: only checking, so topic components stay unconnected.
    let broker = || -> Result<Option<Broker>, String> {
        match host {
            Host::Check => Ok(None),
            Host::Server(b) => Ok(Some(b.clone())),
            Host::Standalone {
                broker: Some(b), ..
            } => Ok(Some(b.clone())),
            Host::Standalone { broker: None, .. } => {
                Err("topics need the data directory's broker".into())
            }
        }
    };
    for (name, s) in sources {
        let at = |m: String| fail(format!("source `{name}`: {m}"));
        b = match s {
            SourceConfig::Topic {
                topic,
                group,
                start,
                decoding,
                commit_interval_ms,
            } => {
                check_topic(&topic).map_err(|m| at(format!("topic: {m}")))?;
                no_header(&decoding).map_err(&at)?;
                let decoding = prepare_decoding(decoding, &d.base).map_err(&at)?;
                let group = group.unwrap_or_else(|| format!("pipeline.{}.{name}", d.name));
                if group.is_empty() {
                    return Err(at("group: must not be empty".into()));
                }
                let commit_interval =
                    Duration::from_millis(commit_interval_ms.unwrap_or(1000).max(10));
                match broker().map_err(&at)? {
                    Some(broker) => b.source(
                        &name,
                        TopicSource {
                            broker,
                            topic,
                            group,
                            start,
                            decoding,
                            commit_interval,
                            progress: Default::default(),
                        },
                    ),
                    None => b.source(&name, Unconnected),
                }
            }
            SourceConfig::Http { decoding } => {
                if matches!(host, Host::Standalone { .. }) {
                    return Err(at(
                        "an http source needs the server's HTTP door (`weir serve`)".into(),
                    ));
                }
                no_header(&decoding).map_err(&at)?;
                lines_only(&decoding).map_err(&at)?;
                b.http_source(&name, decoding)
            }
            SourceConfig::File {
                include,
                exclude,
                read_from,
                decoding,
                poll_ms,
            } => {
                if include.is_empty() {
                    return Err(at("include: name at least one file pattern".into()));
                }
                for p in include.iter().chain(&exclude) {
                    glob::Pattern::new(p).map_err(|e| at(format!("pattern `{p}`: {e}")))?;
                }
                lines_only(&decoding).map_err(&at)?;
                let (checkpoints, storage) = host.checkpoints(&d.name, &name);
                b.source(
                    &name,
                    FileSource {
                        include,
                        exclude,
                        decoding,
                        read_from,
                        checkpoints,
                        storage,
                        poll: Duration::from_millis(poll_ms.unwrap_or(250).clamp(10, 60_000)),
                        progress: Default::default(),
                    },
                )
            }
            SourceConfig::Stdin { decoding } => {
                if !host.stdio() {
                    return Err(at("stdin is only available to `weir pipeline run`".into()));
                }
                lines_only(&decoding).map_err(&at)?;
                b.source(&name, StdinSource { decoding })
            }
        };
    }
    for (name, t) in transforms {
        let at = |m: String| fail(format!("transform `{name}`: {m}"));
        let w = workers.get(&name).copied().unwrap_or(1);
        b = match t {
            TransformConfig::Remap {
                inputs,
                source,
                file,
                buffer,
            } => {
                let (key, program) = match (source, file) {
                    (Some(s), None) => ("source", s),
                    (None, Some(f)) => {
                        let path = d.base.join(&f);
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| at(format!("file: reading {}: {e}", path.display())))?;
                        ("file", text)
                    }
                    _ => return Err(at("set one of `source` (the program) or `file`".into())),
                };
                let c = v::compile(&program).map_err(|e| at(format!("{key}: {e}")))?;
                b.transform_parallel(
                    &name,
                    &strs(&inputs),
                    move || v::Remap::new(c.clone()),
                    buffer,
                    w,
                )
            }
            TransformConfig::Filter {
                inputs,
                condition,
                buffer,
            } => {
                let c =
                    v::compile_condition(&condition).map_err(|e| at(format!("condition: {e}")))?;
                b.transform_parallel(
                    &name,
                    &strs(&inputs),
                    move || v::Filter::new(c.clone()),
                    buffer,
                    w,
                )
            }
            TransformConfig::Sample {
                inputs,
                rate,
                key_fields,
                buffer,
            } => {
                if rate == 0 {
                    return Err(at("rate: keep one event in `rate`, at least 1".into()));
                }
                let keys = fields(&key_fields).map_err(|e| at(format!("key_fields: {e}")))?;
                b.transform_parallel(
                    &name,
                    &strs(&inputs),
                    move || ops::Sample::new(rate, keys.clone()),
                    buffer,
                    w,
                )
            }
            TransformConfig::Dedupe {
                inputs,
                fields: f,
                cache_size,
                buffer,
            } => {
                if f.is_empty() {
                    return Err(at("fields: name at least one field".into()));
                }
                let keys = fields(&f).map_err(|e| at(format!("fields: {e}")))?;
                let size = cache_size.unwrap_or(10_000);
                if size == 0 || size > 10_000_000 {
                    return Err(at("cache_size: 1 to 10,000,000".into()));
                }
                b.transform_parallel(
                    &name,
                    &strs(&inputs),
                    move || ops::Dedupe::new(keys.clone(), size),
                    buffer,
                    w,
                )
            }
            TransformConfig::Throttle {
                inputs,
                threshold,
                window_secs,
                key_fields,
                buffer,
            } => {
                if threshold == 0 {
                    return Err(at("threshold: at least 1".into()));
                }
                if !(window_secs > 0.0 && window_secs <= 86_400.0) {
                    return Err(at("window_secs: more than 0, at most 86400".into()));
                }
                let keys = fields(&key_fields).map_err(|e| at(format!("key_fields: {e}")))?;
                let window = Duration::from_secs_f64(window_secs);
                b.transform_parallel(
                    &name,
                    &strs(&inputs),
                    move || ops::Throttle::new(threshold, window, keys.clone()),
                    buffer,
                    w,
                )
            }
            TransformConfig::Split {
                inputs,
                field,
                buffer,
            } => {
                let path = ops::field(&field).map_err(|e| at(format!("field: {e}")))?;
                b.transform_parallel(
                    &name,
                    &strs(&inputs),
                    move || ops::Split {
                        field: path.clone(),
                    },
                    buffer,
                    w,
                )
            }
            TransformConfig::Route {
                inputs,
                route,
                buffer,
            } => {
                if route.is_empty() {
                    return Err(at("route: name at least one route".into()));
                }
                let mut routes: Vec<(String, Compiled)> = Vec::new();
                for (r, cond) in route {
                    if r == v::UNMATCHED || r.contains('.') {
                        return Err(at(format!("route.{r}: reserved name")));
                    }
                    let c =
                        v::compile_condition(&cond).map_err(|e| at(format!("route.{r}: {e}")))?;
                    routes.push((r, c));
                }
                b.transform_parallel(
                    &name,
                    &strs(&inputs),
                    move || v::Route::new(routes.clone()),
                    buffer,
                    w,
                )
            }
        };
    }
    for (name, s) in sinks {
        let at = |m: String| fail(format!("sink `{name}`: {m}"));
        b = match s {
            SinkConfig::Topic {
                inputs,
                topic,
                encoding,
                batch,
                buffer,
                best_effort,
            } => {
                check_topic(&topic).map_err(|m| at(format!("topic: {m}")))?;
                check_batching(&batch).map_err(|m| at(format!("batch: {m}")))?;
                let encoding = prepare_encoding(encoding, &d.base).map_err(&at)?;
                let options = SinkOptions {
                    buffer,
                    best_effort,
                };
                match broker().map_err(&at)? {
                    Some(broker) => b.sink_with(
                        &name,
                        &strs(&inputs),
                        TopicSink {
                            broker,
                            topic,
                            encoding,
                            batching: batch,
                            raw: false,
                        },
                        options,
                    ),
                    None => b.sink_with(&name, &strs(&inputs), Unconnected, options),
                }
            }
            SinkConfig::File {
                inputs,
                path,
                encoding,
                max_bytes,
                max_age_secs,
                batch,
                buffer,
                best_effort,
            } => {
                check_batching(&batch).map_err(|m| at(format!("batch: {m}")))?;
                lines_out(&encoding).map_err(&at)?;
                if max_bytes == Some(0) || max_age_secs == Some(0) {
                    return Err(at("max_bytes and max_age_secs must be at least 1".into()));
                }
                let options = SinkOptions {
                    buffer,
                    best_effort,
                };
                b.sink_with(
                    &name,
                    &strs(&inputs),
                    FileSink {
                        path: d.base.join(path),
                        encoding,
                        max_bytes: max_bytes.unwrap_or(100 << 20),
                        max_age: max_age_secs.map(Duration::from_secs),
                        batching: batch,
                        raw: false,
                    },
                    options,
                )
            }
            SinkConfig::Stdout {
                inputs,
                encoding,
                buffer,
                best_effort,
            } => {
                if !host.stdio() {
                    return Err(at("stdout is only available to `weir pipeline run`".into()));
                }
                lines_out(&encoding).map_err(&at)?;
                let options = SinkOptions {
                    buffer,
                    best_effort,
                };
                b.sink_with(
                    &name,
                    &strs(&inputs),
                    StdoutSink {
                        encoding,
                        raw: false,
                    },
                    options,
                )
            }
        };
    }
    if let Some(dl) = dead_letter {
        let at = |m: String| fail(format!("dead_letter: {m}"));
        b = match dl {
            DeadLetterConfig::Topic { topic, batch } => {
                check_topic(&topic).map_err(|m| at(format!("topic: {m}")))?;
                check_batching(&batch).map_err(|m| at(format!("batch: {m}")))?;
                match broker().map_err(&at)? {
                    Some(broker) => b.dead_letter(TopicSink {
                        broker,
                        topic,
                        encoding: Encoding::Bytes,
                        batching: batch,
                        raw: true,
                    }),
                    None => b.dead_letter(Unconnected),
                }
            }
            DeadLetterConfig::File { path } => b.dead_letter(FileSink {
                path: d.base.join(path),
                encoding: Encoding::Bytes,
                max_bytes: 100 << 20,
                max_age: None,
                batching: Batching::default(),
                raw: true,
            }),
            DeadLetterConfig::Stdout {} => {
                if !host.stdio() {
                    return Err(at("stdout is only available to `weir pipeline run`".into()));
                }
                b.dead_letter(StdoutSink {
                    encoding: Encoding::Bytes,
                    raw: true,
                })
            }
        };
    }
    b.build().map_err(|e| fail(e.0))
}

/// Takes each transform's `workers` out of the `transforms` table (every kind has it).
fn take_workers(value: &toml::Value) -> Result<(toml::Value, BTreeMap<String, usize>), String> {
    let mut value = value.clone();
    let mut out = BTreeMap::new();
    if let Some(table) = value.as_table_mut() {
        for (name, t) in table.iter_mut() {
            if let Some(w) = t.as_table_mut().and_then(|t| t.remove("workers")) {
                let n = w
                    .as_integer()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("transform `{name}`: workers: 1 to 64"))?;
                out.insert(name.clone(), n as usize);
            }
        }
    }
    Ok((value, out))
}

fn fields(names: &[String]) -> Result<Vec<vrl::path::OwnedValuePath>, String> {
    names.iter().map(|n| ops::field(n)).collect()
}

fn prepare_decoding(mut d: Decoding, base: &Path) -> Result<Decoding, String> {
    if let Decoding::Protobuf(p) = &mut d {
        p.prepare(base).map_err(|e| format!("decoding: {e}"))?;
    }
    Ok(d)
}

fn prepare_encoding(mut e: Encoding, base: &Path) -> Result<Encoding, String> {
    if let Encoding::Protobuf(p) = &mut e {
        p.prepare(base).map_err(|e| format!("encoding: {e}"))?;
    }
    Ok(e)
}

/// Sources of lines (files, stdin, HTTP bodies) cannot carry binary Protobuf messages.
fn lines_only(d: &Decoding) -> Result<(), String> {
    if matches!(d, Decoding::Protobuf(_)) {
        return Err("decoding: protobuf needs whole records (a topic source), not lines".into());
    }
    Ok(())
}

/// Sinks of lines (files, stdout) cannot carry binary Protobuf messages.
fn lines_out(e: &Encoding) -> Result<(), String> {
    if matches!(e, Encoding::Protobuf(_)) {
        return Err("encoding: protobuf needs whole records (a topic sink), not lines".into());
    }
    Ok(())
}

/// A source of single records has no header row to read CSV columns from.
fn no_header(d: &Decoding) -> Result<(), String> {
    if d.needs_header() {
        return Err(
            "decoding.columns: this source reads no CSV header row; declare the columns".into(),
        );
    }
    Ok(())
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn section<T: DeserializeOwned>(
    value: &toml::Value,
    what: &str,
) -> Result<BTreeMap<String, T>, String> {
    let table = value
        .as_table()
        .ok_or_else(|| format!("`{what}s` must be a table of {what}s"))?;
    let mut out = BTreeMap::new();
    for (name, v) in table {
        let t = v
            .clone()
            .try_into::<T>()
            .map_err(|e| format!("{what} `{name}`: {}", de_message(&e)))?;
        out.insert(name.clone(), t);
    }
    Ok(out)
}

fn de_message(e: &toml::de::Error) -> String {
    e.message().trim().to_string()
}

fn check_topic(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > 249 {
        return Err(format!("`{t}` must be 1 to 249 characters"));
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!("`{t}`: use letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

fn check_batching(b: &Batching) -> Result<(), String> {
    if b.max_events == 0 || b.max_bytes == 0 {
        return Err("max_events and max_bytes must be at least 1".into());
    }
    if b.linger_ms > 60_000 {
        return Err("linger_ms is at most 60000".into());
    }
    Ok(())
}

/// A component of a pipeline only checked: running it is an error.
#[derive(Debug, Clone, Copy)]
struct Unconnected;

impl Source for Unconnected {
    fn run(&self, _: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(async {
            Err(ComponentError(
                "this pipeline was only checked, not connected".into(),
            ))
        })
    }
}

impl Sink for Unconnected {
    fn run(&self, _: SinkContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(async {
            Err(ComponentError(
                "this pipeline was only checked, not connected".into(),
            ))
        })
    }
}

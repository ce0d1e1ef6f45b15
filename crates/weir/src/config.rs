//! `weir serve` configuration: one typed struct, loaded from a TOML file (optional), then
//! overridden by environment variables, then validated as a whole. Unknown keys, in the file or
//! in the environment, refuse to start the server.
//!
//! Environment overrides: `WEIR_<KEY>` for top-level keys and `WEIR_<SECTION>__<KEY>` for keys
//! in a section, e.g. `WEIR_DATA_DIR=/var/lib/weir`, `WEIR_NATIVE__LISTEN=0.0.0.0:9094`,
//! `WEIR_TOPICS__PARTITIONS=6`. Values are read as TOML (numbers, booleans), else as strings.
//! `WEIR_ADDR` belongs to the command-line client and is not a server setting. A `WEIR_`
//! variable without `__` that is no top-level key (`WEIR_PORT` from Kubernetes, say) cannot be
//! a setting: the server warns and ignores it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use weir_broker::topic::{DurabilitySetting, TopicConfig};

/// Variables with the WEIR_ prefix that are not server settings: the client's address, TLS and
/// credentials, and the Python interpreter `scripts/test` hands the integration tests.
const CLIENT_VARS: &[&str] = &[
    "WEIR_ADDR",
    "WEIR_TLS",
    "WEIR_TLS_CA",
    "WEIR_TLS_CERT",
    "WEIR_TLS_KEY",
    "WEIR_USER",
    "WEIR_PASSWORD",
    "WEIR_SASL_MECHANISM",
    "WEIR_TOKEN",
    "WEIR_HTTP",
    "WEIR_CONFIG",
    "WEIR_TEST_PYTHON",
    "WEIR_TEST_NODE",
];

/// The top-level keys that are settings (not sections): `WEIR_<KEY>` sets them. Any other
/// `WEIR_` variable without a `__` cannot be a setting (Kubernetes gives every pod
/// `WEIR_PORT`, `WEIR_SERVICE_HOST`, `WEIR_PORT_9092_TCP_ADDR`… when a Service is named
/// `weir`, and scripts set `WEIR_HOME` or `WEIR_BIN`): it is reported and ignored, where a
/// misspelt `WEIR_<SECTION>__<KEY>` refuses to start.
const TOP_LEVEL_KEYS: &[&str] = &["data_dir", "shutdown_grace_ms", "pipelines_dir"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory. Default `./weir-data`.
    pub data_dir: PathBuf,
    /// At SIGTERM or Ctrl-C, how long the server waits for every door's connections to
    /// answer the requests they have read (no new ones are taken) before it closes the
    /// broker and exits. Default 10,000 ms.
    pub shutdown_grace_ms: u64,
    pub native: NativeConfig,
    pub kafka: KafkaConfig,
    pub http: HttpSettings,
    /// Defaults for new topics.
    pub topics: TopicDefaults,
    pub groups: GroupConfig,
    pub log: LogSettings,
    /// Memory budget and connection limits shared by every front door.
    pub limits: LimitsConfig,
    /// Per-client quotas.
    pub quotas: QuotasConfig,
    /// OpenTelemetry traces.
    pub tracing: TracingConfig,
    /// The certificate of the doors' TLS listeners (`tls_listen` in `[native]`, `[kafka]`,
    /// `[http]`).
    pub tls: TlsConfig,
    /// Authentication of clients (`[auth]`).
    pub auth: AuthSettings,
    /// Stream pipelines run by the server, `[pipelines.NAME]` tables in the shape of
    /// `docs/pipelines.md`; checked as a whole at start.
    pub pipelines: std::collections::BTreeMap<String, toml::Table>,
    /// Value schemas of topics, `[schemas.TOPIC]`: a Protobuf message type (`message`, and
    /// `descriptor_set` or `proto`, as a pipeline's `protobuf` decoding), which the HTTP
    /// door's fetch and the console decode values with. Loaded and checked at start.
    pub schemas: std::collections::BTreeMap<String, weir_pipeline::codec::Protobuf>,
    /// A directory of pipeline files (`NAME.toml`, one pipeline each) run by the server, as
    /// well. Default none.
    pub pipelines_dir: Option<PathBuf>,
    /// Where relative paths in `[pipelines]` start: the configuration file's directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// `WEIR_*` environment variables that cannot be settings and were ignored, for the
    /// server to warn about once its log is set up.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
    /// Keys of earlier releases that still work, with what replaces them, for the server to
    /// warn about.
    #[serde(skip)]
    pub deprecated: Vec<String>,
}

/// `[tls]`: what the TLS listeners present and require. Paths as given (relative ones from the
/// server's working directory). `weir serve` reads the files again on SIGHUP, and when one
/// changes (checked every 10 s): new connections get the new certificate, open ones keep
/// theirs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own certificate first. Required with any
    /// `tls_listen`.
    pub cert: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1). Required with `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA certificates: when set, a client of a TLS listener must present a certificate
    /// one of them signed (mutual TLS). Default none.
    pub client_ca: Option<PathBuf>,
    /// A TLS handshake not done within this long is dropped. Default 10,000 ms.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// `[auth]`: whether clients must say who they are, and how. Off by default: the server is
/// then open to whoever reaches its listeners (loopback only by default), and says so at
/// start. Users are kept in `users_file`, which `weir user add|remove|list` edits; the server
/// reads it again when it changes (looked at every 2 s) and on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Require every client to authenticate. Default false.
    pub enabled: bool,
    /// The users file. Default `<data_dir>/auth/users.json`.
    pub users_file: Option<PathBuf>,
    /// SASL mechanisms offered, of `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`. Default all
    /// three. PLAIN sends the password itself: offer it over TLS only.
    pub mechanisms: Vec<String>,
    /// Failed authentications a client address may make at once, and then per minute,
    /// before its attempts are refused unchecked. Default 10.
    pub failures_per_minute: u32,
    /// A connection that has not authenticated this long after it opened is closed.
    /// Default 10,000 ms.
    pub timeout_ms: u64,
    /// HTTP door: a file holding the secret HS256 JWTs are signed with (32 bytes at least).
    /// Default none.
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// HTTP door: a PEM public key (RSA for RS256, EC P-256 for ES256) JWTs are signed by.
    /// Default none.
    pub jwt_public_key_file: Option<PathBuf>,
    /// HTTP door: a JWKS file of public keys, chosen by the token's `kid`. Default none.
    pub jwt_jwks_file: Option<PathBuf>,
    /// The `iss` a JWT must carry. Default: not checked.
    pub jwt_issuer: Option<String>,
    /// The `aud` a JWT must carry. Default: not checked.
    pub jwt_audience: Option<String>,
    /// Authorize every request against the access control lists (`weir acl add|remove|list`):
    /// what no rule allows is refused. Default false: every authenticated client may do
    /// everything. Needs `enabled`.
    pub acls: bool,
    /// The access control lists. Default `<data_dir>/auth/acls.json`; read again when it
    /// changes (looked at every 2 s) and on SIGHUP.
    pub acls_file: Option<PathBuf>,
    /// Users allowed everything, whatever the rules say. Default none.
    pub super_users: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            users_file: None,
            mechanisms: weir_auth::Mechanism::ALL
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            failures_per_minute: 10,
            timeout_ms: 10_000,
            jwt_hs256_secret_file: None,
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            acls: false,
            acls_file: None,
            super_users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/HTTP endpoint traces are exported to, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is appended). Default: none (no tracing).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the spans. Default `weir`.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "weir".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Bytes of produce data held at once across connections; beyond it sockets are not read
    /// (TCP pushes back on producers). Default 256 MiB; at least 1 MiB.
    pub produce_memory_bytes: u64,
    /// Most connections from one IP address, across front doors (0: no cap). Default 0.
    pub max_connections_per_ip: usize,
    /// Most new connections per second from one IP address (0: no limit). Default 0.
    pub connection_rate_per_ip: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let b = weir_broker::BrokerConfig::default();
        Self {
            produce_memory_bytes: b.produce_memory_bytes,
            max_connections_per_ip: b.max_connections_per_ip,
            connection_rate_per_ip: b.connection_rate_per_ip,
        }
    }
}

/// Quotas by client id (the native Hello's client id, the Kafka request header's client.id).
/// 0 is unlimited. A throttled client gets a throttle time in its responses and is not read
/// for that long.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Default for every client. Default 0.
    pub produce_bytes_per_sec: u64,
    pub fetch_bytes_per_sec: u64,
    pub requests_per_sec: u64,
    /// Overrides: `[quotas.clients.<client id>]` with any of the three keys; keys left out
    /// take the defaults above.
    pub clients: std::collections::BTreeMap<String, ClientQuota>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuota {
    pub produce_bytes_per_sec: Option<u64>,
    pub fetch_bytes_per_sec: Option<u64>,
    pub requests_per_sec: Option<u64>,
}

impl QuotasConfig {
    fn to_broker(&self) -> weir_broker::flow::QuotaConfig {
        let some = |v: u64| (v > 0).then_some(v);
        let default = weir_broker::flow::Quota {
            produce_bytes_per_sec: some(self.produce_bytes_per_sec),
            fetch_bytes_per_sec: some(self.fetch_bytes_per_sec),
            requests_per_sec: some(self.requests_per_sec),
        };
        let clients = self
            .clients
            .iter()
            .map(|(id, q)| {
                let pick = |o: Option<u64>, d: Option<u64>| match o {
                    Some(0) => None,
                    Some(v) => Some(v),
                    None => d,
                };
                (
                    id.clone(),
                    weir_broker::flow::Quota {
                        produce_bytes_per_sec: pick(
                            q.produce_bytes_per_sec,
                            default.produce_bytes_per_sec,
                        ),
                        fetch_bytes_per_sec: pick(
                            q.fetch_bytes_per_sec,
                            default.fetch_bytes_per_sec,
                        ),
                        requests_per_sec: pick(q.requests_per_sec, default.requests_per_sec),
                    },
                )
            })
            .collect();
        weir_broker::flow::QuotaConfig { default, clients }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("weir-data"),
            shutdown_grace_ms: 10_000,
            native: NativeConfig::default(),
            kafka: KafkaConfig::default(),
            http: HttpSettings::default(),
            topics: TopicDefaults::default(),
            groups: GroupConfig::default(),
            log: LogSettings::default(),
            limits: LimitsConfig::default(),
            quotas: QuotasConfig::default(),
            tracing: TracingConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthSettings::default(),
            pipelines: std::collections::BTreeMap::new(),
            schemas: std::collections::BTreeMap::new(),
            pipelines_dir: None,
            base_dir: PathBuf::from("."),
            ignored_env: Vec::new(),
            deprecated: Vec::new(),
        }
    }
}

/// `[native]`: `listen` (default `127.0.0.1:9094`; Kafka is 9092, HTTP 8080), and every key of
/// [`weir_server::ServerConfig`], which documents each and its default.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    pub listen: String,
    /// A TLS listener beside the plain one (`[tls]` gives its certificate). Default none.
    pub tls_listen: Option<String>,
    pub server: weir_server::ServerConfig,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9094".into(),
            tls_listen: None,
            server: weir_server::ServerConfig::default(),
        }
    }
}

impl<'de> Deserialize<'de> for NativeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let listen = take::<String, D>(&mut table, "listen")?;
        let tls_listen = take::<String, D>(&mut table, "tls_listen")?;
        Ok(Self {
            listen: listen.unwrap_or_else(|| Self::default().listen),
            tls_listen,
            server: section(table)?,
        })
    }
}

/// Takes `key` out of a section's table, typed.
fn take<'de, T: serde::de::DeserializeOwned, D: serde::Deserializer<'de>>(
    table: &mut toml::Table,
    key: &str,
) -> std::result::Result<Option<T>, D::Error> {
    use serde::de::Error;
    table
        .remove(key)
        .map(|v| {
            v.try_into()
                .map_err(|e| D::Error::custom(format!("{key}: {e}")))
        })
        .transpose()
}

/// What is left of a section's table, as a library's configuration (which refuses keys it
/// does not know).
fn section<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    table: toml::Table,
) -> std::result::Result<T, E> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| E::custom(e.message()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Serve the Kafka wire protocol. Default true.
    pub enabled: bool,
    /// Kafka listener. Default `127.0.0.1:9092`.
    pub listen: String,
    /// A TLS listener beside the plain one (`security.protocol=SSL`; `[tls]` gives its
    /// certificate). Metadata answers each client with the listener it came in on. Default
    /// none.
    pub tls_listen: Option<String>,
    /// Host name clients are told to connect to; default: the listener's address.
    pub advertised_host: Option<String>,
    /// Connections open at once, plain and TLS listeners together; more are closed as they
    /// come (counted in `weir_kafka_connections_refused_total`). Default 10,000.
    pub max_connections: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9092".into(),
            tls_listen: None,
            advertised_host: None,
            max_connections: 10_000,
        }
    }
}

/// `[http]`: `enabled` (default true), `listen` (default `127.0.0.1:8080`), every key of
/// [`weir_http::HttpConfig`] and, prefixed `ws_`, every key of [`weir_http::WsConfig`]
/// (`ws_queue_messages`, `ws_ping_interval_ms`…); the libraries document each and its default.
/// The binary's own defaults differ from the library's in nothing.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub enabled: bool,
    pub listen: String,
    /// An HTTPS (and `wss://`) listener beside the plain one. Default none.
    pub tls_listen: Option<String>,
    pub http: weir_http::HttpConfig,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            tls_listen: None,
            http: weir_http::HttpConfig::default(),
        }
    }
}

impl<'de> Deserialize<'de> for HttpSettings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let defaults = Self::default();
        let enabled = take::<bool, D>(&mut table, "enabled")?.unwrap_or(defaults.enabled);
        let listen = take::<String, D>(&mut table, "listen")?.unwrap_or(defaults.listen);
        let tls_listen = take::<String, D>(&mut table, "tls_listen")?;
        let ws_keys: Vec<String> = table
            .keys()
            .filter(|k| k.starts_with("ws_"))
            .cloned()
            .collect();
        let mut ws = toml::Table::new();
        for k in ws_keys {
            let v = table.remove(&k).expect("listed");
            ws.insert(k["ws_".len()..].to_string(), v);
        }
        let mut http: weir_http::HttpConfig = section(table)?;
        http.ws = section(ws).map_err(|e: D::Error| D::Error::custom(format!("ws_*: {e}")))?;
        Ok(Self {
            enabled,
            listen,
            tls_listen,
            http,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    /// Default 1.
    pub partitions: u32,
    /// Default 7 days; 0 keeps data forever.
    pub retention_ms: u64,
    /// Default 0 (no size limit).
    pub retention_bytes: u64,
    /// `always` (default), `never`, or `interval`.
    pub durability: String,
    /// For `interval`. Default 100 ms.
    pub durability_interval_ms: u64,
    /// Default 8 MiB.
    pub max_batch_bytes: u32,
    /// Default 1 GiB.
    pub segment_bytes: u64,
    /// Create topics on first produce. Default false.
    pub auto_create: bool,
    /// In-memory tail per partition. Default 8 MiB.
    pub hot_tail_bytes: usize,
    /// In-memory tails of all partitions together: with more partitions than this divided
    /// by `hot_tail_bytes`, each keeps its equal share instead. Default 1 GiB.
    pub hot_tail_total_bytes: usize,
    /// Disk space a partition reserves ahead of its writes, at most this much and at most as
    /// much as its active segment holds; a rolled segment gives back what it did not use.
    /// Saves the file system allocating blocks on every write. Default 8 MiB; 0 turns it off.
    pub preallocate_bytes: u64,
    /// How often retention runs. Default 60,000 ms.
    pub retention_check_ms: u64,
    /// Most partitions across all topics (each holds one open file per segment). Default
    /// 10,000.
    pub max_partitions: u32,
    /// How often compacted topics are checked for a due compaction pass. Default 15,000 ms.
    pub compaction_check_ms: u64,
    /// Disk I/O of compaction passes, read and write together (0: no limit). Default 16 MiB/s.
    pub compaction_bytes_per_second: u64,
    /// Memory for a compaction pass's key map, 32 bytes per key. Default 64 MiB.
    pub compaction_key_map_bytes: usize,
    /// Most keys a compacted topic's partition indexes for `GET /topics/T/keys/K`. Default
    /// 1,048,576.
    pub key_index_max_keys: usize,
}

/// The defaults are the broker's (`TopicConfig::default()`, `BrokerConfig::default()`), in
/// this section's shape: written once, there.
impl Default for TopicDefaults {
    fn default() -> Self {
        let t = weir_broker::TopicConfig::default();
        let b = weir_broker::BrokerConfig::default();
        let (durability, durability_interval_ms) = match t.durability {
            DurabilitySetting::Always => ("always", 100),
            DurabilitySetting::Never => ("never", 100),
            DurabilitySetting::Interval { ms } => ("interval", ms),
        };
        Self {
            partitions: t.partitions,
            retention_ms: t.retention_ms.unwrap_or(0),
            retention_bytes: t.retention_bytes.unwrap_or(0),
            durability: durability.into(),
            durability_interval_ms,
            max_batch_bytes: t.max_batch_bytes,
            segment_bytes: t.segment_bytes,
            auto_create: b.auto_create_topics,
            hot_tail_bytes: b.hot_tail_bytes,
            hot_tail_total_bytes: b.hot_tail_total_bytes,
            preallocate_bytes: b.preallocate_bytes,
            retention_check_ms: millis(b.retention_check),
            max_partitions: b.max_partitions,
            compaction_check_ms: millis(b.compaction_check),
            compaction_bytes_per_second: b.compaction_bytes_per_second,
            compaction_key_map_bytes: b.compaction_key_map_bytes,
            key_index_max_keys: b.key_index_max_keys,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Smallest session timeout a member may ask for. Default 1,000 ms.
    pub min_session_ms: u64,
    /// Largest. Default 300,000 ms.
    pub max_session_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        let b = weir_broker::BrokerConfig::default();
        Self {
            min_session_ms: millis(b.min_session),
            max_session_ms: millis(b.max_session),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `human` (default) or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` (default) or `weir_log=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads `path` (if given), applies `WEIR_*` overrides from `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut root = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config file {} is not valid TOML", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut ignored_env = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("WEIR_") else {
                continue;
            };
            if CLIENT_VARS.contains(&name.as_str()) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.len() == 1 && !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
                ignored_env.push(name);
                continue;
            }
            if path.iter().any(String::is_empty) {
                bail!("environment variable {name} does not name a setting");
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value.clone()));
            let mut table = &mut root;
            for key in &path[..path.len() - 1] {
                let entry = table
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = entry.as_table_mut().with_context(|| {
                    format!("environment variable {name}: {key} is not a section")
                })?;
            }
            table.insert(path[path.len() - 1].clone(), parsed);
        }
        // `[native] shutdown_grace_ms` became the server's own `shutdown_grace_ms` (one grace
        // period for every door): still taken, with a warning, unless the new key is set too.
        let mut deprecated = Vec::new();
        if let Some(old) = root
            .get_mut("native")
            .and_then(toml::Value::as_table_mut)
            .and_then(|t| t.remove("shutdown_grace_ms"))
        {
            deprecated.push("native.shutdown_grace_ms is now shutdown_grace_ms (top level)".into());
            root.entry("shutdown_grace_ms").or_insert(old);
        }
        let mut config: Config = toml::Value::Table(root)
            .try_into()
            .context("invalid configuration")?;
        config.base_dir = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.validate()?;
        let base = config.base_dir.clone();
        for (topic, schema) in &mut config.schemas {
            schema
                .prepare(&base)
                .map_err(|e| anyhow::anyhow!("schemas.{topic}: {e}"))?;
        }
        for d in config.pipeline_declarations()? {
            weir_pipeline::config::check(&d)?;
        }
        ignored_env.sort();
        config.ignored_env = ignored_env;
        config.deprecated = deprecated;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        self.native.listen.parse::<SocketAddr>().with_context(|| {
            format!(
                "native.listen {:?} is not an address like 127.0.0.1:9094",
                self.native.listen
            )
        })?;
        self.kafka.listen.parse::<SocketAddr>().with_context(|| {
            format!(
                "kafka.listen {:?} is not an address like 127.0.0.1:9092",
                self.kafka.listen
            )
        })?;
        self.http.listen.parse::<SocketAddr>().with_context(|| {
            format!(
                "http.listen {:?} is not an address like 127.0.0.1:8080",
                self.http.listen
            )
        })?;
        let tls_listeners = [
            ("native", &self.native.tls_listen),
            ("kafka", &self.kafka.tls_listen),
            ("http", &self.http.tls_listen),
        ];
        for (door, addr) in tls_listeners {
            if let Some(a) = addr {
                a.parse::<SocketAddr>().with_context(|| {
                    format!("{door}.tls_listen {a:?} is not an address like 127.0.0.1:9443")
                })?;
            }
        }
        for (door, enabled, addr) in [
            ("kafka", self.kafka.enabled, &self.kafka.tls_listen),
            ("http", self.http.enabled, &self.http.tls_listen),
        ] {
            if !enabled && addr.is_some() {
                bail!(
                    "{door}.tls_listen is set but {door}.enabled is false: it would serve nothing"
                );
            }
        }
        let any_tls = tls_listeners.iter().any(|(_, a)| a.is_some());
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), Some(_)) if !any_tls => bail!(
                "tls.cert is set but no door has a tls_listen address (native.tls_listen, \
                 kafka.tls_listen, http.tls_listen): the certificate would serve nothing"
            ),
            (Some(_), Some(_)) => {}
            (None, None) if any_tls => bail!(
                "a tls_listen address is set but tls.cert and tls.key are not: a TLS listener \
                 needs a certificate and its key"
            ),
            (None, None) => {}
            _ => bail!("tls.cert and tls.key go together: set both or neither"),
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            bail!("tls.client_ca is set but tls.cert is not");
        }
        if self.tls.handshake_timeout_ms == 0 {
            bail!("tls.handshake_timeout_ms must be positive");
        }
        self.validate_auth()?;
        if self.kafka.max_connections == 0 {
            bail!("kafka.max_connections must be positive");
        }
        self.http
            .http
            .validate()
            .map_err(|e| anyhow::anyhow!("http.{e}"))?;
        self.native
            .server
            .validate()
            .map_err(|e| anyhow::anyhow!("native.{e}"))?;
        if !matches!(self.log.format.as_str(), "human" | "json") {
            bail!(
                "log.format must be \"human\" or \"json\", not {:?}",
                self.log.format
            );
        }
        if self.groups.min_session_ms == 0
            || self.groups.min_session_ms > self.groups.max_session_ms
        {
            bail!("groups.min_session_ms must be positive and at most groups.max_session_ms");
        }
        if self.limits.produce_memory_bytes < 1 << 20 {
            bail!("limits.produce_memory_bytes must be at least 1 MiB (1048576)");
        }
        self.topic_config()?
            .validate()
            .context("invalid [topics] defaults")?;
        Ok(())
    }

    /// The broker's default topic configuration.
    pub fn topic_config(&self) -> Result<TopicConfig> {
        let t = &self.topics;
        let durability = match t.durability.as_str() {
            "always" => DurabilitySetting::Always,
            "never" => DurabilitySetting::Never,
            "interval" => DurabilitySetting::Interval {
                ms: t.durability_interval_ms,
            },
            other => bail!("topics.durability must be always, never or interval, not {other:?}"),
        };
        Ok(TopicConfig {
            partitions: t.partitions,
            retention_ms: (t.retention_ms > 0).then_some(t.retention_ms),
            retention_bytes: (t.retention_bytes > 0).then_some(t.retention_bytes),
            durability,
            max_batch_bytes: t.max_batch_bytes,
            segment_bytes: t.segment_bytes,
            timestamp_type: Default::default(),
            ..TopicConfig::default()
        })
    }

    /// The pipelines to run: `[pipelines.NAME]` tables, then the files of `pipelines_dir`.
    /// A name declared twice is refused.
    pub fn pipeline_declarations(&self) -> Result<Vec<weir_pipeline::config::Declaration>> {
        let mut out: Vec<weir_pipeline::config::Declaration> = self
            .pipelines
            .iter()
            .map(|(name, table)| {
                weir_pipeline::config::Declaration::new(name, table.clone(), &self.base_dir)
            })
            .collect();
        if let Some(dir) = &self.pipelines_dir {
            for d in weir_pipeline::config::from_dir(dir)? {
                if out.iter().any(|o| o.name == d.name) {
                    bail!(
                        "pipeline `{}` is declared both in [pipelines] and in {}",
                        d.name,
                        dir.display()
                    );
                }
                out.push(d);
            }
        }
        Ok(out)
    }

    pub fn broker_config(&self) -> Result<weir_broker::BrokerConfig> {
        Ok(weir_broker::BrokerConfig {
            data_dir: self.data_dir.clone(),
            default_topic: self.topic_config()?,
            auto_create_topics: self.topics.auto_create,
            hot_tail_bytes: self.topics.hot_tail_bytes,
            hot_tail_total_bytes: self.topics.hot_tail_total_bytes,
            preallocate_bytes: self.topics.preallocate_bytes,
            min_session: Duration::from_millis(self.groups.min_session_ms),
            max_session: Duration::from_millis(self.groups.max_session_ms),
            retention_check: Duration::from_millis(self.topics.retention_check_ms.max(100)),
            max_partitions: self.topics.max_partitions,
            compaction_check: Duration::from_millis(self.topics.compaction_check_ms.max(10)),
            compaction_bytes_per_second: self.topics.compaction_bytes_per_second,
            compaction_key_map_bytes: self.topics.compaction_key_map_bytes.max(1 << 10),
            key_index_max_keys: self.topics.key_index_max_keys.max(1),
            quotas: self.quotas.to_broker(),
            produce_memory_bytes: self.limits.produce_memory_bytes,
            max_connections_per_ip: self.limits.max_connections_per_ip,
            connection_rate_per_ip: self.limits.connection_rate_per_ip,
            ..weir_broker::BrokerConfig::default()
        })
    }

    fn validate_auth(&self) -> Result<()> {
        let a = &self.auth;
        if a.mechanisms.is_empty() {
            bail!("auth.mechanisms is empty: no client could authenticate");
        }
        for m in &a.mechanisms {
            if weir_auth::Mechanism::parse(m).is_none() {
                bail!("auth.mechanisms: {m:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512");
            }
        }
        if a.failures_per_minute == 0 {
            bail!("auth.failures_per_minute must be positive");
        }
        if a.timeout_ms == 0 {
            bail!("auth.timeout_ms must be positive");
        }
        if (a.jwt_issuer.is_some() || a.jwt_audience.is_some()) && self.jwt_files().is_empty() {
            bail!(
                "auth.jwt_issuer or auth.jwt_audience is set but no JWT key is (auth.jwt_*_file)"
            );
        }
        if (a.acls || !a.super_users.is_empty()) && !a.enabled {
            bail!(
                "auth.acls and auth.super_users need auth.enabled = true: without \
                 authentication every client is anonymous"
            );
        }
        for name in &a.super_users {
            weir_auth::users::check_name(name)
                .map_err(|e| anyhow::anyhow!("auth.super_users: {name:?}: {e}"))?;
        }
        Ok(())
    }

    fn jwt_files(&self) -> weir_auth::jwt::JwtFiles {
        weir_auth::jwt::JwtFiles {
            hs256_secret: self.auth.jwt_hs256_secret_file.clone(),
            public_key: self.auth.jwt_public_key_file.clone(),
            jwks: self.auth.jwt_jwks_file.clone(),
            issuer: self.auth.jwt_issuer.clone(),
            audience: self.auth.jwt_audience.clone(),
        }
    }

    /// The JWT keys, when any is configured (the files read now).
    fn jwt(&self) -> Result<Option<std::sync::Arc<weir_auth::jwt::Jwt>>> {
        let files = self.jwt_files();
        if files.is_empty() {
            return Ok(None);
        }
        let jwt = weir_auth::jwt::Jwt::load(&files).map_err(anyhow::Error::msg)?;
        Ok(Some(std::sync::Arc::new(jwt)))
    }

    /// The users file: `auth.users_file`, else `<data_dir>/auth/users.json`.
    pub fn users_file(&self) -> PathBuf {
        self.auth
            .users_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("auth").join("users.json"))
    }

    /// The access control lists' file: `auth.acls_file`, else `<data_dir>/auth/acls.json`.
    pub fn acls_file(&self) -> PathBuf {
        self.auth
            .acls_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("auth").join("acls.json"))
    }

    /// The server's authentication, when `[auth]` is enabled (the users file read now).
    pub fn auth(&self) -> Result<Option<std::sync::Arc<weir_auth::Auth>>> {
        if !self.auth.enabled {
            return Ok(None);
        }
        let users = weir_auth::UserStore::open(self.users_file())?;
        let config = weir_auth::AuthConfig {
            mechanisms: self
                .auth
                .mechanisms
                .iter()
                .filter_map(|m| weir_auth::Mechanism::parse(m))
                .collect(),
            failures_burst: self.auth.failures_per_minute,
            failures_per_minute: self.auth.failures_per_minute,
            timeout: Duration::from_millis(self.auth.timeout_ms),
            jwt: self.jwt()?,
            acls: match self.auth.acls {
                true => Some(std::sync::Arc::new(weir_auth::acl::Authorizer::open(
                    self.acls_file(),
                    self.auth.super_users.clone(),
                )?)),
                false => None,
            },
        };
        Ok(Some(std::sync::Arc::new(weir_auth::Auth::new(
            users, config,
        ))))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The doors' TLS, when a certificate is configured (read and checked now).
    pub fn tls(&self) -> Result<Option<std::sync::Arc<weir_net::Tls>>> {
        let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) else {
            return Ok(None);
        };
        let files = weir_net::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls.client_ca.clone(),
        };
        let timeout = std::time::Duration::from_millis(self.tls.handshake_timeout_ms);
        let tls = weir_net::Tls::load(files, timeout).map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        Ok(Some(std::sync::Arc::new(tls)))
    }

    pub fn server_config(&self) -> weir_server::ServerConfig {
        self.native.server.clone()
    }

    pub fn http_config(&self) -> weir_http::HttpConfig {
        let mut http = self.http.http.clone();
        http.shutdown_grace = http.shutdown_grace.min(self.shutdown_grace());
        // The binary's `#[global_allocator]` (main.rs).
        http.allocator = "mimalloc";
        http.schemas = std::sync::Arc::new(
            self.schemas
                .iter()
                .filter_map(|(t, s)| s.message_descriptor().map(|d| (t.clone(), d.clone())))
                .collect(),
        );
        http
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_file_and_environment_layer_in_that_order() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.native.listen, "127.0.0.1:9094");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/weir\"\n[topics]\npartitions = 3\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("WEIR_TOPICS__PARTITIONS", "6"),
                ("WEIR_NATIVE__LISTEN", "127.0.0.1:0"),
                ("WEIR_HTTP__LISTEN", "127.0.0.1:0"),
                ("WEIR_HTTP__MAX_BODY_BYTES", "4096"),
                ("WEIR_ADDR", "x"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/weir"));
        assert_eq!(c.topics.partitions, 6);
        assert_eq!(c.native.listen, "127.0.0.1:0");
        assert_eq!(c.http.listen, "127.0.0.1:0");
        assert_eq!(c.http_config().max_body_bytes, 4096);
        assert!(c.http.enabled);
        assert!(!c.http_config().profiling, "profiling is off by default");
        let c = Config::load(None, env(&[("WEIR_HTTP__PROFILING", "true")])).unwrap();
        assert!(c.http_config().profiling);
    }

    #[test]
    fn variables_that_cannot_be_settings_are_ignored_and_reported_but_typos_of_settings_refuse() {
        // What Kubernetes injects for a Service named `weir`, and what scripts commonly set.
        let injected = [
            ("WEIR_PORT", "tcp://10.0.0.7:9092"),
            ("WEIR_PORT_9092_TCP", "tcp://10.0.0.7:9092"),
            ("WEIR_PORT_9092_TCP_ADDR", "10.0.0.7"),
            ("WEIR_PORT_9092_TCP_PORT", "9092"),
            ("WEIR_PORT_9092_TCP_PROTO", "tcp"),
            ("WEIR_SERVICE_HOST", "10.0.0.7"),
            ("WEIR_SERVICE_PORT", "9092"),
            ("WEIR_SERVICE_PORT_KAFKA", "9092"),
            ("WEIR_BIN", "/usr/local/bin/weir"),
            ("WEIR_HOME", "/opt/weir"),
        ];
        let mut vars = env(&injected);
        vars.extend(env(&[
            ("WEIR_DATA_DIR", "/srv/weir"),
            ("WEIR_SHUTDOWN_GRACE_MS", "2500"),
        ]));
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/weir"));
        assert_eq!(c.shutdown_grace_ms, 2500);
        let mut names: Vec<&str> = injected.iter().map(|(k, _)| *k).collect();
        names.sort();
        assert_eq!(c.ignored_env, names);
        // The section form is a setting's: a misspelt section or key still refuses.
        for typo in ["WEIR_NATVE__LISTEN", "WEIR_NATIVE__LISTN"] {
            let err = format!("{:#}", Config::load(None, env(&[(typo, "x")])).unwrap_err());
            assert!(err.contains("unknown field"), "{typo}: {err}");
        }
    }

    #[test]
    fn the_readme_example_configuration_loads_with_the_values_it_shows() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block in the README");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, block).unwrap();
        let c = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(c.native.server.busy_poll, Duration::from_micros(200));
        assert_eq!(c.http.http.ws.queue_messages, 1024);
        assert_eq!(c.http.http.idle_timeout, Duration::from_secs(30));
        // And what it shows is the default: each default is written once, in the library.
        let d = Config::load(None, env(&[])).unwrap();
        assert_eq!(format!("{:?}", c.kafka), format!("{:?}", d.kafka));
        assert_eq!(format!("{:?}", c.auth), format!("{:?}", d.auth));
        assert_eq!(
            format!("{:?}", c.native.server),
            format!("{:?}", d.native.server)
        );
        let (broker, defaults) = (
            d.broker_config().unwrap(),
            weir_broker::BrokerConfig::default(),
        );
        assert_eq!(
            format!("{:?}", broker.default_topic),
            format!("{:?}", defaults.default_topic)
        );
        assert_eq!(broker.hot_tail_bytes, defaults.hot_tail_bytes);
        assert_eq!(broker.hot_tail_total_bytes, defaults.hot_tail_total_bytes);
        assert_eq!(broker.max_session, defaults.max_session);
        assert_eq!(broker.produce_memory_bytes, defaults.produce_memory_bytes);
    }

    #[test]
    fn the_earlier_native_grace_key_still_works_and_is_reported() {
        let c = Config::load(None, env(&[("WEIR_NATIVE__SHUTDOWN_GRACE_MS", "2500")])).unwrap();
        assert_eq!(c.shutdown_grace_ms, 2500);
        assert_eq!(c.deprecated.len(), 1, "{:?}", c.deprecated);
        // The new key wins when both are given.
        let c = Config::load(
            None,
            env(&[
                ("WEIR_NATIVE__SHUTDOWN_GRACE_MS", "2500"),
                ("WEIR_SHUTDOWN_GRACE_MS", "4000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.shutdown_grace_ms, 4000);
    }

    #[test]
    fn top_level_keys_lists_every_top_level_setting() {
        // serde names every field it expects when it meets an unknown one.
        let err = toml::Value::Table("zz = 1".parse().unwrap())
            .try_into::<Config>()
            .unwrap_err()
            .to_string();
        let expected: std::collections::BTreeSet<&str> = err
            .split("expected one of ")
            .nth(1)
            .unwrap()
            .split(", ")
            .map(|f| f.trim().trim_matches('`'))
            .collect();
        let sections = [
            "native",
            "kafka",
            "http",
            "topics",
            "groups",
            "log",
            "limits",
            "quotas",
            "tracing",
            "tls",
            "auth",
            "pipelines",
            "schemas",
        ];
        let listed: std::collections::BTreeSet<&str> =
            TOP_LEVEL_KEYS.iter().copied().chain(sections).collect();
        assert_eq!(expected, listed, "{err}");
    }

    #[test]
    fn topic_schemas_are_loaded_at_start_and_a_bad_one_refuses_to_boot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.proto"),
            "syntax = \"proto3\";\npackage p;\nmessage R { string s = 1; }\n",
        )
        .unwrap();
        let file = dir.path().join("weir.toml");
        let load = |toml: &str| {
            std::fs::write(&file, toml).unwrap();
            Config::load(Some(&file), env(&[]))
        };
        let c = load("[schemas.t]\nmessage = \"p.R\"\nproto = \"r.proto\"\n").unwrap();
        let schemas = c.http_config().schemas;
        assert_eq!(schemas["t"].full_name(), "p.R", "relative to the file");
        for (toml, says) in [
            (
                "[schemas.t]\nmessage = \"p.Nope\"\nproto = \"r.proto\"\n",
                "no message `p.Nope`",
            ),
            (
                "[schemas.t]\nmessage = \"p.R\"\nproto = \"missing.proto\"\n",
                "missing.proto",
            ),
            (
                "[schemas.t]\nmessage = \"p.R\"\n",
                "set one of `descriptor_set` or `proto`",
            ),
            (
                "[schemas.t]\nmessage = \"p.R\"\nproto = \"r.proto\"\nextra = 1\n",
                "extra",
            ),
        ] {
            let err = format!("{:#}", load(toml).unwrap_err());
            assert!(err.contains(says), "{toml}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_refuse_to_boot_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(
            &file,
            "[native]\nlisten = \"127.0.0.1:1\"\nmax_conections = 5\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(Some(&file), env(&[])).unwrap_err());
        assert!(err.contains("max_conections"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("WEIR_NATIVE__COLOUR", "red")])).unwrap_err()
        );
        assert!(err.contains("colour"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("WEIR_NATIVE__LISTEN", "nowhere")])).unwrap_err()
        );
        assert!(err.contains("native.listen"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("WEIR_HTTP__LISTEN", "nowhere")])).unwrap_err()
        );
        assert!(err.contains("http.listen"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("WEIR_HTTP__WS_IDLE_TIMEOUT_MS", "10")])).unwrap_err()
        );
        assert!(err.contains("ws_idle_timeout_ms"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("WEIR_TOPICS__DURABILITY", "sometimes")])).unwrap_err()
        );
        assert!(err.contains("durability"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("WEIR_TOPICS__PARTITIONS", "0")])).unwrap_err()
        );
        assert!(err.contains("partitions"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("WEIR_NATIVE__BUSY_POLL_US", "5000")])).unwrap_err()
        );
        assert!(err.contains("busy_poll_us"), "{err}");
    }
}

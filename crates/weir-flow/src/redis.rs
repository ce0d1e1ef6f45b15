//! A distributed rate limiter on Redis: every instance of the service shares one budget per
//! key. Each check is one Lua script (atomic on the server, timed by the server's `TIME`, so
//! clients' clocks do not matter): GCRA (one string per key) or a sliding window counter (one
//! hash per key). Scripts are loaded once with `SCRIPT LOAD` and run with `EVALSHA`; a
//! `NOSCRIPT` answer (a restarted or flushed server) loads them again and retries.
//!
//! When Redis cannot answer within `timeout`, the [`Fallback`] decides: let the request
//! through, refuse it, or ask a local limiter (each instance then limits on its own).
//!
//! Keys are built as `prefix + key`; a key is one Redis key, so the scripts are safe on a
//! cluster too.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, Script, ServerErrorKind};

use crate::clock::Clock;
use crate::keyed::{KeyedError, KeyedLimiter};
use crate::limiter::{Algorithm, NotUntil, Rate};
use crate::metrics::Metrics;

/// Metric: checks answered by Redis.
pub const METRIC_CHECKS: &str = "weir_flow_redis_checks_total";
/// Metric: checks Redis did not answer in time (or failed); the fallback answered.
pub const METRIC_FAILURES: &str = "weir_flow_redis_failures_total";
/// Metric: scripts reloaded after `NOSCRIPT`.
pub const METRIC_RELOADS: &str = "weir_flow_redis_script_reloads_total";

const GCRA_LUA: &str = r"
-- KEYS[1]: the key. ARGV: emission interval (us), tolerance (us), permits.
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + n * interval
local allow_until = now + tolerance
if new_tat > allow_until then
  return {0, new_tat - allow_until}
end
local ttl = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {1, 0}
";

const SLIDING_LUA: &str = r"
-- KEYS[1]: the key (a hash: w window number, c its count, p the previous window's count).
-- ARGV: limit, window (us), permits.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local idx = math.floor(now / window)
local v = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(v[1]) or idx
local c = tonumber(v[2]) or 0
local p = tonumber(v[3]) or 0
if idx == w + 1 then p = c; c = 0 elseif idx > w + 1 then p = 0; c = 0 end
local into = now - idx * window
local est = p * (1 - into / window) + c
if est + n <= limit then
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', idx), 'c', c + n, 'p', p)
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * window / 1000))
  return {1, 0}
end
local wait
if c + n <= limit then
  wait = math.ceil((1 - (limit - c - n) / p) * window - into)
else
  wait = (window - into) + math.ceil(math.max(0, 1 - (limit - n) / c) * window)
end
if wait < 1 then wait = 1 end
return {0, wait}
";

/// The algorithm run on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisAlgorithm {
    /// GCRA: `rate` on average, bursts of up to `burst` permits.
    Gcra {
        /// The rate.
        rate: Rate,
        /// Largest burst.
        burst: u32,
    },
    /// Sliding window counter: `limit` permits per sliding `window`.
    SlidingWindow {
        /// Permits per window.
        limit: u32,
        /// Window length (at least 1 ms).
        window: Duration,
    },
}

impl RedisAlgorithm {
    fn capacity(&self) -> u32 {
        match *self {
            RedisAlgorithm::Gcra { burst, .. } => burst.max(1),
            RedisAlgorithm::SlidingWindow { limit, .. } => limit,
        }
    }

    fn args(&self, n: u32) -> [u64; 3] {
        match *self {
            RedisAlgorithm::Gcra { rate, burst } => {
                let per_us = rate.per.as_micros() as f64 / rate.permits as f64;
                let interval = per_us.ceil().max(1.0) as u64;
                [interval, interval * u64::from(burst.max(1)), u64::from(n)]
            }
            RedisAlgorithm::SlidingWindow { limit, window } => [
                u64::from(limit),
                (window.as_micros() as u64).max(1000),
                u64::from(n),
            ],
        }
    }
}

/// A local limiter to fall back on, per key.
pub trait LocalLimiter: Send + Sync + fmt::Debug {
    /// Takes `n` permits for `key`.
    fn check(&self, key: &str, n: u32) -> Result<(), NotUntil>;
}

impl<A: Algorithm, C: Clock> LocalLimiter for KeyedLimiter<String, A, C> {
    fn check(&self, key: &str, n: u32) -> Result<(), NotUntil> {
        match self.try_acquire(&key.to_owned(), n) {
            Ok(()) => Ok(()),
            Err(KeyedError::NotUntil(e)) => Err(e),
            Err(KeyedError::TooManyKeys) => Err(NotUntil::NEVER),
        }
    }
}

/// What to answer when Redis does not.
#[derive(Debug, Clone)]
pub enum Fallback {
    /// Let the request through (availability over limits).
    FailOpen,
    /// Refuse the request (limits over availability).
    FailClosed,
    /// Ask a local limiter (usually configured at this instance's share of the rate).
    Local(Arc<dyn LocalLimiter>),
}

/// Configuration of a [`RedisLimiter`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Prefix of every Redis key. Default `weir:rl:`.
    pub prefix: String,
    /// How long a check may wait for Redis before the fallback answers. Default 50 ms.
    pub timeout: Duration,
    /// Default [`Fallback::FailOpen`].
    pub fallback: Fallback,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "weir:rl:".to_owned(),
            timeout: Duration::from_millis(50),
            fallback: Fallback::FailOpen,
        }
    }
}

/// Who answered a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Redis.
    Redis,
    /// Redis failed; the fail-open fallback let it through.
    FailOpen,
    /// Redis failed; the fail-closed fallback refused it.
    FailClosed,
    /// Redis failed; the local limiter answered.
    Local,
}

/// A check's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted?
    pub allowed: bool,
    /// When refused: how long until it could pass (as far as the answerer knows).
    pub wait: Duration,
    /// Who answered.
    pub source: Source,
}

/// Errors from Redis itself (only [`RedisLimiter::check_redis`] returns them; `check`
/// turns them into the fallback's answer).
#[derive(Debug, thiserror::Error)]
pub enum RedisLimitError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// More permits than the algorithm ever admits at once.
    #[error("{requested} permits exceed the capacity of {capacity}")]
    ExceedsCapacity {
        /// Asked for.
        requested: u32,
        /// The most one check can take.
        capacity: u32,
    },
}

/// The distributed limiter. Cheap to clone (the connection is multiplexed).
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Arc<Script>,
    alg: RedisAlgorithm,
    cfg: RedisConfig,
    metrics: Option<Metrics>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("algorithm", &self.alg)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn decision(allowed: i64, wait_us: i64) -> Decision {
    Decision {
        allowed: allowed == 1,
        wait: Duration::from_micros(wait_us.max(0) as u64),
        source: Source::Redis,
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://127.0.0.1:6379`). Connects lazily and
    /// reconnects in the background, so it works (through its fallback) while Redis is
    /// down; if Redis is up, the script is loaded now.
    pub async fn connect(
        url: &str,
        alg: RedisAlgorithm,
        cfg: RedisConfig,
    ) -> Result<Self, RedisLimitError> {
        let client = redis::Client::open(url)?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(manager_cfg)?;
        let script = Arc::new(Script::new(match alg {
            RedisAlgorithm::Gcra { .. } => GCRA_LUA,
            RedisAlgorithm::SlidingWindow { .. } => SLIDING_LUA,
        }));
        let limiter = Self {
            conn,
            script,
            alg,
            cfg,
            metrics: None,
        };
        // Best effort: a down Redis is the fallback's business, not the constructor's.
        if let Err(e) = limiter.load().await {
            tracing::warn!(error = %e, "redis limiter: could not load its script yet");
        }
        Ok(limiter)
    }

    /// Reports checks, failures and script reloads to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// `SCRIPT LOAD`s the algorithm's script.
    pub async fn load(&self) -> Result<(), RedisLimitError> {
        let mut conn = self.conn.clone();
        let load = self.script.load_async(&mut conn);
        match tokio::time::timeout(self.cfg.timeout, load).await {
            Ok(r) => r.map(drop).map_err(Into::into),
            Err(_) => Err(RedisLimitError::Timeout(self.cfg.timeout)),
        }
    }

    fn count(&self, name: &'static str, n: u64) {
        if let Some(m) = &self.metrics {
            m.counter(name, n);
        }
    }

    fn evalsha(&self, key: &str, n: u32) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(1)
            .arg(format!("{}{key}", self.cfg.prefix));
        for a in self.alg.args(n) {
            cmd.arg(a);
        }
        cmd
    }

    /// Asks Redis only: no fallback.
    pub async fn check_redis(&self, key: &str, n: u32) -> Result<Decision, RedisLimitError> {
        let capacity = self.alg.capacity();
        if n > capacity {
            return Err(RedisLimitError::ExceedsCapacity {
                requested: n,
                capacity,
            });
        }
        let run = async {
            let mut conn = self.conn.clone();
            let cmd = self.evalsha(key, n);
            let r: Result<(i64, i64), _> = cmd.query_async(&mut conn).await;
            match r {
                Err(e) if is_noscript(&e) => {
                    self.count(METRIC_RELOADS, 1);
                    self.script.load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                r => r,
            }
        };
        match tokio::time::timeout(self.cfg.timeout, run).await {
            Ok(Ok((allowed, wait))) => {
                self.count(METRIC_CHECKS, 1);
                Ok(decision(allowed, wait))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(RedisLimitError::Timeout(self.cfg.timeout)),
        }
    }

    /// Checks `n` permits for `key`, through the fallback if Redis fails.
    pub async fn check(&self, key: &str, n: u32) -> Decision {
        match self.check_redis(key, n).await {
            Ok(d) => d,
            Err(RedisLimitError::ExceedsCapacity { .. }) => Decision {
                allowed: false,
                wait: Duration::MAX,
                source: Source::Redis,
            },
            Err(e) => self.fall_back(&e, key, n),
        }
    }

    /// Checks many keys in one round trip (a pipeline of `EVALSHA`s), through the fallback
    /// if Redis fails. After a `NOSCRIPT` the whole pipeline is sent again; every command of
    /// the first attempt failed with it unless the script was loaded concurrently.
    pub async fn check_many(&self, requests: &[(&str, u32)]) -> Vec<Decision> {
        let capacity = self.alg.capacity();
        let mut pipe = redis::pipe();
        for &(key, n) in requests {
            // An oversize request gets a command that is refused for sure (n = capacity + 1
            // is never admitted), so answers stay in order.
            pipe.add_command(self.evalsha(key, n.min(capacity + 1)));
        }
        let run = async {
            let mut conn = self.conn.clone();
            let r: Result<Vec<(i64, i64)>, _> = pipe.query_async(&mut conn).await;
            match r {
                Err(e) if is_noscript(&e) => {
                    self.count(METRIC_RELOADS, 1);
                    self.script.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await
                }
                r => r,
            }
        };
        match tokio::time::timeout(self.cfg.timeout, run).await {
            Ok(Ok(v)) => {
                self.count(METRIC_CHECKS, v.len() as u64);
                v.into_iter().map(|(a, w)| decision(a, w)).collect()
            }
            Ok(Err(e)) => {
                let e = RedisLimitError::from(e);
                requests
                    .iter()
                    .map(|&(k, n)| self.fall_back(&e, k, n))
                    .collect()
            }
            Err(_) => {
                let e = RedisLimitError::Timeout(self.cfg.timeout);
                requests
                    .iter()
                    .map(|&(k, n)| self.fall_back(&e, k, n))
                    .collect()
            }
        }
    }

    fn fall_back(&self, e: &RedisLimitError, key: &str, n: u32) -> Decision {
        self.count(METRIC_FAILURES, 1);
        tracing::debug!(error = %e, "redis limiter: falling back");
        match &self.cfg.fallback {
            Fallback::FailOpen => Decision {
                allowed: true,
                wait: Duration::ZERO,
                source: Source::FailOpen,
            },
            Fallback::FailClosed => Decision {
                allowed: false,
                wait: self.cfg.timeout,
                source: Source::FailClosed,
            },
            Fallback::Local(l) => match l.check(key, n) {
                Ok(()) => Decision {
                    allowed: true,
                    wait: Duration::ZERO,
                    source: Source::Local,
                },
                Err(e) => Decision {
                    allowed: false,
                    wait: e.wait,
                    source: Source::Local,
                },
            },
        }
    }
}

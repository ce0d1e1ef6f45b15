//! Server-wide flow control every front door applies the same way: per-client quotas, the
//! memory budget for produce data in flight, and connection admission per source address.
//! Built on the `weir-flow` crate; nothing here knows a protocol.
//!
//! - [`Quotas`]: produce bytes/s, fetch bytes/s and requests/s per client id, with defaults
//!   and per-client overrides. Usage is recorded after the fact (the bytes already arrived)
//!   with GCRA's `charge`; the answer is a *throttle time*: how long the client must stay away
//!   to be back within its quota. Front doors put it in their responses and stop reading the
//!   connection for that long (Kafka's behaviour since KIP-219).
//! - [`MemoryBudget`]: bytes of produce data the server holds at once, across connections.
//!   A front door acquires budget for a large request *before* reading its body; while none is
//!   left, it does not read its socket, so TCP pushes back on the producer.
//! - [`Admission`]: a cap on connections per source address and a connection-rate limit per
//!   address (the total cap is each listener's own).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_flow::{Gcra, KeyedConfig, KeyedLimiter, Limiter, Rate, WhenFull};

/// One client's quotas; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub produce_bytes_per_sec: Option<u64>,
    pub fetch_bytes_per_sec: Option<u64>,
    pub requests_per_sec: Option<u64>,
}

/// Quotas: a default for every client and overrides by client id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaConfig {
    pub default: Quota,
    pub clients: HashMap<String, Quota>,
}

/// Most clients tracked at once; beyond it, idle ones are forgotten first, and when none is
/// idle the newcomers share one limiter (so memory stays bounded whatever clients claim).
pub const MAX_QUOTA_CLIENTS: usize = 100_000;
/// A client unseen this long is forgotten (its quota starts afresh).
const QUOTA_IDLE: Duration = Duration::from_secs(600);
/// Burst allowed above the rate: this long's worth.
const QUOTA_BURST: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct ClientLimits {
    produce: Option<Limiter<Gcra>>,
    fetch: Option<Limiter<Gcra>>,
    requests: Option<Limiter<Gcra>>,
    used: Mutex<Instant>,
}

fn gcra(per_sec: Option<u64>) -> Option<Limiter<Gcra>> {
    let rate = per_sec.filter(|r| *r > 0)?;
    let burst = (rate as u128 * QUOTA_BURST.as_millis() / 1000).clamp(1, u32::MAX as u128) as u32;
    Some(Limiter::new(Gcra::new(Rate::per_second(rate), burst)))
}

impl ClientLimits {
    fn new(q: &Quota) -> Self {
        Self {
            produce: gcra(q.produce_bytes_per_sec),
            fetch: gcra(q.fetch_bytes_per_sec),
            requests: gcra(q.requests_per_sec),
            used: Mutex::new(Instant::now()),
        }
    }
}

/// What kind of use a throttle answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Produce,
    Fetch,
    Requests,
}

impl QuotaKind {
    fn name(self) -> &'static str {
        match self {
            QuotaKind::Produce => "produce",
            QuotaKind::Fetch => "fetch",
            QuotaKind::Requests => "requests",
        }
    }
}

/// Per-client quotas. See the [module docs](self).
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    enabled: bool,
    clients: Mutex<HashMap<String, Arc<ClientLimits>>>,
    /// Shared by clients beyond [`MAX_QUOTA_CLIENTS`].
    overflow: Arc<ClientLimits>,
    /// Requests answered with a throttle, since the server started.
    throttled: AtomicU64,
    /// Clients throttled lately, for the console: at most [`RECENT_THROTTLED`], the least
    /// recently throttled forgotten first.
    recent: Mutex<HashMap<String, Throttled>>,
}

/// Clients kept in [`Quotas::recently_throttled`]'s record.
pub const RECENT_THROTTLED: usize = 256;
/// Bytes of a client id kept there (client ids come from the network).
const CLIENT_ID_KEPT: usize = 128;

#[derive(Debug, Clone, Copy)]
struct Throttled {
    kind: QuotaKind,
    times: u64,
    last: Instant,
    last_throttle: Duration,
}

/// A client throttled lately: see [`Quotas::recently_throttled`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThrottledClient {
    pub client: String,
    /// What its last throttle answered: `produce`, `fetch` or `requests`.
    pub kind: &'static str,
    /// Throttles since it was first recorded.
    pub times: u64,
    pub last_throttle_ms: u64,
    pub seconds_ago: u64,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        let limited = |q: &Quota| {
            q.produce_bytes_per_sec.is_some_and(|v| v > 0)
                || q.fetch_bytes_per_sec.is_some_and(|v| v > 0)
                || q.requests_per_sec.is_some_and(|v| v > 0)
        };
        let enabled = limited(&config.default) || config.clients.values().any(limited);
        Self {
            overflow: Arc::new(ClientLimits::new(&config.default)),
            config,
            enabled,
            clients: Mutex::new(HashMap::new()),
            throttled: Default::default(),
            recent: Mutex::new(HashMap::new()),
        }
    }

    fn limits(&self, client: &str) -> Arc<ClientLimits> {
        let now = Instant::now();
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(client) {
            *c.used.lock() = now;
            return c.clone();
        }
        if clients.len() >= MAX_QUOTA_CLIENTS {
            clients.retain(|_, c| now.duration_since(*c.used.lock()) < QUOTA_IDLE);
            if clients.len() >= MAX_QUOTA_CLIENTS {
                return self.overflow.clone();
            }
        }
        let quota = self
            .config
            .clients
            .get(client)
            .unwrap_or(&self.config.default);
        let c = Arc::new(ClientLimits::new(quota));
        clients.insert(client.to_string(), c.clone());
        c
    }

    /// Records use by `client` and returns how long it must now stay away (zero: within its
    /// quota).
    pub fn charge(&self, client: &str, kind: QuotaKind, amount: u64) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let limits = self.limits(client);
        let limiter = match kind {
            QuotaKind::Produce => &limits.produce,
            QuotaKind::Fetch => &limits.fetch,
            QuotaKind::Requests => &limits.requests,
        };
        let throttle = limiter
            .as_ref()
            .map_or(Duration::ZERO, |l| l.charge(amount.max(1)));
        if !throttle.is_zero() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            self.record_throttle(client, kind, throttle);
            metrics::counter!("weir_quota_throttled_total", "kind" => kind.name()).increment(1);
            metrics::histogram!("weir_quota_throttle_seconds", "kind" => kind.name())
                .record(throttle.as_secs_f64());
        }
        throttle
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether any client has a quota.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Requests answered with a throttle since the server started.
    pub fn throttled_total(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    fn record_throttle(&self, client: &str, kind: QuotaKind, throttle: Duration) {
        let now = Instant::now();
        let mut recent = self.recent.lock();
        if let Some(t) = recent.get_mut(client) {
            *t = Throttled {
                kind,
                times: t.times + 1,
                last: now,
                last_throttle: throttle,
            };
            return;
        }
        if recent.len() >= RECENT_THROTTLED {
            // Full: the least recently throttled goes (a linear pass, on a throttle only).
            if let Some(oldest) = recent
                .iter()
                .min_by_key(|(_, t)| t.last)
                .map(|(c, _)| c.clone())
            {
                recent.remove(&oldest);
            }
        }
        let mut end = client.len().min(CLIENT_ID_KEPT);
        while !client.is_char_boundary(end) {
            end -= 1;
        }
        recent.insert(
            client[..end].to_string(),
            Throttled {
                kind,
                times: 1,
                last: now,
                last_throttle: throttle,
            },
        );
    }

    /// Clients throttled within `within`, most recently throttled first, at most `limit`.
    pub fn recently_throttled(&self, within: Duration, limit: usize) -> Vec<ThrottledClient> {
        let now = Instant::now();
        let recent = self.recent.lock();
        let mut out: Vec<(Instant, ThrottledClient)> = recent
            .iter()
            .filter(|(_, t)| now.duration_since(t.last) <= within)
            .map(|(c, t)| {
                (
                    t.last,
                    ThrottledClient {
                        client: c.clone(),
                        kind: t.kind.name(),
                        times: t.times,
                        last_throttle_ms: t.last_throttle.as_millis() as u64,
                        seconds_ago: now.duration_since(t.last).as_secs(),
                    },
                )
            })
            .collect();
        drop(recent);
        out.sort_by_key(|(last, _)| std::cmp::Reverse(*last));
        out.into_iter().take(limit).map(|(_, c)| c).collect()
    }

    /// The quotas in force: the default and the clients with their own.
    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }
}

/// Requests at most this large are not counted against the [`MemoryBudget`]: each connection
/// holds only a bounded window of them anyway.
pub const SMALL_REQUEST_BYTES: usize = 64 << 10;

/// Bytes of produce data the server holds at once. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    /// One permit per KiB.
    permits: Arc<Semaphore>,
    total_kib: u32,
}

/// Budget held for one request; returned when dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    _permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: u64) -> Self {
        let kib = (bytes / 1024).clamp(1024, u64::from(u32::MAX >> 3)) as u32;
        Self {
            permits: Arc::new(Semaphore::new(kib as usize)),
            total_kib: kib,
        }
    }

    /// Waits until `bytes` can be held (a request larger than the whole budget waits for all
    /// of it). Small requests pass at once, unaccounted.
    pub async fn acquire(&self, bytes: usize) -> BudgetPermit {
        if bytes <= SMALL_REQUEST_BYTES {
            return BudgetPermit { _permit: None };
        }
        let kib = (bytes.div_ceil(1024) as u64).min(u64::from(self.total_kib)) as u32;
        if self.permits.available_permits() < kib as usize {
            metrics::counter!("weir_memory_budget_waits_total").increment(1);
        }
        let permit = self.permits.clone().acquire_many_owned(kib).await.ok();
        BudgetPermit { _permit: permit }
    }

    /// Bytes of budget not held now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * 1024
    }

    /// The whole budget in bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.total_kib) * 1024
    }
}

/// Connection admission per source address. See the [module docs](self).
#[derive(Debug)]
pub struct Admission {
    max_per_ip: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    rate: Option<KeyedLimiter<IpAddr, Gcra>>,
    refused_per_address: AtomicU64,
    refused_rate: AtomicU64,
}

/// What [`Admission::read`] sees.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionReading {
    /// Addresses with a connection open.
    pub addresses: usize,
    /// The addresses with the most connections open, most first, and how many each.
    pub busiest: Vec<(IpAddr, usize)>,
    /// Connections refused since the server started: the address had the most allowed open…
    pub refused_per_address: u64,
    /// …or opened them faster than allowed.
    pub refused_rate: u64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address already has the most connections allowed.
    TooManyFromAddress,
    /// The address opens connections faster than allowed.
    TooFast,
}

/// An admitted connection; its slot is freed when dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// At most `max_per_ip` open connections per address (0: no cap), and at most
    /// `per_ip_per_sec` new ones per second per address (0: no limit; bursts of that many).
    pub fn new(max_per_ip: usize, per_ip_per_sec: u32) -> Self {
        let rate = (per_ip_per_sec > 0).then(|| {
            KeyedLimiter::new(
                Gcra::new(Rate::per_second(u64::from(per_ip_per_sec)), per_ip_per_sec),
                KeyedConfig {
                    max_keys: 100_000,
                    when_full: WhenFull::EvictLeastRecent,
                    ..KeyedConfig::default()
                },
            )
        });
        Self {
            max_per_ip,
            open: Mutex::new(HashMap::new()),
            rate,
            refused_per_address: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
        }
    }

    /// The `top` addresses with the most connections open, and the refusals so far. Holds
    /// the admission lock while it copies the counts (one entry per address).
    pub fn read(&self, top: usize) -> AdmissionReading {
        let mut busiest: Vec<(IpAddr, usize)> = {
            let open = self.open.lock();
            open.iter().map(|(ip, n)| (*ip, *n)).collect()
        };
        let addresses = busiest.len();
        busiest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        busiest.truncate(top);
        AdmissionReading {
            addresses,
            busiest,
            refused_per_address: self.refused_per_address.load(Ordering::Relaxed),
            refused_rate: self.refused_rate.load(Ordering::Relaxed),
        }
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        if let Some(rate) = &self.rate
            && rate.try_acquire(&ip, 1).is_err()
        {
            metrics::counter!("weir_connections_refused_total", "reason" => "rate").increment(1);
            self.refused_rate.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooFast);
        }
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            metrics::counter!("weir_connections_refused_total", "reason" => "per_address")
                .increment(1);
            self.refused_per_address.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooManyFromAddress);
        }
        *n += 1;
        Ok(Admitted {
            admission: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_throttle_per_client_with_overrides_and_stay_bounded() {
        let mut clients = HashMap::new();
        clients.insert(
            "vip".to_string(),
            Quota {
                produce_bytes_per_sec: Some(10_000_000),
                ..Quota::default()
            },
        );
        let q = Quotas::new(QuotaConfig {
            default: Quota {
                produce_bytes_per_sec: Some(1_000_000),
                requests_per_sec: Some(100),
                ..Quota::default()
            },
            clients,
        });
        // 200 ms of burst: 200 KB passes, the next 1 MB costs about a second.
        assert_eq!(q.charge("a", QuotaKind::Produce, 200_000), Duration::ZERO);
        let t = q.charge("a", QuotaKind::Produce, 1_000_000);
        assert!(
            t > Duration::from_millis(950) && t <= Duration::from_millis(1000),
            "{t:?}"
        );
        // Another client, and the override, have their own budgets.
        assert_eq!(q.charge("b", QuotaKind::Produce, 200_000), Duration::ZERO);
        assert_eq!(
            q.charge("vip", QuotaKind::Produce, 2_000_000),
            Duration::ZERO
        );
        // Unlimited kinds never throttle.
        assert_eq!(
            q.charge("a", QuotaKind::Fetch, u64::MAX / 2),
            Duration::ZERO
        );
        assert_eq!(q.tracked(), 3);
        // No quota configured: nothing is tracked at all.
        let off = Quotas::new(QuotaConfig::default());
        assert_eq!(off.charge("x", QuotaKind::Produce, 1 << 40), Duration::ZERO);
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn throttled_clients_are_recorded_newest_first_and_the_record_stays_bounded() {
        let q = Quotas::new(QuotaConfig {
            default: Quota {
                produce_bytes_per_sec: Some(1000),
                ..Quota::default()
            },
            clients: HashMap::new(),
        });
        // Within the burst: not throttled, not recorded.
        assert_eq!(q.charge("calm", QuotaKind::Produce, 100), Duration::ZERO);
        assert!(q.recently_throttled(Duration::from_secs(60), 10).is_empty());
        assert!(!q.charge("noisy", QuotaKind::Produce, 10_000).is_zero());
        assert!(!q.charge("noisy", QuotaKind::Produce, 10_000).is_zero());
        let long = "é".repeat(200);
        assert!(!q.charge(&long, QuotaKind::Produce, 10_000).is_zero());
        let r = q.recently_throttled(Duration::from_secs(60), 10);
        assert_eq!(r.len(), 2);
        // Newest first; a long id kept to 128 bytes, cut on a character boundary.
        assert_eq!(r[0].client, "é".repeat(64));
        assert_eq!(
            (r[1].client.as_str(), r[1].kind, r[1].times),
            ("noisy", "produce", 2)
        );
        assert!(r[1].last_throttle_ms > 0);
        assert_eq!(q.throttled_total(), 3);
        // Never more than RECENT_THROTTLED clients, however many are throttled.
        for i in 0..RECENT_THROTTLED + 50 {
            q.charge(&format!("c{i}"), QuotaKind::Produce, 10_000);
        }
        let all = q.recently_throttled(Duration::from_secs(60), usize::MAX);
        assert_eq!(all.len(), RECENT_THROTTLED);
        assert_eq!(all[0].client, format!("c{}", RECENT_THROTTLED + 49));
        assert!(
            !all.iter().any(|c| c.client == "noisy"),
            "the oldest went first"
        );
    }

    #[tokio::test]
    async fn the_budget_blocks_large_requests_until_memory_is_returned() {
        let b = MemoryBudget::new(4 << 20);
        let first = b.acquire(3 << 20).await;
        assert_eq!(b.available(), 1 << 20);
        // Small requests are not counted.
        let _small = b.acquire(1000).await;
        assert_eq!(b.available(), 1 << 20);
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { b2.acquire(2 << 20).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "2 MiB cannot fit beside 3 MiB in 4 MiB"
        );
        drop(first);
        let _second = waiting.await.unwrap();
        assert_eq!(b.available(), 2 << 20);
        // Larger than the whole budget: waits for all of it rather than forever.
        drop(_second);
        let _all = b.acquire(64 << 20).await;
        assert_eq!(b.available(), 0);
    }

    #[test]
    fn admission_caps_connections_per_address_and_their_rate() {
        let a = Arc::new(Admission::new(2, 0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let c1 = a.admit(ip).unwrap();
        let _c2 = a.admit(ip).unwrap();
        assert_eq!(a.admit(ip).unwrap_err(), Refusal::TooManyFromAddress);
        let _o = a.admit(other).unwrap();
        let seen = a.read(1);
        assert_eq!((seen.addresses, seen.busiest), (2, vec![(ip, 2)]));
        assert_eq!((seen.refused_per_address, seen.refused_rate), (1, 0));
        drop(c1);
        let _c3 = a.admit(ip).unwrap();
        let r = Arc::new(Admission::new(0, 3));
        for _ in 0..3 {
            std::mem::forget(r.admit(ip).unwrap());
        }
        assert_eq!(r.admit(ip).unwrap_err(), Refusal::TooFast);
        let _held = r.admit(other).unwrap();
        let seen = r.read(10);
        assert_eq!(seen.busiest, vec![(ip, 3), (other, 1)], "most first");
        assert_eq!((seen.refused_per_address, seen.refused_rate), (0, 1));
    }
}

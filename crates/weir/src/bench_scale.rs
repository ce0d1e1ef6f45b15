//! What many clients cost a server: `weir bench connections --rate` (connections that each
//! produce a few records a second) and `weir bench groups` (many consumer groups at once).
//! Both read the server's CPU time and resident memory from `/proc` when given its PID, so
//! the figures are the server's own, not the load generator's.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use weir_client::GroupConsumer;
use weir_client::consumer::GroupOptions;

use crate::Conn;
use crate::bench::{batch_of, ensure_topic, progress};

/// A process's CPU time (user and system) and resident memory, as `/proc` shows them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcSample {
    pub cpu: Duration,
    pub rss: u64,
}

/// Resident memory of `pid` in bytes.
pub(crate) fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    // What follows starts at field 3, so utime (14) and stime (15) are its 12th and 13th.
    let mut rest = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(ProcSample {
        cpu: Duration::from_secs_f64((utime + stime) as f64 / hz as f64),
        rss: rss(pid)?,
    })
}

/// CPU time `pid` spent between two samples, if both were taken.
fn cpu_between(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu.saturating_sub(a?.cpu).as_secs_f64())
}

fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p);
    serde_json::json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max(), "count": h.len()})
}

/// What `weir bench connections --rate` measures.
pub(crate) struct BusyOptions {
    pub count: usize,
    /// Records per second per connection.
    pub rate: f64,
    /// Seconds measured, after one period of warm-up.
    pub seconds: u64,
    pub topic: String,
    pub partitions: u32,
    pub size: usize,
    pub server_pid: Option<u32>,
    pub output: String,
}

/// `count` connections, each producing one record of `size` bytes every `1 / rate` seconds
/// and awaiting its acknowledgement, their sends spread evenly over the period. After one
/// period of warm-up, `seconds` are measured: records acknowledged, their latency (send to
/// acknowledgement), and the server's CPU time and memory.
pub(crate) async fn busy_connections(conn: &Conn, o: BusyOptions) -> Result<()> {
    if !(o.rate > 0.0 && o.rate <= 1000.0) {
        bail!("--rate must be more than 0 and at most 1000 records per second per connection");
    }
    if o.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let admin = conn.connect("weir-bench").await?;
    let partitions = ensure_topic(&admin, &o.topic, o.partitions).await?;
    let before = o.server_pid.and_then(sample);
    let bar = progress(o.count as u64, &o.output);
    let mut clients = Vec::with_capacity(o.count);
    let start = Instant::now();
    for _ in 0..o.count {
        clients.push(conn.connect("weir-bench").await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let opened = start.elapsed();
    let idle = o.server_pid.and_then(sample);

    let period = Duration::from_secs_f64(1.0 / o.rate);
    // Every connection has sent once before the measured window opens.
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let from = t0 + period;
    let until = from + Duration::from_secs(o.seconds);
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let one = batch_of(1, o.size);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, one, topic) = (client.clone(), one.clone(), o.topic.clone());
        let (latency, acked, failed) = (latency.clone(), acked.clone(), failed.clone());
        let first = t0 + period.mul_f64(i as f64 / o.count as f64);
        let partition = i as u32 % partitions;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let at = tick.tick().await;
                if at >= until {
                    break;
                }
                let t = Instant::now();
                let r = client
                    .produce(&topic, Some(partition), None, one.clone())
                    .await;
                if at < from {
                    continue;
                }
                match r {
                    Ok(_) => {
                        let us = t.elapsed().as_micros() as u64;
                        // A poisoned lock means another task panicked; its error shows below.
                        if let Ok(mut h) = latency.lock() {
                            let _ = h.record(us);
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    tokio::time::sleep_until(from).await;
    let (server_from, me_from) = (o.server_pid.and_then(sample), sample(std::process::id()));
    tokio::time::sleep_until(until).await;
    let (server_until, me_until) = (o.server_pid.and_then(sample), sample(std::process::id()));
    while let Some(r) = tasks.join_next().await {
        r.context("a connection's task panicked")?;
    }
    let window = o.seconds as f64;
    let acked = acked.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let latency = latency
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let server_cpu = cpu_between(server_from, server_until);
    let client_cpu = cpu_between(me_from, me_until);
    let per_message_us = server_cpu.map(|c| c * 1e6 / acked.max(1) as f64);
    let rss_per_conn = |a: Option<ProcSample>| {
        before
            .zip(a)
            .map(|(b, a)| a.rss.saturating_sub(b.rss) as f64 / o.count as f64)
    };
    let report = serde_json::json!({
        "bench": "busy-connections",
        "connections": o.count,
        "rate_per_connection": o.rate,
        "open_seconds": opened.as_secs_f64(),
        "seconds": window,
        "acknowledged": acked,
        "failed": failed,
        "messages_per_sec": acked as f64 / window,
        "target_per_sec": o.count as f64 * o.rate,
        "latency_us": quantiles(&latency),
        "server_cpu_seconds": server_cpu,
        "server_cpu_share": server_cpu.map(|c| c / window),
        "server_cpu_us_per_message": per_message_us,
        "client_cpu_share": client_cpu.map(|c| c / window),
        "server_rss_before": before.map(|s| s.rss),
        "server_rss_idle": idle.map(|s| s.rss),
        "server_rss_busy": server_until.map(|s| s.rss),
        "server_bytes_per_connection_idle": rss_per_conn(idle),
        "server_bytes_per_connection_busy": rss_per_conn(server_until),
    });
    if o.output == "json" {
        println!("{report}");
    } else {
        println!(
            "busy connections: {} × {}/s: {:.0} acknowledged/s (target {:.0}), {failed} failed; latency µs p50={} p99={} max={}",
            o.count,
            o.rate,
            acked as f64 / window,
            o.count as f64 * o.rate,
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max(),
        );
        if let Some(us) = per_message_us {
            println!(
                "server: {:.0}% of a core, {us:.1} µs CPU per message, RSS {:.0} MiB ({:.0} bytes per connection)",
                server_cpu.unwrap_or(0.0) / window * 100.0,
                server_until.map_or(0.0, |s| s.rss as f64 / (1 << 20) as f64),
                rss_per_conn(server_until).unwrap_or(0.0),
            );
        }
    }
    if failed > 0 {
        bail!("{failed} produce requests failed");
    }
    Ok(())
}

/// What `weir bench groups` measures.
pub(crate) struct GroupsOptions {
    pub groups: usize,
    pub members: usize,
    pub topic: String,
    pub partitions: u32,
    /// Seconds of each measured phase (idle members, commits).
    pub seconds: u64,
    pub session_timeout: Duration,
    pub server_pid: Option<u32>,
    pub output: String,
}

/// The members' phases, which the driver moves them through.
const JOINING: u8 = 0;
const REPLACE: u8 = 1;
const IDLE: u8 = 2;
const COMMIT: u8 = 3;
const STOP: u8 = 4;

/// What a member last saw: its id, generation and partitions.
type Seen = Option<(String, u64, Vec<u32>)>;

/// Each group's members' views, for the driver to tell when a group has settled.
struct Board {
    groups: Vec<Mutex<Vec<Seen>>>,
}

impl Board {
    fn set(&self, group: usize, member: usize, seen: Seen) {
        if let Ok(mut g) = self.groups[group].lock() {
            g[member] = seen;
        }
    }

    /// The generation of `group` if it has settled past `after`: every member has joined it
    /// and their partitions cover the topic's once each.
    fn settled(&self, group: usize, partitions: u32, after: u64) -> Option<u64> {
        let g = self.groups[group].lock().ok()?;
        let generation = g.first()?.as_ref()?.1;
        let mut owned = vec![false; partitions as usize];
        for seen in g.iter() {
            let (_, gen_, parts) = seen.as_ref()?;
            if *gen_ != generation {
                return None;
            }
            for &p in parts {
                let slot = owned.get_mut(p as usize)?;
                if std::mem::replace(slot, true) {
                    return None;
                }
            }
        }
        (generation > after && owned.iter().all(|&o| o)).then_some(generation)
    }
}

/// One member's task: joins, then polls (which follows rebalances) and reports what it sees,
/// until the driver moves it on. In REPLACE, member 0 of each group leaves and joins again
/// as a new member; in COMMIT, every member commits in a loop.
#[allow(clippy::too_many_arguments)]
async fn member(
    client: weir_client::Client,
    group: usize,
    index: usize,
    topic: String,
    options: GroupOptions,
    phase: Arc<AtomicU8>,
    board: Arc<Board>,
    commits: Arc<AtomicU64>,
) -> Result<()> {
    let name = format!("bench-group-{group}");
    let topics = [topic.as_str()];
    let join = || GroupConsumer::join(client.clone(), &name, &topics, options.clone());
    let mut m = join().await?;
    let mut replaced = false;
    loop {
        let now = phase.load(Ordering::Acquire);
        match now {
            STOP => break,
            REPLACE if index == 0 && !replaced => {
                replaced = true;
                board.set(group, index, None);
                m.leave().await?;
                m = join().await?;
            }
            COMMIT => {
                m.poll(Duration::ZERO).await?;
                if m.commit().await.is_ok() {
                    commits.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            _ => {}
        }
        let parts = m.assignment().into_iter().map(|(_, p)| p).collect();
        board.set(
            group,
            index,
            Some((m.member_id().to_string(), m.generation(), parts)),
        );
        // Idle members wait as an application with nothing to read would; while groups
        // settle, a shorter wait reports a new assignment sooner.
        let wait = if now == IDLE { 1000 } else { 50 };
        m.poll(Duration::from_millis(wait)).await?;
    }
    m.leave().await?;
    Ok(())
}

/// Waits until every group has settled past its generation in `after`; each group's time
/// from the call, and the generation it settled in. Fails if a member fails or some group
/// has not settled within `limit`.
async fn settle(
    board: &Board,
    tasks: &mut tokio::task::JoinSet<Result<()>>,
    partitions: u32,
    after: &[u64],
    limit: Duration,
) -> Result<(Vec<Duration>, Vec<u64>)> {
    let mut pending: Vec<usize> = (0..after.len()).collect();
    let mut times = vec![Duration::ZERO; after.len()];
    let mut generations = vec![0u64; after.len()];
    let begun = Instant::now();
    while !pending.is_empty() {
        if begun.elapsed() > limit {
            bail!("{} groups had not settled after {limit:?}", pending.len());
        }
        if let Some(r) = tasks.try_join_next() {
            r.context("a member's task panicked")?
                .context("a member failed")?;
            bail!("a member stopped before it was told to");
        }
        pending.retain(|&g| match board.settled(g, partitions, after[g]) {
            Some(generation) => {
                times[g] = begun.elapsed();
                generations[g] = generation;
                false
            }
            None => true,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((times, generations))
}

/// `weir bench groups`: `groups` consumer groups of `members` members each on one topic of
/// `partitions` partitions, every member on its own connection. Measures
/// - how long until every group has settled after they all join at once;
/// - a rebalance: member 0 of every group leaves and a new member takes its place, and each
///   group's time until it has settled again;
/// - idle members (heartbeats and long polls) for `seconds`: the server's CPU;
/// - commits: every member commits in a loop for `seconds`: commits/s and the server's CPU.
pub(crate) async fn groups(conn: &Conn, o: GroupsOptions) -> Result<()> {
    if o.groups == 0 || o.members == 0 || o.seconds == 0 {
        bail!("--groups, --members and --seconds must be at least 1");
    }
    if o.members > o.partitions as usize {
        bail!("--members must be at most --partitions, so that every member owns one");
    }
    let admin = conn.connect("weir-bench").await?;
    let partitions = ensure_topic(&admin, &o.topic, o.partitions).await?;
    let before = o.server_pid.and_then(sample);
    let options = GroupOptions {
        session_timeout: o.session_timeout,
        ..Default::default()
    };
    let mut clients = Vec::with_capacity(o.groups * o.members);
    for _ in 0..o.groups * o.members {
        clients.push(conn.connect("weir-bench").await?);
    }
    let phase = Arc::new(AtomicU8::new(JOINING));
    let commits = Arc::new(AtomicU64::new(0));
    let board = Arc::new(Board {
        groups: (0..o.groups)
            .map(|_| Mutex::new(vec![None; o.members]))
            .collect(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.spawn(member(
            client,
            i / o.members,
            i % o.members,
            o.topic.clone(),
            options.clone(),
            phase.clone(),
            board.clone(),
            commits.clone(),
        ));
    }
    // Settling can take a heartbeat interval per join that lands after a member's; give up
    // after ten session timeouts.
    let limit = o.session_timeout * 10 + Duration::from_secs(30);
    let (_, generations) =
        settle(&board, &mut tasks, partitions, &vec![0; o.groups], limit).await?;
    let joined = start.elapsed();

    phase.store(REPLACE, Ordering::Release);
    let replace_start = Instant::now();
    let (times, _) = settle(&board, &mut tasks, partitions, &generations, limit).await?;
    let replaced_all = replace_start.elapsed();
    let mut rebalance = Histogram::<u64>::new(3)?;
    for t in &times {
        rebalance.record(t.as_millis() as u64)?;
    }

    phase.store(IDLE, Ordering::Release);
    // Let every member's shorter polls run out first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_from = o.server_pid.and_then(sample);
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    let idle_until = o.server_pid.and_then(sample);

    phase.store(COMMIT, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c0, commit_from) = (
        commits.load(Ordering::Relaxed),
        o.server_pid.and_then(sample),
    );
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    let (c1, commit_until) = (
        commits.load(Ordering::Relaxed),
        o.server_pid.and_then(sample),
    );
    phase.store(STOP, Ordering::Release);
    while let Some(r) = tasks.join_next().await {
        r.context("a member's task panicked")?
            .context("a member failed")?;
    }

    let window = o.seconds as f64;
    let members = o.groups * o.members;
    let idle_cpu = cpu_between(idle_from, idle_until);
    let commit_cpu = cpu_between(commit_from, commit_until);
    let committed = c1 - c0;
    // A member heartbeats every third of its session timeout (weir-client's GroupConsumer).
    let heartbeats_per_sec = members as f64 / (o.session_timeout.as_secs_f64() / 3.0).max(0.05);
    let report = serde_json::json!({
        "bench": "groups",
        "groups": o.groups,
        "members": members,
        "partitions": partitions,
        "session_timeout_ms": o.session_timeout.as_millis() as u64,
        "join_seconds": joined.as_secs_f64(),
        "rebalance_ms": quantiles(&rebalance),
        "rebalance_all_seconds": replaced_all.as_secs_f64(),
        "idle_server_cpu_share": idle_cpu.map(|c| c / window),
        "heartbeats_per_sec": heartbeats_per_sec,
        "commits_per_sec": committed as f64 / window,
        "commit_server_cpu_share": commit_cpu.map(|c| c / window),
        "server_cpu_us_per_commit": commit_cpu.map(|c| c * 1e6 / committed.max(1) as f64),
        "server_rss_before": before.map(|s| s.rss),
        "server_rss_idle": idle_until.map(|s| s.rss),
    });
    if o.output == "json" {
        println!("{report}");
    } else {
        println!(
            "groups: {} × {} members: all settled {:.2}s after joining; a member replaced in every group: settled in ms p50={} p99={} max={}; {:.0} commits/s",
            o.groups,
            o.members,
            joined.as_secs_f64(),
            rebalance.value_at_quantile(0.5),
            rebalance.value_at_quantile(0.99),
            rebalance.max(),
            committed as f64 / window,
        );
        if let (Some(idle), Some(commit)) = (idle_cpu, commit_cpu) {
            println!(
                "server CPU: idle members {:.1}% of a core ({heartbeats_per_sec:.0} heartbeats/s), committing {:.0}% ({:.1} µs per commit)",
                idle / window * 100.0,
                commit / window * 100.0,
                commit * 1e6 / committed.max(1) as f64,
            );
        }
    }
    Ok(())
}

//! `weir-log-tool`: whole-system benchmarks of `weir-log` and the child process of the kill -9
//! torture test.
//!
//! - `bench append`: appends record batches from N threads, reports MiB/s and latency
//!   percentiles.
//! - `bench read`: reads a freshly written log from the hot tail, or cold after dropping the
//!   page cache for its files.
//! - `bench recovery`: fills a log from a child process, kills it with SIGKILL mid-append,
//!   and times the reopen.
//! - `torture`: appends forever, printing every acknowledged batch; the torture test kills it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use weir_batch::{BatchBuilder, RecordSpec};
use weir_log::{Durability, Log, LogConfig};
use weir_log_tool::{make_batch, torture_value};

#[derive(Parser)]
#[command(
    name = "weir-log-tool",
    about = "Benchmarks and torture driver for weir-log"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
    /// Append forever at `always`, printing `ack <tag> <records> <value_len> <base_offset>` for
    /// every acknowledged batch. Used by the kill -9 test.
    Torture {
        #[arg(long)]
        dir: PathBuf,
        /// Distinguishes this run's tags from other runs'.
        #[arg(long)]
        run: u32,
        #[arg(long, default_value_t = 3)]
        threads: u32,
        #[arg(long, default_value_t = 64 * 1024)]
        segment_bytes: u64,
        #[arg(long, default_value_t = 32 * 1024)]
        checkpoint_bytes: u64,
    },
    /// Append 1 MiB batches at `always`, printing `written <bytes>` after each; for
    /// `bench recovery`.
    Fill {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum Bench {
    Append(AppendArgs),
    Read(ReadArgs),
    Recovery(RecoveryArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Policy {
    Always,
    Never,
}

#[derive(clap::Args)]
struct AppendArgs {
    /// Directory for the log (emptied first).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum, default_value = "always")]
    durability: Policy,
    /// Concurrent appending threads.
    #[arg(long, default_value_t = 1)]
    appenders: u32,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    #[arg(long, default_value_t = 1000)]
    batch_records: usize,
    /// Total bytes of batches to append, in MiB.
    #[arg(long, default_value_t = 4096)]
    total_mib: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ReadMode {
    Hot,
    Cold,
}

#[derive(clap::Args)]
struct ReadArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum)]
    mode: ReadMode,
    #[arg(long, default_value_t = 2048)]
    total_mib: u64,
    /// Bytes asked for per read.
    #[arg(long, default_value_t = 1 << 20)]
    max_bytes: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RecoveryArgs {
    #[arg(long)]
    dir: PathBuf,
    /// How much to write before the kill, in GiB (the kill comes 8 MiB short of it).
    #[arg(long, default_value_t = 10)]
    total_gib: u64,
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench(Bench::Append(a)) => bench_append(a),
        Cmd::Bench(Bench::Read(a)) => bench_read(a),
        Cmd::Bench(Bench::Recovery(a)) => bench_recovery(a),
        Cmd::Torture {
            dir,
            run,
            threads,
            segment_bytes,
            checkpoint_bytes,
        } => torture(&dir, run, threads, segment_bytes, checkpoint_bytes),
        Cmd::Fill { dir } => fill(&dir),
    }
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

#[derive(Serialize)]
struct AppendReport {
    durability: &'static str,
    appenders: u32,
    batch_bytes: usize,
    batches: u64,
    seconds: f64,
    mib_per_s: f64,
    records_per_s: f64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_max: u64,
}

fn bench_append(a: AppendArgs) -> Result<()> {
    fresh_dir(&a.dir)?;
    let config = LogConfig {
        durability: match a.durability {
            Policy::Always => Durability::Always,
            Policy::Never => Durability::Never,
        },
        max_batch_bytes: 64 << 20,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(&a.dir, config)?);
    let template = make_batch(1, a.batch_records, a.record_bytes);
    let batch_bytes = template.len();
    let total_batches = (a.total_mib << 20) / batch_bytes as u64;
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..a.appenders)
        .map(|_| {
            let (log, issued, template) = (log.clone(), issued.clone(), template.clone());
            std::thread::spawn(move || -> Result<Histogram<u64>> {
                let mut h = Histogram::<u64>::new(3)?;
                while issued.fetch_add(1, Ordering::Relaxed) < total_batches {
                    // The log rewrites the base offset in place, so each append gets a copy,
                    // as a server would hand over a freshly received buffer.
                    let t = Instant::now();
                    log.append(template.clone())?;
                    h.record(t.elapsed().as_micros() as u64)?;
                }
                Ok(h)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3)?;
    for t in threads {
        hist.add(t.join().expect("appender panicked")?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    log.close()?;
    let r = AppendReport {
        durability: if a.durability == Policy::Always {
            "always"
        } else {
            "never"
        },
        appenders: a.appenders,
        batch_bytes,
        batches: total_batches,
        seconds: secs,
        mib_per_s: (total_batches * batch_bytes as u64) as f64 / secs / (1 << 20) as f64,
        records_per_s: (total_batches * a.batch_records as u64) as f64 / secs,
        latency_us_p50: hist.value_at_quantile(0.5),
        latency_us_p99: hist.value_at_quantile(0.99),
        latency_us_max: hist.max(),
    };
    let _ = std::fs::remove_dir_all(&a.dir);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "append durability={} appenders={} batch={}B: {:.0} MiB/s, {:.0} records/s, latency p50={}µs p99={}µs max={}µs",
            r.durability,
            r.appenders,
            r.batch_bytes,
            r.mib_per_s,
            r.records_per_s,
            r.latency_us_p50,
            r.latency_us_p99,
            r.latency_us_max
        );
    }
    Ok(())
}

/// Asks the kernel to drop cached pages of every file in `dir`.
fn drop_page_cache(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let file = std::fs::File::open(entry?.path())?;
        file.sync_all()?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct ReadReport {
    mode: &'static str,
    bytes: u64,
    seconds: f64,
    mib_per_s: f64,
    reads: u64,
}

fn bench_read(a: ReadArgs) -> Result<()> {
    fresh_dir(&a.dir)?;
    let total = a.total_mib << 20;
    let config = LogConfig {
        durability: Durability::Never,
        hot_tail_bytes: if a.mode == ReadMode::Hot {
            total as usize + (64 << 20)
        } else {
            0
        },
        ..LogConfig::default()
    };
    let mut log = Log::open(&a.dir, config.clone())?;
    let template = make_batch(1, 1000, 1024);
    let mut written = 0;
    while written < total {
        log.append(template.clone())?;
        written += template.len() as u64;
    }
    if a.mode == ReadMode::Cold {
        log.close()?;
        drop(log);
        drop_page_cache(&a.dir)?;
        log = Log::open(&a.dir, config)?;
    }
    let start = Instant::now();
    let (mut offset, mut bytes, mut reads) = (0u64, 0u64, 0u64);
    let hwm = log.high_watermark();
    while offset < hwm {
        let r = log.read(offset, a.max_bytes)?;
        if a.mode == ReadMode::Hot && !r.from_memory {
            bail!("hot read at {offset} missed the hot tail");
        }
        reads += 1;
        // Walk the headers only: this measures the log, not a consumer's CRC check.
        for chunk in &r.chunks {
            bytes += chunk.len() as u64;
            let mut at = 0;
            while at < chunk.len() {
                let h = weir_batch::peek(&chunk[at..])?;
                at += h.total_len();
                offset = h.next_offset() as u64;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let r = ReadReport {
        mode: if a.mode == ReadMode::Hot {
            "hot"
        } else {
            "cold"
        },
        bytes,
        seconds: secs,
        mib_per_s: bytes as f64 / secs / (1 << 20) as f64,
        reads,
    };
    drop(log);
    let _ = std::fs::remove_dir_all(&a.dir);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "read mode={}: {:.0} MiB/s over {} MiB in {} reads",
            r.mode,
            r.mib_per_s,
            bytes >> 20,
            reads
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct RecoveryReportOut {
    written_bytes: u64,
    warm_open_ms: f64,
    warm_scanned_bytes: u64,
    warm_truncated_bytes: u64,
    cold_open_ms: f64,
    cold_scanned_bytes: u64,
    cold_truncated_bytes: u64,
}

/// Runs `fill` until it reports `target` bytes written, then kills it with SIGKILL.
fn fill_and_kill(dir: &Path, target: u64) -> Result<u64> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["fill", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut written = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("written ") {
            written = n.parse()?;
            if written >= target {
                break;
            }
        }
    }
    child.kill()?; // SIGKILL, mid-append
    child.wait()?;
    Ok(written)
}

fn bench_recovery(a: RecoveryArgs) -> Result<()> {
    fresh_dir(&a.dir)?;
    // Kill just before a checkpoint is due (they come every 128 MiB of synced data and at each
    // 1 GiB roll): the worst case, with the most unverified data after the recovery point.
    let target = (a.total_gib << 30) - (8 << 20);
    let written = fill_and_kill(&a.dir, target)?;
    let t = Instant::now();
    let log = Log::open(&a.dir, LogConfig::default())?;
    let warm_ms = t.elapsed().as_secs_f64() * 1000.0;
    let warm = log.recovery_report().clone();
    drop(log);
    // Once more, killed again after some more data, and with the page cache dropped.
    let more = fill_and_kill(&a.dir, 120 << 20)?;
    drop_page_cache(&a.dir)?;
    let t = Instant::now();
    let log = Log::open(&a.dir, LogConfig::default())?;
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    let cold = log.recovery_report().clone();
    drop(log);
    let r = RecoveryReportOut {
        written_bytes: written + more,
        warm_open_ms: warm_ms,
        warm_scanned_bytes: warm.scanned_bytes,
        warm_truncated_bytes: warm.truncated_bytes,
        cold_open_ms: cold_ms,
        cold_scanned_bytes: cold.scanned_bytes,
        cold_truncated_bytes: cold.truncated_bytes,
    };
    let _ = std::fs::remove_dir_all(&a.dir);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "recovery after kill -9 with {:.1} GiB written: warm page cache {:.0} ms (scanned {} MiB), cold page cache {:.0} ms (scanned {} MiB)",
            r.written_bytes as f64 / (1u64 << 30) as f64,
            r.warm_open_ms,
            r.warm_scanned_bytes >> 20,
            r.cold_open_ms,
            r.cold_scanned_bytes >> 20
        );
    }
    Ok(())
}

fn fill(dir: &Path) -> Result<()> {
    let log = Log::open(dir, LogConfig::default())?;
    let template = make_batch(7, 1000, 1024);
    let mut written = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        log.append(template.clone())?;
        written += template.len() as u64;
        writeln!(out, "written {written}")?;
        out.flush()?;
    }
}

fn torture(
    dir: &Path,
    run: u32,
    threads: u32,
    segment_bytes: u64,
    checkpoint_bytes: u64,
) -> Result<()> {
    let config = LogConfig {
        segment_bytes,
        checkpoint_interval_bytes: checkpoint_bytes,
        index_interval_bytes: 1024,
        max_batch_bytes: 32 * 1024,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(dir, config)?);
    println!("open {}", log.high_watermark());
    std::io::stdout().flush()?;
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let tag = (u64::from(run) << 40) | (u64::from(t) << 32) | i;
                    let records = 1 + (i % 5) as usize;
                    let len = 16 + ((tag.wrapping_mul(2654435761) >> 7) % 900) as usize;
                    let mut b = BatchBuilder::new(1_700_000_000_000 + i as i64);
                    let values: Vec<_> = (0..records).map(|r| torture_value(tag, r, len)).collect();
                    for v in &values {
                        b.push(RecordSpec::value(v));
                    }
                    let info = log.append(b.build())?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {tag} {records} {len} {}", info.base_offset)?;
                    out.flush()?;
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("appender panicked")?;
    }
    Ok(())
}

//! Input and floor for scripts/bench-pipeline.
//!
//! `pipeline-bench gen --count N --out FILE` writes N JSON events of about 300 bytes, one a
//! line, the same for the same N (a fixed-seed generator). `amount` is a string "NN.5" with NN
//! uniform in 0..=49, so the benchmark's filter (`amount > 25.0`) keeps half of them.
//!
//! `pipeline-bench bare --input FILE [--rounds R]` does the pipeline's job in one thread with
//! serde_json, nothing else: for each line, parse into a `serde_json::Value`, rename `user` to
//! `user_id`, turn `amount` into a float, add `pipeline = "weir"`, keep the event when
//! `amount > 25.0`, serialize it with `serde_json::to_vec`. The file is read into memory
//! first; only the loop is timed. Prints one JSON line with the median of R rounds.

use std::io::Write;
use std::time::Instant;

use serde_json::{Map, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> ! {
    eprintln!(
        "usage: pipeline-bench gen --count N --out FILE\n       pipeline-bench bare --input FILE [--rounds R]"
    );
    std::process::exit(2)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .map(|i| args.get(i + 1).cloned().unwrap_or_else(|| usage()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") => {
            let count: u64 = arg(&args, "--count")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage());
            let out = arg(&args, "--out").unwrap_or_else(|| usage());
            generate(count, &out);
        }
        Some("bare") => {
            let input = arg(&args, "--input").unwrap_or_else(|| usage());
            let rounds: usize = arg(&args, "--rounds")
                .map(|s| s.parse().unwrap_or_else(|_| usage()))
                .unwrap_or(3);
            bare(&input, rounds.max(1));
        }
        _ => usage(),
    }
}

/// splitmix64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const SERVICES: &[&str] = &["checkout", "payments", "search", "accounts", "inventory", "shipping"];
const LEVELS: &[&str] = &["info", "info", "info", "warn", "error", "debug"];
const REGIONS: &[&str] = &["eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1"];
const MESSAGES: &[&str] = &[
    "order placed and payment authorised for the customer basket of the day",
    "request served from the edge cache after a revalidation with the origin",
    "retrying the upstream call after a connection reset by the remote peer",
    "user session refreshed, access token rotated and an audit entry written",
    "slow query on the orders table exceeded the warning threshold of 250 ms",
];

fn generate(count: u64, out: &str) {
    let mut rng = Rng(0x5EED_CAFE);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out).unwrap());
    let base_ts: u64 = 1_764_000_000_000;
    let mut bytes = 0u64;
    for i in 0..count {
        let v = serde_json::json!({
            "user": format!("user-{:06}", rng.below(1_000_000)),
            "amount": format!("{}.5", rng.below(50)),
            "ts": base_ts + i * 3 + rng.below(3),
            "host": format!("web-{:02}.prod.internal", rng.below(40)),
            "service": rng.pick(SERVICES),
            "level": rng.pick(LEVELS),
            "message": rng.pick(MESSAGES),
            "region": rng.pick(REGIONS),
            "request_id": format!("{:016x}{:016x}", rng.next(), rng.next()),
            "latency_ms": rng.below(2000),
        });
        let line = serde_json::to_vec(&v).unwrap();
        bytes += line.len() as u64 + 1;
        w.write_all(&line).unwrap();
        w.write_all(b"\n").unwrap();
    }
    w.flush().unwrap();
    println!(
        "{{\"events\":{count},\"bytes\":{bytes},\"mean_event_bytes\":{:.1}}}",
        bytes as f64 / count.max(1) as f64 - 1.0
    );
}

/// The job on one event: `Some(serialized)` when the filter keeps it.
fn process(line: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(line).ok()?;
    let m: &mut Map<String, Value> = v.as_object_mut()?;
    let user = m.remove("user").unwrap_or(Value::Null);
    m.insert("user_id".into(), user);
    let amount: f64 = m.get("amount")?.as_str()?.parse().ok()?;
    m.insert("amount".into(), Value::from(amount));
    m.insert("pipeline".into(), Value::from("weir"));
    if amount > 25.0 {
        Some(serde_json::to_vec(&v).unwrap())
    } else {
        None
    }
}

fn bare(input: &str, rounds: usize) {
    let data = std::fs::read(input).unwrap();
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut runs = Vec::new();
    let (mut kept, mut out_bytes) = (0u64, 0u64);
    for _ in 0..rounds {
        (kept, out_bytes) = (0, 0);
        let start = Instant::now();
        for l in &lines {
            if let Some(out) = process(std::hint::black_box(l)) {
                kept += 1;
                out_bytes += out.len() as u64;
                std::hint::black_box(out);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        runs.push(lines.len() as f64 / secs);
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let runs: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "{{\"events\":{},\"kept\":{kept},\"out_bytes\":{out_bytes},\"events_per_sec\":{median:.0},\"runs\":[{}]}}",
        lines.len(),
        runs.join(",")
    );
}

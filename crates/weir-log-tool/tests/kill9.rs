//! The real thing: a child process appends at `always` from several threads and reports every
//! acknowledged batch; we SIGKILL it at random moments, reopen the log, and check that every
//! acknowledged record is there, intact, at its offset, and that nothing corrupt is served.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use weir_batch::{Batches, Records};
use weir_log::{Log, LogConfig};
use weir_log_tool::torture_value;

/// (tag, records, value length) of each acknowledged batch, by base offset.
type Acks = BTreeMap<u64, (u64, usize, usize)>;

fn kills() -> u32 {
    std::env::var("WEIR_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// Runs one child until it is killed; returns its acknowledgements and whether it got as far
/// as opening the log.
fn run_child(dir: &Path, run: u32, kill_after: Duration) -> (Vec<(u64, u64, usize, usize)>, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir-log-tool"))
        .args(["torture", "--run", &run.to_string(), "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn torture child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status:?}"
    );
    reader.join().unwrap();
    let mut acks = Vec::new();
    let mut opened = false;
    for line in rx.try_iter() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("open") => opened = true,
            Some("ack") => {
                let f: Vec<u64> = parts.filter_map(|p| p.parse().ok()).collect();
                if let [tag, n, len, base] = f[..] {
                    acks.push((base, tag, n as usize, len as usize));
                }
            }
            // A line cut by the kill is not an acknowledgement the child finished reporting.
            _ => {}
        }
    }
    (acks, opened)
}

/// Reads the whole log, checking every batch, and returns (offset, value) of every record.
fn read_everything(log: &Log) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let hwm = log.high_watermark();
    while offset < hwm {
        let r = log.read(offset, 1 << 20).expect("read of recovered log");
        assert!(!r.is_empty());
        for chunk in &r.chunks {
            for b in Batches::new(chunk) {
                let (_, bytes) = b.expect("a corrupt batch was served");
                for rec in Records::new(bytes).expect("records") {
                    let rec = rec.expect("record");
                    assert_eq!(
                        rec.offset as u64,
                        out.len() as u64,
                        "offsets are contiguous"
                    );
                    out.push((rec.offset as u64, rec.value.unwrap().to_vec()));
                    offset = rec.offset as u64 + 1;
                }
            }
        }
    }
    out
}

#[test]
fn kill_minus_nine_never_loses_an_acknowledged_record() {
    let dir = tempfile_dir();
    let seed: u64 = std::env::var("WEIR_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill -9 torture: seed {seed} (set WEIR_KILL9_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acks: Acks = BTreeMap::new();
    let mut killed_during_open = 0;
    let started = Instant::now();
    let rounds = kills();
    for run in 0..rounds {
        // Mostly mid-append; sometimes so early that the kill lands during recovery.
        let after = if rng.random_ratio(1, 8) {
            Duration::from_micros(rng.random_range(500..5_000))
        } else {
            Duration::from_millis(rng.random_range(10..80))
        };
        let (new_acks, opened) = run_child(&dir, run, after);
        if !opened {
            killed_during_open += 1;
        }
        for (base, tag, n, len) in new_acks {
            let previous = acks.insert(base, (tag, n, len));
            assert!(previous.is_none(), "offset {base} acknowledged twice");
        }

        let log = Log::open(&dir, LogConfig::default()).expect("reopen after kill -9");
        let records = read_everything(&log);
        for (&base, &(tag, n, len)) in &acks {
            for i in 0..n {
                let offset = (base + i as u64) as usize;
                assert!(
                    offset < records.len(),
                    "run {run}: acknowledged offset {offset} lost (log ends at {})",
                    records.len()
                );
                assert_eq!(
                    records[offset].1,
                    torture_value(tag, i, len),
                    "run {run}: record at {offset} differs"
                );
            }
        }
        // Alternate clean and unclean hand-over to the next child.
        if run % 2 == 0 {
            log.close().unwrap();
        }
    }
    eprintln!(
        "{rounds} kills ({killed_during_open} before the child had opened the log), {} batches acknowledged, {:.1}s",
        acks.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        acks.len() > rounds as usize,
        "the children should acknowledge plenty of appends"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-kill9-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

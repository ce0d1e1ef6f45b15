//! Starts the real `weir` binary on 127.0.0.1:0 for integration tests.

pub mod raw_subscriber;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A two-thread runtime for a test's async clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub struct Server {
    pub child: Child,
    /// Native protocol address.
    pub addr: String,
    /// Kafka protocol address.
    pub kafka: String,
    /// HTTP address (host:port).
    pub http: String,
    /// TLS listeners' addresses by door (`native`, `kafka`, `http`), for those started.
    pub tls: std::collections::BTreeMap<String, String>,
}

impl Server {
    /// Starts `weir serve` with its data in `dir` and extra `WEIR_*` settings.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with_tls(dir, env, &[])
    }

    /// Starts `weir serve` with the configuration `toml`, written to `dir/weir.toml` (its
    /// relative paths start in `dir`), and its data in `dir/data`.
    pub fn start_with_config(dir: &Path, toml: &str) -> Server {
        let config = dir.join("weir.toml");
        std::fs::write(&config, toml).unwrap();
        Self::start(
            &dir.join("data"),
            &[("WEIR_CONFIG", config.to_str().unwrap())],
        )
    }

    /// As [`Server::start`], and waits for the TLS listeners of `tls_doors` too.
    pub fn start_with_tls(dir: &Path, env: &[(&str, &str)], tls_doors: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("serve")
            .env("WEIR_DATA_DIR", dir)
            .env("WEIR_NATIVE__LISTEN", "127.0.0.1:0")
            .env("WEIR_KAFKA__LISTEN", "127.0.0.1:0")
            .env("WEIR_HTTP__LISTEN", "127.0.0.1:0")
            .env("WEIR_LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start weir serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The native line, then the Kafka and HTTP lines; keep draining so the server never blocks
            // on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addr = String::new();
        let mut kafka = String::new();
        let mut http = String::new();
        let mut tls = std::collections::BTreeMap::new();
        // A door turned off prints no line.
        let off = |door: &str| env.contains(&(door, "false"));
        let (kafka_on, http_on) = (!off("WEIR_KAFKA__ENABLED"), !off("WEIR_HTTP__ENABLED"));
        while addr.is_empty()
            || (kafka_on && kafka.is_empty())
            || (http_on && http.is_empty())
            || tls_doors.iter().any(|d| !tls.contains_key(*d))
        {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("weir printed its listening lines");
            if let Some(a) = line.strip_prefix("weir listening native=") {
                addr = a.to_string();
            } else if let Some(a) = line.strip_prefix("weir listening kafka=") {
                kafka = a.to_string();
            } else if let Some(a) = line.strip_prefix("weir listening http=") {
                http = a.to_string();
            } else if let Some((door, a)) = line
                .strip_prefix("weir listening ")
                .and_then(|l| l.split_once("_tls="))
            {
                tls.insert(door.to_string(), a.to_string());
            }
        }
        Server {
            child,
            addr,
            kafka,
            http,
            tls,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code =
            wait(&mut self.child, Duration::from_secs(30)).expect("weir exited after SIGTERM");
        assert!(code.success(), "weir exited with {code:?}");
    }

    /// Waits for the server to exit by itself (after a SIGTERM sent elsewhere), cleanly.
    pub fn wait_exit(mut self) {
        let code = wait(&mut self.child, Duration::from_secs(30)).expect("weir exited");
        assert!(code.success(), "weir exited with {code:?}");
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs the `weir` CLI with `args` against `addr`, feeding `stdin`; returns (status, stdout, stderr).
pub fn cli(addr: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).env("WEIR_ADDR", addr);
    run(cmd, stdin)
}

/// Runs `cmd`, feeding `stdin`; returns (status, stdout, stderr). Killed (SIGKILL), and the
/// test failed with what it printed, if it has not finished within two minutes.
pub fn run(mut cmd: Command, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Fed from a thread: a child that does not read its input must not stall the timer.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !waiter.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let late = !waiter.is_finished();
    if late {
        // Not reaped yet, unless it ended this very moment: the pid is still its own.
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let out = waiter.join().unwrap().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !late,
        "{cmd:?} did not finish within 120 s\nstdout: {stdout}\nstderr: {stderr}"
    );
    (out.status.success(), stdout, stderr)
}

/// A batch of records with these values.
pub fn batch(values: &[&[u8]]) -> bytes::Bytes {
    let mut b = weir_batch::BatchBuilder::new(1_700_000_000_000);
    for v in values {
        b.push(weir_batch::RecordSpec::value(v));
    }
    bytes::Bytes::from(b.build())
}

/// The Python interpreter of the test venv, with the clients of `tests/py/requirements.txt`
/// (Kafka clients, websockets): `WEIR_TEST_PYTHON` (set by scripts/test), else `target/pyenv`,
/// made here on first use — built aside and renamed into place, so tests racing here never see
/// a half-made venv.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("WEIR_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join("target/pyenv");
    let py = venv.join("bin/python");
    let works = |py: &PathBuf| {
        Command::new(py)
            .args([
                "-c",
                "import websockets, kafka, aiokafka, confluent_kafka, selenium",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(&py) {
        return py;
    }
    let req = root.join("crates/weir/tests/py/requirements.txt");
    let tmp = root.join(format!("target/pyenv.tmp.{}", std::process::id()));
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&tmp)
        .status()
        .unwrap()
        .success()
        && Command::new(tmp.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&req)
            .status()
            .unwrap()
            .success();
    assert!(ok, "could not make the Python venv (scripts/test does it)");
    let _ = std::fs::copy(&req, tmp.join("requirements.txt"));
    if std::fs::rename(&tmp, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(works(&py), "{} lacks the test clients", py.display());
    py
}

/// The Node.js interpreter for `tests/node/kafka_clients.mjs`: `WEIR_TEST_NODE` if set, else
/// `node` from PATH. Unlike the Python venv, nothing is installed here: the clients in
/// `tests/node/node_modules` come from `npm ci` against the committed lock file, which
/// scripts/test runs, and a test without them or without Node.js fails saying so.
pub fn node() -> PathBuf {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules");
    assert!(
        modules.join("kafkajs").is_dir() && modules.join("@platformatic/kafka").is_dir(),
        "{} lacks the Node.js Kafka clients: run scripts/test, which installs them \
         (npm ci --prefix crates/weir/tests/node)",
        modules.display()
    );
    if let Some(node) = std::env::var_os("WEIR_TEST_NODE") {
        return PathBuf::from(node);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("node"))
        .find(|node| node.is_file())
        .expect("no node on PATH: scripts/test installs Node.js (or set WEIR_TEST_NODE)")
}

/// Runs a client script that reports in JSON on its last line, and returns that line: the
/// test fails, naming `what`, when the script does or its report is not JSON.
pub fn json_report(cmd: Command, what: &str) -> serde_json::Value {
    let (ok, out, err) = run(cmd, "");
    assert!(ok, "{what} failed:\n{out}\n{err}");
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: {e}: {out}\n{err}"))
}

/// A JSON array of strings.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// `prefix-0` … `prefix-(n-1)`: the values the client scripts produce.
pub fn names(prefix: &str, n: usize) -> std::collections::BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// One record of a compacted topic's partition: offset, key, value (`None`: a tombstone).
pub type Rec = (u64, String, Option<String>);

/// Checks what a snapshot-then-live subscription to one partition delivered: `snapshot`
/// before its end marker, `live` after, against every record `written` to the partition.
///
/// The snapshot holds, in offset order, the latest record of each key below `live_from`
/// (tombstoned keys left out). Live records are written records from `live_from` on, in
/// order, none twice. The cleaner may remove a record the subscriber had not read yet once a
/// later record of its key exists (Kafka's semantics for compacted topics), so a key's
/// snapshot record may be replaced by its later live one, and superseded live records may be
/// missing; the last record of every key never is. So the subscriber ends with every key's
/// latest value, exactly.
pub fn check_snapshot_then_live(written: &[Rec], live_from: u64, snapshot: &[Rec], live: &[Rec]) {
    use std::collections::{BTreeMap, BTreeSet};
    let latest = |recs: &mut dyn Iterator<Item = &Rec>| {
        let mut m: BTreeMap<String, Rec> = BTreeMap::new();
        for r in recs {
            m.insert(r.1.clone(), r.clone());
        }
        m
    };
    let below: BTreeMap<String, Rec> = latest(&mut written.iter().filter(|w| w.0 < live_from));
    let all: BTreeSet<&Rec> = written.iter().collect();
    let later_keys: BTreeSet<&str> = written
        .iter()
        .filter(|w| w.0 >= live_from)
        .map(|w| w.1.as_str())
        .collect();
    assert!(
        snapshot.windows(2).all(|w| w[0].0 < w[1].0),
        "snapshot out of order"
    );
    for r in snapshot {
        assert!(
            r.0 < live_from,
            "snapshot record at or past live_from: {r:?}"
        );
        assert!(r.2.is_some(), "a tombstone in the snapshot: {r:?}");
        assert_eq!(
            below.get(&r.1),
            Some(r),
            "not the key's latest below live_from"
        );
    }
    let in_snapshot: BTreeSet<&str> = snapshot.iter().map(|r| r.1.as_str()).collect();
    for (k, r) in &below {
        if r.2.is_some() && !in_snapshot.contains(k.as_str()) {
            assert!(
                later_keys.contains(k.as_str()),
                "key {k} missing from the snapshot with nothing later: {r:?}"
            );
        }
    }
    assert!(
        live.windows(2).all(|w| w[0].0 < w[1].0),
        "live records out of order or twice"
    );
    for r in live {
        assert!(r.0 >= live_from, "live record below live_from: {r:?}");
        assert!(all.contains(r), "a live record nobody wrote: {r:?}");
    }
    let last_after = latest(&mut written.iter().filter(|w| w.0 >= live_from));
    let live_set: BTreeSet<&Rec> = live.iter().collect();
    for r in last_after.values() {
        assert!(
            live_set.contains(r),
            "the last record of key {} is missing: {r:?}",
            r.1
        );
    }
    // Applied in order, the subscriber holds every key's latest value.
    let held = latest(&mut snapshot.iter().chain(live));
    let held: BTreeMap<&String, &Option<String>> = held
        .iter()
        .filter(|(_, r)| r.2.is_some())
        .map(|(k, r)| (k, &r.2))
        .collect();
    let truth = latest(&mut written.iter());
    let truth: BTreeMap<&String, &Option<String>> = truth
        .iter()
        .filter(|(_, r)| r.2.is_some())
        .map(|(k, r)| (k, &r.2))
        .collect();
    assert_eq!(held, truth, "the subscriber's view of every key");
}

//! The binary as its users meet it first: errors they can read, a server that starts under
//! Kubernetes' injected environment, and logs without colour codes when they go to a file.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Server, run};

#[test]
fn cli_errors_are_a_line_or_two_with_a_hint_and_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["produce", "nosuch"])
        .env("WEIR_ADDR", &server.addr)
        .env("RUST_BACKTRACE", "1");
    let (ok, _, err) = run(cmd, "a\n");
    assert!(!ok);
    assert!(err.lines().count() <= 3, "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert!(err.contains("\"nosuch\" does not exist"), "{err}");
    assert!(err.contains("weir topic create nosuch"), "{err}");

    // --verbose gives the detail.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["topic", "list", "--verbose"])
        .env("WEIR_ADDR", "127.0.0.1:1")
        .env("RUST_BACKTRACE", "1");
    let (ok, _, err) = run(cmd, "");
    assert!(!ok);
    assert!(err.contains("backtrace"), "{err}");
    server.stop();
}

#[test]
fn kubernetes_service_variables_do_not_stop_the_server_and_logs_to_a_file_are_plain() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("serve")
        .env("WEIR_DATA_DIR", dir.path().join("data"))
        .env("WEIR_NATIVE__LISTEN", "127.0.0.1:0")
        .env("WEIR_KAFKA__LISTEN", "127.0.0.1:0")
        .env("WEIR_HTTP__LISTEN", "127.0.0.1:0")
        .env("WEIR_LOG__LEVEL", "info")
        .env_remove("RUST_LOG")
        // What Kubernetes injects into every pod of a namespace with a Service named `weir`.
        .env("WEIR_PORT", "tcp://10.96.0.7:9092")
        .env("WEIR_PORT_9092_TCP", "tcp://10.96.0.7:9092")
        .env("WEIR_PORT_9092_TCP_ADDR", "10.96.0.7")
        .env("WEIR_PORT_9092_TCP_PORT", "9092")
        .env("WEIR_PORT_9092_TCP_PROTO", "tcp")
        .env("WEIR_SERVICE_HOST", "10.96.0.7")
        .env("WEIR_SERVICE_PORT", "9092")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while !text.contains("weir is serving") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "weir serve exited: {text}"
        );
        assert!(Instant::now() < deadline, "weir did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
        text.clear();
        std::fs::File::open(&log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    assert!(text.contains("WEIR_PORT_9092_TCP_ADDR"), "warned: {text}");
    assert!(!text.contains('\x1b'), "colour codes in a log file: {text}");
}

/// `weir produce` reading from a pipe the test holds open, against `addr`.
fn producer(addr: &str, topic: &str, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["produce", topic])
        .args(extra)
        .env("WEIR_ADDR", addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The values in partition 0 of `topic`, waiting up to `wait` for at least `want` of them.
fn values(addr: &str, topic: &str, want: usize, wait: Duration) -> Vec<String> {
    crate::common::rt().block_on(async {
        let c = weir_client::Client::connect(addr, "reader").await.unwrap();
        let mut consumer =
            weir_client::PartitionConsumer::new(c, topic, 0, weir_client::Start::Earliest)
                .await
                .unwrap();
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
                got.push(String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap());
            }
        }
        got
    })
}

fn finish(child: std::process::Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn produce_streams_slow_input_as_it_comes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (ok, _, err) = crate::common::cli(&server.addr, &["topic", "create", "logs"], "");
    assert!(ok, "{err}");
    let mut child = producer(&server.addr, "logs", &[]);
    let mut stdin = child.stdin.take().unwrap();
    // As `tail -f` does: a line, and the pipe stays open.
    stdin.write_all(b"first line\n").unwrap();
    stdin.flush().unwrap();
    let got = values(&server.addr, "logs", 1, Duration::from_secs(10));
    assert_eq!(
        got,
        ["first line"],
        "a line arrives while its input stays open"
    );
    stdin.write_all(b"second line\r\n").unwrap();
    drop(stdin);
    let (ok, err) = finish(child);
    assert!(ok, "{err}");
    assert_eq!(
        values(&server.addr, "logs", 2, Duration::from_secs(10)),
        ["first line", "second line"]
    );
    server.stop();
}

#[test]
fn produce_rides_out_a_server_restart_before_its_first_batch() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // Fixed ports, so the restarted server is where the producer dialled.
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let (native, kafka, http) = (port(), port(), port());
    let env = [
        ("WEIR_NATIVE__LISTEN", native.as_str()),
        ("WEIR_KAFKA__LISTEN", kafka.as_str()),
        ("WEIR_HTTP__LISTEN", http.as_str()),
    ];
    let server = Server::start(dir.path(), &env);
    let (ok, _, err) = crate::common::cli(&server.addr, &["topic", "create", "t"], "");
    assert!(ok, "{err}");
    let mut child = producer(&server.addr, "t", &[]);
    std::thread::sleep(Duration::from_millis(300));
    server.stop();
    // Read while the server is down: the first batch (and its metadata lookup) must wait for
    // the server to come back, not fail and drop the lines.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"a\nb\nc\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let server = Server::start(dir.path(), &env);
    drop(stdin);
    let (ok, err) = finish(child);
    assert!(ok, "{err}");
    assert_eq!(
        values(&server.addr, "t", 3, Duration::from_secs(10)),
        ["a", "b", "c"]
    );
    server.stop();
}

#[test]
fn produce_stops_at_the_first_batch_that_fails_for_good_and_says_what_was_written() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (ok, _, err) = crate::common::cli(
        &server.addr,
        &["topic", "create", "small", "--max-batch-bytes", "1024"],
        "",
    );
    assert!(ok, "{err}");
    let mut child = producer(&server.addr, "small", &[]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"a\nb\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(
        values(&server.addr, "small", 2, Duration::from_secs(10)),
        ["a", "b"]
    );
    // A record the topic refuses (over its batch limit), then more input, and the pipe stays
    // open: the producer must stop by itself, without reading on.
    stdin.write_all(&[b'x'; 4096]).unwrap();
    stdin.write_all(b"\nc\n").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "weir produce still running after a batch failed for good"
        );
        let _ = stdin.write_all(b"more\n");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let (ok, err) = finish(child);
    assert!(!ok);
    assert!(
        err.contains("line 3 could not be written to small"),
        "{err}"
    );
    // What it says was written is what the topic holds: a, b and any lines sent after the
    // refused one before the producer learnt of the refusal.
    let written: usize = err
        .split(" of the ")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {err}"));
    let stored = values(&server.addr, "small", written + 1, Duration::from_secs(1));
    assert_eq!(stored.len(), written, "{err}: {stored:?}");
    assert_eq!(stored[..2], ["a", "b"]);
    assert!(!stored.iter().any(|v| v.starts_with('x')), "{stored:?}");
    server.stop();
}

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

//! Authentication against the real binary and real clients: users made with `weir user`,
//! then kcat, confluent-kafka, kafka-python and aiokafka over SASL (PLAIN, SCRAM-SHA-256,
//! SCRAM-SHA-512; over TLS and plain TCP; `tests/py/sasl_clients.py`), and the native CLI
//! with `--user`; curl and the Python websockets client with API tokens and JWTs (HS256, ES256
//! from a PEM key and from a JWKS file). Then what a hostile peer meets on the Kafka door: requests before
//! authenticating, messages out of order, oversized, replayed, a connection that never
//! authenticates, and the per-address limit on failures.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, json_report, python, run};

/// `weir user ...` against the users file of a data directory.
fn user(data: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("user")
        .args(args)
        .arg("--users-file")
        .arg(data.join("auth/users.json"));
    run(cmd, stdin)
}

/// The native CLI as `who` (user and password), over TLS trusting `ca`.
fn native(
    addr: &str,
    ca: &Path,
    who: Option<(&str, &str)>,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args)
        .env("WEIR_ADDR", addr)
        .env("WEIR_TLS_CA", ca)
        .env_remove("WEIR_USER")
        .env_remove("WEIR_PASSWORD");
    if let Some((u, p)) = who {
        cmd.env("WEIR_USER", u).env("WEIR_PASSWORD", p);
    }
    run(cmd, "")
}

fn kcat(broker: &str, settings: &[&str], args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", broker, "-m", "5"]);
    for s in settings {
        cmd.args(["-X", s]);
    }
    cmd.args(args);
    run(cmd, stdin)
}

const ALICE: &str = "alice-password-1";

#[test]
fn kafka_and_native_clients_authenticate_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tls::pki(dir.path(), "auth");
    let data = dir.path().join("data");
    // A user made before the server starts, its password from standard input.
    let (ok, out, err) = user(
        &data,
        &["add", "alice", "--password-stdin"],
        &format!("{ALICE}\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "added user alice");
    let (ok, _, err) = user(
        &data,
        &["add", "alice", "--password-stdin"],
        "another-password\n",
    );
    assert!(!ok && err.contains("exists"), "{err}");
    let stored = std::fs::read_to_string(data.join("auth/users.json")).unwrap();
    assert!(!stored.contains(ALICE), "the password itself is not stored");

    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    let env = [
        ("WEIR_AUTH__ENABLED", "true"),
        // Failed logins below come fast and from one address; the limit has its own test.
        ("WEIR_AUTH__FAILURES_PER_MINUTE", "1000"),
        ("WEIR_TOPICS__AUTO_CREATE", "false"),
        ("WEIR_TLS__CERT", cert.as_str()),
        ("WEIR_TLS__KEY", key.as_str()),
        ("WEIR_NATIVE__TLS_LISTEN", "127.0.0.1:0"),
        ("WEIR_KAFKA__TLS_LISTEN", "127.0.0.1:0"),
    ];
    let server = Server::start_with_tls(&data, &env, &["native", "kafka"]);
    let native_tls = server.tls["native"].clone();
    let kafka_tls = server.tls["kafka"].clone();

    // The native CLI: refused without a user (with the reason and what to do), and with a
    // wrong password; served as alice, over SCRAM-SHA-512 (the default) and PLAIN.
    let (ok, _, err) = native(&native_tls, &pki.ca, None, &["topic", "create", "auth"]);
    assert!(
        !ok && err.contains("AuthenticationRequired") && err.contains("--user"),
        "{err}"
    );
    let (ok, _, err) = native(
        &native_tls,
        &pki.ca,
        Some(("alice", "nope")),
        &["topic", "create", "auth"],
    );
    assert!(
        !ok && err.contains("AuthenticationFailed") && err.contains("invalid credentials"),
        "{err}"
    );
    let (ok, _, err) = native(
        &native_tls,
        &pki.ca,
        Some(("alice", ALICE)),
        &["topic", "create", "auth"],
    );
    assert!(ok, "{err}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["topic", "list", "--sasl-mechanism", "plain"])
        .env("WEIR_ADDR", &native_tls)
        .env("WEIR_TLS_CA", &pki.ca)
        .env("WEIR_USER", "alice")
        .env("WEIR_PASSWORD", ALICE);
    let (ok, out, err) = run(cmd, "");
    assert!(ok && out.contains("auth"), "{out}{err}");

    // kcat: PLAIN and SCRAM-SHA-512 over TLS, SCRAM-SHA-256 over plain TCP; nothing without
    // SASL or with a wrong password.
    let ca = format!("ssl.ca.location={}", pki.ca.display());
    let sasl = |protocol: &str, mechanism: &str, password: &str| -> Vec<String> {
        vec![
            format!("security.protocol={protocol}"),
            format!("sasl.mechanisms={mechanism}"),
            "sasl.username=alice".to_string(),
            format!("sasl.password={password}"),
            ca.clone(),
        ]
    };
    let s = sasl("SASL_SSL", "PLAIN", ALICE);
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    let (ok, _, err) = kcat(
        &kafka_tls,
        &s,
        &["-P", "-t", "auth", "-K:"],
        "a:1\nb:2\nc:3\n",
    );
    assert!(ok, "{err}");
    let s = sasl("SASL_SSL", "SCRAM-SHA-512", ALICE);
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    let (ok, out, err) = kcat(
        &kafka_tls,
        &s,
        &["-C", "-t", "auth", "-e", "-f", "%k=%s\n"],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "a=1\nb=2\nc=3\n");
    let s = sasl("SASL_PLAINTEXT", "SCRAM-SHA-256", ALICE);
    let s: Vec<&str> = s[..4].iter().map(String::as_str).collect();
    let (ok, out, err) = kcat(&server.kafka, &s, &["-L", "-t", "auth"], "");
    assert!(ok && out.contains("topic \"auth\""), "{out}{err}");
    let (ok, out, err) = kcat(&server.kafka, &[], &["-L"], "");
    assert!(!ok && !out.contains("auth"), "{out}{err}");
    let s = sasl("SASL_SSL", "SCRAM-SHA-512", "wrong");
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    let (ok, out, err) = kcat(&kafka_tls, &s, &["-L"], "");
    assert!(!ok && err.contains("invalid credentials"), "{out}{err}");

    // The Python clients: confluent-kafka, kafka-python, aiokafka.
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/sasl_clients.py"
    ))
    .args([&server.kafka, &kafka_tls])
    .arg(&pki.ca)
    .args(["alice", ALICE]);
    let report = json_report(cmd, "sasl_clients.py");
    for (client, tag) in [
        ("confluent_plain", "cp"),
        ("confluent_scram512", "cs"),
        ("kafka_python_scram256", "kp"),
        ("aiokafka_scram512", "ak"),
    ] {
        let read = common::strings(&report[client]["read"]);
        let expected: Vec<String> = (0..5).map(|i| format!("{tag}-{i}")).collect();
        assert_eq!(read, expected, "{client}: {report}");
        let wrong = report[format!("{client}_wrong")]["error"].as_str().unwrap();
        assert!(!wrong.is_empty(), "{client}: {report}");
    }
    let confluent_wrong = report["confluent_scram512_wrong"]["error"]
        .as_str()
        .unwrap();
    assert!(
        confluent_wrong.contains("invalid credentials"),
        "{confluent_wrong}"
    );

    // A user added while the server runs can log in within a few seconds (the file is read
    // again when it changes); once removed, it cannot open a new connection.
    let (ok, out, err) = user(&data, &["add", "bob"], "");
    assert!(ok, "{err}");
    let bob = out.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(bob.len(), 32, "{out}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, _, err) = native(
            &native_tls,
            &pki.ca,
            Some(("bob", &bob)),
            &["topic", "list"],
        );
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "bob never got in: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, out, _) = user(&data, &["list"], "");
    assert!(ok && out.contains("alice") && out.contains("bob"), "{out}");
    let (ok, _, err) = user(&data, &["remove", "bob"], "");
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, _, err) = native(
            &native_tls,
            &pki.ca,
            Some(("bob", &bob)),
            &["topic", "list"],
        );
        if !ok {
            assert!(err.contains("AuthenticationFailed"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "bob still gets in");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A users file broken on disk keeps the users in force.
    std::fs::write(data.join("auth/users.json"), "{ not json").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, _, err) = native(
        &native_tls,
        &pki.ca,
        Some(("alice", ALICE)),
        &["topic", "list"],
    );
    assert!(ok, "{err}");
    server.stop();
}

/// A Kafka request frame: size, header v1 (key, version, correlation id, client id), body.
fn request(api: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(api.to_be_bytes());
    f.extend(version.to_be_bytes());
    f.extend(7i32.to_be_bytes());
    f.extend(4i16.to_be_bytes());
    f.extend(b"evil");
    f.extend(body);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend(f);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as i16).to_be_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn bytes(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as i32).to_be_bytes().to_vec();
    v.extend(b);
    v
}

const HANDSHAKE: i16 = 17;
const AUTHENTICATE: i16 = 36;

/// The next response's body (after the correlation id), or `None` once the server closed.
fn response(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body[4..].to_vec())
}

/// Whether the server closes `s` within `within`, sending nothing more.
fn closed(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// SaslAuthenticate v1's answer: error code, message, auth bytes.
fn authenticate_answer(body: &[u8]) -> (i16, String, Vec<u8>) {
    let error = i16::from_be_bytes([body[0], body[1]]);
    let mlen = i16::from_be_bytes([body[2], body[3]]);
    let (message, rest) = if mlen < 0 {
        (String::new(), &body[4..])
    } else {
        let m = mlen as usize;
        (
            String::from_utf8_lossy(&body[4..4 + m]).into_owned(),
            &body[4 + m..],
        )
    };
    let blen = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    (error, message, rest[4..4 + blen].to_vec())
}

/// Connects and starts `mechanism` (SaslHandshake v1), which must be accepted.
fn start(addr: &str, mechanism: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(HANDSHAKE, 1, &string(mechanism)))
        .unwrap();
    let body = response(&mut s).expect("a handshake answer");
    assert_eq!(i16::from_be_bytes([body[0], body[1]]), 0, "{mechanism}");
    s
}

fn step(s: &mut TcpStream, message: &[u8]) -> Option<(i16, String, Vec<u8>)> {
    s.write_all(&request(AUTHENTICATE, 1, &bytes(message)))
        .unwrap();
    response(s).map(|b| authenticate_answer(&b))
}

#[test]
fn hostile_sasl_messages_are_refused_and_a_guessing_address_is_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, err) = user(
        &data,
        &["add", "alice", "--password-stdin"],
        &format!("{ALICE}\n"),
    );
    assert!(ok, "{err}");
    let server = Server::start(
        &data,
        &[
            ("WEIR_AUTH__ENABLED", "true"),
            ("WEIR_AUTH__TIMEOUT_MS", "1500"),
            ("WEIR_AUTH__FAILURES_PER_MINUTE", "4"),
        ],
    );
    let addr = server.kafka.clone();

    // Any request but ApiVersions and SASL before authenticating closes the connection.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&request(3, 1, &0i32.to_be_bytes())).unwrap();
    assert!(
        closed(&mut s, Duration::from_secs(5)),
        "Metadata before SASL"
    );

    // SaslAuthenticate before SaslHandshake: ILLEGAL_SASL_STATE, then closed.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(AUTHENTICATE, 1, &bytes(b"\0alice\0x")))
        .unwrap();
    let (error, message, _) = authenticate_answer(&response(&mut s).unwrap());
    assert_eq!(error, 34, "{message}");
    assert!(closed(&mut s, Duration::from_secs(5)));

    // An unknown mechanism: UNSUPPORTED_SASL_MECHANISM with those on offer, then closed.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(HANDSHAKE, 1, &string("GSSAPI")))
        .unwrap();
    let body = response(&mut s).unwrap();
    assert_eq!(i16::from_be_bytes([body[0], body[1]]), 33);
    let listed = String::from_utf8_lossy(&body);
    for m in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        assert!(listed.contains(m), "{listed}");
    }
    assert!(closed(&mut s, Duration::from_secs(5)));

    // A connection that never authenticates (silent, or stuck inside a request whose body
    // never comes) is closed after the timeout.
    for first in [&b""[..], &100i32.to_be_bytes()[..]] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(first).unwrap();
        let t = Instant::now();
        assert!(closed(&mut s, Duration::from_secs(8)), "{first:?}");
        assert!(
            t.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }

    // Before authenticating, a large request is refused as soon as its size is read, on the
    // Kafka door (at most 512 KiB) and the native one (64 KiB: FRAME_TOO_LARGE, then closed).
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
    assert!(
        closed(&mut s, Duration::from_secs(5)),
        "a 1 MiB Kafka request"
    );
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
    s.write_all(&[0u8; 16]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).contains("exceeds the limit of 65536"),
        "a 1 MiB native frame: {answer:?}"
    );

    // So is a native connection that never authenticates.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let t = Instant::now();
    assert!(closed(&mut s, Duration::from_secs(8)), "native");
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );

    // A SaslAuthenticate frame cut short (its bytes field claims more than the frame holds)
    // is not understood: the connection is closed, nothing else happens.
    let mut s = start(&addr, "PLAIN");
    let mut frame = request(AUTHENTICATE, 1, &bytes(b"\0alice\0x"));
    let cut = frame.len() - 4;
    frame.truncate(cut);
    frame[..4].copy_from_slice(&((cut - 4) as i32).to_be_bytes());
    s.write_all(&frame).unwrap();
    assert!(
        closed(&mut s, Duration::from_secs(5)),
        "a truncated SaslAuthenticate"
    );

    // Failures from here on count against 127.0.0.1 (4 allowed at once).
    // 1: an oversized SASL message.
    let mut s = start(&addr, "SCRAM-SHA-256");
    let (error, message, _) = step(&mut s, &vec![b'n'; 5000]).unwrap();
    assert_eq!(error, 58, "{message}");
    assert!(message.contains("5000 bytes"), "{message}");
    assert!(closed(&mut s, Duration::from_secs(5)));

    // 2: a SCRAM exchange replayed. A real one first (it succeeds, and the server proves it
    // holds the credential), then its client-first and client-final again on a new
    // connection: the server's nonce differs, so the old proof does not pass.
    let hash = weir_auth::ScramHash::Sha512;
    let mut client = weir_auth::scram_client::ScramClient::new(hash, "alice", ALICE);
    let mut s = start(&addr, "SCRAM-SHA-512");
    let first = client.client_first();
    let (error, _, server_first) = step(&mut s, &first).unwrap();
    assert_eq!(error, 0);
    let last = client.client_final(&server_first).unwrap();
    let (error, message, server_final) = step(&mut s, &last).unwrap();
    assert_eq!(error, 0, "{message}");
    client.verify_server(&server_final).unwrap();
    drop(s);
    let mut s = start(&addr, "SCRAM-SHA-512");
    let (error, _, again) = step(&mut s, &first).unwrap();
    assert_eq!(error, 0);
    assert_ne!(again, server_first, "a fresh server nonce");
    let (error, message, _) = step(&mut s, &last).unwrap();
    assert_eq!(error, 58, "{message}");
    assert!(closed(&mut s, Duration::from_secs(5)));

    // 3: a wrong password, over PLAIN.
    let mut s = start(&addr, "PLAIN");
    let (error, message, _) = step(&mut s, b"\0alice\0guess").unwrap();
    assert_eq!(error, 58);
    assert!(message.contains("invalid credentials"), "{message}");
    // 4: a SCRAM client-first cut short (no nonce): malformed, answered, counted.
    let mut s = start(&addr, "SCRAM-SHA-256");
    let (error, message, _) = step(&mut s, b"n,,n=alice").unwrap();
    assert_eq!(error, 58);
    assert!(
        message.contains("malformed") && message.contains("nonce"),
        "{message}"
    );
    // The address is held back now: even the right password is refused, unchecked.
    let mut s = start(&addr, "PLAIN");
    let (error, message, _) = step(&mut s, format!("\0alice\0{ALICE}").as_bytes()).unwrap();
    assert_eq!(error, 58);
    assert!(message.contains("too many failed"), "{message}");
    // The native door shares the limit.
    let rt = common::rt();
    let err = rt
        .block_on(weir_client::Client::connect_options(
            &server.addr,
            "t",
            weir_client::ConnectOptions {
                tls: None,
                credentials: Some(weir_client::Credentials::new("alice", ALICE)),
            },
        ))
        .expect_err("refused");
    assert!(err.to_string().contains("too many failed"), "{err}");
    // Before Authenticate, the native door answers AUTHENTICATION_REQUIRED.
    let err = rt
        .block_on(weir_client::Client::connect(&server.addr, "t"))
        .expect_err("refused");
    assert_eq!(
        err.code(),
        Some(weir_wire::ErrorCode::AuthenticationRequired)
    );
    server.stop();
}

#[test]
fn auth_settings_that_cannot_work_refuse_to_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("auth")).unwrap();
    for (env, why) in [
        (
            vec![("WEIR_AUTH__JWT_ISSUER", "https://idp")],
            "no JWT key is",
        ),
        (
            vec![
                ("WEIR_AUTH__ENABLED", "true"),
                ("WEIR_AUTH__JWT_HS256_SECRET_FILE", "/nonexistent/secret"),
            ],
            "/nonexistent/secret",
        ),
        (
            vec![("WEIR_AUTH__MECHANISMS", "[\"GSSAPI\"]")],
            "\"GSSAPI\" is not one of",
        ),
        (
            vec![("WEIR_AUTH__MECHANISMS", "[]")],
            "auth.mechanisms is empty",
        ),
        (vec![("WEIR_AUTH__TIMEOUT_MS", "0")], "auth.timeout_ms"),
        // Access control lists need someone to check.
        (
            vec![("WEIR_AUTH__ACLS", "true")],
            "auth.acls and auth.super_users need auth.enabled",
        ),
        (
            vec![
                ("WEIR_AUTH__ENABLED", "true"),
                ("WEIR_AUTH__SUPER_USERS", "[\"a b\"]"),
            ],
            "auth.super_users: \"a b\"",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("serve").env("WEIR_DATA_DIR", &data);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (ok, _, err) = run(cmd, "");
        assert!(!ok && err.contains(why), "{env:?}: {err}");
    }
    // A users file that is not one: refused, naming the file.
    std::fs::write(data.join("auth/users.json"), "[]").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("serve")
        .env("WEIR_DATA_DIR", &data)
        .env("WEIR_AUTH__ENABLED", "true");
    let (ok, _, err) = run(cmd, "");
    assert!(!ok && err.contains("users.json"), "{err}");
    // So is an ACL file that is not one.
    std::fs::remove_file(data.join("auth/users.json")).unwrap();
    std::fs::write(data.join("auth/acls.json"), r#"{"version":1,"acls":[{}]}"#).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("serve")
        .env("WEIR_DATA_DIR", &data)
        .env("WEIR_AUTH__ENABLED", "true")
        .env("WEIR_AUTH__ACLS", "true");
    let (ok, _, err) = run(cmd, "");
    assert!(!ok && err.contains("acls.json"), "{err}");
}

/// `curl` GET of `path` with `token` as bearer; (status, body).
fn curl(http: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    cmd.arg(format!("http://{http}{path}"));
    let (ok, out, err) = run(cmd, "");
    assert!(ok, "{err}");
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// `curl` POST of a JSON `body` to `path` with `token` as bearer; the status.
fn post(http: &str, path: &str, token: &str, body: &str) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
    ])
    .arg(format!("Authorization: Bearer {token}"))
    .args(["-H", "Content-Type: application/json", "-d", body])
    .arg(format!("http://{http}{path}"));
    run(cmd, "").1
}

fn jwt(
    claims: serde_json::Value,
    header: jsonwebtoken::Header,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token's id: the first 8 hex digits of its SHA-256.
fn token_id(token: &str) -> String {
    weir_auth::users::token_hash(token)[..8].to_string()
}

#[test]
fn http_and_websocket_clients_present_api_tokens_and_jwts() {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, err) = user(
        &data,
        &["add", "alice", "--password-stdin"],
        &format!("{ALICE}\n"),
    );
    assert!(ok, "{err}");
    let new_token = || {
        let (ok, out, err) = user(&data, &["token", "alice"], "");
        assert!(ok, "{err}");
        let token = out.trim().rsplit(' ').next().unwrap().to_string();
        assert!(token.starts_with("weir_"), "{out}");
        token
    };
    let token = new_token();
    let revoked = new_token();
    let (ok, out, err) = user(
        &data,
        &["token", "alice", "--revoke", &token_id(&revoked)],
        "",
    );
    assert!(ok, "{out}{err}");
    let (ok, out, _) = user(&data, &["list", "--tokens"], "");
    assert!(ok, "{out}");
    assert!(
        !out.contains(&token_id(&revoked)) && out.contains(&token_id(&token)),
        "{out}"
    );
    let stored = std::fs::read_to_string(data.join("auth/users.json")).unwrap();
    assert!(
        !stored.contains(&token[5..]),
        "the token itself is not stored"
    );

    // The keys: an HS256 secret, an ES256 key as PEM, another in a JWKS file by kid.
    let secret = b"a secret of more than thirty-two bytes".to_vec();
    std::fs::write(dir.path().join("jwt.secret"), &secret).unwrap();
    let pem_key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("jwt.pem"), pem_key.public_key_pem()).unwrap();
    let jwks_key = rcgen::KeyPair::generate().unwrap();
    let raw = jwks_key.public_key_raw();
    assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..]),
    }]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let files: Vec<String> = ["jwt.secret", "jwt.pem", "jwks.json"]
        .iter()
        .map(|f| dir.path().join(f).display().to_string())
        .collect();
    let server = Server::start(
        &data,
        &[
            ("WEIR_AUTH__ENABLED", "true"),
            ("WEIR_AUTH__JWT_HS256_SECRET_FILE", &files[0]),
            ("WEIR_AUTH__JWT_PUBLIC_KEY_FILE", &files[1]),
            ("WEIR_AUTH__JWT_JWKS_FILE", &files[2]),
            ("WEIR_AUTH__JWT_AUDIENCE", "weir"),
            ("WEIR_AUTH__FAILURES_PER_MINUTE", "1000"),
        ],
    );
    let http = server.http.clone();

    // Health and readiness stay open (load balancers); nothing else does.
    assert_eq!(curl(&http, "/health", None).0, 200);
    assert_eq!(curl(&http, "/ready", None).0, 200);
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i"]).arg(format!("http://{http}/topics"));
    let (_, out, _) = run(cmd, "");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(
        lower.contains("www-authenticate: bearer realm=\"weir\""),
        "{out}"
    );
    assert!(out.contains("\"code\":\"unauthenticated\""), "{out}");
    for path in ["/metrics", "/stats", "/groups", "/openapi.json", "/nowhere"] {
        assert_eq!(curl(&http, path, None).0, 401, "{path}");
    }

    // An API token; a revoked one and made-up ones are refused.
    let (code, body) = curl(&http, "/topics", Some(&token));
    assert_eq!(code, 200, "{body}");
    assert_eq!(post(&http, "/topics", &token, r#"{"name": "web"}"#), "201");
    for bad in [revoked.as_str(), "weir_madeup", "not-a-jwt"] {
        let (code, body) = curl(&http, "/topics", Some(bad));
        assert_eq!(code, 401, "{bad}: {body}");
    }

    // JWTs: HS256, ES256 by the PEM key, ES256 by the JWKS kid. Refused: expired, forged,
    // for another audience, signed by the PEM key but naming the JWKS kid, an unknown kid.
    let hs = EncodingKey::from_secret(&secret);
    let es_pem = EncodingKey::from_ec_pem(pem_key.serialize_pem().as_bytes()).unwrap();
    let es_jwks = EncodingKey::from_ec_pem(jwks_key.serialize_pem().as_bytes()).unwrap();
    let claims = |exp: u64| serde_json::json!({"sub": "someone", "exp": exp, "aud": "weir"});
    let with_kid = |kid: &str| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_string());
        h
    };
    let later = now() + 300;
    let good = [
        jwt(claims(later), Header::new(Algorithm::HS256), &hs),
        jwt(claims(later), Header::new(Algorithm::ES256), &es_pem),
        jwt(claims(later), with_kid("k1"), &es_jwks),
    ];
    for t in &good {
        let (code, body) = curl(&http, "/groups", Some(t));
        assert_eq!(code, 200, "{t}: {body}");
    }
    let other = EncodingKey::from_secret(b"another secret, also longer than 32 bytes");
    let bad = [
        jwt(claims(now() - 300), Header::new(Algorithm::HS256), &hs),
        jwt(claims(later), Header::new(Algorithm::HS256), &other),
        jwt(
            serde_json::json!({"sub": "a", "exp": later, "aud": "other"}),
            Header::new(Algorithm::HS256),
            &hs,
        ),
        jwt(claims(later), with_kid("k1"), &es_pem),
        jwt(claims(later), with_kid("k2"), &es_jwks),
    ];
    for t in &bad {
        let (code, body) = curl(&http, "/groups", Some(t));
        assert_eq!(code, 401, "{t}: {body}");
    }

    // WebSocket: the token as a query parameter (browsers cannot set headers on it).
    let ws = |url: String| {
        let mut cmd = Command::new(python());
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/ws_client.py"
        ))
        .args(["--url", &url, "--records", "1", "--timeout", "15"])
        .args([
            "--send",
            r#"{"op":"subscribe","topics":["web"],"from":"earliest"}"#,
        ]);
        run(cmd, "")
    };
    let records = r#"{"records":[{"value":"hello"}]}"#;
    assert_eq!(post(&http, "/topics/web/records", &good[0], records), "200");
    let (ok, out, err) = ws(format!("ws://{http}/ws?access_token={}", good[2]));
    assert!(ok && out.contains("\"hello\""), "{out}{err}");
    let (ok, out, err) = ws(format!("ws://{http}/ws"));
    assert!(!ok && err.contains("401"), "{out}{err}");
    let (ok, out, err) = ws(format!("ws://{http}/ws?access_token={}", bad[0]));
    assert!(!ok && err.contains("401"), "{out}{err}");

    // The CLI's HTTP commands take a token too.
    let pipelines = |token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["pipeline", "list", "--http", &http])
            .env_remove("WEIR_TOKEN");
        if let Some(t) = token {
            cmd.env("WEIR_TOKEN", t);
        }
        run(cmd, "")
    };
    let (ok, _, err) = pipelines(None);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = pipelines(Some(&token));
    assert!(ok, "{err}");

    // Every attempt is counted, by door, mechanism and result.
    let (code, metrics) = curl(&http, "/metrics", Some(&token));
    assert_eq!(code, 200);
    let count = |labels: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("weir_auth_attempts_total{"))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let http_door = "door=\"http\"";
    assert!(
        count(&[http_door, "mechanism=\"jwt\"", "result=\"failed\""]) >= 5,
        "{metrics}"
    );
    assert!(
        count(&[http_door, "mechanism=\"token\"", "result=\"failed\""]) >= 2,
        "{metrics}"
    );
    assert!(
        count(&[http_door, "mechanism=\"token\"", "result=\"ok\""]) >= 2,
        "{metrics}"
    );
    assert!(
        count(&[http_door, "result=\"malformed\""]) >= 1,
        "{metrics}"
    );
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let (ok, out, err) = run(promtool, &metrics);
    assert!(ok, "promtool check metrics failed:\n{out}{err}");
    server.stop();
}

#[test]
fn a_client_certificate_authenticates_as_its_common_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tls::pki(dir.path(), "mtls");
    let data = dir.path().join("data");
    let [cert, key, ca] = [&pki.cert, &pki.key, &pki.ca].map(|p| p.display().to_string());
    let server = Server::start_with_tls(
        &data,
        &[
            ("WEIR_AUTH__ENABLED", "true"),
            ("WEIR_TLS__CERT", &cert),
            ("WEIR_TLS__KEY", &key),
            ("WEIR_TLS__CLIENT_CA", &ca),
            ("WEIR_NATIVE__TLS_LISTEN", "127.0.0.1:0"),
            ("WEIR_KAFKA__TLS_LISTEN", "127.0.0.1:0"),
            ("WEIR_HTTP__TLS_LISTEN", "127.0.0.1:0"),
        ],
        &["native", "kafka", "http"],
    );
    // No user exists: the certificate (CN=alice, signed by the client CA) is the credential.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["topic", "create", "m"])
        .env("WEIR_ADDR", &server.tls["native"])
        .env("WEIR_TLS_CA", &pki.ca)
        .env("WEIR_TLS_CERT", &pki.client_cert)
        .env("WEIR_TLS_KEY", &pki.client_key);
    let (ok, _, err) = run(cmd, "");
    assert!(ok, "{err}");
    let settings = [
        "security.protocol=SSL".to_string(),
        format!("ssl.ca.location={ca}"),
        format!("ssl.certificate.location={}", pki.client_cert.display()),
        format!("ssl.key.location={}", pki.client_key.display()),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let (ok, out, err) = kcat(&server.tls["kafka"], &settings, &["-L", "-t", "m"], "");
    assert!(ok && out.contains("topic \"m\""), "{out}{err}");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--cacert", &ca, "--cert"])
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .arg(format!("https://{}/topics/m", server.tls["http"]));
    let (ok, out, err) = run(cmd, "");
    assert!(ok && out.ends_with("\n200"), "{out}{err}");
    // The plain listeners have no certificate to go by: authentication is required there.
    assert_eq!(curl(&server.http, "/topics/m", None).0, 401);
    let (ok, out, err) = kcat(&server.kafka, &[], &["-L"], "");
    assert!(!ok && !out.contains("topic \"m\""), "{out}{err}");
    let (ok, _, err) = common::cli(&server.addr, &["topic", "list"], "");
    assert!(!ok && err.contains("AuthenticationRequired"), "{err}");
    // A connection still to authenticate (10 s allowed) does not hold up a SIGTERM.
    let _waiting = start(&server.kafka, "SCRAM-SHA-512");
    let t = Instant::now();
    server.stop();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

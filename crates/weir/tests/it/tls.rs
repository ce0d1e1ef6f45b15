//! TLS on every door against the real binary and real clients: kcat and confluent-kafka with
//! `security.protocol=SSL`, HTTPS and `wss://` from Python (`tests/py/tls_clients.py`), a
//! native-protocol frame over rustls; certificates made here by `rcgen` (no private key is
//! checked in). Then what a hostile or broken peer meets: plain text on a TLS port, a
//! handshake that never comes (dropped after the timeout), a client without the certificate a
//! mutual-TLS listener requires; and a certificate replaced on disk, picked up on SIGHUP.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, json_report, python, run};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as PEM
/// files in a directory.
pub(crate) struct Pki {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

pub(crate) fn pki(dir: &Path, name: &str) -> Pki {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("weir test CA {name}"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.distinguished_name.push(DnType::CommonName, "alice");
    let client = client.signed_by(&client_key, &ca).unwrap();
    let write = |file: &str, pem: String| {
        let p = dir.join(file);
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", server.pem()),
        key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}

fn tls_env<'a>(pki: &'a Pki, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
    let mut env = vec![
        ("WEIR_TLS__CERT", pki.cert.display().to_string()),
        ("WEIR_TLS__KEY", pki.key.display().to_string()),
        ("WEIR_NATIVE__TLS_LISTEN", "127.0.0.1:0".to_string()),
        ("WEIR_KAFKA__TLS_LISTEN", "127.0.0.1:0".to_string()),
        ("WEIR_HTTP__TLS_LISTEN", "127.0.0.1:0".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

fn start(dir: &Path, env: &[(&str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_tls(dir, &env, &["native", "kafka", "http"])
}

/// A rustls client trusting `ca` (and presenting `client`, a cert and key, when given).
fn connector(ca: &Path, client: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)] // ring's provider: see weir-net's tls.rs
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the native door at `addr`.
async fn open_tls(addr: &str, tls: &tokio_rustls::TlsConnector) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tls.connect(name, tcp).await
}

/// Sends one frame with an unknown API key on `s` (any weir answers it with an error frame)
/// and reads the whole answer.
async fn frame_round_trip(s: &mut Tls) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A frame: 4-byte length, then the header (API key 999, version 0, correlation id 7,
    // flags 0) and an empty message.
    let mut frame = Vec::new();
    let header = [0x03u8, 0xe7, 0, 0, 0, 0, 0, 7, 0, 0];
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(&header);
    s.write_all(&frame).await?;
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await?;
    Ok(())
}

/// A new TLS connection to the native door and one frame each way on it.
async fn native_round_trip(addr: &str, tls: &tokio_rustls::TlsConnector) -> std::io::Result<()> {
    let mut s = open_tls(addr, tls).await?;
    frame_round_trip(&mut s).await
}

#[test]
fn every_door_speaks_tls_to_real_clients_beside_its_plain_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "a");
    let server = start(
        &dir.path().join("data"),
        &tls_env(&pki, &[("WEIR_TLS__HANDSHAKE_TIMEOUT_MS", "700")]),
    );
    let kafka_tls = server.tls["kafka"].clone();
    let http_tls = server.tls["http"].clone();
    let ca = pki.ca.display().to_string();
    let (ok, _, err) = common::cli(&server.addr, &["topic", "create", "secure"], "");
    assert!(ok, "{err}");

    // kcat over SSL: produce, then read back; Metadata names the TLS listener's port.
    let kcat = |args: &[&str], stdin: &str| {
        let mut cmd = Command::new("kcat");
        cmd.args(["-b", &kafka_tls, "-X", "security.protocol=SSL", "-X"])
            .arg(format!("ssl.ca.location={ca}"))
            .args(args);
        run(cmd, stdin)
    };
    let (ok, _, err) = kcat(&["-P", "-t", "secure", "-K:"], "a:1\nb:2\nc:3\n");
    assert!(ok, "{err}");
    let (ok, out, err) = kcat(&["-C", "-t", "secure", "-e", "-f", "%k=%s\n"], "");
    assert!(ok, "{err}");
    assert_eq!(out, "a=1\nb=2\nc=3\n");
    let (ok, out, err) = kcat(&["-L"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains(&kafka_tls),
        "metadata names {kafka_tls}: {out}"
    );

    // confluent-kafka over SSL, HTTPS and wss:// from Python.
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/tls_clients.py"
    ))
    .args([&kafka_tls, &http_tls, &ca]);
    let report = json_report(cmd, "tls_clients.py");
    assert_eq!(report["https_health"], 200, "{report}");
    assert_eq!(report["wss_record"], "over wss", "{report}");
    let consumed = common::strings(&report["kafka_consumed"]);
    assert_eq!(consumed.len(), 23, "{report}");

    // The native door over rustls.
    let rt = common::rt();
    let tls = connector(&pki.ca, None);
    rt.block_on(native_round_trip(&server.tls["native"], &tls))
        .expect("a frame over TLS");

    // The `weir` CLI (weir-client) over TLS: produce, then read everything back.
    let native_tls = server.tls["native"].clone();
    let (ok, _, err) = common::cli(
        &native_tls,
        &["produce", "secure", "--key-separator", ":", "--tls-ca", &ca],
        "n:over native tls\n",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = common::cli(
        &native_tls,
        &["consume", "secure", "--from", "beginning", "--tls-ca", &ca],
        "",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("over native tls") && out.contains("over wss"),
        "{out}"
    );
    // Large answers over TLS, read by clients that wait for them whole: 6 MB through kcat
    // (Kafka fetches) and the CLI (native fetches), in time. (The doors flush after each
    // answer, since over TLS a write can leave encrypted bytes in rustls's buffer; on loopback
    // with readers this fast the socket seldom fills, so this does not prove the flush.)
    let (ok, _, err) = common::cli(&server.addr, &["topic", "create", "big"], "");
    assert!(ok, "{err}");
    let value = "x".repeat(2000);
    let lines: String = (0..3000).map(|i| format!("{i}\t{value}\n")).collect();
    let (ok, _, err) = common::cli(
        &server.addr,
        &["produce", "big", "--key-separator", "\t"],
        &lines,
    );
    assert!(ok, "{err}");
    let started = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.args([
        "20",
        "kcat",
        "-b",
        &kafka_tls,
        "-X",
        "security.protocol=SSL",
        "-X",
    ])
    .arg(format!("ssl.ca.location={ca}"))
    .args(["-C", "-t", "big", "-e", "-f", "%k\n"]);
    let (ok, out, err) = run(cmd, "");
    assert!(ok, "kcat over TLS: {err}");
    assert_eq!(out.lines().count(), 3000);
    let (ok, out, err) = common::cli(
        &native_tls,
        &["consume", "big", "--from", "beginning", "--tls-ca", &ca],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3000);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "6 MB over TLS took {:?}",
        started.elapsed()
    );

    // Without trusting the CA, the CLI refuses the server's certificate.
    let (ok, _, err) = common::cli(&native_tls, &["topic", "list", "--tls"], "");
    assert!(!ok, "a certificate no trusted CA signed was accepted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // The plain listeners still serve plain clients.
    let (ok, out, err) = {
        let mut cmd = Command::new("kcat");
        cmd.args(["-b", &server.kafka, "-C", "-t", "secure", "-e", "-c", "1"]);
        run(cmd, "")
    };
    assert!(ok && !out.is_empty(), "{err}");

    // Plain text on a TLS port gets no answer: the connection closes.
    let mut s = TcpStream::connect(&http_tls).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("200"),
        "a plain request on the TLS port was answered"
    );

    // A client that connects and never starts the handshake is dropped after the timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(&server.tls["native"]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = s.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    server.stop();
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_and_a_new_certificate_loads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let pki_a = pki(dir.path(), "a");
    let client_ca = pki_a.ca.display().to_string();
    let server = start(
        &dir.path().join("data"),
        &tls_env(&pki_a, &[("WEIR_TLS__CLIENT_CA", &client_ca)]),
    );
    let rt = common::rt();
    let native = server.tls["native"].clone();
    let with_cert = connector(&pki_a.ca, Some((&pki_a.client_cert, &pki_a.client_key)));
    rt.block_on(native_round_trip(&native, &with_cert))
        .expect("a client with a certificate the CA signed");
    // The CLI with --cert/--key.
    let ca = pki_a.ca.display().to_string();
    let (cert, key) = (
        pki_a.client_cert.display().to_string(),
        pki_a.client_key.display().to_string(),
    );
    let (ok, _, err) = common::cli(
        &native,
        &[
            "topic",
            "create",
            "m",
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, _) = common::cli(&native, &["topic", "create", "n", "--tls-ca", &ca], "");
    assert!(!ok, "the CLI without a client certificate was served");
    let without = connector(&pki_a.ca, None);
    assert!(
        rt.block_on(native_round_trip(&native, &without)).is_err(),
        "a client without a certificate was served"
    );
    // A certificate from another CA is refused too.
    let pki_b = pki(dir.path(), "b");
    let other = connector(&pki_a.ca, Some((&pki_b.client_cert, &pki_b.client_key)));
    assert!(rt.block_on(native_round_trip(&native, &other)).is_err());

    // The server's certificate replaced on disk by one from CA b; SIGHUP loads it. New
    // connections get it (a client trusting only b succeeds; one trusting only a fails), and
    // a connection opened before goes on.
    let mut before = rt.block_on(open_tls(&native, &with_cert)).unwrap();
    rt.block_on(frame_round_trip(&mut before)).unwrap();
    std::fs::copy(&pki_b.cert, &pki_a.cert).unwrap();
    std::fs::copy(&pki_b.key, &pki_a.key).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let trusts_b = connector(&pki_b.ca, Some((&pki_a.client_cert, &pki_a.client_key)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(native_round_trip(&native, &trusts_b)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rt.block_on(native_round_trip(&native, &with_cert)).is_err());
    rt.block_on(frame_round_trip(&mut before))
        .expect("a connection opened before the reload is still served");
    server.stop();
}

#[test]
fn tls_settings_that_cannot_work_refuse_to_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "a");
    let weir = env!("CARGO_BIN_EXE_weir");
    let serve = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(weir);
        cmd.arg("serve")
            .env("WEIR_DATA_DIR", dir.path().join("data"))
            .env("WEIR_NATIVE__LISTEN", "127.0.0.1:0")
            .env("WEIR_KAFKA__LISTEN", "127.0.0.1:0")
            .env("WEIR_HTTP__LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    let other_key = pki.client_key.display().to_string();
    let err = serve(&[("WEIR_KAFKA__TLS_LISTEN", "127.0.0.1:0")]);
    assert!(err.contains("tls.cert and tls.key"), "{err}");
    let err = serve(&[("WEIR_TLS__CERT", &cert), ("WEIR_TLS__KEY", &key)]);
    assert!(err.contains("no door has a tls_listen"), "{err}");
    let err = serve(&[
        ("WEIR_TLS__CERT", &cert),
        ("WEIR_TLS__KEY", &other_key),
        ("WEIR_HTTP__TLS_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(err.contains("does not go with the certificate"), "{err}");
    let err = serve(&[
        ("WEIR_TLS__CERT", "/nonexistent/cert.pem"),
        ("WEIR_TLS__KEY", &key),
        ("WEIR_HTTP__TLS_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    let err = serve(&[
        ("WEIR_TLS__CERT", &cert),
        ("WEIR_TLS__KEY", &key),
        ("WEIR_KAFKA__ENABLED", "false"),
        ("WEIR_KAFKA__TLS_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(err.contains("kafka.enabled is false"), "{err}");
}

/// What the server says at start about who can reach it: a listener beyond loopback (and not
/// requiring client certificates) gets a loud warning, an all-loopback server a quiet note.
#[test]
fn the_startup_log_says_who_can_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let startup_log = |native: &str| -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("serve")
            .env("WEIR_DATA_DIR", dir.path().join("data"))
            .env("WEIR_NATIVE__LISTEN", native)
            .env("WEIR_KAFKA__LISTEN", "127.0.0.1:0")
            .env("WEIR_HTTP__LISTEN", "127.0.0.1:0")
            .env("WEIR_LOG__LEVEL", "info")
            .env("WEIR_LOG__FORMAT", "human")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("http=") {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0);
        }
        // Past the last listener: the startup lines are written.
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        child.wait().unwrap();
        err
    };
    let open = startup_log("0.0.0.0:0");
    assert!(
        open.contains("WITHOUT AUTHENTICATION") && open.contains("docs/security.md"),
        "{open}"
    );
    let local = startup_log("127.0.0.1:0");
    assert!(!local.contains("WITHOUT AUTHENTICATION"), "{local}");
    assert!(local.contains("open to this machine only"), "{local}");
}

/// Whether the server closes `s` within `within` (after at most a short refusal: the native
/// door writes a CONNECTION_LIMIT frame first, which no TLS client reads as a handshake).
async fn closed_at_once(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => got.len() < 256,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Err(_) => false,
    }
}

#[test]
fn a_doors_plain_and_tls_listeners_share_its_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "limit");
    let server = start(
        &dir.path().join("data"),
        &tls_env(
            &pki,
            &[
                ("WEIR_NATIVE__MAX_CONNECTIONS", "2"),
                ("WEIR_KAFKA__MAX_CONNECTIONS", "2"),
                ("WEIR_HTTP__MAX_CONNECTIONS", "2"),
            ],
        ),
    );
    let tls = connector(&pki.ca, None);
    common::rt().block_on(async {
        let doors = [
            ("native", &server.addr),
            ("kafka", &server.kafka),
            ("http", &server.http),
        ];
        for (door, plain) in doors {
            let tls_addr = &server.tls[door];
            // Two connections on the plain listener fill the door…
            let mut held = Vec::new();
            for _ in 0..2 {
                held.push(tokio::net::TcpStream::connect(plain).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            // …so the TLS listener refuses the next, before any handshake.
            let mut extra = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
            assert!(
                closed_at_once(&mut extra, Duration::from_secs(5)).await,
                "{door}: a third connection on the TLS listener"
            );
            // One place freed, the TLS listener serves again.
            drop(held.pop());
            tokio::time::sleep(Duration::from_millis(300)).await;
            let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let handshake = tls.connect(name, tcp).await;
            assert!(handshake.is_ok(), "{door}: {handshake:?}");
        }
    });
    server.stop();
}

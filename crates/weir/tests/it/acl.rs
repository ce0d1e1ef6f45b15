//! Access control lists against the real binary: rules made with `weir acl`, then what each
//! door lets a user do and refuses with its own error — kcat, confluent-kafka and
//! kafka-python on the Kafka door (`tests/py/acl_clients.py`), the native CLI and client, curl
//! and the Python websockets client on the HTTP door — and rules changed while a connection
//! stays open.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, json_report, python, run};

/// alice's rule: she reads topics orders.*.
const ALICE_READS_ORDERS: [&str; 9] = [
    "--principal",
    "User:alice",
    "--resource",
    "topic",
    "--name",
    "orders.",
    "--prefixed",
    "--operation",
    "read",
];

fn weir(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args)
        .env_remove("WEIR_USER")
        .env_remove("WEIR_PASSWORD")
        .env_remove("WEIR_CONFIG");
    run(cmd, stdin)
}

/// `weir acl ARGS` on the ACL file of `data`; its standard output.
fn acl(data: &Path, args: &[&str]) -> String {
    let file = data.join("auth/acls.json");
    let mut all = vec!["acl"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--acls-file", file.to_str().unwrap()]);
    let (ok, out, err) = weir(&all, "");
    assert!(ok, "weir {all:?}: {err}");
    out
}

fn add_user(data: &Path, name: &str, password: &str) {
    let file = data.join("auth/users.json");
    let args = [
        "user",
        "add",
        name,
        "--password-stdin",
        "--users-file",
        file.to_str().unwrap(),
    ];
    let (ok, _, err) = weir(&args, &format!("{password}\n"));
    assert!(ok, "{err}");
}

/// A new API token of `name`.
fn token(data: &Path, name: &str) -> String {
    let file = data.join("auth/users.json");
    let (ok, out, err) = weir(
        &[
            "user",
            "token",
            name,
            "--users-file",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{err}");
    out.split_whitespace()
        .find(|w| w.starts_with(weir_auth::users::TOKEN_PREFIX))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_string()
}

/// The native CLI as `user`.
fn native(addr: &str, user: &str, password: &str, args: &[&str]) -> (bool, String, String) {
    native_with(addr, user, password, args, "")
}

/// [`native`], with `stdin` for the command.
fn native_with(
    addr: &str,
    user: &str,
    password: &str,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args)
        .env("WEIR_ADDR", addr)
        .env("WEIR_USER", user)
        .env("WEIR_PASSWORD", password);
    run(cmd, stdin)
}

fn kcat(
    broker: &str,
    user: &str,
    password: &str,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", broker, "-m", "10"])
        .args(["-X", "security.protocol=SASL_PLAINTEXT"])
        .args(["-X", "sasl.mechanisms=SCRAM-SHA-512"])
        .args(["-X", &format!("sasl.username={user}")])
        .args(["-X", &format!("sasl.password={password}")])
        .args(args);
    run(cmd, stdin)
}

/// `curl` of `path` with a bearer token; (status, body).
fn curl(http: &str, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method])
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    cmd.arg(format!("http://{http}{path}"));
    let (ok, out, err) = run(cmd, "");
    assert!(ok, "{err}");
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// Waits up to 15 s (the server reads a changed file within 2 s) for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const ALICE: &str = "alice-password-1";
const BOB: &str = "bob-password-12";
const ROOT: &str = "root-password-1";

#[test]
fn each_door_allows_what_the_rules_allow_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "alice", ALICE);
    add_user(&data, "bob", BOB);
    add_user(&data, "root", ROOT);
    // alice reads topics orders.* with groups g1*; bob writes orders.eu; root is a super user.
    let out = acl(&data, &[&["add"][..], &ALICE_READS_ORDERS].concat());
    assert!(out.contains("added"), "{out}");
    acl(
        &data,
        &[
            "add",
            "--principal",
            "User:alice",
            "--resource",
            "group",
            "--name",
            "g1",
            "--prefixed",
            "--operation",
            "read",
        ],
    );
    let bob_writes = [
        "--principal",
        "User:bob",
        "--resource",
        "topic",
        "--name",
        "orders.eu",
        "--operation",
        "write",
    ];
    acl(&data, &[&["add"][..], &bob_writes].concat());
    let listed = acl(&data, &["list"]);
    assert_eq!(
        listed.lines().count(),
        4,
        "a header and three rules: {listed}"
    );
    // A rule that cannot be is refused with the reason.
    let file = data.join("auth/acls.json");
    let (ok, _, err) = weir(
        &[
            "acl",
            "add",
            "--principal",
            "alice",
            "--resource",
            "topic",
            "--operation",
            "read",
            "--acls-file",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert!(!ok && err.contains("User:NAME"), "{err}");

    let server = Server::start(
        &data,
        &[
            ("WEIR_AUTH__ENABLED", "true"),
            ("WEIR_AUTH__ACLS", "true"),
            ("WEIR_AUTH__SUPER_USERS", "[\"root\"]"),
            ("WEIR_AUTH__FAILURES_PER_MINUTE", "1000"),
            // On, so that a produce to a missing topic would create it: that takes the right
            // to create it, checked below.
            ("WEIR_TOPICS__AUTO_CREATE", "true"),
        ],
    );
    let (addr, kafka, http) = (&server.addr, &server.kafka, &server.http);

    // root may do anything: it makes the topics.
    for t in ["orders.eu", "secret"] {
        let (ok, _, err) = native(addr, "root", ROOT, &["topic", "create", t]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = native(addr, "root", ROOT, &["produce", "secret"]);
    assert!(ok, "{err}");

    // Kafka door, kcat: bob writes orders.eu and nothing else; alice sees and reads only
    // orders.*.
    let (ok, _, err) = kcat(kafka, "bob", BOB, &["-P", "-t", "orders.eu"], "a\nb\n");
    assert!(ok && !err.contains("failed"), "{err}");
    let (_, _, err) = kcat(kafka, "bob", BOB, &["-P", "-t", "secret"], "x\n");
    assert!(err.contains("Topic authorization failed"), "{err}");
    let (ok, out, err) = kcat(kafka, "alice", ALICE, &["-L"], "");
    assert!(ok && out.contains("\"orders.eu\""), "{out}{err}");
    assert!(
        !out.contains("secret"),
        "secret is hidden from alice: {out}"
    );
    let (ok, out, err) = kcat(kafka, "alice", ALICE, &["-C", "-t", "orders.eu", "-e"], "");
    assert!(
        ok && out.lines().collect::<Vec<_>>() == ["a", "b"],
        "{out}{err}"
    );
    let (ok, _, err) = kcat(kafka, "alice", ALICE, &["-C", "-t", "secret", "-e"], "");
    assert!(!ok && err.contains("Topic authorization failed"), "{err}");

    // confluent-kafka and kafka-python.
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/acl_clients.py"
    ))
    .args([kafka.as_str(), "alice", ALICE]);
    let report = json_report(cmd, "acl_clients.py");
    let field = |k: &str| report[k].clone();
    assert_eq!(field("confluent_topics"), serde_json::json!(["orders.eu"]));
    assert_eq!(
        field("confluent_produce_error"),
        "TOPIC_AUTHORIZATION_FAILED"
    );
    assert_eq!(field("confluent_g1_values"), serde_json::json!(["a", "b"]));
    assert_eq!(
        field("confluent_create_error"),
        "TOPIC_AUTHORIZATION_FAILED"
    );
    assert_eq!(
        field("confluent_delete_error"),
        "TOPIC_AUTHORIZATION_FAILED"
    );
    assert_eq!(
        field("confluent_describe_g2_error"),
        "GROUP_AUTHORIZATION_FAILED"
    );
    assert_eq!(field("confluent_listed_groups"), serde_json::json!(["g1"]));
    assert_eq!(
        field("kafka_python_g1_values"),
        serde_json::json!(["a", "b"])
    );
    assert_eq!(
        field("kafka_python_g2_error"),
        "GroupAuthorizationFailedError"
    );
    assert_eq!(
        field("kafka_python_secret_error"),
        "TopicAuthorizationFailedError"
    );
    assert_eq!(
        field("describe_acls_error"),
        "ClusterAuthorizationFailedError"
    );

    // Kafka's ACL APIs, as root: the rules `weir acl` wrote, and new ones it then sees.
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/acl_clients.py"
    ))
    .args([kafka.as_str(), "root", ROOT, "admin"]);
    let report = json_report(cmd, "acl_clients.py admin");
    // Topic 2, group 3; literal 3, prefixed 4 (Kafka's numbers).
    assert_eq!(
        report["described"],
        serde_json::json!(["2:logs.:4", "3:carols:3"])
    );
    assert_eq!(
        report["described_all"], 5,
        "alice's two, bob's one, carol's two"
    );
    assert_eq!(report["deleted"], serde_json::json!(["3:carols"]));
    assert_eq!(
        report["kafka_python_described"],
        serde_json::json!(["TOPIC:logs."])
    );
    let hosted = report["create_hosted_error"].as_str().unwrap();
    assert!(hosted.contains("every host"), "{hosted}");
    let carol = acl(&data, &["list", "--principal", "User:carol"]);
    assert!(
        carol.contains("logs.") && carol.contains("prefixed") && !carol.contains("carols"),
        "{carol}"
    );

    // Native door: the same rules, the native code.
    let (ok, out, err) = native(addr, "alice", ALICE, &["topic", "list"]);
    assert!(
        ok && out.contains("orders.eu") && !out.contains("secret"),
        "{out}{err}"
    );
    let (ok, _, err) = native(addr, "alice", ALICE, &["topic", "delete", "orders.eu"]);
    assert!(!ok && err.contains("NotAuthorized (32)"), "{err}");
    let (ok, _, err) = native(addr, "alice", ALICE, &["topic", "create", "mine"]);
    assert!(
        !ok && err.contains("may not create topic \"mine\""),
        "{err}"
    );
    let (ok, out, err) = native(
        addr,
        "alice",
        ALICE,
        &["consume", "orders.eu", "--max", "2"],
    );
    assert!(ok && out.contains('a') && out.contains('b'), "{out}{err}");
    let (ok, _, err) = native(addr, "alice", ALICE, &["consume", "secret", "--max", "1"]);
    // Refused at its first request (where the partition starts: describe).
    assert!(
        !ok && err.contains("NotAuthorized") && err.contains("topic \"secret\""),
        "{err}"
    );
    // alice reads orders.* but may not write there, and joins group g1 but not g2.
    let (ok, _, err) = native_with(addr, "alice", ALICE, &["produce", "orders.eu"], "c\n");
    assert!(
        !ok && err.contains("may not write topic \"orders.eu\""),
        "{err}"
    );
    let (ok, out, err) = native(
        addr,
        "alice",
        ALICE,
        &["consume", "orders.eu", "--group", "g1-native", "--max", "2"],
    );
    assert!(ok && out.contains('a') && out.contains('b'), "{out}{err}");
    let (ok, _, err) = native(
        addr,
        "alice",
        ALICE,
        &["consume", "orders.eu", "--group", "g2", "--max", "1"],
    );
    assert!(!ok && err.contains("may not read group \"g2\""), "{err}");

    // HTTP door: 403 `forbidden`, and listings of what the caller may see.
    let (alice, root) = (token(&data, "alice"), token(&data, "root"));
    // (Both: the server may have read the file between the two tokens' writes.)
    eventually("the tokens are known", || {
        curl(http, "GET", "/topics", &alice, None).0 == 200
            && curl(http, "GET", "/topics", &root, None).0 == 200
    });
    let (code, body) = curl(http, "GET", "/topics", &alice, None);
    assert!(
        code == 200 && body.contains("orders.eu") && !body.contains("secret"),
        "{body}"
    );
    let (code, body) = curl(http, "GET", "/topics", &root, None);
    assert!(code == 200 && body.contains("secret"), "{body}");
    for (method, path, body) in [
        ("GET", "/topics/secret", None),
        ("GET", "/topics/secret/partitions/0/records?offset=0", None),
        ("DELETE", "/topics/orders.eu", None),
        (
            "POST",
            "/topics/orders.eu/records",
            Some(r#"{"records":[{"value":"x"}]}"#),
        ),
        ("POST", "/topics", Some(r#"{"name":"mine"}"#)),
        ("GET", "/metrics", None),
        ("GET", "/groups/g2", None),
    ] {
        let (code, text) = curl(http, method, path, &alice, body);
        assert_eq!(code, 403, "{method} {path}: {text}");
        assert!(
            text.contains("\"forbidden\"") && text.contains("User:alice"),
            "{text}"
        );
    }
    let (code, body) = curl(
        http,
        "GET",
        "/topics/orders.eu/partitions/0/records?offset=0",
        &alice,
        None,
    );
    assert!(code == 200 && body.contains("\"a\""), "{body}");
    // Refusals are counted by resource type, and the metrics stay valid Prometheus text.
    let (code, metrics) = curl(http, "GET", "/metrics", &root, None);
    assert_eq!(code, 200);
    let refused = |resource: &str| -> u64 {
        let prefix = format!("weir_acl_refusals_total{{resource=\"{resource}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    assert!(refused("topic") >= 10, "{metrics}");
    assert!(
        refused("group") >= 2 && refused("cluster") >= 3,
        "{metrics}"
    );
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let (ok, out, err) = run(promtool, &metrics);
    assert!(ok, "promtool check metrics failed:\n{out}{err}");

    // WebSocket: a subscription to a topic the caller may not read is refused, one it may
    // read is served.
    let ws = |topic: &str| {
        let mut cmd = Command::new(python());
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/ws_client.py"
        ))
        .args(["--url", &format!("ws://{http}/ws?access_token={alice}")])
        .args(["--records", "1", "--timeout", "5"])
        .args([
            "--send",
            &format!(r#"{{"op":"subscribe","topics":["{topic}"],"from":"earliest"}}"#),
        ]);
        run(cmd, "").1
    };
    let out = ws("secret");
    assert!(
        out.contains("\"forbidden\"") && !out.contains("\"record\""),
        "{out}"
    );
    let out = ws("orders.eu");
    assert!(out.contains("\"record\""), "{out}");

    // Rules changed while a connection stays open: its cached decisions go with the old
    // rules. bob's native client may not write secret, then may, then may not again.
    let rt = common::rt();
    let client = rt
        .block_on(weir_client::Client::connect_options(
            addr,
            "bob",
            weir_client::ConnectOptions {
                tls: None,
                credentials: Some(weir_client::Credentials::new("bob", BOB)),
            },
        ))
        .unwrap();
    let produce = || {
        rt.block_on(client.produce("secret", Some(0), None, common::batch(&[&b"bob"[..]])))
            .map_err(|e| e.to_string())
    };
    let err = produce().unwrap_err();
    assert!(err.contains("may not write topic \"secret\""), "{err}");

    // A produce that would create its topic takes the right to create it too: bob may write
    // bob.* but not create topics, on any door.
    acl(
        &data,
        &[
            "add",
            "--principal",
            "User:bob",
            "--resource",
            "topic",
            "--name",
            "bob.",
            "--prefixed",
            "--operation",
            "write",
        ],
    );
    eventually("bob's rule for bob.* is read", || {
        let e = rt
            .block_on(client.produce("bob.new", None, None, common::batch(&[&b"x"[..]])))
            .map_err(|e| e.to_string())
            .unwrap_err();
        e.contains("may not create topic \"bob.new\"")
    });
    let bob = token(&data, "bob");
    eventually("bob's token is known", || {
        let (code, body) = curl(
            http,
            "POST",
            "/topics/bob.new/records",
            &bob,
            Some(r#"{"records":[{"value":"x"}]}"#),
        );
        code == 403 && body.contains("may not create topic")
    });
    // kcat asks Metadata first: bob may see bob.new (write implies describe) but not create
    // it, so the topic is unknown to him, as Kafka answers.
    let (_, _, err) = kcat(
        kafka,
        "bob",
        BOB,
        &["-X", "message.timeout.ms=5000", "-P", "-t", "bob.new"],
        "x\n",
    );
    assert!(err.contains("Delivery failed"), "{err}");
    let (_, body) = curl(http, "GET", "/topics", &root, None);
    assert!(!body.contains("bob.new"), "no topic was created: {body}");
    let bob_secret = [
        "--principal",
        "User:bob",
        "--resource",
        "topic",
        "--name",
        "secret",
        "--operation",
        "write",
    ];
    acl(&data, &[&["add"][..], &bob_secret].concat());
    eventually("bob may write secret", || produce().is_ok());
    // Deny wins over allow.
    acl(&data, &[&["add", "--deny"][..], &bob_secret].concat());
    eventually("bob may not write secret again", || produce().is_err());
    acl(&data, &[&["remove"][..], &bob_secret].concat());
    let (ok, _, err) = weir(
        &[
            &["acl", "remove"][..],
            &bob_secret,
            &["--acls-file", file.to_str().unwrap()],
        ]
        .concat(),
        "",
    );
    assert!(!ok && err.contains("no such rule"), "{err}");

    // Rules changed under open push subscriptions: once alice may no longer read orders.*,
    // her native and WebSocket subscriptions end before another record reaches her.
    let alice_client = rt
        .block_on(weir_client::Client::connect_options(
            addr,
            "alice",
            weir_client::ConnectOptions {
                tls: None,
                credentials: Some(weir_client::Credentials::new("alice", ALICE)),
            },
        ))
        .unwrap();
    let mut native_sub = rt
        .block_on(alice_client.subscribe("orders.eu", 0, weir_client::Start::Latest, 100, 1 << 20))
        .unwrap();
    let mut ws = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/ws_client.py"
        ))
        .args(["--url", &format!("ws://{http}/ws?access_token={alice}")])
        .args(["--pause", "--timeout", "10"])
        .args([
            "--send",
            r#"{"op":"subscribe","topics":["orders.eu"],"from":"latest"}"#,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ws_lines = std::io::BufRead::lines(std::io::BufReader::new(ws.stdout.take().unwrap()));
    let mut ws_out = String::new();
    for line in ws_lines.by_ref() {
        let line = line.unwrap();
        ws_out.push_str(&line);
        ws_out.push('\n');
        if line.contains("\"subscribed\"") || line.contains("\"_end\"") {
            break;
        }
    }
    assert!(ws_out.contains("\"subscribed\""), "{ws_out}");
    acl(&data, &[&["remove"][..], &ALICE_READS_ORDERS].concat());
    eventually("alice may no longer read orders.eu", || {
        let (ok, _, err) = native(
            addr,
            "alice",
            ALICE,
            &["consume", "orders.eu", "--max", "1"],
        );
        !ok && err.contains("NotAuthorized") && err.contains("topic \"orders.eu\"")
    });
    rt.block_on(client.produce("orders.eu", Some(0), None, common::batch(&[&b"late"[..]])))
        .unwrap();
    let ended = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), native_sub.next()).await })
        .expect("the native subscription ends within 10 s");
    let err = ended
        .map(|b| b.map(|b| b.records.len()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("may not read topic \"orders.eu\""), "{err}");
    // The paused WebSocket client reads on: a `forbidden` notice for its subscription, no
    // record.
    std::io::Write::write_all(&mut ws.stdin.take().unwrap(), b"go\n").unwrap();
    for line in ws_lines {
        ws_out.push_str(&line.unwrap());
        ws_out.push('\n');
    }
    ws.wait().unwrap();
    assert!(
        ws_out.contains("\"forbidden\"")
            && ws_out.contains("may not read topic")
            && !ws_out.contains("\"record\""),
        "{ws_out}"
    );
    drop(client);
    server.stop();
}

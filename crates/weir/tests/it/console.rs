//! The web console in a real browser: headless Chromium driven by Selenium
//! (`tests/py/console_browser.py`) against the real server. Each page loads without browser
//! console errors and shows what the test produced (offsets, a record found by key, a Kafka
//! group's lag rising then falling), topics are created and deleted through the page, the
//! charts update; screenshots of each page are saved under `target/tmp/console/` and
//! checked to be more than one colour.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::raw_subscriber::RawSubscriber;
use common::{Server, python, run};
use weir_client::Client;
use weir_client::messages as msg;

fn shots(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("console")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `tests/py/console_browser.py` with `args` against the server at `http`, its
/// screenshots into `shots`; fails the test, with what the script said, unless it passed.
fn browse(http: &str, shots: &std::path::Path, args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/console_browser.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(["--http", http, "--shots", shots.to_str().unwrap()])
        .args(args);
    let (ok, stdout, stderr) = run(cmd, "");
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn the_console_shows_and_operates_a_live_server_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    // A produce quota, for the Flow page to show who went over it; the stalled subscriber's
    // producer below is let through, and the subscriber kept however long it says nothing.
    // A value schema, for the message browser to decode with.
    std::fs::write(dir.path().join("reading.proto"), crate::http::READING_PROTO).unwrap();
    let server = Server::start_with_config(
        dir.path(),
        "[quotas]\nproduce_bytes_per_sec = 102400\n\
         [quotas.clients.ticker]\nproduce_bytes_per_sec = 0\n\
         [native]\nidle_timeout_ms = 3600000\n\
         [schemas.readings]\nmessage = \"plant.Reading\"\nproto = \"reading.proto\"\n",
    );
    // A native push subscriber with a 100-record drop-oldest queue that never reads (a raw
    // socket with a small receive buffer), for the Flow page to show its policy and what it
    // dropped of 10,000 records.
    let rt = common::rt();
    let _stalled = rt.block_on(async {
        let c = Client::connect(&server.addr, "ticker").await.unwrap();
        let one = msg::TopicConfig {
            partitions: 1,
            ..Default::default()
        };
        c.create_topic("ticks", one).await.unwrap();
        let stalled = RawSubscriber::open(
            &server.addr,
            "ticks",
            msg::OverflowPolicy::DropOldest,
            (100, 1 << 20),
        )
        .await;
        // 10 MB: more than the sockets' buffers hold.
        let value = [b'x'; 1000];
        for _ in 0..100 {
            let values: Vec<&[u8]> = (0..100).map(|_| &value[..]).collect();
            c.produce("ticks", Some(0), None, common::batch(&values))
                .await
                .unwrap();
        }
        (c, stalled)
    });
    let out = shots("pages");
    browse(&server.http, &out, &["--kafka", &server.kafka]);
    for page in [
        "overview",
        "topics",
        "topic",
        "messages",
        "group",
        "flow",
        "overview-phone",
        "overview-dark",
    ] {
        let shot = out.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
            "no screenshot {}",
            shot.display()
        );
    }
    server.stop();
}

#[test]
fn the_console_draws_a_running_pipeline_and_stops_and_starts_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        dir.path(),
        r#"
[topics]
auto_create = true

[pipelines.copy.sources.in]
type = "topic"
topic = "events"

[pipelines.copy.transforms.tag]
type = "remap"
inputs = ["in"]
source = '.seen_by = "console test"'

[pipelines.copy.sinks.out]
type = "topic"
inputs = ["tag"]
topic = "events-copy"
"#,
    );
    let out = shots("pipeline");
    browse(&server.http, &out, &["--pipeline"]);
    assert!(out.join("pipeline.png").exists());
    server.stop();
}

#[test]
fn the_console_asks_for_a_token_and_shows_a_user_only_what_she_may_see() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let weir = |args: &[&str], stdin: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(args).env_remove("WEIR_CONFIG");
        run(cmd, stdin)
    };
    let users = data.join("auth/users.json");
    let users = users.to_str().unwrap();
    let mut tokens = Vec::new();
    for name in ["root", "alice"] {
        let (ok, _, err) = weir(
            &[
                "user",
                "add",
                name,
                "--password-stdin",
                "--users-file",
                users,
            ],
            "a-password-1\n",
        );
        assert!(ok, "{err}");
        let (ok, out, err) = weir(&["user", "token", name, "--users-file", users], "");
        assert!(ok, "{err}");
        tokens.push(out.trim().rsplit(' ').next().unwrap().to_string());
    }
    // alice may describe and read topic `orders`, nothing else.
    let acls = data.join("auth/acls.json");
    for op in ["describe", "read"] {
        let (ok, _, err) = weir(
            &[
                "acl",
                "add",
                "--principal",
                "User:alice",
                "--resource",
                "topic",
                "--name",
                "orders",
                "--operation",
                op,
                "--acls-file",
                acls.to_str().unwrap(),
            ],
            "",
        );
        assert!(ok, "{err}");
    }
    let server = Server::start(
        &data,
        &[
            ("WEIR_AUTH__ENABLED", "true"),
            ("WEIR_AUTH__ACLS", "true"),
            ("WEIR_AUTH__SUPER_USERS", "[\"root\"]"),
        ],
    );
    // Without a token, the data the console shows is refused.
    let mut curl = Command::new("curl");
    curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/console/live", server.http));
    let (_, status, _) = run(curl, "");
    assert_eq!(status, "401");
    let out = shots("signed-in");
    browse(&server.http, &out, &["--token", &tokens[0]]);
    assert!(out.join("overview-signed-in.png").exists());
    // What the console offers each of them.
    let me = |token: &str| -> serde_json::Value {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("http://{}/console/me", server.http));
        let (ok, body, err) = run(curl, "");
        assert!(ok, "{err}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    // The sections the console offers a user, in the navigation's order.
    let shown = |me: &serde_json::Value| -> Vec<&str> {
        let all = [
            "overview",
            "topics",
            "messages",
            "groups",
            "flow",
            "pipelines",
        ];
        all.into_iter().filter(|s| me["sees"][s] == true).collect()
    };
    let root = me(&tokens[0]);
    assert_eq!(root["principal"], "User:root");
    assert_eq!(shown(&root).len(), 6, "root sees every section: {root}");
    let alice = me(&tokens[1]);
    assert_eq!(alice["principal"], "User:alice");
    assert_eq!(shown(&alice), ["topics", "messages"], "{alice}");
    for action in ["create_topics", "delete_topics", "produce", "reset_offsets"] {
        assert_eq!(alice["may"][action], false, "alice may {action}: {alice}");
    }
    browse(&server.http, &out, &["--token", &tokens[1], "--limited"]);
    server.stop();
}

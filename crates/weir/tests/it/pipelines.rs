//! Pipelines run by the real server (declared in its config file) and by `weir pipeline run`:
//! VRL remap and route between real topics, the dead-letter topic, committed positions,
//! at-least-once across kill -9, and `weir pipeline check`'s errors.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use weir_client::messages as msg;
use weir_client::{Client, Start};

/// One record as read back: key, value, headers.
#[derive(Debug, Clone)]
struct Read {
    key: Option<String>,
    value: String,
    headers: BTreeMap<String, String>,
}

/// Every record of every partition of `topic`.
async fn read_all(c: &Client, topic: &str) -> Vec<Read> {
    let Ok(meta) = c.metadata(&[topic]).await else {
        return Vec::new();
    };
    let Some(t) = meta.iter().find(|t| t.name == topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in t.partitions.iter().map(|p| p.partition) {
        let Ok(end) = c.list_offsets(topic, p, Start::Latest).await else {
            continue;
        };
        let mut at = 0;
        while at < end {
            let f = c
                .fetch(topic, p, at, 1 << 20, 0, Duration::ZERO)
                .await
                .unwrap();
            let mut rest = f.batches;
            if rest.is_empty() {
                break;
            }
            while !rest.is_empty() {
                let h = weir_batch::peek(&rest).unwrap();
                let b = rest.split_to(h.total_len());
                for r in weir_batch::Records::new(&b).unwrap() {
                    let r = r.unwrap();
                    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    out.push(Read {
                        key: r.key.map(s),
                        value: r.value.map(s).unwrap_or_default(),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| (s(h.key), h.value.map(s).unwrap_or_default()))
                            .collect(),
                    });
                }
                at = (h.base_offset + i64::from(h.last_offset_delta) + 1) as u64;
            }
        }
    }
    out
}

/// Waits until `topic` holds at least `n` records, then returns them.
async fn wait_for(c: &Client, topic: &str, n: usize, within: Duration) -> Vec<Read> {
    let deadline = Instant::now() + within;
    loop {
        let got = read_all(c, topic).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_config(dir: &Path, pipelines: &str) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    std::fs::write(
        &path,
        format!("[topics]\nauto_create = true\n\n{pipelines}"),
    )
    .unwrap();
    path
}

const ORDERS: &str = r#"
[pipelines.orders.sources.in]
type = "topic"
topic = "orders"

[pipelines.orders.transforms.shape]
type = "remap"
inputs = ["in"]
source = '''
.user_id = del(.user)
.amount = to_float!(.amount)
.pipeline = "weir"
%key = .user_id
'''

[pipelines.orders.transforms.by_region]
type = "route"
inputs = ["shape"]
route.eu = '.region == "eu"'
route.us = '.region == "us"'

[pipelines.orders.sinks.eu]
type = "topic"
inputs = ["by_region.eu"]
topic = "orders-eu"

[pipelines.orders.sinks.other]
type = "topic"
inputs = ["by_region.us", "by_region._unmatched"]
topic = "orders-other"

[pipelines.orders.dead_letter]
type = "topic"
topic = "orders-dlq"
"#;

#[test]
fn a_served_pipeline_reshapes_routes_and_sends_failures_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), ORDERS);
    let server = Server::start(
        &dir.path().join("data"),
        &[("WEIR_CONFIG", config.to_str().unwrap())],
    );
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        c.create_topic(
            "orders",
            msg::TopicConfig {
                partitions: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut values = Vec::new();
        for i in 0..300 {
            let region = ["eu", "us", "apac"][i % 3];
            values.push(format!(
                r#"{{"user":"u{i}","amount":"{i}.5","region":"{region}"}}"#
            ));
        }
        values.push(r#"{"user":"bad","amount":"lots","region":"eu"}"#.into());
        values.push("not json at all".into());
        for chunk in values.chunks(50) {
            let refs: Vec<&[u8]> = chunk.iter().map(|v| v.as_bytes()).collect();
            c.produce("orders", None, None, common::batch(&refs))
                .await
                .unwrap();
        }
        // A traced record: its traceparent header carries through to its output.
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut traced = weir_batch::BatchBuilder::new(1_700_000_000_000);
        traced.push(weir_batch::RecordSpec {
            value: Some(br#"{"user":"traced","amount":"1","region":"eu"}"#),
            headers: vec![("traceparent", Some(traceparent.as_bytes()))],
            ..Default::default()
        });
        c.produce("orders", None, None, bytes::Bytes::from(traced.build()))
            .await
            .unwrap();
        let eu = wait_for(&c, "orders-eu", 101, Duration::from_secs(60)).await;
        let other = wait_for(&c, "orders-other", 200, Duration::from_secs(60)).await;
        let dlq = wait_for(&c, "orders-dlq", 2, Duration::from_secs(60)).await;
        assert_eq!((eu.len(), other.len(), dlq.len()), (101, 200, 2));
        let t = eu
            .iter()
            .find(|r| r.key.as_deref() == Some("traced"))
            .unwrap();
        assert_eq!(t.headers["traceparent"], traceparent);
        for r in &eu {
            let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
            assert_eq!(v["region"], "eu");
            assert_eq!(v["pipeline"], "weir");
            assert!(v["amount"].is_f64(), "{v}");
            assert!(v.get("user").is_none());
            assert_eq!(
                r.key.as_deref(),
                v["user_id"].as_str(),
                "the key came from %key"
            );
        }
        let regions: BTreeSet<String> = other
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.value).unwrap()["region"].to_string()
            })
            .collect();
        assert_eq!(
            regions,
            BTreeSet::from(["\"apac\"".into(), "\"us\"".into()])
        );
        // Dead letters: the records as read, with the error and where it happened.
        let by_value: BTreeMap<&str, &Read> = dlq.iter().map(|r| (r.value.as_str(), r)).collect();
        let bad = by_value[r#"{"user":"bad","amount":"lots","region":"eu"}"#];
        assert_eq!(bad.headers["weir.error.component"], "shape");
        assert!(
            bad.headers["weir.error"].contains("to_float"),
            "{:?}",
            bad.headers
        );
        assert_eq!(bad.headers["weir.pipeline"], "orders");
        let garbage = by_value["not json at all"];
        assert_eq!(garbage.headers["weir.error.component"], "in");
        assert!(
            garbage.headers["weir.error"].contains("invalid JSON"),
            "{:?}",
            garbage.headers
        );
        // The group committed every partition to its end.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let parts: Vec<(String, u32)> = (0..3).map(|p| ("orders".to_string(), p)).collect();
            // Without a commit, "earliest" (0) comes back: only real commits reach the ends.
            let committed = c
                .fetch_offsets("pipeline.orders.in", &parts, true)
                .await
                .unwrap();
            let mut ends = Vec::new();
            for p in 0..3 {
                ends.push(c.list_offsets("orders", p, Start::Latest).await.unwrap());
            }
            let got: Vec<u64> = committed.iter().map(|(_, _, o)| *o).collect();
            if got == ends {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "committed {got:?}, ends {ends:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The source's lag, in the pipeline's description, is 0 once all is committed.
        let d: serde_json::Value = serde_json::from_str(
            &reqwest::get(format!("http://{}/pipelines/orders", server.http))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        let source = d["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "in")
            .unwrap();
        assert_eq!(source["lag"], 0, "{d}");
        // It saved its position within the last commit intervals, and has read up to the
        // records' own time (`common::batch` stamps every record 1,700,000,000,000; every
        // partition caught up: the newest of all).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let checkpoint = source["checkpoint_ms"].as_i64().expect("a checkpoint");
        assert!(now - checkpoint < 10_000, "{d}");
        assert_eq!(source["watermark_ms"], 1_700_000_000_000_i64, "{d}");
        // Per-component counters in /metrics.
        let metrics = reqwest::get(format!("http://{}/metrics", server.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in [
            r#"weir_pipeline_component_sent_events_total{pipeline="orders",component="eu"} 101"#,
            r#"weir_pipeline_component_errors_total{pipeline="orders",component="shape"} 1"#,
            r#"weir_pipeline_component_errors_total{pipeline="orders",component="in"} 1"#,
        ] {
            assert!(metrics.contains(line), "{line} not in\n{metrics}");
        }
    });
    server.stop();
}

/// A topic → remap → topic pipeline killed with SIGKILL mid-stream, again and again: every
/// input record has its output afterwards (duplicates allowed, and counted).
#[test]
fn a_pipeline_killed_mid_stream_loses_nothing() {
    const N: usize = 20_000;
    const KILLS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The input first, with no pipeline running.
    let server = Server::start(&data, &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        c.create_topic(
            "in",
            msg::TopicConfig {
                partitions: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let values: Vec<String> = (0..N).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        for chunk in values.chunks(500) {
            let refs: Vec<&[u8]> = chunk.iter().map(|v| v.as_bytes()).collect();
            c.produce("in", None, None, common::batch(&refs))
                .await
                .unwrap();
        }
    });
    server.stop();
    let config = write_config(
        dir.path(),
        r#"
[pipelines.copy.sources.in]
type = "topic"
topic = "in"
commit_interval_ms = 50

[pipelines.copy.transforms.mark]
type = "remap"
inputs = ["in"]
source = '.seen = true'

[pipelines.copy.sinks.out]
type = "topic"
inputs = ["mark"]
topic = "out"
batch.max_events = 200
"#,
    );
    let env = [("WEIR_CONFIG", config.to_str().unwrap())];
    let mut rng_state = 0x9e37_79b9_u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for _ in 0..KILLS {
        let server = Server::start(&data, &env);
        std::thread::sleep(Duration::from_millis(50 + next() % 250));
        server.kill9();
    }
    let server = Server::start(&data, &env);
    let (outputs, distinct) = common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = read_all(&c, "out").await;
            let ids: BTreeSet<u64> = out
                .iter()
                .map(|r| {
                    let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
                    assert_eq!(v["seen"], true);
                    v["id"].as_u64().unwrap()
                })
                .collect();
            if ids.len() == N || Instant::now() > deadline {
                return (out.len(), ids.len());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    server.stop();
    assert_eq!(distinct, N, "every input record has its output");
    eprintln!(
        "kill -9 x{KILLS}: {N} inputs, {outputs} outputs, {} duplicates ({:.1}%)",
        outputs - N,
        (outputs - N) as f64 * 100.0 / N as f64
    );
}

#[test]
fn pipeline_check_names_the_component_and_key_and_run_pipes_stdin_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"
[sources.in]
type = "stdin"

[transforms.shape]
type = "remap"
inputs = ["in"]
source = '''
.n = to_int!(.n) * 2
'''

[transforms.big]
type = "filter"
inputs = ["shape"]
condition = '(.n > 4) ?? false'

[sinks.out]
type = "stdout"
inputs = ["big"]

[dead_letter]
type = "stdout"
"#;
    let check = |name: &str, text: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["pipeline", "check", path.to_str().unwrap()]);
        common::run(cmd, "")
    };
    let (ok, _, err) = check("good", good);
    assert!(ok, "{err}");
    assert!(err.contains("pipeline `good` is valid"), "{err}");
    for (name, text, expect) in [
        (
            "typo",
            good.replace("condition =", "conditon ="),
            "transform `big`: unknown field `conditon`",
        ),
        (
            "input",
            good.replace(r#"inputs = ["big"]"#, r#"inputs = ["bgi"]"#),
            "sink `out`: input `bgi` is not a source or transform output",
        ),
        (
            "vrl",
            good.replace("to_int!(.n) * 2", "to_int!(.n) *"),
            "transform `shape`: source:",
        ),
        (
            "kind",
            good.replace(r#"type = "filter""#, r#"type = "fliter""#),
            "transform `big`: unknown variant `fliter`",
        ),
        (
            "cycle",
            good.replace(r#"inputs = ["in"]"#, r#"inputs = ["in", "big"]"#),
            "the inputs form a cycle",
        ),
        (
            "key",
            format!("workers = 3\n{good}"),
            "unknown key `workers`",
        ),
        (
            "fallible",
            good.replace("(.n > 4) ?? false", ".n > 4"),
            "transform `big`: condition:",
        ),
    ] {
        let (ok, _, err) = check(name, &text);
        assert!(!ok, "{name} passed");
        assert!(err.contains(expect), "{name}: {err}");
    }
    // A compile error points at the line and column.
    let (_, _, err) = check(
        "line",
        &good.replace("to_int!(.n) * 2", "to_int!(.n) * 2\n.m = nosuchfn(.x)"),
    );
    assert!(err.contains(":2:6") && err.contains("nosuchfn"), "{err}");

    let path = dir.path().join("good.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["pipeline", "run", path.to_str().unwrap()])
        .env("WEIR_DATA_DIR", dir.path().join("data"))
        .env("RUST_LOG", "warn");
    let (ok, out, err) = common::run(cmd, "{\"n\":1}\n{\"n\":3}\n{\"n\":\"x\"}\n{\"n\":5}\n");
    assert!(ok, "{err}");
    // Two tasks write stdout (the sink and the dead-letter output): compare as a set.
    let lines: BTreeSet<&str> = out.lines().collect();
    assert_eq!(
        lines,
        BTreeSet::from([r#"{"n":"x"}"#, r#"{"n":6}"#, r#"{"n":10}"#]),
        "{err}"
    );
}

const INGEST: &str = r#"
[pipelines.web.sources.in]
type = "http"

[pipelines.web.transforms.tag]
type = "remap"
inputs = ["in"]
source = '.via = "http"'

[pipelines.web.sinks.out]
type = "topic"
inputs = ["tag"]
topic = "web-out"
"#;

/// The HTTP door: list and describe, ingest answered once delivered, stop / start, a reload
/// that takes a new program, a reload refused for a bad one (the old keeps running).
#[test]
fn pipelines_over_http_ingest_stop_start_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), INGEST);
    let server = Server::start(
        &dir.path().join("data"),
        &[("WEIR_CONFIG", config.to_str().unwrap())],
    );
    common::rt().block_on(async {
        let http = crate::http::Http::new(&server).await;
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        let ingest = |body: &str| {
            http.call(
                "post",
                "/pipelines/{pipeline}/ingest",
                "/pipelines/web/ingest",
                Some("application/x-ndjson"),
                body.as_bytes().to_vec(),
            )
        };
        let r = http.get("/pipelines", "/pipelines").await;
        assert_eq!(r.body["pipelines"][0]["name"], "web", "{}", r.body);
        let r = ingest("{\"n\":1}\n{\"n\":2}\nnot json\n").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body,
            serde_json::json!({"accepted": 2, "dead_lettered": 1})
        );
        // Answered once delivered: the records are in the topic already.
        let out = read_all(&c, "web-out").await;
        assert_eq!(out.len(), 2);
        assert!(
            out.iter().all(|r| r.value.contains(r#""via":"http""#)),
            "{out:?}"
        );
        let r = http.get("/pipelines/{pipeline}", "/pipelines/web").await;
        assert_eq!(r.body["state"], "running");
        let tag = r.body["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "tag")
            .unwrap()
            .clone();
        assert_eq!(
            (tag["received"].as_u64(), tag["sent"].as_u64()),
            (Some(2), Some(2))
        );
        // The CLI shows the same.
        let cli = |args: &[&str]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
            cmd.arg("pipeline")
                .args(args)
                .args(["--http", &server.http]);
            common::run(cmd, "")
        };
        let (ok, out, err) = cli(&["describe", "web"]);
        assert!(ok, "{err}");
        assert!(out.contains("web") && out.contains("running"), "{out}");
        assert!(
            out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["tag", "transform", "2", "2", "0", "0", "0"]),
            "{out}"
        );
        let (ok, out, _) = cli(&["list"]);
        assert!(ok && out.starts_with("web "), "{out}");
        let (ok, _, err) = cli(&["describe", "nope"]);
        assert!(!ok && err.contains("no pipeline named 'nope'"), "{err}");
        let r = http.get("/pipelines/{pipeline}", "/pipelines/nope").await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (404, Some("unknown_pipeline"))
        );

        let http = &http;
        let post = |what: &'static str| {
            let route = format!("/pipelines/{{pipeline}}/{what}");
            let path = format!("/pipelines/web/{what}");
            async move {
                http.call("post", &route, &path, Some("application/json"), Vec::new())
                    .await
            }
        };
        assert_eq!(post("stop").await.status, 204);
        let r = ingest("{\"n\":3}\n").await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (503, Some("pipeline_not_running"))
        );
        assert_eq!(post("start").await.status, 204);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = ingest("{\"n\":3}\n").await;
            if r.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Reload with a new program.
        std::fs::write(
            &config,
            format!(
                "[topics]\nauto_create = true\n\n{}",
                INGEST.replace(r#".via = "http""#, r#".via = "reloaded""#)
            ),
        )
        .unwrap();
        assert_eq!(post("reload").await.status, 204);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = ingest("{\"n\":4}\n").await;
            if r.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = read_all(&c, "web-out").await;
        assert!(out.last().unwrap().value.contains("reloaded"), "{out:?}");
        // A bad program is refused, and the running pipeline is left alone.
        std::fs::write(
            &config,
            format!(
                "[topics]\nauto_create = true\n\n{}",
                INGEST.replace(r#".via = "http""#, ".via = nosuchfn()")
            ),
        )
        .unwrap();
        let r = post("reload").await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (400, Some("invalid_config")),
            "{}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nosuchfn"),
            "{}",
            r.body
        );
        assert_eq!(ingest("{\"n\":5}\n").await.status, 200);
    });
    server.stop();
}

/// A sink that holds its events (a long linger) fills the queue before it; the HTTP source
/// then answers 429 with Retry-After at once instead of holding requests, and whatever was
/// answered 200 is in the topic. The requests come all at once: 12,000 events in a few
/// milliseconds is more than the pipeline moves in that time on any machine (sent 5 ms apart,
/// a fast enough pipeline kept up and refused nothing).
#[test]
fn a_full_pipeline_answers_ingest_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &INGEST
            .replace(
                r#"topic = "web-out""#,
                "topic = \"web-out\"\nbatch = { max_events = 100000, max_bytes = 262144, linger_ms = 2000 }\nbuffer = { max_events = 256, max_bytes = 65536 }",
            )
            .replace(
                r#"inputs = ["in"]"#,
                "inputs = [\"in\"]\nbuffer = { max_events = 256, max_bytes = 65536 }",
            ),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[("WEIR_CONFIG", config.to_str().unwrap())],
    );
    common::rt().block_on(async {
        let url = format!("http://{}/pipelines/web/ingest", server.http);
        let client = reqwest::Client::new();
        let body: String = (0..200)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(100)))
            .collect();
        let mut tasks = Vec::new();
        for _ in 0..60 {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let r = client.post(url).body(body).send().await.unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry)
            }));
        }
        let mut ok = 0;
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                (200, _) => ok += 1,
                (429, Some(retry)) => {
                    assert_eq!(retry, "1");
                    busy += 1;
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert!(busy > 0 && ok > 0, "{ok} delivered, {busy} refused");
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        assert_eq!(read_all(&c, "web-out").await.len(), ok * 200);
    });
    server.stop();
}

/// CSV files → clean and convert → topic: rows by the header, a bad row to the dead-letter
/// topic, a rotation while running (the renamed file read to its end, the new one from its
/// start), and a restart that resumes at the right byte: every row once, none missing.
#[test]
fn a_file_source_follows_rotation_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("in");
    std::fs::create_dir_all(&logs).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[pipelines.csv.sources.files]
type = "file"
include = ["{}/*.csv"]
decoding = {{ codec = "csv" }}
poll_ms = 20

[pipelines.csv.transforms.convert]
type = "remap"
inputs = ["files"]
source = '''
.id = to_int!(.id)
.amount = to_float!(.amount)
'''

[pipelines.csv.sinks.out]
type = "topic"
inputs = ["convert"]
topic = "rows"

[pipelines.csv.dead_letter]
type = "topic"
topic = "rows-dlq"
"#,
            logs.display()
        ),
    );
    let env = [("WEIR_CONFIG", config.to_str().unwrap())];
    let data = dir.path().join("data");
    let append = |name: &str, text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(name))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let ids = |rows: &[Read]| -> Vec<i64> {
        let mut v: Vec<i64> = rows
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
                assert!(v["amount"].is_f64(), "{v}");
                v["id"].as_i64().unwrap()
            })
            .collect();
        v.sort();
        v
    };
    append(
        "a.csv",
        "id,amount,note\n1,1.5,\"first, quoted\"\n2,2.5,x\n3,3.5,x\n4,oops\n",
    );
    let server = Server::start(&data, &env);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        let rows = wait_for(&c, "rows", 3, Duration::from_secs(60)).await;
        assert_eq!(ids(&rows), [1, 2, 3]);
        let dlq = wait_for(&c, "rows-dlq", 1, Duration::from_secs(60)).await;
        assert_eq!(dlq[0].value, "4,oops");
        assert!(
            dlq[0].headers["weir.error"].contains("2 fields"),
            "{:?}",
            dlq[0].headers
        );
        // Rotation: more rows, then the file renamed away and a new one in its place.
        append("a.csv", "5,5.5,x\n6,6.5,x\n");
        std::fs::rename(logs.join("a.csv"), logs.join("a.csv.1")).unwrap();
        append("a.csv", "id,amount,note\n7,7.5,new file\n");
        let rows = wait_for(&c, "rows", 6, Duration::from_secs(60)).await;
        assert_eq!(ids(&rows), [1, 2, 3, 5, 6, 7]);
    });
    server.stop();
    // Lines written while stopped are read after the restart, and nothing twice.
    append("a.csv", "8,8.5,x\n9,9.5,x\n");
    let server = Server::start(&data, &env);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        let rows = wait_for(&c, "rows", 8, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rows = if rows.len() == 8 {
            read_all(&c, "rows").await
        } else {
            rows
        };
        assert_eq!(ids(&rows), [1, 2, 3, 5, 6, 7, 8, 9]);
    });
    server.stop();
}

/// topic → JSON lines files rotated by size: every record in exactly one line of one file.
#[test]
fn a_file_sink_rotates_by_size_and_writes_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[pipelines.archive.sources.in]
type = "topic"
topic = "events"

[pipelines.archive.sinks.files]
type = "file"
inputs = ["in"]
path = "{}/events.jsonl"
max_bytes = 4096
"#,
            out.display()
        ),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[("WEIR_CONFIG", config.to_str().unwrap())],
    );
    const N: usize = 1000;
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        let values: Vec<String> = (0..N).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
        for chunk in values.chunks(100) {
            let refs: Vec<&[u8]> = chunk.iter().map(|v| v.as_bytes()).collect();
            c.produce("events", None, None, common::batch(&refs))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut seen = Vec::new();
            let mut files = 0;
            for f in std::fs::read_dir(&out).into_iter().flatten().flatten() {
                files += 1;
                let text = std::fs::read_to_string(f.path()).unwrap();
                assert!(
                    text.len() <= 4096 + 64,
                    "{} is {} bytes",
                    f.path().display(),
                    text.len()
                );
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    seen.push(v["i"].as_u64().unwrap() as usize);
                }
            }
            seen.sort();
            if seen.len() >= N {
                assert_eq!(seen, (0..N).collect::<Vec<_>>());
                assert!(files > 2, "rotated into {files} files");
                break;
            }
            assert!(Instant::now() < deadline, "{} of {N} lines", seen.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    server.stop();
}

/// Protobuf topic → JSON lines file, the `.proto` compiled when the pipeline is built; a
/// record that is not the message goes to a dead-letter file.
#[test]
fn protobuf_records_become_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shop.proto"),
        "syntax = \"proto3\";\npackage shop;\nmessage Order { string id = 1; int32 qty = 2; }\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[pipelines.pb.sources.in]
type = "topic"
topic = "orders-pb"
decoding = {{ codec = "protobuf", message = "shop.Order", proto = "shop.proto" }}

[pipelines.pb.sinks.lines]
type = "file"
inputs = ["in"]
path = "{0}/orders.jsonl"

[pipelines.pb.dead_letter]
type = "file"
path = "{0}/dead.txt"
"#,
            out.display()
        ),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[("WEIR_CONFIG", config.to_str().unwrap())],
    );
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        // Order{id, qty} in Protobuf's wire format: field 1 (bytes), field 2 (varint).
        let order = |id: &str, qty: u8| {
            let mut b = vec![0x0a, id.len() as u8];
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&[0x10, qty]);
            b
        };
        let (a, b) = (order("o1", 3), order("o2", 7));
        let garbage = b"\xff\xff\xffnot protobuf".to_vec();
        c.produce("orders-pb", None, None, common::batch(&[&a, &b, &garbage]))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = std::fs::read_to_string(out.join("orders.jsonl")).unwrap_or_default();
            let dead = std::fs::read(out.join("dead.txt")).unwrap_or_default();
            if lines.lines().count() == 2 && !dead.is_empty() {
                assert_eq!(
                    lines.lines().collect::<Vec<_>>(),
                    [r#"{"id":"o1","qty":3}"#, r#"{"id":"o2","qty":7}"#]
                );
                assert_eq!(dead, [garbage.as_slice(), b"\n"].concat());
                break;
            }
            assert!(Instant::now() < deadline, "{lines:?} {dead:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    server.stop();
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A slow reader of a pipeline's stdout (`weir pipeline run`): a normal sink holds the source
/// back (its sibling gets only as far as the buffers allow, memory stays bounded), while a
/// best-effort one never stalls its sibling (which gets everything; the slow one drops).
#[test]
fn a_slow_sink_holds_back_its_source_unless_best_effort() {
    use std::io::Read as _;
    const N: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    common::rt().block_on(async {
        let c = Client::connect(&server.addr, "pipeline-test")
            .await
            .unwrap();
        c.create_topic(
            "big",
            msg::TopicConfig {
                partitions: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let pad = "x".repeat(1000);
        let values: Vec<String> = (0..N)
            .map(|i| format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
            .collect();
        for chunk in values.chunks(500) {
            let refs: Vec<&[u8]> = chunk.iter().map(|v| v.as_bytes()).collect();
            c.produce("big", None, None, common::batch(&refs))
                .await
                .unwrap();
        }
    });
    server.stop();
    for best_effort in [false, true] {
        let out = dir.path().join(format!("fast-{best_effort}.jsonl"));
        let file = dir.path().join(format!("slow-{best_effort}.toml"));
        std::fs::write(
            &file,
            format!(
                r#"
[sources.in]
type = "topic"
topic = "big"
group = "slow-{best_effort}"

[sinks.slow]
type = "stdout"
inputs = ["in"]
best_effort = {best_effort}

[sinks.fast]
type = "file"
inputs = ["in"]
path = "{}"
"#,
                out.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["pipeline", "run", file.to_str().unwrap()])
            .env("WEIR_DATA_DIR", &data)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut stdout = child.stdout.take().unwrap();
        // Read about 100 KB/s.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 10_000];
            let mut lines = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(4) {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => lines += buf[..n].iter().filter(|b| **b == b'\n').count(),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (lines, stdout)
        });
        let mut peak = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            peak = peak.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        let (read, stdout) = reader.join().unwrap();
        let fast = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        drop(stdout);
        let _ = child.wait();
        eprintln!(
            "best_effort={best_effort}: slow read {read}, fast wrote {fast}, peak RSS {} MiB",
            peak >> 20
        );
        if best_effort {
            assert_eq!(
                fast, N,
                "the sibling of a best-effort sink is not held back"
            );
        } else {
            assert!(
                fast < N / 2,
                "the slow sink holds the source back: fast wrote {fast}"
            );
            assert!(
                fast < read + 12_000,
                "only the buffers run ahead: {fast} against {read}"
            );
        }
        assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
    }
}

/// The pipelines in docs/pipelines.md pass `weir pipeline check` (the worked examples as
/// files; the first one as a server's `[pipelines.orders]` tables).
#[test]
fn the_documented_pipelines_are_valid() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/pipelines.md"
    ))
    .unwrap();
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 4, "{} toml blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::write(
        dir.path().join("schemas/telemetry.proto"),
        "syntax = \"proto3\";\npackage iot;\nmessage Reading { string device = 1; double value = 2; }\n",
    )
    .unwrap();
    for (i, block) in blocks.iter().enumerate() {
        // The first block is in a server's configuration: its tables under [pipelines.orders].
        let text = if i == 0 {
            block.replace("[pipelines.orders.", "[")
        } else {
            block.to_string()
        };
        let path = dir.path().join(format!("doc{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["pipeline", "check", path.to_str().unwrap()]);
        let (ok, _, err) = common::run(cmd, "");
        assert!(ok, "docs/pipelines.md toml block {i}: {err}\n{block}");
    }
}

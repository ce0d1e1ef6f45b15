//! `/metrics` of the real binary: the families weir promises are there, move with traffic
//! through each front door, and pass `promtool check metrics` (Prometheus's own linter,
//! installed by scripts/test).

use crate::common;

use std::process::Command;

use common::{Server, batch, cli, run};
use weir_client::Client;

async fn scrape(http: &str) -> String {
    let r = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    r.text().await.unwrap()
}

/// The value of the first sample whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Like [`value`]; a counter not yet reported counts as zero.
fn value_or_zero(text: &str, series: &str) -> f64 {
    if text.lines().any(|l| l.starts_with(series)) {
        value(text, series)
    } else {
        0.0
    }
}

#[test]
fn metrics_cover_every_front_door_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (ok, _, err) = cli(
        &server.addr,
        &["topic", "create", "m", "--partitions", "2"],
        "",
    );
    assert!(ok, "{err}");
    let rt = common::rt();
    let before = rt.block_on(scrape(&server.http));
    rt.block_on(async {
        let c = Client::connect(&server.addr, "metrics-test").await.unwrap();
        for _ in 0..5 {
            c.produce("m", Some(0), None, batch(&[b"a", b"b", b"c"]))
                .await
                .unwrap();
        }
        c.commit("mg", None, &[("m".into(), 0, 6)]).await.unwrap();
        // HTTP produce too.
        let r = reqwest::Client::new()
            .post(format!("http://{}/topics/m/records", server.http))
            .header("content-type", "application/json")
            .body(serde_json::json!({"records": [{"value": "x", "partition": 1}]}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
    // And Kafka.
    let mut kcat = Command::new("kcat");
    kcat.args(["-b", &server.kafka, "-t", "m", "-P", "-p", "1"]);
    let (ok, _, err) = run(kcat, "k1\nk2\n");
    assert!(ok, "{err}");
    let text = rt.block_on(scrape(&server.http));

    // Produce counters moved by what was sent: 15 native + 1 HTTP + 2 Kafka records.
    let records = value(&text, "weir_broker_produce_records_total")
        - value_or_zero(&before, "weir_broker_produce_records_total");
    assert_eq!(records, 18.0, "{text}");
    assert!(value(&text, "weir_broker_produce_bytes_total") > 0.0);
    assert!(value(&text, "weir_broker_produce_duration_seconds_count") >= 7.0);
    assert!(value(&text, "weir_native_requests_total{api=\"produce\"}") >= 5.0);
    assert!(value(&text, "weir_kafka_requests_total{api=\"produce\"}") >= 1.0);
    // State read when scraped: sizes, partitions, lag (9 records left after offset 6).
    assert_eq!(value(&text, "weir_topic_partitions{topic=\"m\"}"), 2.0);
    assert_eq!(value(&text, "weir_log_records{topic=\"m\"}"), 18.0);
    assert!(value(&text, "weir_log_size_bytes{topic=\"m\"}") > 0.0);
    assert_eq!(value(&text, "weir_group_lag_records{group=\"mg\"}"), 9.0);
    assert!(text.contains("# TYPE weir_ws_dropped_records_total counter"));
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("weir_"), "one naming scheme: {line}");
    }

    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let (ok, out, err) = run(promtool, &text);
    assert!(ok, "promtool check metrics failed:\n{out}{err}\n{text}");
    server.stop();
}

/// A client that sends its next request promptly is busy polled for it: with 1 ms windows, a
/// closed loop of produces is caught in the windows (counted as `request`); with busy polling
/// off, no window is opened.
#[test]
fn busy_polling_catches_a_prompt_clients_requests() {
    for (busy_poll_us, on) in [("1000", true), ("0", false)] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), &[("WEIR_NATIVE__BUSY_POLL_US", busy_poll_us)]);
        let (ok, _, err) = cli(
            &server.addr,
            &["topic", "create", "p", "--durability", "never"],
            "",
        );
        assert!(ok, "{err}");
        let rt = common::rt();
        rt.block_on(async {
            let c = Client::connect(&server.addr, "poll-test").await.unwrap();
            for _ in 0..200 {
                c.produce("p", Some(0), None, batch(&[b"x"])).await.unwrap();
            }
        });
        let text = rt.block_on(scrape(&server.http));
        let caught = value_or_zero(&text, "weir_native_busy_polls_total{outcome=\"request\"}");
        let expired = value_or_zero(&text, "weir_native_busy_polls_total{outcome=\"expired\"}");
        if on {
            // Most are caught on a quiet machine; at least one on any.
            assert!(caught >= 1.0, "{caught} of 199 caught, {expired} expired");
        } else {
            assert_eq!(caught + expired, 0.0, "polled with busy polling off");
        }
        server.stop();
    }
}

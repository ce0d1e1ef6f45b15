//! The HTTP API and WebSocket push of the real binary, driven by a real HTTP client (reqwest)
//! and a real WebSocket client (Python `websockets`, see `tests/py/`). Every JSON body the
//! server returns is checked against the schema its own `/openapi.json` documents.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, python};
use serde_json::{Value, json};
use weir_client::{Client, PartitionConsumer, Start};

// ---- a minimal JSON-schema check, enough for the document's own vocabulary ----

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").expect("local ref");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("schema type {other} not handled"),
    }
}

/// Checks `v` against `schema`; returns what does not match, with its JSON path.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(doc, schema);
    let fail = |m: String| Err(format!("{at}: {m} (value {v})"));
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => return fail(format!("not a {t}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)) => {
            return fail(format!("not any of {ts:?}"));
        }
        _ => {}
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return fail(format!("not one of {e:?}"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return fail(format!("not {c}"));
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            conforms(doc, sub, v, at)?;
        }
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let n = one
            .iter()
            .filter(|sub| conforms(doc, sub, v, at).is_ok())
            .count();
        if n != 1 {
            return fail(format!("matches {n} of oneOf"));
        }
    }
    if let (Some(obj), true) = (
        v.as_object(),
        s.get("properties").is_some() || s.get("required").is_some(),
    ) {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(r.as_str().unwrap()) {
                return fail(format!("missing required {r}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => conforms(doc, ps, val, &format!("{at}.{k}"))?,
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => return fail(format!("undocumented field {k}")),
                    Some(extra) if extra.is_object() => {
                        conforms(doc, extra, val, &format!("{at}.{k}"))?
                    }
                    // Every response schema lists its fields: an extra one is undocumented.
                    _ => return fail(format!("undocumented field {k}")),
                },
            }
        }
    } else if let (Some(obj), Some(extra)) = (v.as_object(), s.get("additionalProperties")) {
        for (k, val) in obj {
            conforms(doc, extra, val, &format!("{at}.{k}"))?;
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            conforms(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

pub(crate) struct Http {
    pub(crate) base: String,
    client: reqwest::Client,
    doc: Value,
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Http {
    pub(crate) async fn new(server: &Server) -> Http {
        let base = format!("http://{}", server.http);
        let client = reqwest::Client::new();
        let doc: Value = serde_json::from_slice(
            &client
                .get(format!("{base}/openapi.json"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        Http { base, client, doc }
    }

    /// Sends a request; checks the answer against the document: the status is documented
    /// for the route (`route` in OpenAPI form) and a JSON body matches its schema.
    pub(crate) async fn call(
        &self,
        method: &str,
        route: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = self.client.request(m, format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct).body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {path}: {status} body is not JSON ({e})"))
        };
        let documented = &self.doc["paths"][route][method]["responses"][status.to_string()];
        assert!(
            !documented.is_null(),
            "{method} {path}: status {status} is not documented for {route}: {body}"
        );
        if let Some(schema) = documented.pointer("/content/application~1json/schema") {
            conforms(&self.doc, schema, &body, "$")
                .unwrap_or_else(|e| panic!("{method} {path} ({status}): {e}"));
        }
        Reply { status, body }
    }

    pub(crate) async fn get(&self, route: &str, path: &str) -> Reply {
        self.call("get", route, path, None, Vec::new()).await
    }

    async fn post_json(&self, route: &str, path: &str, body: Value) -> Reply {
        self.call(
            "post",
            route,
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn create_topic(&self, body: Value) {
        let r = self.post_json("/topics", "/topics", body).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }

    async fn produce(&self, topic: &str, records: Value) -> Vec<(u32, u64)> {
        let r = self
            .post_json(
                "/topics/{topic}/records",
                &format!("/topics/{topic}/records"),
                json!({ "records": records }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["partition"].as_u64().unwrap() as u32,
                    o["offset"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    async fn fetch(&self, topic: &str, partition: u32, query: &str) -> Reply {
        self.get(
            "/topics/{topic}/partitions/{partition}/records",
            &format!("/topics/{topic}/partitions/{partition}/records?{query}"),
        )
        .await
    }

    /// Every record of a partition, by fetching until the high watermark.
    async fn all_records(&self, topic: &str, partition: u32) -> Vec<Value> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let r = self
                .fetch(topic, partition, &format!("offset={offset}"))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            out.extend(r.body["records"].as_array().unwrap().iter().cloned());
            offset = r.body["next_offset"].as_u64().unwrap();
            if offset >= r.body["high_watermark"].as_u64().unwrap() {
                return out;
            }
        }
    }

    async fn error(
        &self,
        method: &str,
        route: &str,
        path: &str,
        ct: Option<&str>,
        body: &[u8],
    ) -> (u16, String, String) {
        let r = self.call(method, route, path, ct, body.to_vec()).await;
        let code = r.body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let message = r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (r.status, code, message)
    }
}

#[test]
fn http_and_native_clients_read_each_others_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let http = Http::new(&server).await;
        http.create_topic(json!({"name": "orders", "partitions": 3})).await;
        // HTTP → native: JSON values, strings, base64, headers, explicit partitions.
        let sent = json!([
            {"key": "c1", "value": {"qty": 3}, "headers": {"source": "web"}},
            {"key": "c2", "value": "plain"},
            {"key": "c1", "value": "second for c1"},
            {"value_base64": "AP8=", "partition": 2},
            {"key": "c3", "value": null},
        ]);
        let offsets = http.produce("orders", sent.clone()).await;
        assert_eq!(offsets.len(), 5);
        assert_eq!(offsets[0].0, offsets[2].0, "one key, one partition");
        assert_eq!(offsets[3].0, 2);
        // Raw bytes, one record, key in the query string.
        let r = http
            .call(
                "post",
                "/topics/{topic}/records",
                "/topics/orders/records?key=raw&partition=1",
                Some("application/octet-stream"),
                vec![0xde, 0xad, 0xbe, 0xef],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["offsets"][0]["partition"], 1);

        let c = Client::connect(&server.addr, "test").await.unwrap();
        let mut got: BTreeMap<(u32, u64), weir_client::ReceivedRecord> = BTreeMap::new();
        for p in 0..3 {
            let mut consumer = PartitionConsumer::new(c.clone(), "orders", p, Start::Earliest)
                .await
                .unwrap();
            for rec in consumer.poll(Duration::from_secs(1)).await.unwrap() {
                got.insert((p, rec.offset), rec);
            }
        }
        assert_eq!(got.len(), 6);
        let value = |i: usize| got[&offsets[i]].value.as_deref().map(<[u8]>::to_vec);
        assert_eq!(value(0), Some(br#"{"qty":3}"#.to_vec()));
        assert_eq!(got[&offsets[0]].key.as_deref(), Some(&b"c1"[..]));
        assert_eq!(
            got[&offsets[0]].headers,
            vec![(bytes::Bytes::from("source"), Some(bytes::Bytes::from("web")))]
        );
        assert_eq!(value(1), Some(b"plain".to_vec()));
        assert_eq!(value(3), Some(vec![0, 0xff]));
        assert_eq!(value(4), None);
        let raw = got.values().find(|r| r.key.as_deref() == Some(&b"raw"[..])).unwrap();
        assert_eq!(raw.value.as_deref(), Some(&[0xde, 0xad, 0xbe, 0xef][..]));

        // Native → HTTP.
        c.create_topic("native", weir_client::messages::TopicConfig { partitions: 1, ..Default::default() })
            .await
            .unwrap();
        let mut b = weir_batch::BatchBuilder::new(1_700_000_000_000);
        b.push(weir_batch::RecordSpec {
            key: Some(b"k"),
            value: Some(b"hello"),
            headers: vec![("trace", Some(b"abc")), ("bin", Some(&[0xff]))],
            timestamp: None,
        });
        b.push(weir_batch::RecordSpec::value(&[0x80, 0x81]));
        b.push(weir_batch::RecordSpec {
            value: Some(b"later"),
            timestamp: Some(1_700_000_005_000),
            ..Default::default()
        });
        c.produce("native", Some(0), None, bytes::Bytes::from(b.build()))
            .await
            .unwrap();
        let r = http.fetch("native", 0, "offset=0").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let recs = r.body["records"].as_array().unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[0],
            json!({"topic": "native", "partition": 0, "offset": 0, "timestamp": 1_700_000_000_000i64,
                   "key": "k", "value": "hello", "headers": {"trace": "abc", "bin": null},
                   "headers_base64": {"bin": "/w=="}})
        );
        assert_eq!(recs[1]["value"], Value::Null);
        assert_eq!(recs[1]["value_base64"], "gIE=");
        assert_eq!(r.body["next_offset"], 3);
        assert_eq!(r.body["high_watermark"], 3);
        // From an offset inside a batch, by timestamp, and in the binary format.
        let r = http.fetch("native", 0, "offset=1").await;
        assert_eq!(r.body["records"][0]["offset"], 1);
        let r = http.fetch("native", 0, "timestamp=1700000004000").await;
        assert_eq!(r.body["records"][0]["value"], "later");
        let r = http.fetch("native", 0, "offset=0&format=binary").await;
        assert_eq!(r.body["records"][0]["value_base64"], "aGVsbG8=");
        // A long poll at the end answers when a record arrives.
        let poll = http.fetch("native", 0, "offset=3&max_wait_ms=5000");
        let produce = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            http.produce("native", json!([{"value": "woken"}])).await
        };
        let started = Instant::now();
        let (r, _) = tokio::join!(poll, produce);
        assert_eq!(r.body["records"][0]["value"], "woken");
        assert!(started.elapsed() < Duration::from_secs(4));
        let r = http.fetch("native", 0, "offset=4&max_wait_ms=200").await;
        assert_eq!(r.body["records"], json!([]));
    });
    server.stop();
}

/// method, route, path, content type, body, expected status, code, and a part of the message.
type ErrorCase<'a> = (
    &'a str,
    &'a str,
    String,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
    &'a str,
);

#[test]
fn errors_are_json_with_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("WEIR_HTTP__MAX_BODY_BYTES", "4096"),
            ("WEIR_HTTP__WS_MAX_CONNECTIONS", "1"),
        ],
    );
    common::rt().block_on(async {
        let http = Http::new(&server).await;
        http.create_topic(json!({"name": "t"})).await;
        let produce = "/topics/{topic}/records";
        let json_ct = Some("application/json");
        let cases: Vec<ErrorCase> = vec![
            (
                "post",
                produce,
                "/topics/nope/records".into(),
                json_ct,
                br#"{"records":[{"value":"x"}]}"#.to_vec(),
                404,
                "unknown_topic",
                "topic 'nope' does not exist",
            ),
            (
                "post",
                produce,
                "/topics/t/records".into(),
                json_ct,
                b"{not json".to_vec(),
                400,
                "bad_request",
                "not valid JSON",
            ),
            (
                "post",
                produce,
                "/topics/t/records".into(),
                json_ct,
                br#"{"rekords":[]}"#.to_vec(),
                400,
                "bad_request",
                "rekords",
            ),
            (
                "post",
                produce,
                "/topics/t/records".into(),
                json_ct,
                br#"{"records":[]}"#.to_vec(),
                400,
                "invalid_record",
                "empty",
            ),
            (
                "post",
                produce,
                "/topics/t/records".into(),
                json_ct,
                format!(r#"{{"records":[{{"value":"{}"}}]}}"#, "x".repeat(5000)).into_bytes(),
                413,
                "payload_too_large",
                "4096",
            ),
            (
                "post",
                produce,
                "/topics/t/records".into(),
                Some("text/plain"),
                b"hi".to_vec(),
                415,
                "unsupported_media_type",
                "text/plain",
            ),
            (
                "post",
                produce,
                "/topics/t/records".into(),
                json_ct,
                br#"{"records":[{"value":"x","partition":9}]}"#.to_vec(),
                404,
                "unknown_partition",
                "no partition 9",
            ),
            (
                "post",
                "/topics",
                "/topics".into(),
                json_ct,
                br#"{"name":"t"}"#.to_vec(),
                409,
                "topic_exists",
                "t",
            ),
            (
                "post",
                "/topics",
                "/topics".into(),
                json_ct,
                br#"{"name":"no/slash"}"#.to_vec(),
                400,
                "invalid_topic_name",
                "no/slash",
            ),
            (
                "post",
                "/topics",
                "/topics".into(),
                json_ct,
                br#"{"name":"z","partitions":0}"#.to_vec(),
                400,
                "invalid_config",
                "partitions",
            ),
            (
                "get",
                "/topics/{topic}",
                "/topics/nope".into(),
                None,
                vec![],
                404,
                "unknown_topic",
                "nope",
            ),
            (
                "delete",
                "/topics/{topic}",
                "/topics/nope".into(),
                None,
                vec![],
                404,
                "unknown_topic",
                "nope",
            ),
            (
                "get",
                "/groups/{group}",
                "/groups/nobody".into(),
                None,
                vec![],
                404,
                "unknown_group",
                "nobody",
            ),
        ];
        for (method, route, path, ct, body, status, code, needle) in cases {
            let (s, c, m) = http.error(method, route, &path, ct, &body).await;
            assert_eq!((s, c.as_str()), (status, code), "{method} {path}: {m}");
            assert!(
                m.contains(needle),
                "{method} {path}: {m:?} lacks {needle:?}"
            );
        }
        let fetch = "/topics/{topic}/partitions/{partition}/records";
        for (path, status, code) in [
            ("/topics/t/partitions/7/records", 404, "unknown_partition"),
            ("/topics/t/partitions/x/records", 400, "bad_request"),
            (
                "/topics/t/partitions/0/records?offset=99",
                416,
                "offset_out_of_range",
            ),
            (
                "/topics/t/partitions/0/records?offset=1&timestamp=1",
                400,
                "bad_request",
            ),
            (
                "/topics/t/partitions/0/records?colour=red",
                400,
                "bad_request",
            ),
        ] {
            let (s, c, m) = http.error("get", fetch, path, None, &[]).await;
            assert_eq!((s, c.as_str()), (status, code), "{path}: {m}");
        }
        // Paths and methods nobody serves answer in the same shape.
        for (method, path, status, code) in [
            ("GET", "/nowhere", 404, "not_found"),
            ("PUT", "/topics", 405, "method_not_allowed"),
        ] {
            let resp = http
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", http.base),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), status);
            let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            conforms(
                &http.doc,
                &json!({"$ref": "#/components/schemas/Error"}),
                &body,
                "$",
            )
            .unwrap();
            assert_eq!(body["error"]["code"], code);
        }
        // WebSocket connections beyond the limit are refused the same way.
        let (first, head) = raw_handshake(&server.http);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (mut second, head) = raw_handshake(&server.http);
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut second, &mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_third, head) = raw_handshake(&server.http);
            if head.starts_with("HTTP/1.1 101") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the slot was not given back: {head}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Nothing was written by any of the refused requests.
        let r = http.get("/topics/{topic}", "/topics/t").await;
        assert_eq!(r.body["partitions"][0]["high_watermark"], 0);
    });
    server.stop();
}

#[test]
fn openapi_document_matches_the_served_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let http = Http::new(&server).await;
        assert_eq!(http.doc["openapi"], "3.1.0");
        http.create_topic(json!({"name": "t"})).await;
        http.create_topic(json!({"name": "doomed"})).await;
        let paths = http.doc["paths"].as_object().unwrap().clone();
        assert!(paths.len() >= 11);
        // Redirects are answers of their own here (`/` documents its 307).
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for (route, ops) in &paths {
            let path = route
                .replace(
                    "{topic}",
                    if route == "/topics/{topic}" {
                        "doomed"
                    } else {
                        "t"
                    },
                )
                .replace("{partition}", "0")
                .replace("{group}", "g")
                .replace("{file}", "app.js");
            let mut methods: Vec<&String> = ops.as_object().unwrap().keys().collect();
            methods.sort_by_key(|m| *m == "delete"); // delete last
            for method in methods {
                let resp = client
                    .request(
                        reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                        format!("{}{path}", http.base),
                    )
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                if route == "/console/live" {
                    // An event stream does not end: its head is what can be checked.
                    assert_eq!(status, 200);
                    assert_eq!(resp.headers()["content-type"], "text/event-stream");
                    continue;
                }
                let body: Value =
                    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
                let code = body["error"]["code"].as_str().unwrap_or("");
                assert!(
                    code != "not_found" && code != "method_not_allowed",
                    "{method} {route} is documented but not served: {status} {body}"
                );
                if route != "/ws" {
                    let documented = &ops[method]["responses"][status.to_string()];
                    assert!(
                        !documented.is_null(),
                        "{method} {route}: {status} undocumented: {body}"
                    );
                }
            }
            // A method the document does not list is refused.
            let resp = http
                .client
                .request(reqwest::Method::PATCH, format!("{}{path}", http.base))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 405, "PATCH {route}");
        }
        let r = http.get("/health", "/health").await;
        assert_eq!(r.body, json!({"status": "ok"}));
        let r = http.get("/ready", "/ready").await;
        assert_eq!(r.body, json!({"status": "ready"}));
        http.get("/stats", "/stats").await;
    });
    server.stop();
}

#[test]
fn topics_and_groups_admin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let http = Http::new(&server).await;
        let r = http
            .post_json(
                "/topics",
                "/topics",
                json!({"name": "cfg", "partitions": 2, "retention_ms": 60000,
                       "durability": {"interval": {"ms": 50}}, "segment_bytes": 1048576}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = http.get("/topics/{topic}", "/topics/cfg").await;
        assert_eq!(r.body["config"]["partitions"], 2);
        assert_eq!(r.body["config"]["retention_ms"], 60000);
        assert_eq!(
            r.body["config"]["durability"],
            json!({"interval": {"ms": 50}})
        );
        assert_eq!(r.body["config"]["segment_bytes"], 1048576);
        assert_eq!(r.body["partitions"].as_array().unwrap().len(), 2);
        http.produce(
            "cfg",
            json!([{"value": "a", "partition": 1}, {"value": "b", "partition": 1}]),
        )
        .await;
        let r = http.get("/topics", "/topics").await;
        let names: Vec<&str> = r.body["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cfg"]);
        assert_eq!(r.body["topics"][0]["partitions"][1]["high_watermark"], 2);

        // Groups: committed offsets and lag.
        let c = Client::connect(&server.addr, "test").await.unwrap();
        c.commit("billing", None, &[("cfg".to_string(), 1, 1)])
            .await
            .unwrap();
        let member = weir_client::GroupConsumer::join(
            Client::connect(&server.addr, "http-test").await.unwrap(),
            "workers",
            &["cfg"],
            Default::default(),
        )
        .await
        .unwrap();
        let r = http.get("/groups/{group}", "/groups/workers").await;
        assert_eq!(r.body["protocol"], "native");
        assert_eq!(r.body["members"][0]["member_id"], member.member_id());
        assert_eq!(r.body["members"][0]["client_id"], "http-test");
        assert_eq!(r.body["members"][0]["assignment"], json!({"cfg": [0, 1]}));
        assert_eq!(r.body["offsets"][0]["lag"], 0); // partition 0: empty, nothing committed
        assert_eq!(r.body["offsets"][1]["lag"], 2);
        let r = http.get("/groups", "/groups").await;
        assert_eq!(r.body, json!({"groups": ["billing", "workers"]}));
        let r = http.get("/groups/{group}", "/groups/billing").await;
        assert_eq!(r.body["group"], "billing");
        assert_eq!(
            r.body["offsets"],
            json!([{"topic": "cfg", "partition": 1, "committed": 1, "high_watermark": 2, "lag": 1}])
        );

        let r = http
            .call("delete", "/topics/{topic}", "/topics/cfg", None, vec![])
            .await;
        assert_eq!(r.status, 204);
        let r = http.get("/topics/{topic}", "/topics/cfg").await;
        assert_eq!(r.status, 404);
    });
    server.stop();
}

// ---- WebSocket, through the Python `websockets` client ----

/// A running `tests/py/ws_client.py`.
struct Py {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
}

impl Py {
    fn start(server: &Server, ops: &[Value], extra: &[&str]) -> Py {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_client.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .arg("--url")
            .arg(format!("ws://{}/ws", server.http));
        for op in ops {
            cmd.arg("--send").arg(op.to_string());
        }
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Python client");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Py {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn next(&mut self, timeout: Duration) -> Value {
        let line = self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            let mut last: Vec<String> = self
                .seen
                .iter()
                .filter(|f| f["type"] != "record")
                .map(|f| f.to_string())
                .collect();
            let offs: Vec<u64> = self
                .seen
                .iter()
                .filter_map(|f| f["offset"].as_u64())
                .collect();
            for w in offs.windows(2) {
                if w[1] != w[0] + 1 {
                    last.push(format!("jump {} -> {}", w[0], w[1]));
                }
            }
            panic!(
                "no frame from the Python client ({e}); {} so far, the last: {last:?}",
                self.seen.len()
            )
        });
        let v: Value = serde_json::from_str(&line).unwrap();
        self.seen.push(v.clone());
        v
    }

    /// Reads frames until one of type `t`.
    fn wait_for(&mut self, t: &str) -> Value {
        loop {
            let v = self.next(Duration::from_secs(20));
            if v["type"] == t {
                return v;
            }
            assert_ne!(
                v["type"], "_end",
                "ended before a {t} frame: {:?}",
                self.seen
            );
        }
    }

    /// Lets a paused client read on.
    fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Every frame until the end; returns (frames, the end line).
    fn finish(mut self) -> (Vec<Value>, Value) {
        let end = self.wait_for("_end");
        let _ = self.child.wait();
        let mut frames = std::mem::take(&mut self.seen);
        frames.pop();
        (frames, end)
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn records(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "record").collect()
}

fn check_ws_frames(doc: &Value, frames: &[Value]) {
    for f in frames {
        let schema = match f["type"].as_str().unwrap() {
            "record" => "WsRecord",
            "subscribed" => "WsSubscribed",
            "snapshot_end" => "WsSnapshotEnd",
            "gap" => "WsGap",
            "dropped" => "WsDropped",
            "error" => "WsError",
            other => panic!("undocumented frame type {other}: {f}"),
        };
        conforms(
            doc,
            &json!({"$ref": format!("#/components/schemas/{schema}")}),
            f,
            "$",
        )
        .unwrap_or_else(|e| panic!("{schema}: {e}"));
    }
}

#[test]
fn websocket_key_filter_and_resume_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let rt = common::rt();
    let http = rt.block_on(Http::new(&server));
    rt.block_on(http.create_topic(json!({"name": "quotes", "partitions": 2})));
    let keys = ["AAPL", "MSFT", "GOOG"];
    let batch = |from: usize| -> Value {
        (from..from + 30)
            .map(|i| json!({"key": keys[i % 3], "value": format!("px-{i}")}))
            .collect()
    };
    rt.block_on(http.produce("quotes", batch(0)));
    let sub = |from: Value| {
        json!({"op": "subscribe", "topics": ["quotes"], "keys": ["AAPL", "MSFT"], "from": from,
               "policy": "disconnect"})
    };
    // First connection: from the beginning, leaves after 7 records.
    let (frames, end) = Py::start(&server, &[sub(json!("earliest"))], &["--records", "7"]).finish();
    assert_eq!(end["why"], "count", "{frames:?}");
    check_ws_frames(&http.doc, &frames);
    let ack = &frames[0];
    assert_eq!(ack["type"], "subscribed");
    let mut resume: BTreeMap<String, u64> = ack["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].to_string(), p["from"].as_u64().unwrap()))
        .collect();
    let mut seen = Vec::new();
    for r in records(&frames) {
        assert_ne!(r["key"], "GOOG", "filtered key delivered: {r}");
        resume.insert(
            r["partition"].to_string(),
            r["offset"].as_u64().unwrap() + 1,
        );
        seen.push((
            r["partition"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
        ));
    }
    // Meanwhile more records arrive.
    rt.block_on(http.produce("quotes", batch(30)));
    // The truth: every AAPL/MSFT record not yet seen.
    let mut expected = BTreeSet::new();
    let mut total = 0;
    for p in 0..2u64 {
        for r in rt.block_on(http.all_records("quotes", p as u32)) {
            if r["key"] != "GOOG" {
                total += 1;
                let o = r["offset"].as_u64().unwrap();
                if o >= resume[&p.to_string()] {
                    expected.insert((p, o, r["value"].as_str().unwrap().to_string()));
                }
            }
        }
    }
    assert_eq!(seen.len() + expected.len(), total);
    let (frames, _) = Py::start(
        &server,
        &[sub(json!({"offset": resume}))],
        &["--records", &expected.len().to_string()],
    )
    .finish();
    check_ws_frames(&http.doc, &frames);
    assert!(
        !frames
            .iter()
            .any(|f| f["type"] == "gap" || f["type"] == "dropped"),
        "{frames:?}"
    );
    let got: BTreeSet<(u64, u64, String)> = records(&frames)
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
                r["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected, "exactly the missed records");
    assert_eq!(got.len(), records(&frames).len(), "no duplicates");
    // Per partition, in offset order.
    for p in 0..2 {
        let offs: Vec<u64> = records(&frames)
            .iter()
            .filter(|r| r["partition"] == p)
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "{offs:?}");
    }
    // Live subscribers see records produced after their ack, in either format.
    let mut live = Py::start(&server, &[sub(json!("latest"))], &["--records", "2"]);
    let mut binary = sub(json!("latest"));
    binary["format"] = json!("binary");
    let mut live_binary = Py::start(&server, &[binary], &["--records", "2"]);
    live.wait_for("subscribed");
    live_binary.wait_for("subscribed");
    rt.block_on(http.produce("quotes", json!([{"key": "GOOG", "value": "no"}, {"key": "MSFT", "value": "yes"}, {"key": "AAPL", "value": "yes too"}])));
    let (frames, _) = live_binary.finish();
    check_ws_frames(&http.doc, &frames);
    let values: BTreeSet<(&str, &str)> = records(&frames)
        .iter()
        .map(|r| {
            (
                r["key_base64"].as_str().unwrap(),
                r["value_base64"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        values,
        BTreeSet::from([("TVNGVA==", "eWVz"), ("QUFQTA==", "eWVzIHRvbw==")])
    );
    let (frames, _) = live.finish();
    let values: BTreeSet<&str> = records(&frames)
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, BTreeSet::from(["yes", "yes too"]));
    server.stop();
}

#[test]
fn websocket_snapshot_then_live_has_each_keys_latest_value_then_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    // The cleaner runs often, so the snapshot reads a log with gaps too.
    let server = Server::start(dir.path(), &[("WEIR_TOPICS__COMPACTION_CHECK_MS", "100")]);
    let rt = common::rt();
    let http = rt.block_on(Http::new(&server));
    rt.block_on(http.create_topic(json!({
        "name": "prices", "partitions": 2, "cleanup_policy": "compact",
        "segment_bytes": 4096, "min_cleanable_dirty_ratio": 0.01,
    })));
    // Rounds before the subscription write keys k00..k59, every 7th deleted in even rounds
    // (so in the last) and written again in odd ones; rounds during it write k30..k59 only,
    // never deleting, so k00..k29 end where the first rounds left them.
    let version = |round: usize| -> Value {
        let keys = if round < 25 { 0..60 } else { 30..60 };
        keys.map(|k| {
            let value = if round < 25 && round % 2 == 0 && k % 7 == 0 {
                Value::Null
            } else {
                json!(format!("v{round}-{k}"))
            };
            json!({"key": format!("k{k:02}"), "value": value})
        })
        .collect()
    };
    // Every record written: (partition, offset, key, value).
    let written = |records: Value, at: Vec<(u32, u64)>| -> Vec<(u64, u64, String, Value)> {
        records
            .as_array()
            .unwrap()
            .iter()
            .zip(at)
            .map(|(r, (p, o))| {
                let key = r["key"].as_str().unwrap().to_string();
                (u64::from(p), o, key, r["value"].clone())
            })
            .collect()
    };
    let mut all = Vec::new();
    for round in 0..25 {
        let at = rt.block_on(http.produce("prices", version(round)));
        all.extend(written(version(round), at));
    }
    // Let the cleaner make gaps.
    std::thread::sleep(Duration::from_millis(600));
    // Keep producing while the subscriber takes its snapshot.
    let http = std::sync::Arc::new(http);
    let producing = rt.spawn({
        let http = http.clone();
        async move {
            let mut all = Vec::new();
            for round in 25..45 {
                let at = http.produce("prices", version(round)).await;
                all.extend(written(version(round), at));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            all
        }
    });
    let subscribe = json!({"op": "subscribe", "topics": ["prices"], "from": "snapshot"});
    let (frames, _) = Py::start(&server, &[subscribe], &["--timeout", "4"]).finish();
    all.extend(rt.block_on(producing).unwrap());
    check_ws_frames(&http.doc, &frames);
    assert_eq!(frames[0]["type"], "subscribed", "{frames:?}");
    assert_eq!(frames[0]["snapshot"], true);
    let marker = frames
        .iter()
        .position(|f| f["type"] == "snapshot_end")
        .expect("a snapshot_end frame");
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "error" && f["type"] != "gap" && f["type"] != "dropped"),
        "{frames:?}"
    );
    let next: BTreeMap<u64, u64> = frames[marker]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap(),
                p["next"].as_u64().unwrap(),
            )
        })
        .collect();
    let from: BTreeMap<u64, u64> = frames[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap(),
                p["from"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(from, next, "the ack names where live records start");
    let (snapshot, live) = frames.split_at(marker);
    // Against every record produced, partition by partition.
    let rec = |r: &Value| -> common::Rec {
        (
            r["offset"].as_u64().unwrap(),
            r["key"].as_str().unwrap().to_string(),
            r["value"].as_str().map(str::to_string),
        )
    };
    for p in 0..2u64 {
        let written: Vec<common::Rec> = all
            .iter()
            .filter(|w| w.0 == p)
            .map(|w| (w.1, w.2.clone(), w.3.as_str().map(str::to_string)))
            .collect();
        let of_p = |frames: &[Value]| -> Vec<common::Rec> {
            records(frames)
                .into_iter()
                .filter(|r| r["partition"] == p)
                .map(rec)
                .collect()
        };
        let (snapshot, live) = (of_p(snapshot), of_p(live));
        assert!(snapshot.len() > 10, "partition {p}: {}", snapshot.len());
        assert!(
            written.iter().any(|w| w.0 >= next[&p]),
            "writes landed after the plan"
        );
        common::check_snapshot_then_live(&written, next[&p], &snapshot, &live);
    }

    // Filtered by key: only those keys, tombstoned ones left out.
    let subscribe = json!({"op": "subscribe", "topics": ["prices"], "from": "snapshot",
                           "keys": ["k01", "k07", "k35", "k99"]});
    let mut py = Py::start(&server, &[subscribe], &[]);
    let end = py.wait_for("snapshot_end");
    let keys: BTreeSet<&str> = records(&py.seen)
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, BTreeSet::from(["k01", "k35"]), "{end}");
    assert_eq!(records(&py.seen).len(), 2);
    drop(py);

    // A topic that is not compacted has no snapshot.
    rt.block_on(http.create_topic(json!({"name": "plain"})));
    let subscribe = json!({"op": "subscribe", "topics": ["plain"], "from": "snapshot"});
    let mut py = Py::start(&server, &[subscribe], &[]);
    let e = py.wait_for("error");
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("not compacted"),
        "{e}"
    );
    drop(py);
    server.stop();
}

#[test]
fn websocket_signals_a_gap_when_retention_passed_the_resume_point() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_TOPICS__RETENTION_CHECK_MS", "100")]);
    let rt = common::rt();
    let http = rt.block_on(Http::new(&server));
    rt.block_on(
        http.create_topic(json!({"name": "short", "segment_bytes": 1024, "retention_bytes": 2048})),
    );
    for i in 0..40 {
        rt.block_on(http.produce(
            "short",
            json!([{"value": format!("{i}-{}", "x".repeat(200))}]),
        ));
    }
    // Wait for retention to delete the oldest segments, and to be done (a pass that ran while
    // the records were written may be followed by one more).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let (start, hwm) = loop {
        let r = rt.block_on(http.get("/topics/{topic}", "/topics/short"));
        let p = &r.body["partitions"][0];
        let start = p["log_start_offset"].as_u64().unwrap();
        seen.push(start);
        if start > 0 && seen.len() >= 4 && seen[seen.len() - 4..].iter().all(|s| *s == start) {
            break (start, p["high_watermark"].as_u64().unwrap());
        }
        assert!(Instant::now() < deadline, "retention never ran: {}", r.body);
        std::thread::sleep(Duration::from_millis(150));
    };
    assert_eq!(hwm, 40);
    // HTTP says so too.
    let r = rt.block_on(http.fetch("short", 0, "offset=0"));
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (416, Some("offset_out_of_range"))
    );
    let (frames, end) = Py::start(
        &server,
        &[json!({"op": "subscribe", "topics": ["short"], "from": {"offset": {"0": 0}}, "policy": "disconnect"})],
        &["--records", &(hwm - start).to_string()],
    )
    .finish();
    assert_eq!(end["why"], "count", "{frames:?}");
    check_ws_frames(&http.doc, &frames);
    assert_eq!(frames[0]["type"], "subscribed");
    assert_eq!(
        frames[1],
        json!({"type": "gap", "subscription": 1, "topic": "short", "partition": 0,
               "requested": 0, "available_from": start})
    );
    let offsets: Vec<u64> = records(&frames)
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (start..hwm).collect::<Vec<_>>());
    server.stop();
}

#[test]
fn websocket_slow_clients_follow_their_policy_while_a_fast_one_keeps_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            // Room for a few of the 100-record batches below (a batch arrives at once).
            ("WEIR_HTTP__WS_QUEUE_MESSAGES", "400"),
            ("WEIR_HTTP__WS_QUEUE_BYTES", "409600"),
            ("WEIR_TOPICS__DURABILITY", "never"),
        ],
    );
    let rt = common::rt();
    let http = rt.block_on(Http::new(&server));
    rt.block_on(http.create_topic(json!({"name": "feed"})));
    let sub = |policy: &str| json!({"op": "subscribe", "topics": ["feed"], "policy": policy});
    let slow = ["--pause", "--rcvbuf", "4096", "--timeout", "30"];
    let mut drop_oldest = Py::start(&server, &[sub("drop_oldest")], &slow);
    let mut conflate = Py::start(&server, &[sub("conflate")], &slow);
    let total: usize = 4000;
    let mut fast = Py::start(
        &server,
        &[sub("drop_oldest")],
        &["--records", &total.to_string(), "--timeout", "60"],
    );
    for c in [&mut drop_oldest, &mut conflate, &mut fast] {
        c.wait_for("subscribed");
    }
    let keys = ["a", "b", "c", "d", "e"];
    let pad = "p".repeat(1000);
    for chunk in 0..total / 100 {
        let recs: Value = (chunk * 100..chunk * 100 + 100)
            .map(|i| json!({"key": keys[i % 5], "value": format!("{i}:{pad}")}))
            .collect();
        rt.block_on(http.produce("feed", recs));
        // About 4 MB/s: a steady rate a Python client keeps up with, far more than the
        // paused clients' socket buffers and queues hold.
        std::thread::sleep(Duration::from_millis(25));
    }
    // The fast client gets everything, in order, with nothing dropped, while the slow ones
    // are not reading at all.
    let (frames, end) = fast.finish();
    assert_eq!(end["why"], "count");
    assert!(
        !frames.iter().any(|f| f["type"] == "dropped"),
        "fast client lost records"
    );
    let offsets: Vec<u64> = records(&frames)
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..total as u64).collect::<Vec<_>>());
    check_ws_frames(&http.doc, &frames[..5]);

    // Disconnect: a third slow client, whose queue overflows, is closed with a reason.
    let mut disconnect = Py::start(&server, &[sub("disconnect")], &slow);
    disconnect.wait_for("subscribed");
    // More than the kernel may buffer for one connection (tcp_wmem max, 4 MiB here) plus
    // the queue, so the queue must overflow.
    let late = 6000;
    for chunk in 0..late / 100 {
        let recs: Value = (0..100)
            .map(|i| json!({"key": "z", "value": format!("late-{chunk}-{i}:{pad}")}))
            .collect();
        rt.block_on(http.produce("feed", recs));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let stats = rt.block_on(http.get("/stats", "/stats")).body;
        if stats["ws"]["disconnected_slow"] == 1 || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        stats["ws"]["dropped_oldest"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(stats["ws"]["conflated"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["ws"]["disconnected_slow"], 1, "{stats}");
    disconnect.release();
    let (_, end) = disconnect.finish();
    assert_eq!(end["why"], "closed");
    assert_eq!(end["code"], 4001, "{end}");
    assert!(
        end["reason"].as_str().unwrap().contains("slow consumer"),
        "{end}"
    );

    // drop_oldest and conflate: every record is either delivered or counted, never silently
    // lost, and the newest survive.
    let all = (total + late) as u64;
    for (client, policy) in [(drop_oldest, "drop_oldest"), (conflate, "conflate")] {
        let mut client = client;
        client.release();
        let mut frames = Vec::new();
        let mut last = None;
        loop {
            let f = client.next(Duration::from_secs(20));
            if f["type"] == "record" {
                last = f["offset"].as_u64();
            }
            frames.push(f);
            if last == Some(all - 1) {
                break;
            }
        }
        check_ws_frames(&http.doc, &frames);
        let delivered = records(&frames).len() as u64;
        let lost: u64 = frames
            .iter()
            .filter(|f| f["type"] == "dropped")
            .map(|f| {
                assert_eq!(f["policy"], policy);
                f["count"].as_u64().unwrap()
            })
            .sum();
        assert!(lost > 0, "{policy}: nothing dropped");
        assert_eq!(
            delivered + lost,
            all,
            "{policy}: delivered {delivered} + dropped {lost}"
        );
        let offs: Vec<u64> = records(&frames)
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert!(
            offs.windows(2).all(|w| w[0] < w[1]),
            "{policy}: out of order"
        );
        if policy == "conflate" {
            // The latest value of every key made it.
            let mut latest: BTreeMap<String, u64> = BTreeMap::new();
            for r in records(&frames) {
                latest.insert(
                    r["key"].as_str().unwrap().to_string(),
                    r["offset"].as_u64().unwrap(),
                );
            }
            for (i, k) in keys.iter().enumerate() {
                let last_of_key = (0..total).rev().find(|j| j % 5 == i).unwrap() as u64;
                assert!(
                    latest.get(*k).is_some_and(|o| *o >= last_of_key),
                    "{k}: {latest:?}"
                );
            }
        }
    }
    // Four subscribers on one feed: every record was read from the broker once.
    let stats = rt.block_on(http.get("/stats", "/stats")).body;
    assert_eq!(stats["ws"]["records_fetched"], all, "{stats}");
    server.stop();
}

/// Opens a WebSocket by hand; returns the stream and the response head.
fn raw_handshake(addr: &str) -> (std::net::TcpStream, String) {
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        raw,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut raw, &mut byte).unwrap();
        head.push(byte[0]);
    }
    (raw, String::from_utf8(head).unwrap())
}

/// Reads WebSocket frames (unmasked, as a server sends them) from `s` until the connection
/// ends; returns (opcode, payload) of each.
fn raw_frames(s: &mut std::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 2 <= buf.len() {
        let opcode = buf[i] & 0x0f;
        let (len, head) = match buf[i + 1] & 0x7f {
            126 => (u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize, 4),
            127 => panic!("no frame here is that large"),
            n => (n as usize, 2),
        };
        let end = (i + head + len).min(buf.len());
        frames.push((opcode, buf[i + head..end].to_vec()));
        i += head + len;
    }
    frames
}

#[test]
fn websocket_heartbeats_idle_timeout_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("WEIR_HTTP__WS_PING_INTERVAL_MS", "200"),
            ("WEIR_HTTP__WS_IDLE_TIMEOUT_MS", "700"),
        ],
    );
    let rt = common::rt();
    let http = rt.block_on(Http::new(&server));
    rt.block_on(http.create_topic(json!({"name": "hb"})));
    let sub = json!({"op": "subscribe", "topics": ["hb"]});
    // A client that answers pings (as every WebSocket library does) stays connected however
    // long it is quiet.
    let quiet = Py::start(&server, std::slice::from_ref(&sub), &["--timeout", "2"]);
    // One that never answers is closed after the idle timeout, with a reason.
    let started = Instant::now();
    let (mut raw, head) = raw_handshake(&server.http);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frames = raw_frames(&mut raw);
    let elapsed = started.elapsed();
    assert!(
        frames.iter().any(|(op, _)| *op == 0x9),
        "pinged first: {frames:?}"
    );
    let (op, close) = frames.last().unwrap();
    assert_eq!(*op, 0x8, "{frames:?}");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4002);
    assert!(String::from_utf8_lossy(&close[2..]).contains("idle timeout"));
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    let (_, end) = quiet.finish();
    assert_eq!(end["why"], "timeout", "the quiet client was closed: {end}");
    let stats = rt.block_on(http.get("/stats", "/stats")).body;
    assert_eq!(stats["ws"]["idle_timeouts"], 1, "{stats}");
    // Shutdown closes subscribers with "going away" and the server exits cleanly.
    let mut last = Py::start(&server, &[sub], &["--timeout", "20"]);
    last.wait_for("subscribed");
    server.stop();
    let (_, end) = last.finish();
    assert_eq!(
        (end["why"].as_str(), end["code"].as_u64()),
        (Some("closed"), Some(1001)),
        "{end}"
    );
}

// ---- profiling ----

const PROFILE: &str = "/debug/pprof/profile";

/// A GET whose body need not be JSON: status, content type, body.
async fn get_raw(client: &reqwest::Client, url: String) -> (u16, String, Vec<u8>) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, resp.bytes().await.unwrap().to_vec())
}

#[test]
fn profiling_endpoints_are_off_by_default_and_say_how_to_enable_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let http = Http::new(&server).await;
        for (route, path) in [
            (PROFILE, "/debug/pprof/profile?seconds=5"),
            (PROFILE, "/debug/pprof/profile?format=flamegraph"),
            ("/debug/heap", "/debug/heap"),
        ] {
            let started = Instant::now();
            let (status, code, message) = http.error("get", route, path, None, b"").await;
            assert_eq!(
                (status, code.as_str()),
                (404, "profiling_disabled"),
                "{path}"
            );
            assert!(message.contains("WEIR_HTTP__PROFILING=true"), "{message}");
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "no sampling when off"
            );
        }
    });
    server.stop();
}

#[test]
fn cpu_profile_flame_graph_and_heap_when_enabled() {
    use pprof::protos::Message;
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("WEIR_HTTP__PROFILING", "true")]);
    common::rt().block_on(async {
        let http = Http::new(&server).await;

        let r = http.get("/debug/heap", "/debug/heap").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let process = &r.body["process"];
        let rss = process["rss_bytes"].as_u64().unwrap();
        assert!(rss > 0, "{}", r.body);
        assert!(process["peak_rss_bytes"].as_u64().unwrap() >= rss);
        assert!(process["virtual_bytes"].as_u64().unwrap() >= rss);
        assert!(process["threads"].as_u64().unwrap() >= 2);
        assert_eq!(r.body["allocator"], "mimalloc");
        let budget = &r.body["produce_memory"];
        assert_eq!(budget["total_bytes"], 256u64 << 20);
        assert_eq!(budget["in_use_bytes"], 0);

        // Bad parameters are refused before anything is sampled.
        for path in [
            "/debug/pprof/profile?seconds=0",
            "/debug/pprof/profile?format=png",
        ] {
            let (status, code, _) = http.error("get", PROFILE, path, None, b"").await;
            assert_eq!((status, code.as_str()), (400, "bad_request"), "{path}");
        }

        // Keep the server busy (produce over HTTP, no fsync) while it is profiled.
        http.create_topic(json!({"name": "busy", "durability": "never"}))
            .await;
        let done = AtomicBool::new(false);
        let busy = async {
            let records: Vec<Value> = (0..200)
                .map(|i| json!({"key": format!("k{i}"), "value": {"n": i, "pad": "x".repeat(64)}}))
                .collect();
            let mut requests = 0u32;
            while !done.load(Ordering::Acquire) {
                http.produce("busy", json!(records)).await;
                requests += 1;
            }
            requests
        };
        let profiles = async {
            let base = http.base.clone();
            let client = http.client.clone();
            let first = tokio::spawn(async move {
                get_raw(&client, format!("{base}/debug/pprof/profile?seconds=1")).await
            });
            // While that one samples, a second is refused.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (status, code, message) = http
                .error("get", PROFILE, "/debug/pprof/profile?seconds=1", None, b"")
                .await;
            assert_eq!(
                (status, code.as_str()),
                (409, "profile_in_progress"),
                "{message}"
            );
            let pprof = first.await.unwrap();
            let svg = get_raw(
                &http.client,
                format!(
                    "{}/debug/pprof/profile?seconds=1&format=flamegraph",
                    http.base
                ),
            )
            .await;
            done.store(true, Ordering::Release);
            (pprof, svg)
        };
        let (requests, ((status, content_type, gz), (svg_status, svg_type, svg))) =
            tokio::join!(busy, profiles);
        assert!(requests > 0);

        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&gz));
        assert_eq!(content_type, "application/octet-stream");
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let profile = pprof::protos::Profile::decode(&raw[..]).unwrap();
        let strings = &profile.string_table;
        assert_eq!(
            strings.first().map(String::as_str),
            Some(""),
            "pprof string 0"
        );
        let sample_types: Vec<&str> = profile
            .sample_type
            .iter()
            .map(|t| strings[t.ty as usize].as_str())
            .collect();
        assert!(sample_types.contains(&"cpu"), "{sample_types:?}");
        assert!(
            profile.duration_nanos >= 900_000_000,
            "{}",
            profile.duration_nanos
        );
        assert!(!profile.sample.is_empty(), "a busy server yields samples");
        assert!(!profile.location.is_empty() && !profile.function.is_empty());
        // Symbolized: the server's own functions are named.
        assert!(
            profile
                .function
                .iter()
                .any(|f| strings[f.name as usize].contains("weir")),
            "no weir function among {} functions",
            profile.function.len()
        );

        assert_eq!(svg_status, 200, "{}", String::from_utf8_lossy(&svg));
        assert_eq!(svg_type, "image/svg+xml");
        let svg = String::from_utf8(svg).unwrap();
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );

        // The profiler is free again.
        let r = http.get("/debug/heap", "/debug/heap").await;
        assert_eq!(r.status, 200);
    });
    server.stop();
}

/// Reads from `s` until the server closes it; how long that took. Fails past `limit`.
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> Duration {
    use std::io::Read;
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }
}

#[test]
fn half_sent_and_idle_connections_are_closed_and_oversized_bodies_refused_up_front() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("WEIR_HTTP__IDLE_TIMEOUT_MS", "500"),
            ("WEIR_HTTP__MAX_BODY_BYTES", "65536"),
        ],
    );
    let connect = || std::net::TcpStream::connect(&server.http).unwrap();
    let limit = Duration::from_secs(5);
    // A request head that never ends.
    let mut half = connect();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    // A connection that says nothing.
    let mut silent = connect();
    // A keep-alive connection idle after its answer.
    let mut idle = connect();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    for (what, s) in [
        ("half-sent head", &mut half),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        let took = closed_within(s, limit);
        assert!(took < limit, "{what}: {took:?}");
    }

    // A body declared over the limit is refused before it is sent.
    let mut big = connect();
    big.write_all(
        b"POST /topics/t/records HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
          content-length: 100000000\r\n\r\n",
    )
    .unwrap();
    big.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    server.stop();
}

/// `POST /groups/{group}/offsets` moves a group with no members to the earliest, the latest
/// or a time's offset, on every partition or those given; refuses while the group has a
/// member, and refuses bad requests with their reason.
#[test]
fn a_groups_offsets_are_reset_only_while_it_has_no_members() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    common::rt().block_on(async {
        let http = Http::new(&server).await;
        http.create_topic(json!({"name": "ledger", "partitions": 2}))
            .await;
        let route = "/topics/{topic}/records";
        for i in 0..10 {
            let r = http
                .post_json(
                    route,
                    "/topics/ledger/records",
                    json!({"records": [{"value": format!("v{i}"), "partition": i % 2}]}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let reset_route = "/groups/{group}/offsets";
        let reset = |body: Value| {
            let http = &http;
            async move {
                http.post_json(reset_route, "/groups/auditors/offsets", body)
                    .await
            }
        };
        // A new group, put at the start: everything is lag.
        let r = reset(json!({"topic": "ledger", "to": "earliest"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(committed_and_lag(&http, "auditors").await, [(0, 5), (0, 5)]);
        // One partition to its end (named however often: reset once).
        let r = reset(json!({"topic": "ledger", "partitions": [1, 1, 1], "to": "latest"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["offsets"].as_array().unwrap().len(), 1, "{}", r.body);
        assert_eq!(committed_and_lag(&http, "auditors").await, [(0, 5), (5, 0)]);
        // By time: after every record, the end.
        let future = 4_102_444_800_000i64; // 2100
        let r = reset(json!({"topic": "ledger", "to": {"timestamp": future}})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(committed_and_lag(&http, "auditors").await, [(5, 0), (5, 0)]);
        // Bad requests, each with its reason; nothing moved.
        for (body, status, code) in [
            (
                json!({"topic": "nope", "to": "earliest"}),
                404,
                "unknown_topic",
            ),
            (
                json!({"topic": "ledger", "partitions": [2], "to": "earliest"}),
                404,
                "unknown_partition",
            ),
            (
                json!({"topic": "ledger", "to": "middle"}),
                400,
                "bad_request",
            ),
            (json!({"to": "earliest"}), 400, "bad_request"),
        ] {
            let r = reset(body.clone()).await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (status, Some(code)),
                "{body}"
            );
        }
        assert_eq!(committed_and_lag(&http, "auditors").await, [(5, 0), (5, 0)]);
        // With a member, refused.
        let c = Client::connect(&server.addr, "member").await.unwrap();
        let member = weir_client::GroupConsumer::join(
            c,
            "auditors",
            &["ledger"],
            weir_client::consumer::GroupOptions::default(),
        )
        .await
        .unwrap();
        let r = reset(json!({"topic": "ledger", "to": "earliest"})).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("group_not_empty"))
        );
        assert_eq!(committed_and_lag(&http, "auditors").await, [(5, 0), (5, 0)]);
        member.leave().await.unwrap();
        let r = reset(json!({"topic": "ledger", "to": "earliest"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(committed_and_lag(&http, "auditors").await, [(0, 5), (0, 5)]);
    });
    server.stop();
}

/// A group's (committed offset, lag) per partition, as `GET /groups/{group}` has them.
async fn committed_and_lag(http: &Http, group: &str) -> Vec<(u64, u64)> {
    let g = http
        .get("/groups/{group}", &format!("/groups/{group}"))
        .await;
    g.body["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["committed"].as_u64().unwrap(), o["lag"].as_u64().unwrap()))
        .collect()
}

/// A `plant.Reading` message (`sensor = 1`, `celsius = 2`, `at = 3`), encoded by hand: the
/// server decodes what any Protobuf library writes, not what a library of ours wrote.
fn reading(sensor: &str, celsius: f64, at: u64) -> Vec<u8> {
    let mut b = vec![0x0a, sensor.len() as u8];
    b.extend_from_slice(sensor.as_bytes());
    b.push(0x11);
    b.extend_from_slice(&celsius.to_le_bytes());
    b.push(0x18);
    let mut v = at;
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
    b
}

pub(crate) const READING_PROTO: &str = "syntax = \"proto3\";\npackage plant;\n\
    message Reading { string sensor = 1; double celsius = 2; int64 at = 3; }\n";

#[test]
fn a_topics_schema_decodes_its_values_on_fetch() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::write(dir.path().join("schemas/reading.proto"), READING_PROTO).unwrap();
    let server = Server::start_with_config(
        dir.path(),
        "[schemas.readings]\nmessage = \"plant.Reading\"\nproto = \"schemas/reading.proto\"\n",
    );
    common::rt().block_on(async {
        let http = Http::new(&server).await;
        http.create_topic(json!({"name": "readings"})).await;
        http.create_topic(json!({"name": "plain"})).await;
        let t = http.get("/topics/{topic}", "/topics/readings").await;
        assert_eq!(
            t.body["schema"],
            json!({"type": "protobuf", "message": "plant.Reading"})
        );
        let t = http.get("/topics/{topic}", "/topics/plain").await;
        assert_eq!(t.body["schema"], Value::Null);
        http.produce(
            "readings",
            json!([
                {"value_base64": b64(&reading("boiler", 71.5, 1_700_000_000_123))},
                {"value": "not a reading"},
                {"value_base64": b64(&[0x0a, 0xff])},
            ]),
        )
        .await;
        let r = http.fetch("readings", 0, "schema=true").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let recs = r.body["records"].as_array().unwrap();
        assert_eq!(
            recs[0]["value_decoded"],
            json!({"sensor": "boiler", "celsius": 71.5, "at": "1700000000123"})
        );
        // What is not a Reading says why, and the record is there all the same.
        for bad in &recs[1..] {
            let why = bad["value_decode_error"].as_str().expect("a reason");
            assert!(why.starts_with("not a plant.Reading message"), "{why}");
            assert!(bad.get("value_decoded").is_none());
        }
        // Without asking, values come as they are.
        let r = http.fetch("readings", 0, "").await;
        assert!(r.body["records"][0].get("value_decoded").is_none());
        // A topic without a schema cannot be decoded with one.
        let r = http.fetch("plain", 0, "schema=true").await;
        assert_eq!(r.status, 400, "{}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("[schemas.plain]"), "{message}");
    });
    server.stop();
}

//! Records between JSON and record batches: produce requests in, fetched records out.
//!
//! In: `{"records":[{"key":"AAPL","value":{"px":1},"headers":{"h":"v"},"partition":0}]}`. A
//! string key or value is stored as its UTF-8 text, any other JSON value as its compact JSON
//! text, `null` (or absence) as a null; `key_base64`/`value_base64` carry arbitrary bytes.
//!
//! Out: `{"topic","partition","offset","timestamp","key","value","headers"}`. Keys, values and
//! header values are strings when they are valid UTF-8; otherwise the string is absent (null)
//! and the bytes are in `key_base64`, `value_base64` or `headers_base64`. In the `binary`
//! format keys and values are always base64.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use weir_batch::{BatchBuilder, Record, RecordSpec};

use crate::error::{ApiError, ErrorCode};

/// How keys and values are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// UTF-8 text as strings, other bytes as base64 (default).
    #[default]
    Json,
    /// Always base64 (`key_base64`, `value_base64`).
    Binary,
}

/// One record of a produce request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    #[serde(default)]
    pub key: Option<serde_json::Value>,
    #[serde(default)]
    pub key_base64: Option<String>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    #[serde(default)]
    pub value_base64: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub partition: Option<u32>,
    /// Create time in ms since the epoch; default: now.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// A produce request's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProduceRequest {
    pub records: Vec<RecordIn>,
}

/// A record with its bytes resolved, ready for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub partition: Option<u32>,
    pub timestamp: Option<i64>,
}

fn bytes_of(
    index: usize,
    field: &str,
    json: Option<serde_json::Value>,
    b64: Option<String>,
) -> Result<Option<Vec<u8>>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidRecord, m);
    match (json, b64) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "record {index}: give {field} or {field}_base64, not both"
        ))),
        (None, Some(b)) => B64
            .decode(b.as_bytes())
            .map(Some)
            .map_err(|e| invalid(format!("record {index}: {field}_base64 is not base64: {e}"))),
        (Some(serde_json::Value::String(s)), None) => Ok(Some(s.into_bytes())),
        (Some(serde_json::Value::Null), None) | (None, None) => Ok(None),
        (Some(v), None) => Ok(Some(v.to_string().into_bytes())),
    }
}

impl ProduceRequest {
    /// Resolves every record's bytes; the first malformed record fails the whole request.
    pub fn into_records(self) -> Result<Vec<OwnedRecord>, ApiError> {
        if self.records.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidRecord,
                "records is empty: send at least one record",
            ));
        }
        self.records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(OwnedRecord {
                    key: bytes_of(i, "key", r.key, r.key_base64)?,
                    value: bytes_of(i, "value", r.value, r.value_base64)?,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| (k, v.map(String::into_bytes)))
                        .collect(),
                    partition: r.partition,
                    timestamp: r.timestamp,
                })
            })
            .collect()
    }
}

/// A produce request's body as records, by its `Content-Type` (`None`: absent or unreadable,
/// taken as JSON; parameters such as `charset` are ignored): `application/json` is a
/// [`ProduceRequest`]; `application/octet-stream` is one record whose value is the body, its
/// key and partition from the query string (`key`, `partition`), which JSON bodies may not use.
///
/// Everything the produce route reads of the request besides the topic is decided here,
/// before any broker call, so that the fuzz target `http_produce_body` drives the same code on
/// arbitrary bodies.
pub fn parse_produce_body(
    content_type: Option<&str>,
    key: Option<String>,
    partition: Option<u32>,
    body: &[u8],
) -> Result<Vec<OwnedRecord>, ApiError> {
    let mime = content_type
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => {
            if key.is_some() || partition.is_some() {
                return Err(ApiError::bad_request(
                    "the key and partition query parameters are for application/octet-stream \
                     bodies; JSON records carry their own",
                ));
            }
            crate::api::parse_json::<ProduceRequest>(body)?.into_records()
        }
        "application/octet-stream" => Ok(vec![OwnedRecord {
            key: key.map(String::into_bytes),
            value: Some(body.to_vec()),
            headers: Vec::new(),
            partition,
            timestamp: None,
        }]),
        other => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content type {other:?} is not accepted: send application/json or \
                 application/octet-stream"
            ),
        )),
    }
}

/// Builds one batch of `records` (in order) with base timestamp `now_ms`.
pub fn build_batch(records: &[&OwnedRecord], now_ms: i64) -> Vec<u8> {
    let size: usize = records
        .iter()
        .map(|r| {
            32 + r.key.as_ref().map_or(0, Vec::len)
                + r.value.as_ref().map_or(0, Vec::len)
                + r.headers
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()
        })
        .sum();
    let mut b = BatchBuilder::with_capacity(now_ms, 61 + size);
    for r in records {
        b.push(RecordSpec {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect(),
            timestamp: r.timestamp,
        });
    }
    b.build()
}

/// One record as the API shows it.
#[derive(Debug, Serialize)]
pub struct RecordOut<'a> {
    /// `"record"` on WebSocket frames; absent in HTTP responses.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    pub headers: BTreeMap<String, Option<&'a str>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_base64: BTreeMap<String, String>,
}

/// Renders bytes as (text, base64) following `format`.
fn render(bytes: Option<&[u8]>, format: Format) -> (Option<&str>, Option<String>) {
    match bytes {
        None => (None, None),
        Some(b) => match (format, std::str::from_utf8(b)) {
            (Format::Json, Ok(s)) => (Some(s), None),
            _ => (None, Some(B64.encode(b))),
        },
    }
}

impl<'a> RecordOut<'a> {
    pub fn new(
        topic: &'a str,
        partition: u32,
        record: &'a Record<'a>,
        format: Format,
        kind: Option<&'static str>,
    ) -> Self {
        let (key, key_base64) = render(record.key, format);
        let (value, value_base64) = render(record.value, format);
        let mut headers = BTreeMap::new();
        let mut headers_base64 = BTreeMap::new();
        for h in &record.headers {
            let name = String::from_utf8_lossy(h.key).into_owned();
            match h.value.map(std::str::from_utf8) {
                None => {
                    headers.insert(name, None);
                }
                Some(Ok(s)) => {
                    headers.insert(name, Some(s));
                }
                Some(Err(_)) => {
                    headers.insert(name.clone(), None);
                    headers_base64.insert(name, B64.encode(h.value.unwrap_or_default()));
                }
            }
        }
        Self {
            kind,
            topic,
            partition,
            offset: record.offset.max(0) as u64,
            timestamp: record.timestamp,
            key,
            key_base64,
            value,
            value_base64,
            headers,
            headers_base64,
        }
    }
}

/// A value decoded as a message of type `d`, in Protobuf's JSON mapping (fields by their JSON
/// names; 64-bit integers as strings, bytes as base64, enums by name), or why it is not one.
pub fn decode_message(
    d: &prost_reflect::MessageDescriptor,
    bytes: &[u8],
) -> Result<serde_json::Value, String> {
    let m = prost_reflect::DynamicMessage::decode(d.clone(), bytes)
        .map_err(|e| format!("not a {} message: {e}", d.full_name()))?;
    serde_json::to_value(&m).map_err(|e| format!("{}: {e}", d.full_name()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether any batch in `chunks` is compressed (headers only).
pub fn any_compressed(chunks: &[bytes::Bytes]) -> bool {
    chunks.iter().any(|chunk| {
        let mut at = 0;
        while let Ok(h) = weir_batch::peek(&chunk[at..]) {
            if h.compression() != weir_batch::Compression::None {
                return true;
            }
            at += h.total_len();
            if at >= chunk.len() {
                break;
            }
        }
        false
    })
}

/// Runs `f`, which decodes records. When `compressed`, it first waits for one of the broker's
/// decompression turns ([`weir_broker::Broker::decompression_permit`]), so that however many
/// fetches and subscribers decode at once, memory stays bounded, then runs `f` off the async
/// runtime's worker (`block_in_place`): decompressing a large batch takes milliseconds that the
/// connections sharing the worker should not wait out. Plain batches are decoded in place.
pub async fn decode<T>(broker: &weir_broker::Broker, compressed: bool, f: impl FnOnce() -> T) -> T {
    if !compressed {
        return f();
    }
    let _turn = broker.decompression_permit().await;
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_batches_are_found_among_plain_ones_and_garbage_is_not_one() {
        let plain = |n: usize| {
            let mut b = weir_batch::BatchBuilder::new(0);
            for _ in 0..n {
                b.push(weir_batch::RecordSpec::value(b"v"));
            }
            b
        };
        let mut two_plain = plain(2).build();
        two_plain.extend_from_slice(&plain(3).build());
        let mut then_zstd = plain(2).build();
        then_zstd.extend_from_slice(
            &plain(3)
                .build_compressed(weir_batch::Compression::Zstd)
                .unwrap(),
        );
        let chunks = |b: Vec<u8>| vec![bytes::Bytes::from(b)];
        assert!(!any_compressed(&chunks(two_plain.clone())));
        assert!(any_compressed(&chunks(then_zstd)));
        assert!(!any_compressed(&chunks(vec![0xff; 100])));
        assert!(!any_compressed(&[]));
    }

    /// Compressed batches are decoded only with one of the broker's decompression turns: when
    /// every turn is taken, a decode waits until one is given back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decoding_compressed_batches_waits_for_a_decompression_turn() {
        let dir = tempfile::tempdir().unwrap();
        let broker = weir_broker::Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        let (a, b) = (
            broker.decompression_permit().await,
            broker.decompression_permit().await,
        );
        // Plain batches need no turn.
        assert_eq!(decode(&broker, false, || 1).await, 1);
        let waiting = {
            let broker = broker.clone();
            tokio::spawn(async move { decode(&broker, true, || 2).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "decoded with every turn taken");
        drop(a);
        assert_eq!(waiting.await.unwrap(), 2);
        drop(b);
        broker.close().await.unwrap();
    }
    use weir_batch::Records;

    fn parse(json: &str) -> Result<Vec<OwnedRecord>, ApiError> {
        parse_produce_body(None, None, None, json.as_bytes())
    }

    #[test]
    fn the_content_type_decides_how_the_body_is_read() {
        let json = br#"{"records":[{"value":"v"}]}"#;
        let value = |r: Result<Vec<OwnedRecord>, ApiError>| r.unwrap()[0].value.clone();
        for ct in [
            None,
            Some("application/json"),
            Some(" Application/JSON ; charset=utf-8"),
        ] {
            assert_eq!(
                value(parse_produce_body(ct, None, None, json)),
                Some(b"v".to_vec())
            );
        }
        // The query's key and partition belong to raw bodies only.
        let e = parse_produce_body(None, None, Some(1), json).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("query parameters"), "{}", e.message);
        let r = parse_produce_body(
            Some("application/octet-stream"),
            Some("k".into()),
            Some(3),
            json,
        )
        .unwrap();
        assert_eq!(
            r,
            vec![OwnedRecord {
                key: Some(b"k".to_vec()),
                value: Some(json.to_vec()),
                headers: Vec::new(),
                partition: Some(3),
                timestamp: None,
            }]
        );
        let e = parse_produce_body(Some("text/plain"), None, None, b"x").unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        assert!(e.message.contains("\"text/plain\""), "{}", e.message);
        let e = parse_produce_body(None, None, None, b"{").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    /// The JSON seeds of the fuzz target `http_produce_body` (the repository's
    /// `fuzz/corpus/http_produce_body/seed-json-*`) are bodies the route accepts, so the
    /// fuzzer starts from inside the format; `seed-raw-*` are raw bodies, for any bytes.
    #[test]
    fn fuzz_json_seeds_are_accepted_bodies() {
        for (path, body) in crate::fuzz_seeds("http_produce_body", "seed-json-") {
            assert!(
                parse_produce_body(None, None, None, &body).is_ok(),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn values_are_text_json_or_base64() {
        let r = parse(
            r#"{"records":[
                {"key":"AAPL","value":{"px":1.5},"headers":{"src":"x","n":null},"partition":2},
                {"value":"plain text"},
                {"key_base64":"AAEC","value_base64":"/w==","timestamp":5},
                {"value":null}
            ]}"#,
        )
        .unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&b"AAPL"[..]));
        assert_eq!(r[0].value.as_deref(), Some(&br#"{"px":1.5}"#[..]));
        assert_eq!(
            r[0].headers,
            vec![("n".into(), None), ("src".into(), Some(b"x".to_vec()))]
        );
        assert_eq!(r[0].partition, Some(2));
        assert_eq!(r[1].value.as_deref(), Some(&b"plain text"[..]));
        assert_eq!(r[2].key.as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(r[2].value.as_deref(), Some(&[0xffu8][..]));
        assert_eq!(r[3].value, None);
    }

    #[test]
    fn malformed_records_name_the_fault() {
        for (json, needle) in [
            (r#"{"records":[]}"#, "empty"),
            (
                r#"{"records":[{"value":"a","value_base64":"YQ=="}]}"#,
                "not both",
            ),
            (r#"{"records":[{"value_base64":"!!"}]}"#, "not base64"),
        ] {
            let e = parse(json).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRecord, "{json}");
            assert!(e.message.contains(needle), "{json}: {}", e.message);
        }
        let e = parse(r#"{"records":[{"colour":"red"}]}"#).unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
    }

    #[test]
    fn batches_round_trip_through_the_json_form() {
        let records = parse(
            r#"{"records":[{"key":"k","value":"v","headers":{"h":"x"}},{"value_base64":"/w==","timestamp":7}]}"#,
        )
        .unwrap();
        let refs: Vec<&OwnedRecord> = records.iter().collect();
        let batch = build_batch(&refs, 1_000);
        let decoded: Vec<Record> = Records::new(&batch)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let out: Vec<serde_json::Value> = decoded
            .iter()
            .map(|r| serde_json::to_value(RecordOut::new("t", 0, r, Format::Json, None)).unwrap())
            .collect();
        assert_eq!(
            out[0],
            serde_json::json!({"topic":"t","partition":0,"offset":0,"timestamp":1000,
                "key":"k","value":"v","headers":{"h":"x"}})
        );
        assert_eq!(out[1]["value"], serde_json::Value::Null);
        assert_eq!(out[1]["value_base64"], "/w==");
        assert_eq!(out[1]["timestamp"], 7);
        let bin = serde_json::to_value(RecordOut::new(
            "t",
            0,
            &decoded[0],
            Format::Binary,
            Some("record"),
        ))
        .unwrap();
        assert_eq!(bin["type"], "record");
        assert_eq!(bin["key_base64"], "aw==");
        assert_eq!(bin["value"], serde_json::Value::Null);
    }
}

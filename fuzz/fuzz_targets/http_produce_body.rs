//! Arbitrary bytes as the body of `POST /topics/{topic}/records`, through
//! `weir_http::records::parse_produce_body`, the function the route calls: as JSON (no
//! `Content-Type`, or `application/json` with parameters and odd case) and as a raw
//! `application/octet-stream` record. Records the route accepts are then built into the batch
//! it hands the broker (`build_batch`) and decoded back.
//!
//! Properties, beyond never panicking:
//! - the media type is matched without case or parameters, and the query string's key and
//!   partition are refused for JSON bodies;
//! - a raw body is one record whose value is the body, byte for byte;
//! - accepted JSON records survive a round trip through the JSON form (written back with
//!   `key_base64`/`value_base64`, parsed again, equal);
//! - what the door accepts is stored as given: the batch it builds passes the broker's check
//!   (`check_records`), and decodes to the same keys, values, headers and timestamps.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use weir_http::ErrorCode;
use weir_http::records::{OwnedRecord, build_batch, parse_produce_body};

fuzz_target!(|body: &[u8]| {
    let json = parse_produce_body(None, None, None, body);
    let same = parse_produce_body(Some(" Application/JSON ; charset=utf-8"), None, None, body);
    match (&json, &same) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!((a.code, &a.message), (b.code, &b.message)),
        _ => panic!("the Content-Type's case or parameters changed the outcome"),
    }
    let refused = parse_produce_body(Some("application/json"), None, Some(0), body);
    assert!(matches!(refused, Err(e) if e.code == ErrorCode::BadRequest));

    let raw = parse_produce_body(
        Some("application/octet-stream"),
        Some("k".into()),
        Some(7),
        body,
    )
    .expect("any bytes are a raw record");
    let want = OwnedRecord {
        key: Some(b"k".to_vec()),
        value: Some(body.to_vec()),
        headers: Vec::new(),
        partition: Some(7),
        timestamp: None,
    };
    assert_eq!(raw, [want]);
    stored_as_given(&raw);

    if let Ok(records) = json {
        assert!(!records.is_empty(), "an empty produce was accepted");
        let again = parse_produce_body(None, None, None, &to_json(&records))
            .expect("the JSON form of accepted records is accepted");
        assert_eq!(again, records);
        stored_as_given(&records);
    }
});

/// The JSON form of `records`, bytes as base64 so that any bytes are written as they are.
fn to_json(records: &[OwnedRecord]) -> Vec<u8> {
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut o = Map::new();
            if let Some(k) = &r.key {
                o.insert("key_base64".into(), B64.encode(k).into());
            }
            if let Some(v) = &r.value {
                o.insert("value_base64".into(), B64.encode(v).into());
            }
            let headers: Map<String, Value> = r
                .headers
                .iter()
                .map(|(name, v)| {
                    // Header values arrive as JSON strings, so they are UTF-8.
                    let v = v.as_ref().map(|v| String::from_utf8(v.clone()).unwrap());
                    (name.clone(), v.map_or(Value::Null, Value::String))
                })
                .collect();
            o.insert("headers".into(), Value::Object(headers));
            if let Some(p) = r.partition {
                o.insert("partition".into(), p.into());
            }
            if let Some(t) = r.timestamp {
                o.insert("timestamp".into(), t.into());
            }
            Value::Object(o)
        })
        .collect();
    serde_json::to_vec(&json!({ "records": records })).unwrap()
}

/// Builds the batch the route would produce and decodes it back.
fn stored_as_given(records: &[OwnedRecord]) {
    let now = 1_700_000_000_000;
    let refs: Vec<&OwnedRecord> = records.iter().collect();
    let batch = build_batch(&refs, now);
    weir_batch::check_records(&batch).expect("the broker accepts the batch the door builds");
    let decoded = weir_batch::Records::new(&batch)
        .expect("the built batch is whole")
        .collect::<Result<Vec<_>, _>>()
        .expect("the built batch's records decode");
    assert_eq!(decoded.len(), records.len());
    for (i, (d, r)) in decoded.iter().zip(records).enumerate() {
        assert_eq!(d.offset, i as i64);
        assert_eq!(d.key, r.key.as_deref());
        assert_eq!(d.value, r.value.as_deref());
        assert_eq!(d.timestamp, r.timestamp.unwrap_or(now));
        let headers: Vec<(&[u8], Option<&[u8]>)> =
            d.headers.iter().map(|h| (h.key, h.value)).collect();
        let want: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        assert_eq!(headers, want);
    }
}

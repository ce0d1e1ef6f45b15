//! Arbitrary text as an operation a WebSocket client sends on `/ws`, through
//! `weir_http::ws::ClientOp::parse`, the function a connection calls on every text frame
//! (`{"op":"subscribe",...}`, `{"op":"unsubscribe",...}`).
//!
//! Properties, beyond never panicking:
//! - an accepted subscription names at least one topic, each once;
//! - an accepted operation, written back in its documented JSON form, parses to the same
//!   operation (the hand-written `from` decoder reads every form it documents, and nothing
//!   else is read into it).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use weir_http::records::Format;
use weir_http::ws::{ClientOp, Start};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8: the socket refuses others before an operation is read.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(op) = ClientOp::parse(text) else {
        return;
    };
    if let ClientOp::Subscribe { topics, .. } = &op {
        assert!(
            !topics.is_empty(),
            "a subscription without topics was accepted"
        );
        let unique: HashSet<&String> = topics.iter().collect();
        assert_eq!(
            unique.len(),
            topics.len(),
            "a topic listed twice was accepted"
        );
    }
    let again = ClientOp::parse(&to_json(&op).to_string())
        .expect("the JSON form of an accepted operation is accepted");
    assert_eq!(again, op);
});

/// `op` in the form `weir-http`'s `ws` module documents.
fn to_json(op: &ClientOp) -> Value {
    match op {
        ClientOp::Unsubscribe { subscription } => {
            json!({ "op": "unsubscribe", "subscription": subscription })
        }
        ClientOp::Subscribe {
            topics,
            keys,
            from,
            policy,
            format,
        } => {
            let from = match from {
                Start::Latest => json!("latest"),
                Start::Earliest => json!("earliest"),
                Start::Snapshot => json!("snapshot"),
                Start::Offsets(m) => json!({ "offset": partitions(m) }),
                Start::TopicOffsets(m) => {
                    let topics: Map<String, Value> =
                        m.iter().map(|(t, m)| (t.clone(), partitions(m))).collect();
                    json!({ "offsets": topics })
                }
                Start::Timestamp(ms) => json!({ "timestamp": ms }),
            };
            let format = match format {
                Format::Json => "json",
                Format::Binary => "binary",
            };
            json!({
                "op": "subscribe",
                "topics": topics,
                "keys": keys,
                "from": from,
                "policy": policy.as_str(),
                "format": format,
            })
        }
    }
}

/// `{"<partition>": offset}`: JSON object keys are strings.
fn partitions(m: &std::collections::BTreeMap<u32, u64>) -> Value {
    Value::Object(m.iter().map(|(p, o)| (p.to_string(), json!(o))).collect())
}

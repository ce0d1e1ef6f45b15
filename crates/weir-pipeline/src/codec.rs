//! Decoding a record's bytes into a structured value at a source, and encoding a value into
//! bytes at a sink.
//!
//! Text and raw bytes follow Vector's convention, so its programs run unchanged: the value is
//! an object whose `message` field holds the line or the bytes.

use bytes::Bytes;
use serde::Deserialize;
use vrl::value::{ObjectMap, Value};

/// Why a record could not be decoded or a value encoded. The event goes to the dead-letter
/// output with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// How a source turns a record's value into an event's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "codec", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decoding {
    /// One JSON document per record (per line for files).
    #[default]
    Json,
    /// UTF-8 text, as `{"message": "..."}`.
    Text,
    /// Any bytes, as `{"message": b"..."}`.
    Bytes,
}

/// How a sink turns an event's value into a record's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "codec", rename_all = "snake_case", deny_unknown_fields)]
pub enum Encoding {
    /// The value as one JSON document.
    #[default]
    Json,
    /// The `message` field (or the value itself when it is not an object) as text; other
    /// kinds of values as JSON.
    Text,
    /// The `message` field's bytes (or the value itself when it is bytes).
    Bytes,
}

impl Decoding {
    /// The value of an event read with `value` (`None`: a null value, such as a tombstone).
    pub fn decode(&self, value: Option<&[u8]>) -> Result<Value, CodecError> {
        let bytes = value.unwrap_or_default();
        match self {
            Decoding::Json => {
                if value.is_none() {
                    return Ok(Value::Null);
                }
                serde_json::from_slice::<Value>(bytes)
                    .map_err(|e| CodecError(format!("invalid JSON: {e}")))
            }
            Decoding::Text => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| CodecError(format!("not UTF-8 text: {e}")))?;
                Ok(message(Value::from(text)))
            }
            Decoding::Bytes => Ok(message(Value::Bytes(Bytes::copy_from_slice(bytes)))),
        }
    }
}

fn message(v: Value) -> Value {
    let mut m = ObjectMap::new();
    m.insert("message".into(), v);
    Value::Object(m)
}

impl Encoding {
    /// Appends the encoding of `value` to `out`.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Encoding::Json => json(value, out),
            Encoding::Text | Encoding::Bytes => {
                let field = match value {
                    Value::Object(m) => m.get("message").unwrap_or(value),
                    v => v,
                };
                match field {
                    Value::String(t) => {
                        out.extend_from_slice(t.as_bytes());
                        Ok(())
                    }
                    Value::Bytes(b) => {
                        if *self == Encoding::Text && std::str::from_utf8(b).is_err() {
                            return Err(CodecError("message is not UTF-8 text".into()));
                        }
                        out.extend_from_slice(b);
                        Ok(())
                    }
                    other if *self == Encoding::Text => json(other, out),
                    other => Err(CodecError(format!(
                        "bytes encoding needs a string `message`, found {}",
                        other.kind_str()
                    ))),
                }
            }
        }
    }
}

fn json(value: &Value, out: &mut Vec<u8>) -> Result<(), CodecError> {
    serde_json::to_writer(out, value).map_err(|e| CodecError(format!("cannot encode JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(d: Decoding, e: Encoding, input: &[u8]) -> Vec<u8> {
        let v = d.decode(Some(input)).unwrap();
        let mut out = Vec::new();
        e.encode(&v, &mut out).unwrap();
        out
    }

    #[test]
    fn each_codec_round_trips() {
        let j = br#"{"a":1,"b":[true,null,"x"],"c":{"d":1.5}}"#;
        assert_eq!(round_trip(Decoding::Json, Encoding::Json, j), j);
        assert_eq!(
            round_trip(Decoding::Text, Encoding::Text, "héllo".as_bytes()),
            "héllo".as_bytes()
        );
        assert_eq!(
            round_trip(Decoding::Bytes, Encoding::Bytes, &[0, 255, 10]),
            [0, 255, 10]
        );
        assert_eq!(
            round_trip(Decoding::Text, Encoding::Json, b"hi"),
            br#"{"message":"hi"}"#
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Decoding::Json.decode(Some(b"{nope")).is_err());
        assert!(Decoding::Text.decode(Some(&[0xff, 0xfe])).is_err());
        assert_eq!(Decoding::Json.decode(None), Ok(Value::Null));
        let mut out = Vec::new();
        let bin = Decoding::Bytes.decode(Some(&[0xff])).unwrap();
        assert!(Encoding::Text.encode(&bin, &mut out).is_err());
        assert!(Encoding::Bytes.encode(&Value::from(3), &mut out).is_err());
    }
}

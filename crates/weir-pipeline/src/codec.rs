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
    /// One CSV row per record, as an object of strings by column name. Quoted fields follow
    /// RFC 4180; a row with the wrong number of fields is an error (dead letter).
    Csv(CsvDecoding),
    /// One Protobuf message per record, as an object by field name (Protobuf's JSON
    /// mapping: 64-bit integers as strings, bytes as base64, enums by name).
    Protobuf(Protobuf),
}

/// A Protobuf message type: from a descriptor set (`protoc --descriptor_set_out`, or
/// `buf build -o`), or a `.proto` file compiled when the pipeline is built. Relative paths
/// start at the declaring file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protobuf {
    /// The message's full name, `package.Message`.
    pub message: String,
    pub descriptor_set: Option<std::path::PathBuf>,
    pub proto: Option<std::path::PathBuf>,
    /// Directories the `.proto` file's imports are found in (its own directory first).
    #[serde(default)]
    pub include: Vec<std::path::PathBuf>,
    #[serde(skip)]
    descriptor: Option<prost_reflect::MessageDescriptor>,
}

impl PartialEq for Protobuf {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.message,
            &self.descriptor_set,
            &self.proto,
            &self.include,
        ) == (&o.message, &o.descriptor_set, &o.proto, &o.include)
    }
}

impl Eq for Protobuf {}

impl Protobuf {
    /// Loads the descriptor; paths relative to `base`.
    pub fn prepare(&mut self, base: &std::path::Path) -> Result<(), String> {
        let pool = match (&self.descriptor_set, &self.proto) {
            (Some(set), None) => {
                let path = base.join(set);
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("descriptor_set: reading {}: {e}", path.display()))?;
                prost_reflect::DescriptorPool::decode(bytes.as_slice())
                    .map_err(|e| format!("descriptor_set {}: {e}", path.display()))?
            }
            (None, Some(proto)) => {
                let path = base.join(proto);
                let dir = path.parent().unwrap_or(base).to_path_buf();
                let includes: Vec<std::path::PathBuf> = std::iter::once(dir)
                    .chain(self.include.iter().map(|i| base.join(i)))
                    .collect();
                let set = protox::compile([&path], &includes)
                    .map_err(|e| format!("proto {}: {e}", path.display()))?;
                prost_reflect::DescriptorPool::from_file_descriptor_set(set)
                    .map_err(|e| format!("proto {}: {e}", path.display()))?
            }
            _ => return Err("set one of `descriptor_set` or `proto`".into()),
        };
        let desc = pool.get_message_by_name(&self.message).ok_or_else(|| {
            let known: Vec<String> = pool
                .all_messages()
                .map(|m| m.full_name().to_string())
                .take(20)
                .collect();
            format!(
                "message: no message `{}` in the descriptors (they have: {})",
                self.message,
                known.join(", ")
            )
        })?;
        self.descriptor = Some(desc);
        Ok(())
    }

    fn descriptor(&self) -> Result<&prost_reflect::MessageDescriptor, CodecError> {
        self.descriptor
            .as_ref()
            .ok_or_else(|| CodecError("the Protobuf descriptor was not loaded".into()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Value, CodecError> {
        let msg = prost_reflect::DynamicMessage::decode(self.descriptor()?.clone(), bytes)
            .map_err(|e| CodecError(format!("invalid {} message: {e}", self.message)))?;
        let json =
            serde_json::to_vec(&msg).map_err(|e| CodecError(format!("{}: {e}", self.message)))?;
        serde_json::from_slice(&json).map_err(|e| CodecError(format!("{}: {e}", self.message)))
    }

    fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let json = serde_json::to_vec(value).map_err(|e| CodecError(e.to_string()))?;
        let mut de = serde_json::Deserializer::from_slice(&json);
        let msg = prost_reflect::DynamicMessage::deserialize(self.descriptor()?.clone(), &mut de)
            .map_err(|e| CodecError(format!("not a {} message: {e}", self.message)))?;
        prost_reflect::prost::Message::encode(&msg, out)
            .map_err(|e| CodecError(format!("encoding {}: {e}", self.message)))
    }
}

/// CSV decoding options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvDecoding {
    /// The column names. Without them, the first row of each file (or of stdin) is the
    /// header; topic and HTTP sources must declare them.
    pub columns: Option<Vec<String>>,
    /// Default `,`.
    #[serde(default = "comma")]
    pub delimiter: char,
}

fn comma() -> char {
    ','
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
    /// One CSV row of these columns (missing fields empty; other kinds than strings as
    /// JSON). File sinks write the header row at the top of each file.
    Csv(CsvEncoding),
    /// One Protobuf message (Protobuf's JSON mapping from the value).
    Protobuf(Protobuf),
}

/// CSV encoding options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvEncoding {
    pub columns: Vec<String>,
    /// Default `,`.
    #[serde(default = "comma")]
    pub delimiter: char,
}

impl Decoding {
    /// True for CSV without declared columns: the source reads a header row first.
    pub fn needs_header(&self) -> bool {
        matches!(self, Decoding::Csv(c) if c.columns.is_none())
    }

    /// The column names in a header row (for [`Decoding::decode_with`]).
    pub fn header(&self, row: &[u8]) -> Result<Vec<String>, CodecError> {
        let delimiter = match self {
            Decoding::Csv(c) => c.delimiter,
            _ => ',',
        };
        let fields = csv_row(row, delimiter)?;
        if fields.iter().any(String::is_empty) {
            return Err(CodecError("the CSV header has an empty column name".into()));
        }
        Ok(fields)
    }

    /// The value of an event read with `value`, for a source that read a header row.
    pub fn decode_with(
        &self,
        value: Option<&[u8]>,
        header: Option<&[String]>,
    ) -> Result<Value, CodecError> {
        match self {
            Decoding::Csv(c) => {
                let columns = c
                    .columns
                    .as_deref()
                    .or(header)
                    .ok_or_else(|| CodecError("no CSV header was read".into()))?;
                let fields = csv_row(value.unwrap_or_default(), c.delimiter)?;
                if fields.len() != columns.len() {
                    return Err(CodecError(format!(
                        "a CSV row of {} fields where there are {} columns",
                        fields.len(),
                        columns.len()
                    )));
                }
                let mut m = ObjectMap::new();
                for (k, v) in columns.iter().zip(fields) {
                    m.insert(k.as_str().into(), Value::from(v));
                }
                Ok(Value::Object(m))
            }
            _ => self.decode(value),
        }
    }

    /// The value of an event read with `value` (`None`: a null value, such as a tombstone).
    pub fn decode(&self, value: Option<&[u8]>) -> Result<Value, CodecError> {
        let bytes = value.unwrap_or_default();
        match self {
            Decoding::Csv(_) => self.decode_with(value, None),
            Decoding::Protobuf(p) => p.decode(bytes),
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

fn csv_row(row: &[u8], delimiter: char) -> Result<Vec<String>, CodecError> {
    let delimiter = u8::try_from(delimiter)
        .map_err(|_| CodecError("the CSV delimiter must be one ASCII character".into()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(row);
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Ok(Vec::new()),
        Err(e) => return Err(CodecError(format!("invalid CSV: {e}"))),
    }
    let fields = record.iter().map(str::to_string).collect();
    // One record per row: anything after it (a newline inside quotes would have been read
    // as part of the field) is a second row.
    if reader
        .read_record(&mut record)
        .map_err(|e| CodecError(format!("invalid CSV: {e}")))?
    {
        return Err(CodecError("more than one CSV row in one record".into()));
    }
    Ok(fields)
}

impl Encoding {
    /// The header row of a CSV encoding (with its line end), `None` for others.
    pub fn header(&self) -> Option<Vec<u8>> {
        let Encoding::Csv(c) = self else {
            return None;
        };
        let mut w = csv_writer(c.delimiter);
        w.write_record(&c.columns).ok()?;
        w.into_inner().ok()
    }

    /// Appends the encoding of `value` to `out`.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Encoding::Json => json(value, out),
            Encoding::Protobuf(p) => p.encode(value, out),
            Encoding::Csv(c) => {
                let Value::Object(m) = value else {
                    return Err(CodecError(format!(
                        "CSV encoding needs an object, found {}",
                        value.kind_str()
                    )));
                };
                let fields: Vec<String> = c
                    .columns
                    .iter()
                    .map(|col| match m.get(col.as_str()) {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                        Some(Value::String(s)) => s.to_string(),
                        Some(other) => serde_json::to_string(other).unwrap_or_default(),
                    })
                    .collect();
                let mut w = csv_writer(c.delimiter);
                w.write_record(&fields)
                    .map_err(|e| CodecError(format!("cannot encode CSV: {e}")))?;
                let mut row = w
                    .into_inner()
                    .map_err(|e| CodecError(format!("cannot encode CSV: {e}")))?;
                // The row without its line end: sinks add their own.
                row.pop();
                out.extend_from_slice(&row);
                Ok(())
            }
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

fn csv_writer(delimiter: char) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .delimiter(u8::try_from(delimiter).unwrap_or(b','))
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new())
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
    fn csv_rows_decode_by_header_and_encode_by_columns() {
        let d = Decoding::Csv(CsvDecoding {
            columns: None,
            delimiter: ',',
        });
        assert!(d.needs_header());
        let header = d.header(b"id,name,note").unwrap();
        let v = d
            .decode_with(Some(br#"7,"Smith, J","said ""hi""""#), Some(&header))
            .unwrap();
        let e = Encoding::Csv(CsvEncoding {
            columns: vec!["name".into(), "id".into(), "missing".into()],
            delimiter: ',',
        });
        let mut out = Vec::new();
        e.encode(&v, &mut out).unwrap();
        assert_eq!(out, br#""Smith, J",7,"#);
        assert_eq!(e.header().unwrap(), b"name,id,missing\n");
        let mut out = Vec::new();
        Encoding::Json.encode(&v, &mut out).unwrap();
        assert_eq!(out, br#"{"id":"7","name":"Smith, J","note":"said \"hi\""}"#);
        // Bad rows are errors.
        assert!(d.decode_with(Some(b"1,2"), Some(&header)).is_err());
        assert!(d.decode(Some(b"1,2,3")).is_err(), "no header read");
        let declared = Decoding::Csv(CsvDecoding {
            columns: Some(vec!["a".into(), "b".into()]),
            delimiter: ';',
        });
        assert_eq!(
            declared.decode(Some(b"x;y")).unwrap(),
            serde_json::from_str::<Value>(r#"{"a":"x","b":"y"}"#).unwrap()
        );
    }

    #[test]
    fn protobuf_round_trips_through_a_proto_file_compiled_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("shop.proto"),
            r#"syntax = "proto3";
               package shop;
               message Order { string id = 1; int32 qty = 2; repeated string tags = 3; Kind kind = 4; }
               enum Kind { NONE = 0; RUSH = 1; }"#,
        )
        .unwrap();
        let mut p = Protobuf {
            message: "shop.Order".into(),
            descriptor_set: None,
            proto: Some("shop.proto".into()),
            include: Vec::new(),
            descriptor: None,
        };
        p.prepare(dir.path()).unwrap();
        let v: Value =
            serde_json::from_str(r#"{"id":"o1","qty":3,"tags":["a","b"],"kind":"RUSH"}"#).unwrap();
        let mut bin = Vec::new();
        Encoding::Protobuf(p.clone()).encode(&v, &mut bin).unwrap();
        let back = Decoding::Protobuf(p.clone()).decode(Some(&bin)).unwrap();
        assert_eq!(back, v);
        // Bad input and a wrong shape are errors.
        assert!(
            Decoding::Protobuf(p.clone())
                .decode(Some(&[0xff, 0xff, 0xff]))
                .is_err()
        );
        let wrong: Value = serde_json::from_str(r#"{"qty":"many"}"#).unwrap();
        assert!(
            Encoding::Protobuf(p.clone())
                .encode(&wrong, &mut Vec::new())
                .is_err()
        );
        let mut missing = p.clone();
        missing.message = "shop.Nope".into();
        let e = missing.prepare(dir.path()).unwrap_err();
        assert!(e.contains("shop.Order"), "{e}");
        let mut bad = p;
        bad.proto = Some("nope.proto".into());
        assert!(bad.prepare(dir.path()).is_err());
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

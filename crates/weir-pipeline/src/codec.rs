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

    /// The message type, once [`Protobuf::prepare`] loaded it.
    pub fn message_descriptor(&self) -> Option<&prost_reflect::MessageDescriptor> {
        self.descriptor.as_ref()
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
        value: Option<&Bytes>,
        header: Option<&[String]>,
    ) -> Result<Value, CodecError> {
        match self {
            Decoding::Csv(c) => {
                let columns = c
                    .columns
                    .as_deref()
                    .or(header)
                    .ok_or_else(|| CodecError("no CSV header was read".into()))?;
                let fields = csv_row(value.map_or(&[][..], |v| v), c.delimiter)?;
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
    pub fn decode(&self, value: Option<&Bytes>) -> Result<Value, CodecError> {
        let bytes = value.map_or(&[][..], |v| v);
        match self {
            Decoding::Csv(_) => self.decode_with(value, None),
            Decoding::Protobuf(p) => p.decode(bytes),
            Decoding::Json => {
                let Some(value) = value else {
                    return Ok(Value::Null);
                };
                json_value(value).map_err(|e| CodecError(format!("invalid JSON: {e}")))
            }
            Decoding::Text => {
                std::str::from_utf8(bytes)
                    .map_err(|e| CodecError(format!("not UTF-8 text: {e}")))?;
                Ok(message(Value::Bytes(value.cloned().unwrap_or_default())))
            }
            Decoding::Bytes => Ok(message(Value::Bytes(value.cloned().unwrap_or_default()))),
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

/// One JSON document into a VRL value that shares `src`'s memory.
///
/// Written here rather than using vrl's `Deserialize for Value` on serde_json, which was 40% of
/// a pipeline's CPU in the benchmark: it copies every string into an allocation of its own and
/// inserts an object's keys one at a time. Here sonic-rs (SIMD JSON, with serde's API) parses,
/// a string without escapes is a slice of `src` (the record's bytes, reference-counted
/// already), and an object's entries are built into the map in one pass. The values are vrl's:
/// integers that fit an i64, other numbers as floats (read exactly), the last of repeated
/// keys. sonic-rs validates UTF-8, bounds the nesting depth (255) and rejects trailing input.
fn json_value(src: &Bytes) -> sonic_rs::Result<Value> {
    use serde::de::DeserializeSeed;
    let mut de = sonic_rs::Deserializer::from_slice(src);
    let value = Shared(src).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A visitor building a [`Value`] whose strings are slices of the document's bytes.
#[derive(Clone, Copy)]
struct Shared<'a>(&'a Bytes);

impl Shared<'_> {
    /// `s` as a slice of the document when it lies within it (serde_json's borrowed strings
    /// do), else a copy.
    fn bytes(self, s: &str) -> Bytes {
        let whole = self.0.as_ptr_range();
        let part = s.as_bytes().as_ptr_range();
        if !s.is_empty() && whole.start <= part.start && part.end <= whole.end {
            self.0.slice_ref(s.as_bytes())
        } else {
            Bytes::copy_from_slice(s.as_bytes())
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Shared<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Shared<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Integer(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(i) => Ok(Value::Integer(i)),
            Err(_) => self.visit_f64(v as f64),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        vrl::prelude::NotNan::new(v)
            .map(Value::Float)
            .map_err(|_| E::custom("a number that is not a number"))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value, E> {
        Ok(Value::Bytes(self.bytes(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Bytes(Bytes::copy_from_slice(v.as_bytes())))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key.into(), map.next_value_seed(self)?));
        }
        // Sorted and built at once; a stable sort keeps repeated keys in document order and
        // the build keeps the last of them.
        Ok(Value::Object(entries.into_iter().collect::<ObjectMap>()))
    }
}

/// sonic-rs for the same reason as [`json_value`]: its string escaping is the faster half of
/// writing an event. Its output is serde_json's but for float spelling (both exact).
fn json(value: &Value, out: &mut Vec<u8>) -> Result<(), CodecError> {
    sonic_rs::to_writer(out, value).map_err(|e| CodecError(format!("cannot encode JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(d: Decoding, e: Encoding, input: &[u8]) -> Vec<u8> {
        let v = d.decode(Some(&Bytes::copy_from_slice(input))).unwrap();
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
            .decode_with(
                Some(&Bytes::from_static(br#"7,"Smith, J","said ""hi""""#)),
                Some(&header),
            )
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
        assert!(
            d.decode_with(Some(&Bytes::from_static(b"1,2")), Some(&header))
                .is_err()
        );
        assert!(
            d.decode(Some(&Bytes::from_static(b"1,2,3"))).is_err(),
            "no header read"
        );
        let declared = Decoding::Csv(CsvDecoding {
            columns: Some(vec!["a".into(), "b".into()]),
            delimiter: ';',
        });
        assert_eq!(
            declared.decode(Some(&Bytes::from_static(b"x;y"))).unwrap(),
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
        let back = Decoding::Protobuf(p.clone())
            .decode(Some(&Bytes::from(bin.clone())))
            .unwrap();
        assert_eq!(back, v);
        // Bad input and a wrong shape are errors.
        assert!(
            Decoding::Protobuf(p.clone())
                .decode(Some(&Bytes::from_static(&[0xff, 0xff, 0xff])))
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
        assert!(
            Decoding::Json
                .decode(Some(&Bytes::from_static(b"{nope")))
                .is_err()
        );
        assert!(
            Decoding::Text
                .decode(Some(&Bytes::from_static(&[0xff, 0xfe])))
                .is_err()
        );
        assert_eq!(Decoding::Json.decode(None), Ok(Value::Null));
        let mut out = Vec::new();
        let bin = Decoding::Bytes
            .decode(Some(&Bytes::from_static(&[0xff])))
            .unwrap();
        assert!(Encoding::Text.encode(&bin, &mut out).is_err());
        assert!(Encoding::Bytes.encode(&Value::from(3), &mut out).is_err());
    }

    /// The shared decoder gives what vrl's own `Deserialize` gives, on any JSON.
    fn same_as_vrl(doc: &str) {
        let ours = json_value(&Bytes::copy_from_slice(doc.as_bytes()));
        let theirs = serde_json::from_str::<Value>(doc);
        match (ours, theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{doc}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{doc}: ours {a:?}, vrl's {b:?}"),
        }
    }

    #[test]
    fn json_decoding_matches_vrl() {
        for doc in [
            r#"{"a":1,"b":[true,null,"x"],"c":{"d":1.5,"e":-3}}"#,
            r#"{"esc":"tab\there \"q\" \u00e9 \ud83d\ude00","plain":"héllo"}"#,
            r#"{"k":1,"k":2,"a":{"k":"x","k":"y"}}"#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"e":1e300}"#,
            r#""just a string""#,
            r#"[]"#,
            r#"{}"#,
            r#"  {"spaces" : [ 1 , 2 ]}  "#,
            r#"{"trailing":1} x"#,
            r#"{"unterminated":"#,
            r#"{"bad":"\ud800"}"#,
            r#"1e999"#,
            "[1,]",
            "01",
            "{\"raw\":\"tab\there\"}",
            "NaN",
            "-",
            "1.",
            ".5",
            r#""\x""#,
            r#"{"a" 1}"#,
            "",
            "nul",
        ] {
            same_as_vrl(doc);
        }
        for bad in [&b"\"\xff\""[..], b"{\"\xc3\":1}", b"\"\xed\xa0\x80\""] {
            assert!(
                json_value(&Bytes::from_static(bad)).is_err(),
                "{bad:?} is not UTF-8"
            );
        }
        // Nesting is bounded, as serde_json bounds it.
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(json_value(&Bytes::from(deep)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn json_encoding_reads_back(v in json_doc()) {
            let value = expected(&v);
            let mut out = Vec::new();
            Encoding::Json.encode(&value, &mut out).unwrap();
            proptest::prop_assert_eq!(json_value(&Bytes::from(out)).unwrap(), value);
        }
    }

    #[test]
    fn json_encoding_writes_what_json_cannot_hold_as_null() {
        let mut out = Vec::new();
        let inf = Value::from_f64_or_zero(f64::INFINITY);
        Encoding::Json.encode(&inf, &mut out).unwrap();
        assert_eq!(out, b"null");
    }

    #[test]
    fn json_strings_share_the_record() {
        let src = Bytes::from_static(br#"{"s":"shared","e":"a\nb"}"#);
        let Value::Object(m) = json_value(&src).unwrap() else {
            panic!()
        };
        let Some(Value::Bytes(s)) = m.get("s") else {
            panic!()
        };
        assert!(
            src.as_ptr_range().contains(&s.as_ptr()),
            "a plain string is a slice"
        );
        assert_eq!(m.get("e"), Some(&Value::from("a\nb")));
    }

    proptest::proptest! {
        #[test]
        fn json_decoding_matches_vrl_on_generated_documents(v in json_doc()) {
            // The generated value is the truth: serde_json prints floats so that they read
            // back exactly, which vrl's decoder on serde_json does not always do (it may be one
            // unit in the last place off), so it is not the reference here.
            let doc = Bytes::from(v.to_string());
            proptest::prop_assert_eq!(json_value(&doc).unwrap(), expected(&v));
        }
    }

    /// What vrl's decoder gives for `v`, with floats read exactly.
    fn expected(v: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Boolean(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::from_f64_or_zero(n.as_f64().unwrap()),
            },
            J::String(s) => Value::from(s.as_str()),
            J::Array(a) => Value::Array(a.iter().map(expected).collect()),
            J::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.as_str().into(), expected(v)))
                    .collect(),
            ),
        }
    }

    fn json_doc() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e12f64..1e12).prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::vec(("[a-d\"\\\\]{0,3}", inner), 0..6)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }
}

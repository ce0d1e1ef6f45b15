//! Encoding record batches, uncompressed or compressed.

use crate::header::{
    ATTRIBUTES, BASE_SEQUENCE, BASE_TIMESTAMP, BATCH_LENGTH, BatchError, Compression, HEADER_LEN,
    LAST_OFFSET_DELTA, LOG_OVERHEAD, MAGIC, MAGIC_V2, MAX_TIMESTAMP, PRODUCER_EPOCH, PRODUCER_ID,
    RECORD_COUNT, reseal,
};

/// One record to put in a batch.
#[derive(Debug, Clone, Default)]
pub struct RecordSpec<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// Create time in ms since the epoch; `None` uses the batch's base timestamp.
    pub timestamp: Option<i64>,
}

impl<'a> RecordSpec<'a> {
    /// A record with a value and no key.
    pub fn value(value: &'a [u8]) -> Self {
        Self {
            value: Some(value),
            ..Self::default()
        }
    }

    /// A record with a key and a value.
    pub fn keyed(key: &'a [u8], value: &'a [u8]) -> Self {
        Self {
            key: Some(key),
            value: Some(value),
            ..Self::default()
        }
    }
}

/// Builds one v2 batch with base offset 0 (a log assigns the real one); uncompressed with
/// [`BatchBuilder::build`], compressed with [`BatchBuilder::build_compressed`].
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl BatchBuilder {
    /// Starts a batch whose base timestamp is `base_timestamp` (ms since the epoch).
    pub fn new(base_timestamp: i64) -> Self {
        Self::with_capacity(base_timestamp, 256)
    }

    /// Like [`BatchBuilder::new`], reserving `capacity` bytes up front.
    pub fn with_capacity(base_timestamp: i64, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        Self {
            buf,
            base_timestamp,
            max_timestamp: base_timestamp,
            count: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Sets the idempotent-producer fields.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch would take if built now.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record.
    pub fn push(&mut self, record: RecordSpec<'_>) {
        let timestamp = record.timestamp.unwrap_or(self.base_timestamp);
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let mut body = Vec::with_capacity(
            16 + record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len),
        );
        body.push(0); // record attributes, unused
        put_varlong(&mut body, timestamp.wrapping_sub(self.base_timestamp));
        put_varint(&mut body, self.count);
        put_bytes(&mut body, record.key);
        put_bytes(&mut body, record.value);
        put_varint(&mut body, record.headers.len() as i32);
        for (key, value) in &record.headers {
            put_bytes(&mut body, Some(key.as_bytes()));
            put_bytes(&mut body, *value);
        }
        put_varint(&mut self.buf, body.len() as i32);
        self.buf.extend_from_slice(&body);
        self.count += 1;
    }

    /// Finishes the batch with its records compressed by `codec`, as a Kafka producer's
    /// compressed batch (`Compression::None`: the same as [`BatchBuilder::build`]).
    pub fn build_compressed(self, codec: Compression) -> Result<Vec<u8>, BatchError> {
        if codec == Compression::None {
            return Ok(self.build());
        }
        let plain = self.build();
        let mut b = plain[..HEADER_LEN].to_vec();
        b.extend_from_slice(&crate::compression::compress(codec, &plain[HEADER_LEN..])?);
        let batch_length = (b.len() - LOG_OVERHEAD) as i32;
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&i16::from(codec.bits()).to_be_bytes());
        reseal(&mut b);
        Ok(b)
    }

    /// Finishes the batch: fills in the header and the CRC.
    pub fn build(mut self) -> Vec<u8> {
        let b = &mut self.buf;
        let batch_length = (b.len() - LOG_OVERHEAD) as i32;
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        b[MAGIC] = MAGIC_V2;
        b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&0i16.to_be_bytes());
        let last_delta = (self.count - 1).max(0);
        b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&last_delta.to_be_bytes());
        b[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&self.producer_id.to_be_bytes());
        b[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&self.producer_epoch.to_be_bytes());
        b[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&self.base_sequence.to_be_bytes());
        b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&self.count.to_be_bytes());
        reseal(b);
        self.buf
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// Zigzag varint, as Kafka records use (protobuf sint32 encoding).
pub(crate) fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Zigzag varlong (protobuf sint64 encoding).
pub(crate) fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

//! A pre-decode check of Kafka requests: walks a request's wire layout without allocating and
//! refuses every length or element count the frame cannot hold.
//!
//! Why it exists, and why by hand: the `kafka-protocol` crate (0.18, the latest release) decodes
//! an array by reserving room for the element count read off the wire *before* it looks at how
//! many bytes are left. A 14-byte Metadata v0 request declaring 2³¹−1 topics makes it ask the
//! allocator for about 150 GB, and the allocation failure aborts the whole process (an abort,
//! not a panic anything could catch). No fixed release exists and we neither vendor nor patch
//! the crate, so every frame goes through [`check_request`] first. Once it has accepted a frame,
//! each count the decoder reserves for is at most the bytes left divided by the smallest wire
//! size of one element, so no reservation is larger than what a request really holding that
//! many elements needs (and frames are capped at [`crate::MAX_REQUEST_BYTES`]).
//!
//! The layouts are tables (`Message`, `Field`, `Ty`) written from Kafka's message schemas
//! for exactly the (API, version) pairs weir advertises; an API or version outside them is
//! refused. A field is present in a range of versions, may be nullable from some version on,
//! and is encoded the classic way (`i16` string lengths, `i32` bytes lengths and array counts)
//! or, from the message's first flexible version, the compact way (unsigned varint length + 1,
//! 0 for null) with a tagged-field section closing every struct. In the ranges served only
//! ApiVersions 3–4 and request header v2 are flexible, and none of them has a known tagged
//! field, so tagged fields are skipped as opaque (tag, size, bytes) triples.
//!
//! What it does not check: UTF-8 (the decoder does, and fails cleanly), field values, and
//! trailing bytes after the last field (the decoder ignores them, and so do we). What it does
//! not bound: a decoded element can take more memory than its smallest wire form (tens of bytes
//! for a 2-byte empty topic name), which [`crate::MAX_REQUEST_BYTES`] caps per request.
//!
//! Serving a new API or version means adding its layout here first, and a sample of it to the
//! tests, which check the guard against everything the crate's encoder writes.

use kafka_protocol::messages::ApiKey;

/// Why a request was refused before decoding. Offsets are from the start of the frame (the
/// request header's first byte).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("{api:?} v{version} has no known layout here")]
    Unsupported { api: ApiKey, version: i16 },
    #[error("request header v{0} is not one the served APIs use")]
    HeaderVersion(i16),
    #[error("the header names API {key} v{version}, not the request being checked")]
    HeaderMismatch { key: i16, version: i16 },
    #[error("truncated at byte {at}: {need} bytes needed, {remaining} left")]
    Truncated {
        at: usize,
        need: usize,
        remaining: usize,
    },
    #[error("negative length {len} at byte {at}")]
    NegativeLength { at: usize, len: i64 },
    #[error("null at byte {at} where the field is not nullable")]
    NotNullable { at: usize },
    #[error("length {len} at byte {at} exceeds the {remaining} bytes left")]
    TooLong {
        at: usize,
        len: u64,
        remaining: usize,
    },
    #[error(
        "{count} elements of at least {min} bytes each at byte {at} exceed the {remaining} bytes left"
    )]
    TooManyElements {
        at: usize,
        count: u64,
        min: usize,
        remaining: usize,
    },
    #[error("tag {tag} at byte {at} is above i32::MAX")]
    TagOutOfRange { at: usize, tag: u32 },
    #[error("{count} tagged fields at byte {at} exceed the {remaining} bytes left")]
    TooManyTaggedFields {
        at: usize,
        count: u64,
        remaining: usize,
    },
}

/// How one field is encoded.
#[derive(Debug, Clone, Copy)]
enum Ty {
    /// A fixed number of bytes: integers, booleans, UUIDs.
    Fixed(usize),
    /// A string: `i16` length, or compact (varint length + 1).
    Str,
    /// Bytes: `i32` length, or compact.
    Bytes,
    /// An array: `i32` count, or compact (varint count + 1).
    Array(Elem),
}

/// What an array holds (elements are never null).
#[derive(Debug, Clone, Copy)]
enum Elem {
    Fixed(usize),
    Str,
    Struct(&'static [Field]),
}

/// A field present in versions `min..=max`, nullable from `nullable_from` on.
#[derive(Debug, Clone, Copy)]
struct Field {
    min: i16,
    max: i16,
    nullable_from: i16,
    ty: Ty,
}

/// No upper bound on a field's versions; never nullable.
const ANY: i16 = i16::MAX;

/// A field present in `min..=max`, not nullable.
const fn f(min: i16, max: i16, ty: Ty) -> Field {
    Field {
        min,
        max,
        nullable_from: ANY,
        ty,
    }
}

impl Field {
    /// The same field, nullable from `version` on.
    const fn nullable(self, version: i16) -> Self {
        Self {
            nullable_from: version,
            ..self
        }
    }

    fn present(&self, version: i16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// A request body: the versions served, the first flexible version, the top-level fields.
#[derive(Debug)]
struct Message {
    min: i16,
    max: i16,
    flexible_from: i16,
    fields: &'static [Field],
}

const BOOL: Ty = Ty::Fixed(1);
const I8: Ty = Ty::Fixed(1);
const I16: Ty = Ty::Fixed(2);
const I32: Ty = Ty::Fixed(4);
const I64: Ty = Ty::Fixed(8);
const STR: Ty = Ty::Str;
const BYTES: Ty = Ty::Bytes;
const fn array(of: &'static [Field]) -> Ty {
    Ty::Array(Elem::Struct(of))
}
const I32_ARRAY: Ty = Ty::Array(Elem::Fixed(4));
const STR_ARRAY: Ty = Ty::Array(Elem::Str);

// Produce 3–8 (flexible from 9).
const PRODUCE_PARTITION: &[Field] = &[
    f(0, ANY, I32),               // index
    f(0, ANY, BYTES).nullable(0), // records
];
const PRODUCE_TOPIC: &[Field] = &[
    f(0, 12, STR),                       // name
    f(0, ANY, array(PRODUCE_PARTITION)), // partition_data
];
const PRODUCE: Message = Message {
    min: 3,
    max: 8,
    flexible_from: 9,
    fields: &[
        f(3, ANY, STR).nullable(3),      // transactional_id
        f(0, ANY, I16),                  // acks
        f(0, ANY, I32),                  // timeout_ms
        f(0, ANY, array(PRODUCE_TOPIC)), // topic_data
    ],
};

// Fetch 4–11 (flexible from 12).
const FETCH_PARTITION: &[Field] = &[
    f(0, ANY, I32), // partition
    f(9, ANY, I32), // current_leader_epoch
    f(0, ANY, I64), // fetch_offset
    f(5, ANY, I64), // log_start_offset
    f(0, ANY, I32), // partition_max_bytes
];
const FETCH_TOPIC: &[Field] = &[
    f(0, 12, STR),                     // topic
    f(0, ANY, array(FETCH_PARTITION)), // partitions
];
const FETCH_FORGOTTEN: &[Field] = &[
    f(7, 12, STR),        // topic
    f(7, ANY, I32_ARRAY), // partitions
];
const FETCH: Message = Message {
    min: 4,
    max: 11,
    flexible_from: 12,
    fields: &[
        f(0, 14, I32),                     // replica_id
        f(0, ANY, I32),                    // max_wait_ms
        f(0, ANY, I32),                    // min_bytes
        f(3, ANY, I32),                    // max_bytes
        f(4, ANY, I8),                     // isolation_level
        f(7, ANY, I32),                    // session_id
        f(7, ANY, I32),                    // session_epoch
        f(0, ANY, array(FETCH_TOPIC)),     // topics
        f(7, ANY, array(FETCH_FORGOTTEN)), // forgotten_topics_data
        f(11, ANY, STR),                   // rack_id
    ],
};

// ListOffsets 1–5 (flexible from 6).
const LIST_OFFSETS_PARTITION: &[Field] = &[
    f(0, ANY, I32), // partition_index
    f(4, ANY, I32), // current_leader_epoch
    f(0, ANY, I64), // timestamp
];
const LIST_OFFSETS_TOPIC: &[Field] = &[
    f(0, ANY, STR),                           // name
    f(0, ANY, array(LIST_OFFSETS_PARTITION)), // partitions
];
const LIST_OFFSETS: Message = Message {
    min: 1,
    max: 5,
    flexible_from: 6,
    fields: &[
        f(0, ANY, I32),                       // replica_id
        f(2, ANY, I8),                        // isolation_level
        f(0, ANY, array(LIST_OFFSETS_TOPIC)), // topics
    ],
};

// Metadata 0–8 (flexible from 9).
const METADATA_TOPIC: &[Field] = &[
    f(0, ANY, STR).nullable(10), // name
];
const METADATA: Message = Message {
    min: 0,
    max: 8,
    flexible_from: 9,
    fields: &[
        f(0, ANY, array(METADATA_TOPIC)).nullable(1), // topics
        f(4, ANY, BOOL),                              // allow_auto_topic_creation
        f(8, 10, BOOL),                               // include_cluster_authorized_operations
        f(8, ANY, BOOL),                              // include_topic_authorized_operations
    ],
};

// OffsetCommit 2–7 (flexible from 8).
const OFFSET_COMMIT_PARTITION: &[Field] = &[
    f(0, ANY, I32),             // partition_index
    f(0, ANY, I64),             // committed_offset
    f(6, ANY, I32),             // committed_leader_epoch
    f(0, ANY, STR).nullable(0), // committed_metadata
];
const OFFSET_COMMIT_TOPIC: &[Field] = &[
    f(0, ANY, STR),                            // name
    f(0, ANY, array(OFFSET_COMMIT_PARTITION)), // partitions
];
const OFFSET_COMMIT: Message = Message {
    min: 2,
    max: 7,
    flexible_from: 8,
    fields: &[
        f(0, ANY, STR),                        // group_id
        f(1, ANY, I32),                        // generation_id_or_member_epoch
        f(1, ANY, STR),                        // member_id
        f(7, ANY, STR).nullable(7),            // group_instance_id
        f(2, 4, I64),                          // retention_time_ms
        f(0, ANY, array(OFFSET_COMMIT_TOPIC)), // topics
    ],
};

// OffsetFetch 1–5 (flexible from 6).
const OFFSET_FETCH_TOPIC: &[Field] = &[
    f(0, 7, STR),       // name
    f(0, 7, I32_ARRAY), // partition_indexes
];
const OFFSET_FETCH: Message = Message {
    min: 1,
    max: 5,
    flexible_from: 6,
    fields: &[
        f(0, 7, STR),                                   // group_id
        f(0, 7, array(OFFSET_FETCH_TOPIC)).nullable(2), // topics
    ],
};

// FindCoordinator 0–2 (flexible from 3).
const FIND_COORDINATOR: Message = Message {
    min: 0,
    max: 2,
    flexible_from: 3,
    fields: &[
        f(0, 3, STR),  // key
        f(1, ANY, I8), // key_type
    ],
};

// JoinGroup 0–5 (flexible from 6).
const JOIN_GROUP_PROTOCOL: &[Field] = &[
    f(0, ANY, STR),   // name
    f(0, ANY, BYTES), // metadata
];
const JOIN_GROUP: Message = Message {
    min: 0,
    max: 5,
    flexible_from: 6,
    fields: &[
        f(0, ANY, STR),                        // group_id
        f(0, ANY, I32),                        // session_timeout_ms
        f(1, ANY, I32),                        // rebalance_timeout_ms
        f(0, ANY, STR),                        // member_id
        f(5, ANY, STR).nullable(5),            // group_instance_id
        f(0, ANY, STR),                        // protocol_type
        f(0, ANY, array(JOIN_GROUP_PROTOCOL)), // protocols
    ],
};

// Heartbeat 0–3 (flexible from 4).
const HEARTBEAT: Message = Message {
    min: 0,
    max: 3,
    flexible_from: 4,
    fields: &[
        f(0, ANY, STR),             // group_id
        f(0, ANY, I32),             // generation_id
        f(0, ANY, STR),             // member_id
        f(3, ANY, STR).nullable(3), // group_instance_id
    ],
};

// LeaveGroup 0–1 (flexible from 4).
const LEAVE_GROUP: Message = Message {
    min: 0,
    max: 1,
    flexible_from: 4,
    fields: &[
        f(0, ANY, STR), // group_id
        f(0, 2, STR),   // member_id
    ],
};

// SyncGroup 0–3 (flexible from 4).
const SYNC_GROUP_ASSIGNMENT: &[Field] = &[
    f(0, ANY, STR),   // member_id
    f(0, ANY, BYTES), // assignment
];
const SYNC_GROUP: Message = Message {
    min: 0,
    max: 3,
    flexible_from: 4,
    fields: &[
        f(0, ANY, STR),                          // group_id
        f(0, ANY, I32),                          // generation_id
        f(0, ANY, STR),                          // member_id
        f(3, ANY, STR).nullable(3),              // group_instance_id
        f(0, ANY, array(SYNC_GROUP_ASSIGNMENT)), // assignments
    ],
};

// ApiVersions 0–4 (flexible from 3).
const API_VERSIONS: Message = Message {
    min: 0,
    max: 4,
    flexible_from: 3,
    fields: &[
        f(3, ANY, STR), // client_software_name
        f(3, ANY, STR), // client_software_version
    ],
};

// CreateTopics 2–4 (flexible from 5).
const CREATE_TOPICS_ASSIGNMENT: &[Field] = &[
    f(0, ANY, I32),       // partition_index
    f(0, ANY, I32_ARRAY), // broker_ids
];
const CREATE_TOPICS_CONFIG: &[Field] = &[
    f(0, ANY, STR),             // name
    f(0, ANY, STR).nullable(0), // value
];
const CREATE_TOPICS_TOPIC: &[Field] = &[
    f(0, ANY, STR),                             // name
    f(0, ANY, I32),                             // num_partitions
    f(0, ANY, I16),                             // replication_factor
    f(0, ANY, array(CREATE_TOPICS_ASSIGNMENT)), // assignments
    f(0, ANY, array(CREATE_TOPICS_CONFIG)),     // configs
];
const CREATE_TOPICS: Message = Message {
    min: 2,
    max: 4,
    flexible_from: 5,
    fields: &[
        f(0, ANY, array(CREATE_TOPICS_TOPIC)), // topics
        f(0, ANY, I32),                        // timeout_ms
        f(1, ANY, BOOL),                       // validate_only
    ],
};

// DeleteTopics 1–3 (flexible from 4).
const DELETE_TOPICS: Message = Message {
    min: 1,
    max: 3,
    flexible_from: 4,
    fields: &[
        f(0, 5, STR_ARRAY), // topic_names
        f(0, ANY, I32),     // timeout_ms
    ],
};

// DescribeConfigs 1–2 (flexible from 4).
const DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[
    f(0, ANY, I8),                    // resource_type
    f(0, ANY, STR),                   // resource_name
    f(0, ANY, STR_ARRAY).nullable(0), // configuration_keys
];
const DESCRIBE_CONFIGS: Message = Message {
    min: 1,
    max: 2,
    flexible_from: 4,
    fields: &[
        f(0, ANY, array(DESCRIBE_CONFIGS_RESOURCE)), // resources
        f(1, ANY, BOOL),                             // include_synonyms
    ],
};

// InitProducerId 0–1 (flexible from 2).
const INIT_PRODUCER_ID: Message = Message {
    min: 0,
    max: 1,
    flexible_from: 2,
    fields: &[
        f(0, ANY, STR).nullable(0), // transactional_id
        f(0, ANY, I32),             // transaction_timeout_ms
    ],
};

/// The layout of `api`'s requests, if weir serves it.
fn message(api: ApiKey) -> Option<&'static Message> {
    Some(match api {
        ApiKey::Produce => &PRODUCE,
        ApiKey::Fetch => &FETCH,
        ApiKey::ListOffsets => &LIST_OFFSETS,
        ApiKey::Metadata => &METADATA,
        ApiKey::OffsetCommit => &OFFSET_COMMIT,
        ApiKey::OffsetFetch => &OFFSET_FETCH,
        ApiKey::FindCoordinator => &FIND_COORDINATOR,
        ApiKey::JoinGroup => &JOIN_GROUP,
        ApiKey::Heartbeat => &HEARTBEAT,
        ApiKey::LeaveGroup => &LEAVE_GROUP,
        ApiKey::SyncGroup => &SYNC_GROUP,
        ApiKey::ApiVersions => &API_VERSIONS,
        ApiKey::CreateTopics => &CREATE_TOPICS,
        ApiKey::DeleteTopics => &DELETE_TOPICS,
        ApiKey::DescribeConfigs => &DESCRIBE_CONFIGS,
        ApiKey::InitProducerId => &INIT_PRODUCER_ID,
        _ => return None,
    })
}

/// The versions of `api` the guard knows the layout of.
pub fn versions(api: ApiKey) -> Option<(i16, i16)> {
    message(api).map(|m| (m.min, m.max))
}

/// Checks that `frame` (a whole request after its 4-byte size: header, then body) is a
/// well-formed `api` request of `version` with request header `header_version`: every length
/// and count fits in the bytes left, nothing is null that may not be, nothing is cut short.
/// Allocates nothing; runs in time linear in the frame's length.
pub fn check_request(
    api: ApiKey,
    version: i16,
    header_version: i16,
    frame: &[u8],
) -> Result<(), GuardError> {
    let msg = message(api)
        .filter(|m| (m.min..=m.max).contains(&version))
        .ok_or(GuardError::Unsupported { api, version })?;
    let mut r = Reader { buf: frame, at: 0 };
    header(&mut r, api, version, header_version)?;
    let flexible = version >= msg.flexible_from;
    fields(&mut r, msg.fields, version, flexible)
}

/// Request header v1 (key, version, correlation id, nullable client id) and v2 (the same,
/// then tagged fields; the client id stays a classic string).
fn header(
    r: &mut Reader,
    api: ApiKey,
    version: i16,
    header_version: i16,
) -> Result<(), GuardError> {
    if !(1..=2).contains(&header_version) {
        return Err(GuardError::HeaderVersion(header_version));
    }
    let key = r.i16()?;
    let v = r.i16()?;
    if key != api as i16 || v != version {
        return Err(GuardError::HeaderMismatch { key, version: v });
    }
    r.skip(4)?; // correlation_id
    value(r, Ty::Str, true, version, false)?; // client_id
    if header_version >= 2 {
        tagged_fields(r)?;
    }
    Ok(())
}

/// The fields of one struct present in `version`, then its tagged fields when flexible.
fn fields(
    r: &mut Reader,
    fields: &[Field],
    version: i16,
    flexible: bool,
) -> Result<(), GuardError> {
    for field in fields.iter().filter(|f| f.present(version)) {
        let nullable = version >= field.nullable_from;
        value(r, field.ty, nullable, version, flexible)?;
    }
    if flexible {
        tagged_fields(r)?;
    }
    Ok(())
}

/// One field's value.
fn value(
    r: &mut Reader,
    ty: Ty,
    nullable: bool,
    version: i16,
    flexible: bool,
) -> Result<(), GuardError> {
    let at = r.at;
    let len = match (ty, flexible) {
        (Ty::Fixed(n), _) => return r.skip(n),
        (Ty::Array(elem), _) => return array_of(r, elem, nullable, version, flexible),
        (_, true) => r.compact_len()?,
        (Ty::Str, false) => r.classic_len(i64::from(r.peek_i16()?), 2)?,
        (Ty::Bytes, false) => r.classic_len(i64::from(r.peek_i32()?), 4)?,
    };
    match len {
        None if nullable => Ok(()),
        None => Err(GuardError::NotNullable { at }),
        Some(len) => r.skip_len(len, at),
    }
}

/// An array: its count must fit in the bytes left at the elements' smallest size, then every
/// element is walked.
fn array_of(
    r: &mut Reader,
    elem: Elem,
    nullable: bool,
    version: i16,
    flexible: bool,
) -> Result<(), GuardError> {
    let at = r.at;
    let count = if flexible {
        r.compact_len()?
    } else {
        r.classic_len(i64::from(r.peek_i32()?), 4)?
    };
    let Some(count) = count else {
        return if nullable {
            Ok(())
        } else {
            Err(GuardError::NotNullable { at })
        };
    };
    let min = elem_min_size(elem, version, flexible).max(1);
    let remaining = r.remaining();
    if count.saturating_mul(min as u64) > remaining as u64 {
        return Err(GuardError::TooManyElements {
            at,
            count,
            min,
            remaining,
        });
    }
    for _ in 0..count {
        match elem {
            Elem::Fixed(n) => r.skip(n)?,
            Elem::Str => value(r, Ty::Str, false, version, flexible)?,
            Elem::Struct(of) => fields(r, of, version, flexible)?,
        }
    }
    Ok(())
}

/// The fewest bytes one array element can take on the wire.
fn elem_min_size(elem: Elem, version: i16, flexible: bool) -> usize {
    match elem {
        Elem::Fixed(n) => n,
        Elem::Str => ty_min_size(Ty::Str, flexible),
        Elem::Struct(of) => {
            let own: usize = of
                .iter()
                .filter(|f| f.present(version))
                .map(|f| ty_min_size(f.ty, flexible))
                .sum();
            own + usize::from(flexible) // the tagged-field count
        }
    }
}

fn ty_min_size(ty: Ty, flexible: bool) -> usize {
    match (ty, flexible) {
        (Ty::Fixed(n), _) => n,
        (_, true) => 1,
        (Ty::Str, false) => 2,
        (Ty::Bytes | Ty::Array(_), false) => 4,
    }
}

/// A tagged-field section: a count, then (tag, size, bytes) per field. Every field takes at
/// least two bytes (its tag and its size). Tags are 31-bit: the decoder keeps them as `i32`,
/// and the crate's encoder counts but never writes a negative one, so a larger tag would not
/// survive a round trip (found by the fuzz target).
fn tagged_fields(r: &mut Reader) -> Result<(), GuardError> {
    let at = r.at;
    let count = u64::from(r.uvarint()?);
    let remaining = r.remaining();
    if count.saturating_mul(2) > remaining as u64 {
        return Err(GuardError::TooManyTaggedFields {
            at,
            count,
            remaining,
        });
    }
    for _ in 0..count {
        let tag_at = r.at;
        let tag = r.uvarint()?;
        if i32::try_from(tag).is_err() {
            return Err(GuardError::TagOutOfRange { at: tag_at, tag });
        }
        let size_at = r.at;
        let size = u64::from(r.uvarint()?);
        r.skip_len(size, size_at)?;
    }
    Ok(())
}

/// A cursor over the frame; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    fn skip(&mut self, n: usize) -> Result<(), GuardError> {
        if n > self.remaining() {
            return Err(GuardError::Truncated {
                at: self.at,
                need: n,
                remaining: self.remaining(),
            });
        }
        self.at += n;
        Ok(())
    }

    /// Skips a length read at `at` (already consumed), if the frame holds that many bytes.
    fn skip_len(&mut self, len: u64, at: usize) -> Result<(), GuardError> {
        let remaining = self.remaining();
        if len > remaining as u64 {
            return Err(GuardError::TooLong { at, len, remaining });
        }
        self.at += len as usize;
        Ok(())
    }

    fn bytes<const N: usize>(&self) -> Result<[u8; N], GuardError> {
        self.buf
            .get(self.at..self.at + N)
            .and_then(|b| b.try_into().ok())
            .ok_or(GuardError::Truncated {
                at: self.at,
                need: N,
                remaining: self.remaining(),
            })
    }

    fn peek_i16(&self) -> Result<i16, GuardError> {
        self.bytes().map(i16::from_be_bytes)
    }

    fn peek_i32(&self) -> Result<i32, GuardError> {
        self.bytes().map(i32::from_be_bytes)
    }

    fn i16(&mut self) -> Result<i16, GuardError> {
        let v = self.peek_i16()?;
        self.at += 2;
        Ok(v)
    }

    /// Consumes a classic length or count of `width` bytes already read as `len`: `-1` is
    /// null (`None`), any other negative is refused.
    fn classic_len(&mut self, len: i64, width: usize) -> Result<Option<u64>, GuardError> {
        let at = self.at;
        self.at += width;
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(GuardError::NegativeLength { at, len: n }),
            n => Ok(Some(n as u64)),
        }
    }

    /// A compact length or count: an unsigned varint, 0 for null, else the length + 1.
    fn compact_len(&mut self) -> Result<Option<u64>, GuardError> {
        Ok(u64::from(self.uvarint()?).checked_sub(1))
    }

    /// An unsigned varint as the decoder reads it: at most five bytes, seven bits each,
    /// least significant first; bits beyond 32 are dropped.
    fn uvarint(&mut self) -> Result<u32, GuardError> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.bytes::<1>()?;
            self.at += 1;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests;

//! The guard against the `kafka-protocol` crate: everything its encoder produces for a served
//! (API, version) passes; hostile counts and lengths are refused before its decoder runs.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, FetchRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListOffsetsRequest,
    MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, RequestHeader,
    RequestKind, SyncGroupRequest, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::layouts::{APIS, default_request, message};
use super::{Elem, Enc, Field, GuardError, Struct, Ty, check_request, versions, walk};
use crate::dispatch::SUPPORTED;
use crate::{DecodeError, Decoded, decode_request};

/// How many (API, version) pairs the generator covers: a change to its API list or to the
/// crate's version ranges shows here.
const GENERATED_VERSIONS: usize = 214;

/// How many versions the hand-built samples cover: every version the guard knows of the
/// served APIs.
const SAMPLED_VERSIONS: usize = 181;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

fn topic(i: usize) -> TopicName {
    TopicName(s(&format!("topic-{i}")))
}

/// `n` items made by `make`.
fn many<T>(n: usize, make: impl Fn(usize) -> T) -> Vec<T> {
    (0..n).map(make).collect()
}

/// A header (with a client id, and a tagged field where the header is flexible) then `body`.
fn frame(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
    frame_with(api, version, |b| {
        body.encode(b, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version} does not encode: {e:#}"))
    })
}

/// A header as [`frame`] writes it, then what `body` writes.
fn frame_with(api: ApiKey, version: i16, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let header_version = api.request_header_version(version);
    let mut header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(s("weir-guard-test")));
    if header_version >= 2 {
        header = header.with_unknown_tagged_field(9, Bytes::from_static(b"tag"));
    }
    let mut b = BytesMut::new();
    header.encode(&mut b, header_version).unwrap();
    body(&mut b);
    b.freeze()
}

/// What [`decode_request`] does, for any version the guard knows (it serves fewer): the guard,
/// then the crate's decoders. Also returns how many bytes the decoders left unread.
fn guarded_decode(
    api: ApiKey,
    version: i16,
    frame: &Bytes,
) -> Result<(RequestHeader, RequestKind, usize), DecodeError> {
    let header_version = api.request_header_version(version);
    check_request(api, version, header_version, frame)?;
    let mut buf = frame.clone();
    let header = RequestHeader::decode(&mut buf, header_version)
        .map_err(|e| DecodeError::Header(format!("{e:#}")))?;
    let request = RequestKind::decode(api, &mut buf, version).map_err(|e| DecodeError::Body {
        api,
        version,
        reason: format!("{e:#}"),
    })?;
    Ok((header, request, buf.len()))
}

/// Every (API, version) the guard has a layout for.
fn every_version() -> impl Iterator<Item = (ApiKey, i16)> {
    APIS.iter().flat_map(|&api| {
        let (min, max) = versions(api).unwrap();
        (min..=max).map(move |v| (api, v))
    })
}

/// A request of every field valid in `v`, each array holding `n` elements (nested ones too),
/// nullable fields null when `n` is 0.
fn sample(api: ApiKey, v: i16, n: usize) -> Bytes {
    let opt = |x: &str| (n > 0).then(|| s(x));
    let since = |min: i16| v >= min;
    match api {
        ApiKey::Produce => frame(
            api,
            v,
            &ProduceRequest::default()
                .with_transactional_id(opt("txn").map(TransactionalId))
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(many(n, |i| {
                    let mut t = TopicProduceData::default();
                    // Topics are named up to v12, identified by id from v13 (the nil id
                    // here: `uuid` is not a dependency of this crate).
                    if v <= 12 {
                        t = t.with_name(topic(i));
                    }
                    t.with_partition_data(many(n, |p| {
                        PartitionProduceData::default()
                            .with_index(p as i32)
                            .with_records((p % 2 == 0).then(|| Bytes::from(vec![p as u8; 61])))
                    }))
                })),
        ),
        ApiKey::Fetch => {
            let mut r = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_isolation_level(1)
                .with_topics(many(n, |i| {
                    FetchTopic::default()
                        .with_topic(topic(i))
                        .with_partitions(many(n, |p| {
                            let mut fp = FetchPartition::default()
                                .with_partition(p as i32)
                                .with_fetch_offset(42)
                                .with_partition_max_bytes(1 << 16);
                            if since(9) {
                                fp = fp.with_current_leader_epoch(3);
                            }
                            if since(5) {
                                fp = fp.with_log_start_offset(0);
                            }
                            fp
                        }))
                }));
            if since(7) {
                r = r
                    .with_session_id(1)
                    .with_session_epoch(2)
                    .with_forgotten_topics_data(many(n, |i| {
                        ForgottenTopic::default()
                            .with_topic(topic(i))
                            .with_partitions(many(n, |p| p as i32))
                    }));
            }
            if since(11) {
                r = r.with_rack_id(s("rack-a"));
            }
            frame(api, v, &r)
        }
        ApiKey::ListOffsets => {
            let mut r = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(many(n, |i| {
                    ListOffsetsTopic::default()
                        .with_name(topic(i))
                        .with_partitions(many(n, |p| {
                            let mut lp = ListOffsetsPartition::default()
                                .with_partition_index(p as i32)
                                .with_timestamp(-2);
                            if since(4) {
                                lp = lp.with_current_leader_epoch(5);
                            }
                            lp
                        }))
                }));
            if since(2) {
                r = r.with_isolation_level(1);
            }
            frame(api, v, &r)
        }
        ApiKey::Metadata => {
            let topics = many(n, |i| {
                MetadataRequestTopic::default().with_name(Some(topic(i)))
            });
            // Null (every topic) only from v1.
            let topics = (n > 0 || v == 0).then_some(topics);
            let mut r = MetadataRequest::default().with_topics(topics);
            if since(4) {
                r = r.with_allow_auto_topic_creation(false);
            }
            if since(8) {
                r = r.with_include_topic_authorized_operations(true);
            }
            if (8..=10).contains(&v) {
                r = r.with_include_cluster_authorized_operations(true);
            }
            frame(api, v, &r)
        }
        ApiKey::OffsetCommit => {
            let mut r = OffsetCommitRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_generation_id_or_member_epoch(4)
                .with_member_id(s("member-1"))
                .with_topics(many(n, |i| {
                    OffsetCommitRequestTopic::default()
                        .with_name(topic(i))
                        .with_partitions(many(n, |p| {
                            let mut cp = OffsetCommitRequestPartition::default()
                                .with_partition_index(p as i32)
                                .with_committed_offset(100)
                                .with_committed_metadata((p % 2 == 1).then(|| s("meta")));
                            if since(6) {
                                cp = cp.with_committed_leader_epoch(2);
                            }
                            cp
                        }))
                }));
            if since(7) {
                r = r.with_group_instance_id(opt("instance"));
            }
            if v <= 4 {
                r = r.with_retention_time_ms(60_000);
            }
            frame(api, v, &r)
        }
        ApiKey::OffsetFetch => {
            let mut r = OffsetFetchRequest::default();
            if v <= 7 {
                let topics = many(n, |i| {
                    OffsetFetchRequestTopic::default()
                        .with_name(topic(i))
                        .with_partition_indexes(many(n, |p| p as i32))
                });
                // Null (every topic) only from v2.
                let topics = (n > 0 || v < 2).then_some(topics);
                r = r.with_group_id(GroupId(s("group"))).with_topics(topics);
            } else {
                // A batch of groups from v8.
                r = r.with_groups(many(n, |g| {
                    let group = OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(&format!("group-{g}"))))
                        .with_topics((g % 2 == 0).then(|| {
                            many(n, |i| {
                                OffsetFetchRequestTopics::default()
                                    .with_name(topic(i))
                                    .with_partition_indexes(many(n, |p| p as i32))
                            })
                        }));
                    if since(9) {
                        group.with_member_id(opt("member")).with_member_epoch(3)
                    } else {
                        group
                    }
                }));
            }
            if since(7) {
                r = r.with_require_stable(true);
            }
            frame(api, v, &r)
        }
        ApiKey::FindCoordinator => {
            let mut r = FindCoordinatorRequest::default();
            // One key up to v3, a batch of them from v4.
            if v <= 3 {
                r = r.with_key(s("group"));
            } else {
                r = r.with_coordinator_keys(many(n, |i| s(&format!("group-{i}"))));
            }
            if since(1) {
                r = r.with_key_type(1);
            }
            frame(api, v, &r)
        }
        ApiKey::JoinGroup => {
            let mut r = JoinGroupRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_session_timeout_ms(10_000)
                .with_member_id(s(""))
                .with_protocol_type(s("consumer"))
                .with_protocols(many(n, |i| {
                    JoinGroupRequestProtocol::default()
                        .with_name(s(&format!("range-{i}")))
                        .with_metadata(Bytes::from(vec![i as u8; 17]))
                }));
            if since(1) {
                r = r.with_rebalance_timeout_ms(30_000);
            }
            if since(5) {
                r = r.with_group_instance_id(opt("instance"));
            }
            frame(api, v, &r)
        }
        ApiKey::Heartbeat => {
            let mut r = HeartbeatRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_generation_id(3)
                .with_member_id(s("member-1"));
            if since(3) {
                r = r.with_group_instance_id(opt("instance"));
            }
            frame(api, v, &r)
        }
        ApiKey::LeaveGroup => {
            let r = LeaveGroupRequest::default().with_group_id(GroupId(s("group")));
            // One member up to v2, a batch of them from v3.
            let r = if v <= 2 {
                r.with_member_id(s("member-1"))
            } else {
                r.with_members(many(n, |i| {
                    let m = MemberIdentity::default()
                        .with_member_id(s(&format!("member-{i}")))
                        .with_group_instance_id(opt("instance"));
                    if since(5) {
                        m.with_reason(opt("leaving"))
                    } else {
                        m
                    }
                }))
            };
            frame(api, v, &r)
        }
        ApiKey::SyncGroup => {
            let mut r = SyncGroupRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_generation_id(3)
                .with_member_id(s("member-1"))
                .with_assignments(many(n, |i| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(&format!("member-{i}")))
                        .with_assignment(Bytes::from(vec![i as u8; 23]))
                }));
            if since(3) {
                r = r.with_group_instance_id(opt("instance"));
            }
            frame(api, v, &r)
        }
        ApiKey::ApiVersions => {
            let mut r = ApiVersionsRequest::default();
            if since(3) {
                r = r
                    .with_client_software_name(s("weir-test"))
                    .with_client_software_version(s("0.1"));
                for t in 0..n {
                    r = r.with_unknown_tagged_field(t as i32, Bytes::from(vec![1; t]));
                }
            }
            frame(api, v, &r)
        }
        ApiKey::CreateTopics => frame(
            api,
            v,
            &CreateTopicsRequest::default()
                .with_topics(many(n, |i| {
                    CreatableTopic::default()
                        .with_name(topic(i))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                        .with_assignments(many(n, |p| {
                            CreatableReplicaAssignment::default()
                                .with_partition_index(p as i32)
                                .with_broker_ids(many(n, |b| BrokerId(b as i32)))
                        }))
                        .with_configs(many(n, |c| {
                            CreatableTopicConfig::default()
                                .with_name(s(&format!("config.{c}")))
                                .with_value((c % 2 == 0).then(|| s("1")))
                        }))
                }))
                .with_timeout_ms(5000)
                .with_validate_only(n % 2 == 1),
        ),
        ApiKey::DeleteTopics => {
            let r = DeleteTopicsRequest::default().with_timeout_ms(5000);
            // Names up to v5, names or ids from v6.
            let r = if v <= 5 {
                r.with_topic_names(many(n, topic))
            } else {
                r.with_topics(many(n, |i| {
                    DeleteTopicState::default().with_name((i % 2 == 0).then(|| topic(i)))
                }))
            };
            frame(api, v, &r)
        }
        ApiKey::DescribeConfigs => frame(
            api,
            v,
            &DescribeConfigsRequest::default()
                .with_resources(many(n, |i| {
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s(&format!("topic-{i}")))
                        .with_configuration_keys(
                            (i % 2 == 0).then(|| many(n, |k| s(&format!("key.{k}")))),
                        )
                }))
                .with_include_synonyms(true),
        ),
        ApiKey::InitProducerId => frame(
            api,
            v,
            &InitProducerIdRequest::default()
                .with_transactional_id(opt("txn").map(TransactionalId))
                .with_transaction_timeout_ms(60_000),
        ),
        // APIs served without a sample of their own: written from their layouts.
        _ => synthesized(api, v, n),
    }
}

/// Every version the guard knows of every served API, with samples of 0, 1 and 3 elements per
/// array.
fn samples() -> impl Iterator<Item = (ApiKey, i16, usize, Bytes)> {
    SUPPORTED.iter().flat_map(|&(api, _, _)| {
        let (min, max) = versions(api).unwrap();
        (min..=max).flat_map(move |v| [0, 1, 3].map(move |n| (api, v, n, sample(api, v, n))))
    })
}

fn served(api: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(a, min, max)| a == api && (min..=max).contains(&version))
}

fn check(api: ApiKey, version: i16, frame: &[u8]) -> Result<(), GuardError> {
    check_request(api, version, api.request_header_version(version), frame)
}

/// The guard knows every version the crate decodes of the generated APIs (so every version
/// served), and no other: just outside each range the crate's decoder refuses the version too.
#[test]
fn the_guard_knows_every_version_the_crate_decodes() {
    for &(api, min, max) in SUPPORTED {
        // Versions below the crate's are read by hand (crate::legacy), not through the guard.
        let min = (min..=max)
            .find(|v| !crate::legacy::covers(api, *v))
            .unwrap();
        let (lo, hi) = versions(api).unwrap();
        assert!(
            lo <= min && max <= hi,
            "{api:?} v{min}–{max} served, v{lo}–{hi} known"
        );
    }
    for &api in APIS {
        let (min, max) = versions(api).unwrap();
        for v in [min - 1, max + 1] {
            assert!(
                matches!(
                    check_request(api, v, 1, &[0; 64]),
                    Err(GuardError::Unsupported { .. })
                ),
                "{api:?} v{v}"
            );
            let refused = RequestKind::decode(api, &mut Bytes::from_static(&[0; 64]), v);
            assert!(
                refused.is_err_and(|e| format!("{e:#}").contains("version not supported")),
                "{api:?} v{v}"
            );
        }
    }
    assert_eq!(versions(ApiKey::AlterReplicaLogDirs), None);
}

#[test]
fn every_request_the_encoder_writes_passes_and_decodes() {
    let mut count = 0;
    for (api, v, n, frame) in samples() {
        let header_version = api.request_header_version(v);
        assert_eq!(
            walk(api, v, header_version, &frame),
            Ok(frame.len()),
            "{api:?} v{v} n={n}"
        );
        let decoded = guarded_decode(api, v, &frame);
        assert!(
            matches!(decoded, Ok((_, _, 0))),
            "{api:?} v{v} n={n}: {decoded:?}"
        );
        if served(api, v) {
            let decoded = decode_request(frame.clone());
            assert!(
                matches!(decoded, Ok(Decoded::Request { api: a, version, .. }) if a == api && version == v),
                "{api:?} v{v} n={n}: {decoded:?}"
            );
        }
        count += 1;
    }
    assert_eq!(count, 3 * SAMPLED_VERSIONS);
}

#[test]
fn every_strict_prefix_of_a_request_is_refused() {
    for (api, v, n, frame) in samples() {
        for len in 0..frame.len() {
            assert!(
                check(api, v, &frame[..len]).is_err(),
                "{api:?} v{v} n={n}: a prefix of {len} of {} bytes passed",
                frame.len()
            );
        }
    }
}

/// The bug this module exists for: a Metadata v0 request of 14 bytes declaring 2³¹−1 topics.
/// Without the guard the crate's decoder asks for ~150 GB and the process aborts.
#[test]
fn metadata_v0_declaring_two_billion_topics_is_refused() {
    let attack = [0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff];
    assert_eq!(
        check(ApiKey::Metadata, 0, &attack),
        Err(GuardError::TooManyElements {
            at: 10,
            count: i32::MAX as u64,
            min: 2,
            remaining: 0
        })
    );
    assert!(matches!(
        decode_request(Bytes::copy_from_slice(&attack)),
        Err(DecodeError::Guard(GuardError::TooManyElements { .. }))
    ));
}

/// Overwrites every position of every sample with a huge classic count / length, then hands
/// it to the real decode path: the guard must refuse each one that would make the crate's
/// decoder reserve memory for it (or this test process aborts). Every sample with an array
/// must have at least one position refused as too many elements.
#[test]
fn huge_counts_at_every_position_are_refused_before_decoding() {
    for (api, v, n, frame) in samples() {
        assert_huge_counts_refused(api, v, &frame, &format!("n={n}"));
    }
}

/// The same over every (API, version) the guard knows, written from its layout with 2
/// elements in every array.
#[test]
fn huge_counts_in_every_layout_are_refused_before_decoding() {
    for (api, v) in every_version() {
        assert_huge_counts_refused(api, v, &synthesized(api, v, 2), "from its layout");
    }
}

fn assert_huge_counts_refused(api: ApiKey, v: i16, frame: &[u8], what: &str) {
    const HUGE: [&[u8]; 4] = [
        &[0x7f, 0xff, 0xff, 0xff],       // i32::MAX: an array count or bytes length
        &[0x00, 0xff, 0xff, 0xff],       // 16 Mi elements: more than any frame holds
        &[0x7f, 0xff],                   // i16::MAX: a string length
        &[0xff, 0xff, 0xff, 0xff, 0x0f], // u32::MAX as a varint: a compact count or length
    ];
    let mut refused_counts = 0;
    for huge in HUGE {
        for at in 0..frame.len().saturating_sub(huge.len() - 1) {
            let mut bad = frame.to_vec();
            bad[at..at + huge.len()].copy_from_slice(huge);
            // Whatever the guard lets through is decoded here: an unchecked huge count would
            // abort this process.
            let decoded = guarded_decode(api, v, &Bytes::from(bad));
            if let Err(DecodeError::Guard(GuardError::TooManyElements { at: a, .. })) = decoded {
                refused_counts += usize::from(a == at);
            }
        }
    }
    if has_array(message(api).unwrap().body, v) {
        assert!(refused_counts > 0, "{api:?} v{v} {what}");
    }
}

/// Whether every request of this layout holds an array count (its own, or in a struct it
/// always holds).
fn has_array(s: &Struct, v: i16) -> bool {
    s.fields
        .iter()
        .filter(|f| f.present(v))
        .any(|f| match f.ty {
            Ty::Array(..) => true,
            Ty::Struct(s) => has_array(s, v),
            _ => false,
        })
}

/// `check(frame, expected)` for hand-written frames.
fn refuses(api: ApiKey, version: i16, body: &[u8], expected: GuardError) {
    let header_version = api.request_header_version(version);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(api as i16).to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0xff, 0xff]); // correlation id, null client id
    if header_version >= 2 {
        frame.push(0); // no tagged fields
    }
    frame.extend_from_slice(body);
    assert_eq!(
        check_request(api, version, header_version, &frame),
        Err(expected),
        "{api:?} v{version}"
    );
    assert!(decode_request(Bytes::from(frame)).is_err());
}

#[test]
fn hand_written_hostile_requests_name_what_is_wrong() {
    use GuardError::*;
    const MAX: [u8; 4] = [0x7f, 0xff, 0xff, 0xff];
    let huge = |at, min, remaining| TooManyElements {
        at,
        count: i32::MAX as u64,
        min,
        remaining,
    };
    // Produce v3: null transactional id, acks, timeout, then 2³¹−1 topics of ≥ 6 bytes.
    let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100];
    body.extend_from_slice(&MAX);
    refuses(ApiKey::Produce, 3, &body, huge(18, 6, 0));
    // Produce v3, one topic "t" with 2³¹−1 partitions of ≥ 8 bytes.
    let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100, 0, 0, 0, 1, 0, 1, b't'];
    body.extend_from_slice(&MAX);
    refuses(ApiKey::Produce, 3, &body, huge(25, 8, 0));
    // Records longer than the frame.
    let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100, 0, 0, 0, 1, 0, 1, b't'];
    body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 2, 3]);
    refuses(
        ApiKey::Produce,
        3,
        &body,
        TooLong {
            at: 33,
            len: 0x1000_0000,
            remaining: 3,
        },
    );
    // Fetch v4: replica, wait, min, max, isolation, then 2³¹−1 topics.
    let mut body = vec![
        0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0x10, 0, 0, 0,
    ];
    body.extend_from_slice(&MAX);
    refuses(ApiKey::Fetch, 4, &body, huge(27, 6, 0));
    // CreateTopics v2: one topic "t", no assignments… the configs count is huge.
    let mut body = vec![0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 1, 0, 0, 0, 0];
    body.extend_from_slice(&MAX);
    refuses(ApiKey::CreateTopics, 2, &body, huge(27, 4, 0));
    // DeleteTopics v1: a topic name of −2 bytes.
    refuses(
        ApiKey::DeleteTopics,
        1,
        &[0, 0, 0, 1, 0xff, 0xfe, 0, 0, 0, 0],
        NegativeLength { at: 14, len: -2 },
    );
    // DeleteTopics v1: a null topic name.
    refuses(
        ApiKey::DeleteTopics,
        1,
        &[0, 0, 0, 1, 0xff, 0xff, 0, 0, 0, 0],
        NotNullable { at: 14 },
    );
    // ApiVersions v3: a compact client software name of u32::MAX − 1 bytes.
    refuses(
        ApiKey::ApiVersions,
        3,
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        TooLong {
            at: 11,
            len: u64::from(u32::MAX - 1),
            remaining: 0,
        },
    );
    // ApiVersions v3: names "a" and "b", then u32::MAX tagged fields.
    refuses(
        ApiKey::ApiVersions,
        3,
        &[2, b'a', 2, b'b', 0xff, 0xff, 0xff, 0xff, 0x0f],
        TooManyTaggedFields {
            at: 15,
            count: u64::from(u32::MAX),
            remaining: 0,
        },
    );
    // Truncated: a Heartbeat v0 without its member id.
    refuses(
        ApiKey::Heartbeat,
        0,
        &[0, 1, b'g', 0, 0, 0, 1],
        Truncated {
            at: 17,
            need: 2,
            remaining: 0,
        },
    );
}

/// `guard/layouts.rs` is what the generator writes from the kafka-protocol crate in use, so a
/// crate upgrade or a hand edit cannot leave the guard reading requests differently from the
/// decoder. Python 3 is a requirement of the test suite, not an optional extra.
#[test]
fn the_generated_layouts_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new("python3")
        .arg(root.join("tools/kafka-guard-gen/gen.py"))
        .arg("--check")
        .current_dir(&root)
        .output()
        .expect("python3 runs tools/kafka-guard-gen/gen.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A request of every generated (API, version) with every field at its default, as the crate's
/// encoder writes it, passes; the guard walks exactly its bytes, and so does the decoder.
#[test]
fn every_default_request_passes_and_is_walked_exactly() {
    let mut count = 0;
    for (api, v) in every_version() {
        let request = default_request(api);
        let frame = frame_with(api, v, |b| request.encode(b, v).unwrap());
        let header_version = api.request_header_version(v);
        assert_eq!(
            walk(api, v, header_version, &frame),
            Ok(frame.len()),
            "{api:?} v{v}"
        );
        let decoded = guarded_decode(api, v, &frame);
        assert!(
            matches!(decoded, Ok((_, _, 0))),
            "{api:?} v{v}: {decoded:?}"
        );
        count += 1;
    }
    assert_eq!(count, GENERATED_VERSIONS);
}

/// Writes a request body from its layout, independently of the crate's encoder: with `n` > 0
/// every array holds `n` elements, every string is "ab", every bytes field [1, 2], every
/// fixed-size field 0x01 bytes, and every tagged-field section holds each known tag valid in
/// the version and one unknown tag; with `n` = 0 every nullable field is null, every array
/// empty, every string "" and every tagged-field section empty.
fn synthesize(out: &mut BytesMut, s: &Struct, v: i16, n: usize) {
    for field in s.fields.iter().filter(|f| f.present(v)) {
        synthesize_value(out, field, v, n);
    }
    if !s.has_tagged(v) {
        return;
    }
    if n == 0 {
        put_uvarint(out, 0);
        return;
    }
    let known: Vec<_> = s.tags.iter().filter(|t| t.field.present(v)).collect();
    put_uvarint(out, known.len() as u32 + 1);
    // The encoder writes known tags first, in order, then unknown ones.
    for t in known {
        let mut value = BytesMut::new();
        synthesize_value(&mut value, &t.field, v, n);
        put_uvarint(out, t.tag);
        put_uvarint(out, value.len() as u32);
        out.extend_from_slice(&value);
    }
    assert!(s.tags.iter().all(|t| t.tag != UNKNOWN_TAG));
    put_uvarint(out, UNKNOWN_TAG);
    put_uvarint(out, 2);
    out.extend_from_slice(&[0xab, 0xcd]);
}

const UNKNOWN_TAG: u32 = 99;

fn synthesize_value(out: &mut BytesMut, field: &Field, v: i16, n: usize) {
    let null = field.nullable && n == 0;
    match field.ty {
        Ty::Fixed(size) => out.extend(std::iter::repeat_n(1u8, size)),
        Ty::Str(enc) if null => put_len(out, enc, 2, None),
        Ty::Str(enc) => put_str(out, enc, if n == 0 { "" } else { "ab" }),
        Ty::Bytes(enc) if null => put_len(out, enc, 4, None),
        Ty::Bytes(enc) => {
            put_len(out, enc, 4, Some(2));
            out.extend_from_slice(&[1, 2]);
        }
        Ty::Array(enc, _) if null => put_len(out, enc, 4, None),
        Ty::Array(enc, elem) => {
            put_len(out, enc, 4, Some(n));
            for _ in 0..n {
                match elem {
                    Elem::Fixed(size) => out.extend(std::iter::repeat_n(1u8, size)),
                    Elem::Str(enc) => put_str(out, enc, "ab"),
                    Elem::Struct(s) => synthesize(out, s, v, n),
                }
            }
        }
        Ty::Struct(s) => synthesize(out, s, v, n),
        // The encoder writes -1 for an absent struct.
        Ty::OptionStruct(_) if n == 0 => out.extend_from_slice(&[0xff]),
        Ty::OptionStruct(s) => {
            out.extend_from_slice(&[1]);
            synthesize(out, s, v, n);
        }
    }
}

fn put_str(out: &mut BytesMut, enc: Enc, text: &str) {
    put_len(out, enc, 2, Some(text.len()));
    out.extend_from_slice(text.as_bytes());
}

/// A length or count (null for `None`); classic ones are `width` bytes wide.
fn put_len(out: &mut BytesMut, enc: Enc, width: usize, len: Option<usize>) {
    match enc {
        Enc::Compact => put_uvarint(out, len.map_or(0, |len| len as u32 + 1)),
        Enc::Classic => {
            let len = len.map_or(-1, |len| len as i64);
            out.extend_from_slice(&len.to_be_bytes()[8 - width..]);
        }
    }
}

fn put_uvarint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.extend_from_slice(&[value as u8 | 0x80]);
        value >>= 7;
    }
    out.extend_from_slice(&[value as u8]);
}

/// A request of `api` written from its layout (see [`synthesize`]).
fn synthesized(api: ApiKey, v: i16, n: usize) -> Bytes {
    let body = message(api).unwrap().body;
    frame_with(api, v, |b| synthesize(b, body, v, n))
}

/// Every (API, version) the guard knows, written from its layout with 2 elements in every
/// array (and again with nulls and empty arrays): the guard walks it to its last byte, the
/// crate's decoder reads it to its last byte too, and its encoder writes the decoded request
/// back byte for byte. So each layout is the decoder's, checked without the generator.
#[test]
fn requests_written_from_the_layouts_decode_and_encode_back_exactly() {
    let mut count = 0;
    for (api, v) in every_version() {
        for n in [0, 2] {
            let frame = synthesized(api, v, n);
            let header_version = api.request_header_version(v);
            assert_eq!(
                walk(api, v, header_version, &frame),
                Ok(frame.len()),
                "{api:?} v{v} n={n}"
            );
            let decoded = guarded_decode(api, v, &frame);
            let Ok((header, request, 0)) = decoded else {
                panic!("{api:?} v{v} n={n}: {decoded:?}");
            };
            let mut again = BytesMut::new();
            header.encode(&mut again, header_version).unwrap();
            request
                .encode(&mut again, v)
                .unwrap_or_else(|e| panic!("{api:?} v{v} n={n}: {e:#}"));
            assert_eq!(&again[..], &frame[..], "{api:?} v{v} n={n}");
            count += 1;
        }
    }
    assert_eq!(count, 2 * GENERATED_VERSIONS);
}

/// The crate's decoders alone, without the guard.
fn decode_unguarded(api: ApiKey, version: i16, frame: &[u8]) -> Result<RequestKind, String> {
    let mut buf = Bytes::copy_from_slice(frame);
    RequestHeader::decode(&mut buf, api.request_header_version(version))
        .and_then(|_| RequestKind::decode(api, &mut buf, version))
        .map_err(|e| format!("{e:#}"))
}

/// The decoder reads a known tagged field's value straight from the buffer and ignores the
/// size the field declares; the guard skipping by that size would then lose step with it. So
/// a known tagged field must declare exactly the size its value takes.
#[test]
fn a_known_tagged_field_must_declare_exactly_its_size() {
    // Fetch v12 with a cluster id: the request's tagged fields close the frame (one field:
    // tag 0, 4 bytes, the compact string "xyz").
    let api = ApiKey::Fetch;
    let request = frame(
        api,
        12,
        &FetchRequest::default().with_cluster_id(Some(s("xyz"))),
    );
    let size_at = request.len() - 5;
    assert_eq!(&request[size_at - 2..], &[1, 0, 4, 4, b'x', b'y', b'z']);
    assert_eq!(check(api, 12, &request), Ok(()));
    for (size, spare) in [(5, &[0][..]), (3, &[])] {
        let mut bad = request.to_vec();
        bad[size_at] = size;
        bad.extend_from_slice(spare);
        assert_eq!(
            check(api, 12, &bad),
            Err(GuardError::TaggedFieldSize {
                at: size_at,
                tag: 0,
                size: u64::from(size),
                walked: 4
            })
        );
    }

    // Fetch v18, one topic of one partition with a high watermark (the partition's tag 1, 8
    // bytes), then 4 more bytes (the topic's tagged fields and the rest of the request).
    // Declaring 0 bytes is the bypass: skipping nothing, the guard would take the watermark's
    // 8 bytes for what follows, while the decoder reads them as the watermark.
    let partition = FetchPartition::default().with_high_watermark(0x7f7f_7f7f);
    let topic = FetchTopic::default().with_partitions(vec![partition]);
    let request = frame(api, 18, &FetchRequest::default().with_topics(vec![topic]));
    let value = [0, 0, 0, 0, 0x7f, 0x7f, 0x7f, 0x7f];
    let size_at = request.len() - value.len() - 5;
    assert_eq!(&request[size_at - 2..size_at + 1], &[1, 1, 8]);
    assert_eq!(
        &request[size_at + 1..],
        &[&value[..], &[0, 1, 1, 0]].concat()[..]
    );
    assert_eq!(check(api, 18, &request), Ok(()));
    for size in [0, 7, 9] {
        let mut bad = request.to_vec();
        bad[size_at] = size;
        assert_eq!(
            check(api, 18, &bad),
            Err(GuardError::TaggedFieldSize {
                at: size_at,
                tag: 1,
                size: u64::from(size),
                walked: 8
            }),
            "declared {size}"
        );
        // The decoder takes it all the same: only the guard can tell.
        assert!(decode_unguarded(api, 18, &bad).is_ok(), "declared {size}");
    }
}

/// A known tag in a version that does not have it is refused, by the decoder and the guard.
#[test]
fn a_known_tag_outside_its_versions_is_refused() {
    // Fetch v14 (replica_state, tag 1, comes in v15), its tagged fields replaced by tag 1 of
    // one byte.
    let api = ApiKey::Fetch;
    let request = frame(api, 14, &FetchRequest::default());
    let at = request.len() - 1;
    assert_eq!(request[at], 0);
    let mut bad = request[..at].to_vec();
    bad.extend_from_slice(&[1, 1, 1, 0]);
    assert_eq!(
        check(api, 14, &bad),
        Err(GuardError::TagNotInVersion {
            at: at + 1,
            tag: 1,
            version: 14
        })
    );
    let refused = decode_unguarded(api, 14, &bad);
    assert!(refused.is_err_and(|e| format!("{e:#}").contains("Tag 1 is not valid for version 14")));
}

/// Kafka's schema makes Metadata's topic list nullable from v1 only, but the crate decodes a
/// null list in v0 too (as `None`), and the guard follows the decoder.
#[test]
fn nullability_is_the_decoders() {
    let frame = [0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(check(ApiKey::Metadata, 0, &frame), Ok(()));
    let decoded = decode_request(Bytes::copy_from_slice(&frame));
    assert!(
        matches!(
            &decoded,
            Ok(Decoded::Request { request: RequestKind::Metadata(m), .. }) if m.topics.is_none()
        ),
        "{decoded:?}"
    );
}

#[test]
fn header_v2_tagged_fields_are_bounded_and_the_header_must_match() {
    // ApiVersions v3 (header v2): null client id, then u32::MAX tagged fields.
    let frame = [
        0, 18, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f,
    ];
    assert_eq!(
        check(ApiKey::ApiVersions, 3, &frame),
        Err(GuardError::TooManyTaggedFields {
            at: 10,
            count: u64::from(u32::MAX),
            remaining: 0
        })
    );
    // A tagged field whose size runs past the frame.
    let frame = [0, 18, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 1, 0, 0x7f, 1, 2];
    assert_eq!(
        check(ApiKey::ApiVersions, 3, &frame),
        Err(GuardError::TooLong {
            at: 12,
            len: 0x7f,
            remaining: 2
        })
    );
    // A tag above i32::MAX (found by the fuzz target: the crate decodes it as a negative i32
    // and its encoder then counts the field without writing it).
    let frame = [
        0, 18, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 1, 0x80, 0x80, 0x80, 0x80, 8, 0, 2, b'a',
    ];
    assert_eq!(
        check(ApiKey::ApiVersions, 3, &frame),
        Err(GuardError::TagOutOfRange {
            at: 11,
            tag: 1 << 31
        })
    );
    // The largest tag passes, and survives decoding and encoding again.
    let frame = [
        0, 18, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 1, 0xff, 0xff, 0xff, 0xff, 7, 0, 2, b'a', 2, b'b', 0,
    ];
    assert_eq!(check(ApiKey::ApiVersions, 3, &frame), Ok(()));
    let Ok(Decoded::Request {
        header, request, ..
    }) = decode_request(Bytes::copy_from_slice(&frame))
    else {
        panic!("the largest tag decodes")
    };
    let mut again = BytesMut::new();
    header.encode(&mut again, 2).unwrap();
    request.encode(&mut again, 3).unwrap();
    assert_eq!(&again[..], &frame[..]);
    // The header must name the API and version being checked, in header v1 or v2.
    let frame = sample(ApiKey::Metadata, 1, 1);
    assert_eq!(
        check(ApiKey::Metadata, 2, &frame),
        Err(GuardError::HeaderMismatch { key: 3, version: 1 })
    );
    assert_eq!(
        check_request(ApiKey::Metadata, 1, 0, &frame),
        Err(GuardError::HeaderVersion(0))
    );
}

/// The fuzz target's seeds (the repository's `fuzz/corpus/kafka_request/seed-*`): one request
/// per served version, as the encoder writes it, each decoding. `WEIR_WRITE_FUZZ_SEEDS=1 cargo
/// test -p weir-kafka fuzz_seeds` writes them anew.
#[test]
fn fuzz_seeds_are_one_served_request_per_version() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/kafka_request");
    if std::env::var_os("WEIR_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (api, v, _, frame) in samples().filter(|&(api, v, n, _)| n == 1 && served(api, v)) {
            std::fs::write(dir.join(format!("seed-{api:?}-v{v}")), &frame).unwrap();
        }
    }
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            continue;
        }
        let frame = Bytes::from(std::fs::read(&path).unwrap());
        assert!(
            matches!(decode_request(frame), Ok(Decoded::Request { .. })),
            "{}",
            path.display()
        );
        seeds += 1;
    }
    assert_eq!(seeds, 73, "one seed per served version");
}

/// Decoded, an element takes tens of bytes however few it takes on the wire, so the elements
/// of one request are capped all together: a Produce of 200,001 empty partitions (1.6 MB on
/// the wire, hundreds of MB decoded) is refused; one of 200,000 passes.
#[test]
fn the_elements_of_one_request_are_capped_together() {
    use super::MAX_ELEMENTS;
    let produce = |n: u64| {
        let topics = vec![
            TopicProduceData::default()
                .with_name(topic(0))
                .with_partition_data(many(n as usize - 1, |p| {
                    PartitionProduceData::default().with_index(p as i32)
                })),
        ];
        frame(
            ApiKey::Produce,
            8,
            &ProduceRequest::default().with_topic_data(topics),
        )
    };
    // One element is the topic itself.
    assert_eq!(check(ApiKey::Produce, 8, &produce(MAX_ELEMENTS)), Ok(()));
    assert!(matches!(
        check(ApiKey::Produce, 8, &produce(MAX_ELEMENTS + 1)),
        Err(GuardError::TooManyInRequest { .. })
    ));
}

//! The Kafka door sans socket: requests encoded by the `kafka-protocol` crate, answered by
//! [`crate::handle`], decoded back.

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FindCoordinatorRequest, InitProducerIdRequest, MetadataRequest, ProduceRequest, TransactionalId,
};

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsResponse, DeleteTopicsResponse,
    DescribeConfigsResponse, FindCoordinatorResponse, InitProducerIdResponse, ListOffsetsResponse,
    MetadataResponse, OffsetCommitResponse, OffsetFetchResponse, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::net::{TcpListener, TcpStream};
use weir_broker::Broker;
use weir_broker::broker::OffsetSpec;
use weir_net::Shutdown;

use crate::api::describe_configs::TOPIC_RESOURCE;
use crate::api::fetch::{Answer as FetchAnswer, encode as encode_fetch};
use crate::decode::frame_client_id;
use crate::dispatch::{self, Step};
use crate::{Advertised, Kafka, Reply, code, handle, handle_throttled, serve};

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A request decoded and taken as far as it goes before its syncs.
async fn handle_step(kafka: &Kafka, frame: Bytes) -> Step {
    dispatch::step(
        kafka,
        dispatch::take(frame, dispatch::Offered::of(&kafka.broker)).expect("decodes"),
    )
    .await
}

fn request(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
    let mut b = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .encode(&mut b, api.request_header_version(version))
        .unwrap();
    body.encode(&mut b, version).unwrap();
    b.freeze()
}

fn response<T: Decodable>(api: ApiKey, version: i16, reply: Reply) -> T {
    let mut b = match reply {
        Reply::Response(b) => b,
        Reply::Parts(pieces) => Bytes::from(pieces.concat()),
        other => panic!("expected a response, got {other:?}"),
    };
    let len = bytes::Buf::get_i32(&mut b);
    assert_eq!(len as usize, b.len(), "size prefix");
    let h = ResponseHeader::decode(&mut b, api.response_header_version(version)).unwrap();
    assert_eq!(h.correlation_id, 42);
    T::decode(&mut b, version).unwrap()
}

async fn broker(dir: &std::path::Path) -> (Broker, Kafka) {
    let broker = Broker::open(weir_broker::BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    broker.create_topic("a", None).await.unwrap();
    broker.create_topic("b", None).await.unwrap();
    let kafka = Kafka::new(
        broker.clone(),
        Advertised {
            host: "127.0.0.1".into(),
            port: 9092,
        },
    );
    (broker, kafka)
}

#[test]
fn a_refused_request_is_named_by_its_client_id_read_by_hand() {
    let mut head = vec![0, 99, 0, 42, 0, 0, 0, 7, 0, 5];
    head.extend_from_slice(b"kcat!");
    assert_eq!(frame_client_id(&head), "kcat!");
    assert_eq!(
        frame_client_id(&head[..12]),
        "kc",
        "cut short: what is there"
    );
    assert_eq!(frame_client_id(&head[..9]), "");
    assert_eq!(
        frame_client_id(&[0, 99, 0, 42, 0, 0, 0, 7, 0xff, 0xff]),
        "",
        "null"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_a_time_after_every_record_answers_minus_one() {
    use kafka_protocol::messages::ListOffsetsRequest;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let mut b = weir_batch::BatchBuilder::new(1_000);
    b.push(weir_batch::RecordSpec::value(b"x"));
    broker
        .produce("a", Some(0), None, Bytes::from(b.build()))
        .await
        .unwrap();
    for (ts, want) in [(500, 0), (1_000, 0), (1_001, -1), (-1, 1), (-2, 0)] {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name("a"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(ts),
                    ]),
            ]);
        let r: ListOffsetsResponse = response(
            ApiKey::ListOffsets,
            5,
            handle(&kafka, request(ApiKey::ListOffsets, 5, &req)).await,
        );
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.offset),
            (code::NONE, want),
            "timestamp {ts}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_outside_the_log_are_committed_as_given_as_kafka_does() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetFetchRequest};
    let dir = tempfile::tempdir().unwrap();
    let (_broker, kafka) = broker(dir.path()).await;
    // Topic "a" is empty: 1,000 is past its end (a seek, or a position from before
    // retention); -2 is what an admin tool's reset to earliest commits (KafkaJS's, for one),
    // and reads back.
    // Metadata is kept with the offset, up to Kafka's 4,096 bytes.
    let long = "m".repeat(4096);
    for (offset, metadata, want) in [
        (1000, "at 1000", code::NONE),
        (0, long.as_str(), code::NONE),
        (5, &*format!("{long}!"), code::OFFSET_METADATA_TOO_LARGE),
        (-2, "reset", code::NONE),
    ] {
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic_name("a"))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset)
                            .with_committed_metadata(Some(StrBytes::from_string(
                                metadata.to_string(),
                            ))),
                    ]),
            ]);
        let r: OffsetCommitResponse = response(
            ApiKey::OffsetCommit,
            7,
            handle(&kafka, request(ApiKey::OffsetCommit, 7, &req)).await,
        );
        assert_eq!(
            r.topics[0].partitions[0].error_code, want,
            "offset {offset}"
        );
        if want != code::NONE {
            continue;
        }
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name("a"))
                    .with_partition_indexes(vec![0]),
            ]));
        let r: OffsetFetchResponse = response(
            ApiKey::OffsetFetch,
            5,
            handle(&kafka, request(ApiKey::OffsetFetch, 5, &req)).await,
        );
        assert_eq!(r.topics[0].partitions[0].committed_offset, offset);
        assert_eq!(
            r.topics[0].partitions[0].metadata.as_deref(),
            Some(metadata)
        );
    }
    // Kept across a restart of the broker (the commit log, then its snapshot).
    drop(kafka);
    _broker.close().await.unwrap();
    let broker = Broker::open(weir_broker::BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(broker.committed_as_given("g", "a", 0), Some(-2));
    assert_eq!(
        broker.committed("g", "a", 0),
        None,
        "no position to resume from"
    );
    assert_eq!(broker.committed_metadata("g", "a", 0), "reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_all_topics_for_null_and_for_a_v0_empty_list() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, adv) = broker(dir.path()).await;
    for (version, topics) in [(0, Some(vec![])), (8, None)] {
        let req = MetadataRequest::default().with_topics(topics);
        let r: MetadataResponse = response(
            ApiKey::Metadata,
            version,
            handle(&adv, request(ApiKey::Metadata, version, &req)).await,
        );
        assert_eq!(r.topics.len(), 2, "version {version}");
        assert_eq!(r.brokers[0].port, 9092);
    }
    // v1+: an empty list asks for no topic; an unknown one gets its error.
    let req = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name("nope"))),
    ]));
    let r: MetadataResponse = response(
        ApiKey::Metadata,
        8,
        handle(&adv, request(ApiKey::Metadata, 8, &req)).await,
    );
    assert_eq!(r.topics[0].error_code, code::UNKNOWN_TOPIC_OR_PARTITION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_acks_zero_is_silent_and_bad_batches_get_corrupt_message() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, adv) = broker(dir.path()).await;
    let mut good = weir_batch::BatchBuilder::new(0);
    good.push(weir_batch::RecordSpec::value(b"v"));
    let good = Bytes::from(good.build());
    let mut bad = good.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    let produce = |records: Bytes, acks: i16| {
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic_name("a"))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records)),
                    ]),
            ])
    };
    let silent = handle(&adv, request(ApiKey::Produce, 8, &produce(good.clone(), 0))).await;
    assert!(matches!(silent, Reply::Silent));
    let r: ProduceResponse = response(
        ApiKey::Produce,
        8,
        handle(&adv, request(ApiKey::Produce, 8, &produce(good, -1))).await,
    );
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(
        (p.error_code, p.base_offset),
        (code::NONE, 1),
        "after the acks=0 record at offset 0"
    );
    let r: ProduceResponse = response(
        ApiKey::Produce,
        8,
        handle(
            &adv,
            request(ApiKey::Produce, 8, &produce(Bytes::from(bad), -1)),
        )
        .await,
    );
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        code::CORRUPT_MESSAGE
    );
    // A batch marked gzip whose records are not gzip, with a CRC that holds: refused
    // too (INVALID_RECORD), so that no reader that decompresses (HTTP, WebSocket, native) meets it later.
    let mut not_gzip = weir_batch::BatchBuilder::new(0);
    not_gzip.push(weir_batch::RecordSpec::value(b"plain"));
    let mut not_gzip = not_gzip.build();
    not_gzip[22] |= 1;
    weir_batch::header::reseal(&mut not_gzip);
    assert!(weir_batch::validate(&not_gzip).is_ok(), "the CRC holds");
    let r: ProduceResponse = response(
        ApiKey::Produce,
        8,
        handle(
            &adv,
            request(ApiKey::Produce, 8, &produce(Bytes::from(not_gzip), -1)),
        )
        .await,
    );
    let p = &r.responses[0].partition_responses[0];
    // Not retriable, unlike a damaged CRC: the producer built it wrong.
    assert_eq!(p.error_code, code::INVALID_RECORD);
    assert!(
        p.error_message.as_deref().unwrap_or("").contains("Gzip"),
        "{:?}",
        p.error_message
    );
    assert_eq!(
        broker.topic_info("a").unwrap().partitions[0].high_watermark,
        2,
        "nothing bad stored"
    );
}

fn produce_to(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ])
}

async fn produce_one(kafka: &Kafka, topic: &str, records: Bytes) -> (i16, i64) {
    let r: ProduceResponse = response(
        ApiKey::Produce,
        8,
        handle(
            kafka,
            request(ApiKey::Produce, 8, &produce_to(topic, records)),
        )
        .await,
    );
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn idempotent(pid: i64, seq: i32, values: &[&[u8]]) -> Bytes {
    let mut b = weir_batch::BatchBuilder::new(0).producer(pid, 0, seq);
    for v in values {
        b.push(weir_batch::RecordSpec::value(v));
    }
    Bytes::from(b.build())
}

/// `serve` on 127.0.0.1, on a port of its own, until `stop`.
struct Listening {
    addr: std::net::SocketAddr,
    shutdown: Shutdown,
}

impl Listening {
    async fn start(broker: Broker) -> Listening {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        {
            // The group clock serve registers with runs in the broker's maintenance.
            let broker = broker.clone();
            let stop = shutdown.begun();
            shutdown.spawn(async move { broker.run_maintenance(stop).await });
        }
        let listener = crate::Listener {
            listener,
            advertised: Advertised {
                host: "127.0.0.1".into(),
                port: i32::from(addr.port()),
            },
            tls: None,
        };
        shutdown.spawn(serve(vec![listener], broker, 10_000, shutdown.clone()));
        Listening { addr, shutdown }
    }

    async fn stop(self) {
        self.shutdown.begin();
        assert!(self.shutdown.drain(Duration::from_secs(10)).await);
    }
}

async fn always_topic(broker: &Broker, name: &str) {
    let config = weir_broker::TopicConfig {
        durability: weir_broker::topic::DurabilitySetting::Always,
        ..Default::default()
    };
    broker.create_topic(name, Some(config)).await.unwrap();
}

fn produced(reply: Reply) -> (i16, i64) {
    let r: ProduceResponse = response(ApiKey::Produce, 8, reply);
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_are_written_before_earlier_ones_are_answered_and_a_retry_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    always_topic(&broker, "s").await;
    let pid = kafka.broker.producers().init();
    let first = request(
        ApiKey::Produce,
        8,
        &produce_to("s", idempotent(pid, 0, &[b"a", b"b"])),
    );
    let second = request(
        ApiKey::Produce,
        8,
        &produce_to("s", idempotent(pid, 2, &[b"c"])),
    );
    // Both written, neither answered yet.
    let Step::Syncing(a, _) = handle_step(&kafka, first.clone()).await else {
        panic!("a produce to an fsync topic awaits its sync")
    };
    let Step::Syncing(b, _) = handle_step(&kafka, second).await else {
        panic!("a produce to an fsync topic awaits its sync")
    };
    // The first batch retried before its answer: a duplicate that writes nothing and
    // is answered with the first write's offset once that write is durable.
    let Step::Syncing(retry, _) = handle_step(&kafka, first).await else {
        panic!("a retry awaits the first write")
    };
    // Finished out of order here (a connection answers in order): each stands alone, and
    // the second was written after the first without waiting for the first's answer.
    assert_eq!(produced(b.finish(&kafka).await), (code::NONE, 2));
    assert_eq!(produced(retry.finish(&kafka).await), (code::NONE, 0));
    assert_eq!(produced(a.finish(&kafka).await), (code::NONE, 0));
    assert_eq!(
        broker
            .list_offsets("s", 0, OffsetSpec::Latest)
            .await
            .unwrap(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = broker(dir.path()).await;
    always_topic(&broker, "s").await;
    let listener = Listening::start(broker.clone()).await;
    let addr = listener.addr;
    // The helper's requests carry correlation id 42 at bytes 4..8 (after the api key and
    // the version), and no size prefix.
    let with_correlation = |req: Bytes, id: i32| {
        let mut b = BytesMut::new();
        b.put_i32(req.len() as i32);
        b.extend_from_slice(&req);
        b[8..12].copy_from_slice(&id.to_be_bytes());
        b.freeze()
    };
    // 30 produces of 2 records each, then a ListOffsets, written at once: more than the
    // connection lets await their syncs together.
    const N: i32 = 30;
    let mut wire = Vec::new();
    for i in 1..=N {
        let batch = Bytes::from({
            let mut b = weir_batch::BatchBuilder::new(0);
            b.push(weir_batch::RecordSpec::value(b"x"));
            b.push(weir_batch::RecordSpec::value(b"y"));
            b.build()
        });
        let req = request(ApiKey::Produce, 8, &produce_to("s", batch));
        wire.extend_from_slice(&with_correlation(req, i));
    }
    let list = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name("s"))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ]),
        ]);
    let req = request(ApiKey::ListOffsets, 5, &list);
    wire.extend_from_slice(&with_correlation(req, N + 1));
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&wire).await.unwrap();
    for i in 1..=N + 1 {
        let len = conn.read_i32().await.unwrap();
        let mut b = vec![0u8; len as usize];
        conn.read_exact(&mut b).await.unwrap();
        let mut b = Bytes::from(b);
        let api = if i <= N {
            ApiKey::Produce
        } else {
            ApiKey::ListOffsets
        };
        let version = if i <= N { 8 } else { 5 };
        let h = ResponseHeader::decode(&mut b, api.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, i, "answers in request order");
        if i <= N {
            let r = ProduceResponse::decode(&mut b, version).unwrap();
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(
                (p.error_code, p.base_offset),
                (code::NONE, 2 * (i - 1) as i64)
            );
        } else {
            // Answered after every produce before it, and sees them all.
            let r = ListOffsetsResponse::decode(&mut b, version).unwrap();
            assert_eq!(r.topics[0].partitions[0].offset, 2 * N as i64);
        }
    }
    listener.stop().await;
}

/// A request's lone batch is stored as it arrived: what the broker holds is the request's
/// own memory, not a copy of it. A batch that is a small part of a request is copied, so
/// that it does not keep the whole request alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_batch_is_stored_without_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let mut b = weir_batch::BatchBuilder::new(0);
    for _ in 0..100 {
        b.push(weir_batch::RecordSpec::value(&[7u8; 100]));
    }
    let req = request(ApiKey::Produce, 8, &produce_to("a", Bytes::from(b.build())));
    let span = req.as_ptr_range();
    let r: ProduceResponse = response(ApiKey::Produce, 8, handle(&kafka, req).await);
    assert_eq!(r.responses[0].partition_responses[0].error_code, code::NONE);
    let f = broker
        .fetch("a", 0, 0, 1 << 20, 0, Duration::ZERO)
        .await
        .unwrap();
    let stored = f.chunks[0].as_ptr();
    assert!(
        span.contains(&stored),
        "the stored batch at {stored:?} was copied out of the request at {span:?}"
    );

    let batch = |n: usize| {
        let mut b = weir_batch::BatchBuilder::new(0);
        for _ in 0..n {
            b.push(weir_batch::RecordSpec::value(&[7u8; 100]));
        }
        Some(Bytes::from(b.build()))
    };
    let to = |topic: &str, records| {
        TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![
                PartitionProduceData::default()
                    .with_index(0)
                    .with_records(records),
            ])
    };
    let two = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![to("a", batch(1000)), to("b", batch(10))]);
    let req = request(ApiKey::Produce, 8, &two);
    let span = req.as_ptr_range();
    let r: ProduceResponse = response(ApiKey::Produce, 8, handle(&kafka, req).await);
    assert!(
        r.responses
            .iter()
            .all(|t| t.partition_responses[0].error_code == code::NONE)
    );
    let at = |topic: &'static str| {
        let broker = broker.clone();
        async move {
            let f = broker
                .fetch(topic, 0, 0, 1 << 20, 0, Duration::ZERO)
                .await
                .unwrap();
            f.chunks.last().unwrap().as_ptr()
        }
    };
    assert!(span.contains(&at("a").await), "the large batch was copied");
    assert!(
        !span.contains(&at("b").await),
        "the small batch keeps the request alive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_resends_are_recognised_after_the_broker_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let pid = broker.producers().init();
    let (first, second) = (
        idempotent(pid, 0, &[b"a", b"b"]),
        idempotent(pid, 2, &[b"c"]),
    );
    assert_eq!(
        produce_one(&kafka, "a", first.clone()).await,
        (code::NONE, 0)
    );
    assert_eq!(
        produce_one(&kafka, "a", second.clone()).await,
        (code::NONE, 2)
    );
    drop(kafka);
    broker.close().await.unwrap();
    drop(broker);

    let broker = Broker::open(weir_broker::BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let kafka = Kafka::new(
        broker.clone(),
        Advertised {
            host: "127.0.0.1".into(),
            port: 9092,
        },
    );
    // Resent after the restart: answered with the offsets written before it.
    assert_eq!(produce_one(&kafka, "a", second).await, (code::NONE, 2));
    assert_eq!(produce_one(&kafka, "a", first).await, (code::NONE, 0));
    assert_eq!(
        broker.topic_info("a").unwrap().partitions[0].high_watermark,
        3
    );
    let (err, _) = produce_one(&kafka, "a", idempotent(pid, 4, &[b"d"])).await;
    assert_eq!(err, code::OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(
        produce_one(&kafka, "a", idempotent(pid, 3, &[b"d"])).await,
        (code::NONE, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_written_once_and_gaps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let r: InitProducerIdResponse = response(
        ApiKey::InitProducerId,
        1,
        handle(
            &kafka,
            request(
                ApiKey::InitProducerId,
                1,
                &InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_transaction_timeout_ms(60_000),
            ),
        )
        .await,
    );
    assert_eq!(r.error_code, code::NONE);
    let pid = r.producer_id.0;
    assert!(pid > 0);
    let first = idempotent(pid, 0, &[b"a", b"b"]);
    assert_eq!(
        produce_one(&kafka, "a", first.clone()).await,
        (code::NONE, 0)
    );
    assert_eq!(
        produce_one(&kafka, "a", idempotent(pid, 2, &[b"c"])).await,
        (code::NONE, 2)
    );
    // The first batch again (its answer was lost): the same offset, nothing appended.
    assert_eq!(produce_one(&kafka, "a", first).await, (code::NONE, 0));
    // A gap: seq 4 where 3 is due.
    let (err, _) = produce_one(&kafka, "a", idempotent(pid, 4, &[b"d"])).await;
    assert_eq!(err, code::OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(
        broker.topic_info("a").unwrap().partitions[0].high_watermark,
        3
    );
    // Transactions are refused, not half-served.
    let r: InitProducerIdResponse = response(
        ApiKey::InitProducerId,
        1,
        handle(
            &kafka,
            request(
                ApiKey::InitProducerId,
                1,
                &InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx")))),
            ),
        )
        .await,
    );
    assert_eq!(r.error_code, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    let r: FindCoordinatorResponse = response(
        ApiKey::FindCoordinator,
        2,
        handle(
            &kafka,
            request(
                ApiKey::FindCoordinator,
                2,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_static_str("tx"))
                    .with_key_type(1),
            ),
        )
        .await,
    );
    assert_eq!(r.error_code, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_produce_quota_is_told_its_throttle_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(weir_broker::BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        quotas: weir_broker::flow::QuotaConfig {
            default: weir_broker::flow::Quota {
                produce_bytes_per_sec: Some(10_000),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    broker.create_topic("a", None).await.unwrap();
    let kafka = Kafka::new(
        broker,
        Advertised {
            host: "127.0.0.1".into(),
            port: 9092,
        },
    );
    let big = idempotent(-1, -1, &[&[1u8; 30_000]]);
    let frame = request(ApiKey::Produce, 8, &produce_to("a", big));
    let (reply, throttle) = handle_throttled(&kafka, frame).await;
    let r: ProduceResponse = response(ApiKey::Produce, 8, reply);
    // 30 KB at 10 KB/s with a 2 KB burst: about 2.8 s to wait, said in the response.
    assert!(throttle > Duration::from_secs(2), "{throttle:?}");
    assert_eq!(r.throttle_time_ms as u128, throttle.as_millis());
    assert_eq!(r.responses[0].partition_responses[0].error_code, code::NONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_times_of_pipelined_requests_overlap_rather_than_add_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(weir_broker::BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        quotas: weir_broker::flow::QuotaConfig {
            default: weir_broker::flow::Quota {
                produce_bytes_per_sec: Some(100_000),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    broker.create_topic("a", None).await.unwrap();
    let listener = Listening::start(broker).await;
    let addr = listener.addr;
    // Four produces of 50 KB at 100 KB/s, then a Metadata request, written at once: the
    // client is over its quota for about 2 s in all. Were each answer's throttle time
    // waited out in turn, the fourth (charged while the others were in flight, so
    // about 2 s itself) would come after 0.5 + 1 + 1.5 + 2 = 5 s.
    let mut wire = Vec::new();
    let mut frame = |req: Bytes| {
        wire.extend_from_slice(&(req.len() as i32).to_be_bytes());
        wire.extend_from_slice(&req);
    };
    for _ in 0..4 {
        let big = idempotent(-1, -1, &[&[1u8; 50_000]]);
        frame(request(ApiKey::Produce, 8, &produce_to("a", big)));
    }
    frame(request(
        ApiKey::Metadata,
        8,
        &MetadataRequest::default().with_topics(None),
    ));
    let started = std::time::Instant::now();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&wire).await.unwrap();
    let mut throttles = Vec::new();
    for i in 0..5 {
        let len = conn.read_i32().await.unwrap();
        let mut b = vec![0u8; len as usize];
        conn.read_exact(&mut b).await.unwrap();
        if i < 4 {
            let mut b = Bytes::from(b);
            ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(8)).unwrap();
            let r = ProduceResponse::decode(&mut b, 8).unwrap();
            assert_eq!(r.responses[0].partition_responses[0].error_code, code::NONE);
            throttles.push(r.throttle_time_ms);
        }
    }
    let elapsed = started.elapsed();
    assert!(throttles.iter().any(|t| *t > 0), "{throttles:?}");
    assert!(
        elapsed >= Duration::from_millis(800),
        "the quota held nothing back: {elapsed:?} ({throttles:?})"
    );
    assert!(
        elapsed < Duration::from_millis(3_500),
        "throttle times added up: {elapsed:?} ({throttles:?})"
    );
    listener.stop().await;
}

/// The vectored Fetch answer is, byte for byte, what the `kafka-protocol` encoder writes
/// for the same response with the records in place: every served version, topics with
/// data in several pieces, empty partitions and errors; classic and flexible, by name and by
/// topic id.
#[test]
fn vectored_fetch_responses_match_the_reference_encoder() {
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
    let data = |i: i32| {
        PartitionData::default()
            .with_partition_index(i)
            .with_high_watermark(100 + i64::from(i))
            .with_last_stable_offset(100 + i64::from(i))
            .with_log_start_offset(3)
            .with_aborted_transactions(Some(Vec::new()))
            .with_preferred_read_replica(BrokerId(-1))
    };
    let answer = || -> FetchAnswer {
        vec![
            (
                topic_name("alpha"),
                uuid::Uuid::from_u128(0xa1),
                vec![
                    (
                        data(0),
                        vec![Bytes::from_static(b"first-"), Bytes::from_static(b"second")],
                    ),
                    (data(1), Vec::new()),
                    (
                        data(2).with_error_code(code::OFFSET_OUT_OF_RANGE),
                        Vec::new(),
                    ),
                ],
            ),
            (
                topic_name("b"),
                uuid::Uuid::from_u128(0xb),
                vec![(data(7), vec![Bytes::from_static(b"x")])],
            ),
            (topic_name("empty"), uuid::Uuid::from_u128(0xe), Vec::new()),
        ]
    };
    for version in 4..=18 {
        let mut head = BytesMut::new();
        head.put_i32(0);
        head.put_i32(42); // a correlation id, as the response header would hold
        let pieces = encode_fetch(head, version, 7, answer()).unwrap();
        let got = pieces.concat();
        let reference = FetchResponse::default()
            .with_throttle_time_ms(7)
            .with_responses(
                answer()
                    .into_iter()
                    .map(|(name, id, parts)| {
                        FetchableTopicResponse::default()
                            .with_topic(name)
                            .with_topic_id(id)
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(d, chunks)| {
                                        d.with_records(Some(Bytes::from(chunks.concat())))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let mut want = BytesMut::new();
        want.put_i32(0);
        want.put_i32(42);
        reference.encode(&mut want, version).unwrap();
        let len = (want.len() - 4) as i32;
        want[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(got, want.to_vec(), "version {version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_polls_on_every_partition_it_asks_for() {
    use kafka_protocol::messages::FetchRequest;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let two = weir_broker::TopicConfig {
        partitions: 2,
        ..Default::default()
    };
    broker.create_topic("two", Some(two)).await.unwrap();
    let req = FetchRequest::default()
        .with_max_wait_ms(10_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name("two"))
                .with_partitions(
                    (0..2)
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(1 << 20)
                        })
                        .collect(),
                ),
        ]);
    let writer = broker.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .produce("two", Some(1), None, idempotent(-1, -1, &[b"late"]))
            .await
            .unwrap();
    });
    let started = std::time::Instant::now();
    let r: kafka_protocol::messages::FetchResponse = response(
        ApiKey::Fetch,
        11,
        handle(&kafka, request(ApiKey::Fetch, 11, &req)).await,
    );
    let waited = started.elapsed();
    // Answered when partition 1 got data, long before the 10 s max_wait.
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let parts = &r.responses[0].partitions;
    assert!(parts[0].records.as_ref().unwrap().is_empty());
    assert!(!parts[1].records.as_ref().unwrap().is_empty());
    assert_eq!(parts[1].high_watermark, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batches_get_message_too_large_and_log_append_time_restamps() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let small = weir_broker::TopicConfig {
        max_batch_bytes: 200,
        ..Default::default()
    };
    broker.create_topic("small", Some(small)).await.unwrap();
    let (err, _) = produce_one(
        &kafka,
        "small",
        crate::tests::idempotent(-1, -1, &[&[7u8; 400]]),
    )
    .await;
    assert_eq!(err, code::MESSAGE_TOO_LARGE);
    let stamped = weir_broker::TopicConfig {
        timestamp_type: weir_broker::topic::TimestampType::LogAppendTime,
        ..Default::default()
    };
    broker.create_topic("stamped", Some(stamped)).await.unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Producer timestamps from 1970: the broker's clock replaces them.
    let mut b = weir_batch::BatchBuilder::new(1_000);
    b.push(weir_batch::RecordSpec::value(b"x"));
    let r: ProduceResponse = response(
        ApiKey::Produce,
        8,
        handle(
            &kafka,
            request(
                ApiKey::Produce,
                8,
                &produce_to("stamped", Bytes::from(b.build())),
            ),
        )
        .await,
    );
    let p = &r.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (code::NONE, 0));
    assert!(
        p.log_append_time_ms >= before,
        "the response carries the broker's stamp"
    );
    let f = broker
        .fetch("stamped", 0, 0, 1 << 20, 0, Duration::ZERO)
        .await
        .unwrap();
    let batch = f.chunks.concat();
    let h = weir_batch::validate(&batch).unwrap();
    assert!(h.is_log_append_time());
    let ts = weir_batch::Records::new(&batch)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .timestamp;
    assert!(
        ts >= before,
        "timestamp {ts} is the broker's, not the producer's 1000"
    );
    // A corrupt batch is refused, not resealed into a valid one.
    let mut bad = weir_batch::BatchBuilder::new(1_000);
    bad.push(weir_batch::RecordSpec::value(b"y"));
    let mut bad = bad.build();
    *bad.last_mut().unwrap() ^= 1;
    let (err, _) = produce_one(&kafka, "stamped", Bytes::from(bad)).await;
    assert_eq!(err, code::CORRUPT_MESSAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_delete_topics_with_kafka_errors_for_each_refusal() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, DeleteTopicsRequest};
    let dir = tempfile::tempdir().unwrap();
    let (broker, adv) = broker(dir.path()).await;
    let topic = |name: &str, partitions: i32, rf: i16, configs: &[(&str, &str)]| {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )
    };
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(1000)
        .with_topics(vec![
            topic(
                "c",
                3,
                1,
                &[("retention.ms", "-1"), ("max.message.bytes", "2097152")],
            ),
            topic("a", 1, -1, &[]),
            topic("r", 1, 3, &[]),
            topic("u", 1, 1, &[("cleanup.policy", "compact,shred")]),
            topic("bad name", 1, 1, &[]),
            topic("z", 0, 1, &[]),
        ]);
    let r: CreateTopicsResponse = response(
        ApiKey::CreateTopics,
        4,
        handle(&adv, request(ApiKey::CreateTopics, 4, &req)).await,
    );
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(
        codes,
        vec![
            code::NONE,
            code::TOPIC_ALREADY_EXISTS,
            code::INVALID_REPLICATION_FACTOR,
            code::INVALID_CONFIG,
            code::INVALID_TOPIC_EXCEPTION,
            code::INVALID_PARTITIONS
        ]
    );
    let c = broker.topic_info("c").unwrap();
    assert_eq!(
        (
            c.config.partitions,
            c.config.retention_ms,
            c.config.max_batch_bytes
        ),
        (3, None, 2 << 20)
    );
    // validate_only creates nothing.
    let req = CreateTopicsRequest::default()
        .with_validate_only(true)
        .with_topics(vec![topic("v", 2, 1, &[])]);
    let r: CreateTopicsResponse = response(
        ApiKey::CreateTopics,
        4,
        handle(&adv, request(ApiKey::CreateTopics, 4, &req)).await,
    );
    assert_eq!(r.topics[0].error_code, code::NONE);
    assert!(broker.topic_info("v").is_err());
    let req = DeleteTopicsRequest::default()
        .with_timeout_ms(1000)
        .with_topic_names(vec![topic_name("c"), topic_name("nope")]);
    let r: DeleteTopicsResponse = response(
        ApiKey::DeleteTopics,
        3,
        handle(&adv, request(ApiKey::DeleteTopics, 3, &req)).await,
    );
    let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, vec![code::NONE, code::UNKNOWN_TOPIC_OR_PARTITION]);
    assert!(broker.topic_info("c").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_reports_topic_settings_under_kafka_names() {
    use kafka_protocol::messages::DescribeConfigsRequest;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    let dir = tempfile::tempdir().unwrap();
    let (_broker, adv) = broker(dir.path()).await;
    let req = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(TOPIC_RESOURCE)
            .with_resource_name(StrBytes::from_static_str("a"))
            .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.ms")])),
        DescribeConfigsResource::default()
            .with_resource_type(TOPIC_RESOURCE)
            .with_resource_name(StrBytes::from_static_str("missing")),
    ]);
    let r: DescribeConfigsResponse = response(
        ApiKey::DescribeConfigs,
        2,
        handle(&adv, request(ApiKey::DescribeConfigs, 2, &req)).await,
    );
    assert_eq!(r.results[0].error_code, code::NONE);
    assert_eq!(r.results[0].configs.len(), 1);
    assert_eq!(
        r.results[0].configs[0].value.as_deref(),
        Some("604800000"),
        "the 7-day default"
    );
    assert_eq!(r.results[1].error_code, code::UNKNOWN_TOPIC_OR_PARTITION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unsupported_requests_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, adv) = broker(dir.path()).await;
    assert!(matches!(
        handle(&adv, Bytes::from_static(&[0x7f, 0x7f, 0, 0])).await,
        Reply::Close
    ));
    assert!(matches!(
        handle(&adv, Bytes::from_static(b"ab")).await,
        Reply::Close
    ));
    // Produce v14 is above the advertised range (3–13), v2 below it.
    for version in [14u8, 2] {
        let frame = [0, 0, 0, version, 0, 0, 0, 42, 0xff, 0xff, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            handle(&adv, Bytes::copy_from_slice(&frame)).await,
            Reply::Close
        ));
    }
    // A Metadata request of more than 200,000 topics (4.8 MB) is refused before it is
    // decoded: decoded, each name would take several times its bytes.
    let names = (0..200_001)
        .map(|i| MetadataRequestTopic::default().with_name(Some(topic_name(&format!("t{i:020}")))))
        .collect();
    let big = request(
        ApiKey::Metadata,
        1,
        &MetadataRequest::default().with_topics(Some(names)),
    );
    assert!(matches!(handle(&adv, big).await, Reply::Close));
    // Metadata v0 declaring 2³¹−1 topics in 14 bytes: the guard refuses it before the
    // decoder would reserve ~150 GB for it (which aborted the process).
    let attack = [0, 3, 0, 0, 0, 0, 0, 42, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff];
    assert!(matches!(
        handle(&adv, Bytes::copy_from_slice(&attack)).await,
        Reply::Close
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_above_the_range_get_the_v0_answer_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, adv) = broker(dir.path()).await;
    // v9 with a body no decoder knows: only the correlation id is read.
    let frame = [0, 18, 0, 9, 0, 0, 0, 42, 0x7f, 0xff, 0xff, 0xff];
    let r: ApiVersionsResponse = response(
        ApiKey::ApiVersions,
        0,
        handle(&adv, Bytes::copy_from_slice(&frame)).await,
    );
    assert_eq!(r.error_code, code::UNSUPPORTED_VERSION);
    assert!(
        r.api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Metadata as i16)
    );
}

/// The version matrix: for every (API, version) advertised, a request the crate encodes is
/// answered, and the answer decodes at that version to its last byte. (Each request is its
/// API's default, so most are refused for what they hold; that they are understood and
/// answered in the client's version is what is proven here. The API tests prove the rest.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_version_is_answered_in_that_version() {
    use kafka_protocol::messages::{ProduceRequest, RequestKind, ResponseKind};
    let dir = tempfile::tempdir().unwrap();
    let (_broker, kafka) = broker(dir.path()).await;
    let mut answered = 0;
    for &(api, min, max) in crate::dispatch::SUPPORTED {
        // Versions read by hand below the crate's: `legacy_versions_are_served`.
        for version in (min..=max).filter(|v| !crate::legacy::covers(api, *v)) {
            let body = match api {
                // acks=0 would be answered with silence.
                ApiKey::Produce => RequestKind::Produce(ProduceRequest::default().with_acks(-1)),
                _ => crate::guard::layouts::default_request(api),
            };
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(version)
                .with_correlation_id(42)
                .with_client_id(Some(StrBytes::from_static_str("matrix")))
                .encode(&mut frame, api.request_header_version(version))
                .unwrap();
            body.encode(&mut frame, version).unwrap();
            let reply =
                tokio::time::timeout(Duration::from_secs(10), handle(&kafka, frame.freeze()))
                    .await
                    .unwrap_or_else(|_| panic!("{api:?} v{version} not answered"));
            let mut b = match reply {
                Reply::Response(b) => b,
                Reply::Parts(pieces) => Bytes::from(pieces.concat()),
                other => panic!("{api:?} v{version}: {other:?}"),
            };
            let len = bytes::Buf::get_i32(&mut b);
            assert_eq!(len as usize, b.len(), "{api:?} v{version}: size prefix");
            let header_version = api.response_header_version(version);
            let h = ResponseHeader::decode(&mut b, header_version).unwrap();
            assert_eq!(h.correlation_id, 42, "{api:?} v{version}");
            let decoded = ResponseKind::decode(api, &mut b, version);
            assert!(decoded.is_ok(), "{api:?} v{version}: {decoded:?}");
            assert!(b.is_empty(), "{api:?} v{version}: {} bytes left", b.len());
            answered += 1;
        }
    }
    // Every version of every API advertised: a change to the table shows here.
    assert_eq!(answered, 181);
}

/// zstd came with Produce v7: a v3–v6 request carrying a zstd batch is refused with
/// UNSUPPORTED_COMPRESSION_TYPE and nothing is written; v7 and later store it. Every version
/// answers a produce with its offset, classic and flexible alike, by name and (v13) by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_needs_produce_v7_and_every_produce_version_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let zstd = || {
        let mut b = weir_batch::BatchBuilder::new(0);
        b.push(weir_batch::RecordSpec::value(b"squeezed"));
        Bytes::from(b.build_compressed(weir_batch::Compression::Zstd).unwrap())
    };
    let id = uuid::Uuid::from_bytes(broker.topic_id("a").unwrap().0);
    let mut next = 0;
    for version in 3..=13 {
        let mut req = produce_to("a", zstd());
        if version >= 13 {
            req.topic_data[0].name = topic_name("");
            req.topic_data[0].topic_id = id;
        }
        let r: ProduceResponse = response(
            ApiKey::Produce,
            version,
            handle(&kafka, request(ApiKey::Produce, version, &req)).await,
        );
        let p = &r.responses[0].partition_responses[0];
        if version < 7 {
            assert_eq!(p.error_code, 76, "v{version}");
        } else {
            assert_eq!(
                (p.error_code, p.base_offset),
                (code::NONE, next),
                "v{version}"
            );
            next += 1;
        }
    }
    let end = broker
        .list_offsets("a", 0, OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(end, 7, "v7 to v13 wrote one batch each, v3 to v6 none");
}

/// docs/kafka.md's table of APIs and versions is the one advertised, row for row.
#[test]
fn the_documented_versions_are_the_advertised_ones() {
    let doc = include_str!("../../../docs/kafka.md");
    let rows: Vec<(String, i16, i16)> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| API | versions |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let (min, max) = cells[2].split_once('–').unwrap_or((cells[2], cells[2]));
            (
                cells[1].to_string(),
                min.parse().unwrap(),
                max.parse().unwrap(),
            )
        })
        .collect();
    let advertised: Vec<(String, i16, i16)> = crate::dispatch::SUPPORTED
        .iter()
        .map(|(api, min, max)| (format!("{api:?}"), *min, *max))
        .collect();
    assert_eq!(rows, advertised);
}

/// A member joined over a connection is described with its client id and host (`/ADDRESS`,
/// as Kafka shows it), and the group is listed as Stable, with the chosen assignor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn described_members_carry_their_client_id_and_host() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::{
        DescribeGroupsRequest, DescribeGroupsResponse, GroupId, JoinGroupRequest,
        JoinGroupResponse, ListGroupsRequest, ListGroupsResponse,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (broker, _kafka) = broker(dir.path()).await;
    let listening = Listening::start(broker).await;
    let mut conn = TcpStream::connect(listening.addr).await.unwrap();
    async fn call<T: Decodable>(
        conn: &mut TcpStream,
        api: ApiKey,
        version: i16,
        body: &impl Encodable,
    ) -> T {
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("describer")))
            .encode(&mut b, api.request_header_version(version))
            .unwrap();
        body.encode(&mut b, version).unwrap();
        conn.write_all(&(b.len() as i32).to_be_bytes())
            .await
            .unwrap();
        conn.write_all(&b).await.unwrap();
        let len = conn.read_i32().await.unwrap();
        let mut r = vec![0u8; len as usize];
        conn.read_exact(&mut r).await.unwrap();
        let mut r = Bytes::from(r);
        ResponseHeader::decode(&mut r, api.response_header_version(version)).unwrap();
        T::decode(&mut r, version).unwrap()
    }
    let group = GroupId(StrBytes::from_static_str("hosts"));
    let join = JoinGroupRequest::default()
        .with_group_id(group.clone())
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(&[
                    0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
                ])),
        ]);
    let joined: JoinGroupResponse = call(&mut conn, ApiKey::JoinGroup, 3, &join).await;
    assert_eq!(joined.error_code, code::NONE);
    let described: DescribeGroupsResponse = call(
        &mut conn,
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group]),
    )
    .await;
    let g = &described.groups[0];
    assert_eq!(
        (g.error_code, &*g.group_state, &*g.protocol_data),
        (code::NONE, "CompletingRebalance", "range")
    );
    let m = &g.members[0];
    assert_eq!(m.member_id, joined.member_id);
    assert_eq!(
        (&*m.client_id, &*m.client_host),
        ("describer", "/127.0.0.1")
    );
    let listed: ListGroupsResponse = call(
        &mut conn,
        ApiKey::ListGroups,
        4,
        &ListGroupsRequest::default(),
    )
    .await;
    let names: Vec<(&str, &str, &str)> = listed
        .groups
        .iter()
        .map(|g| (&*g.group_id.0, &*g.protocol_type, &*g.group_state))
        .collect();
    assert_eq!(names, vec![("hosts", "consumer", "CompletingRebalance")]);
    drop(conn);
    listening.stop().await;
}

/// IncrementalAlterConfigs changes a topic at once and durably; DescribeConfigs then gives the
/// topic's own value (source 1) with the broker default as a synonym named as Kafka names it;
/// refusals speak Kafka's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_configs_are_described_with_their_source_and_refusals_name_kafka_keys() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        DescribeConfigsRequest, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    let alter = |key: &'static str, value: &'static str| {
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_static_str("a"))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(StrBytes::from_static_str(key))
                        .with_value(Some(StrBytes::from_static_str(value))),
                ]),
        ])
    };
    let mut outcomes = Vec::new();
    for (key, value) in [
        ("retention.ms", "3600000"),
        ("colour", "red"),
        ("segment.bytes", "1048576"),
    ] {
        let r: IncrementalAlterConfigsResponse = response(
            ApiKey::IncrementalAlterConfigs,
            1,
            handle(
                &kafka,
                request(ApiKey::IncrementalAlterConfigs, 1, &alter(key, value)),
            )
            .await,
        );
        let r = &r.responses[0];
        outcomes.push((
            r.error_code,
            r.error_message.as_deref().unwrap_or("").to_string(),
        ));
    }
    assert_eq!(outcomes[0].0, code::NONE);
    assert_eq!(outcomes[1].0, code::INVALID_CONFIG);
    assert!(
        outcomes[1].1.contains("\"colour\" is not supported"),
        "{}",
        outcomes[1].1
    );
    assert_eq!(outcomes[2].0, code::INVALID_CONFIG);
    assert!(
        outcomes[2].1.contains("max.message.bytes") && !outcomes[2].1.contains("max_batch"),
        "{}",
        outcomes[2].1
    );
    assert_eq!(
        broker.topic_config("a").unwrap().retention_ms,
        Some(3_600_000)
    );
    let req = DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_static_str("a"))
                .with_configuration_keys(Some(vec![
                    StrBytes::from_static_str("retention.ms"),
                    StrBytes::from_static_str("retention.bytes"),
                ])),
        ]);
    let r: DescribeConfigsResponse = response(
        ApiKey::DescribeConfigs,
        4,
        handle(&kafka, request(ApiKey::DescribeConfigs, 4, &req)).await,
    );
    // (name, value, source, [(synonym, source)]) per config.
    type Described = Vec<(String, String, i8, Vec<(String, i8)>)>;
    let described: Described = r.results[0]
        .configs
        .iter()
        .map(|c| {
            let synonyms = c
                .synonyms
                .iter()
                .map(|s| (s.name.to_string(), s.source))
                .collect();
            let value = c.value.as_deref().unwrap_or("").to_string();
            (c.name.to_string(), value, c.config_source, synonyms)
        })
        .collect();
    assert_eq!(
        described,
        vec![
            (
                "retention.ms".into(),
                "3600000".into(),
                1,
                vec![("retention.ms".into(), 1), ("log.retention.ms".into(), 5)]
            ),
            (
                "retention.bytes".into(),
                "-1".into(),
                5,
                vec![("log.retention.bytes".into(), 5)]
            ),
        ]
    );
}

/// Kafka 3.9's versions below the crate's, read and written by hand (crate::legacy): an old
/// client's commits are stored and read back, topics created, described and deleted; a lying
/// or cut-short legacy request closes the connection without allocating from its counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_versions_are_served() {
    use kafka_protocol::messages::{OffsetCommitResponse, OffsetFetchResponse};
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    fn s(b: &mut BytesMut, v: &str) {
        b.put_i16(v.len() as i16);
        b.extend_from_slice(v.as_bytes());
    }
    // The answer after its size prefix and (v0) header, checked for our correlation id.
    async fn answer(kafka: &Kafka, api: ApiKey, version: i16, body: &BytesMut) -> Bytes {
        let reply = handle(kafka, crate::legacy::frame(api, version, body)).await;
        let Reply::Response(mut b) = reply else {
            panic!("{api:?} v{version}: {reply:?}")
        };
        let len = bytes::Buf::get_i32(&mut b);
        assert_eq!(len as usize, b.len());
        assert_eq!(bytes::Buf::get_i32(&mut b), 42, "correlation id");
        b
    }
    // OffsetCommit v0 and v1 (v1: generation, member, a timestamp per partition), then
    // OffsetFetch v0 reads each back.
    for (version, offset, metadata) in [(0i16, 7i64, "v0 commit"), (1, 9, "v1 commit")] {
        let mut b = BytesMut::new();
        s(&mut b, "old");
        if version == 1 {
            b.put_i32(-1);
            s(&mut b, "");
        }
        b.put_i32(1);
        s(&mut b, "a");
        b.put_i32(1);
        b.put_i32(0);
        b.put_i64(offset);
        if version == 1 {
            b.put_i64(-1);
        }
        s(&mut b, metadata);
        let mut r = answer(&kafka, ApiKey::OffsetCommit, version, &b).await;
        // The same layout as v2.
        let r = OffsetCommitResponse::decode(&mut r, 2).unwrap();
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            code::NONE,
            "v{version}"
        );
        let mut b = BytesMut::new();
        s(&mut b, "old");
        b.put_i32(1);
        s(&mut b, "a");
        b.put_i32(1);
        b.put_i32(0);
        let mut r = answer(&kafka, ApiKey::OffsetFetch, 0, &b).await;
        let r = OffsetFetchResponse::decode(&mut r, 1).unwrap();
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.committed_offset, p.metadata.as_deref()),
            (offset, Some(metadata))
        );
    }
    // CreateTopics v0, then v1 validating only (its answer carries an error message).
    for (version, name, validate_only) in [(0i16, "old-t", false), (1, "old-u", true)] {
        let mut b = BytesMut::new();
        b.put_i32(1);
        s(&mut b, name);
        b.put_i32(2);
        b.put_i16(1);
        b.put_i32(0);
        b.put_i32(1);
        s(&mut b, "retention.ms");
        s(&mut b, "3600000");
        b.put_i32(1000);
        if version == 1 {
            b.put_u8(u8::from(validate_only));
        }
        let mut r = answer(&kafka, ApiKey::CreateTopics, version, &b).await;
        let mut want = BytesMut::new();
        want.put_i32(1);
        s(&mut want, name);
        want.put_i16(code::NONE);
        if version == 1 {
            want.put_i16(-1);
        }
        assert_eq!(r.split_to(r.len()), want.freeze(), "v{version}");
    }
    assert_eq!(broker.partition_count("old-t"), Some(2));
    assert_eq!(broker.partition_count("old-u"), None, "validated only");
    // DescribeConfigs v0: is_default where later versions have a source.
    let mut b = BytesMut::new();
    b.put_i32(1);
    b.put_i8(2);
    s(&mut b, "old-t");
    b.put_i32(2);
    s(&mut b, "retention.ms");
    s(&mut b, "retention.bytes");
    let r = answer(&kafka, ApiKey::DescribeConfigs, 0, &b).await;
    let mut want = BytesMut::new();
    want.put_i32(0);
    want.put_i32(1);
    want.put_i16(code::NONE);
    want.put_i16(-1);
    want.put_i8(2);
    s(&mut want, "old-t");
    want.put_i32(2);
    for (key, value, is_default) in [
        ("retention.ms", "3600000", 0u8),
        ("retention.bytes", "-1", 1),
    ] {
        s(&mut want, key);
        s(&mut want, value);
        want.put_u8(0);
        want.put_u8(is_default);
        want.put_u8(0);
    }
    assert_eq!(r, want.freeze());
    // DeleteTopics v0.
    let mut b = BytesMut::new();
    b.put_i32(1);
    s(&mut b, "old-t");
    b.put_i32(1000);
    let r = answer(&kafka, ApiKey::DeleteTopics, 0, &b).await;
    let mut want = BytesMut::new();
    want.put_i32(1);
    s(&mut want, "old-t");
    want.put_i16(code::NONE);
    assert_eq!(r, want.freeze());
    assert_eq!(broker.partition_count("old-t"), None);
    // ListOffsets v0 lists the offset asked for (one at most); OffsetForLeaderEpoch v0 and v1
    // answer the end at epoch 0 (v1 says the epoch).
    let produced = produce_one(&kafka, "a", idempotent(-1, -1, &[b"x", b"y"])).await;
    assert_eq!(produced, (code::NONE, 0));
    for (time, listed) in [(-1i64, vec![2i64]), (-2, vec![0]), (i64::MAX, vec![])] {
        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i32(1);
        s(&mut b, "a");
        b.put_i32(1);
        b.put_i32(0);
        b.put_i64(time);
        b.put_i32(1);
        let r = answer(&kafka, ApiKey::ListOffsets, 0, &b).await;
        let mut want = BytesMut::new();
        want.put_i32(1);
        s(&mut want, "a");
        want.put_i32(1);
        want.put_i32(0);
        want.put_i16(code::NONE);
        want.put_i32(listed.len() as i32);
        for o in listed {
            want.put_i64(o);
        }
        assert_eq!(r, want.freeze(), "time {time}");
    }
    for version in [0i16, 1] {
        let mut b = BytesMut::new();
        b.put_i32(1);
        s(&mut b, "a");
        b.put_i32(1);
        b.put_i32(0);
        b.put_i32(0);
        let r = answer(&kafka, ApiKey::OffsetForLeaderEpoch, version, &b).await;
        let mut want = BytesMut::new();
        want.put_i32(1);
        s(&mut want, "a");
        want.put_i32(1);
        want.put_i16(code::NONE);
        want.put_i32(0);
        if version == 1 {
            want.put_i32(0);
        }
        want.put_i64(2);
        assert_eq!(r, want.freeze(), "v{version}");
    }
    // Cut short, and a count of two billion topics in a few bytes: refused, nothing reserved.
    let mut b = BytesMut::new();
    s(&mut b, "old");
    b.put_i32(i32::MAX);
    s(&mut b, "a");
    for body in [&b[..], &b[..5]] {
        let frame = crate::legacy::frame(ApiKey::OffsetCommit, 0, body);
        assert!(matches!(handle(&kafka, frame).await, Reply::Close));
    }
}

/// DeleteTopics by id (v6) from a client that may not describe the topic: refused without
/// the topic's name (Kafka's answer); with the rule that lets it, deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topics_by_id_keeps_a_hidden_topics_name_to_itself() {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
    use std::sync::Arc;
    use weir_auth::Principal;
    use weir_auth::acl::{
        Acl, AclFile, Authorizer, Operation, PatternType, Permission, ResourceType,
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, kafka) = broker(dir.path()).await;
    broker.create_topic("secret", None).await.unwrap();
    let id = uuid::Uuid::from_bytes(broker.topic_id("secret").unwrap().0);
    let path = dir.path().join("acls.json");
    let rules = Arc::new(Authorizer::open(path.clone(), Vec::new()).unwrap());
    let delete = |access: Arc<weir_broker::Access>| {
        let req = DeleteTopicsRequest::default()
            .with_timeout_ms(1000)
            .with_topics(vec![DeleteTopicState::default().with_topic_id(id)]);
        let mut taken = dispatch::take(
            request(ApiKey::DeleteTopics, 6, &req),
            dispatch::Offered::of(&broker),
        )
        .expect("decodes");
        taken.access = Some(access);
        let kafka = &kafka;
        async move {
            let Step::Done(reply, _) = dispatch::step(kafka, taken).await else {
                panic!("DeleteTopics is answered at once")
            };
            response::<DeleteTopicsResponse>(ApiKey::DeleteTopics, 6, reply)
        }
    };
    let bob = || {
        Arc::new(weir_broker::Access::new(
            Principal::user("bob"),
            Some(Arc::clone(&rules)),
        ))
    };
    let r = delete(bob()).await;
    let t = &r.responses[0];
    assert_eq!(t.error_code, code::TOPIC_AUTHORIZATION_FAILED);
    assert_eq!(t.name, None, "the name is not told");
    let message = t.error_message.as_deref().unwrap_or_default();
    assert!(!message.contains("secret"), "{message}");
    assert!(broker.topic_info("secret").is_ok());
    // Allowed to delete (which lets describe too): deleted.
    AclFile::edit(&path, |f| {
        f.acls.push(Acl {
            principal: "User:bob".into(),
            resource: ResourceType::Topic,
            pattern: PatternType::Literal,
            name: "secret".into(),
            operation: Operation::Delete,
            permission: Permission::Allow,
        });
        Ok(())
    })
    .unwrap();
    rules.reload_if_changed().unwrap();
    let r = delete(bob()).await;
    assert_eq!(r.responses[0].error_code, code::NONE, "{r:?}");
    assert!(broker.topic_info("secret").is_err());
}

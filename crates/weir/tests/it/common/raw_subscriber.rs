//! A native-protocol subscriber on a raw socket, for tests of what the server does when a
//! client stops reading.

use std::time::Duration;

use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weir_client::messages as msg;
use weir_wire::{Api, Flags, FrameHeader};

/// A subscriber on a raw socket with a small receive buffer, which reads only when told:
/// what a client that stops reading looks like to the server.
pub struct RawSubscriber {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawSubscriber {
    pub async fn open(
        addr: &str,
        topic: &str,
        policy: msg::OverflowPolicy,
        queue: (u64, u64),
    ) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        let mut s = RawSubscriber {
            stream,
            buf: BytesMut::new(),
        };
        let hello = msg::HelloRequest {
            client_id: "raw".into(),
            apis: Api::supported(),
        };
        s.send(Api::Hello, 1, &hello).await;
        let sub = msg::SubscribeRequest {
            topic: topic.into(),
            partition: 0,
            start: Some(msg::subscribe_request::Start::Earliest(true)),
            policy: policy as i32,
            queue_records: queue.0,
            queue_bytes: queue.1,
            ..Default::default()
        };
        s.send(Api::Subscribe, 2, &sub).await;
        // The two answers.
        for _ in 0..2 {
            let f = s.frame().await;
            assert!(!f.header.flags.has(Flags::ERROR), "{:?}", f.header);
        }
        s
    }

    pub async fn send(&mut self, api: Api, correlation_id: u32, m: &impl Message) {
        let header = FrameHeader {
            api_key: api as u16,
            api_version: 1,
            correlation_id,
            flags: Flags(0),
        };
        let bytes = weir_wire::frame::encode_frame_to_vec(header, m, &[]);
        self.stream.write_all(&bytes).await.unwrap();
    }

    pub async fn frame(&mut self) -> weir_wire::Frame {
        loop {
            if let Some(f) = weir_wire::decode_frame(&mut self.buf, 64 << 20).unwrap() {
                return f;
            }
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("the server sent nothing for 10 s")
                    .unwrap();
            assert!(n > 0, "the server closed the connection");
        }
    }

    /// The next push (pings answered).
    pub async fn push(&mut self) -> (msg::PushData, bytes::Bytes) {
        loop {
            let f = self.frame().await;
            if f.header.flags.has(Flags::PUSH) {
                return (msg::PushData::decode(f.message).unwrap(), f.records);
            }
            if f.header.api_key == Api::Ping as u16 && !f.header.flags.has(Flags::RESPONSE) {
                let header = FrameHeader {
                    flags: Flags(Flags::RESPONSE),
                    ..f.header
                };
                let bytes = weir_wire::frame::encode_frame_to_vec(header, &msg::Ping {}, &[]);
                self.stream.write_all(&bytes).await.unwrap();
            }
        }
    }
}

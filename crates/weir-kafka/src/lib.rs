//! The Kafka wire protocol front door onto weir's broker core.
//!
//! Layout, in the order a request goes through it:
//! - [`connection`]: [`serve`] accepts connections and runs each one: a 4-byte size, then a
//!   request, answered in order (Kafka clients rely on per-connection ordering).
//! - [`decode`]: [`decode_request`], the one way in for request bytes: API and version
//!   checked against those served, the layout checked by [`guard`] (the crate's decoders
//!   reserve memory from unchecked counts), then decoded with the `kafka-protocol` crate. The
//!   fuzz target `kafka_request` (the repository's top-level `fuzz/`) drives it.
//! - [`dispatch`]: the APIs and versions served, and the one match handing each decoded
//!   request to its module; [`handle`] is bytes in, bytes out, sans socket.
//! - `api/`: one module per API, each a function from the decoded request to its response.
//! - [`sasl`]: a connection's authentication (SaslHandshake, SaslAuthenticate), when the
//!   server requires it; nothing else is served before it succeeds.
//! - [`groups`], [`weir_broker::producers`]: the group coordinator and idempotent producer
//!   state; [`errors`]: the broker's error kinds as Kafka error codes.

use std::sync::Arc;

use bytes::Bytes;
use weir_broker::Broker;

mod api;
mod connection;
pub mod consumer_groups;
mod decode;
mod dispatch;
mod errors;
pub mod groups;
pub mod guard;
mod legacy;
mod sasl;

pub use connection::{Listener, serve};
pub use decode::{DecodeError, Decoded, decode_request};
pub use dispatch::{handle, handle_throttled};
pub(crate) use errors::{code, error_code, group_error_code};

use groups::KafkaGroups;

/// Largest request accepted (checked before allocating).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// What to do after a request.
#[derive(Debug)]
pub enum Reply {
    /// Send this response (size prefix included).
    Response(Bytes),
    /// Send these pieces, in order, as one response (size prefix included in the first): a
    /// Fetch answer, whose stored batches are not copied.
    Parts(Vec<Bytes>),
    /// Say nothing (produce with acks=0).
    Silent,
    /// The request cannot be understood: close the connection, as Kafka brokers do.
    Close,
}

/// One Kafka listener's state: the broker, the address it advertises and its group
/// coordinator. (Idempotent producers' state is the broker's, shared with the native door.)
#[derive(Debug)]
pub struct Kafka {
    pub broker: Broker,
    pub advertised: Advertised,
    pub groups: Arc<KafkaGroups>,
}

impl Kafka {
    pub fn new(broker: Broker, advertised: Advertised) -> Self {
        Self {
            groups: Arc::new(KafkaGroups::new(broker.clone())),
            broker,
            advertised,
        }
    }
}

/// The address clients are told to connect to (Metadata).
#[derive(Debug, Clone)]
pub struct Advertised {
    pub host: String,
    pub port: i32,
}

#[cfg(test)]
mod tests;

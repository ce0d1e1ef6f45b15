//! weir's native protocol, sans-I/O: bytes in, typed frames out, and back.
//!
//! Layout:
//! - [`frame`]: the frame layout, [`decode_frame`] / [`encode_frame`], the maximum frame size
//!   enforced before any allocation.
//! - [`api`]: API keys and the versions this build speaks; version negotiation.
//! - [`codes`]: stable numeric error codes.
//! - [`messages`]: the protobuf control messages generated from `proto/weir.proto`, the
//!   contract.
//! - [`ring`]: the consistent-hash ring that maps record keys to partitions (it lives in
//!   `weir-batch`, which the broker needs anyway); client and server share it, so it is part
//!   of the protocol.
//!
//! The crate knows nothing of sockets; its error type ([`WireError`]) is converted at the
//! server and client boundaries.

pub mod api;
pub mod codes;
pub mod frame;
pub use weir_batch::ring;

/// Protobuf messages generated from `proto/weir.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod messages {
    include!(concat!(env!("OUT_DIR"), "/weir.v1.rs"));
}

pub use api::{Api, negotiate};
pub use codes::ErrorCode;
pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_LEN, Flags, Frame, FrameHeader, WireError, decode_frame,
    encode_frame, frame_len,
};
pub use ring::Ring;

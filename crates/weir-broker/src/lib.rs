//! weir's broker core: everything a front door needs, and nothing about sockets or any one
//! protocol's types.
//!
//! Layout:
//! - [`broker`]: [`Broker`] — topics with their partitions' logs, produce (with key routing),
//!   fetch with long-poll, list offsets, shutdown.
//! - [`topic`]: per-topic configuration and durable topic metadata.
//! - [`group`]: consumer groups — membership, sessions, generations, server-side assignment
//!   (round robin, sticky), fencing of commits.
//! - [`offsets`]: committed offsets, durable (a commit log plus snapshots).
//! - [`push`]: push subscriptions with credit-based flow control.
//! - [`flow`]: per-client quotas, the produce memory budget, connection admission per address.
//! - [`error`]: the error type, [`BrokerError`], and its [`ErrorKind`]s, which each front door
//!   maps to its protocol's codes.
//! - [`access`]: [`Access`], what a client may do (the access control lists' one check, for
//!   every door), with its decisions cached.
//! - [`settings`]: what the libraries' configurations share to deserialize themselves
//!   (durations in the units their keys name).

pub mod access;
pub mod activity;
pub mod broker;
pub mod error;
pub mod flow;
pub mod group;
pub mod keys;
pub mod offsets;
pub mod producers;
pub mod push;
pub mod settings;
pub mod topic;

pub use access::Access;
pub use broker::{Broker, BrokerConfig, FetchResult, ProduceResult};
pub use error::{BrokerError, ErrorKind, Result};
pub use topic::{CleanupPolicy, DirtyRatio, TopicConfig, TopicId, TopicInfo};

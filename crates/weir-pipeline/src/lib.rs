//! Stream pipelines: sources → transforms → sinks, a DAG declared in TOML (Vector's shape) or
//! assembled in Rust, run inside `weir serve` or by `weir pipeline run`.
//!
//! Layout:
//! - `event.rs` — [`Event`]: a record as read plus its decoded value, and its acknowledgement
//!   share ([`event::Ack`]); dropping an event without acknowledging it fails its read.
//! - `tracker.rs` — the contiguous acknowledged watermark a source commits.
//! - `codec.rs` — decoding at sources and encoding at sinks.
//! - `transform.rs` — the [`Transform`] trait and the typed operators ([`transform::map`],
//!   [`transform::filter`], [`transform::flat_map`]); `vrl.rs` — remap, filter and route on
//!   the `vrl` crate; `ops.rs` — sample, dedupe, throttle, split.
//! - `edge.rs` — bounded input queues between components, fan-out, the dead-letter output.
//! - `pipeline.rs` — [`Builder`] (the graph checked), [`Pipeline`] (runs, restarts with
//!   backoff, status and per-component counters); `stats.rs` — the counters and metrics.
//! - `connect/` — the sources and sinks: weir topics in process, stdin/stdout.
//! - `config.rs` — TOML declarations checked and built onto a [`config::Host`].
//!
//! **Delivery is at least once.** A source commits a position only once every event read
//! before it was acknowledged by every sink that received it (or by the dead-letter output);
//! a best-effort sink acknowledges on receipt, so it never holds back a commit.

pub mod codec;
pub mod config;
pub mod connect;
pub mod edge;
pub mod event;
pub mod manager;
pub mod ops;
pub mod pipeline;
pub mod stats;
pub mod tracker;
pub mod transform;
pub mod vrl;

pub use event::{Event, Record};
pub use pipeline::{Builder, ComponentError, Pipeline, Sink, Source};
pub use transform::{Outputs, Transform};

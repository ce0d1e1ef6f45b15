//! The integration tests of the `weir` binary: the real server on 127.0.0.1:0, driven by real
//! clients (the native client and CLI, kcat, the Python Kafka clients, reqwest, websockets).
//! One test binary with a module per area, so the suite links once.

mod common;

mod acl;
mod auth;
mod cli;
mod compaction;
mod console;
mod flow;
mod http;
mod idempotent;
mod kafka;
mod kafka_admin;
mod kafka_node;
mod kafka_python;
mod metrics;
mod pipelines;
mod push_policies;
mod server;
mod shutdown;
mod tls;
mod traces;

//! Sources and sinks: weir topics through the broker, stdin/stdout, and HTTP ingest.

pub mod file;
pub mod http;
pub mod stdio;
pub mod topic;

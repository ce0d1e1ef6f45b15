//! Sources and sinks: weir topics through the broker, and stdin/stdout.

pub mod stdio;
pub mod topic;

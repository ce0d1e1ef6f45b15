//! `weir-flow`'s integration tests, one binary with a module per primitive (the Redis
//! limiter's against a real `redis-server` started on 127.0.0.1).

mod adaptive;
mod breaker;
mod keyed;
mod limiters;
mod pool;
mod queue;
#[cfg(feature = "redis")]
mod redis;

//! `weir-log`'s integration tests, one binary: the API (`basic`), damaged files on the real
//! file system (`damage`), and model-based property tests with simulated crashes and
//! injected I/O errors (`model`).

mod common;

mod basic;
mod compact;
mod damage;
mod model;

//! A pipeline written in Rust: JSON log lines on stdin, the errors kept and tagged, written to
//! stdout; lines that are not JSON go to a dead-letter stdout with the reason.
//!
//! ```sh
//! printf '{"level":"error","msg":"disk"}\n{"level":"info","msg":"ok"}\nnope\n' \
//!   | cargo run -p weir-pipeline --example levels
//! ```

use tokio_util::sync::CancellationToken;
use vrl::value::Value;
use weir_pipeline::Builder;
use weir_pipeline::codec::{Decoding, Encoding};
use weir_pipeline::connect::stdio::{StdinSource, StdoutSink};
use weir_pipeline::transform::{filter, map};

#[tokio::main]
async fn main() {
    let pipeline = Builder::new("levels")
        .source(
            "lines",
            StdinSource {
                decoding: Decoding::Json,
            },
        )
        .transform("errors", &["lines"], || {
            filter(|e| {
                let level = e.value.as_object().and_then(|m| m.get("level"));
                level.and_then(|l| l.to_str_lossy()).as_deref() == Some("error")
            })
        })
        .transform("tag", &["errors"], || {
            map(|e| {
                let m = e.value.as_object_mut().ok_or("not an object")?;
                m.insert("pager".into(), Value::from(true));
                Ok(())
            })
        })
        .sink(
            "out",
            &["tag"],
            StdoutSink {
                encoding: Encoding::Json,
                raw: false,
            },
        )
        .dead_letter(StdoutSink {
            encoding: Encoding::Bytes,
            raw: true,
        })
        .build()
        .expect("a valid graph");
    // Runs until stdin ends and every line was written.
    pipeline.run(CancellationToken::new()).await;
    eprintln!("{:?}", pipeline.status().state);
}

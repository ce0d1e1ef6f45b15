//! `weir produce TOPIC`: one record per line of standard input or a file.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use weir_client::producer::Record;
use weir_client::{Client, Producer, ProducerConfig};

use crate::Conn;

#[derive(clap::Args)]
pub struct Args {
    topic: String,
    #[command(flatten)]
    conn: Conn,
    /// Read lines from this file instead of standard input (shows a progress bar).
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// The key of every record.
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header for every record, as name=value (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Write to this partition instead of routing by key.
    #[arg(long)]
    partition: Option<u32>,
    /// How long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Send a batch once it holds this many bytes.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Do not wait for acknowledgements.
    #[arg(long)]
    no_ack: bool,
    /// Compress each batch's records: none, gzip, snappy, lz4 or zstd (readable by every
    /// door and by Kafka clients).
    #[arg(long, default_value = "none", value_parser = parse_codec)]
    compression: weir_batch::Compression,
}

/// A codec name as `--compression` takes it.
pub fn parse_codec(s: &str) -> std::result::Result<weir_batch::Compression, String> {
    use weir_batch::Compression as C;
    Ok(match s {
        "none" => C::None,
        "gzip" => C::Gzip,
        "snappy" => C::Snappy,
        "lz4" => C::Lz4,
        "zstd" => C::Zstd,
        other => {
            return Err(format!(
                "{other:?} is not a codec: none, gzip, snappy, lz4 or zstd"
            ));
        }
    })
}

pub async fn run(args: Args) -> Result<()> {
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once('=') else {
            bail!("--header {h:?} is not name=value")
        };
        headers.push((k.to_string(), Some(Bytes::from(v.to_string()))));
    }
    // With OTEL_EXPORTER_OTLP_ENDPOINT set, this run is a span and every record carries its
    // traceparent (unless the user gave one).
    let trace = if headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
    {
        None
    } else {
        crate::otel::start_produce(&args.topic)
    };
    if let Some((_, tp)) = &trace {
        headers.push(("traceparent".to_string(), Some(Bytes::from(tp.clone()))));
    }
    let client = Client::connect(&args.conn.addr, "weir-cli").await?;
    let producer = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::from_millis(args.linger_ms),
            batch_bytes: args.batch_bytes,
            no_ack: args.no_ack,
            compression: args.compression,
            ..ProducerConfig::default()
        },
    );
    let (reader, progress): (Box<dyn BufRead + Send>, Option<indicatif::ProgressBar>) =
        match &args.file {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let len = file.metadata()?.len();
                let bar = indicatif::ProgressBar::new(len);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template"),
                );
                (
                    Box::new(std::io::BufReader::new(bar.wrap_read(file))),
                    Some(bar),
                )
            }
            None => (Box::new(std::io::BufReader::new(std::io::stdin())), None),
        };
    // Lines are read on a blocking thread and handed over in chunks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<String>>(16);
    let reading = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut chunk = Vec::with_capacity(1024);
        for line in reader.lines() {
            chunk.push(line.context("reading input")?);
            if chunk.len() == 1024 && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    let mut pending = VecDeque::new();
    let mut sent = 0u64;
    while let Some(lines) = rx.recv().await {
        for line in lines {
            let (key, value) = match (&args.key, &args.key_separator) {
                (Some(k), _) => (Some(Bytes::from(k.clone())), line),
                (None, Some(sep)) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                    None => (None, line),
                },
                (None, None) => (None, line),
            };
            let record = Record {
                topic: args.topic.clone(),
                partition: args.partition,
                key,
                value: Some(Bytes::from(value)),
                headers: headers.clone(),
                timestamp: None,
            };
            pending.push_back(producer.send(record).await?);
            sent += 1;
            // Surface failures early and keep the list of waiting acks short.
            while pending.len() > 100_000 {
                let ack = pending.pop_front().expect("non-empty");
                ack.await.context("producer stopped")??;
            }
        }
    }
    reading.await??;
    producer.flush().await?;
    for ack in pending {
        ack.await.context("producer stopped")??;
    }
    if let Some(bar) = progress {
        bar.finish();
    }
    eprintln!("produced {sent} records to {}", args.topic);
    if let Some((mut span, _)) = trace {
        use opentelemetry::trace::Span as _;
        span.set_attribute(opentelemetry::KeyValue::new(
            "messaging.batch.message_count",
            sent as i64,
        ));
        span.end();
    }
    Ok(())
}

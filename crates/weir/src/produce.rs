//! `weir produce TOPIC`: one record per line of standard input or a file.

use std::collections::VecDeque;
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use weir_client::producer::Record;
use weir_client::{Producer, ProducerConfig};

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
    let client = args.conn.connect("weir-cli").await?;
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
    let (input, progress): (Box<dyn Read + Send>, Option<indicatif::ProgressBar>) = match &args.file
    {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let len = file.metadata()?.len();
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            (Box::new(bar.wrap_read(file)), Some(bar))
        }
        None => (Box::new(std::io::stdin()), None),
    };
    // Lines are read on a blocking thread and handed over in chunks of up to 1,024, and
    // whenever the input has nothing more buffered: `tail -f app.log | weir produce logs`
    // sends each line as it comes (the producer's linger then bounds its wait), where waiting
    // for a full chunk could hold slow input for good.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<String>>(16);
    // A thread of its own, not the runtime's blocking pool: after a failure the run ends
    // without waiting for input that may never come (a pipe left open).
    let reading = std::thread::spawn(move || -> Result<()> {
        let mut reader = std::io::BufReader::new(input);
        let mut chunk = Vec::with_capacity(1024);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).context("reading input")? == 0 {
                break;
            }
            if line.ends_with('\n') {
                line.pop();
                if line.ends_with('\r') {
                    line.pop();
                }
            }
            chunk.push(line);
            if (chunk.len() == 1024 || reader.buffer().is_empty())
                && tx.blocking_send(std::mem::take(&mut chunk)).is_err()
            {
                // The sender stopped (a batch failed for good): read no more.
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    // Acknowledgements not yet taken, with the number of the line each is for.
    let mut pending = VecDeque::new();
    let mut sent = 0u64;
    let mut acked = 0u64;
    // The first line that failed for good, and why: the run stops reading there.
    let mut failure: Option<(u64, anyhow::Error)> = None;
    'input: while let Some(lines) = rx.recv().await {
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
            sent += 1;
            match producer.send(record).await {
                Ok(ack) => pending.push_back((sent, ack)),
                Err(e) => {
                    failure = Some((sent, e.into()));
                    break 'input;
                }
            }
            // Acknowledgements that arrived, in order: a failure stops the run at once, so
            // no more input is read past it. The list of waiting ones stays short.
            loop {
                use tokio::sync::oneshot::error::TryRecvError;
                let many = pending.len() > 100_000;
                let Some((n, front)) = pending.front_mut() else {
                    break;
                };
                let n = *n;
                let answer: Result<_> = if many {
                    front.await.context("producer stopped")
                } else {
                    match front.try_recv() {
                        Err(TryRecvError::Empty) => break,
                        Ok(a) => Ok(a),
                        Err(TryRecvError::Closed) => Err(anyhow::anyhow!("producer stopped")),
                    }
                };
                pending.pop_front();
                match answer.and_then(|a| a.map_err(anyhow::Error::from)) {
                    Ok(_) => acked += 1,
                    Err(e) => {
                        failure = Some((n, e));
                        break 'input;
                    }
                }
            }
        }
    }
    // Stop reading (a reader blocked on open input is left behind: the process ends).
    drop(rx);
    if failure.is_none() {
        reading
            .join()
            .map_err(|_| anyhow::anyhow!("the input reader panicked"))??;
    }
    // What is under way settles either way: after a failure, so that the count of lines
    // written is the truth (lines sent after the failed one may have been written).
    if let Err(e) = producer.flush().await
        && failure.is_none()
    {
        failure = Some((sent, e.into()));
    }
    for (n, ack) in pending {
        match ack
            .await
            .context("producer stopped")
            .and_then(|a| a.map_err(anyhow::Error::from))
        {
            Ok(_) => acked += 1,
            Err(e) => {
                if failure.is_none() {
                    failure = Some((n, e));
                }
            }
        }
    }
    if let Some((line, e)) = failure {
        return Err(e.context(format!(
            "line {line} could not be written to {}; stopped there: {acked} of the {sent} \
             lines read were written, {} were not",
            args.topic,
            sent - acked
        )));
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

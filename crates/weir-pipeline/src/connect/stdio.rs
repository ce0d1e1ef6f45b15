//! stdin and stdout, for `weir pipeline run`: one event per line.
//!
//! stdin has no position to commit: at end of file the source waits until every line it
//! read was acknowledged (written by every sink, or sent to the dead-letter output), so the
//! run ends only once its output is complete.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::codec::{Decoding, Encoding};
use crate::connect::topic::{Batching, gather};
use crate::edge::BATCH_EVENTS;
use crate::event::{AckBatch, Event, Origin, Record};
use crate::pipeline::{ComponentError, Sink, SinkContext, Source, SourceContext};
use crate::tracker::Tracker;

/// Most bytes in one line; a longer line is an error.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads lines from stdin.
#[derive(Debug, Clone, Default)]
pub struct StdinSource {
    pub decoding: Decoding,
}

impl Source for StdinSource {
    fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        let decoding = self.decoding.clone();
        Box::pin(async move { read_lines(tokio::io::stdin(), "stdin", decoding, ctx).await })
    }
}

/// Reads lines from `input` until its end or the stop, sending one event per line, then waits
/// for them to be acknowledged.
pub(crate) async fn read_lines(
    input: impl tokio::io::AsyncRead + Unpin,
    name: &str,
    decoding: Decoding,
    ctx: SourceContext,
) -> Result<(), ComponentError> {
    let stream: Arc<str> = name.into();
    let mut reader = BufReader::with_capacity(64 << 10, input);
    let mut tracker = Tracker::new(0);
    let mut position = 0u64;
    let mut line = Vec::new();
    let mut done = false;
    // CSV without declared columns: the first line is the header.
    let mut header: Option<Vec<String>> = None;
    while !done {
        let mut events = Vec::with_capacity(BATCH_EVENTS);
        let mut failed = Vec::new();
        let ack = AckBatch::new();
        while events.len() + failed.len() < BATCH_EVENTS {
            line.clear();
            let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64 + 1);
            let read = tokio::select! {
                r = limited.read_until(b'\n', &mut line) => r,
                _ = ctx.stop.cancelled() => { done = true; break; }
            };
            let n = read.map_err(|e| ComponentError(format!("reading {name}: {e}")))?;
            if n == 0 {
                done = true;
                break;
            }
            let at = position;
            position += n as u64;
            if line.len() > MAX_LINE_BYTES && !line.ends_with(b"\n") {
                return Err(ComponentError(format!(
                    "{name}: a line at byte {at} is longer than {MAX_LINE_BYTES} bytes"
                )));
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.is_empty() {
                continue;
            }
            if decoding.needs_header() && header.is_none() {
                header = Some(
                    decoding
                        .header(text)
                        .map_err(|e| ComponentError(format!("{name}: the CSV header: {}", e.0)))?,
                );
                continue;
            }
            let record = Record {
                value: Some(Bytes::copy_from_slice(text)),
                timestamp: crate::event::now_ms(),
                origin: Some(Origin {
                    stream: stream.clone(),
                    partition: 0,
                    offset: at,
                }),
                ..Record::default()
            };
            let share = ack.share();
            match decoding.decode_with(record.value.as_ref(), header.as_deref()) {
                Ok(v) => events.push(Event::new(record, v, share)),
                Err(e) => failed.push((Event::new(record, vrl::value::Value::Null, share), e.0)),
            }
            // A pipe that has nothing more buffered: send what was read now.
            if reader.buffer().is_empty() {
                break;
            }
        }
        tracker.push(position, ack);
        ctx.stats.received((events.len() + failed.len()) as u64);
        if !failed.is_empty() {
            ctx.stats.errors(failed.len() as u64);
            ctx.dead.send_all(failed, &ctx.component).await;
        }
        if !events.is_empty() {
            ctx.out.send(events).await;
        }
        tracker.advance().map_err(lost)?;
    }
    while !tracker.is_idle() && !ctx.kill.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = ctx.kill.cancelled() => {}
        }
        tracker.advance().map_err(lost)?;
    }
    Ok(())
}

fn lost(l: crate::tracker::Lost) -> ComponentError {
    ComponentError(format!(
        "input from byte {} was not delivered (the pipeline stopped before it was written)",
        l.position
    ))
}

/// Writes one event per line to stdout.
#[derive(Debug, Clone, Default)]
pub struct StdoutSink {
    pub encoding: Encoding,
    /// Writes each record's original value (a dead-letter output).
    pub raw: bool,
}

impl Sink for StdoutSink {
    fn run(&self, ctx: SinkContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        let me = self.clone();
        Box::pin(async move { write_lines(tokio::io::stdout(), &me.encoding, me.raw, ctx).await })
    }
}

/// Encodes each event as a line into `buf` (each record's original value when `raw`): the
/// events written, and those that failed (an encoding error, or a newline in the encoding).
pub(crate) fn encode_lines(
    events: Vec<Event>,
    encoding: &Encoding,
    raw: bool,
    buf: &mut Vec<u8>,
) -> (Vec<Event>, Vec<(Event, String)>) {
    let mut written = Vec::with_capacity(events.len());
    let mut failed = Vec::new();
    for e in events {
        let mark = buf.len();
        let r = if raw {
            buf.extend_from_slice(e.record.value.as_deref().unwrap_or_default());
            Ok(())
        } else {
            encoding.encode(&e.value, buf)
        };
        match r {
            Ok(()) if buf[mark..].contains(&b'\n') => {
                buf.truncate(mark);
                failed.push((e, "the encoded event holds a newline".to_string()));
            }
            Ok(()) => {
                buf.push(b'\n');
                written.push(e);
            }
            Err(err) => {
                buf.truncate(mark);
                failed.push((e, err.0));
            }
        }
    }
    (written, failed)
}

/// Writes each event as a line to `out`, acknowledging once flushed.
pub(crate) async fn write_lines(
    mut out: impl tokio::io::AsyncWrite + Unpin,
    encoding: &Encoding,
    raw: bool,
    ctx: SinkContext,
) -> Result<(), ComponentError> {
    let batching = Batching {
        linger_ms: 0,
        ..Batching::default()
    };
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(events) = gather(&ctx, &batching).await {
        buf.clear();
        let (written, failed) = encode_lines(events, encoding, raw, &mut buf);
        out.write_all(&buf)
            .await
            .map_err(|e| ComponentError(format!("writing: {e}")))?;
        out.flush()
            .await
            .map_err(|e| ComponentError(format!("writing: {e}")))?;
        ctx.stats.sent(written.len() as u64);
        written.into_iter().for_each(Event::ack);
        if !failed.is_empty() {
            ctx.stats.errors(failed.len() as u64);
            ctx.dead.send_all(failed, &ctx.component).await;
        }
    }
    Ok(())
}

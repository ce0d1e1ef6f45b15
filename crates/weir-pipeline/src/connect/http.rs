//! The HTTP source: `POST /pipelines/NAME/ingest` on the server's HTTP door.
//!
//! A request's body is one event per line (decoded by the source's codec). The request is
//! answered once every event was acknowledged (written by every sink, or taken by the
//! dead-letter output), so a 200 means delivered and a client retries anything else. When the
//! pipeline cannot take more (its first queue is full) the request is refused at once with
//! 429 and a Retry-After, rather than held: backpressure reaches the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::codec::Decoding;
use crate::event::{AckBatch, Event, Origin, Record};
use crate::pipeline::{ComponentError, Source, SourceContext};

/// Most lines in one ingest request.
pub const MAX_LINES: usize = 100_000;

/// How long a request waits for its events to be delivered before it is answered 504.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the HTTP door hands requests to a running HTTP source.
#[derive(Debug, Default)]
pub struct IngestPoint {
    live: Mutex<Option<Arc<SourceContext>>>,
    decoding: Decoding,
}

/// Why an ingest request was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the pipeline is not running")]
    NotRunning,
    #[error("the pipeline is busy (its input queue is full); retry after a second")]
    Busy,
    #[error("{0}")]
    BadRequest(String),
    #[error("the events were not delivered (the pipeline stopped or failed); retry")]
    NotDelivered,
    #[error(
        "the events were not delivered within {0:?}; they may still be, so a retry may duplicate them"
    )]
    Timeout(Duration),
}

/// What an ingest request delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ingested {
    /// Events written by the pipeline's sinks (or dropped by design on the way).
    pub accepted: usize,
    /// Lines that could not be decoded, sent to the dead-letter output.
    pub dead_lettered: usize,
}

impl IngestPoint {
    pub fn new(decoding: Decoding) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::new(None),
            decoding,
        })
    }

    /// Delivers the lines of `body`.
    pub async fn ingest(&self, body: Bytes) -> Result<Ingested, IngestError> {
        let ctx = self.live.lock().clone().ok_or(IngestError::NotRunning)?;
        if ctx.out.is_full() {
            return Err(IngestError::Busy);
        }
        let lines: Vec<&[u8]> = body
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect();
        if lines.len() > MAX_LINES {
            return Err(IngestError::BadRequest(format!(
                "{} lines; at most {MAX_LINES} per request",
                lines.len()
            )));
        }
        let stream: Arc<str> = "http".into();
        let ack = AckBatch::new();
        let mut events = Vec::with_capacity(lines.len());
        let mut failed = Vec::new();
        let now = crate::event::now_ms();
        for (i, line) in lines.iter().enumerate() {
            let record = Record {
                value: Some(body.slice_ref(line)),
                timestamp: now,
                origin: Some(Origin {
                    stream: stream.clone(),
                    partition: 0,
                    offset: i as u64,
                }),
                ..Record::default()
            };
            let share = ack.share();
            match self.decoding.decode(record.value.as_ref()) {
                Ok(v) => events.push(Event::new(record, v, share)),
                Err(e) => failed.push((Event::new(record, vrl::value::Value::Null, share), e.0)),
            }
        }
        let result = Ingested {
            accepted: events.len(),
            dead_lettered: failed.len(),
        };
        ctx.stats.received((events.len() + failed.len()) as u64);
        if !failed.is_empty() {
            ctx.stats.errors(failed.len() as u64);
            ctx.dead.send_all(failed, &ctx.component).await;
        }
        for chunk in chunked(events) {
            ctx.out.send(chunk).await;
        }
        drop(ctx);
        match tokio::time::timeout(DELIVERY_TIMEOUT, ack.settled()).await {
            Ok(true) => Ok(result),
            Ok(false) => Err(IngestError::NotDelivered),
            Err(_) => Err(IngestError::Timeout(DELIVERY_TIMEOUT)),
        }
    }
}

fn chunked(mut events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut out = Vec::new();
    while events.len() > crate::edge::BATCH_EVENTS {
        let rest = events.split_off(crate::edge::BATCH_EVENTS);
        out.push(std::mem::replace(&mut events, rest));
    }
    if !events.is_empty() {
        out.push(events);
    }
    out
}

/// The source: serves its ingest point while the pipeline runs.
#[derive(Debug, Clone)]
pub struct HttpSource {
    pub point: Arc<IngestPoint>,
}

impl Source for HttpSource {
    fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        let point = self.point.clone();
        Box::pin(async move {
            let ctx = Arc::new(ctx);
            *point.live.lock() = Some(ctx.clone());
            tokio::select! {
                _ = ctx.stop.cancelled() => {}
                _ = ctx.kill.cancelled() => {}
            }
            // New requests are refused; those under way finish with their own handle.
            point.live.lock().take();
            Ok(())
        })
    }
}

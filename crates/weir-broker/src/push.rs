//! Push subscriptions with credit-based flow control (Reactive Streams `request(n)`).
//!
//! The consumer grants credit in records and bytes; a [`PushCursor`] hands out whole batches
//! only while both credits cover them, and never more. A batch is never split, so a consumer
//! must grant at least one batch's worth; when the next batch does not fit, the cursor says
//! what it needs ([`PushStep::NeedCredit`]) and waits for more.
//!
//! A cursor opened with [`PushCursor::snapshot`] first hands out a compacted topic's snapshot
//! (each key's latest record, batches cut down to them), then [`PushStep::SnapshotEnd`], then
//! the live records from where the snapshot ends, under the same credit.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::watch;

use std::sync::Arc;

use crate::access::{Access, Operation, ResourceType};
use crate::broker::Broker;
use crate::error::{BrokerError, Result};

/// Most bytes read from the log per step.
const READ_BYTES: u64 = 1 << 20;

/// One step of a subscription.
#[derive(Debug)]
pub enum PushStep {
    /// Batches to send, their record and byte counts already taken from the credit.
    Data {
        batches: Vec<Bytes>,
        records: u64,
        bytes: u64,
        high_watermark: u64,
    },
    /// The next batch needs this much credit; nothing is sent until it is granted.
    NeedCredit { records: u64, bytes: u64 },
    /// The snapshot is delivered; live records follow from `live_from`.
    SnapshotEnd { live_from: u64 },
}

/// The position and credit of one subscription to one partition.
#[derive(Debug)]
pub struct PushCursor {
    broker: Broker,
    topic: String,
    partition: u32,
    next: u64,
    credit_records: u64,
    credit_bytes: u64,
    hwm: watch::Receiver<u64>,
    incarnation: Option<u64>,
    /// A snapshot still being delivered, and its batches read but not yet handed out.
    snapshot: Option<(crate::keys::SnapshotReader, VecDeque<Bytes>)>,
    /// Who reads, asked again before every step: rules changed under an open subscription
    /// end it once they no longer let its reader read the topic.
    access: Option<Arc<Access>>,
}

impl PushCursor {
    /// A cursor at `start` with no credit yet.
    pub fn new(broker: Broker, topic: &str, partition: u32, start: u64) -> Result<Self> {
        let hwm = broker.watch_high_watermark(topic, partition)?;
        let incarnation = broker.topic_incarnation(topic);
        Ok(Self {
            incarnation,
            broker,
            topic: topic.to_string(),
            partition,
            next: start,
            credit_records: 0,
            credit_bytes: 0,
            hwm,
            snapshot: None,
            access: None,
        })
    }

    /// A cursor that delivers a snapshot of compacted topic `topic` first (see
    /// `Broker::snapshot`). Its position is where the snapshot is read from; `live_from` says
    /// where the live records start.
    pub async fn snapshot(broker: Broker, topic: &str, partition: u32) -> Result<Self> {
        let plan = broker.snapshot(topic, partition, None).await?;
        let mut cursor = Self::new(broker, topic, partition, plan.end())?;
        if let Some(first) = plan.next_offset() {
            cursor.next = first;
        }
        cursor.snapshot = Some((plan, VecDeque::new()));
        Ok(cursor)
    }

    /// Checks `access` before every step from now on: once it may no longer read the topic,
    /// [`Self::next`] refuses with [`BrokerError::NotAuthorized`].
    pub fn with_access(mut self, access: Arc<Access>) -> Self {
        self.access = access.is_checked().then_some(access);
        self
    }

    fn check_access(&self) -> Result<()> {
        match &self.access {
            Some(a) => a.check(Operation::Read, ResourceType::Topic, &self.topic),
            None => Ok(()),
        }
    }

    /// Where live records start: the position, or a snapshot's end while one is delivered.
    pub fn live_from(&self) -> u64 {
        self.snapshot
            .as_ref()
            .map_or(self.next, |(plan, _)| plan.end())
    }

    /// Adds credit.
    pub fn grant(&mut self, records: u64, bytes: u64) {
        self.credit_records = self.credit_records.saturating_add(records);
        self.credit_bytes = self.credit_bytes.saturating_add(bytes);
    }

    /// Remaining credit (records, bytes).
    pub fn credit(&self) -> (u64, u64) {
        (self.credit_records, self.credit_bytes)
    }

    /// The next offset to deliver.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Waits for data and returns what the credit allows. Cancel-safe: nothing is consumed
    /// until it returns.
    pub async fn next(&mut self) -> Result<PushStep> {
        self.check_access()?;
        if self.snapshot.is_some() {
            return self.next_of_snapshot().await;
        }
        loop {
            // Deleted, or deleted and created again: either way not the stream subscribed to.
            if self.broker.topic_incarnation(&self.topic) != self.incarnation {
                return Err(BrokerError::UnknownTopic(self.topic.clone()));
            }
            self.hwm.borrow_and_update();
            let max = self.credit_bytes.clamp(1, READ_BYTES) as usize;
            let r = self
                .broker
                .read_at(&self.topic, self.partition, self.next, max)
                .await?;
            if r.is_empty() {
                if self.hwm.changed().await.is_err() {
                    return Err(BrokerError::ShuttingDown);
                }
                // Records arrived: the reader may have lost its right while it waited.
                self.check_access()?;
                continue;
            }
            let mut batches = Vec::new();
            let (mut records, mut bytes) = (0u64, 0u64);
            let mut next = self.next;
            'chunks: for chunk in &r.chunks {
                let mut at = 0;
                while at < chunk.len() {
                    let h = weir_batch::peek(&chunk[at..]).map_err(|e| {
                        BrokerError::InvalidRequest(format!("stored batch unreadable: {e}"))
                    })?;
                    let len = h.total_len();
                    let n = u64::from(h.last_offset_delta.max(0) as u32) + 1;
                    if records + n > self.credit_records || bytes + len as u64 > self.credit_bytes {
                        if batches.is_empty() {
                            return Ok(PushStep::NeedCredit {
                                records: n,
                                bytes: len as u64,
                            });
                        }
                        break 'chunks;
                    }
                    batches.push(chunk.slice(at..at + len));
                    records += n;
                    bytes += len as u64;
                    next = h.next_offset() as u64;
                    at += len;
                }
            }
            self.credit_records -= records;
            self.credit_bytes -= bytes;
            self.next = next;
            return Ok(PushStep::Data {
                batches,
                records,
                bytes,
                high_watermark: r.high_watermark,
            });
        }
    }

    /// The next step of the snapshot phase: batches within the credit, or the end marker.
    async fn next_of_snapshot(&mut self) -> Result<PushStep> {
        let Some((plan, pending)) = self.snapshot.as_mut() else {
            return Err(BrokerError::Internal("no snapshot".into()));
        };
        if pending.is_empty() {
            let max = self.credit_bytes.clamp(1, READ_BYTES) as usize;
            pending.extend(
                self.broker
                    .read_snapshot(&self.topic, self.partition, plan, max)
                    .await?,
            );
            if pending.is_empty() {
                let live_from = plan.end();
                self.next = live_from;
                self.snapshot = None;
                return Ok(PushStep::SnapshotEnd { live_from });
            }
        }
        let mut batches = Vec::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        while let Some(b) = pending.front() {
            let h = weir_batch::peek(b).map_err(|e| {
                BrokerError::InvalidRequest(format!("stored batch unreadable: {e}"))
            })?;
            // Counted as a whole batch's offsets, as for live batches (and as clients count).
            let n = u64::from(h.last_offset_delta.max(0) as u32) + 1;
            let len = b.len() as u64;
            if records + n > self.credit_records || bytes + len > self.credit_bytes {
                if batches.is_empty() {
                    return Ok(PushStep::NeedCredit {
                        records: n,
                        bytes: len,
                    });
                }
                break;
            }
            records += n;
            bytes += len;
            self.next = h.next_offset() as u64;
            batches.extend(pending.pop_front());
        }
        self.credit_records -= records;
        self.credit_bytes -= bytes;
        Ok(PushStep::Data {
            batches,
            records,
            bytes,
            high_watermark: *self.hwm.borrow(),
        })
    }
}

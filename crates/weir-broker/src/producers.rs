//! Idempotent producers: producer ids, and per-partition sequence checks so that a retried
//! batch is not written twice and a lost one is noticed. One state serves every door (a
//! batch's producer id, epoch and sequence are fields of the record batch itself).
//!
//! For each (producer id, topic, partition) the broker keeps the producer's epoch, the
//! sequence number of the last record written, and the last five batches' sequence ranges
//! with their offsets (a producer has at most five requests in flight). A batch is then:
//! - the next one (its first sequence follows the last written): appended;
//! - one of the last five again (a retry whose first answer was lost): not appended, answered
//!   with the offset it was written at;
//! - anything else: `OUT_OF_ORDER_SEQUENCE_NUMBER`, and nothing is written; an older epoch
//!   gets `INVALID_PRODUCER_EPOCH`.
//!
//! A batch is recorded as soon as it is written, before its sync: the next batch of the same
//! producer can then be written while the first one's sync is under way. A retry that arrives
//! meanwhile is answered only once the first write is durable (see
//! [`Producers::check_durable`]); if that write fails, its record and those of the batches
//! after it are undone ([`Producers::rollback`]), so the producer must resend from the failed
//! batch, and the retry is written again. Between the failed sync (which drops every unsynced
//! batch from the log) and that undoing, the producer's next batch could otherwise be written
//! in the dropped one's place and acknowledged ahead of the resent one: a batch that follows
//! one still awaiting its sync is therefore written only if the log has dropped nothing since
//! ([`Check::Append`]), and is refused with a retriable error otherwise.
//!
//! The state lives in memory. After a restart, a partition's states are rebuilt from the
//! batch headers of the last [`RESTORE_SCAN_BYTES`] of its log before it takes its first
//! idempotent batch (`Broker::restore_producers`, called by `Broker::produce_sequenced`): a
//! producer's batches under way when the server stopped were written last, so a retry that
//! straddles a restart is recognised. Producer ids start from the clock times 2^20, so a new
//! process does not hand out the ids whose states it restores. Limits, on purpose: a producer
//! none of whose batches lie in that tail, or not among the [`MAX_RESTORED`] most recently
//! seen there, is unknown, and its first batch is accepted whatever its sequence. At most
//! [`MAX_STATES`] partitions' states are kept; beyond that the least recently used hundredth
//! is forgotten, with the same consequence for those producers (restored states take no
//! state's place at the cap). Deleting a topic forgets its states; a restore under way then
//! restores nothing, and a batch whose append raced the deletion records nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use weir_batch::BatchHeader;

use crate::{Broker, BrokerError, ProduceResult};

/// Most (producer, partition) states kept.
pub const MAX_STATES: usize = 100_000;
/// How much of a partition's log, from its end, is read to rebuild its producers' states
/// after a restart.
pub const RESTORE_SCAN_BYTES: u64 = 64 << 20;
/// Batches remembered per (producer, partition) for duplicate detection.
const RECENT: usize = 5;
/// Most producers restored per partition after a restart: the most recently seen in the log.
pub const MAX_RESTORED: usize = 1_000;

/// What the end of a partition's log says of its idempotent producers, gathered batch by
/// batch (oldest first) for [`Producers::restore`]: per producer, its latest epoch's last
/// batches there. Memory stays bounded however many batches the scan meets: up to
/// `2 * MAX_RESTORED` producers are kept, pruned to the most recent half when full.
#[derive(Debug, Default)]
pub struct Restored {
    producers: HashMap<i64, (u64, VecDeque<BatchHeader>)>,
    seen: u64,
}

impl Restored {
    /// Takes the next batch's header; batches without a producer id change nothing.
    pub fn add(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 || h.producer_epoch < 0 || h.base_sequence < 0 {
            return;
        }
        self.seen += 1;
        if self.producers.len() >= 2 * MAX_RESTORED && !self.producers.contains_key(&h.producer_id)
        {
            let mut seen: Vec<u64> = self.producers.values().map(|(s, _)| *s).collect();
            let (_, oldest_kept, _) = seen.select_nth_unstable(MAX_RESTORED);
            let oldest_kept = *oldest_kept;
            self.producers.retain(|_, (s, _)| *s >= oldest_kept);
        }
        let (seen, batches) = self.producers.entry(h.producer_id).or_default();
        match batches.back().map(|b| b.producer_epoch) {
            // A newer epoch of this producer was written after it: a stray older batch.
            Some(epoch) if h.producer_epoch < epoch => return,
            Some(epoch) if h.producer_epoch > epoch => batches.clear(),
            _ => {}
        }
        *seen = self.seen;
        if batches.len() == RECENT {
            batches.pop_front();
        }
        batches.push_back(*h);
    }
}

#[derive(Debug)]
struct State {
    epoch: i16,
    last_sequence: i32,
    /// The latest batches, oldest first.
    recent: VecDeque<Recent>,
    used: Instant,
}

#[derive(Debug)]
struct Recent {
    epoch: i16,
    first: i32,
    last: i32,
    base_offset: u64,
    /// The log's count of dropped writes when the batch was written.
    truncations: u64,
    durable: Arc<Durable>,
}

/// Whether a recorded batch's write became durable: `None` while it awaits its sync. The
/// writer sends the outcome; a retry of the batch waits for it.
pub type Durable = watch::Sender<Option<bool>>;

/// Tells a batch's waiters its write failed, unless an outcome was sent already.
pub fn fail_unless_settled(durable: &Durable) {
    durable.send_if_modified(|v| {
        let unset = v.is_none();
        if unset {
            *v = Some(false);
        }
        unset
    });
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not idempotent, or in sequence: append it; with `Some(t)`, only if the log has dropped
    /// no write since it reported `t` (the producer's previous batch awaits its sync, and a
    /// failed sync would drop it: this one must not take its place, see
    /// `Broker::produce_start_unless_truncated`).
    Append(Option<u64>),
    /// Already written at this base offset: answer with it, append nothing.
    Duplicate(u64),
    /// Refuse it, for this reason.
    Refuse(Refusal),
}

/// Why a batch of an idempotent producer is refused; each door has its error code for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A producer id with a negative epoch or sequence.
    InvalidRecord,
    /// An epoch older than one already seen (a newer instance of the producer took over).
    InvalidEpoch,
    /// Not the next sequence number, nor one of the last batches again: something between
    /// the last batch written and this one is missing.
    OutOfOrder,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidRecord => "a producer id needs a non-negative epoch and sequence",
            Refusal::InvalidEpoch => "an older epoch than the producer's latest",
            Refusal::OutOfOrder => "not the sequence number that follows the last batch written",
        }
    }
}

/// Producer ids and sequence state of one broker.
#[derive(Debug)]
pub struct Producers {
    next_id: AtomicI64,
    states: Mutex<HashMap<(i64, String, u32), State>>,
    /// Striped locks that make check, append and record one step per (producer, partition).
    stripes: Vec<tokio::sync::Mutex<()>>,
}

/// Number of lock stripes: producers hashing to the same stripe wait for each other only
/// while one appends.
const STRIPES: usize = 256;

impl Default for Producers {
    fn default() -> Self {
        Self::new()
    }
}

/// The sequence after `last`; sequences wrap from `i32::MAX` to 0.
fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX { 0 } else { last + 1 }
}

/// Last sequence number of a batch.
fn last_sequence(h: &BatchHeader) -> i32 {
    let n = h.record_count.max(1) - 1;
    match h.base_sequence.checked_add(n) {
        Some(s) => s,
        // Wrapped past i32::MAX.
        None => n - (i32::MAX - h.base_sequence) - 1,
    }
}

impl Producers {
    pub fn new() -> Self {
        // Ids start at the wall clock in milliseconds times 2^20, so that ids handed out after
        // a restart do not collide with those of the process before it (which would have had
        // to hand out over a million ids per millisecond it ran), whose producers may still be
        // running and whose states are restored from the log.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| (d.as_millis() as i64) << 20);
        Self {
            next_id: AtomicI64::new(start),
            states: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Holds the lock of `producer_id`'s (topic, partition) stripe; `None` for batches of
    /// producers that are not idempotent (no id), which need no ordering.
    pub async fn serialize(
        &self,
        producer_id: i64,
        topic: &str,
        partition: u32,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if producer_id < 0 {
            return None;
        }
        let h = std::hash::BuildHasher::hash_one(
            &std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default(),
            (producer_id, topic, partition),
        );
        Some(self.stripes[h as usize % STRIPES].lock().await)
    }

    /// The idempotent producers known on a partition: id, epoch and last sequence written,
    /// by id. (Kafka's DescribeProducers; a scan of every producer's state, for admin use.)
    pub fn active(&self, topic: &str, partition: u32) -> Vec<(i64, i16, i32)> {
        let mut found: Vec<(i64, i16, i32)> = self
            .states
            .lock()
            .iter()
            .filter(|((_, t, p), _)| t == topic && *p == partition)
            .map(|((id, _, _), st)| (*id, st.epoch, st.last_sequence))
            .collect();
        found.sort_unstable();
        found
    }

    /// A new producer id (epoch 0).
    pub fn init(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks a batch before it is appended.
    pub fn check(&self, topic: &str, partition: u32, h: &BatchHeader) -> Check {
        self.check_durable(topic, partition, h).0
    }

    /// [`Producers::check`], and for a duplicate the outcome of the first write (looked up
    /// under the same lock), to wait on before the retry is answered.
    pub fn check_durable(
        &self,
        topic: &str,
        partition: u32,
        h: &BatchHeader,
    ) -> (Check, Option<watch::Receiver<Option<bool>>>) {
        if h.producer_id < 0 {
            return (Check::Append(None), None);
        }
        if h.producer_epoch < 0 || h.base_sequence < 0 {
            return (Check::Refuse(Refusal::InvalidRecord), None);
        }
        let mut states = self.states.lock();
        let Some(s) = states.get_mut(&(h.producer_id, topic.to_string(), partition)) else {
            return (Check::Append(None), None);
        };
        s.used = Instant::now();
        if h.producer_epoch < s.epoch {
            return (Check::Refuse(Refusal::InvalidEpoch), None);
        }
        if h.producer_epoch > s.epoch {
            return if h.base_sequence == 0 {
                (Check::Append(None), None)
            } else {
                (Check::Refuse(Refusal::OutOfOrder), None)
            };
        }
        let last = last_sequence(h);
        if let Some(r) = s
            .recent
            .iter()
            .find(|r| r.first == h.base_sequence && r.last == last)
        {
            return (Check::Duplicate(r.base_offset), Some(r.durable.subscribe()));
        }
        if h.base_sequence == next_sequence(s.last_sequence) {
            let unsettled = s
                .recent
                .back()
                .filter(|r| *r.durable.borrow() != Some(true))
                .map(|r| r.truncations);
            (Check::Append(unsettled), None)
        } else {
            (Check::Refuse(Refusal::OutOfOrder), None)
        }
    }

    /// Undoes the record of a batch whose write failed (its sync failed and the log dropped
    /// it), and of every batch recorded after it: the producer's next batch must again be
    /// the failed one. Call it under the producer-partition's lock
    /// ([`Producers::serialize`]). A batch no longer recorded (an earlier failure undid it)
    /// changes nothing.
    pub fn rollback(&self, topic: &str, partition: u32, h: &BatchHeader) {
        let mut states = self.states.lock();
        let Some(s) = states.get_mut(&(h.producer_id, topic.to_string(), partition)) else {
            return;
        };
        let last = last_sequence(h);
        // The epoch too: after an epoch bump, the same sequence numbers name other batches.
        let Some(i) = s.recent.iter().position(|r| {
            r.epoch == h.producer_epoch && r.first == h.base_sequence && r.last == last
        }) else {
            return;
        };
        for r in s.recent.drain(i..) {
            fail_unless_settled(&r.durable);
        }
        s.last_sequence = if h.base_sequence == 0 {
            i32::MAX
        } else {
            h.base_sequence - 1
        };
    }

    /// Rebuilds a partition's states from what was found at the end of its log: each batch
    /// recorded as written and durable, so that after a restart a producer resending a batch
    /// the previous process wrote is answered with its offsets, not written twice. Call it
    /// before the partition takes any idempotent batch. Nothing is restored when `deleted`
    /// says, under the states' lock, that the topic is gone (its deletion forgets its states
    /// after setting that flag, so no restored state outlives it); a state already there is
    /// kept, and restored states never push others out at [`MAX_STATES`]. Returns how many
    /// producers were restored, `None` if the topic was deleted.
    pub fn restore(
        &self,
        topic: &str,
        partition: u32,
        found: Restored,
        deleted: impl Fn() -> bool,
    ) -> Option<usize> {
        let mut found: Vec<_> = found.producers.into_iter().collect();
        // The most recently seen producers, oldest first.
        found.sort_unstable_by_key(|(_, (seen, _))| std::cmp::Reverse(*seen));
        found.truncate(MAX_RESTORED);
        found.reverse();
        let mut states = self.states.lock();
        if deleted() {
            return None;
        }
        let mut restored = 0;
        for (pid, (_, batches)) in found {
            let Some(last) = batches.back() else {
                continue;
            };
            let key = (pid, topic.to_string(), partition);
            if states.contains_key(&key) || states.len() >= MAX_STATES {
                continue;
            }
            let recent = batches
                .iter()
                .map(|h| Recent {
                    epoch: h.producer_epoch,
                    first: h.base_sequence,
                    last: last_sequence(h),
                    base_offset: u64::try_from(h.base_offset).unwrap_or(0),
                    truncations: 0,
                    durable: Arc::new(watch::Sender::new(Some(true))),
                })
                .collect();
            states.insert(
                key,
                State {
                    epoch: last.producer_epoch,
                    last_sequence: last_sequence(last),
                    recent,
                    used: Instant::now(),
                },
            );
            restored += 1;
        }
        Some(restored)
    }

    /// Records a batch written at `base_offset`. For an idempotent producer, returns where to
    /// send the outcome of the write's sync.
    pub fn record(
        &self,
        topic: &str,
        partition: u32,
        h: &BatchHeader,
        base_offset: u64,
        truncations: u64,
    ) -> Option<Arc<Durable>> {
        self.record_unless_deleted(topic, partition, h, base_offset, truncations, || false)
    }

    /// [`Producers::record`], unless `deleted` says, under the states' lock, that the topic
    /// the batch was written to is gone: a topic's deletion sets that flag before it forgets
    /// the topic's states, so a batch whose append raced the deletion leaves no state behind
    /// for a topic made again under the same name.
    pub fn record_unless_deleted(
        &self,
        topic: &str,
        partition: u32,
        h: &BatchHeader,
        base_offset: u64,
        truncations: u64,
        deleted: impl Fn() -> bool,
    ) -> Option<Arc<Durable>> {
        if h.producer_id < 0 {
            return None;
        }
        let mut states = self.states.lock();
        if deleted() {
            return None;
        }
        let key = (h.producer_id, topic.to_string(), partition);
        if !states.contains_key(&key) && states.len() >= MAX_STATES {
            // The least recently used hundredth goes at once: one scan per thousand new
            // states at the cap, not one per new state. (States last used at the same instant
            // as the thousandth go with it.)
            let mut used: Vec<Instant> = states.values().map(|s| s.used).collect();
            let n = (MAX_STATES / 100).max(1);
            let (_, threshold, _) = used.select_nth_unstable(n - 1);
            let threshold = *threshold;
            states.retain(|_, s| s.used > threshold);
        }
        let s = states.entry(key).or_insert_with(|| State {
            epoch: h.producer_epoch,
            last_sequence: -1,
            recent: VecDeque::with_capacity(RECENT),
            used: Instant::now(),
        });
        if h.producer_epoch != s.epoch {
            s.epoch = h.producer_epoch;
            s.recent.clear();
        }
        let last = last_sequence(h);
        s.last_sequence = last;
        s.used = Instant::now();
        if s.recent.len() == RECENT {
            s.recent.pop_front();
        }
        let durable = Arc::new(watch::Sender::new(None));
        s.recent.push_back(Recent {
            epoch: h.producer_epoch,
            first: h.base_sequence,
            last,
            base_offset,
            truncations,
            durable: durable.clone(),
        });
        Some(durable)
    }

    /// Forgets a topic's states (it was deleted).
    pub fn forget_topic(&self, topic: &str) {
        self.states.lock().retain(|(_, t, _), _| t != topic);
    }
}

/// Why [`Broker::produce_sequenced`] wrote nothing, or could not confirm a write.
#[derive(Debug, thiserror::Error)]
pub enum SequencedError {
    #[error("{1}")]
    Refused(Refusal, String),
    /// A retry of a batch whose first write failed or has no known outcome: the producer
    /// sends it again.
    #[error("{0}")]
    Retry(&'static str),
    /// The task awaiting the write's sync stopped without an outcome (it panicked).
    #[error("the write's sync was not awaited: {0}")]
    Internal(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// One batch of an idempotent producer: written, or found written before.
#[derive(Debug)]
pub enum SequencedWrite {
    /// Written. A task of its own awaits the sync, so that a retry's waiter learns the
    /// outcome even if the writer's connection goes away first.
    Written(tokio::task::JoinHandle<crate::Result<ProduceResult>>),
    /// A retry of a batch written earlier at these offsets, and the first write's outcome.
    Duplicate {
        base_offset: u64,
        last_offset: u64,
        durable: watch::Receiver<Option<bool>>,
    },
}

impl SequencedWrite {
    /// Waits until the batch is durable. Its base and last offsets, and the broker's stamp
    /// on LogAppendTime topics (`None` for a duplicate: the first answer carried it).
    pub async fn wait(self) -> Result<(u64, u64, Option<i64>), SequencedError> {
        match self {
            SequencedWrite::Written(task) => {
                let r = task
                    .await
                    .map_err(|e| SequencedError::Internal(e.to_string()))??;
                Ok((r.base_offset, r.last_offset, r.log_append_time))
            }
            SequencedWrite::Duplicate {
                base_offset,
                last_offset,
                mut durable,
            } => match durable.wait_for(Option::is_some).await.map(|v| *v) {
                Ok(Some(true)) => Ok((base_offset, last_offset, None)),
                _ => Err(SequencedError::Retry(
                    "the first write of this batch failed; retry it",
                )),
            },
        }
    }
}

/// Sends a recorded batch's outcome to retries waiting on it; dropped without one (its task
/// panicked or was cancelled), it tells them the write failed, so none waits forever.
struct Settle(Option<Arc<Durable>>);

impl Settle {
    fn done(mut self, ok: bool) {
        if let Some(d) = self.0.take() {
            d.send_replace(Some(ok));
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            fail_unless_settled(&d);
        }
    }
}

impl Broker {
    /// Writes one batch `h` describes to `partition` through the sequence checks of its
    /// producer (a batch without a producer id is simply written): the batch is checked,
    /// written and recorded under its producer-partition's lock, so that a retry arriving on
    /// another connection while the first attempt is being written waits, then is seen as the
    /// duplicate it is. `own` gives the bytes to store (the caller's chance to copy them out
    /// of a larger buffer), called only when the batch is written. The sync is not awaited:
    /// [`SequencedWrite::wait`] does, so that a connection can write its next batch meanwhile.
    pub async fn produce_sequenced(
        &self,
        topic: &str,
        partition: u32,
        h: &BatchHeader,
        batch: Bytes,
        own: impl FnOnce(Bytes) -> Bytes,
    ) -> Result<SequencedWrite, SequencedError> {
        let producers = self.producers().clone();
        if h.producer_id >= 0 {
            self.restore_producers(topic, partition).await;
        }
        let _serial = producers.serialize(h.producer_id, topic, partition).await;
        match producers.check_durable(topic, partition, h) {
            (Check::Refuse(why), _) => Err(SequencedError::Refused(
                why,
                format!(
                    "producer {} epoch {} sequence {} refused: {}",
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    why.as_str()
                ),
            )),
            (Check::Duplicate(base_offset), Some(durable)) => Ok(SequencedWrite::Duplicate {
                base_offset,
                last_offset: base_offset + u64::try_from(h.last_offset_delta).unwrap_or(0),
                durable,
            }),
            (Check::Duplicate(_), None) => Err(SequencedError::Retry(
                "the first write of this batch has no known outcome; retry it",
            )),
            (Check::Append(since), _) => {
                let pending = self
                    .produce_start_unless_truncated(topic, Some(partition), None, own(batch), since)
                    .await?;
                let settle = Settle(producers.record_unless_deleted(
                    topic,
                    partition,
                    h,
                    pending.base_offset(),
                    pending.truncations(),
                    || pending.topic_deleted(),
                ));
                let (topic, h, producers) = (topic.to_string(), *h, producers.clone());
                Ok(SequencedWrite::Written(tokio::spawn(async move {
                    let r = pending.wait().await;
                    if r.is_err() && h.producer_id >= 0 {
                        // The log dropped this batch: the producer must resend from it.
                        let _serial = producers.serialize(h.producer_id, &topic, partition).await;
                        producers.rollback(&topic, partition, &h);
                    }
                    settle.done(r.is_ok());
                    r
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        let mut b = weir_batch::BatchBuilder::new(0).producer(pid, epoch, seq);
        for _ in 0..count {
            b.push(weir_batch::RecordSpec::value(b"v"));
        }
        weir_batch::peek(&b.build()).unwrap()
    }

    #[test]
    fn in_order_batches_append_retries_are_duplicates_gaps_are_refused() {
        let p = Producers::new();
        let pid = p.init();
        assert_ne!(p.init(), pid);
        let b0 = header(pid, 0, 0, 3);
        assert_eq!(p.check("t", 0, &b0), Check::Append(None));
        let d0 = p.record("t", 0, &b0, 100, 7).unwrap();
        // b0 awaits its sync: b1 may be written only if the log drops nothing meanwhile.
        let b1 = header(pid, 0, 3, 2);
        assert_eq!(p.check("t", 0, &b1), Check::Append(Some(7)));
        d0.send_replace(Some(true));
        assert_eq!(p.check("t", 0, &b1), Check::Append(None));
        p.record("t", 0, &b1, 103, 7);
        // Both retried: duplicates with their offsets.
        assert_eq!(p.check("t", 0, &b0), Check::Duplicate(100));
        assert_eq!(p.check("t", 0, &b1), Check::Duplicate(103));
        // A gap (seq 6 instead of 5), and an overlap that is not an earlier batch.
        assert_eq!(
            p.check("t", 0, &header(pid, 0, 6, 1)),
            Check::Refuse(Refusal::OutOfOrder)
        );
        assert_eq!(
            p.check("t", 0, &header(pid, 0, 4, 1)),
            Check::Refuse(Refusal::OutOfOrder)
        );
        // Other partitions and producers are independent.
        assert_eq!(p.check("t", 1, &header(pid, 0, 9, 1)), Check::Append(None));
        assert_eq!(p.check("t", 0, &header(-1, -1, -1, 1)), Check::Append(None));
        // Epochs: older refused; newer must restart at 0.
        p.record("t", 0, &header(pid, 2, 0, 1), 105, 0);
        assert_eq!(
            p.check("t", 0, &header(pid, 1, 1, 1)),
            Check::Refuse(Refusal::InvalidEpoch)
        );
        assert_eq!(
            p.check("t", 0, &header(pid, 3, 5, 1)),
            Check::Refuse(Refusal::OutOfOrder)
        );
        assert_eq!(p.check("t", 0, &header(pid, 3, 0, 1)), Check::Append(None));
    }

    #[test]
    fn states_restored_from_a_log_know_its_batches_as_written_and_durable() {
        let p = Producers::new();
        let at = |mut h: BatchHeader, offset: i64| {
            h.base_offset = offset;
            h
        };
        let log = [
            at(header(7, 0, 0, 2), 0),
            at(header(-1, -1, -1, 4), 2),
            at(header(7, 1, 0, 1), 6),
            // A batch of the older epoch after the newer one changes nothing.
            at(header(7, 0, 2, 1), 7),
            at(header(7, 1, 1, 3), 8),
            at(header(8, 0, 0, 1), 11),
        ];
        let mut found = Restored::default();
        log.iter().for_each(|h| found.add(h));
        assert_eq!(p.restore("t", 0, found, || false), Some(2));
        let (check, durable) = p.check_durable("t", 0, &header(7, 1, 1, 3));
        assert_eq!(check, Check::Duplicate(8));
        assert_eq!(*durable.unwrap().borrow(), Some(true));
        assert_eq!(p.check("t", 0, &header(7, 1, 0, 1)), Check::Duplicate(6));
        assert_eq!(p.check("t", 0, &header(7, 1, 4, 1)), Check::Append(None));
        assert_eq!(
            p.check("t", 0, &header(7, 1, 5, 1)),
            Check::Refuse(Refusal::OutOfOrder)
        );
        assert_eq!(
            p.check("t", 0, &header(7, 0, 2, 1)),
            Check::Refuse(Refusal::InvalidEpoch)
        );
        assert_eq!(p.check("t", 0, &header(8, 0, 0, 1)), Check::Duplicate(11));
        // Another partition knows none of them.
        assert_eq!(p.check("t", 1, &header(7, 1, 9, 1)), Check::Append(None));

        // A topic deleted while its log was read gets nothing back.
        let mut found = Restored::default();
        found.add(&at(header(9, 0, 0, 1), 0));
        assert_eq!(p.restore("gone", 0, found, || true), None);
        // Nor does a batch whose append raced the deletion.
        let raced = p.record_unless_deleted("gone", 0, &header(9, 0, 0, 1), 0, 0, || true);
        assert!(raced.is_none());
        assert_eq!(p.check("gone", 0, &header(9, 0, 5, 1)), Check::Append(None));
    }

    #[test]
    fn a_restore_keeps_the_most_recent_producers_and_their_last_batches() {
        let mut found = Restored::default();
        // 3 * MAX_RESTORED producers, one batch each, then producer 0 again with six more.
        for pid in 0..3 * MAX_RESTORED as i64 {
            found.add(&header(pid, 0, 0, 1));
        }
        for seq in 1..7 {
            found.add(&header(0, 0, seq, 1));
        }
        let p = Producers::new();
        assert_eq!(p.restore("t", 0, found, || false), Some(MAX_RESTORED));
        let known = |pid: i64| p.check("t", 0, &header(pid, 0, 5, 1)) != Check::Append(None);
        assert!(known(0), "seen last");
        assert!(known(3 * MAX_RESTORED as i64 - 1));
        assert!(known(2 * MAX_RESTORED as i64 + 1));
        assert!(
            !known(2 * MAX_RESTORED as i64 - 1),
            "beyond the most recent thousand"
        );
        assert!(!known(1));
        // Producer 0's last five batches (sequences 2 to 6) are known, not the first two.
        assert_eq!(p.check("t", 0, &header(0, 0, 2, 1)), Check::Duplicate(0));
        assert_eq!(
            p.check("t", 0, &header(0, 0, 1, 1)),
            Check::Refuse(Refusal::OutOfOrder)
        );
        assert_eq!(p.check("t", 0, &header(0, 0, 7, 1)), Check::Append(None));
    }

    #[test]
    fn a_failed_write_is_undone_with_the_batches_after_it() {
        let p = Producers::new();
        let pid = p.init();
        let (a, b, c) = (
            header(pid, 0, 0, 3),
            header(pid, 0, 3, 2),
            header(pid, 0, 5, 1),
        );
        let da = p.record("t", 0, &a, 0, 0).unwrap();
        p.record("t", 0, &b, 3, 0);
        // A retry of b while it awaits its sync waits on that outcome.
        let (check, durable) = p.check_durable("t", 0, &b);
        assert_eq!(check, Check::Duplicate(3));
        let durable = durable.expect("a duplicate comes with the first write's outcome");
        // a's sync fails: a and b are undone, b's waiter learns it, c must wait for a again.
        p.rollback("t", 0, &b);
        p.rollback("t", 0, &a);
        p.rollback("t", 0, &a); // undone already: nothing changes
        assert_eq!(*durable.borrow(), Some(false));
        assert_eq!(*da.borrow(), Some(false));
        assert_eq!(p.check("t", 0, &c), Check::Refuse(Refusal::OutOfOrder));
        assert_eq!(p.check("t", 0, &b), Check::Refuse(Refusal::OutOfOrder));
        assert_eq!(p.check("t", 0, &a), Check::Append(None));
    }

    /// A failed write of the old epoch does not undo the new epoch's batch with the same
    /// sequence numbers.
    #[test]
    fn a_rollback_of_an_older_epoch_leaves_the_new_epochs_batches() {
        let p = Producers::new();
        let pid = p.init();
        let old = header(pid, 0, 0, 3);
        p.record("t", 0, &old, 0, 0);
        let new = header(pid, 1, 0, 3);
        assert_eq!(p.check("t", 0, &new), Check::Append(None));
        p.record("t", 0, &new, 3, 0);
        p.rollback("t", 0, &old);
        assert_eq!(p.check("t", 0, &new), Check::Duplicate(3));
        assert_eq!(
            p.check("t", 0, &header(pid, 1, 3, 1)),
            Check::Append(Some(0))
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let p = Producers::new();
        let pid = p.init();
        for i in 0..7 {
            p.record("t", 0, &header(pid, 0, i, 1), i as u64, 0);
        }
        assert_eq!(p.check("t", 0, &header(pid, 0, 6, 1)), Check::Duplicate(6));
        assert_eq!(p.check("t", 0, &header(pid, 0, 2, 1)), Check::Duplicate(2));
        assert_eq!(
            p.check("t", 0, &header(pid, 0, 1, 1)),
            Check::Refuse(Refusal::OutOfOrder)
        );
        let near_end = header(pid, 0, i32::MAX - 1, 3);
        assert_eq!(last_sequence(&near_end), 0);
        p.record("t", 1, &near_end, 10, 0);
        assert_eq!(
            p.check("t", 1, &header(pid, 0, 1, 1)),
            Check::Append(Some(0))
        );
    }

    #[test]
    fn at_the_cap_the_least_recently_used_hundredth_is_forgotten() {
        let p = Producers::new();
        let pid = p.init();
        for part in 0..MAX_STATES as u32 {
            p.record("t", part, &header(pid, 0, 0, 1), 0, 0);
        }
        // Partition 0 is used again, so partition 1 is now the least recently used.
        std::thread::sleep(std::time::Duration::from_millis(2));
        p.record("t", 0, &header(pid, 0, 1, 1), 1, 0);
        p.record("t", MAX_STATES as u32, &header(pid, 0, 0, 1), 0, 0);
        assert_eq!(p.states.lock().len(), MAX_STATES - MAX_STATES / 100 + 1);
        assert_eq!(p.check("t", 0, &header(pid, 0, 1, 1)), Check::Duplicate(1));
        // Forgotten: its next batch is taken whatever its sequence.
        assert_eq!(p.check("t", 1, &header(pid, 0, 7, 1)), Check::Append(None));
        assert_eq!(
            p.check("t", MAX_STATES as u32 - 1, &header(pid, 0, 7, 1)),
            Check::Refuse(Refusal::OutOfOrder)
        );
        // Full again: a restore takes no state's place.
        for part in 0..MAX_STATES as u32 / 100 - 1 {
            p.record("u", part, &header(pid, 0, 0, 1), 0, 0);
        }
        assert_eq!(p.states.lock().len(), MAX_STATES);
        let mut found = Restored::default();
        found.add(&header(pid + 1, 0, 0, 1));
        assert_eq!(p.restore("v", 0, found, || false), Some(0));
        assert_eq!(p.states.lock().len(), MAX_STATES);
    }
}

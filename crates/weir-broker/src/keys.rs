//! Lookups by key in a compacted topic: the latest record of a key (`Broker::latest_by_key`).
//!
//! Each partition of a compacted topic gets, on its first lookup, an index from a 128-bit hash of
//! each key (xxh3, the hash the compactor's key map uses) to the offset of the key's latest
//! record, built by reading the partition once and then kept up to date by reading, at each
//! lookup, what was appended since. 25 bytes a key in the hash table (plus its spare room), capped at
//! `BrokerConfig::key_index_max_keys` a partition. A lookup reads the batch at the indexed
//! offset and checks the key itself, so a record compaction removed is never answered wrongly:
//! it falls back to reading the partition.
//!
//! The same index plans snapshots (`from: snapshot` subscriptions): the offsets of every key's
//! latest record below the point indexed, sorted, which [`SnapshotReader`] then reads back as
//! batches holding only those records. Two keys sharing a 128-bit hash would share one entry;
//! compaction makes the same bet (one in 10^26 for a million keys).

use std::collections::HashMap;

use bytes::Bytes;
use weir_log::Log;

use crate::error::{BrokerError, Result};

/// The latest record of a key: the one whole batch holding it, and where.
#[derive(Debug, Clone)]
pub struct KeyLookup {
    pub partition: u32,
    pub offset: u64,
    /// The batch that holds the record (validated), to decode with `weir_batch`.
    pub batch: Bytes,
}

/// One partition's index.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// Keyed by the 128-bit hash as two words: a `u128` is 16-byte aligned, which pads each
    /// entry to 32 bytes where two `u64`s and the offset take 24.
    latest: HashMap<(u64, u64), u64, foldhash::fast::FixedState>,
    /// Offsets below this are indexed.
    next: u64,
}

/// Bytes read from the log at a time while indexing.
const READ_BYTES: usize = 1 << 20;

fn hash(key: &[u8]) -> (u64, u64) {
    let h = xxhash_rust::xxh3::xxh3_128(key);
    (h as u64, (h >> 64) as u64)
}

/// Calls `f` with every record of `[from, to)` and each batch's bytes; returns the offset
/// reached (`to`, or less when the log ends sooner).
fn walk(
    log: &Log,
    from: u64,
    to: u64,
    mut f: impl FnMut(&weir_batch::Record<'_>, &Bytes),
) -> Result<u64> {
    let mut at = from;
    // One record wanted: one batch read (a read returns at least one whole batch).
    let read_bytes = if to - from <= 1 { 1 } else { READ_BYTES };
    while at < to {
        let r = log.read(at, read_bytes)?;
        if r.is_empty() {
            break;
        }
        'chunks: for chunk in &r.chunks {
            for b in weir_batch::Batches::new(chunk) {
                if at >= to {
                    break 'chunks;
                }
                let (h, bytes) = b.map_err(|e| BrokerError::Internal(e.to_string()))?;
                let next = h.next_offset() as u64;
                if next <= at {
                    continue;
                }
                let batch = chunk.slice_ref(bytes);
                let (header, section) =
                    weir_batch::payload(bytes).map_err(|e| BrokerError::Internal(e.to_string()))?;
                for rec in weir_batch::Records::with_payload(header, &section) {
                    let rec = rec.map_err(|e| BrokerError::Internal(e.to_string()))?;
                    let offset = rec.offset as u64;
                    if offset >= to {
                        // The rest of the batch lies beyond what was asked for.
                        return Ok(to);
                    }
                    if offset >= at {
                        f(&rec, &batch);
                    }
                }
                at = next;
            }
        }
    }
    Ok(at)
}

impl KeyIndex {
    /// Indexes what was appended since the last call.
    fn catch_up(&mut self, log: &Log, max_keys: usize) -> Result<()> {
        let start = log.log_start_offset();
        let hwm = log.high_watermark();
        if self.next < start || self.next > hwm {
            // Retention went past what was indexed, or the log was cut back: start over.
            self.latest.clear();
            self.next = start;
        }
        let latest = &mut self.latest;
        let mut full = false;
        self.next = walk(log, self.next, hwm, |r, _| {
            if let Some(k) = r.key {
                let h = hash(k);
                if latest.len() >= max_keys && !latest.contains_key(&h) {
                    full = true;
                    return;
                }
                latest.insert(h, r.offset as u64);
            }
        })?;
        if full {
            // Keep nothing half-built: the next lookup tries again (and fails the same way
            // until the cap is raised or keys go).
            self.latest.clear();
            self.next = start;
            return Err(BrokerError::InvalidRequest(format!(
                "the partition holds more than {max_keys} keys, the most a key lookup indexes \
                 (key_index_max_keys)"
            )));
        }
        Ok(())
    }

    /// A snapshot of `log` as of now: the offset it ends at (everything below is indexed) and
    /// the sorted offsets of the latest record of every key below it, or of the keys `only`
    /// names. Tombstones are among them (the reader leaves them out).
    pub(crate) fn snapshot(
        &mut self,
        log: &Log,
        only: Option<&[Bytes]>,
        max_keys: usize,
    ) -> Result<(u64, Vec<u64>)> {
        self.catch_up(log, max_keys)?;
        let mut offsets: Vec<u64> = match only {
            Some(keys) => keys
                .iter()
                .filter_map(|k| self.latest.get(&hash(k)).copied())
                .collect(),
            None => self.latest.values().copied().collect(),
        };
        offsets.sort_unstable();
        offsets.dedup();
        Ok((self.next, offsets))
    }

    /// The latest record of `key` in `log` (partition `partition`), a tombstone included.
    pub(crate) fn lookup(
        &mut self,
        log: &Log,
        partition: u32,
        key: &[u8],
        max_keys: usize,
    ) -> Result<Option<KeyLookup>> {
        self.catch_up(log, max_keys)?;
        let Some(&offset) = self.latest.get(&hash(key)) else {
            return Ok(None);
        };
        let mut found = None;
        walk(log, offset, offset + 1, |r, batch| {
            if r.offset as u64 == offset && r.key == Some(key) {
                found = Some(batch.clone());
            }
        })?;
        if let Some(batch) = found {
            return Ok(Some(KeyLookup {
                partition,
                offset,
                batch,
            }));
        }
        // Another key with the same hash, or a tombstone compaction removed: read it all.
        let mut last = None;
        walk(
            log,
            log.log_start_offset(),
            log.high_watermark(),
            |r, batch| {
                if r.key == Some(key) {
                    last = Some((r.offset as u64, batch.clone()));
                }
            },
        )?;
        // Remember what the scan found, so the next lookup of this key does not scan again
        // (unless another key shares its hash).
        match &last {
            Some((o, _)) => self.latest.insert(hash(key), *o),
            None => self.latest.remove(&hash(key)),
        };
        Ok(last.map(|(offset, batch)| KeyLookup {
            partition,
            offset,
            batch,
        }))
    }
}

/// Reads a snapshot back: the batches holding the planned records, each cut down to them
/// (`weir_batch::retain`, so offsets and timestamps stay), tombstones left out.
#[derive(Debug)]
pub struct SnapshotReader {
    offsets: Vec<u64>,
    /// The next entry of `offsets` to deliver.
    at: usize,
    end: u64,
}

impl SnapshotReader {
    pub(crate) fn new(end: u64, offsets: Vec<u64>) -> Self {
        Self {
            offsets,
            at: 0,
            end,
        }
    }

    /// Where live records start: the snapshot covers every key's latest record below it.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Records still to deliver (tombstones among them).
    pub fn remaining(&self) -> usize {
        self.offsets.len() - self.at
    }

    /// The offset the next read starts at, or `None` when the snapshot is delivered.
    pub fn next_offset(&self) -> Option<u64> {
        self.offsets.get(self.at).copied()
    }

    /// The retention start moved up to `log_start`: what lay below it is gone.
    pub fn skip_below(&mut self, log_start: u64) {
        while self.offsets.get(self.at).is_some_and(|&o| o < log_start) {
            self.at += 1;
        }
    }

    /// Cuts the batches of `chunks` (read from [`SnapshotReader::next_offset`]) down to the
    /// planned records, up to about `max_bytes` of them; moves past what it returns. Batches
    /// that hold no planned record are passed over.
    pub fn take(&mut self, chunks: &[Bytes], max_bytes: usize) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let bad = |e: weir_batch::BatchError| {
            BrokerError::Internal(format!("stored batch unreadable: {e}"))
        };
        for chunk in chunks {
            for b in weir_batch::Batches::new(chunk) {
                let Some(&want) = self.offsets.get(self.at) else {
                    return Ok(out);
                };
                if bytes >= max_bytes && !out.is_empty() {
                    return Ok(out);
                }
                let (h, raw) = b.map_err(bad)?;
                let next = h.next_offset() as u64;
                if next <= want {
                    continue;
                }
                let from = self.at;
                while self.offsets.get(self.at).is_some_and(|&o| o < next) {
                    self.at += 1;
                }
                let wanted = &self.offsets[from..self.at];
                let kept = weir_batch::retain(raw, |r| {
                    r.value.is_some() && wanted.binary_search(&(r.offset as u64)).is_ok()
                })
                .map_err(bad)?;
                let batch = match kept {
                    weir_batch::Retained::All => chunk.slice_ref(raw),
                    weir_batch::Retained::Some(v) => Bytes::from(v),
                    weir_batch::Retained::Nothing => continue,
                };
                bytes += batch.len();
                out.push(batch);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use weir_batch::{BatchBuilder, RecordSpec};
    use weir_log::{LogConfig, MemStorage};

    fn mem_log() -> Log {
        Log::open_with(
            Arc::new(MemStorage::new()),
            Path::new("/k"),
            LogConfig::default(),
        )
        .unwrap()
    }

    fn append(log: &Log, key: &[u8], value: Option<&[u8]>) {
        let mut b = BatchBuilder::new(0);
        b.push(RecordSpec {
            key: Some(key),
            value,
            ..RecordSpec::default()
        });
        log.append(b.build()).unwrap();
    }

    fn value_of(found: &KeyLookup) -> Option<Vec<u8>> {
        let (h, section) = weir_batch::payload(&found.batch).unwrap();
        weir_batch::Records::with_payload(h, &section)
            .map(Result::unwrap)
            .find(|r| r.offset as u64 == found.offset)
            .unwrap()
            .value
            .map(<[u8]>::to_vec)
    }

    #[test]
    fn lookups_follow_appends_and_tombstones_and_respect_the_cap() {
        let log = mem_log();
        let mut idx = KeyIndex::default();
        append(&log, b"a", Some(b"1"));
        append(&log, b"b", Some(b"2"));
        let a = idx.lookup(&log, 0, b"a", 10).unwrap().unwrap();
        assert_eq!((a.offset, value_of(&a)), (0, Some(b"1".to_vec())));
        assert!(idx.lookup(&log, 0, b"zz", 10).unwrap().is_none());
        append(&log, b"a", Some(b"3"));
        append(&log, b"b", None);
        let a = idx.lookup(&log, 0, b"a", 10).unwrap().unwrap();
        assert_eq!((a.offset, value_of(&a)), (2, Some(b"3".to_vec())));
        let b = idx.lookup(&log, 0, b"b", 10).unwrap().unwrap();
        assert_eq!((b.offset, value_of(&b)), (3, None), "the tombstone");
        // A slot pointing at another key (as after a hash collision) falls back to a scan.
        idx.latest.insert(hash(b"a"), 1);
        let a = idx.lookup(&log, 0, b"a", 10).unwrap().unwrap();
        assert_eq!(a.offset, 2);
        // More keys than the cap: refused, saying which setting.
        let mut small = KeyIndex::default();
        let e = small.lookup(&log, 0, b"a", 1).unwrap_err();
        assert!(e.to_string().contains("key_index_max_keys"), "{e}");
    }

    /// Records delivered: (offset, key, value).
    type Delivered = Vec<(u64, Vec<u8>, Vec<u8>)>;

    /// The records a snapshot of `log` delivers, read back in steps of `max_bytes`.
    fn deliver(
        log: &Log,
        idx: &mut KeyIndex,
        only: Option<&[Bytes]>,
        max_bytes: usize,
    ) -> (u64, Delivered) {
        let (end, offsets) = idx.snapshot(log, only, 100).unwrap();
        let mut reader = SnapshotReader::new(end, offsets);
        let mut got = Vec::new();
        while let Some(at) = reader.next_offset() {
            let r = log.read(at, max_bytes).unwrap();
            for b in reader.take(&r.chunks, max_bytes).unwrap() {
                let (h, section) = weir_batch::payload(&b).unwrap();
                for rec in weir_batch::Records::with_payload(h, &section) {
                    let rec = rec.unwrap();
                    got.push((
                        rec.offset as u64,
                        rec.key.unwrap().to_vec(),
                        rec.value.unwrap().to_vec(),
                    ));
                }
            }
        }
        (end, got)
    }

    #[test]
    fn a_snapshot_holds_each_live_keys_latest_record_in_offset_order() {
        let log = mem_log();
        let mut idx = KeyIndex::default();
        // One batch of several records, some superseded later, so batches are cut down.
        let mut b = BatchBuilder::new(0);
        for (k, v) in [("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")] {
            b.push(RecordSpec::keyed(k.as_bytes(), v.as_bytes()));
        }
        log.append(b.build()).unwrap();
        append(&log, b"b", Some(b"2"));
        append(&log, b"d", None);
        append(&log, b"e", Some(b"1"));
        append(&log, b"a", Some(b"2"));
        for max_bytes in [1, 1 << 20] {
            let (end, got) = deliver(&log, &mut idx, None, max_bytes);
            assert_eq!(end, 8);
            let want: Delivered = [(2, "c", "1"), (4, "b", "2"), (6, "e", "1"), (7, "a", "2")]
                .iter()
                .map(|(o, k, v)| (*o, k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            assert_eq!(
                got, want,
                "tombstoned d left out; read in steps of {max_bytes}"
            );
        }
        // Filtered by key; an unknown key is simply absent.
        let only = [
            Bytes::from_static(b"a"),
            Bytes::from_static(b"zz"),
            Bytes::from_static(b"c"),
        ];
        let (_, got) = deliver(&log, &mut idx, Some(&only), 1 << 20);
        let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(offsets, [2, 7]);
        // Appends after the plan are not in it: they are the live part.
        let (end, offsets) = idx.snapshot(&log, None, 100).unwrap();
        append(&log, b"c", Some(b"2"));
        let mut reader = SnapshotReader::new(end, offsets);
        let r = log.read(0, 1 << 20).unwrap();
        let batches = reader.take(&r.chunks, 1 << 20).unwrap();
        assert!(reader.next_offset().is_none());
        let last = weir_batch::peek(batches.last().unwrap()).unwrap();
        assert!((last.next_offset() as u64) <= end);
    }
}

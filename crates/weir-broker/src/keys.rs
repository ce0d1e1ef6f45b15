//! Lookups by key in a compacted topic: the latest record of a key (`Broker::latest_by_key`).
//!
//! Each partition of a compacted topic gets, on its first lookup, an index from a 64-bit hash of
//! each key (xxh3) to the offset of the key's latest record, built by reading the partition
//! once and then kept up to date by reading, at each lookup, what was appended since. About 17
//! bytes a key in the hash table (a million keys: about 36 MiB at the table's fill after
//! growth), capped at `BrokerConfig::key_index_max_keys` a partition. A lookup reads the batch at
//! the indexed offset and checks the key itself, so a hash collision (two keys, one slot) or a
//! record compaction removed is never answered wrongly: it falls back to reading the partition.

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
    latest: HashMap<u64, u64, foldhash::fast::FixedState>,
    /// Offsets below this are indexed.
    next: u64,
}

/// Bytes read from the log at a time while indexing.
const READ_BYTES: usize = 1 << 20;

fn hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use weir_batch::{BatchBuilder, RecordSpec};
    use weir_log::{LogConfig, MemStorage};

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
        let log = Log::open_with(
            Arc::new(MemStorage::new()),
            Path::new("/k"),
            LogConfig::default(),
        )
        .unwrap();
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
}

//! Sparse offset and time indexes of one segment, kept in memory and mirrored to files.
//!
//! File formats (big-endian, no header; a file's length is a multiple of the entry size):
//! - `.index`: 8-byte entries `relative offset: u32, position: u32`, both strictly increasing.
//!   An entry says the batch whose base offset is `segment base + relative offset` starts at
//!   byte `position` of the segment.
//! - `.timeindex`: 12-byte entries `timestamp: i64, relative offset: u32`, timestamps strictly
//!   increasing. An entry says every batch up to and including the one at that relative offset
//!   has a max timestamp ≤ `timestamp`.

pub(crate) const OFFSET_ENTRY: usize = 8;
pub(crate) const TIME_ENTRY: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub rel: u32,
    pub pos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub ts: i64,
    pub rel: u32,
}

/// The indexes of one segment.
#[derive(Debug, Default)]
pub(crate) struct SegIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    /// Largest batch max timestamp seen in the segment (`i64::MIN` if none).
    pub max_timestamp: i64,
    /// Entries already written to the index files.
    pub offsets_flushed: usize,
    pub times_flushed: usize,
    /// Relative offset of the newest batch recorded, if known.
    pub last_rel: Option<u32>,
    bytes_since_entry: u64,
    /// Counts changes to the entries; `synced_changes` is its value when the index files last
    /// matched the entries and were synced. Equal: a flush has nothing to do.
    changes: u64,
    synced_changes: u64,
}

impl SegIndex {
    /// An index whose files are not known to match it (a flush writes and syncs them).
    pub fn new() -> Self {
        Self {
            max_timestamp: i64::MIN,
            changes: 1,
            ..Self::default()
        }
    }

    /// The index files match the entries and are durable.
    pub fn files_synced(&self) -> bool {
        self.synced_changes == self.changes
    }

    /// The state of the entries, for [`SegIndex::mark_synced`].
    pub fn generation(&self) -> u64 {
        self.changes
    }

    /// The index files were written and synced with the entries as of `generation`.
    pub fn mark_synced(&mut self, generation: u64) {
        self.synced_changes = generation;
    }

    /// Largest entry at or before `rel`; the segment start if none.
    pub fn lookup(&self, rel: u32) -> OffsetEntry {
        let i = self.offsets.partition_point(|e| e.rel <= rel);
        if i == 0 {
            OffsetEntry { rel: 0, pos: 0 }
        } else {
            self.offsets[i - 1]
        }
    }

    /// Largest entry at or before file position `pos`; the segment start if none.
    pub fn lookup_pos(&self, pos: u64) -> OffsetEntry {
        let i = self.offsets.partition_point(|e| u64::from(e.pos) <= pos);
        if i == 0 {
            OffsetEntry { rel: 0, pos: 0 }
        } else {
            self.offsets[i - 1]
        }
    }

    /// Relative offset of a batch from which a scan for the first timestamp ≥ `ts` may start:
    /// every batch before it has smaller timestamps.
    pub fn time_lookup(&self, ts: i64) -> u32 {
        let i = self.times.partition_point(|e| e.ts < ts);
        if i == 0 { 0 } else { self.times[i - 1].rel }
    }

    /// Records a batch just written at `pos`.
    pub fn on_batch(&mut self, rel: u32, pos: u32, len: u64, max_ts: i64, interval: u32) {
        self.max_timestamp = self.max_timestamp.max(max_ts);
        self.last_rel = Some(rel);
        if self.bytes_since_entry >= u64::from(interval) {
            self.offsets.push(OffsetEntry { rel, pos });
            self.changes += 1;
            self.bytes_since_entry = 0;
            self.push_time(rel);
        }
        self.bytes_since_entry += len;
    }

    /// Adds a final time entry when a segment is sealed, so that its last entry holds the
    /// segment's max timestamp.
    pub fn seal(&mut self) {
        let rel = self
            .last_rel
            .unwrap_or(0)
            .max(self.times.last().map_or(0, |t| t.rel));
        self.push_time(rel);
    }

    /// Adds a time entry for the current max timestamp if it grew.
    pub fn push_time(&mut self, rel: u32) {
        if self.max_timestamp == i64::MIN {
            return;
        }
        if self.times.last().is_none_or(|t| t.ts < self.max_timestamp) {
            self.times.push(TimeEntry {
                ts: self.max_timestamp,
                rel,
            });
            self.changes += 1;
        }
    }

    /// Drops entries for batches at or after `pos` / `rel` (after a truncation).
    pub fn truncate(&mut self, pos: u32, rel: u32) {
        self.offsets.retain(|e| e.pos < pos);
        self.times.retain(|e| e.rel < rel);
        self.last_rel = None;
        self.changes += 1;
        self.offsets_flushed = self.offsets_flushed.min(self.offsets.len());
        self.times_flushed = self.times_flushed.min(self.times.len());
        self.bytes_since_entry = 0;
    }

    pub fn encode_offsets(entries: &[OffsetEntry]) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.len() * OFFSET_ENTRY);
        for e in entries {
            out.extend_from_slice(&e.rel.to_be_bytes());
            out.extend_from_slice(&e.pos.to_be_bytes());
        }
        out
    }

    pub fn encode_times(entries: &[TimeEntry]) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.len() * TIME_ENTRY);
        for e in entries {
            out.extend_from_slice(&e.ts.to_be_bytes());
            out.extend_from_slice(&e.rel.to_be_bytes());
        }
        out
    }

    /// Decodes an offset index file; `None` if its length or order is impossible for a segment
    /// of `seg_len` bytes.
    pub fn decode_offsets(bytes: &[u8], seg_len: u64) -> Option<Vec<OffsetEntry>> {
        if bytes.len() % OFFSET_ENTRY != 0 {
            return None;
        }
        let entries: Vec<_> = bytes
            .chunks_exact(OFFSET_ENTRY)
            .map(|c| OffsetEntry {
                rel: u32::from_be_bytes(c[0..4].try_into().expect("4")),
                pos: u32::from_be_bytes(c[4..8].try_into().expect("4")),
            })
            .collect();
        let ordered = entries
            .windows(2)
            .all(|w| w[0].rel < w[1].rel && w[0].pos < w[1].pos);
        let in_range = entries.last().is_none_or(|e| u64::from(e.pos) < seg_len);
        // Positions are u32, so `u64::MAX` means "no length check".
        (ordered && in_range).then_some(entries)
    }

    /// Decodes a time index file; `None` if its length or order is impossible.
    pub fn decode_times(bytes: &[u8]) -> Option<Vec<TimeEntry>> {
        if bytes.len() % TIME_ENTRY != 0 {
            return None;
        }
        let entries: Vec<_> = bytes
            .chunks_exact(TIME_ENTRY)
            .map(|c| TimeEntry {
                ts: i64::from_be_bytes(c[0..8].try_into().expect("8")),
                rel: u32::from_be_bytes(c[8..12].try_into().expect("4")),
            })
            .collect();
        let ordered = entries
            .windows(2)
            .all(|w| w[0].ts < w[1].ts && w[0].rel <= w[1].rel);
        ordered.then_some(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_entries_every_interval_and_lookup_finds_the_floor() {
        let mut idx = SegIndex::new();
        // 10 batches of 1000 bytes, 10 records each, interval 2500.
        for i in 0..10u32 {
            idx.on_batch(i * 10, i * 1000, 1000, i64::from(i) * 100, 2500);
        }
        let positions: Vec<u32> = idx.offsets.iter().map(|e| e.pos).collect();
        assert_eq!(positions, vec![3000, 6000, 9000]);
        assert_eq!(idx.lookup(0), OffsetEntry { rel: 0, pos: 0 });
        assert_eq!(idx.lookup(35), OffsetEntry { rel: 30, pos: 3000 });
        assert_eq!(idx.lookup(95), OffsetEntry { rel: 90, pos: 9000 });
        assert_eq!(idx.time_lookup(0), 0);
        assert_eq!(idx.time_lookup(650), 60);
        let bytes = SegIndex::encode_offsets(&idx.offsets);
        assert_eq!(
            SegIndex::decode_offsets(&bytes, 10_000).unwrap(),
            idx.offsets
        );
        assert!(
            SegIndex::decode_offsets(&bytes, 9000).is_none(),
            "entry past the end"
        );
        assert!(SegIndex::decode_offsets(&bytes[..7], 10_000).is_none());
        let times = SegIndex::encode_times(&idx.times);
        assert_eq!(SegIndex::decode_times(&times).unwrap(), idx.times);
    }

    #[test]
    fn out_of_order_entries_are_rejected() {
        let bad = SegIndex::encode_offsets(&[
            OffsetEntry { rel: 5, pos: 100 },
            OffsetEntry { rel: 4, pos: 200 },
        ]);
        assert!(SegIndex::decode_offsets(&bad, 1000).is_none());
        let bad =
            SegIndex::encode_times(&[TimeEntry { ts: 5, rel: 1 }, TimeEntry { ts: 5, rel: 2 }]);
        assert!(SegIndex::decode_times(&bad).is_none());
    }
}

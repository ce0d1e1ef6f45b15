//! The `checkpoint` file: recovery point, log start offset and clean-shutdown flag.
//!
//! The file has two slots, at bytes 0 and 4096 (different blocks), and each new checkpoint
//! overwrites the older slot in place, then syncs: a torn write damages only the slot being
//! written, and the other still holds the checkpoint before it. Nothing is created, renamed
//! or removed after the first write, so a checkpoint costs one write and one fdatasync, and
//! the file system allocates no inodes for it (a rename scheme allocates one per checkpoint,
//! and a server recovering thousands of partitions waits on the inode allocator).
//!
//! A slot (52 bytes, big-endian):
//!
//! | pos | size | field                                                         |
//! |----:|-----:|---------------------------------------------------------------|
//! |   0 |    4 | magic `WCKP`                                                  |
//! |   4 |    2 | version (2)                                                   |
//! |   6 |    1 | flags: bit 0 = written by a clean close                       |
//! |   7 |    1 | reserved, 0                                                   |
//! |   8 |    8 | sequence number: the valid slot with the larger one is current |
//! |  16 |    8 | recovery offset: every record before it is durable and indexed |
//! |  24 |    8 | base offset of the segment holding the recovery point         |
//! |  32 |    8 | byte position of the recovery point in that segment           |
//! |  40 |    8 | log start offset                                              |
//! |  48 |    4 | CRC32C of bytes 0..48                                         |
//!
//! Version 1 files (one 44-byte record without a sequence number, replaced by renaming
//! `checkpoint.tmp`) are still read: their record counts as sequence 0, and the first new
//! checkpoint goes to slot 1, past it.

pub(crate) const FILE: &str = "checkpoint";
/// Left by version 1's rename scheme; removed by recovery.
pub(crate) const TMP_FILE: &str = "checkpoint.tmp";
const MAGIC: &[u8; 4] = b"WCKP";
const V1: u16 = 1;
const V1_LEN: usize = 44;
const VERSION: u16 = 2;
const LEN: usize = 52;
/// Where slot 1 starts: its own 4 KiB block, so that a torn or unreadable sector (4 KiB on
/// many drives) can take only one slot.
pub(crate) const SLOT_BYTES: u64 = 4096;
/// The largest checkpoint file read.
pub(crate) const MAX_FILE: u64 = 2 * SLOT_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub clean: bool,
    pub recovery_offset: u64,
    pub recovery_segment: u64,
    pub recovery_position: u64,
    pub log_start: u64,
}

impl Checkpoint {
    /// The slot for sequence number `seq`: its position in the file and its bytes.
    pub fn encode(&self, seq: u64) -> (u64, Vec<u8>) {
        let mut b = Vec::with_capacity(LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.push(u8::from(self.clean));
        b.push(0);
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&self.recovery_offset.to_be_bytes());
        b.extend_from_slice(&self.recovery_segment.to_be_bytes());
        b.extend_from_slice(&self.recovery_position.to_be_bytes());
        b.extend_from_slice(&self.log_start.to_be_bytes());
        let crc = crc_fast::crc32_iscsi(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        ((seq % 2) * SLOT_BYTES, b)
    }

    /// The current checkpoint in a checkpoint file's bytes and its sequence number, or what
    /// is wrong with the file when no slot is valid.
    pub fn decode_file(b: &[u8]) -> Result<(Self, u64), String> {
        let slot = |at: u64| b.get(at as usize..at as usize + LEN).map(Self::decode_slot);
        let mut best: Option<(Self, u64)> = None;
        let mut reason = format!("checkpoint file is {} bytes", b.len());
        let candidates = [
            b.get(..V1_LEN)
                .map(|v1| Self::decode_v1(v1).map(|c| (c, 0))),
            slot(0),
            slot(SLOT_BYTES),
        ];
        for candidate in candidates.into_iter().flatten() {
            match candidate {
                Ok((c, seq)) if best.is_none_or(|(_, s)| seq > s) => best = Some((c, seq)),
                Ok(_) => {}
                Err(e) => reason = e,
            }
        }
        best.ok_or(reason)
    }

    fn decode_slot(b: &[u8]) -> Result<(Self, u64), String> {
        let u = Self::check(b, VERSION)?;
        Ok((
            Self {
                clean: b[6] & 1 == 1,
                recovery_offset: u(16),
                recovery_segment: u(24),
                recovery_position: u(32),
                log_start: u(40),
            },
            u(8),
        ))
    }

    fn decode_v1(b: &[u8]) -> Result<Self, String> {
        let u = Self::check(b, V1)?;
        Ok(Self {
            clean: b[6] & 1 == 1,
            recovery_offset: u(8),
            recovery_segment: u(16),
            recovery_position: u(24),
            log_start: u(32),
        })
    }

    /// Checks magic, CRC (the last 4 bytes of `b`) and version; returns a reader of the
    /// big-endian u64 at a position.
    fn check(b: &[u8], version: u16) -> Result<impl Fn(usize) -> u64 + '_, String> {
        if &b[0..4] != MAGIC {
            return Err("checkpoint magic mismatch".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc_fast::crc32_iscsi(body) != u32::from_be_bytes(crc.try_into().expect("4")) {
            return Err("checkpoint CRC mismatch".into());
        }
        let found = u16::from_be_bytes(b[4..6].try_into().expect("2"));
        if found != version {
            return Err(format!("checkpoint version {found} is not supported"));
        }
        Ok(|at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64) -> Checkpoint {
        Checkpoint {
            clean: n % 2 == 0,
            recovery_offset: 77 + n,
            recovery_segment: 50,
            recovery_position: 4096 + n,
            log_start: 3,
        }
    }

    /// A file image after writing `seqs` in order, each into its slot.
    fn file(seqs: &[u64]) -> Vec<u8> {
        let mut f = Vec::new();
        for &seq in seqs {
            let (at, bytes) = sample(seq).encode(seq);
            let at = at as usize;
            if f.len() < at + bytes.len() {
                f.resize(at + bytes.len(), 0);
            }
            f[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        f
    }

    #[test]
    fn the_newest_valid_slot_wins_and_any_damage_is_detected() {
        let f = file(&[1, 2, 3]);
        assert_eq!(Checkpoint::decode_file(&f).unwrap(), (sample(3), 3));
        // Slot 1 (sequence 3) torn: slot 0 (sequence 2) is current again.
        let (at, bytes) = sample(3).encode(3);
        for i in 0..bytes.len() {
            let mut bad = f.clone();
            bad[at as usize + i] ^= 0x10;
            assert_eq!(
                Checkpoint::decode_file(&bad).unwrap(),
                (sample(2), 2),
                "flip at {i}"
            );
        }
        // Cut short in the middle of slot 1.
        assert_eq!(
            Checkpoint::decode_file(&f[..at as usize + 20]).unwrap(),
            (sample(2), 2)
        );
        // Both slots damaged: no checkpoint.
        let mut bad = f.clone();
        bad[10] ^= 1;
        bad[at as usize + 10] ^= 1;
        assert!(Checkpoint::decode_file(&bad).is_err());
        assert!(Checkpoint::decode_file(&[]).is_err());
    }

    /// A version 1 file (one 44-byte record) as an earlier weir wrote it.
    fn v1(c: &Checkpoint) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"WCKP");
        b.extend_from_slice(&1u16.to_be_bytes());
        b.push(u8::from(c.clean));
        b.push(0);
        for v in [
            c.recovery_offset,
            c.recovery_segment,
            c.recovery_position,
            c.log_start,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let crc = crc_fast::crc32_iscsi(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn a_version_1_file_is_read_and_the_first_new_slot_goes_past_it() {
        let old = sample(0);
        let mut f = v1(&old);
        assert_eq!(Checkpoint::decode_file(&f).unwrap(), (old, 0));
        let mut damaged = f.clone();
        damaged[20] ^= 4;
        assert!(Checkpoint::decode_file(&damaged).is_err());
        // The next checkpoint is sequence 1: slot 1, leaving the version 1 record intact
        // until it has been written.
        let (at, bytes) = sample(1).encode(1);
        assert_eq!(at, SLOT_BYTES);
        f.resize(at as usize, 0);
        f.extend_from_slice(&bytes[..30]);
        assert_eq!(Checkpoint::decode_file(&f).unwrap(), (old, 0), "torn");
        f.truncate(at as usize);
        f.extend_from_slice(&bytes);
        assert_eq!(Checkpoint::decode_file(&f).unwrap(), (sample(1), 1));
    }
}

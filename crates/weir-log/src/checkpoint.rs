//! The `checkpoint` file: recovery point, log start offset and clean-shutdown flag.
//!
//! Layout (44 bytes, big-endian):
//!
//! | pos | size | field                                                         |
//! |----:|-----:|---------------------------------------------------------------|
//! |   0 |    4 | magic `WCKP`                                                  |
//! |   4 |    2 | version (1)                                                   |
//! |   6 |    1 | flags: bit 0 = written by a clean close                       |
//! |   7 |    1 | reserved, 0                                                   |
//! |   8 |    8 | recovery offset: every record before it is durable and indexed |
//! |  16 |    8 | base offset of the segment holding the recovery point         |
//! |  24 |    8 | byte position of the recovery point in that segment           |
//! |  32 |    8 | log start offset                                              |
//! |  40 |    4 | CRC32C of bytes 0..40                                         |
//!
//! It is replaced atomically: written to `checkpoint.tmp`, synced, renamed, directory synced.

pub(crate) const FILE: &str = "checkpoint";
pub(crate) const TMP_FILE: &str = "checkpoint.tmp";
const MAGIC: &[u8; 4] = b"WCKP";
const VERSION: u16 = 1;
const LEN: usize = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub clean: bool,
    pub recovery_offset: u64,
    pub recovery_segment: u64,
    pub recovery_position: u64,
    pub log_start: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.push(u8::from(self.clean));
        b.push(0);
        b.extend_from_slice(&self.recovery_offset.to_be_bytes());
        b.extend_from_slice(&self.recovery_segment.to_be_bytes());
        b.extend_from_slice(&self.recovery_position.to_be_bytes());
        b.extend_from_slice(&self.log_start.to_be_bytes());
        let crc = crc_fast::crc32_iscsi(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes a checkpoint, or says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != LEN {
            return Err(format!("checkpoint is {} bytes, expected {LEN}", b.len()));
        }
        if &b[0..4] != MAGIC {
            return Err("checkpoint magic mismatch".into());
        }
        let crc = u32::from_be_bytes(b[40..44].try_into().expect("4"));
        if crc_fast::crc32_iscsi(&b[..40]) != crc {
            return Err("checkpoint CRC mismatch".into());
        }
        let version = u16::from_be_bytes(b[4..6].try_into().expect("2"));
        if version != VERSION {
            return Err(format!("checkpoint version {version} is not supported"));
        }
        let u = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
        Ok(Self {
            clean: b[6] & 1 == 1,
            recovery_offset: u(8),
            recovery_segment: u(16),
            recovery_position: u(24),
            log_start: u(32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let c = Checkpoint {
            clean: true,
            recovery_offset: 77,
            recovery_segment: 50,
            recovery_position: 4096,
            log_start: 3,
        };
        let bytes = c.encode();
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), c);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Checkpoint::decode(&bad).is_err(), "flip at {i} undetected");
        }
        assert!(Checkpoint::decode(&bytes[..43]).is_err());
    }
}

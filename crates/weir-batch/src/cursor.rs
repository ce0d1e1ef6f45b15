//! A bounds-checked big-endian reader over untrusted bytes: every read checks what is left
//! and answers `None` past the end, and nothing is allocated from a length it reads. Shared by
//! the decoders of weir's own stored formats (the committed-offsets log) and of the small
//! messages Kafka clients exchange through the coordinator.

/// Reads fields off the front of a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub fn i16(&mut self) -> Option<i16> {
        self.array().map(i16::from_be_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_stops_at_the_end() {
        let mut c = Cursor(&[0, 1, 0xff, 0xfe, 0, 0, 0, 7, 9]);
        assert_eq!(c.u16(), Some(1));
        assert_eq!(c.i16(), Some(-2));
        assert_eq!(c.u32(), Some(7));
        assert_eq!(c.u16(), None, "one byte left");
        assert_eq!(c.u8(), Some(9));
        assert_eq!(c.take(1), None);
        assert!(c.rest().is_empty());
    }
}

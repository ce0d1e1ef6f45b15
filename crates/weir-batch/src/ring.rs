//! The consistent-hash ring that maps a record key to a partition.
//!
//! Each partition owns [`VNODES`] points on a 64-bit ring (XXH3 of the partition and point
//! number); a key belongs to the first point at or after XXH3 of the key. Growing a topic from
//! N to N+1 partitions therefore moves only the keys the new partition's points capture,
//! about 1/(N+1) of them, and every moved key moves to the new partition. Client and server use
//! this same code, so it is part of the protocol: changing it re-routes keys.

use xxhash_rust::xxh3::xxh3_64;

/// Points per partition. More points spread keys more evenly; 128 keeps the largest
/// partition's share within a few percent of the mean for typical partition counts.
pub const VNODES: u32 = 128;

/// A ring for a fixed number of partitions.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, u32)>,
    partitions: u32,
}

impl Ring {
    /// The ring of a topic with `partitions` partitions (at least one).
    pub fn new(partitions: u32) -> Self {
        let partitions = partitions.max(1);
        let mut points = Vec::with_capacity((partitions * VNODES) as usize);
        for p in 0..partitions {
            for v in 0..VNODES {
                let mut id = [0u8; 8];
                id[..4].copy_from_slice(&p.to_be_bytes());
                id[4..].copy_from_slice(&v.to_be_bytes());
                points.push((xxh3_64(&id), p));
            }
        }
        points.sort_unstable();
        Self { points, partitions }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition that owns `key`.
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        let h = xxh3_64(key);
        let i = self.points.partition_point(|(point, _)| *point < h);
        self.points.get(i).unwrap_or(&self.points[0]).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("user-{i}").into_bytes()).collect()
    }

    #[test]
    fn adding_a_partition_moves_about_one_in_n_plus_one_keys_all_to_the_new_one() {
        let keys = keys(50_000);
        for n in [1u32, 4, 8, 16] {
            let before = Ring::new(n);
            let after = Ring::new(n + 1);
            let mut moved = 0;
            for k in &keys {
                let (a, b) = (before.partition_for(k), after.partition_for(k));
                if a != b {
                    assert_eq!(b, n, "a moved key goes to the new partition");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / f64::from(n + 1);
            assert!(
                (fraction - ideal).abs() < ideal * 0.35,
                "{n}→{}: moved {fraction:.3}, ideal {ideal:.3}",
                n + 1
            );
        }
    }

    #[test]
    fn keys_spread_evenly_and_routing_is_stable() {
        let ring = Ring::new(8);
        let mut counts = [0usize; 8];
        for k in keys(80_000) {
            counts[ring.partition_for(&k) as usize] += 1;
        }
        for c in counts {
            assert!((7_000..13_000).contains(&c), "uneven spread: {counts:?}");
        }
        // Stability is a protocol contract: clients of older releases route with these.
        let ring = Ring::new(4);
        let routes: Vec<u32> = ["a", "b", "order-17", ""]
            .iter()
            .map(|k| ring.partition_for(k.as_bytes()))
            .collect();
        assert_eq!(
            routes,
            vec![2, 1, 2, 1],
            "the ring changed: keys would move between releases"
        );
    }
}

//! The bounded queue: every overflow policy, close semantics, and a property test that the
//! bounds hold and every pushed item is accounted for exactly once.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use weir_flow::MemoryMetrics;
use weir_flow::queue::{BoundedQueue, Overflow, Pushed, QueueConfig};

fn queue(max_items: usize, max_bytes: usize, overflow: Overflow) -> BoundedQueue<Vec<u8>> {
    BoundedQueue::new(
        QueueConfig {
            max_items,
            max_bytes,
            overflow,
        },
        Vec::len,
    )
}

fn item(tag: u8, len: usize) -> Vec<u8> {
    vec![tag; len]
}

#[tokio::test]
async fn drop_newest_hands_the_new_item_back() {
    let q = queue(2, 100, Overflow::DropNewest);
    assert_eq!(q.push(item(1, 10)).await, Pushed::Pushed);
    assert_eq!(q.push(item(2, 10)).await, Pushed::Pushed);
    assert_eq!(q.push(item(3, 10)).await, Pushed::Dropped(item(3, 10)));
    assert_eq!(q.pop().await, Some(item(1, 10)));
    assert_eq!(q.pop().await, Some(item(2, 10)));
    let s = q.stats();
    assert_eq!((s.pushes, s.accepted, s.delivered, s.dropped), (3, 2, 2, 1));
}

#[tokio::test]
async fn drop_oldest_evicts_until_the_new_item_fits_in_bytes() {
    let q = queue(10, 100, Overflow::DropOldest);
    for t in 0..4 {
        assert_eq!(q.push(item(t, 25)).await, Pushed::Pushed);
    }
    // 60 bytes need three 25-byte items out.
    assert_eq!(
        q.push(item(9, 60)).await,
        Pushed::DroppedOldest(vec![item(0, 25), item(1, 25), item(2, 25)])
    );
    assert_eq!(q.bytes(), 85);
    assert_eq!(q.pop().await, Some(item(3, 25)));
    assert_eq!(q.pop().await, Some(item(9, 60)));
    let s = q.stats();
    assert_eq!(
        (s.accepted, s.delivered, s.dropped, s.evicted),
        (5, 2, 3, 3)
    );
}

#[tokio::test]
async fn reject_and_oversize() {
    let q = queue(1, 100, Overflow::Reject);
    assert_eq!(q.push(item(1, 101)).await, Pushed::Rejected(item(1, 101)));
    assert_eq!(q.push(item(1, 1)).await, Pushed::Pushed);
    assert_eq!(q.push(item(2, 1)).await, Pushed::Rejected(item(2, 1)));
    assert_eq!(q.stats().rejected, 2);
    // Oversize is rejected whatever the policy, even blocking ones (it could never fit).
    let q = queue(1, 100, Overflow::Block);
    assert_eq!(q.push(item(1, 101)).await, Pushed::Rejected(item(1, 101)));
}

#[tokio::test(start_paused = true)]
async fn block_timeout_gives_the_item_back() {
    let q = queue(1, 100, Overflow::BlockTimeout(Duration::from_millis(50)));
    assert_eq!(q.push(item(1, 1)).await, Pushed::Pushed);
    let start = tokio::time::Instant::now();
    assert_eq!(q.push(item(2, 1)).await, Pushed::TimedOut(item(2, 1)));
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(q.stats().timed_out, 1);
    assert_eq!(q.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn block_timeout_succeeds_when_room_appears_in_time() {
    let q = Arc::new(queue(
        1,
        100,
        Overflow::BlockTimeout(Duration::from_millis(50)),
    ));
    assert_eq!(q.push(item(1, 1)).await, Pushed::Pushed);
    let q2 = Arc::clone(&q);
    let popper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        q2.pop().await
    });
    assert_eq!(q.push(item(2, 1)).await, Pushed::Pushed);
    assert_eq!(popper.await.unwrap(), Some(item(1, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_waits_for_room_by_count_and_by_bytes() {
    let q = Arc::new(queue(10, 100, Overflow::Block));
    assert_eq!(q.push(item(1, 90)).await, Pushed::Pushed);
    let q2 = Arc::clone(&q);
    let pusher = tokio::spawn(async move { q2.push(item(2, 20)).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!pusher.is_finished(), "pushed past the byte bound");
    assert_eq!(q.pop().await, Some(item(1, 90)));
    assert_eq!(pusher.await.unwrap(), Pushed::Pushed);
    assert_eq!(q.pop().await, Some(item(2, 20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_wakes_everyone_and_pops_drain_what_is_left() {
    let q = Arc::new(queue(1, 100, Overflow::Block));
    assert_eq!(q.push(item(1, 1)).await, Pushed::Pushed);
    let q2 = Arc::clone(&q);
    let blocked = tokio::spawn(async move { q2.push(item(2, 1)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.close();
    assert_eq!(blocked.await.unwrap(), Pushed::Closed(item(2, 1)));
    assert_eq!(q.push(item(3, 1)).await, Pushed::Closed(item(3, 1)));
    assert_eq!(q.pop().await, Some(item(1, 1)));
    assert_eq!(q.pop().await, None);

    let q = Arc::new(queue(1, 100, Overflow::Block));
    let q2 = Arc::clone(&q);
    let popper = tokio::spawn(async move { q2.pop().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.close();
    assert_eq!(popper.await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_and_consumers_lose_nothing() {
    let q = Arc::new(
        BoundedQueue::new(
            QueueConfig {
                max_items: 16,
                max_bytes: 1 << 20,
                overflow: Overflow::Block,
            },
            |_: &u64| 8,
        )
        .with_metrics(MemoryMetrics::new()),
    );
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                for i in 0..2000 {
                    assert_eq!(q.push(p * 1_000_000 + i).await, Pushed::Pushed);
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                let mut got = vec![];
                while let Some(v) = q.pop().await {
                    got.push(v);
                }
                got
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    q.close();
    let mut all = vec![];
    for c in consumers {
        all.extend(c.await.unwrap());
    }
    all.sort_unstable();
    let mut expected: Vec<u64> = (0..4u64)
        .flat_map(|p| (0..2000).map(move |i| p * 1_000_000 + i))
        .collect();
    expected.sort_unstable();
    assert_eq!(all, expected);
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Pop,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![3 => (0usize..60).prop_map(Op::Push), 2 => Just(Op::Pop)],
        0..200,
    )
}

fn policy() -> impl Strategy<Value = Overflow> {
    prop_oneof![
        Just(Overflow::DropNewest),
        Just(Overflow::DropOldest),
        Just(Overflow::Reject),
        Just(Overflow::Block),
        Just(Overflow::BlockTimeout(Duration::from_millis(1))),
    ]
}

proptest! {
    /// Bounds always hold; each pushed item is delivered, still queued, or handed back
    /// exactly once; the counters agree with what the caller saw.
    #[test]
    fn bounds_hold_and_every_item_is_accounted_for(
        max_items in 1usize..8,
        max_bytes in 1usize..120,
        overflow in policy(),
        ops in ops(),
    ) {
        let q = BoundedQueue::new(QueueConfig { max_items, max_bytes, overflow }, |v: &(u32, usize)| v.1);
        let mut next = 0u32;
        let (mut delivered, mut returned) = (vec![], vec![]);
        for op in ops {
            match op {
                Op::Push(size) => {
                    next += 1;
                    match q.try_push((next, size)) {
                        Pushed::Pushed => {}
                        Pushed::DroppedOldest(old) => {
                            prop_assert!(!old.is_empty());
                            returned.extend(old.into_iter().map(|v| v.0));
                        }
                        Pushed::Dropped(v) | Pushed::Rejected(v) | Pushed::TimedOut(v) | Pushed::Closed(v) => {
                            prop_assert_eq!(v.0, next);
                            returned.push(v.0);
                        }
                    }
                }
                Op::Pop => {
                    if let Some(v) = q.try_pop() {
                        delivered.push(v.0);
                    }
                }
            }
            prop_assert!(q.len() <= max_items);
            prop_assert!(q.bytes() <= max_bytes);
        }
        let queued = q.len();
        q.close();
        let mut rest = vec![];
        while let Some(v) = q.try_pop() {
            rest.push(v.0);
        }
        prop_assert_eq!(rest.len(), queued);
        let mut all: Vec<u32> = delivered.iter().chain(&returned).chain(&rest).copied().collect();
        all.sort_unstable();
        prop_assert_eq!(all, (1..=next).collect::<Vec<_>>());
        let s = q.stats();
        prop_assert_eq!(s.pushes, u64::from(next));
        prop_assert_eq!(s.delivered as usize, delivered.len() + rest.len());
        prop_assert_eq!(s.accepted, s.delivered + s.evicted);
        prop_assert_eq!(s.pushes, s.accepted + (s.dropped - s.evicted) + s.rejected + s.timed_out);
        prop_assert_eq!((s.dropped + s.rejected + s.timed_out) as usize, returned.len());
    }
}

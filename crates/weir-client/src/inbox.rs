//! Pushes received for one subscription and not yet taken by it.
//!
//! The connection's reader never waits for a subscriber (it serves every request and
//! subscription of the connection), so what a subscriber has not taken is held here. Under
//! `CREDIT` the credit bounds it; under `DROP_OLDEST` and `DISCONNECT` the subscription's own
//! queue bounds apply here too, with the same policy as on the server: the oldest pushed
//! records are dropped and announced (a drop notice the subscriber sees like the server's),
//! or the subscription ends with `SLOW_CONSUMER`. Nothing is dropped silently.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;
use weir_wire::ErrorCode;
use weir_wire::messages as msg;

use crate::connection::Pushed;

/// Local bounds of a queued subscription.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    pub drop_oldest: bool,
    pub max_records: u64,
    pub max_bytes: u64,
}

#[derive(Debug)]
struct Held {
    pushed: Pushed,
    /// Offsets `from..to` of its records (data pushes only).
    range: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Held>,
    records: u64,
    bytes: u64,
    /// Dropped here (or announced by the server and dropped with its neighbours), not yet
    /// announced: (records, from, to).
    dropped: Option<(u64, u64, u64)>,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Inbox {
    id: u64,
    bound: Option<Bound>,
    state: Mutex<State>,
    notify: Notify,
}

impl Inbox {
    pub fn new(id: u64, bound: Option<Bound>) -> Self {
        Self {
            id,
            bound,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    /// Holds a push from the server. Never waits.
    pub fn put(&self, pushed: Pushed) {
        let mut s = self.state.lock();
        if s.closed {
            return;
        }
        let range = data_range(&pushed);
        if let (Some(bound), Some((from, to))) = (self.bound, range) {
            let (n, len) = (to - from, pushed.records.len() as u64);
            let fits = |s: &State| {
                s.items.is_empty()
                    || (s.records + n <= bound.max_records && s.bytes + len <= bound.max_bytes)
            };
            if !fits(&s) {
                if !bound.drop_oldest {
                    s.items.clear();
                    s.records = 0;
                    s.bytes = 0;
                    s.dropped = None;
                    s.closed = true;
                    s.items.push_back(Held {
                        pushed: end(
                            self.id,
                            format!(
                                "slow consumer: the subscription's local buffer ({} records, \
                                 {} bytes) overflowed at offset {from}",
                                bound.max_records, bound.max_bytes
                            ),
                        ),
                        range: None,
                    });
                    drop(s);
                    self.notify.notify_one();
                    return;
                }
                while !fits(&s) {
                    let Some(old) = s.items.pop_front() else {
                        break;
                    };
                    let (n, from, to) = match old.range {
                        Some((f, t)) => {
                            s.records -= t - f;
                            s.bytes -= old.pushed.records.len() as u64;
                            (t - f, f, t)
                        }
                        // A drop notice from the server: folded into ours.
                        None => (
                            old.pushed.data.dropped_records,
                            old.pushed.data.skipped_from,
                            old.pushed.data.skipped_to,
                        ),
                    };
                    s.dropped = Some(match s.dropped {
                        Some((m, f, _)) => (m + n, f, to),
                        None => (n, from, to),
                    });
                }
            }
            s.records += n;
            s.bytes += len;
        }
        if pushed.data.end_code != 0 {
            s.closed = true;
        }
        s.items.push_back(Held { pushed, range });
        drop(s);
        self.notify.notify_one();
    }

    /// No more pushes will come (connection gone, unsubscribed).
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_one();
    }

    /// The next push, a local drop notice first; `None` once closed and empty.
    pub async fn take(&self) -> Option<Pushed> {
        loop {
            {
                let mut s = self.state.lock();
                if let Some((records, from, to)) = s.dropped.take() {
                    return Some(notice(self.id, records, from, to));
                }
                if let Some(h) = s.items.pop_front() {
                    if let (Some((f, t)), Some(_)) = (h.range, self.bound) {
                        s.records -= t - f;
                        s.bytes -= h.pushed.records.len() as u64;
                    }
                    return Some(h.pushed);
                }
                if s.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }
}

/// Offsets `from..to` of a push's records, for pushes that carry records.
fn data_range(p: &Pushed) -> Option<(u64, u64)> {
    if p.records.is_empty() {
        return None;
    }
    let first = weir_batch::peek(&p.records).ok()?;
    let mut at = 0;
    let mut to = first.next_offset();
    while at < p.records.len() {
        let Ok(h) = weir_batch::peek(&p.records[at..]) else {
            break;
        };
        to = h.next_offset();
        at += h.total_len();
    }
    let from = first.base_offset.max(0) as u64;
    Some((from, (to.max(0) as u64).max(from)))
}

fn notice(id: u64, records: u64, from: u64, to: u64) -> Pushed {
    Pushed {
        data: msg::PushData {
            subscription_id: id,
            dropped_records: records,
            skipped_from: from,
            skipped_to: to,
            ..msg::PushData::default()
        },
        records: bytes::Bytes::new(),
    }
}

fn end(id: u64, message: String) -> Pushed {
    Pushed {
        data: msg::PushData {
            subscription_id: id,
            end_code: ErrorCode::SlowConsumer as u32,
            end_message: message,
            ..msg::PushData::default()
        },
        records: bytes::Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(id: u64, base: u64, n: usize) -> Pushed {
        let mut b = weir_batch::BatchBuilder::new(0);
        for _ in 0..n {
            b.push(weir_batch::RecordSpec::value(b"v"));
        }
        let mut bytes = b.build();
        weir_batch::set_base_offset(&mut bytes, base as i64);
        Pushed {
            data: msg::PushData {
                subscription_id: id,
                ..msg::PushData::default()
            },
            records: bytes::Bytes::from(bytes),
        }
    }

    fn take_now(inbox: &Inbox) -> Option<Pushed> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(50), inbox.take())
                    .await
                    .ok()
                    .flatten()
            })
    }

    #[test]
    fn drop_oldest_announces_local_evictions_before_the_servers_notice_and_data() {
        let bound = Bound {
            drop_oldest: true,
            max_records: 20,
            max_bytes: 1 << 20,
        };
        let inbox = Inbox::new(7, Some(bound));
        inbox.put(data(7, 0, 10));
        // A server notice for 10..15, then data from 15 on.
        inbox.put(Pushed {
            data: msg::PushData {
                subscription_id: 7,
                dropped_records: 5,
                skipped_from: 10,
                skipped_to: 15,
                ..msg::PushData::default()
            },
            records: bytes::Bytes::new(),
        });
        inbox.put(data(7, 15, 10));
        inbox.put(data(7, 25, 10)); // evicts 0..10
        let notice = |p: Pushed| {
            (
                p.data.dropped_records,
                p.data.skipped_from,
                p.data.skipped_to,
            )
        };
        assert_eq!(notice(take_now(&inbox).unwrap()), (10, 0, 10));
        assert_eq!(notice(take_now(&inbox).unwrap()), (5, 10, 15));
        assert_eq!(data_range(&take_now(&inbox).unwrap()), Some((15, 25)));
        assert_eq!(data_range(&take_now(&inbox).unwrap()), Some((25, 35)));
        assert!(take_now(&inbox).is_none());
        // Evictions on evictions before the subscriber looks: one range.
        inbox.put(data(7, 35, 10));
        inbox.put(data(7, 45, 15)); // evicts 35..45
        inbox.put(data(7, 60, 10)); // evicts 45..60
        assert_eq!(notice(take_now(&inbox).unwrap()), (25, 35, 60));
        assert_eq!(data_range(&take_now(&inbox).unwrap()), Some((60, 70)));
        assert!(take_now(&inbox).is_none());
    }

    #[test]
    fn disconnect_overflow_ends_with_slow_consumer_and_closes() {
        let bound = Bound {
            drop_oldest: false,
            max_records: 10,
            max_bytes: 1 << 20,
        };
        let inbox = Inbox::new(3, Some(bound));
        inbox.put(data(3, 0, 10));
        inbox.put(data(3, 10, 1));
        inbox.put(data(3, 11, 1));
        let end = take_now(&inbox).unwrap();
        assert_eq!(end.data.end_code, ErrorCode::SlowConsumer as u32);
        assert!(end.data.end_message.contains("slow consumer"));
        assert!(take_now(&inbox).is_none());
    }
}

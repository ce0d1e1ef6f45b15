//! The built-in transforms besides VRL: `sample`, `dedupe`, `throttle` and `split`.
//!
//! Fields are named by VRL paths (`.user.id`, `.items[0]`), read with VRL's own path code.
//! What these transforms drop is dropped by design: acknowledged and counted as dropped.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};

use vrl::path::OwnedValuePath;
use vrl::value::Value;
use weir_flow::keyed::{KeyedConfig, KeyedLimiter};
use weir_flow::limiter::{Gcra, Rate};

use crate::event::Event;
use crate::transform::{Outputs, Transform};

/// Parses a field path: `.a.b`, or `a.b` for short.
pub fn field(path: &str) -> Result<OwnedValuePath, String> {
    let p = if path.starts_with('.') {
        path.to_string()
    } else {
        format!(".{path}")
    };
    vrl::path::parse_value_path(&p).map_err(|e| format!("`{path}` is not a field path: {e}"))
}

/// The values of `fields` in `v`, as one key (missing fields count as null).
fn key_of(v: &Value, fields: &[OwnedValuePath]) -> String {
    let mut key = String::new();
    for f in fields {
        match v.get(f) {
            Some(x) => key.push_str(&serde_json::to_string(x).unwrap_or_default()),
            None => key.push_str("null"),
        }
        key.push('\u{1f}');
    }
    key
}

fn hash(key: &str) -> u64 {
    // A fixed seed: the same key is sampled the same way on every run and every server.
    let mut h = foldhash::fast::FixedState::with_seed(0x5eed).build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

/// `sample`: keeps one event in `rate`; with `key_fields`, the same events every time (all
/// the events of a sampled key, such as every line of one request), by a hash of the key.
#[derive(Debug, Clone)]
pub struct Sample {
    pub rate: u64,
    pub key_fields: Vec<OwnedValuePath>,
    seen: u64,
}

impl Sample {
    pub fn new(rate: u64, key_fields: Vec<OwnedValuePath>) -> Self {
        Self {
            rate: rate.max(1),
            key_fields,
            seen: 0,
        }
    }
}

impl Transform for Sample {
    fn isolate_panics(&self) -> bool {
        false
    }

    fn process(&mut self, event: Event, out: &mut Outputs) {
        let keep = if self.key_fields.is_empty() {
            self.seen = self.seen.wrapping_add(1);
            self.seen % self.rate == 1 % self.rate
        } else {
            hash(&key_of(&event.value, &self.key_fields)) % self.rate == 0
        };
        if keep {
            out.emit(event)
        } else {
            out.drop_event(event)
        }
    }
}

/// `dedupe`: drops an event whose `fields` equal those of one of the last `cache_size`
/// events it passed. The cache is in memory: after a restart, or for events further apart
/// than the cache holds, duplicates pass — and at-least-once delivery re-reads events after a
/// crash, so this narrows duplicates, it cannot promise none.
#[derive(Debug, Clone)]
pub struct Dedupe {
    fields: Vec<OwnedValuePath>,
    cache_size: usize,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Dedupe {
    pub fn new(fields: Vec<OwnedValuePath>, cache_size: usize) -> Self {
        Self {
            fields,
            cache_size: cache_size.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }
}

impl Transform for Dedupe {
    fn isolate_panics(&self) -> bool {
        false
    }

    fn process(&mut self, event: Event, out: &mut Outputs) {
        let key = key_of(&event.value, &self.fields);
        if self.seen.contains(&key) {
            return out.drop_event(event);
        }
        if self.order.len() >= self.cache_size
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        out.emit(event);
    }
}

/// `throttle`: at most `threshold` events per `window` per key (`key_fields`; one key for
/// all without), on `weir-flow`'s keyed GCRA limiter (bursts up to the threshold, at most
/// 100,000 keys, the least recently used evicted). Events over the rate are dropped.
pub struct Throttle {
    key_fields: Vec<OwnedValuePath>,
    limiter: KeyedLimiter<String, Gcra>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish()
    }
}

impl Throttle {
    pub fn new(
        threshold: u32,
        window: std::time::Duration,
        key_fields: Vec<OwnedValuePath>,
    ) -> Self {
        let threshold = threshold.max(1);
        let rate = Rate::new(u64::from(threshold), window);
        Self {
            key_fields,
            limiter: KeyedLimiter::new(Gcra::new(rate, threshold), KeyedConfig::default()),
        }
    }
}

impl Transform for Throttle {
    fn isolate_panics(&self) -> bool {
        false
    }

    fn process(&mut self, event: Event, out: &mut Outputs) {
        let key = key_of(&event.value, &self.key_fields);
        match self.limiter.try_acquire(&key, 1) {
            Ok(()) => out.emit(event),
            Err(_) => out.drop_event(event),
        }
    }
}

/// `split`: an event whose `field` is an array becomes one event per element, each with the
/// element in place of the array (an empty array: the event is dropped by design). Events
/// whose field is not an array pass unchanged.
#[derive(Debug, Clone)]
pub struct Split {
    pub field: OwnedValuePath,
}

impl Transform for Split {
    fn isolate_panics(&self) -> bool {
        false
    }

    fn process(&mut self, mut event: Event, out: &mut Outputs) {
        let items = match event.value.get_mut(&self.field) {
            Some(Value::Array(items)) => std::mem::take(items),
            _ => return out.emit(event),
        };
        if items.is_empty() {
            return out.drop_event(event);
        }
        for item in items {
            let mut e = event.fork();
            e.value.insert(&self.field, item);
            out.emit(e);
        }
        event.ack();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> Event {
        Event::detached(serde_json::from_str(s).unwrap())
    }

    fn run(t: &mut dyn Transform, inputs: &[&str]) -> (Vec<String>, u64) {
        let mut out = Outputs::new(1);
        for i in inputs {
            t.process(ev(i), &mut out);
        }
        let kept = out.ports[0]
            .iter()
            .map(|e| serde_json::to_string(&e.value).unwrap())
            .collect();
        (kept, out.dropped)
    }

    #[test]
    fn sample_keeps_one_in_rate_or_whole_keys() {
        let mut s = Sample::new(3, Vec::new());
        let inputs: Vec<String> = (0..9).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let (kept, dropped) = run(&mut s, &refs);
        assert_eq!((kept.len(), dropped), (3, 6));
        // Keyed: a key is kept or dropped as a whole.
        let mut s = Sample::new(2, vec![field("req").unwrap()]);
        let inputs: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"req":{},"n":{i}}}"#, i % 20))
            .collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let (kept, _) = run(&mut s, &refs);
        let reqs: HashSet<i64> = kept
            .iter()
            .map(|k| {
                serde_json::from_str::<serde_json::Value>(k).unwrap()["req"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(kept.len(), reqs.len() * 10, "every event of a kept key");
        assert!(!reqs.is_empty() && reqs.len() < 20);
    }

    #[test]
    fn dedupe_drops_repeats_within_its_cache() {
        let mut d = Dedupe::new(vec![field("id").unwrap()], 2);
        let (kept, dropped) = run(
            &mut d,
            &[
                r#"{"id":1}"#,
                r#"{"id":1,"x":2}"#,
                r#"{"id":2}"#,
                r#"{"id":3}"#,
                r#"{"id":1}"#,
            ],
        );
        // id 1 left the two-entry cache before it came back.
        assert_eq!(
            kept,
            [r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#, r#"{"id":1}"#]
        );
        assert_eq!(dropped, 1);
    }

    #[test]
    fn throttle_limits_each_key() {
        let mut t = Throttle::new(
            2,
            std::time::Duration::from_secs(3600),
            vec![field("u").unwrap()],
        );
        let (kept, dropped) = run(
            &mut t,
            &[
                r#"{"u":"a"}"#,
                r#"{"u":"a"}"#,
                r#"{"u":"a"}"#,
                r#"{"u":"b"}"#,
            ],
        );
        assert_eq!(kept, [r#"{"u":"a"}"#, r#"{"u":"a"}"#, r#"{"u":"b"}"#]);
        assert_eq!(dropped, 1);
    }

    #[test]
    fn split_makes_one_event_per_element() {
        let mut s = Split {
            field: field("items").unwrap(),
        };
        let (kept, dropped) = run(
            &mut s,
            &[
                r#"{"o":1,"items":[{"sku":"a"},{"sku":"b"}]}"#,
                r#"{"o":2,"items":[]}"#,
                r#"{"o":3}"#,
            ],
        );
        assert_eq!(
            kept,
            [
                r#"{"items":{"sku":"a"},"o":1}"#,
                r#"{"items":{"sku":"b"},"o":1}"#,
                r#"{"o":3}"#
            ]
        );
        assert_eq!(dropped, 1);
        assert!(field("a..b").is_err());
    }
}

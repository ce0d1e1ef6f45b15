//! What the libraries' configurations share so that each deserializes itself from the
//! server's TOML (each default then written once, on its field): durations as whole
//! milliseconds or microseconds, the units the configuration's keys carry in their names
//! (`idle_timeout_ms`, `busy_poll_us`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A `Duration` as whole milliseconds (`#[serde(with = "millis")]`).
pub mod millis {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A `Duration` as whole microseconds (`#[serde(with = "micros")]`).
pub mod micros {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(v.as_micros()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, Deserialize, PartialEq)]
    struct T {
        #[serde(with = "millis")]
        a_ms: Duration,
        #[serde(with = "micros")]
        b_us: Duration,
    }

    #[test]
    fn durations_read_and_write_in_their_units() {
        let t: T = serde_json::from_str(r#"{"a_ms": 1500, "b_us": 200}"#).unwrap();
        assert_eq!(
            t,
            T {
                a_ms: Duration::from_millis(1500),
                b_us: Duration::from_micros(200)
            }
        );
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a_ms":1500,"b_us":200}"#
        );
        assert!(serde_json::from_str::<T>(r#"{"a_ms": -1, "b_us": 0}"#).is_err());
    }
}

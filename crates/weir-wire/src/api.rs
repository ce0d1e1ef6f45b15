//! API keys and versions.

use crate::messages::ApiVersionRange;

/// Every API of the native protocol, by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Api {
    Hello = 0,
    Ping = 1,
    CreateTopic = 2,
    DeleteTopic = 3,
    Metadata = 4,
    Produce = 5,
    Fetch = 6,
    ListOffsets = 7,
    JoinGroup = 8,
    Heartbeat = 9,
    LeaveGroup = 10,
    CommitOffsets = 11,
    FetchOffsets = 12,
    ListGroups = 13,
    DescribeGroup = 14,
    Subscribe = 15,
    Credit = 16,
    Push = 17,
    Unsubscribe = 18,
    InitProducer = 19,
    Authenticate = 20,
}

impl Api {
    /// The API's name in snake case, as metrics and logs label it.
    pub fn name(self) -> &'static str {
        match self {
            Api::Hello => "hello",
            Api::Ping => "ping",
            Api::CreateTopic => "create_topic",
            Api::DeleteTopic => "delete_topic",
            Api::Metadata => "metadata",
            Api::Produce => "produce",
            Api::Fetch => "fetch",
            Api::ListOffsets => "list_offsets",
            Api::JoinGroup => "join_group",
            Api::Heartbeat => "heartbeat",
            Api::LeaveGroup => "leave_group",
            Api::CommitOffsets => "commit_offsets",
            Api::FetchOffsets => "fetch_offsets",
            Api::ListGroups => "list_groups",
            Api::DescribeGroup => "describe_group",
            Api::Subscribe => "subscribe",
            Api::Credit => "credit",
            Api::Push => "push",
            Api::Unsubscribe => "unsubscribe",
            Api::InitProducer => "init_producer",
            Api::Authenticate => "authenticate",
        }
    }

    pub const ALL: [Api; 21] = [
        Api::Hello,
        Api::Ping,
        Api::CreateTopic,
        Api::DeleteTopic,
        Api::Metadata,
        Api::Produce,
        Api::Fetch,
        Api::ListOffsets,
        Api::JoinGroup,
        Api::Heartbeat,
        Api::LeaveGroup,
        Api::CommitOffsets,
        Api::FetchOffsets,
        Api::ListGroups,
        Api::DescribeGroup,
        Api::Subscribe,
        Api::Credit,
        Api::Push,
        Api::Unsubscribe,
        Api::InitProducer,
        Api::Authenticate,
    ];

    pub fn from_key(key: u16) -> Option<Api> {
        Self::ALL.get(key as usize).copied()
    }

    /// Versions of this API this build speaks (inclusive).
    pub fn versions(self) -> (u16, u16) {
        (1, 1)
    }

    /// This build's version ranges, as sent in Hello.
    pub fn supported() -> Vec<ApiVersionRange> {
        Self::ALL
            .iter()
            .map(|a| {
                let (min, max) = a.versions();
                ApiVersionRange {
                    api_key: *a as u32,
                    min_version: u32::from(min),
                    max_version: u32::from(max),
                }
            })
            .collect()
    }
}

/// The highest version of each API both sides speak; `None` for an API without one.
pub fn negotiate(ours: &[ApiVersionRange], theirs: &[ApiVersionRange]) -> Vec<(Api, Option<u16>)> {
    Api::ALL
        .iter()
        .map(|api| {
            let key = *api as u32;
            let pick = ours
                .iter()
                .find(|r| r.api_key == key)
                .zip(theirs.iter().find(|r| r.api_key == key))
                .and_then(|(a, b)| {
                    let lo = a.min_version.max(b.min_version);
                    let hi = a.max_version.min(b.max_version);
                    (lo <= hi).then(|| hi.min(u32::from(u16::MAX)) as u16)
                });
            (*api, pick)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(key: Api, min: u32, max: u32) -> ApiVersionRange {
        ApiVersionRange {
            api_key: key as u32,
            min_version: min,
            max_version: max,
        }
    }

    #[test]
    fn negotiation_picks_the_highest_common_version_or_none() {
        let ours = vec![range(Api::Produce, 1, 3), range(Api::Fetch, 2, 2)];
        let theirs = vec![range(Api::Produce, 2, 5), range(Api::Fetch, 3, 4)];
        let got = negotiate(&ours, &theirs);
        assert!(got.contains(&(Api::Produce, Some(3))));
        assert!(got.contains(&(Api::Fetch, None)));
        assert!(got.contains(&(Api::Hello, None)));
    }

    #[test]
    fn keys_are_stable() {
        for (i, api) in Api::ALL.iter().enumerate() {
            assert_eq!(*api as usize, i);
            assert_eq!(Api::from_key(i as u16), Some(*api));
        }
        assert_eq!(Api::from_key(19), Some(Api::InitProducer));
        assert_eq!(Api::from_key(20), Some(Api::Authenticate));
        assert_eq!(Api::from_key(21), None);
    }
}

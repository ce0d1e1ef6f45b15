//! The KIP-848 consumer group protocol (`group.protocol=consumer`): the broker assigns, each
//! member heartbeats (ConsumerGroupHeartbeat) and is told its assignment, and no partition is
//! given to a member while another still holds it.
//!
//! State per group: an epoch, bumped whenever membership or a subscription changes, and per
//! member its subscription, what it was last told it owns (`assigned`), what it last said it
//! owns (`owned`), its epoch and session deadline. The target assignment is a pure function of
//! the members and the topics' partition counts (each topic's partitions dealt in ranges over
//! the members subscribed to it, in member id order), recomputed at each heartbeat. A member
//! converges on its target in two steps, as the protocol requires: first it is told to give up
//! what it must (its assignment shrinks to what it keeps), then, once no other member holds
//! them (neither told nor saying it owns them), it is given its new partitions and the
//! group's epoch. A member that holds on to partitions it must give up past its rebalance
//! timeout is removed, as is one silent past its session timeout.
//!
//! A group's name belongs to one protocol at a time: a classic group (`crate::groups`) and a
//! consumer group refuse each other's names with INCONSISTENT_GROUP_PROTOCOL, and both claim
//! the name from the native door. Regular-expression subscriptions (v1) are refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use weir_broker::Broker;
use weir_broker::group::GroupProtocol;

use crate::code;

/// How long a member may stay silent (Kafka's `group.consumer.session.timeout.ms`).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(45);
/// How often members are asked to heartbeat. Shorter than Kafka's 5 s: a member learns of a
/// change, and is given its partitions, only when it heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Longest rebalance timeout honoured.
const MAX_REBALANCE: Duration = Duration::from_secs(300);
/// Most members in one group, and most groups.
pub const MAX_MEMBERS: usize = 1_000;
pub const MAX_GROUPS: usize = 10_000;
/// Most topics one member may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// A (topic, partition).
pub type Tp = (String, u32);

/// What a member sends in a heartbeat, its topics by name (the door resolves ids).
#[derive(Debug, Clone, Default)]
pub struct Beat {
    pub group: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout: Duration,
    /// `None`: unchanged since the last heartbeat.
    pub subscribed: Option<Vec<String>>,
    /// `None`: unchanged since the last heartbeat.
    pub owned: Option<BTreeSet<Tp>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeatOutcome {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    /// `Some` when the member's assignment changed (or it just joined).
    pub assignment: Option<BTreeSet<Tp>>,
}

impl BeatOutcome {
    fn error(error: i16, message: &str, member_id: &str) -> Self {
        Self {
            error,
            message: Some(message.to_string()),
            member_id: member_id.to_string(),
            member_epoch: -1,
            assignment: None,
        }
    }
}

#[derive(Debug)]
struct Member {
    epoch: i32,
    previous_epoch: i32,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    rebalance_timeout: Duration,
    subscribed: Vec<String>,
    /// What the member was last told it owns.
    assigned: BTreeSet<Tp>,
    /// What the member last said it owns.
    owned: BTreeSet<Tp>,
    deadline: Instant,
    /// Since when it holds partitions it must give up.
    revoking_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Group {
    epoch: i32,
    members: BTreeMap<String, Member>,
}

/// A member as admin views show it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    pub subscribed: Vec<String>,
    pub assigned: BTreeSet<Tp>,
}

/// Every consumer group of one listener. One mutex inside, never held across an await.
#[derive(Debug)]
pub struct ConsumerGroups {
    broker: Broker,
    groups: Mutex<HashMap<String, Group>>,
}

impl ConsumerGroups {
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `group` is a consumer group here.
    pub fn holds(&self, group: &str) -> bool {
        self.groups.lock().contains_key(group)
    }

    /// One heartbeat. `classic_holds` says whether the classic coordinator holds the name.
    pub fn heartbeat(&self, beat: Beat, classic_holds: bool, now: Instant) -> BeatOutcome {
        let refuse = |error, message: &str| BeatOutcome::error(error, message, &beat.member_id);
        if beat.group.is_empty() {
            return refuse(code::INVALID_GROUP_ID, "the group id is empty");
        }
        let mut groups = self.groups.lock();
        if !groups.contains_key(&beat.group) {
            if beat.member_epoch != 0 {
                return refuse(code::UNKNOWN_MEMBER_ID, "the group has no such member");
            }
            if classic_holds {
                return refuse(
                    code::INCONSISTENT_GROUP_PROTOCOL,
                    "a classic (JoinGroup) group holds this name",
                );
            }
            if groups.len() >= MAX_GROUPS {
                return refuse(code::GROUP_MAX_SIZE_REACHED, "too many groups");
            }
            if self
                .broker
                .claim_group(&beat.group, GroupProtocol::Kafka)
                .is_err()
            {
                return refuse(
                    code::INCONSISTENT_GROUP_PROTOCOL,
                    "a native group holds this name",
                );
            }
            groups.insert(beat.group.clone(), Group::default());
        }
        let g = groups.get_mut(&beat.group).expect("present");
        let outcome = self.beat_in(g, beat, now);
        let name = outcome.1;
        if groups.get(&name).is_some_and(|g| g.members.is_empty()) {
            groups.remove(&name);
            self.broker.release_group(&name, GroupProtocol::Kafka);
        }
        outcome.0
    }

    fn beat_in(&self, g: &mut Group, beat: Beat, now: Instant) -> (BeatOutcome, String) {
        let name = beat.group.clone();
        let refuse = |error, message: &str| BeatOutcome::error(error, message, &beat.member_id);
        match beat.member_epoch {
            // Leaving (-1), or a static member leaving for now (-2): its partitions are
            // free at once.
            -1 | -2 => {
                if g.members.remove(&beat.member_id).is_some() {
                    g.epoch += 1;
                }
                let out = BeatOutcome {
                    error: code::NONE,
                    message: None,
                    member_id: beat.member_id,
                    member_epoch: beat.member_epoch,
                    assignment: None,
                };
                return (out, name);
            }
            0 => {
                let Some(subscribed) = beat.subscribed.clone() else {
                    return (
                        refuse(code::INVALID_REQUEST, "a join names its topics"),
                        name,
                    );
                };
                if subscribed.len() > MAX_SUBSCRIPTIONS {
                    return (refuse(code::INVALID_REQUEST, "too many topics"), name);
                }
                let id = if beat.member_id.is_empty() {
                    // v0: the coordinator names the member.
                    format!("{:032x}", rand_id())
                } else {
                    beat.member_id.clone()
                };
                // A static member coming back replaces its earlier incarnation.
                if let Some(instance) = &beat.instance_id {
                    let old: Vec<String> = g
                        .members
                        .iter()
                        .filter(|(mid, m)| {
                            **mid != id && m.instance_id.as_deref() == Some(instance)
                        })
                        .map(|(mid, _)| mid.clone())
                        .collect();
                    for mid in old {
                        g.members.remove(&mid);
                    }
                }
                if !g.members.contains_key(&id) && g.members.len() >= MAX_MEMBERS {
                    return (
                        refuse(code::GROUP_MAX_SIZE_REACHED, "the group is full"),
                        name,
                    );
                }
                g.epoch += 1;
                g.members.insert(
                    id.clone(),
                    Member {
                        epoch: 0,
                        previous_epoch: 0,
                        instance_id: beat.instance_id.clone(),
                        client_id: beat.client_id.clone(),
                        client_host: beat.client_host.clone(),
                        rebalance_timeout: beat.rebalance_timeout.min(MAX_REBALANCE),
                        subscribed,
                        assigned: BTreeSet::new(),
                        owned: BTreeSet::new(),
                        deadline: now + SESSION_TIMEOUT,
                        revoking_since: None,
                    },
                );
                let out = self.reconcile(g, &id, true, now);
                return (out, name);
            }
            _ => {}
        }
        let Some(m) = g.members.get_mut(&beat.member_id) else {
            return (
                refuse(code::UNKNOWN_MEMBER_ID, "the group has no such member"),
                name,
            );
        };
        if beat.member_epoch != m.epoch && beat.member_epoch != m.previous_epoch {
            return (
                refuse(
                    code::FENCED_MEMBER_EPOCH,
                    "the member's epoch is not the coordinator's",
                ),
                name,
            );
        }
        m.deadline = now + SESSION_TIMEOUT;
        m.rebalance_timeout = beat.rebalance_timeout.min(MAX_REBALANCE);
        m.client_host = beat.client_host;
        if let Some(owned) = beat.owned {
            m.owned = owned;
        }
        let mut changed = false;
        if let Some(subscribed) = beat.subscribed
            && subscribed != m.subscribed
        {
            if subscribed.len() > MAX_SUBSCRIPTIONS {
                return (refuse(code::INVALID_REQUEST, "too many topics"), name);
            }
            m.subscribed = subscribed;
            changed = true;
        }
        if changed {
            g.epoch += 1;
        }
        let id = beat.member_id;
        (self.reconcile(g, &id, false, now), name)
    }

    /// The target assignment: each topic's partitions dealt in contiguous ranges over the
    /// members subscribed to it, in member id order (the first ones get one more when they
    /// do not divide evenly).
    fn target(&self, g: &Group) -> BTreeMap<String, BTreeSet<Tp>> {
        let mut by_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, m) in &g.members {
            for t in &m.subscribed {
                by_topic.entry(t).or_default().push(id);
            }
        }
        let mut target: BTreeMap<String, BTreeSet<Tp>> = g
            .members
            .keys()
            .map(|id| (id.clone(), BTreeSet::new()))
            .collect();
        for (topic, members) in by_topic {
            let Some(count) = self.broker.partition_count(topic) else {
                continue;
            };
            let n = members.len() as u32;
            let (each, extra) = (count / n, count % n);
            let mut next = 0;
            for (i, id) in members.iter().enumerate() {
                let take = each + u32::from((i as u32) < extra);
                let set = target.get_mut(*id).expect("every member has a target");
                for p in next..next + take {
                    set.insert((topic.to_string(), p));
                }
                next += take;
            }
        }
        target
    }

    /// Moves member `id` toward its target: first it gives up what it must, then, once no
    /// other member holds them, it gets its new partitions and the group's epoch.
    fn reconcile(&self, g: &mut Group, id: &str, joined: bool, now: Instant) -> BeatOutcome {
        let target = self.target(g).remove(id).unwrap_or_default();
        let held_by_others: BTreeSet<Tp> = g
            .members
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .flat_map(|(_, m)| m.assigned.iter().chain(m.owned.iter()))
            .cloned()
            .collect();
        let group_epoch = g.epoch;
        let m = g.members.get_mut(id).expect("reconciled members exist");
        let keep: BTreeSet<Tp> = m.assigned.intersection(&target).cloned().collect();
        let before = m.assigned.clone();
        let releasing = m.owned.iter().any(|tp| !target.contains(tp)) || keep != m.assigned;
        let next = if releasing {
            // Give up first; nothing new until the member says it let go.
            m.revoking_since.get_or_insert(now);
            keep
        } else {
            m.revoking_since = None;
            let mut next = keep;
            next.extend(
                target
                    .iter()
                    .filter(|tp| !held_by_others.contains(tp))
                    .cloned(),
            );
            next
        };
        if !releasing && (next == target || joined) && m.epoch != group_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = group_epoch;
        }
        let changed = next != before || joined;
        m.assigned = next.clone();
        BeatOutcome {
            error: code::NONE,
            message: None,
            member_id: id.to_string(),
            member_epoch: m.epoch,
            assignment: changed.then_some(next),
        }
    }

    /// Whether `member_id` of `group` may commit with `epoch`: `NONE` or the error code.
    pub fn check_commit(&self, group: &str, epoch: i32, member_id: &str) -> i16 {
        let groups = self.groups.lock();
        let Some(g) = groups.get(group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if epoch < 0 && member_id.is_empty() {
            // An admin tool's commit: allowed while the group has no members.
            return if g.members.is_empty() {
                code::NONE
            } else {
                code::UNKNOWN_MEMBER_ID
            };
        }
        match g.members.get(member_id) {
            None => code::UNKNOWN_MEMBER_ID,
            Some(m) if epoch == m.epoch || epoch == m.previous_epoch => code::NONE,
            Some(_) => code::STALE_MEMBER_EPOCH,
        }
    }

    /// Removes members silent past their session, or holding partitions they must give up
    /// past their rebalance timeout.
    pub fn tick(&self, now: Instant) {
        let mut groups = self.groups.lock();
        let mut empty = Vec::new();
        for (name, g) in groups.iter_mut() {
            let before = g.members.len();
            g.members.retain(|id, m| {
                let late = m
                    .revoking_since
                    .is_some_and(|since| now >= since + m.rebalance_timeout);
                let expired = now >= m.deadline;
                if expired || late {
                    tracing::info!(group = %name, member = %id, expired, "consumer group member removed");
                }
                !(expired || late)
            });
            if g.members.len() < before {
                g.epoch += 1;
            }
            if g.members.is_empty() {
                empty.push(name.clone());
            }
        }
        for name in empty {
            groups.remove(&name);
            self.broker.release_group(&name, GroupProtocol::Kafka);
        }
    }

    /// A group's epoch and members, for admin views.
    pub fn view(&self, group: &str) -> Option<(i32, Vec<MemberView>)> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberView {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                epoch: m.epoch,
                subscribed: m.subscribed.clone(),
                assigned: m.assigned.clone(),
            })
            .collect();
        Some((g.epoch, members))
    }

    /// Every group's name.
    pub fn names(&self) -> Vec<String> {
        self.groups.lock().keys().cloned().collect()
    }

    /// Drops every group (shutdown).
    pub fn clear(&self) {
        let mut groups = self.groups.lock();
        for (name, _) in groups.drain() {
            self.broker.release_group(&name, GroupProtocol::Kafka);
        }
    }
}

/// (topic, partition) pairs in order, as one entry per topic with its partitions.
pub fn by_topic(tps: impl IntoIterator<Item = Tp>) -> Vec<(String, Vec<u32>)> {
    let mut out: Vec<(String, Vec<u32>)> = Vec::new();
    for (t, p) in tps {
        match out.last_mut() {
            Some((last, ps)) if *last == t => ps.push(p),
            _ => out.push((t, vec![p])),
        }
    }
    out
}

/// A random 128-bit member id.
fn rand_id() -> u128 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn groups(partitions: u32) -> (tempfile::TempDir, ConsumerGroups) {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        let config = weir_broker::TopicConfig {
            partitions,
            ..Default::default()
        };
        broker.create_topic("t", Some(config)).await.unwrap();
        (dir, ConsumerGroups::new(broker))
    }

    fn beat(member: &str, epoch: i32, owned: Option<&BTreeSet<Tp>>) -> Beat {
        Beat {
            group: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout: Duration::from_secs(30),
            subscribed: (epoch == 0).then(|| vec!["t".to_string()]),
            owned: owned.cloned(),
            ..Beat::default()
        }
    }

    /// Members joining and leaving in turn, each heartbeating with what it was last told:
    /// no partition is ever held by two members at once, and every member converges on its
    /// share, with the group's epoch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_move_only_once_released_and_members_converge() {
        let (_d, cg) = groups(7).await;
        let now = Instant::now();
        // member → (epoch, what it owns: what it was last told)
        let mut state: BTreeMap<String, (i32, BTreeSet<Tp>)> = BTreeMap::new();
        let step =
            |cg: &ConsumerGroups, state: &mut BTreeMap<String, (i32, BTreeSet<Tp>)>, id: &str| {
                let (epoch, owned) = state.get(id).cloned().unwrap_or((0, BTreeSet::new()));
                let out = cg.heartbeat(beat(id, epoch, Some(&owned)), false, now);
                assert_eq!(out.error, code::NONE, "{id}: {out:?}");
                let owned = out.assignment.unwrap_or(owned);
                state.insert(id.to_string(), (out.member_epoch, owned));
                let mut all = BTreeSet::new();
                for (_, held) in state.values() {
                    for tp in held {
                        assert!(all.insert(tp.clone()), "{tp:?} held twice: {state:?}");
                    }
                }
            };
        for joining in ["a", "b", "c"] {
            step(&cg, &mut state, joining);
            for _ in 0..4 {
                for id in state.keys().cloned().collect::<Vec<_>>() {
                    step(&cg, &mut state, &id);
                }
            }
            let held: usize = state.values().map(|(_, h)| h.len()).sum();
            assert_eq!(held, 7, "after {joining} joined: {state:?}");
            let (epoch, _) = cg.view("g").unwrap();
            assert!(state.values().all(|(e, _)| *e == epoch), "{state:?}");
        }
        // Shares of 7 over three: 3, 2, 2 in member id order, each a range.
        let shares: Vec<usize> = state.values().map(|(_, h)| h.len()).collect();
        assert_eq!(shares, vec![3, 2, 2]);
        // "b" leaves: its partitions are free at once, and the others take them.
        let (epoch, _) = state["b"].clone();
        let out = cg.heartbeat(beat("b", -1, None), false, now);
        assert_eq!((out.error, out.member_epoch), (code::NONE, -1));
        state.remove("b");
        for _ in 0..4 {
            for id in state.keys().cloned().collect::<Vec<_>>() {
                step(&cg, &mut state, &id);
            }
        }
        let held: usize = state.values().map(|(_, h)| h.len()).sum();
        assert_eq!(held, 7);
        // Its epoch is gone with it; an unknown member or a wrong epoch is refused.
        assert_eq!(
            cg.heartbeat(beat("b", epoch, None), false, now).error,
            code::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            cg.heartbeat(beat("a", 999, None), false, now).error,
            code::FENCED_MEMBER_EPOCH
        );
        // Commits: the member's epoch, or an admin tool's while the group is empty.
        let (a_epoch, _) = state["a"].clone();
        assert_eq!(cg.check_commit("g", a_epoch, "a"), code::NONE);
        assert_eq!(
            cg.check_commit("g", a_epoch + 5, "a"),
            code::STALE_MEMBER_EPOCH
        );
        assert_eq!(cg.check_commit("g", -1, ""), code::UNKNOWN_MEMBER_ID);
        // Silent past the session timeout, members are removed, and the group with them.
        cg.tick(now + SESSION_TIMEOUT + Duration::from_secs(1));
        assert!(!cg.holds("g"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_classic_groups_name_is_refused_and_a_join_needs_topics() {
        let (_d, cg) = groups(1).await;
        let now = Instant::now();
        let out = cg.heartbeat(beat("a", 0, None), true, now);
        assert_eq!(out.error, code::INCONSISTENT_GROUP_PROTOCOL);
        let mut no_topics = beat("a", 0, None);
        no_topics.subscribed = None;
        assert_eq!(
            cg.heartbeat(no_topics, false, now).error,
            code::INVALID_REQUEST
        );
        assert!(!cg.holds("g"), "a refused join leaves no group behind");
        // v0: the coordinator names the member.
        let out = cg.heartbeat(beat("", 0, None), false, now);
        assert_eq!(out.error, code::NONE);
        assert_eq!(out.member_id.len(), 32);
    }
}

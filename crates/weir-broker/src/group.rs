//! Consumer groups: membership, sessions, generations, and server-side assignment.
//!
//! Two layers, kept apart so that a Kafka front door (JoinGroup barrier, a leader that runs a
//! client-side assignor, SyncGroup) can reuse the first one:
//!
//! - **Membership** ([`Membership`], [`Member`]): who belongs to a group, their subscriptions,
//!   session timeouts and deadlines, the generation counter and the [`GroupProtocol`] that
//!   owns the group name. It knows nothing about who computes assignments.
//! - **Assignment** ([`assign_round_robin`], [`assign_sticky`]): pure functions from
//!   subscriptions and partition counts (and, for sticky, the previous assignment) to a new
//!   assignment.
//!
//! [`GroupCoordinator`] combines them for the native protocol: every membership change
//! (join, leave, subscription change, expiry, topic created, deleted or grown) rebalances at
//! once, which bumps the generation. Members learn about it from [`GroupCoordinator::heartbeat`]
//! (`RebalanceInProgress`) and rejoin with their member id to get their new assignment;
//! such a rejoin changes nothing and returns the current generation. Commits are fenced with
//! [`GroupCoordinator::check_owner`]: only the current owner of a partition, in the current
//! generation, may commit it.
//!
//! There is no revocation barrier: right after a rebalance a partition's previous owner may
//! still fetch it until its next heartbeat, while the new owner already does. Delivery stays
//! at-least-once, and the previous owner can no longer commit.
//!
//! Time is an input (`now: Instant`), so sessions are tested without sleeping. Committed
//! offsets live in [`crate::offsets`], not here; a group without members is dropped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::{BrokerError, Result};

/// Which front door's protocol manages a group. A group name belongs to one protocol at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupProtocol {
    /// weir's native protocol: the broker assigns partitions.
    Native,
    /// The Kafka protocol: the group leader assigns partitions (client-side assignors).
    Kafka,
}

impl GroupProtocol {
    /// Lower-case name, as error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            GroupProtocol::Native => "native",
            GroupProtocol::Kafka => "kafka",
        }
    }
}

/// How the broker spreads partitions over a native group's members. All members of a group
/// must ask for the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssignmentStrategy {
    /// Partitions in (topic, partition) order dealt to members in turn ([`assign_round_robin`]).
    RoundRobin,
    /// Members keep what they had; only what must move moves ([`assign_sticky`]).
    Sticky,
}

impl AssignmentStrategy {
    /// Lower-case name, as error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            AssignmentStrategy::RoundRobin => "round-robin",
            AssignmentStrategy::Sticky => "sticky",
        }
    }
}

/// Topics each member subscribes to: member id → topics.
pub type Subscriptions = BTreeMap<String, BTreeSet<String>>;

/// Who consumes what: member id → topic → partitions (sorted). Every subscribed member has an
/// entry, possibly empty.
pub type Assignment = BTreeMap<String, BTreeMap<String, Vec<u32>>>;

// ---------------------------------------------------------------------------------------------
// Membership core
// ---------------------------------------------------------------------------------------------

/// One member of a group. `state` is what the protocol's own coordinator keeps beside the
/// shared fields (nothing for the native protocol; the Kafka door's join and sync waiters,
/// assignor metadata and assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<X = ()> {
    pub id: String,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout: Duration,
    /// The member is expired once `now >= deadline` (see [`Membership::expired`]).
    pub deadline: Instant,
    pub state: X,
}

/// A group's membership: protocol, generation and members. No locking, no assignment, no
/// clock of its own: the caller passes `now`. Both coordinators keep their members here: the
/// native one with server-side assignment, and the Kafka door's JoinGroup/SyncGroup barrier.
#[derive(Debug, Clone)]
pub struct Membership<X = ()> {
    protocol: GroupProtocol,
    generation: u64,
    members: BTreeMap<String, Member<X>>,
}

impl<X> Membership<X> {
    /// An empty group at generation 0.
    pub fn new(protocol: GroupProtocol) -> Self {
        Self {
            protocol,
            generation: 0,
            members: BTreeMap::new(),
        }
    }

    pub fn protocol(&self) -> GroupProtocol {
        self.protocol
    }

    /// The current generation; 0 until the first rebalance.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Members in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member<X>> {
        self.members.values()
    }

    /// Members in id order, to change.
    pub fn members_mut(&mut self) -> impl Iterator<Item = &mut Member<X>> {
        self.members.values_mut()
    }

    pub fn member(&self, id: &str) -> Option<&Member<X>> {
        self.members.get(id)
    }

    pub fn member_mut(&mut self, id: &str) -> Option<&mut Member<X>> {
        self.members.get_mut(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    /// Member ids in order.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.members.keys()
    }

    /// Adds (or replaces) a member.
    pub fn insert(&mut self, member: Member<X>) {
        self.members.insert(member.id.clone(), member);
    }

    pub fn remove(&mut self, id: &str) -> Option<Member<X>> {
        self.members.remove(id)
    }

    /// Keeps only the members `keep` says so of.
    pub fn retain(&mut self, mut keep: impl FnMut(&Member<X>) -> bool) {
        self.members.retain(|_, m| keep(m));
    }

    /// Pushes a member's deadline to `now` + its session timeout. False if unknown.
    pub fn touch(&mut self, id: &str, now: Instant) -> bool {
        match self.members.get_mut(id) {
            Some(m) => {
                m.deadline = now + m.session_timeout;
                true
            }
            None => false,
        }
    }

    /// Members whose deadline has passed (`deadline <= now`), in id order.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        self.expired_unless(now, |_| false)
    }

    /// Members whose deadline has passed, but for those `spared` says are not to expire now
    /// (the Kafka door spares a member waiting in a join or a sync: its heartbeats queue
    /// behind that request).
    pub fn expired_unless(&self, now: Instant, spared: impl Fn(&Member<X>) -> bool) -> Vec<String> {
        self.members
            .values()
            .filter(|m| m.deadline <= now && !spared(m))
            .map(|m| m.id.clone())
            .collect()
    }

    /// Starts a new generation and returns it.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Checks a generation a member of `group` sent: an older one means a rebalance happened
    /// since (`RebalanceInProgress`, rejoin), a newer one was never handed out
    /// (`IllegalGeneration`).
    pub fn check_generation(&self, group: &str, generation: u64) -> Result<()> {
        if generation < self.generation {
            return Err(BrokerError::RebalanceInProgress {
                group: group.to_string(),
            });
        }
        if generation > self.generation {
            return Err(BrokerError::IllegalGeneration {
                group: group.to_string(),
                given: generation,
                current: self.generation,
            });
        }
        Ok(())
    }

    /// Every member's subscription.
    pub fn subscriptions(&self) -> Subscriptions {
        self.members
            .values()
            .map(|m| (m.id.clone(), m.topics.clone()))
            .collect()
    }

    /// Topics at least one member subscribes to.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Assignment
// ---------------------------------------------------------------------------------------------

fn empty_assignment(subscriptions: &Subscriptions) -> Assignment {
    subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect()
}

/// Deals partitions, in (topic, partition) order, to members in id order, skipping members
/// not subscribed to the partition's topic. Topics absent from `partitions` (unknown) or
/// subscribed by nobody are not assigned. With identical subscriptions, member partition
/// counts differ by at most one.
pub fn assign_round_robin(
    subscriptions: &Subscriptions,
    partitions: &BTreeMap<String, u32>,
) -> Assignment {
    let mut out = empty_assignment(subscriptions);
    let members: Vec<(&String, &BTreeSet<String>)> = subscriptions.iter().collect();
    let mut next = 0;
    for (topic, &count) in partitions {
        if !members.iter().any(|(_, topics)| topics.contains(topic)) {
            continue;
        }
        for p in 0..count {
            // Terminates: at least one member subscribes to `topic`.
            loop {
                let (member, topics) = members[next];
                next = (next + 1) % members.len();
                if topics.contains(topic) {
                    out.get_mut(member)
                        .expect("every member has an entry")
                        .entry(topic.clone())
                        .or_default()
                        .push(p);
                    break;
                }
            }
        }
    }
    out
}

/// Sticky assignment: each member keeps the partitions it had in `previous` that are still
/// valid (the member is still here and subscribed, the partition still exists); the rest go
/// to the least loaded subscribers; then partitions move from the most loaded members to
/// subscribers with at least two fewer until no such move is possible.
///
/// With identical subscriptions the result is balanced (counts differ by at most one) and
/// moves the fewest previously owned partitions any balanced assignment could. With differing
/// subscriptions no partition can move to a subscriber holding two or more fewer.
pub fn assign_sticky(
    subscriptions: &Subscriptions,
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    // member → (topic, partition) in the order acquired; a member gives up its newest first.
    let mut owned: BTreeMap<&str, Vec<(&str, u32)>> = subscriptions
        .keys()
        .map(|m| (m.as_str(), Vec::new()))
        .collect();
    let mut subscribers: HashMap<&str, Vec<&str>> = HashMap::new();
    for (member, topics) in subscriptions {
        for topic in topics {
            subscribers
                .entry(topic.as_str())
                .or_default()
                .push(member.as_str());
        }
    }
    let mut taken: HashSet<(&str, u32)> = HashSet::new();

    // 1. Keep what is still valid.
    for (member, topics) in previous {
        let Some(subscribed) = subscriptions.get(member) else {
            continue;
        };
        let list = owned.get_mut(member.as_str()).expect("subscribed member");
        for (topic, parts) in topics {
            if !subscribed.contains(topic) {
                continue;
            }
            let Some((topic, &count)) = partitions.get_key_value(topic.as_str()) else {
                continue;
            };
            for &p in parts {
                if p < count && taken.insert((topic.as_str(), p)) {
                    list.push((topic.as_str(), p));
                }
            }
        }
    }

    // 2. Give each unowned partition to its least loaded subscriber (ties: lowest id).
    for (topic, &count) in partitions {
        let Some(subs) = subscribers.get(topic.as_str()) else {
            continue;
        };
        for p in 0..count {
            if taken.contains(&(topic.as_str(), p)) {
                continue;
            }
            let member = *subs
                .iter()
                .min_by_key(|m| (owned[**m].len(), **m))
                .expect("a topic in `subscribers` has one");
            owned
                .get_mut(member)
                .expect("subscribed member")
                .push((topic.as_str(), p));
            taken.insert((topic.as_str(), p));
        }
    }

    // 3. Move from the most loaded to subscribers with two or more fewer. Each move lowers
    //    the sum of squared counts, so this ends.
    loop {
        let mut order: Vec<&str> = owned.keys().copied().collect();
        order.sort_by_key(|m| (Reverse(owned[m].len()), *m));
        let mut chosen = None;
        'search: for &from in &order {
            let n = owned[from].len();
            if n < 2 {
                break;
            }
            // Newest first; each topic once (its newest partition stands for all of them).
            let mut tried: HashSet<&str> = HashSet::new();
            for (i, &(topic, _)) in owned[from].iter().enumerate().rev() {
                if !tried.insert(topic) {
                    continue;
                }
                let target = subscribers[topic]
                    .iter()
                    .filter(|m| owned[**m].len() + 2 <= n)
                    .min_by_key(|m| (owned[**m].len(), **m));
                if let Some(&to) = target {
                    chosen = Some((from, i, to));
                    break 'search;
                }
            }
        }
        let Some((from, i, to)) = chosen else {
            break;
        };
        let tp = owned.get_mut(from).expect("member").remove(i);
        owned.get_mut(to).expect("member").push(tp);
    }

    let mut out = empty_assignment(subscriptions);
    for (member, list) in owned {
        let entry = out.get_mut(member).expect("every member has an entry");
        for (topic, p) in list {
            entry.entry(topic.to_string()).or_default().push(p);
        }
        for parts in entry.values_mut() {
            parts.sort_unstable();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Coordinator
// ---------------------------------------------------------------------------------------------

/// What a join returns to the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub member_id: String,
    pub generation: u64,
    /// (topic, partitions), sorted by topic; partitions sorted.
    pub assignment: Vec<(String, Vec<u32>)>,
}

/// A group as [`GroupCoordinator::describe`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub protocol: GroupProtocol,
    pub generation: u64,
    /// The strategy the broker assigns with; `None` where clients assign (Kafka).
    pub strategy: Option<AssignmentStrategy>,
    /// In member id order.
    pub members: Vec<MemberDescription>,
}

/// A coordinator of another protocol that keeps its own groups' barrier (the Kafka door's
/// JoinGroup/SyncGroup) on the shared [`Membership`] core. The broker runs its session clock
/// with the native groups' ([`crate::Broker::register_coordinator`]) and asks it to describe
/// the groups it holds, so every group has one clock and one view (`weir group describe`,
/// `GET /groups/{group}`, lag).
pub trait ForeignCoordinator: Send + Sync {
    /// Expires sessions and timed-out rounds as of `now`.
    fn tick(&self, now: Instant);
    /// A group it holds, with its members and their assignments.
    fn describe(&self, group: &str) -> Option<GroupDescription>;
}

/// One member in a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub session_timeout: Duration,
    pub assignment: Vec<(String, Vec<u32>)>,
}

#[derive(Debug, Clone)]
struct Group {
    core: Membership,
    /// Who assigns: the broker with this strategy, or (`None`) the clients.
    strategy: Option<AssignmentStrategy>,
    /// Partition counts of the subscribed, existing topics the assignment was computed from.
    partitions: BTreeMap<String, u32>,
    assignment: Assignment,
    /// Told each new generation: heartbeats that wait ([`GroupCoordinator::heartbeat_watch`])
    /// answer the moment a rebalance begins, not at their member's next heartbeat.
    generations: Arc<watch::Sender<u64>>,
}

impl Group {
    fn new(protocol: GroupProtocol, strategy: Option<AssignmentStrategy>) -> Self {
        Self {
            core: Membership::new(protocol),
            strategy,
            partitions: BTreeMap::new(),
            assignment: Assignment::new(),
            generations: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Starts a new generation with an assignment computed from `partitions`. Where clients
    /// assign, the assignment is cleared: members must rejoin and their leader assign anew.
    fn rebalance(&mut self, mut partitions: BTreeMap<String, u32>) {
        let topics = self.core.subscribed_topics();
        partitions.retain(|t, _| topics.contains(t));
        let subscriptions = self.core.subscriptions();
        self.assignment = match self.strategy {
            Some(AssignmentStrategy::RoundRobin) => assign_round_robin(&subscriptions, &partitions),
            Some(AssignmentStrategy::Sticky) => {
                assign_sticky(&subscriptions, &partitions, &self.assignment)
            }
            None => Assignment::new(),
        };
        self.partitions = partitions;
        let generation = self.core.next_generation();
        self.generations.send_replace(generation);
    }

    /// Rebalances with the partition counts already known (a member left or expired).
    fn rebalance_known(&mut self) {
        let partitions = self.partitions.clone();
        self.rebalance(partitions);
    }

    fn assignment_of(&self, member: &str) -> Vec<(String, Vec<u32>)> {
        self.assignment
            .get(member)
            .map(|topics| {
                topics
                    .iter()
                    .filter(|(_, parts)| !parts.is_empty())
                    .map(|(t, parts)| (t.clone(), parts.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn owns(&self, member: &str, topic: &str, partition: u32) -> bool {
        self.assignment
            .get(member)
            .and_then(|topics| topics.get(topic))
            .is_some_and(|parts| parts.binary_search(&partition).is_ok())
    }

    /// Fails unless every member other than `except` uses `strategy`.
    fn check_strategy(
        &self,
        group: &str,
        strategy: AssignmentStrategy,
        except: &str,
    ) -> Result<()> {
        let others = self.core.members().any(|m| m.id != except);
        match self.strategy {
            Some(current) if current != strategy && others => {
                Err(BrokerError::InvalidRequest(format!(
                    "group {group:?} assigns with the {} strategy; this member asked for {}",
                    current.name(),
                    strategy.name()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Partition counts of `topics` that exist and have partitions.
fn partition_counts(
    topics: &BTreeSet<String>,
    partitions_of: &dyn Fn(&str) -> Option<u32>,
) -> BTreeMap<String, u32> {
    topics
        .iter()
        .filter_map(|t| partitions_of(t).filter(|n| *n > 0).map(|n| (t.clone(), n)))
        .collect()
}

fn unknown_member(group: &str, member: &str) -> BrokerError {
    BrokerError::UnknownMember {
        group: group.to_string(),
        member: member.to_string(),
    }
}

/// Longest client id kept in a member id.
const MAX_CLIENT_ID_IN_MEMBER_ID: usize = 64;

/// Hands out member ids `{client_id}-{sequence}-{random}`: unique within the generator, hard
/// to guess. Shared by the native coordinator and the Kafka front door's.
#[derive(Debug)]
pub struct MemberIds {
    next: AtomicU64,
    random: RandomState,
}

impl Default for MemberIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MemberIds {
    pub fn new() -> Self {
        Self {
            next: AtomicU64::new(1),
            random: RandomState::new(),
        }
    }

    /// A fresh id for a member whose client calls itself `client_id` (kept to 64 bytes).
    pub fn next(&self, client_id: &str) -> String {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let noise = self.random.hash_one((seq, Instant::now()));
        let mut end = client_id.len().min(MAX_CLIENT_ID_IN_MEMBER_ID);
        while !client_id.is_char_boundary(end) {
            end -= 1;
        }
        let prefix = match &client_id[..end] {
            "" => "member",
            p => p,
        };
        format!("{prefix}-{seq:x}-{noise:016x}")
    }
}

/// Consumer groups of the native protocol with server-side assignment. See the
/// [module docs](self).
///
/// Thread-safe (`&self` everywhere, one mutex inside). The `partitions_of` callbacks are called
/// with that mutex held and must not call back into the coordinator.
#[derive(Debug)]
pub struct GroupCoordinator {
    min_session: Duration,
    max_session: Duration,
    groups: Mutex<BTreeMap<String, Group>>,
    member_ids: MemberIds,
}

impl GroupCoordinator {
    /// A coordinator accepting session timeouts in `[min_session, max_session]`.
    pub fn new(min_session: Duration, max_session: Duration) -> Self {
        Self {
            min_session,
            max_session,
            groups: Mutex::new(BTreeMap::new()),
            member_ids: MemberIds::new(),
        }
    }

    /// Joins `group` (creating it), or rejoins it with the `member_id` a previous join
    /// returned.
    ///
    /// - No (or an empty) `member_id`: a new member with a fresh id; the group rebalances.
    /// - A known `member_id`: its session is refreshed. If its subscription, the strategy or
    ///   the partition counts of the group's topics changed, the group rebalances; otherwise
    ///   the current generation and assignment are returned unchanged.
    ///
    /// Topics for which `partitions_of` returns `None` are assigned nothing until
    /// [`GroupCoordinator::on_partitions_changed`] reports them.
    ///
    /// Errors: `UnknownMember` for an unknown non-empty `member_id`; `InvalidRequest` for an
    /// empty group name, a session timeout outside the configured range, or a strategy other
    /// than the one the group's other members use; `GroupConflict` if the group belongs to the
    /// Kafka protocol.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        group: &str,
        member_id: Option<&str>,
        client_id: &str,
        topics: Vec<String>,
        session_timeout: Duration,
        strategy: AssignmentStrategy,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
        now: Instant,
    ) -> Result<JoinResult> {
        if group.is_empty() {
            return Err(BrokerError::InvalidRequest("group name is empty".into()));
        }
        if session_timeout < self.min_session || session_timeout > self.max_session {
            return Err(BrokerError::InvalidRequest(format!(
                "session timeout {session_timeout:?} is outside the allowed range \
                 [{:?}, {:?}]",
                self.min_session, self.max_session
            )));
        }
        let topics: BTreeSet<String> = topics.into_iter().collect();
        let member_id = member_id.filter(|m| !m.is_empty());
        let mut groups = self.groups.lock();
        let other_protocol = groups
            .get(group)
            .map(|g| g.core.protocol())
            .filter(|p| *p != GroupProtocol::Native);
        if let Some(existing) = other_protocol {
            return Err(BrokerError::GroupConflict {
                group: group.to_string(),
                existing: existing.name(),
            });
        }

        let id = match member_id {
            Some(id) => {
                let g = groups
                    .get_mut(group)
                    .filter(|g| g.core.member(id).is_some())
                    .ok_or_else(|| unknown_member(group, id))?;
                g.check_strategy(group, strategy, id)?;
                let m = g.core.member_mut(id).expect("checked above");
                let resubscribed = m.topics != topics;
                m.topics = topics;
                m.session_timeout = session_timeout;
                m.deadline = now + session_timeout;
                m.client_id = client_id.to_string();
                let counts = partition_counts(&g.core.subscribed_topics(), partitions_of);
                if resubscribed || g.strategy != Some(strategy) || counts != g.partitions {
                    g.strategy = Some(strategy);
                    g.rebalance(counts);
                }
                id.to_string()
            }
            None => {
                let g = groups
                    .entry(group.to_string())
                    .or_insert_with(|| Group::new(GroupProtocol::Native, Some(strategy)));
                g.check_strategy(group, strategy, "")?;
                let id = self.member_ids.next(client_id);
                g.core.insert(Member {
                    id: id.clone(),
                    client_id: client_id.to_string(),
                    topics,
                    session_timeout,
                    deadline: now + session_timeout,
                    state: (),
                });
                g.strategy = Some(strategy);
                let counts = partition_counts(&g.core.subscribed_topics(), partitions_of);
                g.rebalance(counts);
                id
            }
        };
        let g = &groups[group];
        Ok(JoinResult {
            generation: g.core.generation(),
            assignment: g.assignment_of(&id),
            member_id: id,
        })
    }

    /// Keeps a member's session alive. `RebalanceInProgress` (session still refreshed) when
    /// `generation` is older than the group's: the member must rejoin for its new assignment.
    /// `IllegalGeneration` when it is newer; `UnknownMember` for an unknown group or member.
    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        now: Instant,
    ) -> Result<()> {
        self.heartbeat_watch(group, member_id, generation, now)
            .map(drop)
    }

    /// [`GroupCoordinator::heartbeat`], and when it succeeds a watch that changes with the
    /// group's next generation (a member may wait on it to learn of a rebalance at once) and
    /// the member's session timeout (a wait must end well before it).
    pub fn heartbeat_watch(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        now: Instant,
    ) -> Result<(watch::Receiver<u64>, Duration)> {
        let mut groups = self.groups.lock();
        let g = groups
            .get_mut(group)
            .ok_or_else(|| unknown_member(group, member_id))?;
        let Some(session) = g.core.member(member_id).map(|m| m.session_timeout) else {
            return Err(unknown_member(group, member_id));
        };
        if generation > g.core.generation() {
            g.core.check_generation(group, generation)?;
        }
        g.core.touch(member_id, now);
        g.core.check_generation(group, generation)?;
        // Subscribed under the lock: a rebalance after it changes what this receiver sees.
        Ok((g.generations.subscribe(), session))
    }

    /// Wakes every waiting heartbeat (a shutdown: they answer at once).
    pub fn wake_heartbeats(&self) {
        for g in self.groups.lock().values() {
            g.generations.send_modify(|_| {});
        }
    }

    /// Removes a member; the others rebalance. The group is dropped when it empties.
    pub fn leave(&self, group: &str, member_id: &str) -> Result<()> {
        let mut groups = self.groups.lock();
        let g = groups
            .get_mut(group)
            .ok_or_else(|| unknown_member(group, member_id))?;
        if g.core.remove(member_id).is_none() {
            return Err(unknown_member(group, member_id));
        }
        if g.core.is_empty() {
            groups.remove(group);
        } else {
            g.rebalance_known();
        }
        Ok(())
    }

    /// Removes every member whose session deadline has passed (`deadline <= now`), rebalances
    /// each group that lost members (dropping those left empty), and returns the removed
    /// (group, member) pairs. The server calls it periodically and logs the removals.
    pub fn expire(&self, now: Instant) -> Vec<(String, String)> {
        let mut groups = self.groups.lock();
        let mut removed = Vec::new();
        groups.retain(|name, g| {
            let expired = g.core.expired(now);
            if expired.is_empty() {
                return true;
            }
            for id in expired {
                g.core.remove(&id);
                removed.push((name.clone(), id));
            }
            if g.core.is_empty() {
                return false;
            }
            g.rebalance_known();
            true
        });
        removed
    }

    /// Commit fencing: Ok only if `member_id` is in `group`, `generation` is current and the
    /// partition is in the member's current assignment. Otherwise `UnknownMember`,
    /// `RebalanceInProgress` (older generation), `IllegalGeneration` (newer) or `NotOwner`.
    pub fn check_owner(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        topic: &str,
        partition: u32,
    ) -> Result<()> {
        let groups = self.groups.lock();
        let g = groups
            .get(group)
            .filter(|g| g.core.member(member_id).is_some())
            .ok_or_else(|| unknown_member(group, member_id))?;
        g.core.check_generation(group, generation)?;
        if !g.owns(member_id, topic, partition) {
            return Err(BrokerError::NotOwner {
                group: group.to_string(),
                member: member_id.to_string(),
                topic: topic.to_string(),
                partition,
            });
        }
        Ok(())
    }

    /// A topic was created, deleted or grew: rebalances every broker-assigned group subscribed
    /// to it whose partition counts changed.
    pub fn on_partitions_changed(&self, topic: &str, partitions_of: &dyn Fn(&str) -> Option<u32>) {
        let mut groups = self.groups.lock();
        for (name, g) in groups.iter_mut() {
            if g.strategy.is_none() || !g.core.members().any(|m| m.topics.contains(topic)) {
                continue;
            }
            let counts = partition_counts(&g.core.subscribed_topics(), partitions_of);
            if counts != g.partitions {
                tracing::debug!(group = %name, topic, "partitions changed; rebalancing");
                g.rebalance(counts);
            }
        }
    }

    /// Reserves `group` for a front door whose own coordinator manages it (the Kafka listener):
    /// native joins then fail with `GroupConflict`. Fails with `GroupConflict` if the native
    /// protocol uses the name. Claiming a name the same protocol holds is a no-op.
    pub fn claim(&self, group: &str, protocol: GroupProtocol) -> Result<()> {
        let mut groups = self.groups.lock();
        match groups.get(group) {
            Some(g) if g.core.protocol() != protocol => Err(BrokerError::GroupConflict {
                group: group.to_string(),
                existing: g.core.protocol().name(),
            }),
            Some(_) => Ok(()),
            None => {
                groups.insert(group.to_string(), Group::new(protocol, None));
                Ok(())
            }
        }
    }

    /// Gives back a name [`GroupCoordinator::claim`] reserved for `protocol`.
    pub fn release(&self, group: &str, protocol: GroupProtocol) {
        let mut groups = self.groups.lock();
        if groups
            .get(group)
            .is_some_and(|g| g.core.protocol() == protocol && g.core.is_empty())
        {
            groups.remove(group);
        }
    }

    /// The protocol that holds `group`, if any.
    pub fn protocol_of(&self, group: &str) -> Option<GroupProtocol> {
        self.groups.lock().get(group).map(|g| g.core.protocol())
    }

    /// A group's generation, protocol, strategy and members with their assignments.
    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        Some(GroupDescription {
            group: group.to_string(),
            protocol: g.core.protocol(),
            generation: g.core.generation(),
            strategy: g.strategy,
            members: g
                .core
                .members()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    client_id: m.client_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    session_timeout: m.session_timeout,
                    assignment: g.assignment_of(&m.id),
                })
                .collect(),
        })
    }

    /// Names of the groups that have members, sorted.
    pub fn list(&self) -> Vec<String> {
        self.groups.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    // --- assignment ----------------------------------------------------------------------

    fn subs(members: &[(&str, &[&str])]) -> Subscriptions {
        members
            .iter()
            .map(|(m, topics)| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    /// (topic, partition) → owner.
    fn owners(a: &Assignment) -> BTreeMap<(String, u32), String> {
        let mut out = BTreeMap::new();
        for (member, topics) in a {
            for (topic, parts) in topics {
                for p in parts {
                    let prev = out.insert((topic.clone(), *p), member.clone());
                    assert!(prev.is_none(), "{topic}/{p} assigned twice: {a:?}");
                }
            }
        }
        out
    }

    /// Every partition of every subscribed, existing topic is assigned exactly once, to a
    /// subscriber; nothing else is assigned; every member has an entry; lists are sorted.
    fn check_complete(a: &Assignment, s: &Subscriptions, parts: &BTreeMap<String, u32>) {
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            s.keys().collect::<Vec<_>>(),
            "one entry per member"
        );
        let owners = owners(a);
        let mut expected = BTreeSet::new();
        for (topic, &n) in parts {
            if s.values().any(|t| t.contains(topic)) {
                expected.extend((0..n).map(|p| (topic.clone(), p)));
            }
        }
        assert_eq!(
            owners.keys().cloned().collect::<BTreeSet<_>>(),
            expected,
            "assigned partitions"
        );
        for ((topic, p), owner) in &owners {
            assert!(
                s[owner].contains(topic),
                "{topic}/{p} given to non-subscriber {owner}"
            );
        }
        for topics in a.values() {
            for parts in topics.values() {
                assert!(parts.windows(2).all(|w| w[0] < w[1]), "unsorted: {parts:?}");
            }
        }
    }

    fn loads(a: &Assignment) -> Vec<usize> {
        a.values()
            .map(|topics| topics.values().map(Vec::len).sum())
            .collect()
    }

    fn spread(a: &Assignment) -> usize {
        let l = loads(a);
        l.iter().max().unwrap_or(&0) - l.iter().min().unwrap_or(&0)
    }

    /// Partitions a surviving member owned before and someone else owns now.
    fn moved(before: &Assignment, after: &Assignment) -> usize {
        let (b, a) = (owners(before), owners(after));
        b.iter()
            .filter(|(tp, owner)| after.contains_key(*owner) && a.get(*tp) != Some(*owner))
            .count()
    }

    /// The fewest moves any balanced assignment needs, with identical subscriptions and
    /// unchanged topics: members end with q or q + 1 partitions (r of them with q + 1), and
    /// each keeps at most that many of its valid previous partitions.
    fn min_moves(before: &Assignment, after_members: &Subscriptions, total: usize) -> usize {
        let m = after_members.len();
        let (q, r) = (total / m, total % m);
        let mut prev: Vec<usize> = after_members
            .keys()
            .map(|id| before.get(id).map_or(0, |t| t.values().map(Vec::len).sum()))
            .collect();
        prev.sort_unstable_by(|a, b| b.cmp(a));
        let kept: usize = prev
            .iter()
            .enumerate()
            .map(|(i, &p)| p.min(if i < r { q + 1 } else { q }))
            .sum();
        prev.iter().sum::<usize>() - kept
    }

    #[test]
    fn round_robin_deals_partitions_in_turn() {
        let s = subs(&[("a", &["t", "u"]), ("b", &["t", "u"]), ("c", &["t"])]);
        let p = counts(&[("t", 4), ("u", 3), ("v", 2)]);
        let a = assign_round_robin(&s, &p);
        check_complete(&a, &s, &p);
        assert_eq!(a["a"]["t"], [0, 3]);
        assert_eq!(a["b"]["t"], [1]);
        assert_eq!(a["c"]["t"], [2]);
        // u: the turn continues with b, c is skipped (not subscribed).
        assert_eq!(a["a"]["u"], [1]);
        assert_eq!(a["b"]["u"], [0, 2]);
        assert!(!a["c"].contains_key("u"));
        // No members: nothing to do.
        assert!(assign_round_robin(&Subscriptions::new(), &p).is_empty());
    }

    #[test]
    fn sticky_moves_only_what_must_move() {
        let p = counts(&[("t", 6)]);
        let s = subs(&[("a", &["t"]), ("b", &["t"])]);
        let first = assign_sticky(&s, &p, &Assignment::new());
        check_complete(&first, &s, &p);
        assert_eq!(loads(&first), [3, 3]);

        // c joins: a and b each give up exactly one partition.
        let s3 = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let second = assign_sticky(&s3, &p, &first);
        check_complete(&second, &s3, &p);
        assert_eq!(loads(&second), [2, 2, 2]);
        assert_eq!(moved(&first, &second), 2);
        for m in ["a", "b"] {
            let kept: BTreeSet<_> = second[m]["t"].iter().collect();
            assert!(kept.is_subset(&first[m]["t"].iter().collect()));
        }

        // b leaves: a and c keep theirs and split b's.
        let s2 = subs(&[("a", &["t"]), ("c", &["t"])]);
        let third = assign_sticky(&s2, &p, &second);
        check_complete(&third, &s2, &p);
        assert_eq!(moved(&second, &third), 0);
        assert_eq!(loads(&third), [3, 3]);

        // The topic shrinks to 2 and grows to 9: invalid partitions are dropped, new ones
        // spread, kept ones stay.
        let small = assign_sticky(&s2, &counts(&[("t", 2)]), &third);
        check_complete(&small, &s2, &counts(&[("t", 2)]));
        assert_eq!(loads(&small), [1, 1]);
        let big = assign_sticky(&s2, &counts(&[("t", 9)]), &small);
        check_complete(&big, &s2, &counts(&[("t", 9)]));
        assert_eq!(moved(&small, &big), 0);
        assert!(spread(&big) <= 1);
    }

    #[test]
    fn sticky_with_different_subscriptions_leaves_no_useful_move() {
        // a alone subscribes to u (4 partitions); t (4) is shared with b.
        let s = subs(&[("a", &["t", "u"]), ("b", &["t"])]);
        let p = counts(&[("t", 4), ("u", 4)]);
        let a = assign_sticky(&s, &p, &Assignment::new());
        check_complete(&a, &s, &p);
        assert_eq!(a["a"]["u"].len(), 4);
        assert_eq!(a["b"]["t"].len(), 4, "b takes all of t to offset a's u");
        assert!(!a["a"].contains_key("t"));
    }

    fn arb_partitions() -> impl Strategy<Value = BTreeMap<String, u32>> {
        proptest::collection::btree_map((0..5u8).prop_map(|t| format!("t{t}")), 1..12u32, 1..4)
    }

    fn arb_members() -> impl Strategy<Value = BTreeSet<String>> {
        proptest::collection::btree_set((0..10u8).prop_map(|m| format!("m{m}")), 1..7)
    }

    /// Identical subscriptions for `members`: every topic plus one that does not exist.
    fn same_subs(members: &BTreeSet<String>, parts: &BTreeMap<String, u32>) -> Subscriptions {
        let mut topics: BTreeSet<String> = parts.keys().cloned().collect();
        topics.insert("ghost".into());
        members
            .iter()
            .map(|m| (m.clone(), topics.clone()))
            .collect()
    }

    proptest! {
        #[test]
        fn round_robin_assigns_everything_once_and_balances(
            parts in arb_partitions(),
            members in arb_members(),
        ) {
            let s = same_subs(&members, &parts);
            let a = assign_round_robin(&s, &parts);
            check_complete(&a, &s, &parts);
            prop_assert!(spread(&a) <= 1, "loads {:?}", loads(&a));
        }

        /// From an arbitrary previous assignment (some owners gone, some partitions unowned,
        /// any imbalance) to a new member set: complete, balanced, and no more moves than
        /// necessary.
        #[test]
        fn sticky_is_balanced_and_moves_the_minimum(
            parts in arb_partitions(),
            before in arb_members(),
            after in arb_members(),
            owner_picks in proptest::collection::vec(any::<u16>(), 60),
        ) {
            let before_ids: Vec<&String> = before.iter().collect();
            let mut previous = Assignment::new();
            let mut i = 0;
            for (topic, &n) in &parts {
                for p in 0..n {
                    let pick = usize::from(owner_picks[i % owner_picks.len()]);
                    i += 1;
                    // One in four partitions is unowned.
                    if pick % 4 == 0 {
                        continue;
                    }
                    let owner = before_ids[pick % before_ids.len()];
                    previous.entry(owner.clone()).or_default().entry(topic.clone()).or_default().push(p);
                }
            }
            for topics in previous.values_mut() {
                for ps in topics.values_mut() {
                    ps.sort_unstable();
                }
            }
            let s = same_subs(&after, &parts);
            let a = assign_sticky(&s, &parts, &previous);
            check_complete(&a, &s, &parts);
            prop_assert!(spread(&a) <= 1, "loads {:?}", loads(&a));
            let total: usize = parts.values().map(|n| *n as usize).sum();
            prop_assert_eq!(moved(&previous, &a), min_moves(&previous, &s, total));
        }

        /// Members joining and leaving one at a time, each step sticky on the last.
        #[test]
        fn sticky_join_and_leave_sequences_stay_minimal(
            parts in arb_partitions(),
            changes in proptest::collection::vec((any::<bool>(), 0..8u8), 1..12),
        ) {
            let mut members: BTreeSet<String> = ["m0".to_string()].into();
            let mut current = assign_sticky(&same_subs(&members, &parts), &parts, &Assignment::new());
            let total: usize = parts.values().map(|n| *n as usize).sum();
            for (join, m) in changes {
                let m = format!("m{m}");
                if join {
                    members.insert(m);
                } else if members.len() > 1 {
                    members.remove(&m);
                }
                let s = same_subs(&members, &parts);
                let next = assign_sticky(&s, &parts, &current);
                check_complete(&next, &s, &parts);
                prop_assert!(spread(&next) <= 1);
                prop_assert_eq!(moved(&current, &next), min_moves(&current, &s, total));
                current = next;
            }
        }

        /// Different subscriptions: complete, each partition with a subscriber, and no
        /// partition could move to a subscriber holding two or more fewer.
        #[test]
        fn assignments_with_different_subscriptions_are_complete(
            parts in arb_partitions(),
            members in proptest::collection::btree_map(
                (0..8u8).prop_map(|m| format!("m{m}")),
                proptest::collection::btree_set((0..6u8).prop_map(|t| format!("t{t}")), 0..4),
                1..6,
            ),
        ) {
            let rr = assign_round_robin(&members, &parts);
            check_complete(&rr, &members, &parts);
            let a = assign_sticky(&members, &parts, &rr);
            check_complete(&a, &members, &parts);
            let load = |m: &str| a[m].values().map(Vec::len).sum::<usize>();
            for (m, topics) in &a {
                for t in topics.keys() {
                    for (other, subscribed) in &members {
                        prop_assert!(
                            !(subscribed.contains(t) && load(other) + 2 <= load(m)),
                            "{} could take a partition of {} from {}: {:?}", other, t, m, a
                        );
                    }
                }
            }
        }
    }

    // --- coordinator ---------------------------------------------------------------------

    const SESSION: Duration = Duration::from_secs(10);

    fn coordinator() -> GroupCoordinator {
        GroupCoordinator::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// A mutable topic table standing in for the broker's.
    #[derive(Default)]
    struct Topics(Mutex<HashMap<String, u32>>);

    impl Topics {
        fn new(topics: &[(&str, u32)]) -> Self {
            let t = Topics::default();
            for (name, n) in topics {
                t.set(name, Some(*n));
            }
            t
        }
        fn set(&self, topic: &str, n: Option<u32>) {
            let mut map = self.0.lock();
            match n {
                Some(n) => map.insert(topic.to_string(), n),
                None => map.remove(topic),
            };
        }
        fn get(&self, topic: &str) -> Option<u32> {
            self.0.lock().get(topic).copied()
        }
    }

    /// Joins with the default session and strategy.
    fn join(
        c: &GroupCoordinator,
        group: &str,
        member: Option<&str>,
        topics: &[&str],
        strategy: AssignmentStrategy,
        t: &Topics,
        now: Instant,
    ) -> Result<JoinResult> {
        c.join(
            group,
            member,
            "app",
            topics.iter().map(|s| s.to_string()).collect(),
            SESSION,
            strategy,
            &|name| t.get(name),
            now,
        )
    }

    fn flat(assignment: &[(String, Vec<u32>)]) -> BTreeSet<(String, u32)> {
        assignment
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
            .collect()
    }

    fn all_of(topics: &[(&str, u32)]) -> BTreeSet<(String, u32)> {
        topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.to_string(), p)))
            .collect()
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Ok,
        Unknown,
        Rebalance,
        Illegal,
        NotOwner,
        Invalid,
        Conflict,
    }

    fn outcome<T>(r: &Result<T>) -> Outcome {
        match r {
            Ok(_) => Outcome::Ok,
            Err(BrokerError::UnknownMember { .. }) => Outcome::Unknown,
            Err(BrokerError::RebalanceInProgress { .. }) => Outcome::Rebalance,
            Err(BrokerError::IllegalGeneration { .. }) => Outcome::Illegal,
            Err(BrokerError::NotOwner { .. }) => Outcome::NotOwner,
            Err(BrokerError::InvalidRequest(_)) => Outcome::Invalid,
            Err(BrokerError::GroupConflict { .. }) => Outcome::Conflict,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    use AssignmentStrategy::{RoundRobin, Sticky};

    #[test]
    fn joins_hand_out_ids_generations_and_complete_assignments() {
        let c = coordinator();
        let t = Topics::new(&[("t1", 4), ("t2", 2)]);
        let now = Instant::now();
        let a = join(&c, "g", None, &["t1", "t2"], RoundRobin, &t, now).unwrap();
        assert!(a.member_id.starts_with("app-"), "{}", a.member_id);
        assert_eq!(a.generation, 1);
        assert_eq!(flat(&a.assignment), all_of(&[("t1", 4), ("t2", 2)]));

        let b = join(&c, "g", Some(""), &["t1", "t2"], RoundRobin, &t, now).unwrap();
        assert_ne!(a.member_id, b.member_id);
        assert_eq!(b.generation, 2);
        // a learns of the rebalance from its heartbeat and rejoins without bumping.
        assert!(matches!(
            c.heartbeat("g", &a.member_id, 1, now),
            Err(BrokerError::RebalanceInProgress { .. })
        ));
        let a2 = join(
            &c,
            "g",
            Some(&a.member_id),
            &["t2", "t1"],
            RoundRobin,
            &t,
            now,
        )
        .unwrap();
        assert_eq!(
            (a2.member_id.as_str(), a2.generation),
            (a.member_id.as_str(), 2)
        );
        let (fa, fb) = (flat(&a2.assignment), flat(&b.assignment));
        assert!(fa.is_disjoint(&fb));
        assert_eq!(&fa | &fb, all_of(&[("t1", 4), ("t2", 2)]));
        assert_eq!((fa.len(), fb.len()), (3, 3));
        assert_eq!(c.list(), ["g"]);
    }

    #[test]
    fn rejoins_rebalance_only_when_something_changed() {
        type Change = fn(&Topics) -> (Vec<&'static str>, AssignmentStrategy);
        let cases: [(&str, Change, bool); 6] = [
            ("nothing", |_| (vec!["t1", "t2"], Sticky), false),
            (
                "order and duplicates",
                |_| (vec!["t2", "t1", "t1"], Sticky),
                false,
            ),
            ("a new topic", |_| (vec!["t1", "t2", "t3"], Sticky), true),
            ("a topic dropped", |_| (vec!["t1"], Sticky), true),
            (
                "partition count",
                |t| {
                    t.set("t2", Some(5));
                    (vec!["t1", "t2"], Sticky)
                },
                true,
            ),
            (
                "a subscribed topic now exists",
                |t| {
                    t.set("ghost", Some(1));
                    (vec!["t1", "t2"], Sticky)
                },
                true,
            ),
        ];
        for (what, change, bumps) in cases {
            let c = coordinator();
            let t = Topics::new(&[("t1", 4), ("t2", 2), ("t3", 1)]);
            let now = Instant::now();
            let a = join(&c, "g", None, &["t1", "t2"], Sticky, &t, now).unwrap();
            let b = join(&c, "g", None, &["t1", "t2", "ghost"], Sticky, &t, now).unwrap();
            let (topics, strategy) = change(&t);
            let again = join(&c, "g", Some(&a.member_id), &topics, strategy, &t, now).unwrap();
            let expected = if bumps {
                b.generation + 1
            } else {
                b.generation
            };
            assert_eq!(again.generation, expected, "{what}");
            let desc = c.describe("g").unwrap();
            let all: BTreeSet<_> = desc
                .members
                .iter()
                .flat_map(|m| flat(&m.assignment))
                .collect();
            let covered: usize = desc.members.iter().map(|m| flat(&m.assignment).len()).sum();
            assert_eq!(covered, all.len(), "{what}: a partition assigned twice");
        }
    }

    #[test]
    fn join_errors() {
        let c = coordinator();
        let t = Topics::new(&[("t", 2)]);
        let now = Instant::now();
        let a = join(&c, "g", None, &["t"], RoundRobin, &t, now).unwrap();
        // A Kafka group, as the Kafka front door would register it.
        c.groups
            .lock()
            .insert("kafka-group".into(), Group::new(GroupProtocol::Kafka, None));
        type Call = Box<dyn Fn(&GroupCoordinator) -> Result<JoinResult>>;
        let session = |d: Duration| -> Call {
            Box::new(move |c| {
                c.join(
                    "h",
                    None,
                    "app",
                    vec!["t".into()],
                    d,
                    RoundRobin,
                    &|_| Some(2),
                    now,
                )
            })
        };
        let member = a.member_id.clone();
        let cases: Vec<(&str, Call, Outcome)> = vec![
            (
                "unknown member",
                Box::new(move |c| {
                    join(
                        c,
                        "g",
                        Some("nobody"),
                        &["t"],
                        RoundRobin,
                        &Topics::new(&[]),
                        now,
                    )
                }),
                Outcome::Unknown,
            ),
            (
                "unknown member of an unknown group",
                Box::new(move |c| {
                    join(
                        c,
                        "new",
                        Some("nobody"),
                        &["t"],
                        RoundRobin,
                        &Topics::new(&[]),
                        now,
                    )
                }),
                Outcome::Unknown,
            ),
            (
                "session below the minimum",
                session(Duration::from_millis(999)),
                Outcome::Invalid,
            ),
            (
                "session above the maximum",
                session(Duration::from_secs(61)),
                Outcome::Invalid,
            ),
            (
                "empty group name",
                Box::new(move |c| join(c, "", None, &["t"], RoundRobin, &Topics::new(&[]), now)),
                Outcome::Invalid,
            ),
            (
                "another strategy than the group's",
                Box::new(move |c| join(c, "g", None, &["t"], Sticky, &Topics::new(&[]), now)),
                Outcome::Invalid,
            ),
            (
                "a Kafka group",
                Box::new(move |c| {
                    join(
                        c,
                        "kafka-group",
                        None,
                        &["t"],
                        RoundRobin,
                        &Topics::new(&[]),
                        now,
                    )
                }),
                Outcome::Conflict,
            ),
            (
                "session at the minimum",
                session(Duration::from_secs(1)),
                Outcome::Ok,
            ),
            (
                "session at the maximum",
                session(Duration::from_secs(60)),
                Outcome::Ok,
            ),
            (
                "the sole member switches strategy",
                Box::new(move |c| {
                    join(
                        c,
                        "g",
                        Some(&member),
                        &["t"],
                        Sticky,
                        &Topics::new(&[("t", 2)]),
                        now,
                    )
                }),
                Outcome::Ok,
            ),
        ];
        for (what, call, expected) in cases {
            assert_eq!(outcome(&call(&c)), expected, "{what}");
        }
        assert!(
            !c.list().contains(&"new".to_string()),
            "a failed join creates no group"
        );
        assert!(matches!(
            join(&c, "kafka-group", None, &["t"], Sticky, &t, now),
            Err(BrokerError::GroupConflict {
                existing: "kafka",
                ..
            })
        ));
        assert_eq!(c.describe("g").unwrap().strategy, Some(Sticky));
    }

    /// Group "g" with members a (joined first) and b; a has not rejoined since b joined.
    fn two_members(
        strategy: AssignmentStrategy,
    ) -> (GroupCoordinator, JoinResult, JoinResult, Instant) {
        let c = coordinator();
        let t = Topics::new(&[("t", 4)]);
        let now = Instant::now();
        let a = join(&c, "g", None, &["t"], strategy, &t, now).unwrap();
        let b = join(&c, "g", None, &["t"], strategy, &t, now).unwrap();
        (c, a, b, now)
    }

    #[test]
    fn heartbeats() {
        let (c, a, b, now) = two_members(RoundRobin);
        assert_eq!((a.generation, b.generation), (1, 2));
        let cases = [
            (
                "current generation",
                "g",
                b.member_id.as_str(),
                2,
                Outcome::Ok,
            ),
            (
                "older generation",
                "g",
                a.member_id.as_str(),
                1,
                Outcome::Rebalance,
            ),
            (
                "current generation, not yet rejoined",
                "g",
                a.member_id.as_str(),
                2,
                Outcome::Ok,
            ),
            (
                "newer generation",
                "g",
                b.member_id.as_str(),
                3,
                Outcome::Illegal,
            ),
            ("unknown member", "g", "nobody", 2, Outcome::Unknown),
            (
                "unknown group",
                "nope",
                b.member_id.as_str(),
                2,
                Outcome::Unknown,
            ),
        ];
        for (what, group, member, generation, expected) in cases {
            assert_eq!(
                outcome(&c.heartbeat(group, member, generation, now)),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn commit_fencing() {
        let (c, _, b, now) = two_members(RoundRobin);
        let t = Topics::new(&[("t", 4)]);
        let a = c.describe("g").unwrap().members[0].member_id.clone();
        let a = join(&c, "g", Some(&a), &["t"], RoundRobin, &t, now).unwrap();
        let mine = a.assignment[0].1[0];
        let theirs = b.assignment[0].1[0];
        let id = a.member_id.as_str();
        let cases = [
            (
                "owner, current generation",
                "g",
                id,
                2,
                "t",
                mine,
                Outcome::Ok,
            ),
            (
                "someone else's partition",
                "g",
                id,
                2,
                "t",
                theirs,
                Outcome::NotOwner,
            ),
            (
                "a partition that does not exist",
                "g",
                id,
                2,
                "t",
                99,
                Outcome::NotOwner,
            ),
            (
                "a topic not subscribed",
                "g",
                id,
                2,
                "other",
                0,
                Outcome::NotOwner,
            ),
            (
                "older generation",
                "g",
                id,
                1,
                "t",
                mine,
                Outcome::Rebalance,
            ),
            ("newer generation", "g", id, 3, "t", mine, Outcome::Illegal),
            (
                "unknown member",
                "g",
                "nobody",
                2,
                "t",
                mine,
                Outcome::Unknown,
            ),
            ("unknown group", "nope", id, 2, "t", mine, Outcome::Unknown),
        ];
        for (what, group, member, generation, topic, partition, expected) in cases {
            assert_eq!(
                outcome(&c.check_owner(group, member, generation, topic, partition)),
                expected,
                "{what}"
            );
        }
        // After b leaves, a's old generation is fenced until it rejoins.
        c.leave("g", &b.member_id).unwrap();
        assert_eq!(
            outcome(&c.check_owner("g", id, 2, "t", mine)),
            Outcome::Rebalance
        );
        let a = join(&c, "g", Some(id), &["t"], RoundRobin, &t, now).unwrap();
        assert_eq!(a.generation, 3);
        assert_eq!(
            outcome(&c.check_owner("g", id, 3, "t", theirs)),
            Outcome::Ok
        );
        assert_eq!(
            outcome(&c.check_owner("g", &b.member_id, 3, "t", theirs)),
            Outcome::Unknown
        );
    }

    #[test]
    fn sessions_expire_unless_kept_alive() {
        let c = coordinator();
        let topics = Topics::new(&[("t", 3)]);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let a = join(&c, "g", None, &["t"], Sticky, &topics, t0).unwrap();
        let b = c
            .join(
                "g",
                None,
                "other",
                vec!["t".into()],
                Duration::from_secs(20),
                Sticky,
                &|n| topics.get(n),
                t0,
            )
            .unwrap();
        // a's heartbeat at 5 s (with an old generation: still counts as alive) moves its
        // deadline to 15 s; b's stays at 20 s.
        assert!(c.heartbeat("g", &a.member_id, 1, at(5)).is_err());
        let steps: [(u64, &[&str]); 4] = [
            (14, &[]),
            (15, &[a.member_id.as_str()]),
            (19, &[]),
            (20, &[b.member_id.as_str()]),
        ];
        for (when, expected) in steps {
            if when == 19 {
                // Between the two expiries, b is alone and owns everything.
                let b2 = c
                    .join(
                        "g",
                        Some(&b.member_id),
                        "other",
                        vec!["t".into()],
                        Duration::from_secs(20),
                        Sticky,
                        &|n| topics.get(n),
                        at(0),
                    )
                    .unwrap();
                assert_eq!(b2.generation, 3, "a's expiry rebalanced");
                assert_eq!(flat(&b2.assignment), all_of(&[("t", 3)]));
            }
            let removed = c.expire(at(when));
            let expected: Vec<_> = expected
                .iter()
                .map(|m| ("g".to_string(), m.to_string()))
                .collect();
            assert_eq!(removed, expected, "at {when} s");
        }
        assert!(c.list().is_empty(), "an empty group is dropped");
        assert!(c.describe("g").is_none());
        assert_eq!(
            outcome(&c.heartbeat("g", &b.member_id, 3, at(21))),
            Outcome::Unknown
        );
    }

    #[test]
    fn leaving_rebalances_and_the_last_one_out_drops_the_group() {
        let (c, a, b, now) = two_members(Sticky);
        let t = Topics::new(&[("t", 4)]);
        assert_eq!(outcome(&c.leave("g", "nobody")), Outcome::Unknown);
        assert_eq!(outcome(&c.leave("nope", &a.member_id)), Outcome::Unknown);
        let before = flat(&b.assignment);
        c.leave("g", &a.member_id).unwrap();
        let b2 = join(&c, "g", Some(&b.member_id), &["t"], Sticky, &t, now).unwrap();
        assert_eq!(b2.generation, 3);
        assert_eq!(flat(&b2.assignment), all_of(&[("t", 4)]));
        assert!(
            before.is_subset(&flat(&b2.assignment)),
            "sticky: b kept its partitions"
        );
        c.leave("g", &b.member_id).unwrap();
        assert!(c.list().is_empty());
        // A new group of the same name starts over.
        let fresh = join(&c, "g", None, &["t"], RoundRobin, &t, now).unwrap();
        assert_eq!(fresh.generation, 1);
    }

    #[test]
    fn topic_changes_rebalance_subscribed_groups_only() {
        let c = coordinator();
        let t = Topics::new(&[("t", 2), ("u", 1)]);
        let now = Instant::now();
        let a = join(&c, "g", None, &["t", "ghost"], RoundRobin, &t, now).unwrap();
        assert_eq!(
            flat(&a.assignment),
            all_of(&[("t", 2)]),
            "unknown topics get nothing"
        );
        let other = join(&c, "h", None, &["u"], RoundRobin, &t, now).unwrap();
        let generation = |g: &str| c.describe(g).unwrap().generation;

        // (what, topic, its new partition count, expected generation, expected assignment)
        type Step<'a> = (&'a str, &'a str, Option<u32>, u64, &'a [(&'a str, u32)]);
        let steps: [Step; 4] = [
            (
                "ghost created",
                "ghost",
                Some(3),
                2,
                &[("t", 2), ("ghost", 3)],
            ),
            ("t grows", "t", Some(4), 3, &[("t", 4), ("ghost", 3)]),
            (
                "spurious notice",
                "t",
                Some(4),
                3,
                &[("t", 4), ("ghost", 3)],
            ),
            ("t deleted", "t", None, 4, &[("ghost", 3)]),
        ];
        for (what, topic, n, expected_generation, expected) in steps {
            t.set(topic, n);
            c.on_partitions_changed(topic, &|name| t.get(name));
            assert_eq!(generation("g"), expected_generation, "{what}");
            let a = join(
                &c,
                "g",
                Some(&a.member_id),
                &["t", "ghost"],
                RoundRobin,
                &t,
                now,
            )
            .unwrap();
            assert_eq!(
                a.generation, expected_generation,
                "{what}: rejoin does not bump"
            );
            assert_eq!(flat(&a.assignment), all_of(expected), "{what}");
        }
        assert_eq!(
            generation("h"),
            other.generation,
            "h does not subscribe to t or ghost"
        );
    }

    #[test]
    fn sticky_groups_keep_partitions_as_members_come_and_go() {
        let c = coordinator();
        let t = Topics::new(&[("t", 6), ("u", 3)]);
        let now = Instant::now();
        let topics = ["t", "u"];
        let mut ids: Vec<String> = Vec::new();
        let mut previous: BTreeMap<String, BTreeSet<(String, u32)>> = BTreeMap::new();
        // Join three, then one leaves: at each step, each surviving member keeps all it had
        // (when the group grew, a subset of it).
        for step in 0..4 {
            if step < 3 {
                ids.push(
                    join(&c, "g", None, &topics, Sticky, &t, now)
                        .unwrap()
                        .member_id,
                );
            } else {
                let gone = ids.remove(1);
                c.leave("g", &gone).unwrap();
                previous.remove(&gone);
            }
            let mut now_owned = BTreeMap::new();
            for id in &ids {
                let r = join(&c, "g", Some(id), &topics, Sticky, &t, now).unwrap();
                now_owned.insert(id.clone(), flat(&r.assignment));
            }
            let sizes: Vec<usize> = now_owned.values().map(BTreeSet::len).collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "step {step}: {sizes:?}"
            );
            for (id, before) in &previous {
                let after = &now_owned[id];
                let someone_left = step == 3;
                assert!(
                    if someone_left {
                        before.is_subset(after)
                    } else {
                        after.is_subset(before)
                    },
                    "step {step}: {id} had {before:?}, now {after:?}"
                );
            }
            previous = now_owned;
        }
    }

    #[test]
    fn kafka_groups_share_the_name_space_and_membership_core() {
        let c = coordinator();
        let t0 = Instant::now();
        let mut g = Group::new(GroupProtocol::Kafka, None);
        for (id, secs) in [("k1", 5), ("k2", 50)] {
            g.core.insert(Member {
                id: id.into(),
                client_id: "kafka-client".into(),
                topics: ["t".to_string()].into(),
                session_timeout: Duration::from_secs(secs),
                deadline: t0 + Duration::from_secs(secs),
                state: (),
            });
        }
        g.core.next_generation();
        c.groups.lock().insert("kg".into(), g);
        c.on_partitions_changed("t", &|_| Some(4));
        assert_eq!(
            c.describe("kg").unwrap().generation,
            1,
            "clients assign, not the broker"
        );
        assert_eq!(
            c.expire(t0 + Duration::from_secs(6)),
            [("kg".to_string(), "k1".to_string())]
        );
        let d = c.describe("kg").unwrap();
        assert_eq!(
            (d.protocol, d.generation, d.strategy),
            (GroupProtocol::Kafka, 2, None)
        );
        assert_eq!(d.members.len(), 1);
        assert!(
            d.members[0].assignment.is_empty(),
            "the leader must assign anew"
        );
    }

    #[test]
    fn describe_and_member_ids() {
        let c = coordinator();
        let t = Topics::new(&[("t", 2)]);
        let now = Instant::now();
        let a = c
            .join(
                "g",
                None,
                "reporting",
                vec!["t".into(), "t".into()],
                Duration::from_secs(30),
                RoundRobin,
                &|n| t.get(n),
                now,
            )
            .unwrap();
        let d = c.describe("g").unwrap();
        assert_eq!(d.group, "g");
        assert_eq!(
            (d.protocol, d.generation, d.strategy),
            (GroupProtocol::Native, 1, Some(RoundRobin))
        );
        assert_eq!(
            d.members,
            [MemberDescription {
                member_id: a.member_id.clone(),
                client_id: "reporting".into(),
                topics: vec!["t".into()],
                session_timeout: Duration::from_secs(30),
                assignment: vec![("t".into(), vec![0, 1])],
            }]
        );
        assert!(c.describe("nope").is_none());

        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let id = join(&c, "many", None, &["t"], RoundRobin, &t, now)
                .unwrap()
                .member_id;
            assert!(seen.insert(id), "duplicate member id");
        }
        let long = "é".repeat(100);
        let id = c
            .join(
                "x",
                None,
                &long,
                vec![],
                SESSION,
                RoundRobin,
                &|_| None,
                now,
            )
            .unwrap()
            .member_id;
        assert!(id.len() < 100, "long client ids are cut: {id}");
        let id = c
            .join("y", None, "", vec![], SESSION, RoundRobin, &|_| None, now)
            .unwrap()
            .member_id;
        assert!(id.starts_with("member-"), "{id}");
    }
}

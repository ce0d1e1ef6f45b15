//! The Kafka group coordinator: client-side assignors on top of the broker's offset store.
//!
//! A Kafka group rebalances in two rounds. **JoinGroup**: every member (re)joins; the
//! coordinator holds each join until all known members have rejoined or the rebalance timeout
//! passes (members that did not rejoin are dropped), then starts a new generation, picks the
//! assignor all members support (by vote), and answers everyone — the leader with every
//! member's subscription metadata. **SyncGroup**: the leader sends the assignment it computed;
//! followers' syncs are held until it arrives. Heartbeats answer `REBALANCE_IN_PROGRESS` while a
//! new round is being prepared, so members know to rejoin.
//!
//! States follow Kafka's: `Empty` → `PreparingRebalance` → `CompletingRebalance` → `Stable`.
//! Assignments and metadata are opaque bytes: the coordinator never parses what the clients'
//! assignors exchange.
//!
//! Members, their sessions and the generation live in the broker's membership core
//! ([`Membership`], shared with the native coordinator), each member carrying what this barrier
//! needs beside it (`KafkaState`: waiters, assignor metadata, assignment).
//!
//! Time: [`KafkaGroups::tick`] expires sessions, pending member ids and rebalance timeouts; the
//! broker's one group clock calls it every 100 ms ([`Broker::on_group_tick`]), beside the
//! native groups' expiry.
//!
//! Names: a group name belongs to one protocol at a time. A Kafka group claims its name in the
//! broker's native coordinator ([`Broker::claim_group`]) while it has members, so a native
//! join of the same name fails, and a Kafka join of a name a native group holds fails with
//! `INCONSISTENT_GROUP_PROTOCOL`. Committed offsets live in the broker's one offset store,
//! keyed by group name; the refusal above keeps the two protocols from writing each other's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use weir_broker::Broker;
use weir_broker::group::{
    ForeignCoordinator, GroupDescription, GroupProtocol, Member, MemberDescription, MemberIds,
    Membership,
};

use crate::code;

/// Session timeouts accepted, as Kafka's `group.min/max.session.timeout.ms` defaults.
pub const MIN_SESSION: Duration = Duration::from_millis(6_000);
pub const MAX_SESSION: Duration = Duration::from_millis(1_800_000);
/// Longest rebalance timeout honoured; a larger one is clamped.
const MAX_REBALANCE: Duration = Duration::from_secs(300);
/// Most members one group may have (bounds the memory a client can make us hold).
pub const MAX_MEMBERS: usize = 1_000;
/// Most metadata (all its assignors together) or assignment kept per member.
pub const MAX_METADATA_BYTES: usize = 1 << 20;
/// Most assignors a member may offer.
pub const MAX_PROTOCOLS: usize = 16;
/// Most Kafka groups at once (each costs memory and a name claim).
pub const MAX_GROUPS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// The state's name as Kafka's ListGroups and DescribeGroups spell it.
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// A Kafka group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub state: &'static str,
    pub protocol_type: String,
    /// The assignor chosen, empty while none is.
    pub protocol: String,
    pub members: Vec<MemberView>,
}

/// A member as DescribeGroups shows it: its metadata for the chosen assignor and its
/// assignment, as the clients exchanged them.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member's id, instance id and metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    fn error(error: i16, member_id: &str) -> Self {
        Self {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// The answer to a SyncGroup: an error code and the member's assignment.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    fn error(error: i16) -> Self {
        Self {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// What a JoinGroup request asks.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    /// Where the member connects from, as Kafka shows it (`/ADDRESS`); empty if unknown.
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (assignor name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ must first learn its member id (`MEMBER_ID_REQUIRED`).
    pub require_known_member_id: bool,
}

/// What the Kafka barrier keeps of a member beside the shared membership core's fields
/// (id, client id, session timeout and deadline).
#[derive(Debug)]
struct KafkaState {
    group_instance_id: Option<String>,
    client_host: String,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    /// A JoinGroup waiting for the round to complete.
    join: Option<oneshot::Sender<JoinOutcome>>,
    /// A SyncGroup waiting for the leader's assignment.
    sync: Option<oneshot::Sender<SyncOutcome>>,
    assignment: Bytes,
}

impl KafkaState {
    /// The member's metadata for assignor `protocol`.
    fn metadata(&self, protocol: &str) -> Option<&Bytes> {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, b)| b)
    }

    /// Waiting in a join or a sync: its heartbeats queue behind that request on the
    /// coordinator connection, so its session does not expire meanwhile.
    fn waiting(&self) -> bool {
        self.join.is_some() || self.sync.is_some()
    }
}

#[derive(Debug)]
struct Group {
    state: State,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// Members, sessions and the generation: the broker's membership core, shared with the
    /// native coordinator.
    core: Membership<KafkaState>,
    /// Member ids handed out with `MEMBER_ID_REQUIRED`, valid until the deadline.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Instant,
}

impl Group {
    fn new(now: Instant) -> Self {
        Self {
            state: State::Empty,
            protocol_type: None,
            protocol: None,
            leader: None,
            core: Membership::new(GroupProtocol::Kafka),
            pending: HashMap::new(),
            rebalance_deadline: now,
        }
    }

    /// The generation as Kafka numbers it (an i32).
    fn generation(&self) -> i32 {
        i32::try_from(self.core.generation()).unwrap_or(i32::MAX)
    }

    /// Whether one of `protocols` is supported by every current member (other than
    /// `except`): the assignors common to all must stay non-empty.
    fn supports(&self, protocols: &[(String, Bytes)], except: &str) -> bool {
        protocols.iter().any(|(name, _)| {
            self.core
                .members()
                .filter(|m| m.id != except)
                .all(|m| m.state.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// Starts (or keeps) a rebalance round: pending syncs learn it at once.
    fn prepare_rebalance(&mut self, now: Instant) {
        for m in self.core.members_mut() {
            if let Some(tx) = m.state.sync.take() {
                let _ = tx.send(SyncOutcome::error(code::REBALANCE_IN_PROGRESS));
            }
        }
        if self.state != State::PreparingRebalance {
            let longest = self
                .core
                .members()
                .map(|m| m.state.rebalance_timeout)
                .max()
                .unwrap_or(Duration::ZERO);
            self.rebalance_deadline = now + longest;
            self.state = State::PreparingRebalance;
        }
    }

    /// Completes the join round if every member (and every pending id) has joined, or if
    /// `force` (the rebalance timeout passed: members that did not rejoin are dropped).
    fn try_complete_join(&mut self, force: bool, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined =
            self.core.members().all(|m| m.state.join.is_some()) && self.pending.is_empty();
        if !all_joined && !force {
            return;
        }
        if force {
            self.core.retain(|m| m.state.join.is_some());
            self.pending.clear();
        }
        self.core.next_generation();
        if self.core.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        let protocol = self.vote();
        if !self.leader.as_ref().is_some_and(|l| self.core.contains(l)) {
            self.leader = self.core.ids().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let all: Vec<(String, Option<String>, Bytes)> = self
            .core
            .members()
            .map(|m| {
                let meta = m.state.metadata(&protocol).cloned().unwrap_or_default();
                (m.id.clone(), m.state.group_instance_id.clone(), meta)
            })
            .collect();
        self.protocol = Some(protocol.clone());
        self.state = State::CompletingRebalance;
        let generation = self.generation();
        for m in self.core.members_mut() {
            let id = &m.id;
            m.state.assignment = Bytes::new();
            // A member answered here starts its session clock again.
            m.deadline = now + m.session_timeout;
            if let Some(tx) = m.state.join.take() {
                let _ = tx.send(JoinOutcome {
                    error: code::NONE,
                    generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: Some(protocol.clone()),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        all.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    /// The assignor every member supports that most members prefer (ties: the first member's
    /// preference order).
    fn vote(&self) -> String {
        let first = self.core.members().next().expect("members is not empty");
        let candidates: Vec<&String> = first
            .state
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.core
                    .members()
                    .all(|m| m.state.protocols.iter().any(|(x, _)| x == *n))
            })
            .collect();
        let mut votes: Vec<usize> = vec![0; candidates.len()];
        for m in self.core.members() {
            if let Some(i) = m
                .state
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| *c == n))
            {
                votes[i] += 1;
            }
        }
        let best = (0..candidates.len())
            .max_by_key(|i| (votes[*i], std::cmp::Reverse(*i)))
            .unwrap_or(0);
        candidates
            .get(best)
            .map(|s| (*s).clone())
            .unwrap_or_default()
    }
}

/// Every Kafka group of one listener. Thread-safe; one mutex inside, never held across an
/// await.
#[derive(Debug)]
pub struct KafkaGroups {
    broker: Broker,
    groups: Mutex<HashMap<String, Group>>,
    /// The protocol type of groups that emptied (their last member left): Kafka shows such a
    /// group as Empty with the type it had, until its offsets go. In memory only, and at most
    /// [`MAX_GROUPS`] of them (the oldest forgotten first).
    emptied: Mutex<std::collections::VecDeque<(String, String)>>,
    /// The KIP-848 consumer groups: a name is held by one protocol or the other.
    pub consumer: crate::consumer_groups::ConsumerGroups,
    member_ids: MemberIds,
    /// Set by [`KafkaGroups::clear`] at shutdown: no group is made or joined after it.
    stopped: std::sync::atomic::AtomicBool,
}

impl KafkaGroups {
    pub fn new(broker: Broker) -> Self {
        Self {
            groups: Mutex::new(HashMap::new()),
            emptied: Mutex::new(std::collections::VecDeque::new()),
            consumer: crate::consumer_groups::ConsumerGroups::new(broker.clone()),
            broker,
            member_ids: MemberIds::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// JoinGroup: resolves when the round completes (or at once with an error).
    pub async fn join(&self, req: JoinRequest) -> JoinOutcome {
        let rx = match self.join_start(req, Instant::now()) {
            Ok(rx) => rx,
            Err(outcome) => return *outcome,
        };
        rx.await
            .unwrap_or_else(|_| JoinOutcome::error(code::UNKNOWN_MEMBER_ID, ""))
    }

    fn join_start(
        &self,
        mut req: JoinRequest,
        now: Instant,
    ) -> Result<oneshot::Receiver<JoinOutcome>, Box<JoinOutcome>> {
        // Kept for the group's life: copies, so that a member does not pin the whole request
        // buffer its metadata was sliced from.
        for (_, m) in req.protocols.iter_mut() {
            *m = Bytes::copy_from_slice(m);
        }
        let fail = |code: i16| Err(Box::new(JoinOutcome::error(code, &req.member_id)));
        if req.group.is_empty() {
            return fail(code::INVALID_GROUP_ID);
        }
        if self.consumer.holds(&req.group) {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if req.session_timeout < MIN_SESSION || req.session_timeout > MAX_SESSION {
            return fail(code::INVALID_SESSION_TIMEOUT);
        }
        if req.protocol_type.is_empty()
            || req.protocols.is_empty()
            || req.protocols.len() > MAX_PROTOCOLS
            || req.protocols.iter().map(|(_, m)| m.len()).sum::<usize>() > MAX_METADATA_BYTES
        {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL);
        }

        let mut groups = self.groups.lock();
        // Retriable: the client looks for its coordinator again, and finds this broker back.
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return fail(code::COORDINATOR_NOT_AVAILABLE);
        }
        if !groups.contains_key(&req.group) && groups.len() >= MAX_GROUPS {
            return fail(code::COORDINATOR_NOT_AVAILABLE);
        }
        if !groups.contains_key(&req.group) {
            if let Err(e) = self.broker.claim_group(&req.group, GroupProtocol::Kafka) {
                tracing::debug!(group = %req.group, error = %e, "Kafka join refused");
                return fail(code::INCONSISTENT_GROUP_PROTOCOL);
            }
            groups.insert(req.group.clone(), Group::new(now));
        }
        let g = groups.get_mut(&req.group).expect("inserted above");
        let active = !g.core.is_empty() || !g.pending.is_empty();
        if active
            && (g.protocol_type.as_deref() != Some(&req.protocol_type)
                || !g.supports(&req.protocols, &req.member_id))
        {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if !active {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        // Static membership: a member that comes back with its group.instance.id replaces its
        // earlier incarnation at once, instead of the round waiting for the old id to rejoin.
        let static_member = req.member_id.is_empty() && req.group_instance_id.is_some();
        if static_member {
            let old: Vec<String> = g
                .core
                .members()
                .filter(|m| m.state.group_instance_id == req.group_instance_id)
                .map(|m| m.id.clone())
                .collect();
            for id in old {
                if let Some(m) = g.core.remove(&id) {
                    if let Some(tx) = m.state.join {
                        let _ = tx.send(JoinOutcome::error(code::FENCED_INSTANCE_ID, &id));
                    }
                    if let Some(tx) = m.state.sync {
                        let _ = tx.send(SyncOutcome::error(code::FENCED_INSTANCE_ID));
                    }
                }
                if g.leader.as_deref() == Some(id.as_str()) {
                    g.leader = None;
                }
            }
        }
        let member_id = if req.member_id.is_empty() {
            if g.core.len() + g.pending.len() >= MAX_MEMBERS {
                return fail(code::GROUP_MAX_SIZE_REACHED);
            }
            let id = self.member_ids.next(&req.client_id);
            if req.require_known_member_id && !static_member {
                g.pending.insert(id.clone(), now + req.session_timeout);
                return Err(Box::new(JoinOutcome::error(code::MEMBER_ID_REQUIRED, &id)));
            }
            id
        } else if g.core.contains(&req.member_id) || g.pending.remove(&req.member_id).is_some() {
            req.member_id.clone()
        } else {
            return fail(code::UNKNOWN_MEMBER_ID);
        };
        let (tx, rx) = oneshot::channel();
        let rebalance_timeout = req.rebalance_timeout.min(MAX_REBALANCE);
        match g.core.member_mut(&member_id) {
            Some(m) => {
                m.client_id = req.client_id;
                m.session_timeout = req.session_timeout;
                m.deadline = now + req.session_timeout;
                m.state.group_instance_id = req.group_instance_id;
                m.state.client_host = req.client_host;
                m.state.rebalance_timeout = rebalance_timeout;
                m.state.protocols = req.protocols;
                // A member that joins again while its earlier join waits: the earlier one is
                // answered with an error; the new one waits in its place.
                if let Some(old) = m.state.join.replace(tx) {
                    let _ = old.send(JoinOutcome::error(code::REBALANCE_IN_PROGRESS, &member_id));
                }
            }
            None => {
                g.core.insert(Member {
                    id: member_id.clone(),
                    client_id: req.client_id,
                    // Kafka subscriptions travel inside the assignors' opaque metadata.
                    topics: Default::default(),
                    session_timeout: req.session_timeout,
                    deadline: now + req.session_timeout,
                    state: KafkaState {
                        group_instance_id: req.group_instance_id,
                        client_host: req.client_host,
                        rebalance_timeout,
                        protocols: req.protocols,
                        join: Some(tx),
                        sync: None,
                        assignment: Bytes::new(),
                    },
                });
            }
        }
        g.prepare_rebalance(now);
        g.try_complete_join(false, now);
        Ok(rx)
    }

    /// SyncGroup: the leader's call stores every assignment; the others wait for it.
    pub async fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let rx = match self.sync_start(group, generation, member_id, assignments, Instant::now()) {
            Ok(rx) => rx,
            Err(outcome) => return outcome,
        };
        rx.await
            .unwrap_or_else(|_| SyncOutcome::error(code::REBALANCE_IN_PROGRESS))
    }

    fn sync_start(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Result<oneshot::Receiver<SyncOutcome>, SyncOutcome> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group).filter(|g| g.core.contains(member_id)) else {
            return Err(SyncOutcome::error(code::UNKNOWN_MEMBER_ID));
        };
        if generation != g.generation() {
            return Err(SyncOutcome::error(code::ILLEGAL_GENERATION));
        }
        let (protocol_type, protocol_name) = (g.protocol_type.clone(), g.protocol.clone());
        let answer = |assignment: Bytes| SyncOutcome {
            error: code::NONE,
            protocol_type: protocol_type.clone(),
            protocol_name: protocol_name.clone(),
            assignment,
        };
        match g.state {
            State::Empty | State::PreparingRebalance => {
                Err(SyncOutcome::error(code::REBALANCE_IN_PROGRESS))
            }
            State::Stable => {
                g.core.touch(member_id, now);
                let m = g.core.member(member_id).expect("checked above");
                Err(answer(m.state.assignment.clone()))
            }
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                {
                    g.core.touch(member_id, now);
                    let m = g.core.member_mut(member_id).expect("checked above");
                    m.state.sync = Some(tx);
                }
                if g.leader.as_deref() == Some(member_id) {
                    for (id, assignment) in assignments {
                        if assignment.len() > MAX_METADATA_BYTES {
                            continue;
                        }
                        if let Some(m) = g.core.member_mut(&id) {
                            m.state.assignment = Bytes::copy_from_slice(&assignment);
                        }
                    }
                    g.state = State::Stable;
                    for m in g.core.members_mut() {
                        if let Some(tx) = m.state.sync.take() {
                            let _ = tx.send(answer(m.state.assignment.clone()));
                        }
                    }
                }
                Ok(rx)
            }
        }
    }

    /// Heartbeat: keeps the session; tells the member when a new round started.
    pub fn heartbeat(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        self.heartbeat_at(group, generation, member_id, Instant::now())
    }

    fn heartbeat_at(&self, group: &str, generation: i32, member_id: &str, now: Instant) -> i16 {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if !g.core.touch(member_id, now) {
            return code::UNKNOWN_MEMBER_ID;
        }
        if generation != g.generation() {
            return code::ILLEGAL_GENERATION;
        }
        match g.state {
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            State::Empty => code::UNKNOWN_MEMBER_ID,
            State::CompletingRebalance | State::Stable => code::NONE,
        }
    }

    /// LeaveGroup by static instance id (v3+, a member named by its `group.instance.id`
    /// alone): the member holding that instance id goes, whatever its member id.
    pub fn leave_instance(&self, group: &str, instance_id: &str) -> i16 {
        let member = self.groups.lock().get(group).and_then(|g| {
            g.core
                .members()
                .find(|m| m.state.group_instance_id.as_deref() == Some(instance_id))
                .map(|m| m.id.clone())
        });
        match member {
            Some(id) => self.leave(group, &id),
            None => code::UNKNOWN_MEMBER_ID,
        }
    }

    /// LeaveGroup: the member goes; the others rebalance.
    pub fn leave(&self, group: &str, member_id: &str) -> i16 {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if g.pending.remove(member_id).is_some() {
            g.try_complete_join(false, now);
            self.drop_if_empty(&mut groups, group);
            return code::NONE;
        }
        let Some(m) = g.core.remove(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if let Some(tx) = m.state.join {
            let _ = tx.send(JoinOutcome::error(code::UNKNOWN_MEMBER_ID, member_id));
        }
        g.prepare_rebalance(now);
        g.try_complete_join(false, now);
        self.drop_if_empty(&mut groups, group);
        code::NONE
    }

    /// A group as DescribeGroups shows it, if this listener holds it.
    pub fn view(&self, group: &str) -> Option<GroupView> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        let members = g
            .core
            .members()
            .map(|m| MemberView {
                member_id: m.id.clone(),
                group_instance_id: m.state.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.state.client_host.clone(),
                metadata: m.state.metadata(&protocol).cloned().unwrap_or_default(),
                assignment: m.state.assignment.clone(),
            })
            .collect();
        Some(GroupView {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        })
    }

    /// Every group this listener holds: name, protocol type and state.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        self.groups
            .lock()
            .iter()
            .map(|(name, g)| {
                let protocol_type = g.protocol_type.clone().unwrap_or_default();
                (name.clone(), protocol_type, g.state.name())
            })
            .collect()
    }

    /// Whether a member of `group` subscribes to `topic` (as its consumer-protocol
    /// subscription says).
    pub fn subscribes(&self, group: &str, topic: &str) -> bool {
        self.describe(group).is_some_and(|d| {
            d.members
                .iter()
                .any(|m| m.topics.iter().any(|t| t == topic))
        })
    }

    /// Whether a member may commit offsets now: `NONE` or the error code to answer with.
    /// A commit with generation -1 and no member id (a consumer without group membership) is
    /// allowed while the group has no members.
    pub fn check_commit(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            if generation < 0 && member_id.is_empty() {
                return match self.broker.group_protocol(group) {
                    Some(GroupProtocol::Native) => code::INCONSISTENT_GROUP_PROTOCOL,
                    _ => code::NONE,
                };
            }
            return code::UNKNOWN_MEMBER_ID;
        };
        if generation < 0 && member_id.is_empty() {
            return if g.core.is_empty() {
                code::NONE
            } else {
                code::UNKNOWN_MEMBER_ID
            };
        }
        if !g.core.touch(member_id, now) {
            return code::UNKNOWN_MEMBER_ID;
        }
        if generation != g.generation() {
            return code::ILLEGAL_GENERATION;
        }
        match g.state {
            State::CompletingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// Expires sessions, pending member ids and rebalance timeouts; drops empty groups.
    pub fn tick(&self, now: Instant) {
        let mut groups = self.groups.lock();
        let names: Vec<String> = groups.keys().cloned().collect();
        for name in names {
            let g = groups.get_mut(&name).expect("listed above");
            let pending = g.pending.len();
            g.pending.retain(|_, deadline| *deadline > now);
            if g.pending.len() < pending {
                // A round may have been waiting only for the ids that just expired.
                g.try_complete_join(false, now);
            }
            if g.state == State::PreparingRebalance && now >= g.rebalance_deadline {
                tracing::debug!(group = %name, "Kafka rebalance timed out; dropping members that did not rejoin");
                g.try_complete_join(true, now);
            }
            // Members waiting in a join or a sync are not expired: their heartbeats queue behind
            // that request on the coordinator connection. The rebalance timeout governs joins;
            // a sync waits for the leader, who is expired if silent.
            let expired = g.core.expired_unless(now, |m| m.state.waiting());
            if !expired.is_empty() {
                for id in &expired {
                    tracing::info!(group = %name, member = %id, "Kafka group member's session expired");
                    g.core.remove(id);
                }
                g.prepare_rebalance(now);
                g.try_complete_join(false, now);
            }
            if g.state == State::PreparingRebalance && g.core.is_empty() {
                g.try_complete_join(true, now);
            }
            self.drop_if_empty(&mut groups, &name);
        }
    }

    fn drop_if_empty(&self, groups: &mut HashMap<String, Group>, name: &str) {
        if groups
            .get(name)
            .is_some_and(|g| g.core.is_empty() && g.pending.is_empty())
        {
            if let Some(g) = groups.remove(name)
                && let Some(protocol_type) = g.protocol_type
            {
                let mut emptied = self.emptied.lock();
                emptied.retain(|(n, _)| n != name);
                if emptied.len() >= MAX_GROUPS {
                    emptied.pop_front();
                }
                emptied.push_back((name.to_string(), protocol_type));
            }
            self.broker.release_group(name, GroupProtocol::Kafka);
        }
    }

    /// A KIP-848 heartbeat, refused for a name a classic group holds here.
    pub(crate) fn consumer_heartbeat(
        &self,
        beat: crate::consumer_groups::Beat,
        now: Instant,
    ) -> crate::consumer_groups::BeatOutcome {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            // Stopping: retriable, so the member finds the coordinator again once it is back.
            return crate::consumer_groups::BeatOutcome {
                error: code::COORDINATOR_NOT_AVAILABLE,
                message: Some("the broker is stopping".into()),
                member_id: beat.member_id,
                member_epoch: -1,
                assignment: None,
            };
        }
        let classic = self.groups.lock().contains_key(&beat.group);
        self.consumer.heartbeat(beat, classic, now)
    }

    /// The protocol type `group` had when it last had members, if it emptied here.
    pub fn emptied_protocol_type(&self, group: &str) -> Option<String> {
        let emptied = self.emptied.lock();
        emptied
            .iter()
            .find(|(n, _)| n == group)
            .map(|(_, t)| t.clone())
    }

    /// Forgets what an emptied group was (it was deleted).
    pub fn forget_emptied(&self, group: &str) {
        self.emptied.lock().retain(|(n, _)| n != group);
    }

    /// Drops every group (shutdown): waiting joins and syncs are answered at once with
    /// COORDINATOR_NOT_AVAILABLE, which clients retry (they find the broker again once it is
    /// back, and rejoin), so their connections can drain; later joins get the same.
    pub fn clear(&self) {
        self.consumer.clear();
        let mut groups = self.groups.lock();
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        for (name, mut g) in groups.drain() {
            for m in g.core.members_mut() {
                if let Some(tx) = m.state.join.take() {
                    let _ = tx.send(JoinOutcome::error(code::COORDINATOR_NOT_AVAILABLE, ""));
                }
                if let Some(tx) = m.state.sync.take() {
                    let _ = tx.send(SyncOutcome::error(code::COORDINATOR_NOT_AVAILABLE));
                }
            }
            self.broker.release_group(&name, GroupProtocol::Kafka);
        }
    }
}

impl ForeignCoordinator for KafkaGroups {
    fn tick(&self, now: Instant) {
        KafkaGroups::tick(self, now);
        self.consumer.tick(now);
    }

    /// A group as the broker's admin views show it. The assignors' metadata and assignments
    /// are read where the group uses Kafka's `consumer` protocol (what every consumer client
    /// speaks), so `weir group describe` shows each member's topics and partitions.
    fn describe(&self, group: &str) -> Option<GroupDescription> {
        if let Some((epoch, members)) = self.consumer.view(group) {
            let members = members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    topics: m.subscribed,
                    session_timeout: crate::consumer_groups::SESSION_TIMEOUT,
                    assignment: crate::consumer_groups::by_topic(m.assigned),
                })
                .collect();
            return Some(GroupDescription {
                group: group.to_string(),
                protocol: GroupProtocol::Kafka,
                generation: u64::try_from(epoch).unwrap_or(0),
                strategy: None,
                members,
            });
        }
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        let consumer = g.protocol_type.as_deref() == Some("consumer");
        let members = g
            .core
            .members()
            .map(|m| {
                let meta = g
                    .protocol
                    .as_deref()
                    .and_then(|p| m.state.metadata(p))
                    .or(m.state.protocols.first().map(|(_, b)| b))
                    .map_or(&[][..], |b| b.as_ref());
                MemberDescription {
                    member_id: m.id.clone(),
                    client_id: m.client_id.clone(),
                    topics: if consumer {
                        consumer_protocol::topics(meta).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    session_timeout: m.session_timeout,
                    assignment: if consumer {
                        consumer_protocol::assignment(&m.state.assignment).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        Some(GroupDescription {
            group: group.to_string(),
            protocol: GroupProtocol::Kafka,
            generation: g.core.generation(),
            strategy: None,
            members,
        })
    }
}

/// Reads the two messages of Kafka's `consumer` group protocol that consumers exchange through
/// the coordinator: a member's subscription (its JoinGroup metadata) and its assignment (from
/// the leader's SyncGroup). By hand, not with `kafka-protocol`'s decoders, because those
/// reserve memory from counts read off the bytes (see `guard.rs`), and these bytes come from
/// clients unchecked: every count here is only iterated, each item read from what is there.
/// Only the leading fields, which every version (0 to 3) has in the same layout, are read.
mod consumer_protocol {
    use weir_batch::cursor::Cursor;

    /// A Kafka string (an i16 length, then UTF-8) and an array's count (an i32: a null array
    /// reads as empty).
    trait Kafka {
        fn string(&mut self) -> Option<String>;
        fn count(&mut self) -> Option<usize>;
    }

    impl Kafka for Cursor<'_> {
        fn string(&mut self) -> Option<String> {
            let len = usize::try_from(self.i16()?).ok()?;
            String::from_utf8(self.take(len)?.to_vec()).ok()
        }
        fn count(&mut self) -> Option<usize> {
            Some(usize::try_from(self.i32()?).unwrap_or(0))
        }
    }

    /// A subscription's topics (version, then an array of topic names).
    pub(super) fn topics(bytes: &[u8]) -> Option<Vec<String>> {
        let mut r = Cursor(bytes);
        r.i16()?;
        let mut out = Vec::new();
        for _ in 0..r.count()? {
            out.push(r.string()?);
        }
        Some(out)
    }

    /// An assignment's partitions by topic (version, then an array of topic and partitions).
    pub(super) fn assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<u32>)>> {
        let mut r = Cursor(bytes);
        r.i16()?;
        let mut out = Vec::new();
        for _ in 0..r.count()? {
            let topic = r.string()?;
            let mut partitions = Vec::new();
            for _ in 0..r.count()? {
                partitions.push(u32::try_from(r.i32()?).ok()?);
            }
            partitions.sort_unstable();
            out.push((topic, partitions));
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_what_clients_send_and_refuses_lies_without_allocating_from_them() {
            // version 1, topics ["a", "bc"], then fields of later versions (ignored).
            let sub = [
                0, 1, 0, 0, 0, 2, 0, 1, b'a', 0, 2, b'b', b'c', 0xff, 0xff, 0xff, 0xff,
            ];
            assert_eq!(topics(&sub).unwrap(), ["a", "bc"]);
            // version 0, [("t", [2, 0])], user data null.
            let asg = [
                0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff,
                0xff,
            ];
            assert_eq!(assignment(&asg).unwrap(), [("t".to_string(), vec![0, 2])]);
            // A count of two billion over a few bytes: refused after the bytes run out.
            assert!(assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 1, b't']).is_none());
            assert!(topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff]).is_none());
            assert!(topics(&[]).is_none());
            // A negative partition is not a partition.
            assert!(
                assignment(&[
                    0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff
                ])
                .is_none()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> (tempfile::TempDir, KafkaGroups) {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        (dir, KafkaGroups::new(broker))
    }

    fn join(group: &str, member: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group: group.into(),
            member_id: member.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    /// Joins with MEMBER_ID_REQUIRED first, as a v4+ client does; returns the id and the
    /// waiting receiver.
    fn enter(
        k: &KafkaGroups,
        group: &str,
        protocols: &[&str],
        now: Instant,
    ) -> (String, oneshot::Receiver<JoinOutcome>) {
        let first = k.join_start(join(group, "", protocols), now).unwrap_err();
        assert_eq!(first.error, code::MEMBER_ID_REQUIRED);
        let rx = k
            .join_start(join(group, &first.member_id, protocols), now)
            .unwrap();
        (first.member_id, rx)
    }

    #[test]
    fn join_waits_for_every_member_then_the_leader_gets_all_metadata() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (a, mut rx_a) = enter(&k, "g", &["range", "roundrobin"], now);
        // Alone, a completes at once: generation 1.
        let out_a = rx_a.try_recv().unwrap();
        assert_eq!((out_a.error, out_a.generation), (code::NONE, 1));
        assert_eq!(out_a.leader, a);
        // b joins: a new round that waits for a to rejoin.
        let (b, mut rx_b) = enter(&k, "g", &["roundrobin"], now);
        assert!(rx_b.try_recv().is_err(), "b must wait for a");
        assert_eq!(k.heartbeat_at("g", 1, &a, now), code::REBALANCE_IN_PROGRESS);
        let mut rx_a = k
            .join_start(join("g", &a, &["range", "roundrobin"]), now)
            .unwrap();
        let (out_a, out_b) = (rx_a.try_recv().unwrap(), rx_b.try_recv().unwrap());
        assert_eq!(out_a.generation, 2);
        assert_eq!(out_b.generation, 2);
        // Only roundrobin is common to both.
        assert_eq!(out_a.protocol_name.as_deref(), Some("roundrobin"));
        assert_eq!(out_a.leader, a, "the leader stays the leader");
        assert_eq!(out_a.members.len(), 2);
        assert!(
            out_a
                .members
                .iter()
                .all(|(_, _, m)| &m[..] == b"meta-roundrobin")
        );
        assert!(out_b.members.is_empty(), "followers get no member list");
        assert_eq!(out_b.member_id, b);
    }

    #[test]
    fn followers_sync_waits_for_the_leaders_assignment() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (a, _rx) = enter(&k, "g", &["range"], now);
        let (b, mut rx_b) = enter(&k, "g", &["range"], now);
        let mut rx_a = k.join_start(join("g", &a, &["range"]), now).unwrap();
        let gen_ = rx_a.try_recv().unwrap().generation;
        rx_b.try_recv().unwrap();
        assert_eq!(k.heartbeat_at("g", gen_, &b, now), code::NONE);
        let mut sync_b = k.sync_start("g", gen_, &b, vec![], now).unwrap();
        assert!(sync_b.try_recv().is_err(), "b waits for the leader");
        let mut sync_a = k
            .sync_start(
                "g",
                gen_,
                &a,
                vec![
                    (a.clone(), Bytes::from_static(b"A")),
                    (b.clone(), Bytes::from_static(b"B")),
                ],
                now,
            )
            .unwrap();
        assert_eq!(&sync_a.try_recv().unwrap().assignment[..], b"A");
        assert_eq!(&sync_b.try_recv().unwrap().assignment[..], b"B");
        // A late sync in Stable gets the stored assignment at once.
        let again = k.sync_start("g", gen_, &b, vec![], now).unwrap_err();
        assert_eq!(
            (again.error, &again.assignment[..]),
            (code::NONE, &b"B"[..])
        );
        // Wrong generation, unknown member.
        assert_eq!(
            k.sync_start("g", gen_ + 1, &b, vec![], now)
                .unwrap_err()
                .error,
            code::ILLEGAL_GENERATION
        );
        assert_eq!(
            k.sync_start("g", gen_, "x", vec![], now).unwrap_err().error,
            code::UNKNOWN_MEMBER_ID
        );
        assert_eq!(k.check_commit("g", gen_, &a), code::NONE);
        assert_eq!(k.check_commit("g", gen_ - 1, &a), code::ILLEGAL_GENERATION);
        assert_eq!(k.check_commit("g", -1, ""), code::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (a, _rx) = enter(&k, "g", &["range"], now);
        let (b, mut rx_b) = enter(&k, "g", &["range"], now);
        // a heartbeats (its session lives) but never rejoins. Before the rebalance timeout b
        // waits; after it, b is alone in generation 2.
        let s = Duration::from_secs;
        assert_eq!(
            k.heartbeat_at("g", 1, &a, now + s(8)),
            code::REBALANCE_IN_PROGRESS
        );
        assert_eq!(
            k.heartbeat_at("g", 1, &a, now + s(16)),
            code::REBALANCE_IN_PROGRESS
        );
        assert_eq!(
            k.heartbeat_at("g", 1, &a, now + s(25)),
            code::REBALANCE_IN_PROGRESS
        );
        k.tick(now + s(29));
        assert!(rx_b.try_recv().is_err());
        k.tick(now + Duration::from_secs(31));
        let out = rx_b.try_recv().unwrap();
        assert_eq!(
            (out.error, out.generation, out.leader.clone()),
            (code::NONE, 2, b.clone())
        );
        assert_eq!(k.heartbeat_at("g", 2, &a, now), code::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn sessions_expire_and_the_rest_rebalance_then_the_last_leave_frees_the_name() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (a, _rx) = enter(&k, "g", &["range"], now);
        let (b, _rx_b) = enter(&k, "g", &["range"], now);
        let _rx_a = k.join_start(join("g", &a, &["range"]), now).unwrap();
        // Both are in generation 2. b heartbeats, a goes silent.
        let later = now + Duration::from_secs(8);
        assert_eq!(k.heartbeat_at("g", 2, &b, later), code::NONE);
        k.tick(now + Duration::from_secs(11));
        assert_eq!(k.heartbeat_at("g", 2, &a, later), code::UNKNOWN_MEMBER_ID);
        assert_eq!(
            k.heartbeat_at("g", 2, &b, now + Duration::from_secs(11)),
            code::REBALANCE_IN_PROGRESS
        );
        // The name is held against native groups while the group lives.
        assert!(k.broker.claim_group("g", GroupProtocol::Native).is_err());
        assert_eq!(k.leave("g", &b), code::NONE);
        assert!(ForeignCoordinator::describe(&k, "g").is_none());
        assert!(k.broker.claim_group("g", GroupProtocol::Native).is_ok());
    }

    #[test]
    fn an_expired_pending_id_no_longer_holds_the_round() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (_a, mut rx_a) = enter(&k, "g", &["range"], now);
        rx_a.try_recv().unwrap();
        // c learns its id and never comes back; b joins.
        let c = k.join_start(join("g", "", &["range"]), now).unwrap_err();
        assert_eq!(c.error, code::MEMBER_ID_REQUIRED);
        let (_b, mut rx_b) = enter(&k, "g", &["range"], now);
        let mut rx_a = k.join_start(join("g", &_a, &["range"]), now).unwrap();
        assert!(rx_b.try_recv().is_err(), "waiting for c's pending id");
        // c's pending id expires with its session (10 s), long before the rebalance timeout.
        k.tick(now + Duration::from_secs(11));
        assert_eq!(rx_b.try_recv().unwrap().error, code::NONE);
        assert_eq!(rx_a.try_recv().unwrap().error, code::NONE);
    }

    #[test]
    fn followers_waiting_for_the_leaders_assignment_are_not_expired() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (a, _rx) = enter(&k, "g", &["range"], now);
        let (b, mut rx_b) = enter(&k, "g", &["range"], now);
        let mut rx_a = k.join_start(join("g", &a, &["range"]), now).unwrap();
        let generation = rx_a.try_recv().unwrap().generation;
        rx_b.try_recv().unwrap();
        let mut sync_b = k.sync_start("g", generation, &b, vec![], now).unwrap();
        // b's heartbeats queue behind its SyncGroup; the leader is slow but heartbeating.
        for t in [5, 9, 13] {
            assert_eq!(
                k.heartbeat_at("g", generation, &a, now + Duration::from_secs(t)),
                code::NONE
            );
        }
        k.tick(now + Duration::from_secs(14));
        assert!(
            ForeignCoordinator::describe(&k, "g")
                .unwrap()
                .members
                .iter()
                .any(|m| m.member_id == b),
            "b was expired while in SyncGroup"
        );
        let mut sync_a = k
            .sync_start(
                "g",
                generation,
                &a,
                vec![(b.clone(), Bytes::from_static(b"B"))],
                now,
            )
            .unwrap();
        sync_a.try_recv().unwrap();
        assert_eq!(&sync_b.try_recv().unwrap().assignment[..], b"B");
    }

    #[test]
    fn a_member_must_share_one_assignor_with_all_others() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (_a, _rx_a) = enter(&k, "g", &["x", "y"], now);
        let (_b, _rx_b) = enter(&k, "g", &["y", "z"], now);
        // [x, z] overlaps each of them, but no assignor is common to all three.
        let c = k.join_start(join("g", "", &["x", "z"]), now).unwrap_err();
        assert_eq!(c.error, code::INCONSISTENT_GROUP_PROTOCOL);
    }

    #[test]
    fn a_static_member_coming_back_replaces_its_old_incarnation() {
        let (_d, k) = groups();
        let now = Instant::now();
        let mut req = join("g", "", &["range"]);
        req.group_instance_id = Some("pod-1".into());
        let mut rx_old = k.join_start(req.clone(), now).unwrap();
        let old = rx_old.try_recv().unwrap().member_id;
        // Restarted: same instance id, no member id. No MEMBER_ID_REQUIRED, no waiting for
        // the old id: it is fenced and replaced.
        let mut rx_new = k.join_start(req, now).unwrap();
        let out = rx_new.try_recv().unwrap();
        assert_eq!(out.error, code::NONE);
        assert_ne!(out.member_id, old);
        let ids: Vec<String> = ForeignCoordinator::describe(&k, "g")
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.member_id)
            .collect();
        assert_eq!(ids, vec![out.member_id]);
        assert_eq!(
            k.heartbeat_at("g", out.generation, &old, now),
            code::UNKNOWN_MEMBER_ID
        );
        // It leaves by its instance id alone (LeaveGroup v3+), as static members do.
        assert_eq!(k.leave_instance("g", "pod-2"), code::UNKNOWN_MEMBER_ID);
        assert_eq!(k.leave_instance("g", "pod-1"), code::NONE);
        assert!(ForeignCoordinator::describe(&k, "g").is_none());
        // Emptied, it keeps its type for admin views, as Kafka shows an Empty group.
        assert_eq!(k.emptied_protocol_type("g").as_deref(), Some("consumer"));
        k.forget_emptied("g");
        assert_eq!(k.emptied_protocol_type("g"), None);
    }

    /// Once stopping, a KIP-848 heartbeat is told to find its coordinator again (retriable),
    /// and a name a classic group holds is not the consumer protocol's.
    #[test]
    fn consumer_heartbeats_meet_the_classic_groups_and_the_shutdown() {
        let (_d, k) = groups();
        let now = Instant::now();
        let (_a, _rx) = enter(&k, "g", &["range"], now);
        let beat = crate::consumer_groups::Beat {
            group: "g".into(),
            member_id: "m".into(),
            subscribed: Some(vec!["t".into()]),
            ..Default::default()
        };
        let out = k.consumer_heartbeat(beat.clone(), now);
        assert_eq!(out.error, code::INCONSISTENT_GROUP_PROTOCOL);
        k.clear();
        let out = k.consumer_heartbeat(beat, now);
        assert_eq!(out.error, code::COORDINATOR_NOT_AVAILABLE);
    }

    #[test]
    fn bad_joins_get_kafka_error_codes() {
        let (_d, k) = groups();
        let now = Instant::now();
        let mut short = join("g", "", &["range"]);
        short.session_timeout = Duration::from_millis(100);
        assert_eq!(
            k.join_start(short, now).unwrap_err().error,
            code::INVALID_SESSION_TIMEOUT
        );
        assert_eq!(
            k.join_start(join("", "", &["range"]), now)
                .unwrap_err()
                .error,
            code::INVALID_GROUP_ID
        );
        assert_eq!(
            k.join_start(join("g", "who", &["range"]), now)
                .unwrap_err()
                .error,
            code::UNKNOWN_MEMBER_ID
        );
        let (_a, _rx) = enter(&k, "g", &["range"], now);
        // No assignor in common.
        let first = k.join_start(join("g", "", &["sticky"]), now).unwrap_err();
        assert_eq!(first.error, code::INCONSISTENT_GROUP_PROTOCOL);
        // A native group's name.
        k.broker
            .claim_group("native", GroupProtocol::Native)
            .unwrap();
        assert_eq!(
            k.join_start(join("native", "", &["range"]), now)
                .unwrap_err()
                .error,
            code::INCONSISTENT_GROUP_PROTOCOL
        );
    }
}

//! Authorization, the one check every door makes: [`Access`] is what a connection (or an HTTP
//! request) may do, asked before the broker is, with the door's own table from its requests
//! to (operation, resource). A refusal is [`BrokerError::NotAuthorized`], which each door
//! answers with its own code (Kafka's TOPIC/GROUP/CLUSTER_AUTHORIZATION_FAILED, HTTP 403,
//! the native NOT_AUTHORIZED).
//!
//! Decisions are cached per connection: a produce to the same topic asks the rules once, and
//! afterwards pays a lock and a hash lookup. The cache is dropped whenever the rules are read
//! anew (their generation changes) and when it grows past [`CACHE_ENTRIES`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
pub use weir_auth::Principal;
pub use weir_auth::acl::{Authorizer, Operation, ResourceType};

use crate::BrokerError;

/// Metric: decisions that refused, by resource type (a resource left out of a listing too).
pub const METRIC_REFUSALS: &str = "weir_acl_refusals_total";

/// Most decisions a connection keeps; past it the cache starts again.
pub const CACHE_ENTRIES: usize = 4096;

/// What one client may do: its principal, and the rules (none: everything).
#[derive(Debug)]
pub struct Access {
    principal: Principal,
    rules: Option<Arc<Authorizer>>,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    generation: u64,
    entries: usize,
    decisions: HashMap<(Operation, ResourceType), HashMap<Box<str>, bool>>,
}

impl Access {
    /// A client checked against `rules` (`None`: allowed everything).
    pub fn new(principal: Principal, rules: Option<Arc<Authorizer>>) -> Self {
        Self {
            principal,
            rules,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Everything allowed (a server without access control lists).
    pub fn unchecked(principal: Principal) -> Self {
        Self::new(principal, None)
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The generation of the rules in force (`None` when nothing is checked): it changes
    /// whenever they are read anew.
    pub fn generation(&self) -> Option<u64> {
        self.rules.as_ref().map(|r| r.generation())
    }

    /// Whether requests are checked at all.
    pub fn is_checked(&self) -> bool {
        self.rules.is_some()
    }

    /// Whether the client may do `op` to the resource.
    pub fn allows(&self, op: Operation, resource: ResourceType, name: &str) -> bool {
        let allowed = self.decide(op, resource, name);
        if !allowed {
            metrics::counter!(METRIC_REFUSALS, "resource" => resource.name()).increment(1);
        }
        allowed
    }

    fn decide(&self, op: Operation, resource: ResourceType, name: &str) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let generation = rules.generation();
        let mut cache = self.cache.lock();
        if cache.generation != generation || cache.entries >= CACHE_ENTRIES {
            cache.decisions.clear();
            cache.entries = 0;
            cache.generation = generation;
        }
        if let Some(&d) = cache
            .decisions
            .get(&(op, resource))
            .and_then(|m| m.get(name))
        {
            return d;
        }
        let decision = rules.allows(&self.principal, op, resource, name);
        cache
            .decisions
            .entry((op, resource))
            .or_default()
            .insert(name.into(), decision);
        cache.entries += 1;
        decision
    }

    /// [`Access::allows`], as the error a door answers a refusal with.
    pub fn check(
        &self,
        op: Operation,
        resource: ResourceType,
        name: &str,
    ) -> Result<(), BrokerError> {
        if self.allows(op, resource, name) {
            Ok(())
        } else {
            Err(self.refusal(op, resource, name))
        }
    }

    /// The error refusing `op` on the resource.
    pub fn refusal(&self, op: Operation, resource: ResourceType, name: &str) -> BrokerError {
        BrokerError::NotAuthorized {
            principal: self.principal.to_string(),
            operation: op,
            resource,
            name: name.to_string(),
        }
    }

    /// Whether the client may create topic `name`: create on the cluster, or on the topic
    /// (Kafka's rule).
    pub fn check_create_topic(&self, name: &str) -> Result<(), BrokerError> {
        if self.allows_cluster(Operation::Create)
            || self.allows(Operation::Create, ResourceType::Topic, name)
        {
            Ok(())
        } else {
            Err(self.refusal(Operation::Create, ResourceType::Topic, name))
        }
    }

    /// Whether the client may write topic `name`, and create it too when the write would
    /// (`creates`: the topic does not exist and the server creates topics on first use;
    /// asked only when the rules are checked, so that a server without ACLs does not look
    /// the topic up for it on every produce).
    pub fn check_write(
        &self,
        name: &str,
        creates: impl FnOnce() -> bool,
    ) -> Result<(), BrokerError> {
        if self.rules.is_none() {
            return Ok(());
        }
        self.check(Operation::Write, ResourceType::Topic, name)?;
        if creates() {
            self.check_create_topic(name)
        } else {
            Ok(())
        }
    }

    /// Whether the client may do `op` to at least one resource of the type (what a user
    /// interface offers; see [`Authorizer::allows_some`]).
    pub fn allows_some(&self, op: Operation, resource: ResourceType) -> bool {
        self.rules
            .as_ref()
            .is_none_or(|r| r.allows_some(&self.principal, op, resource))
    }

    /// Whether the client may do `op` to the cluster: Kafka's model for creating topics
    /// (`create` on the cluster, or on the topic itself) and listing every group.
    pub fn allows_cluster(&self, op: Operation) -> bool {
        self.allows(op, ResourceType::Cluster, "*")
    }
}

#[cfg(test)]
mod tests {
    use weir_auth::acl::{Acl, AclFile, PatternType, Permission};

    use super::*;

    #[test]
    fn decisions_are_cached_until_the_rules_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acls.json");
        let rule = Acl {
            principal: "User:alice".into(),
            resource: ResourceType::Topic,
            pattern: PatternType::Literal,
            name: "t".into(),
            operation: Operation::Write,
            permission: Permission::Allow,
        };
        AclFile::edit(&path, |f| {
            f.acls.push(rule.clone());
            Ok(())
        })
        .unwrap();
        let rules = Arc::new(Authorizer::open(path.clone(), Vec::new()).unwrap());
        let access = Access::new(Principal::user("alice"), Some(Arc::clone(&rules)));
        assert!(access.allows(Operation::Write, ResourceType::Topic, "t"));
        let err = access
            .check(Operation::Read, ResourceType::Topic, "t")
            .unwrap_err();
        assert_eq!(
            err.kind(),
            crate::ErrorKind::NotAuthorized(ResourceType::Topic)
        );
        assert!(err.to_string().contains("User:alice"), "{err}");
        // The rule goes: the cached allow must not outlive it.
        AclFile::edit(&path, |f| {
            f.acls.clear();
            Ok(())
        })
        .unwrap();
        assert!(
            access.allows(Operation::Write, ResourceType::Topic, "t"),
            "not read again yet: the cache answers"
        );
        rules.reload_if_changed().unwrap();
        assert!(!access.allows(Operation::Write, ResourceType::Topic, "t"));
        // A cache kept bounded.
        for i in 0..CACHE_ENTRIES * 2 {
            access.allows(Operation::Read, ResourceType::Topic, &format!("t{i}"));
        }
        assert!(access.cache.lock().entries <= CACHE_ENTRIES);
        assert!(Access::unchecked(Principal::Anonymous).allows(
            Operation::Delete,
            ResourceType::Cluster,
            "*"
        ));
    }
}

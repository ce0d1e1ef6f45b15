//! Access control lists: which principal may do what to which resource, in Kafka's model.
//!
//! A rule is principal (`User:NAME`, or `User:*` for everyone authenticated) × resource
//! (topic, group, cluster, pipeline; by literal name, `*` for all, or by prefix) × operation
//! (read, write, create, delete, describe, alter, or all) × allow or deny. A request is allowed
//! when some allow rule matches it and no deny rule does (deny wins); super users are allowed
//! everything; anything else is refused. Read, write, delete and alter each imply describe (as
//! in Kafka: a client that may read a topic may see it), for allow rules only.
//!
//! The rules live in a JSON file beside the users (`DATA_DIR/auth/acls.json`), edited the
//! same way ([`crate::store`]) and read again when it changes. The broker asks an
//! [`Authorizer`] through its per-connection `Access` (which caches the decisions until the
//! rules change: [`Authorizer::generation`]); each door maps its requests to (operation,
//! resource) in one table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::Principal;
use crate::store::{JsonFile, Stamp, StoreError, stamp};

/// The format written; a file of another version is refused.
pub const VERSION: u32 = 1;
/// Most rules a file may hold.
pub const MAX_RULES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    Pipeline,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::Pipeline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
            ResourceType::Pipeline => "pipeline",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternType {
    /// The name itself; `*` matches every name.
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Describe,
    Alter,
}

impl Operation {
    pub const ALL: [Operation; 7] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Describe,
        Operation::Alter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "all",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Describe => "describe",
            Operation::Alter => "alter",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Allow,
    Deny,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    /// `User:NAME`, or `User:*`.
    pub principal: String,
    pub resource: ResourceType,
    pub pattern: PatternType,
    pub name: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl Acl {
    fn matches(&self, who: &str, op: Operation, resource: ResourceType, name: &str) -> bool {
        let principal = self.principal == who || self.principal == "User:*";
        let named = match self.pattern {
            PatternType::Literal => self.name == name || self.name == "*",
            PatternType::Prefixed => name.starts_with(&self.name),
        };
        let operation = self.operation == Operation::All
            || self.operation == op
            // Whoever may read, write, delete or alter a resource may see it.
            || (op == Operation::Describe
                && self.permission == Permission::Allow
                && matches!(
                    self.operation,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ));
        principal && self.resource == resource && named && operation
    }

    /// Checks a rule before it is stored.
    pub fn check(&self) -> Result<(), String> {
        let Some(name) = self.principal.strip_prefix("User:") else {
            return Err(format!(
                "principal {:?}: expected User:NAME or User:*",
                self.principal
            ));
        };
        if name != "*" {
            crate::users::check_name(name)?;
        }
        if self.name.is_empty() || self.name.len() > 255 {
            return Err("a resource name has 1 to 255 characters".into());
        }
        if self.resource == ResourceType::Cluster && self.name != "*" {
            return Err("the cluster resource is named *".into());
        }
        Ok(())
    }
}

/// The ACL file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclFile {
    pub version: u32,
    pub acls: Vec<Acl>,
}

impl JsonFile for AclFile {
    const WHAT: &'static str = "ACL file";

    fn empty() -> Self {
        Self {
            version: VERSION,
            acls: Vec::new(),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "version {} (this weir reads version {VERSION})",
                self.version
            ));
        }
        if self.acls.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        self.acls.iter().try_for_each(Acl::check)
    }
}

impl AclFile {
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        crate::store::load(path)
    }

    pub fn edit<T>(
        path: &Path,
        change: impl FnOnce(&mut AclFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        crate::store::edit(path, change)
    }
}

/// Decides requests: the rules as last read, and the super users.
#[derive(Debug)]
pub struct Authorizer {
    path: PathBuf,
    super_users: Vec<String>,
    rules: RwLock<(Stamp, Arc<Vec<Acl>>)>,
    /// Bumped each time the rules change, so that cached decisions are dropped.
    generation: AtomicU64,
    /// Held while the file is read again, so that two readers (the server's watcher and an
    /// edit over Kafka's ACL APIs) cannot install an older read after a newer one.
    reloading: parking_lot::Mutex<()>,
}

impl Authorizer {
    /// Reads the rules at `path` (missing: none); `super_users` are user names allowed
    /// everything.
    pub fn open(path: PathBuf, super_users: Vec<String>) -> Result<Self, StoreError> {
        let at = stamp(&path);
        let file = AclFile::load(&path)?;
        Ok(Self {
            path,
            super_users,
            rules: RwLock::new((at, Arc::new(file.acls))),
            generation: AtomicU64::new(0),
            reloading: parking_lot::Mutex::new(()),
        })
    }

    /// The file the rules are read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes each time the rules are read anew: a decision cached under another generation
    /// is stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Vec<Acl>> {
        Arc::clone(&self.rules.read().1)
    }

    /// How many rules are in force.
    pub fn len(&self) -> usize {
        self.rules.read().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `who` may do `op` to the resource.
    pub fn allows(
        &self,
        who: &Principal,
        op: Operation,
        resource: ResourceType,
        name: &str,
    ) -> bool {
        let (who, rules) = match self.rules_for(who) {
            Ok(r) => r,
            Err(decided) => return decided,
        };
        let mut allowed = false;
        for rule in rules.iter() {
            if rule.matches(&who, op, resource, name) {
                match rule.permission {
                    Permission::Deny => return false,
                    Permission::Allow => allowed = true,
                }
            }
        }
        allowed
    }

    /// Whether `who` may do `op` to at least one resource of the type: a super user, or an
    /// allowing rule for `who` (or `User:*`) that no deny of every name overrides. It says
    /// what a user interface may offer; each request is still decided by [`Self::allows`].
    pub fn allows_some(&self, who: &Principal, op: Operation, resource: ResourceType) -> bool {
        let (who, rules) = match self.rules_for(who) {
            Ok(r) => r,
            Err(decided) => return decided,
        };
        // A rule's own name matches it: `matches` then asks whether the rule is for `who`
        // and covers `op` on the resource type.
        let grants = |r: &Acl| r.matches(&who, op, resource, &r.name);
        let denied_everywhere = rules.iter().any(|r| {
            r.permission == Permission::Deny
                && r.pattern == PatternType::Literal
                && r.name == "*"
                && grants(r)
        });
        !denied_everywhere
            && rules
                .iter()
                .any(|r| r.permission == Permission::Allow && grants(r))
    }

    /// What a decision for `who` reads: their name as rules spell it, and the rules in
    /// force; or the decision itself when no rule can change it (anonymous: never; a super
    /// user: always).
    fn rules_for(&self, who: &Principal) -> Result<(String, Arc<Vec<Acl>>), bool> {
        match who {
            Principal::Anonymous => Err(false),
            Principal::User(u) if self.super_users.iter().any(|s| **s == **u) => Err(true),
            Principal::User(_) => Ok((who.to_string(), Arc::clone(&self.rules.read().1))),
        }
    }

    /// Reads the file again if it changed; says whether it did. A file that cannot be read
    /// keeps the rules in force.
    pub fn reload_if_changed(&self) -> Result<bool, StoreError> {
        let _one_at_a_time = self.reloading.lock();
        let now = stamp(&self.path);
        if now == self.rules.read().0 {
            return Ok(false);
        }
        let file = AclFile::load(&self.path)?;
        *self.rules.write() = (now, Arc::new(file.acls));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        principal: &str,
        resource: ResourceType,
        pattern: PatternType,
        name: &str,
        operation: Operation,
        permission: Permission,
    ) -> Acl {
        Acl {
            principal: principal.into(),
            resource,
            pattern,
            name: name.into(),
            operation,
            permission,
        }
    }

    fn authorizer(rules: Vec<Acl>, supers: &[&str]) -> (tempfile::TempDir, Authorizer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acls.json");
        AclFile::edit(&path, |f| {
            f.acls = rules;
            Ok(())
        })
        .unwrap();
        let a = Authorizer::open(path, supers.iter().map(|s| s.to_string()).collect()).unwrap();
        (dir, a)
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn the_issue_matrix_reads_as_kafka_would_decide_it() {
        // alice may read topics a.* and join group g; bob may do anything to topic b.
        let (_d, a) = authorizer(
            vec![
                acl("User:alice", Topic, Prefixed, "a.", Read, Allow),
                acl("User:alice", Group, Literal, "g", Read, Allow),
                acl("User:bob", Topic, Literal, "b", All, Allow),
            ],
            &[],
        );
        let alice = Principal::user("alice");
        assert!(a.allows(&alice, Read, Topic, "a.x"));
        assert!(
            a.allows(&alice, Describe, Topic, "a.x"),
            "read implies describe"
        );
        assert!(!a.allows(&alice, Write, Topic, "a.x"));
        assert!(!a.allows(&alice, Read, Topic, "b"));
        assert!(
            !a.allows(&alice, Describe, Topic, "b"),
            "b is hidden from alice"
        );
        assert!(
            !a.allows(&alice, Read, Topic, "ab"),
            "the prefix is a., not a"
        );
        assert!(a.allows(&alice, Read, Group, "g"));
        assert!(!a.allows(&alice, Read, Group, "g2"));
        let bob = Principal::user("bob");
        assert!(a.allows(&bob, Delete, Topic, "b") && a.allows(&bob, Write, Topic, "b"));
        assert!(!a.allows(&bob, Read, Topic, "a.x"));
        assert!(!a.allows(&Principal::Anonymous, Read, Topic, "a.x"));
    }

    #[test]
    fn deny_wins_and_does_not_imply() {
        let (_d, a) = authorizer(
            vec![
                acl("User:*", Topic, Literal, "*", All, Allow),
                acl("User:eve", Topic, Prefixed, "secret.", Read, Deny),
            ],
            &["root"],
        );
        let eve = Principal::user("eve");
        assert!(a.allows(&eve, Read, Topic, "public"));
        assert!(!a.allows(&eve, Read, Topic, "secret.x"));
        // A deny of read does not deny describe (Kafka's rule).
        assert!(a.allows(&eve, Describe, Topic, "secret.x"));
        assert!(a.allows(&Principal::user("root"), Read, Topic, "secret.x"));
        assert!(
            !a.allows(&eve, Alter, Cluster, "*"),
            "topics' rules say nothing of the cluster"
        );
    }

    #[test]
    fn allows_some_says_whether_any_resource_of_a_type_is_open() {
        let (_d, a) = authorizer(
            vec![
                acl("User:alice", Topic, Prefixed, "a.", Read, Allow),
                acl("User:*", Pipeline, Literal, "p", Describe, Allow),
                acl("User:eve", Pipeline, Literal, "*", All, Deny),
                acl("User:bob", Group, Literal, "g", Write, Deny),
            ],
            &["root"],
        );
        let alice = Principal::user("alice");
        assert!(
            a.allows_some(&alice, Describe, Topic),
            "read implies describe"
        );
        assert!(a.allows_some(&alice, Read, Topic));
        assert!(!a.allows_some(&alice, Write, Topic));
        assert!(!a.allows_some(&alice, Describe, Group));
        assert!(!a.allows_some(&alice, Describe, Cluster));
        assert!(a.allows_some(&alice, Describe, Pipeline), "User:* counts");
        assert!(
            !a.allows_some(&Principal::user("eve"), Describe, Pipeline),
            "a deny of every name wins"
        );
        assert!(
            !a.allows_some(&Principal::user("bob"), Describe, Group),
            "a deny grants nothing"
        );
        assert!(a.allows_some(&Principal::user("root"), Alter, Cluster));
        assert!(!a.allows_some(&Principal::Anonymous, Describe, Pipeline));
    }

    #[test]
    fn super_users_may_do_anything_and_nobody_else_without_a_rule() {
        let (_d, a) = authorizer(Vec::new(), &["admin"]);
        assert!(a.allows(&Principal::user("admin"), Create, Cluster, "*"));
        assert!(!a.allows(&Principal::user("alice"), Describe, Topic, "t"));
    }

    #[test]
    fn bad_rules_are_refused_and_a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acls.json");
        for (rule, why) in [
            (acl("alice", Topic, Literal, "t", Read, Allow), "User:NAME"),
            (acl("User:a b", Topic, Literal, "t", Read, Allow), "a b"),
            (acl("User:a", Topic, Literal, "", Read, Allow), "1 to 255"),
            (acl("User:a", Cluster, Literal, "c", Read, Allow), "named *"),
        ] {
            let err = AclFile::edit(&path, |f| {
                f.acls.push(rule.clone());
                Ok(())
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(why), "{rule:?}: {err}");
        }
        let a = Authorizer::open(path.clone(), Vec::new()).unwrap();
        let alice = Principal::user("alice");
        assert!(!a.allows(&alice, Read, Topic, "t"));
        AclFile::edit(&path, |f| {
            f.acls
                .push(acl("User:alice", Topic, Literal, "t", Read, Allow));
            Ok(())
        })
        .unwrap();
        let before = a.generation();
        assert!(a.reload_if_changed().unwrap());
        assert!(a.generation() > before, "a change is a new generation");
        assert!(a.allows(&alice, Read, Topic, "t"));
        std::fs::write(
            &path,
            r#"{"version": 1, "acls": [{"principal": "User:x"}]}"#,
        )
        .unwrap();
        assert!(a.reload_if_changed().is_err());
        assert!(
            a.allows(&alice, Read, Topic, "t"),
            "the rules in force stay"
        );
    }

    proptest::proptest! {
        /// Against a model: allowed iff some allow rule matches and no deny rule does.
        #[test]
        fn decisions_follow_the_model(
            rules in proptest::collection::vec((0usize..3, 0usize..2, 0usize..3, 0usize..7, proptest::bool::ANY), 0..12),
            user in 0usize..3, name in 0usize..3, op in 0usize..7,
        ) {
            let users = ["User:a", "User:b", "User:*"];
            let names = ["t", "t.x", "*"];
            let ops = [All, Read, Write, Create, Delete, Describe, Alter];
            let rules: Vec<Acl> = rules
                .into_iter()
                .map(|(u, p, n, o, allow)| acl(
                    users[u],
                    Topic,
                    if p == 0 { Literal } else { Prefixed },
                    names[n],
                    ops[o],
                    if allow { Allow } else { Deny },
                ))
                .collect();
            let (_d, a) = authorizer(rules.clone(), &[]);
            let who = ["a", "b", "c"][user];
            let asked = ["t", "t.x", "u"][name];
            let op = ops[op];
            let matches = |r: &Acl| {
                (r.principal == format!("User:{who}") || r.principal == "User:*")
                    && match r.pattern {
                        Literal => r.name == asked || r.name == "*",
                        Prefixed => asked.starts_with(&r.name),
                    }
            };
            let op_ok = |r: &Acl| r.operation == All || r.operation == op
                || (op == Describe && r.permission == Allow
                    && matches!(r.operation, Read | Write | Delete | Alter));
            let denied = rules.iter().any(|r| r.permission == Deny && matches(r) && op_ok(r));
            let allowed = rules.iter().any(|r| r.permission == Allow && matches(r) && op_ok(r));
            proptest::prop_assert_eq!(a.allows(&Principal::user(who), op, Topic, asked), allowed && !denied);
        }
    }
}
